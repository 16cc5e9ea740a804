//! All sixteen event types in one handler, and the `EventType::` spelling.

use asdlc::prelude::*;

#[event_handler(
    types = [
        SessionStarted, SessionCompleted,
        TaskCreated, TaskDispatched, TaskCompleted, TaskFailed,
        GateRequested, GateApproved, GateRejected, GateExpired,
        AgentStarted, AgentCompleted, AgentError,
        PatchCreated, PatchApplied, EventType::PatchRejected,
    ],
    group = "everything",
)]
async fn everything(_: &AsdlcEvent) {}

fn main() {
    assert_eq!(EventType::ALL.len(), 16);
}
