use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn handler(_: &AsdlcEvent, _: &HandlerContext, _extra: &str, _more: u8) {}

fn main() {}
