use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev", timeout = "30")]
async fn no_unit(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", timeout = "1h")]
async fn hours(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", timeout = "0s")]
async fn zero(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", timeout = 30)]
async fn not_a_string(_: &AsdlcEvent) {}

fn main() {}
