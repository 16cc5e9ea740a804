use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
const async fn constant(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev")]
async unsafe fn not_safe(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev")]
async extern "C" fn foreign(_: &AsdlcEvent) {}

fn main() {}
