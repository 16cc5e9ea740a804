//! Seed task T08, end to end through the [`Runtime`] with handlers declared by
//! `#[event_handler]`, against a real server: publish -> consume -> ack, load balancing in a
//! group, duplicates never reprocessed, recovery after a simulated crash, tenant isolation.
//!
//! The consumer engine's own cases (retries, dead letters, claims) are in `consuming.rs`;
//! real worker processes killed and restarted are in `chaos.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use asdlc::prelude::*;
use asdlc::{
    ConsumeError, EventConsumer, IdempotencyTracker, PublishError, RuntimeReport, StreamKeys,
    Tenancy, deadletter, get_stream_info,
};

const WAIT: Duration = Duration::from_secs(15);

/// One handler call, as every handler of this file records it.
#[derive(Debug, Clone)]
struct Seen {
    group: String,
    key: String,
    consumer: String,
    attempt: u32,
    entry_id: String,
    tenant: Option<String>,
    context_tenant: Option<String>,
    event: AsdlcEvent,
}

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// Records the call and stages the group's exactly-once effect
/// (`HINCRBY applied:<group> <key> 1`, read back with [`crate::common::applied`]).
fn record(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    let key = event.idempotency_key.clone().unwrap_or_default();
    SEEN.lock().unwrap().push(Seen {
        group: ctx.group().to_owned(),
        key: key.clone(),
        consumer: ctx.consumer().to_owned(),
        attempt: ctx.attempt(),
        entry_id: ctx.entry_id().to_owned(),
        tenant: ctx.tenant().map(|t| t.to_string()),
        context_tenant: TenantContext::current().map(|t| t.to_string()),
        event: event.clone(),
    });
    ctx.stage(Effect::hincr_by(
        ctx.scoped_key(&format!("applied:{}", ctx.group())),
        key,
        1,
    ))?;
    Ok(())
}

fn seen(group: &str) -> Vec<Seen> {
    SEEN.lock()
        .unwrap()
        .iter()
        .filter(|s| s.group == group)
        .cloned()
        .collect()
}

#[event_handler(types = [TaskCreated, PatchApplied], group = "t08-e2e")]
async fn end_to_end(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    record(event, ctx)
}

#[event_handler(types = [TaskDispatched], group = "t08-balance")]
async fn balanced(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    // Long enough that one consumer cannot take the whole burst alone.
    tokio::time::sleep(Duration::from_millis(5)).await;
    record(event, ctx)
}

#[event_handler(types = [TaskDispatched], group = "t08-audit")]
async fn audit(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    record(event, ctx)
}

#[event_handler(types = [PatchApplied, GateApproved], group = "t08-idempotent")]
async fn apply_patch(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    record(event, ctx)
}

#[event_handler(types = [GateExpired], group = "t08-slow")]
async fn slow(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    record(event, ctx)
}

/// While set, first deliveries of `t08-crash` hang until the process "dies".
static HANG_FIRST_DELIVERY: AtomicBool = AtomicBool::new(true);

#[event_handler(types = [AgentStarted], group = "t08-crash")]
async fn crashes_once(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    let hang = ctx.attempt() == 1 && HANG_FIRST_DELIVERY.load(Ordering::SeqCst);
    // The effect is staged before the crash: it must not be applied by the dying delivery.
    record(event, ctx)?;
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Ok(())
}

#[event_handler(types = [AgentCompleted], group = "t08-tenant")]
async fn tenant_handler(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    record(event, ctx)
}

fn runtime(cfg: Config, group: &str, consumer: &str) -> asdlc::RuntimeBuilder {
    Runtime::builder()
        .config(cfg)
        .groups([group])
        .consumer_name(consumer)
        .configure(|_, o| fast(o))
}

async fn group_pending(conn: &mut asdlc::RedisConnection, stream: &str, group: &str) -> u64 {
    get_stream_info(conn, stream)
        .await
        .unwrap()
        .group(group)
        .map_or(0, |g| g.pending)
}

async fn keys_matching(conn: &mut asdlc::RedisConnection, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn end_to_end_publish_consume_ack() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let group = "t08-e2e";
    let running = start_runtime(runtime(config(&s), group, "e2e-worker")).await;
    let sent = AsdlcEvent::builder(EventType::PatchApplied, "session-e2e")
        .epic_id("epic-7")
        .task_id("task-3")
        .git_sha("0123abcd")
        .artifact_paths(["src/a,b.rs", "docs/new\nline.md"])
        .mode(asdlc::Mode::Rlm)
        .meta("reviewer", "ada")
        .build()
        .unwrap();
    let published = p.publish(&sent).await.unwrap();
    let other = p
        .publish(&event(EventType::TaskCreated, "session-e2e"))
        .await
        .unwrap();
    // Not a type of the group's handler: acknowledged without a call.
    p.publish(&event(EventType::GateRequested, "session-e2e"))
        .await
        .unwrap();

    eventually(WAIT, "both events handled", || async {
        seen(group).len() == 2
    })
    .await;
    let mut conn = conn(&s).await;
    eventually(WAIT, "everything acknowledged", || {
        let mut conn = conn.clone();
        async move { group_pending(&mut conn, "asdlc:events", group).await == 0 }
    })
    .await;
    let report = stop_runtime(running).await;

    // The handler saw the event as published, with the id Redis assigned.
    let calls = seen(group);
    let call = calls
        .iter()
        .find(|c| c.entry_id == published.event_id)
        .expect("the patch event was handled");
    let mut expected = sent.clone();
    expected.event_id = Some(published.event_id.clone());
    assert_eq!(call.event, expected);
    assert_eq!(call.attempt, 1);
    assert_eq!(call.consumer, "e2e-worker");
    assert!(calls.iter().any(|c| c.entry_id == other.event_id));

    // Acknowledged, marked processed, effect applied once, no lease left, nothing unread.
    let stats = report.group(group).unwrap().stats;
    assert_eq!((stats.processed, stats.unhandled), (2, 1));
    let info = get_stream_info(&mut conn, "asdlc:events").await.unwrap();
    let g = info.group(group).unwrap();
    assert_eq!((g.pending, g.lag), (0, Some(0)));
    let tracker = IdempotencyTracker::new(conn.clone(), StreamKeys::new("asdlc:events"), group);
    assert!(
        tracker
            .is_processed(&published.idempotency_key)
            .await
            .unwrap()
    );
    let applied = applied(&mut conn, "asdlc:events", group).await;
    assert_eq!(applied.get(&published.idempotency_key), Some(&1));
    assert_eq!(applied.len(), 2);
    assert!(
        keys_matching(&mut conn, "{asdlc:events}:lease:*")
            .await
            .is_empty()
    );
    assert_eq!(info.dead_letters, 0);
}

#[tokio::test]
async fn consumer_group_load_balancing() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let group = "t08-balance";
    // Four handlers at a time each, so neither consumer can take a burst alone.
    let narrow = |consumer| {
        runtime(config(&s), group, consumer).configure(|_, o| {
            o.concurrency = 4;
            o.batch_size = 4;
        })
    };
    let w1 = start_runtime(narrow("balance-1")).await;
    let w2 = start_runtime(narrow("balance-2")).await;
    // A second group on the same stream gets its own copy of every event.
    let audit = start_runtime(runtime(config(&s), "t08-audit", "audit-1")).await;
    let mut keys = HashSet::new();
    for round in 0..10 {
        let events: Vec<AsdlcEvent> = (0..30)
            .map(|i| event(EventType::TaskDispatched, &format!("r{round}-{i}")))
            .collect();
        for published in p.publish_batch(&events).await.unwrap() {
            keys.insert(published.idempotency_key);
        }
    }
    eventually(WAIT, "all 300 handled in both groups", || async {
        seen(group).len() == 300 && seen("t08-audit").len() == 300
    })
    .await;
    let r1 = stop_runtime(w1).await;
    let r2 = stop_runtime(w2).await;
    stop_runtime(audit).await;

    let calls = seen(group);
    let mut by_consumer: HashMap<&str, HashSet<&str>> = HashMap::new();
    for c in &calls {
        by_consumer
            .entry(&c.consumer)
            .or_default()
            .insert(&c.entry_id);
    }
    let one = &by_consumer["balance-1"];
    let two = &by_consumer["balance-2"];
    assert!(
        one.len() >= 50 && two.len() >= 50,
        "both consumers took a share: {} / {}",
        one.len(),
        two.len()
    );
    assert!(one.is_disjoint(two), "no event went to both consumers");
    assert_eq!(one.len() + two.len(), 300);
    let processed = |r: &RuntimeReport| r.group(group).unwrap().stats.processed;
    assert_eq!(processed(&r1) + processed(&r2), 300);
    let mut conn = conn(&s).await;
    for g in [group, "t08-audit"] {
        let applied = applied(&mut conn, "asdlc:events", g).await;
        assert_eq!(applied.keys().cloned().collect::<HashSet<_>>(), keys);
        assert!(applied.values().all(|v| *v == 1), "{g}: {applied:?}");
        assert_eq!(group_pending(&mut conn, "asdlc:events", g).await, 0);
    }
}

#[tokio::test]
async fn idempotent_processing_prevents_duplicates() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let group = "t08-idempotent";
    // The same event three times (a producer retrying after a timeout), and two different
    // events announcing one operation (a gate approved twice at the same git SHA).
    let patch = event(EventType::PatchApplied, "idem");
    for _ in 0..3 {
        p.publish(&patch).await.unwrap();
    }
    let approval = || {
        AsdlcEvent::builder(EventType::GateApproved, "idem")
            .task_id("t1")
            .git_sha("abcdef1")
            .operation_key()
            .build()
            .unwrap()
    };
    let (a1, a2) = (approval(), approval());
    assert_eq!(a1.idempotency_key, a2.idempotency_key);
    p.publish(&a1).await.unwrap();
    p.publish(&a2).await.unwrap();

    let running = start_runtime(runtime(config(&s), group, "idem-1")).await;
    let mut conn = conn(&s).await;
    all_acknowledged(&conn, group, "all five entries acknowledged").await;
    // Published again after it was processed, even to a restarted consumer: still skipped.
    let report = stop_runtime(running).await;
    p.publish(&patch).await.unwrap();
    let running = start_runtime(runtime(config(&s), group, "idem-2")).await;
    eventually(WAIT, "the late copy acknowledged", || {
        let mut conn = conn.clone();
        async move {
            let info = get_stream_info(&mut conn, "asdlc:events").await.unwrap();
            info.group(group).unwrap().lag == Some(0)
                && group_pending(&mut conn, "asdlc:events", group).await == 0
        }
    })
    .await;
    let late = stop_runtime(running).await;

    let calls = seen(group);
    assert_eq!(calls.len(), 2, "one call per key: {calls:?}");
    let keys: HashSet<&str> = calls.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys.len(), 2);
    let stats = report.group(group).unwrap().stats;
    assert_eq!((stats.processed, stats.duplicates), (2, 3));
    let late = late.group(group).unwrap().stats;
    assert_eq!((late.processed, late.duplicates), (0, 1));
    let applied = applied(&mut conn, "asdlc:events", group).await;
    assert_eq!(applied.len(), 2);
    assert!(applied.values().all(|v| *v == 1), "{applied:?}");
}

#[tokio::test]
async fn recovery_after_simulated_crash() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let group = "t08-crash";
    let mut conn = conn(&s).await;

    // A worker takes five events and "crashes" mid-handler: its task is dropped with every
    // handler hanging after staging its effect.
    let crashing = start_runtime(runtime(config(&s), group, "crash-worker")).await;
    let events: Vec<AsdlcEvent> = (0..5)
        .map(|i| event(EventType::AgentStarted, &format!("crash-{i}")))
        .collect();
    p.publish_batch(&events).await.unwrap();
    eventually(WAIT, "five handlers running", || async {
        seen(group).len() == 5
    })
    .await;
    let (handle, run) = crashing;
    run.abort();
    let _ = run.await;
    drop(handle);
    assert_eq!(group_pending(&mut conn, "asdlc:events", group).await, 5);
    assert!(
        applied(&mut conn, "asdlc:events", group).await.is_empty(),
        "no effect of an unfinished handler was applied"
    );

    // Restarted under the same name: recovery handles the five before anything new, as second
    // deliveries, each once.
    HANG_FIRST_DELIVERY.store(false, Ordering::SeqCst);
    p.publish(&event(EventType::AgentStarted, "after-restart"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let running = start_runtime(runtime(config(&s), group, "crash-worker")).await;
    let recovery = running.0.report().group(group).unwrap().recovery.unwrap();
    assert_eq!(recovery.processed, 5, "{recovery:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took its name back at once: {:?}",
        started.elapsed()
    );
    eventually(WAIT, "the new event handled too", || async {
        seen(group).len() == 11
    })
    .await;
    stop_runtime(running).await;
    let calls = seen(group);
    let second: Vec<&Seen> = calls.iter().skip(5).collect();
    assert!(
        second[..5].iter().all(|c| c.attempt == 2),
        "recovered entries first, as redeliveries: {second:?}"
    );
    assert_eq!(second[5].event.session_id, "after-restart");
    let applied = applied(&mut conn, "asdlc:events", group).await;
    assert_eq!(applied.len(), 6);
    assert!(applied.values().all(|v| *v == 1), "{applied:?}");
    assert_eq!(group_pending(&mut conn, "asdlc:events", group).await, 0);
}

#[tokio::test]
async fn tenant_isolation_in_multi_tenant_mode() {
    let s = server();
    let group = "t08-tenant";
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let acme_stream = "tenant:{acme}:asdlc:events";
    let globex_stream = "tenant:{globex}:asdlc:events";
    // Acme's deployment may only ever serve acme.
    let acme_only = Config {
        tenancy: Tenancy::multi_only([acme.clone()]),
        ..multi_config(&s)
    };

    // Acme's publisher cannot write globex's events; a publisher of both can.
    let acme_publisher = Publisher::connect(acme_only.clone()).await.unwrap();
    let err = TenantContext::scope(
        globex.clone(),
        acme_publisher.publish(&event(EventType::AgentCompleted, "nope")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PublishError::Tenant(asdlc::TenantError::NotAllowed(_))),
        "{err}"
    );
    let p = Publisher::connect(multi_config(&s)).await.unwrap();
    for t in [&acme, &globex] {
        for i in 0..3 {
            TenantContext::scope(
                t.clone(),
                p.publish(&event(EventType::AgentCompleted, &format!("{t}-{i}"))),
            )
            .await
            .unwrap();
        }
    }
    // Entries smuggled onto acme's stream: one claiming to be globex's, one with no tenant.
    let mut conn = conn(&s).await;
    for tenant_field in [Some("globex"), None] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(acme_stream)
            .arg("*")
            .arg("event_type")
            .arg("agent_completed")
            .arg("session_id")
            .arg("smuggled")
            .arg("timestamp")
            .arg("2026-01-01T00:00:00Z");
        if let Some(t) = tenant_field {
            cmd.arg("tenant_id").arg(t);
        }
        let _: String = cmd.query_async(&mut conn).await.unwrap();
    }

    // An acme consumer cannot be pointed at globex's stream, at build or while running.
    let err = EventConsumer::builder(acme_only.clone(), group)
        .tenant(globex.clone())
        .handler(TestHandler::all("h"))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConsumeError::Tenant(asdlc::TenantError::NotAllowed(_))),
        "{err}"
    );
    let consumer = EventConsumer::builder(acme_only.clone(), group)
        .tenant(acme.clone())
        .handler(TestHandler::all("h"))
        .build()
        .await
        .unwrap();
    assert_eq!(consumer.streams(), vec![acme_stream.to_owned()]);
    assert!(consumer.add_tenant(globex.clone()).await.is_err());
    assert_eq!(consumer.streams(), vec![acme_stream.to_owned()]);
    drop(consumer);

    let running = start_runtime(runtime(acme_only.clone(), group, "acme-worker")).await;
    eventually(
        WAIT,
        "acme's events handled, the smuggled ones dead-lettered",
        || {
            let mut conn = conn.clone();
            async move {
                seen(group).len() == 3
                    && deadletter::count(&mut conn, acme_stream).await.unwrap() == 2
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_runtime(running).await;

    let calls = seen(group);
    assert_eq!(calls.len(), 3, "{calls:?}");
    for c in &calls {
        assert!(c.event.session_id.starts_with("acme-"), "{c:?}");
        assert_eq!(c.tenant.as_deref(), Some("acme"));
        assert_eq!(c.context_tenant.as_deref(), Some("acme"));
        assert_eq!(c.event.tenant_id.as_ref(), Some(&acme));
    }
    let dead = deadletter::list(&mut conn, acme_stream, "-", 10)
        .await
        .unwrap();
    assert!(
        dead.iter().all(|d| d.reason.contains("tenant mismatch")),
        "{dead:?}"
    );
    // Globex's stream was never read by acme's deployment: no group, nothing pending, and
    // acme's effects live in acme's keys only.
    let info = get_stream_info(&mut conn, globex_stream).await.unwrap();
    assert_eq!(info.length, 3);
    assert!(info.groups.is_empty(), "{:?}", info.groups);
    assert_eq!(applied(&mut conn, acme_stream, group).await.len(), 3);
    assert!(
        keys_matching(&mut conn, "tenant:{globex}:*fx*")
            .await
            .is_empty()
    );
    assert_eq!(group_pending(&mut conn, acme_stream, group).await, 0);
}

/// A second copy of an event whose first copy is still being handled waits for it, then is
/// skipped as a duplicate.
#[tokio::test]
async fn a_duplicate_waiting_for_a_long_handler_is_skipped_not_dead_lettered() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let group = "t08-slow";
    let running = start_runtime(runtime(config(&s), group, "slow-1")).await;
    let e = event(EventType::GateExpired, "slow");
    p.publish(&e).await.unwrap();
    // The copy arrives while the first delivery's handler runs (2 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.publish(&e).await.unwrap();
    let mut conn = conn(&s).await;
    all_acknowledged(&conn, group, "both copies acknowledged").await;
    let report = stop_runtime(running).await;
    let stats = report.group(group).unwrap().stats;
    let dead = deadletter::list(&mut conn, "asdlc:events", "-", 10)
        .await
        .unwrap();
    assert!(
        dead.is_empty(),
        "the waiting copy was dead-lettered: {:?}",
        dead.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
    assert_eq!((stats.processed, stats.duplicates), (1, 1), "{stats:?}");
    assert_eq!(seen(group).len(), 1);
}
