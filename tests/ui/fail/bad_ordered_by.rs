use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "dev", ordered_by = sesion)]
async fn misspelled(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", ordered_by = epic)]
async fn unknown(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "dev", ordered_by = "session")]
async fn a_string(_: &AsdlcEvent) {}

fn main() {}
