use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev", group = "ops")]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
