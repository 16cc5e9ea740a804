use asdlc::prelude::*;

struct Db;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn bare(_: &AsdlcEvent, state: State) {
    let _ = state;
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn two_types(_: &AsdlcEvent, _: &HandlerContext, state: asdlc::State<Db, Db>) {
    let _ = state;
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn by_reference(_: &AsdlcEvent, state: &State<Db>) {
    let _ = state;
}

fn main() {}
