//! Follow-up events (`HandlerContext::emit`) against a real server and the cluster: appended
//! with the cause's commit and only then, checked when staged, refused outside the cause's
//! slot. The crash test (workers SIGKILLed in a chain of five groups) is in `tests/chaos.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asdlc::{
    AsdlcEvent, Config, EmitError, EventConsumer, EventType, HandlerResult, Publisher,
    RedisConnection, TenantContext,
};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

fn dispatched(cause: &AsdlcEvent) -> AsdlcEvent {
    let mut next = AsdlcEvent::builder(EventType::TaskDispatched, cause.session_id.clone());
    if let Some(task) = &cause.task_id {
        next = next.task_id(task.clone());
    }
    next.build().unwrap()
}

async fn consumer(config: &Config, group: &str, handler: FnHandler) -> EventConsumer {
    handler.consumer(config, group).await
}

/// Runs `c` until one `task_created` event published in `tenant`'s context (or none) has come
/// to what `done` says, then stops it and returns its counts.
async fn handle_one(
    c: &EventConsumer,
    config: &Config,
    tenant: Option<asdlc::TenantId>,
    done: fn(&asdlc::ConsumerStats) -> bool,
) -> asdlc::ConsumerStats {
    let run = spawn(c).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    let cause = event(EventType::TaskCreated, "s1");
    let publish = publisher.publish(&cause);
    match tenant {
        Some(t) => TenantContext::scope(t, publish).await,
        None => publish.await,
    }
    .unwrap();
    eventually(WAIT, "the cause settled", || {
        let c = c.clone();
        async move { done(&c.stats()) }
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap()
}

/// Every entry of `stream` of type `t`.
async fn entries_of(conn: &mut RedisConnection, stream: &str, t: EventType) -> Vec<AsdlcEvent> {
    xrange(conn, stream)
        .await
        .into_iter()
        .map(|(id, fields)| {
            let mut ev = asdlc::encoding::decode(&fields).unwrap();
            ev.event_id = Some(id);
            ev
        })
        .filter(|e| e.event_type == t)
        .collect()
}

/// A handler that emits a follow-up and then fails its first attempt: the retry's follow-up
/// is the only one written, once per cause, even when the cause is published again.
async fn follow_ups_are_written_with_the_commit_only(target: Target, stream: &str) {
    let config = target.config(stream);
    let mut conn = target.conn().await;
    let handler = FnHandler::new(|event, ctx| {
        ctx.emit(dispatched(event)).unwrap();
        if ctx.attempt() == 1 {
            HandlerResult::retry("not yet")
        } else {
            HandlerResult::ok()
        }
    });
    let c = consumer(&config, "designers", handler).await;
    let run = spawn(&c).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    let mut causes = Vec::new();
    for i in 0..10 {
        let mut e = AsdlcEvent::builder(EventType::TaskCreated, format!("s{i}"))
            .task_id(format!("t{i}"))
            .build()
            .unwrap();
        asdlc::inject_trace_context(&mut e);
        publisher.publish(&e).await.unwrap();
        causes.push(e);
    }
    eventually(WAIT, "every cause committed", || {
        let c = c.clone();
        async move { c.stats().processed == 10 }
    })
    .await;
    // The same causes again: duplicates, which emit nothing.
    for e in &causes {
        publisher.publish(e).await.unwrap();
    }
    eventually(WAIT, "the copies skipped", || {
        let c = c.clone();
        async move { c.stats().duplicates == 10 }
    })
    .await;
    c.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.retried, 10, "{stats:?}");
    assert_eq!(stats.emitted, 10, "{stats:?}");

    let follow_ups = entries_of(&mut conn, &config.stream, EventType::TaskDispatched).await;
    assert_eq!(
        follow_ups.len(),
        10,
        "one follow-up per cause: {follow_ups:#?}"
    );
    for cause in &causes {
        let mine: Vec<_> = follow_ups
            .iter()
            .filter(|f| f.task_id == cause.task_id)
            .collect();
        assert_eq!(mine.len(), 1, "{:?}", cause.task_id);
        let f = mine[0];
        assert!(
            f.idempotency_key.as_deref().unwrap().starts_with("emit-"),
            "{f:?}"
        );
        // The follow-up continues the cause's trace.
        let (ours, theirs) = (
            asdlc::extract_trace_context(f).unwrap(),
            asdlc::extract_trace_context(cause).unwrap(),
        );
        assert_eq!(ours.trace_id_hex(), theirs.trace_id_hex());
        assert_ne!(ours.parent_id_hex(), theirs.parent_id_hex());
    }
}

#[tokio::test]
async fn follow_ups_are_written_with_the_commit_only_on_a_server() {
    follow_ups_are_written_with_the_commit_only(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn follow_ups_are_written_with_the_commit_only_on_a_cluster() {
    follow_ups_are_written_with_the_commit_only(Target::cluster(), "cl-emit:events").await;
}

#[tokio::test]
async fn an_invalid_follow_up_is_refused_when_staged_and_nothing_of_its_cause_commits() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let mut conn = target.conn().await;
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let handler = FnHandler::new(move |event, ctx| {
        ctx.stage(asdlc::Effect::incr_by(ctx.scoped_key("count"), 1))
            .unwrap();
        let mut bad = dispatched(event);
        bad.git_sha = Some("not-a-sha".into());
        match ctx.emit(bad) {
            Ok(()) => HandlerResult::ok(),
            Err(e) => {
                seen.lock().unwrap().push(e.clone());
                HandlerResult::permanent(e.to_string())
            }
        }
    });
    let c = consumer(&config, "designers", handler).await;
    handle_one(&c, &config, None, |s| s.dead_lettered == 1).await;
    let refused = refusals.lock().unwrap().clone();
    match &refused[..] {
        [EmitError::Invalid(v)] => assert_eq!(v.field, "git_sha"),
        other => panic!("{other:?}"),
    }
    assert!(
        entries_of(&mut conn, &config.stream, EventType::TaskDispatched)
            .await
            .is_empty()
    );
    let count: Option<i64> = redis::cmd("GET")
        .arg(asdlc::StreamKeys::new(&config.stream).scoped("count"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, None, "the effect staged beside it did not commit");
    let dead = asdlc::deadletter::list(&mut conn, &config.stream, "-", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.contains("git_sha"), "{:?}", dead[0]);
}

#[tokio::test]
async fn a_follow_up_for_a_stream_of_another_slot_is_refused_on_a_cluster() {
    let target = Target::cluster();
    let config = target.config("cl-emit-slot:events");
    let mut conn = target.conn().await;
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let handler = FnHandler::new(move |event, ctx| {
        if let Err(e) = ctx.emit_to("cl-emit-slot:elsewhere", dispatched(event)) {
            seen.lock().unwrap().push(e);
        }
        // The cause's own stream is always in its slot.
        ctx.emit(dispatched(event)).unwrap();
        HandlerResult::ok()
    });
    let c = consumer(&config, "designers", handler).await;
    handle_one(&c, &config, None, |s| s.processed == 1).await;
    let refused = refusals.lock().unwrap().clone();
    match &refused[..] {
        [
            EmitError::CrossSlot {
                stream,
                cause_stream,
            },
        ] => {
            assert_eq!(stream, "cl-emit-slot:elsewhere");
            assert_eq!(cause_stream, "cl-emit-slot:events");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        entries_of(&mut conn, &config.stream, EventType::TaskDispatched)
            .await
            .len(),
        1
    );
    let elsewhere: usize = redis::cmd("XLEN")
        .arg("cl-emit-slot:elsewhere")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(elsewhere, 0);
}

#[tokio::test]
async fn a_tenants_follow_up_goes_to_its_own_stream_with_its_tenant() {
    let s = server();
    let config = multi_config(&s);
    let acme = tenant("acme");
    let handler = FnHandler::new(|event, ctx| {
        ctx.emit(dispatched(event)).unwrap();
        HandlerResult::ok()
    });
    let c = EventConsumer::builder(config.clone(), "designers")
        .tenant(acme.clone())
        .handler(handler)
        .configure(fast)
        .build()
        .await
        .unwrap();
    handle_one(&c, &config, Some(acme.clone()), |s| s.processed == 1).await;
    let mut conn = conn(&s).await;
    let stream = config.stream_for(Some(&acme));
    let follow_ups = entries_of(&mut conn, &stream, EventType::TaskDispatched).await;
    assert_eq!(follow_ups.len(), 1);
    assert_eq!(follow_ups[0].tenant_id, Some(acme));
}

#[tokio::test]
async fn two_groups_following_up_one_cause_emit_two_events() {
    let target = Target::server();
    let config = target.config("asdlc:events");
    let mut conn = target.conn().await;
    let emit = || {
        FnHandler::new(|event, ctx| {
            ctx.emit(dispatched(event)).unwrap();
            HandlerResult::ok()
        })
    };
    let a = consumer(&config, "designers", emit()).await;
    let b = consumer(&config, "reviewers", emit()).await;
    let (ra, rb) = (spawn(&a).await, spawn(&b).await);
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    publisher
        .publish(&event(EventType::TaskCreated, "s1"))
        .await
        .unwrap();
    eventually(WAIT, "both groups committed", || {
        let (a, b) = (a.clone(), b.clone());
        async move { a.stats().processed == 1 && b.stats().processed == 1 }
    })
    .await;
    for (c, r) in [(a, ra), (b, rb)] {
        c.stop();
        r.await.unwrap().unwrap();
    }
    let follow_ups = entries_of(&mut conn, &config.stream, EventType::TaskDispatched).await;
    assert_eq!(follow_ups.len(), 2);
    assert_ne!(
        follow_ups[0].idempotency_key, follow_ups[1].idempotency_key,
        "each group's follow-up is an event of its own"
    );
}

#[tokio::test]
async fn a_follow_up_key_the_application_set_is_kept_even_when_it_looks_fresh() {
    let s = server();
    let config = config(&s);
    let mut conn = conn(&s).await;
    // Two follow-ups per cause: one with the key it was born with, one with a key of the
    // application's that looks like a fresh one, the same for every cause of a task.
    let designers = FnHandler::new(|event, ctx| {
        let task = event.task_id.clone().unwrap();
        let mut mine = dispatched(event);
        mine.idempotency_key = Some(format!("evt-dispatch-{task}"));
        ctx.emit_all([dispatched(event), mine]).unwrap();
        HandlerResult::ok()
    });
    let designers = consumer(&config, "designers", designers).await;
    let developer = TestHandler::new("developer", &[EventType::TaskDispatched]);
    let developers = consumer_for(&config, "developers", "d1", &developer).await;
    let (rd, rv) = (spawn(&designers).await, spawn(&developers).await);
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    // Two distinct events announcing task t1.
    for _ in 0..2 {
        let cause = AsdlcEvent::builder(EventType::TaskCreated, "s1")
            .task_id("t1")
            .build()
            .unwrap();
        publisher.publish(&cause).await.unwrap();
    }
    eventually(WAIT, "every follow-up handled or skipped", || {
        let (d, v) = (designers.clone(), developers.clone());
        async move {
            let v = v.stats();
            d.stats().processed == 2 && v.processed + v.duplicates == 4
        }
    })
    .await;
    for (c, r) in [(designers, rd), (developers, rv)] {
        c.stop();
        r.await.unwrap().unwrap();
    }
    let follow_ups = entries_of(&mut conn, &config.stream, EventType::TaskDispatched).await;
    let mut keys: Vec<String> = follow_ups
        .iter()
        .map(|f| f.idempotency_key.clone().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys[..2].iter().all(|k| k.starts_with("emit-")), "{keys:?}");
    assert_ne!(keys[0], keys[1], "the born keys, derived from each cause");
    assert_eq!(keys[2..], ["evt-dispatch-t1", "evt-dispatch-t1"], "kept");
    // The application's key made the second announcement of the dispatch a duplicate.
    let handled: Vec<String> = developer.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(handled.len(), 3, "{handled:?}");
    assert_eq!(
        handled.iter().filter(|k| *k == "evt-dispatch-t1").count(),
        1,
        "{handled:?}"
    );
}
