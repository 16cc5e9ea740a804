//! State parameters after the event (and the context), in every form: a destructuring
//! pattern, a name, `_`, `mut`, a full path, an unsized type; and the function stays callable
//! with hand-made state.

use std::sync::Arc;

use asdlc::prelude::*;
use asdlc::StateType;

struct Db {
    url: String,
}

struct Cache;

trait Mailer: Send + Sync {
    fn send(&self) -> usize;
}

struct Fake;

impl Mailer for Fake {
    fn send(&self) -> usize {
        1
    }
}

#[event_handler(types = [TaskCreated], group = "state", name = "destructured")]
async fn destructured(_: &AsdlcEvent, State(db): State<Db>) -> HandlerResult {
    HandlerResult::ok_with_artifacts([db.url.clone()])
}

#[event_handler(types = [TaskCreated], group = "state-2", name = "every-form")]
async fn every_form(
    event: &AsdlcEvent,
    ctx: &HandlerContext,
    db: asdlc::State<Db>,
    _: State<Cache>,
    mut mailer: State<dyn Mailer>,
    State(name): State<str>,
) -> Result<(), HandlerError> {
    let _ = (event, ctx.attempt(), &db.url, &*name, mailer.send());
    mailer = mailer.clone();
    let _ = mailer;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let event = AsdlcEvent::builder(EventType::TaskCreated, "s1")
        .build()
        .unwrap();
    let db = State::new(Db {
        url: "postgres://db".into(),
    });
    let result = destructured(&event, db.clone()).await;
    assert_eq!(result.artifacts(), ["postgres://db"]);

    let ctx = HandlerContext::detached();
    let mailer: Arc<dyn Mailer> = Arc::new(Fake);
    every_form(
        &event,
        &ctx,
        db,
        State::new(Cache),
        State(mailer),
        State(Arc::from("name")),
    )
    .await
    .unwrap();

    let reg = asdlc::registered_handlers()
        .into_iter()
        .find(|r| r.name == "every-form")
        .unwrap();
    assert_eq!(
        reg.handler.required_state(),
        [
            StateType::of::<Db>(),
            StateType::of::<Cache>(),
            StateType::of::<dyn Mailer>(),
            StateType::of::<str>(),
        ]
    );
}
