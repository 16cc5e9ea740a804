use asdlc::prelude::*;

#[event_handler(types = [TaskCreate], group = "dev")]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
