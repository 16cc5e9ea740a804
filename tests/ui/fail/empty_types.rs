use asdlc::prelude::*;

#[event_handler(types = [], group = "dev")]
async fn handler(_: &AsdlcEvent) {}

fn main() {}
