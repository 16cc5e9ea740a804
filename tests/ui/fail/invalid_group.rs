use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "Development Handlers")]
async fn handler(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "")]
async fn empty(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "a-group-name-that-is-much-longer-than-the-sixty-three-characters-allowed")]
async fn long(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = development)]
async fn not_a_string(_: &AsdlcEvent) {}

fn main() {}
