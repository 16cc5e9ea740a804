//! Both parameter lists, named or `_`, and no return type.

use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "signatures")]
async fn event_only(event: &AsdlcEvent) {
    let _ = event;
}

#[event_handler(types = [TaskCreated], group = "signatures")]
async fn event_and_context(event: &AsdlcEvent, ctx: &HandlerContext) {
    let _ = (event, ctx.attempt());
}

#[event_handler(types = [TaskCreated], group = "signatures")]
async fn unnamed(_: &AsdlcEvent, _: &HandlerContext) {}

#[event_handler(types = [TaskCreated], group = "signatures")]
pub async fn public_with_mut_binding(mut event: &'_ AsdlcEvent) {
    let other = event;
    event = other;
    let _ = event;
}

fn main() {}
