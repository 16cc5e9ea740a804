use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn handler(event: &String) -> HandlerResult {
    let _ = event;
    HandlerResult::ok()
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn swapped(ctx: &HandlerContext, event: &AsdlcEvent) {
    let _ = (ctx, event);
}

fn main() {}
