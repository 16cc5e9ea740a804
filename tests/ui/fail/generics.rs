use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev")]
async fn generic<T: Default>(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn lifetime<'a>(_: &'a AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev")]
async fn bounded(_: &AsdlcEvent)
where
    String: Default,
{
}

fn main() {}
