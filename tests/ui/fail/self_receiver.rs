use asdlc::prelude::*;

struct Service;

impl Service {
    #[event_handler(types = [TaskCreated], group = "dev")]
    async fn handler(&self, _: &AsdlcEvent) {}
}

fn main() {}
