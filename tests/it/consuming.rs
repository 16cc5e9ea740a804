//! The consumer engine against a real server (seed US-02, US-03, US-04, US-06, T03-T06).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use asdlc::{
    AsdlcEvent, ConsumeError, EventConsumer, EventType, IdempotencyTracker, MarkLayout, Publisher,
    StreamKeys, TenantContext, deadletter, get_stream_info,
};

const WAIT: Duration = Duration::from_secs(15);

async fn consumer(s: &TestServer, group: &str, name: &str, handler: &TestHandler) -> EventConsumer {
    consumer_with(s, group, name, handler, |_| {}).await
}

/// A consumer with the tests' fast settings, adjusted by `tweak`.
async fn consumer_with(
    s: &TestServer,
    group: &str,
    name: &str,
    handler: &TestHandler,
    tweak: impl FnOnce(&mut asdlc::ConsumerOptions),
) -> EventConsumer {
    EventConsumer::builder(config(s), group)
        .handler(handler.clone())
        .configure(|o| {
            fast(o);
            o.consumer = Some(name.to_owned());
            tweak(o);
        })
        .build()
        .await
        .unwrap()
}

async fn pending(c: &mut asdlc::RedisConnection, stream: &str, group: &str) -> u64 {
    let info = get_stream_info(c, stream).await.unwrap();
    info.group(group).map(|g| g.pending).unwrap_or(0)
}

async fn publish_n(p: &Publisher, n: usize, t: EventType) -> Vec<AsdlcEvent> {
    let events: Vec<_> = (0..n).map(|i| event(t, &format!("s{i}"))).collect();
    p.publish_batch(&events).await.unwrap();
    events
}

#[tokio::test]
async fn consumer_reads_from_group() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("h");
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    let published = p
        .publish(&event(EventType::TaskCreated, "s1"))
        .await
        .unwrap();
    eventually(WAIT, "handled", || async { h.count() == 1 }).await;
    let call = &h.calls()[0];
    assert_eq!(call.entry_id, published.event_id);
    assert_eq!(
        call.event.event_id.as_deref(),
        Some(published.event_id.as_str())
    );
    assert_eq!(call.attempt, 1);
    c.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.processed, 1);
}

#[tokio::test]
async fn consumer_group_distributes_messages() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h1 = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(5)));
    let h2 = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(5)));
    let c1 = consumer(&s, "development-handlers", "w1", &h1).await;
    let c2 = consumer(&s, "development-handlers", "w2", &h2).await;
    let r1 = spawn(&c1).await;
    let r2 = spawn(&c2).await;
    for _ in 0..10 {
        publish_n(&p, 20, EventType::TaskDispatched).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(WAIT, "all 200 handled", || async {
        h1.count() + h2.count() == 200
    })
    .await;
    let ids1: HashSet<_> = h1.calls().into_iter().map(|c| c.entry_id).collect();
    let ids2: HashSet<_> = h2.calls().into_iter().map(|c| c.entry_id).collect();
    assert!(
        ids1.is_disjoint(&ids2),
        "each event handled by exactly one consumer"
    );
    assert!(
        !ids1.is_empty() && !ids2.is_empty(),
        "both consumers got work: {} / {}",
        ids1.len(),
        ids2.len()
    );
    c1.stop();
    c2.stop();
    r1.await.unwrap().unwrap();
    r2.await.unwrap().unwrap();
}

/// `batched` events published in one batch and `singles` more one at a time, to one consumer:
/// all handled and acknowledged, none dead-lettered, no lease left behind, and each event's
/// effect applied once.
async fn consumer_acknowledges_processed(
    target: Target,
    stream: &str,
    batched: usize,
    singles: usize,
) {
    let config = target.config(stream);
    let p = Publisher::connect(config.clone()).await.unwrap();
    let h = TestHandler::all("h");
    let c = consumer_for(&config, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    let events: Vec<AsdlcEvent> = (0..batched + singles)
        .map(|i| event(EventType::TaskCompleted, &format!("s{i}")))
        .collect();
    if batched > 0 {
        p.publish_batch(&events[..batched]).await.unwrap();
    }
    for e in &events[batched..] {
        p.publish(e).await.unwrap();
    }
    let total = events.len();
    eventually(WAIT, "handled", || async { h.count() == total }).await;
    let mut conn = target.conn().await;
    eventually(WAIT, "nothing pending", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn, stream, "development-handlers").await == 0 }
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap();
    let info = get_stream_info(&mut conn, stream).await.unwrap();
    assert_eq!(info.length, total as u64);
    assert_eq!(info.dead_letters, 0);
    assert_eq!(info.group("development-handlers").unwrap().pending, 0);
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{stream}}}:lease:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(leases.is_empty(), "{leases:?}");
    let applied = applied(&mut conn, stream, "development-handlers").await;
    assert_eq!(applied.len(), total);
    assert!(applied.values().all(|v| *v == 1));
}

#[tokio::test]
async fn consumer_acknowledges_processed_on_a_server() {
    consumer_acknowledges_processed(Target::server(), "asdlc:events", 30, 0).await;
}

#[tokio::test]
async fn consumer_acknowledges_processed_on_a_cluster() {
    consumer_acknowledges_processed(Target::cluster(), "cl-basic:events", 20, 20).await;
}

#[tokio::test]
async fn unacknowledged_messages_become_pending() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    publish_n(&p, 4, EventType::TaskCreated).await;
    let mut conn = conn(&s).await;
    read_and_die(&mut conn, "asdlc:events", "development-handlers", "dead", 4).await;
    assert_eq!(
        pending(&mut conn, "asdlc:events", "development-handlers").await,
        4
    );
}

/// Marks on the stream `stream`'s keys: a key is marked once (a second mark is skipped), marks
/// are per group and per stream (`other_stream`, another tenant's), and of `markers` concurrent
/// markers of one key exactly one wins.
async fn idempotency_tracker_prevents_reprocessing(
    target: Target,
    stream: &str,
    other_stream: &str,
    markers: usize,
) {
    let conn = target.conn().await;
    let keys = StreamKeys::new(stream);
    let tracker = IdempotencyTracker::new(conn.clone(), keys.clone(), "hitl-handlers");
    assert!(!tracker.is_processed("gate-1@abc1234").await.unwrap());
    assert!(tracker.mark_processed("gate-1@abc1234").await.unwrap());
    assert!(tracker.is_processed("gate-1@abc1234").await.unwrap());
    assert!(
        !tracker.mark_processed("gate-1@abc1234").await.unwrap(),
        "second attempt is skipped"
    );
    // Marks are per group and per tenant stream.
    let other_group = IdempotencyTracker::new(conn.clone(), keys, "design-handlers");
    assert!(!other_group.is_processed("gate-1@abc1234").await.unwrap());
    let other_tenant =
        IdempotencyTracker::new(conn.clone(), StreamKeys::new(other_stream), "hitl-handlers");
    assert!(!other_tenant.is_processed("gate-1@abc1234").await.unwrap());

    // Of many concurrent markers, exactly one wins.
    let tracker = Arc::new(tracker);
    let tasks: Vec<_> = (0..markers)
        .map(|_| {
            let t = tracker.clone();
            tokio::spawn(async move { t.mark_processed("contended").await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1, "exactly one caller marked it");
    assert!(tracker.is_processed("contended").await.unwrap());
    assert!(!other_group.is_processed("contended").await.unwrap());
}

#[tokio::test]
async fn idempotency_tracker_prevents_reprocessing_on_a_server() {
    idempotency_tracker_prevents_reprocessing(
        Target::server(),
        "asdlc:events",
        "tenant:{acme}:asdlc:events",
        50,
    )
    .await;
}

#[tokio::test]
async fn idempotency_tracker_prevents_reprocessing_on_a_cluster() {
    idempotency_tracker_prevents_reprocessing(
        Target::cluster(),
        "tenant:{idem}:cl-idem:events",
        "tenant:{other}:cl-idem:events",
        16,
    )
    .await;
}

#[tokio::test]
async fn idempotency_keys_expire() {
    let s = server();
    let conn = conn(&s).await;
    let layout = MarkLayout::with_ttl(Duration::from_millis(700));
    let tracker = IdempotencyTracker::new(conn.clone(), StreamKeys::new("asdlc:events"), "g")
        .with_layout(layout);
    assert!(tracker.mark_processed("k").await.unwrap());
    assert!(tracker.is_processed("k").await.unwrap());
    // A mark lives at least the TTL...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tracker.is_processed("k").await.unwrap());
    // ...and at most one bucket (TTL / 2 by default) longer; then its hash is gone.
    eventually(Duration::from_secs(3), "mark expired", || {
        let t = tracker.clone();
        async move { !t.is_processed("k").await.unwrap() }
    })
    .await;
    // The lookup stops seeing the mark when its bucket leaves the window; the hash itself
    // expires a moment later, at its own TTL.
    eventually(
        Duration::from_secs(3),
        "expired mark hashes removed",
        || {
            let mut conn = conn.clone();
            async move {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("*marks*")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                keys.is_empty()
            }
        },
    )
    .await;
    // The default TTL is 7 days.
    let default = MarkLayout::default();
    assert_eq!(default.ttl, Duration::from_secs(7 * 24 * 3600));
}

#[tokio::test]
async fn a_fresh_key_is_looked_up_in_one_mark_hash_and_a_key_of_any_age_in_all() {
    let s = server();
    let mut conn = conn(&s).await;
    let tracker = IdempotencyTracker::new(conn.clone(), StreamKeys::new("asdlc:events"), "g");
    let fresh = asdlc::event::unique_idempotency_key();
    assert!(tracker.mark_processed(&fresh).await.unwrap());
    assert!(tracker.mark_processed("gate-42@abc1234").await.unwrap());
    let lookups = async |conn: &mut asdlc::RedisConnection, key: &str, marked: bool| {
        let before = command_calls(conn, "hexists").await;
        assert_eq!(tracker.is_processed(key).await.unwrap(), marked, "{key}");
        command_calls(conn, "hexists").await - before
    };
    // A fresh key cannot have been processed before it was made: one hash.
    assert_eq!(lookups(&mut conn, &fresh, true).await, 1);
    let other = asdlc::event::unique_idempotency_key();
    assert_eq!(lookups(&mut conn, &other, false).await, 1);
    // A key of any age is looked for in every bucket of the TTL (3 by default) unless found.
    assert_eq!(lookups(&mut conn, "gate-42@abc1234", true).await, 1);
    assert_eq!(lookups(&mut conn, "gate-43@abc1234", false).await, 3);
}

#[tokio::test]
async fn a_mark_call_made_for_another_time_than_the_servers_is_refused_before_it_writes() {
    let s = server();
    let mut conn = conn(&s).await;
    // Load the library (any tracker call does).
    let tracker = IdempotencyTracker::new(conn.clone(), StreamKeys::new("asdlc:events"), "g");
    assert!(!tracker.is_processed("k").await.unwrap());
    let layout = MarkLayout::default();
    let width = layout.ttl.as_millis() as u64 / u64::from(layout.buckets);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let prefix = StreamKeys::new("asdlc:events").marks_prefix("g");
    let fp = [7u8; 12];
    // A call for the next bucket, as a process whose clock is a bucket ahead would make it.
    let wrong = now / width + 1;
    let reply: redis::RedisResult<i64> = redis::cmd("FCALL")
        .arg(format!("{}_mark", asdlc::functions::library_name()))
        .arg(3)
        .arg("asdlc:events")
        .arg(format!("{prefix}{wrong}:layout"))
        .arg(format!("{prefix}{wrong}:0707"))
        .arg(&prefix)
        .arg(width)
        .arg(wrong)
        .arg(layout.ttl.as_millis() as u64)
        .arg(format!("{}:4", layout.shards))
        .arg(&fp[..])
        .arg("mark")
        .query_async(&mut conn)
        .await;
    let e = reply.unwrap_err();
    assert_eq!(e.code(), Some("ASDLC_CLOCK"), "{e}");
    let detail = e.detail().unwrap();
    let server_ms: u64 = detail
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect(detail);
    assert!(server_ms.abs_diff(now) < 60_000, "{server_ms} vs {now}");
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(marks.is_empty(), "nothing written: {marks:?}");
}

#[tokio::test]
async fn a_process_whose_clock_is_a_bucket_off_marks_in_the_servers_bucket() {
    let s = server();
    let mut conn = conn(&s).await;
    let keys = StreamKeys::new("asdlc:clock-skew");
    let tracker = IdempotencyTracker::new(conn.clone(), keys.clone(), "g");
    assert!(!tracker.is_processed("warm-up").await.unwrap());
    let layout = MarkLayout::default();
    let width = layout.ttl.as_millis() as i64 / i64::from(layout.buckets);
    // This process now takes the server's clock to be a bucket (3.5 days) ahead: its first
    // call is refused, made again for the server's time, and the estimate corrected.
    let refused = asdlc::functions::skew_server_clock_estimate(width);
    let key = asdlc::event::unique_idempotency_key();
    assert!(tracker.mark_processed(&key).await.unwrap());
    assert!(!tracker.mark_processed(&key).await.unwrap());
    assert!(asdlc::functions::skew_server_clock_estimate(0) > refused);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.marks_prefix("g")))
        .query_async(&mut conn)
        .await
        .unwrap();
    // One mark hash and the bucket's layout, both in the server's bucket.
    let bucket = format!("{}{}:", keys.marks_prefix("g"), now / width);
    assert!(
        marks.len() == 2
            && marks.iter().all(|m| m.starts_with(&bucket))
            && marks.contains(&format!("{bucket}layout")),
        "{marks:?} in {bucket}"
    );
}

/// Copies of one event, `singles` published one at a time and then `batched` in one batch, to
/// a consumer of `group`: all acknowledged, the handler ran once, the rest counted as
/// duplicates, and the effect applied once.
async fn duplicate_publish_is_handled_once(
    target: Target,
    stream: &str,
    group: &str,
    e: AsdlcEvent,
    singles: usize,
    batched: usize,
) {
    let config = target.config(stream);
    let p = Publisher::connect(config.clone()).await.unwrap();
    let h = TestHandler::all("h");
    let c = consumer_for(&config, group, "w1", &h).await;
    let run = spawn(&c).await;
    for _ in 0..singles {
        p.publish(&e).await.unwrap();
    }
    if batched > 0 {
        p.publish_batch(&vec![e.clone(); batched]).await.unwrap();
    }
    let copies = (singles + batched) as u64;
    let mut conn = target.conn().await;
    eventually(WAIT, "all copies acknowledged", || {
        let mut conn = conn.clone();
        let c = c.clone();
        async move {
            let info = get_stream_info(&mut conn, stream).await.unwrap();
            c.stats().processed + c.stats().duplicates == copies
                && info.length == copies
                && info.total_pending() == 0
        }
    })
    .await;
    assert_eq!(h.count(), 1, "the handler ran once");
    assert_eq!(c.stats().duplicates, copies - 1);
    let applied = applied(&mut conn, stream, group).await;
    assert_eq!(applied.values().copied().collect::<Vec<_>>(), vec![1]);
    if let Some(key) = &e.idempotency_key {
        assert_eq!(applied.get(key), Some(&1));
    }
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn duplicate_publish_is_handled_once_on_a_server() {
    let e = event(EventType::PatchApplied, "s1");
    duplicate_publish_is_handled_once(
        Target::server(),
        "asdlc:events",
        "development-handlers",
        e,
        5,
        0,
    )
    .await;
}

#[tokio::test]
async fn duplicate_publish_is_handled_once_on_a_cluster() {
    let e = AsdlcEvent::builder(EventType::GateApproved, "s1")
        .idempotency_key("gate-7@abc1234")
        .build()
        .unwrap();
    duplicate_publish_is_handled_once(Target::cluster(), "cl-dup:events", "hitl-handlers", e, 2, 2)
        .await;
}

#[tokio::test]
async fn distinct_events_for_one_task_are_all_handled() {
    // The original hashed (type, session, task), so a second task_failed for the same task
    // was dropped as a duplicate.
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("h");
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    for _ in 0..3 {
        let e = AsdlcEvent::builder(EventType::TaskFailed, "s1")
            .task_id("t1")
            .build()
            .unwrap();
        p.publish(&e).await.unwrap();
    }
    eventually(WAIT, "three failures handled", || async { h.count() == 3 }).await;
    c.stop();
    run.await.unwrap().unwrap();
}

/// Two consumers of one group, each event published twice back to back (both copies in one
/// round trip, so the two consumers usually get one each): the handler runs exactly once per
/// key and every effect is applied once.
async fn same_key_in_two_consumers_at_once_runs_once(target: Target, stream: &str, rounds: usize) {
    let config = target.config(stream);
    let p = Publisher::connect(config.clone()).await.unwrap();
    let h1 = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(2)));
    let h2 = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(2)));
    let c1 = consumer_for(&config, "development-handlers", "w1", &h1).await;
    let c2 = consumer_for(&config, "development-handlers", "w2", &h2).await;
    let r1 = spawn(&c1).await;
    let r2 = spawn(&c2).await;
    for i in 0..rounds {
        let e = AsdlcEvent::builder(EventType::PatchApplied, format!("s{i}"))
            .build()
            .unwrap();
        p.publish_batch(&[e.clone(), e]).await.unwrap();
    }
    let mut conn = target.conn().await;
    eventually(WAIT, "every copy acknowledged", || {
        let mut conn = conn.clone();
        async move {
            let info = get_stream_info(&mut conn, stream).await.unwrap();
            info.length == 2 * rounds as u64 && info.total_pending() == 0
        }
    })
    .await;
    let keys: Vec<String> = h1
        .calls()
        .into_iter()
        .chain(h2.calls())
        .map(|c| c.key)
        .collect();
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), rounds);
    assert_eq!(keys.len(), rounds, "the handler ran exactly once per key");
    let applied = applied(&mut conn, stream, "development-handlers").await;
    assert_eq!(applied.len(), rounds);
    assert!(applied.values().all(|v| *v == 1));
    c1.stop();
    c2.stop();
    r1.await.unwrap().unwrap();
    r2.await.unwrap().unwrap();
}

#[tokio::test]
async fn same_key_in_two_consumers_at_once_runs_once_on_a_server() {
    same_key_in_two_consumers_at_once_runs_once(Target::server(), "asdlc:events", 100).await;
}

#[tokio::test]
async fn same_key_in_two_consumers_at_once_runs_once_on_a_cluster() {
    same_key_in_two_consumers_at_once_runs_once(Target::cluster(), "cl-race:events", 60).await;
}

#[tokio::test]
async fn two_groups_each_handle_an_event_once() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let dev = TestHandler::all("dev");
    let val = TestHandler::all("val");
    let c1 = consumer(&s, "development-handlers", "w1", &dev).await;
    let c2 = consumer(&s, "validation-handlers", "w1", &val).await;
    let r1 = spawn(&c1).await;
    let r2 = spawn(&c2).await;
    publish_n(&p, 10, EventType::PatchCreated).await;
    eventually(WAIT, "both groups handled all", || async {
        dev.count() == 10 && val.count() == 10
    })
    .await;
    c1.stop();
    c2.stop();
    r1.await.unwrap().unwrap();
    r2.await.unwrap().unwrap();
}

#[tokio::test]
async fn handler_protocol_is_satisfied() {
    // A hand-written handler, used as a trait object, as the runtime holds handlers.
    let h: Arc<dyn asdlc::EventHandler> =
        Arc::new(TestHandler::new("custom", &[EventType::GateApproved]));
    assert_eq!(h.name(), "custom");
    assert!(h.can_handle(EventType::GateApproved));
    let ctx = asdlc::HandlerContext::detached();
    let result = h.handle(&event(EventType::GateApproved, "s"), &ctx).await;
    assert!(result.is_ok());
    assert_eq!(ctx.staged().len(), 1);
}

#[tokio::test]
async fn handler_can_handle_filters_events() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::new(
        "gates",
        &[EventType::GateRequested, EventType::GateApproved],
    );
    let c = consumer(&s, "hitl-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    for t in [
        EventType::TaskCreated,
        EventType::GateRequested,
        EventType::AgentError,
        EventType::GateApproved,
    ] {
        p.publish(&event(t, "s")).await.unwrap();
    }
    let conn = conn(&s).await;
    eventually(WAIT, "all four acknowledged", || {
        let mut conn = conn.clone();
        let c = c.clone();
        async move {
            c.stats().processed == 2
                && c.stats().unhandled == 2
                && pending(&mut conn, "asdlc:events", "hitl-handlers").await == 0
        }
    })
    .await;
    let types: Vec<_> = h.calls().into_iter().map(|c| c.event.event_type).collect();
    assert_eq!(
        types,
        vec![EventType::GateRequested, EventType::GateApproved]
    );
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn handler_retry_nacks_message() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    // Fails twice, then succeeds: redelivered to the live consumer, no restart needed.
    let h = TestHandler::all("flaky").behave(|_, attempt| {
        if attempt < 3 {
            Behavior::Retry
        } else {
            Behavior::Ok
        }
    });
    let c = consumer_with(&s, "development-handlers", "w1", &h, |o| {
        // No claim would pick the entry up in this test's time: the redelivery must
        // come from the retry path.
        o.claim_idle = Duration::from_secs(60);
    })
    .await;
    let run = spawn(&c).await;
    p.publish(&event(EventType::TaskDispatched, "s"))
        .await
        .unwrap();
    eventually(WAIT, "third attempt succeeds", || async {
        c.stats().processed == 1
    })
    .await;
    let attempts: Vec<_> = h.calls().into_iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert_eq!(c.stats().retried, 2);
    let mut conn = conn(&s).await;
    assert_eq!(
        pending(&mut conn, "asdlc:events", "development-handlers").await,
        0
    );
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn max_deliveries_moves_to_dead_letters() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("always-fails").behave(|_, _| Behavior::Retry);
    let c = consumer_with(&s, "deployment-handlers", "w1", &h, |o| {
        o.max_deliveries = 3;
    })
    .await;
    let run = spawn(&c).await;
    let published = p
        .publish(&event(EventType::AgentCompleted, "s9"))
        .await
        .unwrap();
    eventually(WAIT, "dead-lettered", || async {
        c.stats().dead_lettered == 1
    })
    .await;
    assert_eq!(h.count(), 3);
    let mut conn = conn(&s).await;
    assert_eq!(
        pending(&mut conn, "asdlc:events", "deployment-handlers").await,
        0
    );
    let dead = deadletter::list(&mut conn, "asdlc:events", "-", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.source_stream, "asdlc:events");
    assert_eq!(d.source_id, published.event_id);
    assert_eq!(d.group, "deployment-handlers");
    assert_eq!(d.consumer, "w1");
    assert_eq!(d.handler, "always-fails");
    assert_eq!(d.attempts, 3);
    assert_eq!(d.error, "try again");
    assert!(d.reason.contains("last allowed attempt"), "{}", d.reason);
    assert_eq!(d.event().unwrap().session_id, "s9");
    let info = get_stream_info(&mut conn, "asdlc:events").await.unwrap();
    assert_eq!(info.dead_letters, 1);
    c.stop();
    run.await.unwrap().unwrap();
}

/// A permanent failure is dead-lettered at once and an event that keeps asking for a retry
/// after its last allowed attempt: both are listed with their reasons, the permanent one,
/// replayed after a fix, is handled under its idempotency key and cannot be replayed twice, and
/// a purge removes the rest.
async fn dead_letters_are_listed_replayed_and_purged(target: Target, stream: &str) {
    let config = target.config(stream);
    let p = Publisher::connect(config.clone()).await.unwrap();
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = fixed.clone();
    let h = TestHandler::all("strict").behave(move |e, _| {
        if e.session_id == "retry" {
            Behavior::Retry
        } else if f.load(std::sync::atomic::Ordering::SeqCst) {
            Behavior::Ok
        } else {
            Behavior::Permanent
        }
    });
    let c = EventConsumer::builder(config.clone(), "design-handlers")
        .handler(h.clone())
        .configure(|o| {
            fast(o);
            o.consumer = Some("w1".into());
            o.max_deliveries = 3;
        })
        .build()
        .await
        .unwrap();
    let run = spawn(&c).await;
    let e = event(EventType::GateRejected, "permanent");
    p.publish(&e).await.unwrap();
    p.publish(&event(EventType::GateRejected, "retry"))
        .await
        .unwrap();
    eventually(WAIT, "both dead-lettered", || async {
        c.stats().dead_lettered == 2
    })
    .await;
    let permanent_calls = || {
        h.calls()
            .into_iter()
            .filter(|c| c.event.session_id == "permanent")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        permanent_calls().len(),
        1,
        "a permanent failure is not retried"
    );
    let mut conn = target.conn().await;
    assert_eq!(deadletter::count(&mut conn, stream).await.unwrap(), 2);
    let dead = deadletter::list(&mut conn, stream, "-", 10).await.unwrap();
    let permanent = dead
        .iter()
        .find(|d| d.reason == "permanent failure")
        .unwrap();
    let retried = dead.iter().find(|d| d.attempts == 3).unwrap();
    assert_eq!(retried.event().unwrap().session_id, "retry");
    let info = get_stream_info(&mut conn, stream).await.unwrap();
    assert_eq!(info.dead_letters, 2);
    assert_eq!(info.group("design-handlers").unwrap().pending, 0);
    // After a fix, replay: same idempotency key, handled this time, dead letter gone.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let new_id = deadletter::replay(&mut conn, stream, &permanent.id)
        .await
        .unwrap();
    assert!(new_id.is_some());
    eventually(WAIT, "replayed event handled", || async {
        c.stats().processed == 1
    })
    .await;
    assert_eq!(permanent_calls()[1].key, e.idempotency_key.clone().unwrap());
    assert_eq!(deadletter::count(&mut conn, stream).await.unwrap(), 1);
    assert_eq!(
        deadletter::replay(&mut conn, stream, &permanent.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(deadletter::purge(&mut conn, stream).await.unwrap(), 1);
    assert_eq!(deadletter::count(&mut conn, stream).await.unwrap(), 0);
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_and_purged_on_a_server() {
    dead_letters_are_listed_replayed_and_purged(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_and_purged_on_a_cluster() {
    dead_letters_are_listed_replayed_and_purged(Target::cluster(), "cl-dead:events").await;
}

#[tokio::test]
async fn panics_and_timeouts_are_retryable_failures() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("wild").behave(|e, attempt| match (e.session_id.as_str(), attempt) {
        ("panic", 1) => Behavior::Panic,
        ("slow", 1) => Behavior::Sleep(Duration::from_secs(30)),
        _ => Behavior::Ok,
    });
    let c = consumer_with(&s, "development-handlers", "w1", &h, |o| {
        o.handler_timeout = Duration::from_millis(300);
    })
    .await;
    let run = spawn(&c).await;
    p.publish(&event(EventType::AgentError, "panic"))
        .await
        .unwrap();
    p.publish(&event(EventType::AgentError, "slow"))
        .await
        .unwrap();
    p.publish(&event(EventType::AgentError, "fine"))
        .await
        .unwrap();
    eventually(WAIT, "all three handled", || async {
        c.stats().processed == 3
    })
    .await;
    let stats = c.stats();
    assert_eq!((stats.panics, stats.timeouts, stats.retried), (1, 1, 2));
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn poison_entries_are_dead_lettered_and_the_batch_goes_on() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let mut conn = conn(&s).await;
    asdlc::create_consumer_group(
        &mut conn,
        "asdlc:events",
        "validation-handlers",
        asdlc::GroupStart::Beginning,
    )
    .await
    .unwrap();
    // Good and bad entries interleaved, all in one batch.
    p.publish(&event(EventType::TaskCreated, "good-1"))
        .await
        .unwrap();
    p.publish_event(&[
        ("event_type", "task_exploded"),
        ("session_id", "x"),
        ("timestamp", "2026-01-01T00:00:00Z"),
    ])
    .await
    .unwrap();
    p.publish_event(&[("event_type", "task_created")])
        .await
        .unwrap();
    p.publish_event(&[
        ("event_type", "task_created"),
        ("session_id", "x"),
        ("timestamp", "2026-01-01T00:00:00Z"),
        ("metadata", "{oops"),
    ])
    .await
    .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("asdlc:events")
        .arg("*")
        .arg(&[0xffu8, 0xfe][..])
        .arg(&[0x00u8, 0x9f][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    p.publish_event(&[
        ("event_type", "task_created"),
        ("session_id", "x"),
        ("timestamp", "2026-01-01T00:00:00Z"),
        ("tenant_id", "acme"),
    ])
    .await
    .unwrap();
    p.publish(&event(EventType::TaskCreated, "good-2"))
        .await
        .unwrap();

    let h = TestHandler::all("h");
    let c = consumer(&s, "validation-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    eventually(WAIT, "good handled, bad dead-lettered", || async {
        c.stats().processed == 2 && c.stats().dead_lettered == 5
    })
    .await;
    assert_eq!(
        pending(&mut conn, "asdlc:events", "validation-handlers").await,
        0
    );
    let dead = deadletter::list(&mut conn, "asdlc:events", "-", 10)
        .await
        .unwrap();
    let reasons: Vec<_> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert!(
        reasons[0].contains("event_type") && reasons[0].contains("task_exploded"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("session_id") && reasons[1].contains("missing"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("metadata"), "{reasons:?}");
    assert!(reasons[3].contains("event_type"), "{reasons:?}");
    assert!(reasons[4].contains("tenant mismatch"), "{reasons:?}");
    // The original bytes are kept exactly.
    assert_eq!(dead[3].fields[0].0, String::from_utf8_lossy(&[0xff, 0xfe]));
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn consumer_filters_by_tenant() {
    let s = server();
    let p = Publisher::connect(multi_config(&s)).await.unwrap();
    let h = TestHandler::all("h");
    let c = tenant_consumer_for(
        &multi_config(&s),
        "development-handlers",
        &tenant("acme"),
        "w1",
        &h,
    )
    .await;
    let run = spawn(&c).await;
    for t in ["acme", "globex", "acme"] {
        TenantContext::scope(tenant(t), p.publish(&event(EventType::TaskCreated, t)))
            .await
            .unwrap();
    }
    eventually(WAIT, "acme's events handled", || async { h.count() == 2 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = h.calls();
    assert_eq!(
        calls.len(),
        2,
        "globex's event never reached acme's consumer"
    );
    assert!(calls.iter().all(|c| c.event.session_id == "acme"));
    assert!(
        calls.iter().all(|c| c.tenant.as_deref() == Some("acme")),
        "handler ran in the tenant's context"
    );
    assert_eq!(c.streams(), vec!["tenant:{acme}:asdlc:events".to_owned()]);
    // A tenant can be added while running.
    assert!(c.add_tenant(tenant("globex")).await.unwrap());
    eventually(WAIT, "globex's backlog handled", || async {
        h.count() == 3
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap();
}

/// A consumer that read 250 entries and crashed before handling any restarts under its name:
/// `process_pending` handles all of them (in batches, not just the first 100), at no cost in
/// attempts.
async fn recovery_processes_pending_events(target: Target, stream: &str) {
    let config = target.config(stream);
    let p = Publisher::connect(config.clone()).await.unwrap();
    publish_n(&p, 250, EventType::TaskCreated).await;
    let mut conn = target.conn().await;
    // "w1" read everything and crashed before handling any of it.
    read_and_die(&mut conn, stream, "development-handlers", "w1", 250).await;
    let h = TestHandler::all("h");
    let c = consumer_for(&config, "development-handlers", "w1", &h).await;
    // All of them, in batches of 50 (not just the first 100).
    let result = c.process_pending().await.unwrap();
    assert_eq!(result.processed, 250);
    assert_eq!(result.skipped + result.failed, 0);
    assert_eq!(h.count(), 250);
    assert!(
        h.calls().iter().all(|c| c.attempt == 1),
        "a delivery that crashed before its handler began costs no attempt"
    );
    assert_eq!(pending(&mut conn, stream, "development-handlers").await, 0);
}

#[tokio::test]
async fn recovery_processes_pending_events_on_a_server() {
    recovery_processes_pending_events(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn recovery_processes_pending_events_on_a_cluster() {
    recovery_processes_pending_events(Target::cluster(), "cl-recover:events").await;
}

#[tokio::test]
async fn recovery_runs_before_consumption_at_start() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    publish_n(&p, 20, EventType::TaskCreated).await;
    let mut conn = conn(&s).await;
    read_and_die(&mut conn, "asdlc:events", "development-handlers", "w1", 20).await;
    let h = TestHandler::all("h");
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    // The consumer restarts under its own name: its pending entries are handled at once,
    // before ready() returns, without waiting for any idle threshold.
    let run = spawn(&c).await;
    assert_eq!(h.count(), 20);
    assert_eq!(
        pending(&mut conn, "asdlc:events", "development-handlers").await,
        0
    );
    c.stop();
    run.await.unwrap().unwrap();
}

/// Handled events published again and left pending for a dead consumer: `process_pending`
/// acknowledges them without handling them twice, and every effect stays applied once.
async fn recovery_skips_already_processed(target: Target, stream: &str) {
    let config = target.config(stream);
    let p = Publisher::connect(config.clone()).await.unwrap();
    let h = TestHandler::all("h");
    let c = consumer_for(&config, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    let events = publish_n(&p, 5, EventType::TaskCompleted).await;
    eventually(WAIT, "handled", || async { h.count() == 5 }).await;
    c.stop();
    run.await.unwrap().unwrap();
    // The same events arrive again (a producer retry) and sit pending for a dead consumer.
    p.publish_batch(&events).await.unwrap();
    let mut conn = target.conn().await;
    read_and_die(&mut conn, stream, "development-handlers", "w1", 5).await;
    let c = consumer_for(&config, "development-handlers", "w1", &h).await;
    let result = c.process_pending().await.unwrap();
    assert_eq!((result.processed, result.skipped), (0, 5));
    assert_eq!(h.count(), 5, "acknowledged without reprocessing");
    let applied = applied(&mut conn, stream, "development-handlers").await;
    assert_eq!(applied.len(), 5);
    assert!(applied.values().all(|v| *v == 1));
    assert_eq!(pending(&mut conn, stream, "development-handlers").await, 0);
}

#[tokio::test]
async fn recovery_skips_already_processed_on_a_server() {
    recovery_skips_already_processed(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn recovery_skips_already_processed_on_a_cluster() {
    recovery_skips_already_processed(Target::cluster(), "cl-recover-skip:events").await;
}

/// Entries pending for a dead consumer are claimed by another once they are stale, not
/// before, and handled there.
async fn recovery_claims_from_dead_consumers(target: Target, stream: &str) {
    let config = target.config(stream);
    let p = Publisher::connect(config.clone()).await.unwrap();
    publish_n(&p, 7, EventType::TaskCreated).await;
    let mut conn = target.conn().await;
    read_and_die(&mut conn, stream, "development-handlers", "dead-worker", 7).await;
    let h = TestHandler::all("h");
    let c = consumer_for(&config, "development-handlers", "w2", &h).await;
    // Not yet stale: nothing claimed.
    let early = c
        .claim_stale_messages(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(early.claimed, 0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let result = c
        .claim_stale_messages(Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!((result.claimed, result.processed), (7, 7));
    assert!(h.calls().iter().all(|c| c.consumer == "w2"));
    assert_eq!(pending(&mut conn, stream, "development-handlers").await, 0);
}

#[tokio::test]
async fn recovery_claims_from_dead_consumers_on_a_server() {
    recovery_claims_from_dead_consumers(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn recovery_claims_from_dead_consumers_on_a_cluster() {
    recovery_claims_from_dead_consumers(Target::cluster(), "cl-recover-claim:events").await;
}

#[tokio::test]
async fn deleted_pending_entries_are_acknowledged_not_retried() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let events = p
        .publish_batch(&[
            event(EventType::TaskCreated, "a"),
            event(EventType::TaskCreated, "b"),
        ])
        .await
        .unwrap();
    let mut conn = conn(&s).await;
    read_and_die(
        &mut conn,
        "asdlc:events",
        "development-handlers",
        "dead-worker",
        2,
    )
    .await;
    read_and_die(&mut conn, "asdlc:events", "development-handlers", "w1", 0).await;
    let _: i64 = redis::cmd("XDEL")
        .arg("asdlc:events")
        .arg(&events[0].event_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let h = TestHandler::all("h");
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let result = c
        .claim_stale_messages(Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(result.claimed, 2);
    assert_eq!(result.processed, 1);
    assert_eq!(result.skipped, 1);
    assert_eq!(
        pending(&mut conn, "asdlc:events", "development-handlers").await,
        0
    );
}

#[tokio::test]
async fn a_crashed_consumer_is_recovered_by_a_peer_and_by_itself() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let mut conn = conn(&s).await;

    // 1. w1 crashes mid-handler; w2, already running, claims the entry once it is stale.
    let stuck = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_secs(3600)));
    let c1 = consumer(&s, "development-handlers", "w1", &stuck).await;
    let r1 = spawn(&c1).await;
    let peer = TestHandler::all("h");
    let c2 = consumer(&s, "development-handlers", "w2", &peer).await;
    let r2 = spawn(&c2).await;
    c2.stop();
    r2.await.unwrap().unwrap();
    let e = event(EventType::PatchApplied, "crash-1");
    p.publish(&e).await.unwrap();
    eventually(WAIT, "w1 is handling it", || async { stuck.count() == 1 }).await;
    r1.abort();
    drop(c1);
    let _ = r1.await;
    let c2 = consumer(&s, "development-handlers", "w2", &peer).await;
    let r2 = spawn(&c2).await;
    eventually(
        WAIT,
        "the peer handled it after the idle threshold",
        || async { peer.count() == 1 },
    )
    .await;
    assert_eq!(peer.calls()[0].attempt, 2);
    c2.stop();
    r2.await.unwrap().unwrap();

    // 2. w3 crashes mid-handler and restarts at once under the same name: it takes its
    // name back from the dead process and handles its own entry immediately.
    let stuck = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_secs(3600)));
    let c3 = consumer(&s, "design-handlers", "w3", &stuck).await;
    let r3 = spawn(&c3).await;
    p.publish(&event(EventType::PatchApplied, "crash-2"))
        .await
        .unwrap();
    eventually(WAIT, "w3 is handling both", || async { stuck.count() == 2 }).await;
    r3.abort();
    drop(c3);
    let _ = r3.await;
    let again = TestHandler::all("h");
    let started = std::time::Instant::now();
    let c3 = consumer(&s, "design-handlers", "w3", &again).await;
    let r3 = spawn(&c3).await;
    assert_eq!(again.count(), 2, "recovered during start-up");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no wait for the lock or the idle threshold: {:?}",
        started.elapsed()
    );
    c3.stop();
    r3.await.unwrap().unwrap();
    let applied = applied(&mut conn, "asdlc:events", "development-handlers").await;
    assert_eq!(applied.len(), 1);
    assert!(applied.values().all(|v| *v == 1), "{applied:?}");
    let applied = applied_in(&mut conn, "design-handlers").await;
    assert_eq!(applied.len(), 2);
    assert!(applied.values().all(|v| *v == 1), "{applied:?}");
}

async fn applied_in(
    conn: &mut asdlc::RedisConnection,
    group: &str,
) -> std::collections::HashMap<String, i64> {
    applied(conn, "asdlc:events", group).await
}

#[tokio::test]
async fn long_handlers_are_not_stolen() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    // Runs for 3x the claim threshold; a peer claiming every 200 ms must not take it.
    let slow = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(2500)));
    let peer = TestHandler::all("h");
    let c1 = consumer(&s, "development-handlers", "w1", &slow).await;
    let c2 = consumer(&s, "development-handlers", "w2", &peer).await;
    let r1 = spawn(&c1).await;
    p.publish(&event(EventType::AgentStarted, "long"))
        .await
        .unwrap();
    eventually(WAIT, "w1 started it", || async { slow.count() == 1 }).await;
    let r2 = spawn(&c2).await;
    eventually(WAIT, "w1 finished it", || async {
        c1.stats().processed == 1
    })
    .await;
    assert_eq!(peer.count(), 0, "the peer never claimed work in progress");
    assert_eq!(c2.stats().claimed, 0);
    c1.stop();
    c2.stop();
    r1.await.unwrap().unwrap();
    r2.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_live_consumer_name_is_refused() {
    let s = server();
    let h = TestHandler::all("h");
    let c1 = consumer(&s, "development-handlers", "same", &h).await;
    let r1 = spawn(&c1).await;
    let c2 = consumer(&s, "development-handlers", "same", &h).await;
    let started = std::time::Instant::now();
    let err = c2.start().await.unwrap_err();
    assert!(matches!(err, ConsumeError::NameInUse { .. }), "{err}");
    assert!(err.to_string().contains("same"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    c1.stop();
    r1.await.unwrap().unwrap();
    // Once the first one stopped, the name is free again (for a new consumer: one runs once).
    let c3 = consumer(&s, "development-handlers", "same", &h).await;
    let r3 = spawn(&c3).await;
    c3.stop();
    r3.await.unwrap().unwrap();
}

#[tokio::test]
async fn stop_returns_promptly_while_a_read_is_blocked() {
    let s = server();
    let h = TestHandler::all("h");
    let c = EventConsumer::builder(config(&s), "development-handlers")
        .handler(h)
        .configure(|o| {
            o.consumer = Some("w1".into());
            o.block = Duration::from_secs(30);
        })
        .build()
        .await
        .unwrap();
    let run = spawn(&c).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    c.stop();
    run.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn graceful_stop_lets_running_handlers_commit() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(300)));
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    publish_n(&p, 20, EventType::TaskCreated).await;
    eventually(WAIT, "handlers running", || async { h.count() == 20 }).await;
    c.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(
        stats.processed, 20,
        "in-flight handlers finished and committed"
    );
    let mut conn = conn(&s).await;
    assert_eq!(
        pending(&mut conn, "asdlc:events", "development-handlers").await,
        0
    );
}

#[tokio::test]
async fn staged_effects_apply_exactly_once_across_a_crash_before_commit() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    // The first delivery stages its effect, then the process dies before the commit.
    let h = TestHandler::all("h").behave(|_, attempt| {
        if attempt == 1 {
            Behavior::Sleep(Duration::from_secs(3600))
        } else {
            Behavior::Ok
        }
    });
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    let e = event(EventType::PatchApplied, "s");
    p.publish(&e).await.unwrap();
    p.publish(&e).await.unwrap();
    eventually(WAIT, "first delivery running", || async { h.count() >= 1 }).await;
    run.abort();
    drop(c);
    let _ = run.await;
    let mut conn = conn(&s).await;
    assert!(
        applied(&mut conn, "asdlc:events", "development-handlers")
            .await
            .is_empty(),
        "nothing applied before the commit"
    );
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    eventually(WAIT, "recovered", || {
        let mut conn = conn.clone();
        async move { pending(&mut conn, "asdlc:events", "development-handlers").await == 0 }
    })
    .await;
    let applied = applied(&mut conn, "asdlc:events", "development-handlers").await;
    assert_eq!(applied.get(e.idempotency_key.as_deref().unwrap()), Some(&1));
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn effects_outside_the_stream_slot_are_refused() {
    let ctx = asdlc::HandlerContext::detached();
    let err = ctx
        .stage(asdlc::Effect::set("some:other:key", "v"))
        .unwrap_err();
    assert!(matches!(err, asdlc::EffectError::CrossSlot { .. }));
    assert!(err.to_string().contains("scoped_key"), "{err}");
}

#[tokio::test]
async fn acknowledge_removes_an_entry_from_pending() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let published = p
        .publish(&event(EventType::TaskCreated, "s"))
        .await
        .unwrap();
    let mut conn = conn(&s).await;
    read_and_die(&mut conn, "asdlc:events", "development-handlers", "w1", 1).await;
    let h = TestHandler::all("h");
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    assert!(c.acknowledge(&published.event_id).await.unwrap());
    assert!(!c.acknowledge(&published.event_id).await.unwrap());
    assert_eq!(
        pending(&mut conn, "asdlc:events", "development-handlers").await,
        0
    );
}

#[tokio::test]
async fn gone_consumers_are_forgotten_but_never_one_that_owns_entries() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let mut conn = conn(&s).await;
    // "ghost" joined and left owning nothing; "holder" died owning an entry.
    read_and_die(
        &mut conn,
        "asdlc:events",
        "development-handlers",
        "ghost",
        1,
    )
    .await;
    p.publish(&event(EventType::TaskCreated, "s"))
        .await
        .unwrap();
    read_and_die(
        &mut conn,
        "asdlc:events",
        "development-handlers",
        "holder",
        1,
    )
    .await;
    let h = TestHandler::all("h");
    let c = consumer_with(&s, "development-handlers", "w1", &h, |o| {
        o.claim_idle = Duration::from_secs(60);
        o.forget_idle = Some(Duration::from_millis(300));
    })
    .await;
    let run = spawn(&c).await;
    let names = |conn: asdlc::RedisConnection| async move {
        let mut conn = conn;
        let info = get_stream_info(&mut conn, "asdlc:events").await.unwrap();
        let mut names: Vec<String> = info
            .group("development-handlers")
            .unwrap()
            .consumers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        names.sort();
        names
    };
    eventually(WAIT, "ghost forgotten", || {
        let conn = conn.clone();
        async move { !names(conn).await.contains(&"ghost".to_owned()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = names(conn.clone()).await;
    assert!(
        left.contains(&"holder".to_owned()),
        "the holder keeps its entry: {left:?}"
    );
    assert!(!left.contains(&"ghost".to_owned()));
    assert_eq!(
        pending(&mut conn, "asdlc:events", "development-handlers").await,
        1
    );
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn consumer_resumes_after_a_server_restart() {
    let mut s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("h");
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    publish_n(&p, 10, EventType::TaskCreated).await;
    eventually(WAIT, "first batch handled", || async {
        c.stats().processed == 10
    })
    .await;
    s.restart();
    // Publishing may need a retry while the publisher's connection comes back.
    let mut published = Vec::new();
    for i in 0..10 {
        let e = event(EventType::TaskCreated, &format!("after-{i}"));
        for _ in 0..50 {
            if p.publish(&e).await.is_ok() {
                published.push(e.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(published.len(), 10);
    eventually(WAIT, "second batch handled after the restart", || async {
        c.stats().processed == 20
    })
    .await;
    let mut conn = conn(&s).await;
    let applied = applied(&mut conn, "asdlc:events", "development-handlers").await;
    assert_eq!(applied.len(), 20);
    assert!(applied.values().all(|v| *v == 1));
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn consumer_resumes_after_its_connections_are_killed() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(20)));
    let c = consumer(&s, "development-handlers", "w1", &h).await;
    let run = spawn(&c).await;
    let mut conn = conn(&s).await;
    for round in 0..5 {
        let events: Vec<_> = (0..20)
            .map(|i| event(EventType::TaskCreated, &format!("r{round}-{i}")))
            .collect();
        // The publisher's own connection is killed too: it reconnects on the next try.
        let mut tries = 0;
        while p.publish_batch(&events).await.is_err() {
            tries += 1;
            assert!(tries < 50, "publisher never reconnected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = cut_connections(&mut conn).await;
    }
    let mut conn = self::conn(&s).await;
    eventually(
        Duration::from_secs(30),
        "everything handled and acknowledged",
        || {
            let mut conn = conn.clone();
            let c = c.clone();
            async move {
                c.stats().processed + c.stats().duplicates >= 100
                    && pending(&mut conn, "asdlc:events", "development-handlers").await == 0
            }
        },
    )
    .await;
    let applied = applied(&mut conn, "asdlc:events", "development-handlers").await;
    assert_eq!(applied.len(), 100, "nothing lost");
    assert!(applied.values().all(|v| *v == 1), "nothing applied twice");
    c.stop();
    run.await.unwrap().unwrap();
}

/// Counts WARN and ERROR events.
struct CountWarnings(Arc<std::sync::atomic::AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_consumer_logs_no_errors() {
    use tracing_subscriber::layer::SubscriberExt;
    let s = server();
    let warnings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(CountWarnings(warnings.clone()));
    // A current-thread runtime: every task of the consumer logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::warn!("the counter sees warnings");
    assert_eq!(warnings.swap(0, std::sync::atomic::Ordering::SeqCst), 1);
    let h = TestHandler::all("h");
    let c = consumer_with(&s, "development-handlers", "idle", &h, |o| {
        o.block = Duration::from_millis(200);
    })
    .await;
    let run = spawn(&c).await;
    // Many blocking reads come and go with nothing to read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.stop();
    run.await.unwrap().unwrap();
    assert_eq!(
        warnings.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an idle consumer logged warnings or errors"
    );
}
