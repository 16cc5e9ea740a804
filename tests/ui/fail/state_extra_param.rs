use asdlc::prelude::*;

struct Db;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn after_context(_: &AsdlcEvent, _: &HandlerContext, extra: &str) {
    let _ = extra;
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn after_state(_: &AsdlcEvent, _: State<Db>, count: u8) {
    let _ = count;
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn context_last(_: &AsdlcEvent, _: State<Db>, ctx: &HandlerContext) {
    let _ = ctx;
}

fn main() {}
