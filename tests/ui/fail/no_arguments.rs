use asdlc::prelude::*;

#[event_handler]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
