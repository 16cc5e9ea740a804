use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev", retries = 3)]
async fn handler(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", concurency = 3)]
async fn misspelled(_: &AsdlcEvent) {}

fn main() {}
