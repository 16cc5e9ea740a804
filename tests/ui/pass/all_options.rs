//! Every optional argument, with a trailing comma.

use asdlc::prelude::*;

#[event_handler(
    types = [GateApproved, GateRejected],
    group = "gates.v2_review-1",
    name = "review-gates",
    max_deliveries = 3,
    timeout = "1500ms",
    concurrency = 4,
    ordered_by = session,
)]
async fn review(_: &AsdlcEvent, _: &HandlerContext) -> HandlerResult {
    HandlerResult::ok()
}

#[event_handler(types = [GateExpired], group = "gates", timeout = "2m")]
async fn minutes(_: &AsdlcEvent) {}

#[event_handler(types = [GateExpired], group = "gates", timeout = "30s")]
async fn seconds(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated, TaskCompleted], group = "tasks", ordered_by = task)]
async fn by_task(_: &AsdlcEvent) {}

fn main() {}
