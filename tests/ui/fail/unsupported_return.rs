use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn handler(_: &AsdlcEvent) -> i32 {
    0
}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn wrong_error(_: &AsdlcEvent) -> Result<(), String> {
    Ok(())
}

fn main() {}
