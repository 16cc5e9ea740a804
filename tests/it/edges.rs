//! The consumer at its edges: attempts counted by the server, the name lock across reconnects
//! and restarts, automatic names, a consumer's life after stop, leases that do not leak, and
//! entries of ours that nobody handles.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use asdlc::{
    AsdlcEvent, BoxFuture, ConsumeError, EventConsumer, EventHandler, EventType, HandlerContext,
    HandlerResult, Publisher, StreamKeys, deadletter, get_stream_info,
};
use redis::Value;

const WAIT: Duration = Duration::from_secs(20);
const STREAM: &str = "asdlc:events";

async fn consumer_with(
    s: &TestServer,
    group: &str,
    name: Option<&str>,
    handler: impl EventHandler,
    tweak: impl FnOnce(&mut asdlc::ConsumerOptions),
) -> EventConsumer {
    EventConsumer::builder(config(s), group)
        .handler(handler)
        .configure(|o| {
            fast(o);
            o.consumer = name.map(str::to_owned);
            tweak(o);
        })
        .build()
        .await
        .unwrap()
}

fn lease_hash(group: &str) -> String {
    StreamKeys::new(STREAM)
        .lease_prefix(group)
        .trim_end_matches(':')
        .to_owned()
}

async fn hlen(conn: &mut asdlc::RedisConnection, key: &str) -> i64 {
    redis::cmd("HLEN").arg(key).query_async(conn).await.unwrap()
}

async fn pending(conn: &mut asdlc::RedisConnection, group: &str) -> u64 {
    let info = get_stream_info(conn, STREAM).await.unwrap();
    info.group(group).map(|g| g.pending).unwrap_or(0)
}

/// A handler that stages `INCRBY` on a key that holds a hash, which the commit refuses.
#[derive(Clone, Default)]
struct RefusedEffect {
    calls: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl EventHandler for RefusedEffect {
    fn name(&self) -> &str {
        "refused-effect"
    }
    fn can_handle(&self, _: EventType) -> bool {
        true
    }
    fn handle<'a>(
        &'a self,
        _: &'a AsdlcEvent,
        ctx: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push((ctx.attempt(), Instant::now()));
            ctx.stage(asdlc::Effect::incr_by(ctx.scoped_key("a-hash"), 1))
                .unwrap();
            HandlerResult::ok()
        })
    }
}

#[tokio::test]
async fn a_refused_effect_is_a_failed_attempt_retried_after_its_backoff_then_dead_lettered() {
    let s = server();
    let mut conn = conn(&s).await;
    let key = StreamKeys::new(STREAM).scoped("a-hash");
    let _: i64 = redis::cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let h = RefusedEffect::default();
    let c = consumer_with(&s, "g", Some("w1"), h.clone(), |o| {
        o.max_deliveries = 3;
        o.retry.base = Duration::from_millis(300);
        o.retry.max = Duration::from_millis(300);
    })
    .await;
    let run = spawn(&c).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    p.publish(&event(EventType::TaskCreated, "s1"))
        .await
        .unwrap();
    eventually(WAIT, "dead-lettered", || async {
        c.stats().dead_lettered == 1
    })
    .await;
    // Some time for a loop that would go on, as the refused commit once did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = h.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        [1, 2, 3],
        "three attempts, counted by the server"
    );
    for w in calls.windows(2) {
        // Jitter scales the 300 ms backoff by 0.5 to 1.
        assert!(
            w[1].1 - w[0].1 >= Duration::from_millis(140),
            "a retry waits its backoff: {:?}",
            w[1].1 - w[0].1
        );
    }
    let dead = deadletter::list(&mut conn, STREAM, "-", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].error.contains(&format!(
            "effect refused: INCRBY on {key}: key holds a hash"
        )),
        "{}",
        dead[0].error
    );
    assert!(
        dead[0].reason.contains("last allowed attempt"),
        "{}",
        dead[0].reason
    );
    let kept: Vec<String> = redis::cmd("HKEYS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, ["f"], "nothing of the refused record applied");
    assert_eq!(pending(&mut conn, "g").await, 0);
    assert_eq!(hlen(&mut conn, &lease_hash("g")).await, 0, "no lease left");
    c.stop();
    run.await.unwrap().unwrap();
}

/// Reads the stream's entries as consumer `name` of `group` (or claims them to it) and
/// forgets them: a process that took them and died before any handler began.
async fn take_and_die(conn: &mut asdlc::RedisConnection, group: &str, name: &str, first: bool) {
    if first {
        asdlc::create_consumer_group(conn, STREAM, group, asdlc::GroupStart::Beginning)
            .await
            .unwrap();
        read_without_ack(conn, STREAM, group, name, None).await;
    } else {
        let _: Value = redis::cmd("XAUTOCLAIM")
            .arg(STREAM)
            .arg(group)
            .arg(name)
            .arg(0)
            .arg("0-0")
            .query_async(conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_event_outlives_more_consumer_deaths_than_max_deliveries_when_no_handler_began() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    p.publish(&event(EventType::TaskCreated, "s1"))
        .await
        .unwrap();
    let mut conn = conn(&s).await;
    // Eight consumers take the entry in turn and die before handling it: its delivery count
    // grows to 8, past max_deliveries 3.
    for i in 0..8 {
        take_and_die(&mut conn, "g", &format!("dead-{i}"), i == 0).await;
    }
    let pel: Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("g")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(format!("{pel:?}").contains("int(8)"), "{pel:?}");
    let h = TestHandler::all("h");
    let c = consumer_with(&s, "g", Some("w1"), h.clone(), |o| o.max_deliveries = 3).await;
    let run = spawn(&c).await;
    eventually(WAIT, "handled", || async { c.stats().processed == 1 }).await;
    assert_eq!(h.calls()[0].attempt, 1, "no handler had begun before");
    assert!(
        deadletter::list(&mut conn, STREAM, "-", 10)
            .await
            .unwrap()
            .is_empty()
    );
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_crash_while_the_handler_runs_costs_an_attempt_and_the_last_is_dead_lettered() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    p.publish(&event(EventType::TaskCreated, "s1"))
        .await
        .unwrap();
    let h = TestHandler::all("hangs").behave(|_, _| Behavior::Sleep(Duration::from_secs(3600)));
    let mut conn = conn(&s).await;
    // Three processes in turn start the handler and die while it runs.
    for i in 1..=3 {
        let c = consumer_with(&s, "g", Some(&format!("w{i}")), h.clone(), |o| {
            o.max_deliveries = 3;
        })
        .await;
        let run = spawn(&c).await;
        eventually(WAIT, "handler running", || async { h.count() == i }).await;
        run.abort();
        let _ = run.await;
        drop(c);
    }
    assert_eq!(
        h.calls().iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let c = consumer_with(&s, "g", Some("w4"), h.clone(), |o| o.max_deliveries = 3).await;
    let run = spawn(&c).await;
    eventually(WAIT, "dead-lettered", || async {
        c.stats().dead_lettered == 1
    })
    .await;
    assert_eq!(h.count(), 3, "no fourth attempt");
    let dead = deadletter::list(&mut conn, STREAM, "-", 10).await.unwrap();
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].reason.contains("kept crashing"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        hlen(&mut conn, &lease_hash("g")).await,
        0,
        "the crashed deliveries' lease went with the dead letter"
    );
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn leases_left_behind_long_ago_are_swept() {
    let s = server();
    let mut conn = conn(&s).await;
    let key = lease_hash("g");
    // A lease that lapsed two hours ago, of an entry an operator acknowledged by hand, and a
    // live one of another process.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let old = format!("{}|2|tok|1-0", now_ms - 2 * 3600 * 1000);
    let live = format!("{}|1|tok|2-0", now_ms + 3600 * 1000);
    let _: i64 = redis::cmd("HSET")
        .arg(&key)
        .arg("old-fingerpr")
        .arg(old)
        .arg("live-fingerp")
        .arg(&live)
        .query_async(&mut conn)
        .await
        .unwrap();
    let c = consumer_with(&s, "g", Some("w1"), TestHandler::all("h"), |_| {}).await;
    let run = spawn(&c).await;
    eventually(WAIT, "the stale lease swept", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { hlen(&mut conn, &key).await == 1 }
    })
    .await;
    let kept: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("live-fingerp")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some(live.as_str()));
    c.stop();
    run.await.unwrap().unwrap();
}

/// After `wait`, the holder `c1` of a name another consumer was refused is still running: it
/// handles an event published now, and stops cleanly.
async fn holder_goes_on(
    s: &TestServer,
    c1: &EventConsumer,
    r1: tokio::task::JoinHandle<Result<asdlc::ConsumerStats, ConsumeError>>,
    wait: Duration,
) {
    tokio::time::sleep(wait).await;
    assert!(!r1.is_finished(), "the holder kept running");
    let p = Publisher::connect(config(s)).await.unwrap();
    p.publish(&event(EventType::TaskCreated, "after"))
        .await
        .unwrap();
    eventually(WAIT, "handled by the holder", || async {
        c1.stats().processed == 1
    })
    .await;
    c1.stop();
    r1.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_live_holder_keeps_its_name_when_its_connections_are_cut() {
    let s = server();
    let h = TestHandler::all("h");
    let c1 = consumer_with(&s, "g", Some("same"), h.clone(), |_| {}).await;
    let r1 = spawn(&c1).await;
    let mut conn = conn(&s).await;
    cut_connections(&mut conn).await.unwrap();
    // A second process started right in the gap, while the holder's old client id is gone.
    let c2 = consumer_with(&s, "g", Some("same"), h.clone(), |_| {}).await;
    let started = Instant::now();
    let err = c2.start().await.unwrap_err();
    assert!(matches!(err, ConsumeError::NameInUse { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused in about 2 s, not {:?}",
        started.elapsed()
    );
    for msg in ["same", "ASDLC_CONSUMER", "ConsumerOptions::consumer"] {
        assert!(err.to_string().contains(msg), "{err}");
    }
    // The holder goes on, and handles what comes.
    holder_goes_on(&s, &c1, r1, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_live_holder_keeps_its_name_across_a_server_restart_that_lost_it() {
    let mut s = server();
    let h = TestHandler::all("h");
    let c1 = consumer_with(&s, "g", Some("same"), h.clone(), |_| {}).await;
    let r1 = spawn(&c1).await;
    // No persistence: the restart loses the lock (and everything else).
    s.restart();
    let c2 = consumer_with(&s, "g", Some("same"), h.clone(), |_| {}).await;
    let err = c2.start().await.unwrap_err();
    assert!(matches!(err, ConsumeError::NameInUse { .. }), "{err}");
    holder_goes_on(&s, &c1, r1, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn consumers_without_a_name_take_the_lowest_free_host_number_and_keep_it() {
    let s = server();
    let host = asdlc::consume::host_name();
    let h = TestHandler::all("h");
    let a = consumer_with(&s, "g", None, h.clone(), |_| {}).await;
    let ra = spawn(&a).await;
    let b = consumer_with(&s, "g", None, h.clone(), |_| {}).await;
    let rb = spawn(&b).await;
    assert_eq!(a.consumer_name(), format!("{host}-1"));
    assert_eq!(b.consumer_name(), format!("{host}-2"));
    // Both consume: the group spreads entries over the two.
    let p = Publisher::connect(config(&s)).await.unwrap();
    for i in 0..40 {
        p.publish(&event(EventType::TaskCreated, &format!("s{i}")))
            .await
            .unwrap();
    }
    eventually(WAIT, "all handled", || async {
        a.stats().processed + b.stats().processed == 40
    })
    .await;
    // The first stops; a process started after it gets its number (and its entries) back.
    a.stop();
    ra.await.unwrap().unwrap();
    let a2 = consumer_with(&s, "g", None, h.clone(), |_| {}).await;
    let ra2 = spawn(&a2).await;
    assert_eq!(a2.consumer_name(), format!("{host}-1"));
    for (c, r) in [(a2, ra2), (b, rb)] {
        c.stop();
        r.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_stopped_consumer_does_not_start_and_ready_says_why() {
    let s = server();
    let c = consumer_with(&s, "g", Some("w1"), TestHandler::all("h"), |_| {}).await;
    c.stop();
    let err = c.start().await.unwrap_err();
    assert!(matches!(err, ConsumeError::Finished { .. }), "{err}");
    let ready = tokio::time::timeout(WAIT, c.ready())
        .await
        .expect("resolves");
    assert!(
        matches!(ready, Err(ConsumeError::Finished { .. })),
        "{ready:?}"
    );

    // A run that fails at start: ready() resolves with the reason.
    let holder = consumer_with(&s, "g", Some("w2"), TestHandler::all("h"), |_| {}).await;
    let rh = spawn(&holder).await;
    let second = consumer_with(&s, "g", Some("w2"), TestHandler::all("h"), |_| {}).await;
    let run = {
        let second = second.clone();
        tokio::spawn(async move { second.start().await })
    };
    let ready = tokio::time::timeout(WAIT, second.ready())
        .await
        .expect("resolves");
    match ready {
        Err(ConsumeError::NotReady { reason, .. }) => {
            assert!(reason.contains("in use"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run.await.unwrap(),
        Err(ConsumeError::NameInUse { .. })
    ));
    holder.stop();
    rh.await.unwrap().unwrap();
}

#[tokio::test]
async fn entries_of_ours_that_nobody_handles_are_read_again_without_waiting_for_a_claim() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    for i in 0..5 {
        p.publish(&event(EventType::TaskCreated, &format!("lost-{i}")))
            .await
            .unwrap();
    }
    let mut conn = conn(&s).await;
    // Another consumer read them and died.
    take_and_die(&mut conn, "g", "other", true).await;
    let h = TestHandler::all("h");
    let c = consumer_with(&s, "g", Some("w1"), h.clone(), |o| {
        // Far beyond the test's wait: only a re-read of its own entries finds them in time.
        o.claim_idle = Duration::from_secs(120);
    })
    .await;
    let run = spawn(&c).await;
    assert_eq!(h.count(), 0, "idle for less than claim_idle: not claimed");
    // Now they are pending to w1 without w1 working on them: the state a read whose reply
    // was lost on a cut connection leaves (also what `asdlc recover --claim-to w1` does).
    let _: Value = redis::cmd("XAUTOCLAIM")
        .arg(STREAM)
        .arg("g")
        .arg("w1")
        .arg(0)
        .arg("0-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(WAIT, "the entries handled", || async { h.count() == 5 }).await;
    assert!(h.calls().iter().all(|c| c.consumer == "w1"));
    c.stop();
    run.await.unwrap().unwrap();
}

/// Writes an entry of `fields` to the stream as it is, bypassing the publisher.
async fn xadd_raw(conn: &mut asdlc::RedisConnection, fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query_async(conn).await.unwrap()
}

/// Writes an entry as another producer might: no idempotency key, deduplicated by its id.
async fn xadd_keyless(conn: &mut asdlc::RedisConnection, session: &str) -> String {
    xadd_raw(
        conn,
        &[
            ("v", b"1"),
            ("event_type", b"task_created"),
            ("session_id", session.as_bytes()),
            ("timestamp", b"2026-12-03T12:00:00Z"),
        ],
    )
    .await
}

async fn replay_all_including_malformed(
    conn: &mut asdlc::RedisConnection,
) -> deadletter::ReplayReport {
    let options = deadletter::ReplayOptions::default().with_include_malformed(true);
    deadletter::replay_all_with(conn, STREAM, options)
        .await
        .unwrap()
}

/// Waits until `group` has read up to `id` and has nothing pending.
async fn read_and_owes_nothing(s: &TestServer, group: &str, id: &str) {
    eventually(
        WAIT,
        &format!("{group} read {id} and owes nothing"),
        || async {
            let mut conn = crate::common::conn(s).await;
            let info = get_stream_info(&mut conn, STREAM).await.unwrap();
            let g = info.group(group).unwrap();
            g.pending == 0 && g.last_delivered_id == id
        },
    )
    .await;
}

/// A handler that fails for good while `failing` is set.
fn failing_while(name: &str, failing: &Arc<std::sync::atomic::AtomicBool>) -> TestHandler {
    let failing = failing.clone();
    TestHandler::all(name).behave(move |_, _| {
        if failing.load(std::sync::atomic::Ordering::SeqCst) {
            Behavior::Permanent
        } else {
            Behavior::Ok
        }
    })
}

#[tokio::test]
async fn a_replayed_keyless_entry_is_skipped_by_the_groups_that_handled_the_original() {
    let s = server();
    let mut conn = conn(&s).await;
    let original = xadd_keyless(&mut conn, "s1").await;
    let fails = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (ha, hb) = (TestHandler::all("a"), failing_while("b", &fails));
    let a = consumer_with(&s, "a", Some("wa"), ha.clone(), |_| {}).await;
    let b = consumer_with(&s, "b", Some("wb"), hb.clone(), |_| {}).await;
    let (ra, rb) = (spawn(&a).await, spawn(&b).await);
    eventually(WAIT, "a handled, b dead-lettered", || async {
        a.stats().processed == 1 && b.stats().dead_lettered == 1
    })
    .await;

    fails.store(false, std::sync::atomic::Ordering::SeqCst);
    let dead = deadletter::list(&mut conn, STREAM, "-", 10).await.unwrap();
    let copy = deadletter::replay(&mut conn, STREAM, &dead[0].id)
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "b handled the copy", || async {
        b.stats().processed == 1
    })
    .await;
    read_and_owes_nothing(&s, "a", &copy).await;
    assert_eq!(ha.count(), 1, "group a skipped the copy of what it handled");
    let last = hb.calls().last().unwrap().clone();
    assert_eq!(last.entry_id, copy);
    assert_eq!(
        last.key,
        deadletter::keyless_identity(&original),
        "the copy keeps the identity of the original"
    );
    a.stop();
    b.stop();
    ra.await.unwrap().unwrap();
    rb.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_dead_letter_replayed_to_its_group_is_handled_by_that_group_only() {
    let s = server();
    let mut conn = conn(&s).await;
    let fails = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (hb, hc) = (failing_while("b", &fails), failing_while("c", &fails));
    let b = consumer_with(&s, "b", Some("wb"), hb.clone(), |_| {}).await;
    let c = consumer_with(&s, "c", Some("wc"), hc.clone(), |_| {}).await;
    let (rb, rc) = (spawn(&b).await, spawn(&c).await);
    let p = Publisher::connect(config(&s)).await.unwrap();
    p.publish(&event(EventType::TaskCreated, "s1"))
        .await
        .unwrap();
    eventually(WAIT, "both groups gave up", || async {
        b.stats().dead_lettered == 1 && c.stats().dead_lettered == 1
    })
    .await;
    fails.store(false, std::sync::atomic::Ordering::SeqCst);
    let dead = deadletter::list(&mut conn, STREAM, "-", 10).await.unwrap();
    let of_b = dead.iter().find(|d| d.group == "b").unwrap();
    // To any group but b the letter would be lost (skipped there, ignored everywhere else).
    for wrong in ["c", "nobody"] {
        let refused = deadletter::replay_to_group(&mut conn, STREAM, &of_b.id, wrong)
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("given up by group b"),
            "{refused}"
        );
    }
    assert_eq!(deadletter::count(&mut conn, STREAM).await.unwrap(), 2);
    let copy = deadletter::replay_to_group(&mut conn, STREAM, &of_b.id, "b")
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "b handled the copy", || async {
        b.stats().processed == 1
    })
    .await;
    read_and_owes_nothing(&s, "c", &copy).await;
    assert_eq!(hc.count(), 1, "c never handled the copy meant for b");
    assert_eq!(c.stats().processed, 0);
    assert_eq!(
        deadletter::count(&mut conn, STREAM).await.unwrap(),
        1,
        "c's dead letter is still there"
    );
    assert!(
        deadletter::replay_to_group(&mut conn, STREAM, &of_b.id, "not a group!")
            .await
            .is_err()
    );

    // A malformed entry replayed to b alone: c acknowledges it without dead-lettering it
    // a second time.
    xadd_malformed(&mut conn, 10).await;
    eventually(WAIT, "both dead-lettered the malformed entry", || async {
        b.stats().dead_lettered == 2 && c.stats().dead_lettered == 2
    })
    .await;
    let dead = deadletter::list(&mut conn, STREAM, "-", 10).await.unwrap();
    let malformed_of_b = dead
        .iter()
        .find(|d| d.group == "b" && d.reason.starts_with("malformed"))
        .unwrap();
    let copy = deadletter::replay_to_group(&mut conn, STREAM, &malformed_of_b.id, "b")
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "b dead-lettered the copy", || async {
        b.stats().dead_lettered == 3
    })
    .await;
    read_and_owes_nothing(&s, "c", &copy).await;
    assert_eq!(c.stats().dead_lettered, 2, "c left the copy for b alone");
    b.stop();
    c.stop();
    rb.await.unwrap().unwrap();
    rc.await.unwrap().unwrap();
}

/// Writes an entry no handler can take: its type is unknown.
async fn xadd_malformed(conn: &mut asdlc::RedisConnection, size: usize) -> String {
    xadd_raw(
        conn,
        &[
            ("v", b"1"),
            ("event_type", b"no_such_type"),
            ("session_id", b"s1"),
            ("blob", &vec![b'x'; size]),
        ],
    )
    .await
}

#[tokio::test]
async fn replaying_all_skips_dead_letters_that_cannot_succeed_and_says_why() {
    let s = server();
    let mut conn = conn(&s).await;
    let fails = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = failing_while("h", &fails);
    let c = consumer_with(&s, "g", Some("w1"), h.clone(), |_| {}).await;
    let run = spawn(&c).await;
    xadd_malformed(&mut conn, 10).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    p.publish(&event(EventType::TaskCreated, "s1"))
        .await
        .unwrap();
    eventually(WAIT, "both dead-lettered", || async {
        c.stats().dead_lettered == 2
    })
    .await;
    fails.store(false, std::sync::atomic::Ordering::SeqCst);
    let report = deadletter::replay_all(&mut conn, STREAM).await.unwrap();
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.skipped.len(), 1);
    assert!(
        report.skipped[0].reason.contains("malformed")
            && report.skipped[0].reason.contains("no_such_type"),
        "{:?}",
        report.skipped
    );
    eventually(WAIT, "the good one handled", || async {
        c.stats().processed == 1
    })
    .await;
    assert_eq!(deadletter::count(&mut conn, STREAM).await.unwrap(), 1);

    // Asked to, it replays the malformed one too, which comes straight back: the replay
    // covers what was there when it began, so it ends.
    let again = replay_all_including_malformed(&mut conn).await;
    assert_eq!((again.replayed.len(), again.skipped.len()), (1, 0));
    eventually(WAIT, "dead-lettered again", || async {
        c.stats().dead_lettered == 3
    })
    .await;
    c.stop();
    run.await.unwrap().unwrap();
}

/// The source entry ids of the dead letters kept, oldest first.
async fn dead_letter_sources(conn: &mut asdlc::RedisConnection) -> Vec<String> {
    deadletter::list(conn, STREAM, "-", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.source_id)
        .collect()
}

#[tokio::test]
async fn the_dead_letter_stream_keeps_only_its_newest_within_its_length_and_age() {
    let s = server();
    let mut conn = conn(&s).await;
    let c = consumer_with(&s, "g", Some("w1"), TestHandler::all("h"), |o| {
        o.dead_letters.max_len = Some(5);
        o.dead_letters.max_age = Some(Duration::from_millis(1500));
    })
    .await;
    let run = spawn(&c).await;
    let mut sources = Vec::new();
    for _ in 0..12 {
        sources.push(xadd_malformed(&mut conn, 10).await);
    }
    eventually(WAIT, "all dead-lettered", || async {
        c.stats().dead_lettered == 12
    })
    .await;
    let kept = dead_letter_sources(&mut conn).await;
    assert_eq!(kept, sources[7..], "the five newest are kept");

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let newest = xadd_malformed(&mut conn, 10).await;
    eventually(WAIT, "one more dead-lettered", || async {
        c.stats().dead_lettered == 13
    })
    .await;
    let kept = dead_letter_sources(&mut conn).await;
    assert_eq!(kept, [newest], "the older ones aged out");
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_huge_poison_entry_is_kept_cut_to_the_payload_cap_and_never_replayed() {
    let s = server();
    let mut conn = conn(&s).await;
    let c = consumer_with(&s, "g", Some("w1"), TestHandler::all("h"), |_| {}).await;
    let run = spawn(&c).await;
    let source = xadd_malformed(&mut conn, 1_200_000).await;
    eventually(WAIT, "dead-lettered", || async {
        c.stats().dead_lettered == 1
    })
    .await;
    let dead = deadletter::list(&mut conn, STREAM, "-", 10).await.unwrap();
    let d = &dead[0];
    assert_eq!(d.source_id, source);
    let stored: usize = d.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(stored <= 64 * 1024, "{stored} bytes stored");
    assert!(d.truncated_from.unwrap() > 1_200_000);
    let event_type = d.fields.iter().find(|(k, _)| k == "event_type").unwrap();
    assert_eq!(
        event_type.1, "no_such_type",
        "the small fields survive whole"
    );
    let dlq_bytes: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(StreamKeys::new(STREAM).dead_letter())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(dlq_bytes < 200_000, "{dlq_bytes} bytes");

    let refused = deadletter::replay(&mut conn, STREAM, &d.id)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot be replayed"),
        "{refused}"
    );
    let report = replay_all_including_malformed(&mut conn).await;
    assert_eq!((report.replayed.len(), report.skipped.len()), (0, 1));
    assert!(
        report.skipped[0].reason.contains("part of its"),
        "{report:?}"
    );
    assert_eq!(deadletter::count(&mut conn, STREAM).await.unwrap(), 1);
    c.stop();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_lease_hash_is_a_hashtable_while_leases_are_held_and_gone_when_none_are() {
    let s = server();
    let mut conn = conn(&s).await;
    let h = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(800)));
    let c = consumer_with(&s, "g", Some("w1"), h.clone(), |_| {}).await;
    let run = spawn(&c).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    for i in 0..5 {
        p.publish(&event(EventType::TaskCreated, &format!("s{i}")))
            .await
            .unwrap();
    }
    eventually(WAIT, "five handlers running", || async { h.count() == 5 }).await;
    // A few leases would fit the compact listpack encoding, where every lookup scans them
    // all; the lease hash is kept a hashtable from its first lease.
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(lease_hash("g"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(encoding, "hashtable");
    assert_eq!(
        hlen(&mut conn, &lease_hash("g")).await,
        6,
        "5 leases and `about`"
    );
    eventually(WAIT, "all committed", || async { c.stats().processed == 5 }).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(lease_hash("g"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "no lease hash once no lease is held");
    c.stop();
    run.await.unwrap().unwrap();
}
