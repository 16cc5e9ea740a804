use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn handler(event: AsdlcEvent) {
    let _ = event;
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn mutable(event: &AsdlcEvent, ctx: &mut HandlerContext) {
    let _ = (event, ctx);
}

fn main() {}
