use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
struct Handler;

fn main() {
    let _ = Handler;
}
