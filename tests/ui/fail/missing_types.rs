use asdlc::prelude::*;

#[event_handler(group = "dev")]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
