use asdlc::prelude::*;

#[event_handler(types = [TaskCreated, TaskFailed, TaskCreated], group = "dev")]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
