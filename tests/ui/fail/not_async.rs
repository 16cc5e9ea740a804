use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
fn handler(_: &AsdlcEvent) -> HandlerResult {
    HandlerResult::ok()
}

fn main() {}
