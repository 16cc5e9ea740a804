use asdlc::prelude::*;

#[event_handler(types = [TaskCreated, Deployment], group = "dev")]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
