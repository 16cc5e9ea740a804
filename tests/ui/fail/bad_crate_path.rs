use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev", crate = "not a path")]
async fn handler(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", crate = "::no_such_crate")]
async fn missing(_: &AsdlcEvent) {}

fn main() {}
