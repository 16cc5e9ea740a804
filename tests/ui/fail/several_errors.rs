use asdlc::prelude::*;

#[event_handler(types = [TaskCreate, TaskCreate], group = "Dev", timeout = "soon", retries = 3)]
fn handler(event: AsdlcEvent) {
    let _ = event;
}

fn main() {}
