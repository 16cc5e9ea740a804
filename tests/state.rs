//! State for handlers: values given to the runtime or a consumer with `.state(...)`, lent by
//! type to `State<T>` parameters and to `ctx.state::<T>()`; a missing type refused at `build()`
//! with the handler and the type named; the same handlers called directly in unit tests.

#[path = "it/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asdlc::prelude::*;
use asdlc::{
    BoxFuture, ConsumeError, EventConsumer, EventHandler, RegistryError, RuntimeError, StateType,
};
use common::*;

const WAIT: Duration = Duration::from_secs(15);

/// Stands in for a database: the handlers write rows into it, the test reads them.
#[derive(Default)]
struct Db {
    rows: Mutex<Vec<String>>,
}

impl Db {
    fn rows(&self) -> Vec<String> {
        let mut rows = self.rows.lock().unwrap().clone();
        rows.sort();
        rows
    }
}

/// A second state type, given by value.
struct Clock {
    zone: &'static str,
}

#[event_handler(types = [TaskCreated], group = "state-two", name = "store")]
async fn store(
    event: &AsdlcEvent,
    ctx: &HandlerContext,
    State(db): State<Db>,
    clock: State<Clock>,
) -> HandlerResult {
    db.rows.lock().unwrap().push(format!(
        "store:{}@{}#{}",
        event.session_id,
        clock.zone,
        ctx.attempt()
    ));
    HandlerResult::ok()
}

#[event_handler(types = [TaskCreated], group = "state-none", name = "stateless")]
async fn stateless(_: &AsdlcEvent) {}

/// A hand-written handler that takes its state from the context, and says so.
struct Audit;

impl EventHandler for Audit {
    fn name(&self) -> &str {
        "audit"
    }

    fn can_handle(&self, event_type: EventType) -> bool {
        event_type == EventType::TaskCreated
    }

    fn handle<'a>(
        &'a self,
        event: &'a AsdlcEvent,
        ctx: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let Some(db) = ctx.state::<Db>() else {
                return HandlerResult::permanent("no Db");
            };
            db.rows
                .lock()
                .unwrap()
                .push(format!("audit:{}", event.session_id));
            HandlerResult::ok()
        })
    }

    fn required_state(&self) -> &[StateType] {
        const NEEDS: &[StateType] = &[StateType::of::<Db>()];
        NEEDS
    }
}

fn registration(name: &str) -> &'static asdlc::HandlerRegistration {
    asdlc::registered_handlers()
        .into_iter()
        .find(|r| r.name == name)
        .unwrap()
}

fn task(session: &str) -> AsdlcEvent {
    AsdlcEvent::builder(EventType::TaskCreated, session)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_runtime_lends_two_state_types_to_macro_and_hand_written_handlers() {
    let s = server();
    let db = Arc::new(Db::default());
    let rt = Runtime::builder()
        .config(config(&s))
        .groups(["state-two", "state-hand"])
        .consumer_name("state-worker")
        .configure(|_, o| fast(o))
        .handler("state-hand", Audit)
        .state_arc(db.clone())
        .state(Clock { zone: "utc" })
        .build()
        .await
        .unwrap();
    let handle = rt.handle();
    let run = tokio::spawn(rt.run_until(std::future::pending()));
    tokio::time::timeout(WAIT, handle.ready())
        .await
        .unwrap()
        .unwrap();
    let p = Publisher::connect(config(&s)).await.unwrap();
    for session in ["s1", "s2"] {
        p.publish(&task(session)).await.unwrap();
    }
    // The rows land in the test's own `Db`: every handler was lent this one `Arc`.
    eventually(WAIT, "both groups handled both events", || async {
        db.rows().len() == 4
    })
    .await;
    assert_eq!(
        db.rows(),
        ["audit:s1", "audit:s2", "store:s1@utc#1", "store:s2@utc#1"]
    );
    handle.stop();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.group("state-two").unwrap().stats.processed, 2);
    assert_eq!(report.group("state-hand").unwrap().stats.processed, 2);
}

#[tokio::test]
async fn a_runtime_missing_a_state_type_fails_at_build_naming_the_handler_and_the_type() {
    let s = server();
    let err = Runtime::builder()
        .config(config(&s))
        .groups(["state-two"])
        .state(Db::default())
        .build()
        .await
        .unwrap_err();
    let message = err.to_string();
    let RuntimeError::Registry(RegistryError::MissingState {
        group,
        handler,
        type_name,
    }) = err
    else {
        panic!("expected MissingState, got {err:?}");
    };
    assert_eq!(group, "state-two");
    assert!(handler.starts_with("store (tests/state.rs:"), "{handler}");
    assert_eq!(type_name, "state::Clock");
    assert_eq!(
        message,
        format!(
            "handler `{handler}` of group `state-two` takes state of type `state::Clock`, which \
             the runtime was not given: add `.state(...)` with a value of type `state::Clock` to \
             the runtime builder"
        )
    );

    // A hand-written handler's `required_state` is checked the same way.
    let err = Runtime::builder()
        .config(config(&s))
        .without_registered()
        .handler("state-hand", Audit)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RuntimeError::Registry(RegistryError::MissingState { handler, type_name, .. })
                if handler == "audit" && type_name == "state::Db"
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn only_the_groups_a_runtime_runs_need_their_state() {
    let s = server();
    // `state-two` needs a `Db` and a `Clock`, but this runtime does not run it.
    let rt = Runtime::builder()
        .config(config(&s))
        .groups(["state-none"])
        .build()
        .await
        .unwrap();
    assert_eq!(rt.groups(), ["state-none"]);
}

#[tokio::test]
async fn an_event_consumer_built_by_hand_checks_and_lends_state() {
    let s = server();
    let db = Arc::new(Db::default());
    let builder = || {
        EventConsumer::builder(config(&s), "state-two")
            .registered(registration("store"))
            .configure(|o| {
                fast(o);
                o.consumer = Some("state-1".into());
            })
            .state_arc(db.clone())
    };
    let err = builder().build().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "handler `store` of group `state-two` takes state of type `state::Clock`, which the \
         consumer was not given: add `.state(...)` with a value of type `state::Clock` to the \
         consumer builder"
    );
    assert!(
        matches!(
            &err,
            ConsumeError::MissingState { group, handler, type_name }
                if group == "state-two" && handler == "store" && type_name == "state::Clock"
        ),
        "{err:?}"
    );

    let consumer = builder()
        .state(Clock { zone: "cet" })
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer).await;
    Publisher::connect(config(&s))
        .await
        .unwrap()
        .publish(&task("s3"))
        .await
        .unwrap();
    eventually(WAIT, "handled", || async {
        consumer.stats().processed == 1
    })
    .await;
    assert_eq!(db.rows(), ["store:s3@cet#1"]);
    consumer.stop();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_handler_is_called_directly_with_hand_made_state() {
    let db = Arc::new(Db::default());
    let event = task("s4");

    // The function itself, as written.
    let result = store(
        &event,
        &HandlerContext::detached(),
        State(db.clone()),
        State::new(Clock { zone: "pst" }),
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(db.rows(), ["store:s4@pst#1"]);

    // The registered handler, as a consumer calls it, with a hand-made context.
    let store = registration("store").handler;
    assert_eq!(
        store.required_state(),
        [StateType::of::<Db>(), StateType::of::<Clock>()]
    );
    let ctx = HandlerContext::detached()
        .with_state_arc(db.clone())
        .with_state(Clock { zone: "jst" });
    assert!(store.handle(&event, &ctx).await.is_ok());
    assert_eq!(db.rows(), ["store:s4@jst#1", "store:s4@pst#1"]);

    // Past the startup check, a missing type is a permanent failure naming it, not a panic.
    let ctx = HandlerContext::detached().with_state_arc(db.clone());
    let result = store.handle(&event, &ctx).await;
    assert!(result.is_permanent());
    assert!(
        result
            .error_message()
            .unwrap()
            .starts_with("handler `store` needs state of type `state::Clock`"),
        "{result:?}"
    );
    assert_eq!(db.rows().len(), 2, "the function was not called");
}

#[tokio::test]
async fn a_hand_written_handler_takes_its_state_from_the_context() {
    let db = Arc::new(Db::default());
    let ctx = HandlerContext::detached().with_state_arc(db.clone());
    assert!(Arc::ptr_eq(&ctx.state::<Db>().unwrap().0, &db));
    assert!(ctx.state::<Clock>().is_none());
    assert!(Audit.handle(&task("s5"), &ctx).await.is_ok());
    assert_eq!(db.rows(), ["audit:s5"]);

    let without = Audit.handle(&task("s6"), &HandlerContext::detached()).await;
    assert_eq!(without.error_message(), Some("no Db"));
}
