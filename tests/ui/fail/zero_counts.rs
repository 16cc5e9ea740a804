use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev", max_deliveries = 0)]
async fn never_delivered(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", concurrency = 0)]
async fn never_running(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", max_deliveries = "3")]
async fn quoted(_: &AsdlcEvent) {}

fn main() {}
