//! Every return type a handler may have.

use asdlc::prelude::*;

#[event_handler(types = [TaskCreated], group = "returns")]
async fn nothing(_: &AsdlcEvent) {}

#[event_handler(types = [TaskCreated], group = "returns")]
async fn unit(_: &AsdlcEvent) -> () {}

#[event_handler(types = [TaskCreated], group = "returns")]
async fn result(_: &AsdlcEvent) -> HandlerResult {
    HandlerResult::ok()
}

#[event_handler(types = [TaskCreated], group = "returns")]
async fn fallible_unit(_: &AsdlcEvent) -> Result<(), HandlerError> {
    let _parsed: u32 = "7".parse()?;
    Ok(())
}

#[event_handler(types = [TaskCreated], group = "returns")]
async fn fallible_result(_: &AsdlcEvent) -> Result<HandlerResult, HandlerError> {
    Err(HandlerError::permanent("no"))
}

#[event_handler(types = [TaskCreated], group = "returns")]
async fn opaque(_: &AsdlcEvent) -> impl asdlc::IntoHandlerResult {
    HandlerResult::ok()
}

fn main() {}
