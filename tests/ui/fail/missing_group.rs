use asdlc::prelude::*;

#[event_handler(types = [TaskCreated])]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
