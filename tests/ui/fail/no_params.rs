use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn handler() {}

fn main() {}
