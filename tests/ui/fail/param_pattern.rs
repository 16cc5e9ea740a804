use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn handler(&AsdlcEvent { ref session_id, .. }: &AsdlcEvent) {
    let _ = session_id;
}

fn main() {}
