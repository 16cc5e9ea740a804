use std::rc::Rc;

use asdlc::prelude::*;

async fn elsewhere() {}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn handler(_: &AsdlcEvent) {
    let shared = Rc::new(1);
    elsewhere().await;
    drop(shared);
}

fn main() {}
