use std::rc::Rc;

use asdlc::prelude::*;

mod mine {
    /// Not asdlc's `State`.
    pub struct State<T>(pub T);
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn own_state(_: &AsdlcEvent, state: mine::State<u8>) {
    let _ = state.0;
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn not_sync(_: &AsdlcEvent, state: State<Rc<u8>>) {
    let _ = state;
}

fn main() {}
