use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group)]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
