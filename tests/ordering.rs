//! Per-key ordering against a real server and a cluster: four consumers, 200 sessions of 20
//! events published interleaved, handlers with random delays; every session handled in
//! publish order, never two of its events at once, every event exactly once. The same with a
//! consumer process killed with SIGKILL mid-run; a retrying event holding back its session
//! while the others flow; a dead letter releasing it; and the queues of the order hash, step
//! by step, through the functions themselves.
//!
//! The handler logs the start and end of each call straight to Redis (so a call a killed
//! process never finished is seen), and stages the event's number on its session's list, which
//! the commit applies exactly once, in commit order. The worker processes of the SIGKILL test
//! are this test binary started again with a filter selecting [`ordering_worker_process`].

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asdlc::{
    AsdlcEvent, BoxFuture, Config, ConsumerStats, Effect, EventConsumer, EventHandler, EventType,
    HandlerContext, HandlerResult, HandlerSpec, OrderBy, Publisher, RedisConnection, RedisUrl,
    StreamKeys,
};
use asdlc_testing::{TestCluster, TestServer};
use redis::AsyncCommands;

const GROUP: &str = "ordered-handlers";

/// The heavy tests of this file run one at a time: on a small machine, three of them at once
/// measure the machine rather than the consumers.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SESSIONS: usize = 200;
const PER_SESSION: usize = 20;

fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ASDLC_TEST_LOG"))
        .with_test_writer()
        .try_init();
}

fn config(url: RedisUrl, stream: &str) -> Config {
    Config {
        redis_url: url,
        stream: stream.to_owned(),
        ..Config::default()
    }
}

/// What the handler does with an event beyond recording it: `None` succeeds.
type Script = fn(&AsdlcEvent, u32) -> Option<HandlerResult>;

fn always_ok(_: &AsdlcEvent, _: u32) -> Option<HandlerResult> {
    None
}

/// The handler under test (see the module docs).
#[derive(Clone)]
struct Recorder {
    conn: RedisConnection,
    /// The longest random delay of a call, in ms.
    max_delay_ms: u64,
    script: Script,
}

fn seq_of(event: &AsdlcEvent) -> u64 {
    event
        .metadata
        .get("seq")
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::MAX)
}

/// A delay from the entry id, so the test needs no random source shared between processes.
fn delay_of(id: &str, max_ms: u64) -> Duration {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    Duration::from_millis(h % (max_ms + 1))
}

impl EventHandler for Recorder {
    fn name(&self) -> &str {
        "recorder"
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
            let seq = seq_of(event);
            let log = ctx.scoped_key(&format!("start:{}", event.session_id));
            let mut conn = self.conn.clone();
            if let Err(e) = conn.rpush::<_, _, ()>(&log, format!("s{seq}")).await {
                return HandlerResult::retry(e.to_string());
            }
            tokio::time::sleep(delay_of(ctx.entry_id(), self.max_delay_ms)).await;
            if let Some(result) = (self.script)(event, ctx.attempt()) {
                let _: Result<(), _> = conn.rpush(&log, format!("f{seq}")).await;
                return result;
            }
            if let Err(e) = conn.rpush::<_, _, ()>(&log, format!("e{seq}")).await {
                return HandlerResult::retry(e.to_string());
            }
            let done = ctx.scoped_key(&format!("done:{}", event.session_id));
            let staged = ctx
                .stage(Effect::rpush(done, seq.to_string()))
                .and_then(|()| ctx.stage(Effect::incr_by(ctx.scoped_key("done-count"), 1)));
            match staged {
                Ok(()) => HandlerResult::ok(),
                Err(e) => HandlerResult::permanent(e.to_string()),
            }
        })
    }
}

fn fast(o: &mut asdlc::ConsumerOptions) {
    o.block = Duration::from_millis(100);
    o.claim_idle = Duration::from_millis(1500);
    o.claim_interval = Duration::from_millis(300);
    o.retry.base = Duration::from_millis(30);
    o.retry.max = Duration::from_millis(150);
    o.shutdown_grace = Duration::from_secs(5);
    o.batch_size = 50;
}

async fn consumer(
    config: Config,
    name: &str,
    handler: Recorder,
    tweak: impl FnOnce(&mut asdlc::ConsumerOptions),
) -> EventConsumer {
    EventConsumer::builder(config, GROUP)
        .handler_spec(HandlerSpec::new(Arc::new(handler)).ordered_by(OrderBy::Session))
        .configure(|o| {
            fast(o);
            o.consumer = Some(name.to_owned());
            tweak(o);
        })
        .build()
        .await
        .unwrap()
}

type Running = tokio::task::JoinHandle<Result<ConsumerStats, asdlc::ConsumeError>>;

async fn spawn(consumer: &EventConsumer) -> Running {
    let c = consumer.clone();
    let handle = tokio::spawn(async move { c.start().await });
    tokio::time::timeout(Duration::from_secs(20), consumer.ready())
        .await
        .expect("consumer ready in time")
        .expect("consumer ready");
    handle
}

/// An event of `session`, number `seq` in it.
fn event(session: &str, seq: usize) -> AsdlcEvent {
    AsdlcEvent::builder(EventType::TaskCreated, session)
        .meta("seq", seq as u64)
        .build()
        .unwrap()
}

fn session(i: usize) -> String {
    format!("s{i:03}")
}

/// `sessions` sessions of `per_session` events, published round-robin: the first event of
/// every session, then the second of every session, and so on.
async fn publish_interleaved(config: &Config, sessions: usize, per_session: usize) {
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    let mut events = Vec::with_capacity(sessions * per_session);
    for seq in 0..per_session {
        for s in 0..sessions {
            events.push(event(&session(s), seq));
        }
    }
    for chunk in events.chunks(500) {
        publisher.publish_batch(chunk).await.unwrap();
    }
}

async fn done_count(conn: &mut RedisConnection, keys: &StreamKeys) -> u64 {
    let n: Option<u64> = conn.get(keys.scoped("done-count")).await.unwrap();
    n.unwrap_or(0)
}

async fn wait_done(conn: &mut RedisConnection, keys: &StreamKeys, n: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let done = done_count(conn, keys).await;
        if done >= n {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "only {done} of {n} events committed in {within:?}\n{}",
                stuck(conn, keys).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the group's pending entries look like, for a failure message.
async fn stuck(conn: &mut RedisConnection, keys: &StreamKeys) -> String {
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(keys.stream())
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(conn)
        .await
        .unwrap();
    let order: HashMap<String, String> = conn.hgetall(keys.order_hash(GROUP)).await.unwrap();
    format!("order hash {order:?}\nfirst pending {pending:?}")
}

/// Checks one session's logs; returns its problems. `done` must be exactly `expected`; the
/// start log must show calls one at a time, in order (a call a killed process left open is
/// followed by the same event again).
fn check_session(name: &str, starts: &[String], done: &[String], expected: &[u64]) -> Vec<String> {
    let mut problems = Vec::new();
    let done: Vec<u64> = done.iter().map(|d| d.parse().unwrap()).collect();
    if done != expected {
        problems.push(format!("{name}: committed {done:?}, expected {expected:?}"));
    }
    let mut open: Option<u64> = None;
    let mut last: Option<u64> = None;
    for item in starts {
        let (what, seq) = item.split_at(1);
        let seq: u64 = seq.parse().unwrap();
        match what {
            "s" => {
                if let Some(o) = open
                    && o != seq
                {
                    problems.push(format!("{name}: {seq} started while {o} ran ({starts:?})"));
                }
                let in_order = match last {
                    None => expected.first() == Some(&seq),
                    Some(l) => {
                        seq == l || expected.iter().skip_while(|e| **e != l).nth(1) == Some(&seq)
                    }
                };
                if !in_order {
                    problems.push(format!("{name}: {seq} started after {last:?} ({starts:?})"));
                }
                open = Some(seq);
                last = Some(seq);
            }
            _ => {
                if open != Some(seq) {
                    problems.push(format!("{name}: {seq} ended while {open:?} ran"));
                }
                open = None;
            }
        }
    }
    problems
}

/// Checks every session: handled in publish order, one at a time, each event exactly once.
async fn check_all(conn: &mut RedisConnection, keys: &StreamKeys, sessions: usize, per: usize) {
    let expected: Vec<u64> = (0..per as u64).collect();
    let mut problems = Vec::new();
    for s in 0..sessions {
        let name = session(s);
        let starts: Vec<String> = conn
            .lrange(keys.scoped(&format!("start:{name}")), 0, -1)
            .await
            .unwrap();
        let done: Vec<String> = conn
            .lrange(keys.scoped(&format!("done:{name}")), 0, -1)
            .await
            .unwrap();
        problems.extend(check_session(&name, &starts, &done, &expected));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    assert_eq!(done_count(conn, keys).await, (sessions * per) as u64);
}

/// The order hash's fields but its cursor, held-back count and description (the queues and
/// their links), sorted.
async fn queue_fields(conn: &mut RedisConnection, order: &str) -> Vec<(String, String)> {
    let all: HashMap<String, String> = conn.hgetall(order).await.unwrap();
    let mut rest: Vec<(String, String)> = all
        .into_iter()
        .filter(|(f, _)| !["cursor", "held", "about"].contains(&f.as_str()))
        .collect();
    rest.sort();
    rest
}

/// How many entries the order hash counts as held back behind their key's head.
async fn held_count(conn: &mut RedisConnection, order: &str) -> i64 {
    let held: Option<i64> = conn.hget(order, "held").await.unwrap();
    held.unwrap_or(0)
}

/// The order hash holds nothing but its cursor, held-back count (0) and description: every
/// queue and link is gone. Its encoding is the server's hashtable (see order.lua's `about`
/// field).
async fn assert_order_empty(conn: &mut RedisConnection, keys: &StreamKeys) {
    let order = keys.order_hash(GROUP);
    assert_eq!(queue_fields(conn, &order).await, [], "queues left");
    assert_eq!(held_count(conn, &order).await, 0);
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(keys.order_hash(GROUP))
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(encoding, "hashtable");
}

/// Four consumers, 200 sessions of 20 events: the scenario of this file, on any server.
async fn four_consumers_keep_every_session_in_order(url: RedisUrl, stream: &str) {
    let config = config(url.clone(), stream);
    let keys = StreamKeys::new(stream);
    let mut conn = RedisConnection::connect(&url).await.unwrap();
    let mut consumers = Vec::new();
    for n in 1..=4 {
        let handler = Recorder {
            conn: conn.clone(),
            max_delay_ms: 3,
            script: always_ok,
        };
        consumers.push(consumer(config.clone(), &format!("c{n}"), handler, |_| {}).await);
    }
    let mut running = Vec::new();
    for c in &consumers {
        running.push(spawn(c).await);
    }
    publish_interleaved(&config, SESSIONS, PER_SESSION).await;
    wait_done(
        &mut conn,
        &keys,
        (SESSIONS * PER_SESSION) as u64,
        Duration::from_secs(120),
    )
    .await;
    let mut handled = 0;
    for (c, r) in consumers.iter().zip(running) {
        c.stop();
        let stats = r.await.unwrap().unwrap();
        handled += stats.processed;
    }
    assert_eq!(
        handled,
        (SESSIONS * PER_SESSION) as u64,
        "each event committed once"
    );
    check_all(&mut conn, &keys, SESSIONS, PER_SESSION).await;
    // Everything finished: nothing held back, no queue or link left behind.
    assert_order_empty(&mut conn, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumers_handle_every_session_in_publish_order_once() {
    trace();
    let _heavy = HEAVY.lock().await;
    let server = TestServer::start();
    four_consumers_keep_every_session_in_order(server.redis_url(), "asdlc:events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumers_keep_sessions_in_order_on_a_cluster() {
    trace();
    let _heavy = HEAVY.lock().await;
    let cluster = TestCluster::shared();
    four_consumers_keep_every_session_in_order(cluster.redis_url(), "ordering:events").await;
}

/// Fails `s-retry`'s first event twice, then succeeds; fails `s-dead`'s first event for good.
fn retry_then_dead(event: &AsdlcEvent, attempt: u32) -> Option<HandlerResult> {
    match (event.session_id.as_str(), seq_of(event)) {
        ("s-retry", 0) if attempt < 3 => Some(HandlerResult::retry("not yet")),
        ("s-dead", 0) => Some(HandlerResult::permanent("never")),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_event_holds_back_its_session_and_a_dead_letter_releases_it() {
    trace();
    let _heavy = HEAVY.lock().await;
    let server = TestServer::start();
    let config = config(server.redis_url(), "asdlc:events");
    let keys = StreamKeys::new("asdlc:events");
    let mut conn = RedisConnection::connect(&server.redis_url()).await.unwrap();
    let handler = Recorder {
        conn: conn.clone(),
        max_delay_ms: 0,
        script: retry_then_dead,
    };
    // Slow retries: the held-back state is there to be seen for a while.
    let c = consumer(config.clone(), "c1", handler, |o| {
        o.retry.base = Duration::from_millis(700);
        o.retry.max = Duration::from_millis(700);
    })
    .await;
    let running = spawn(&c).await;
    let publisher = Publisher::connect(config.clone()).await.unwrap();
    let mut events = Vec::new();
    for seq in 0..3 {
        for s in ["s-retry", "s-flow", "s-dead"] {
            events.push(event(s, seq));
        }
    }
    publisher.publish_batch(&events).await.unwrap();

    // The other sessions flow while the retrying one waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let flow: Vec<String> = conn
            .lrange(keys.scoped("done:s-flow"), 0, -1)
            .await
            .unwrap();
        let dead: Vec<String> = conn
            .lrange(keys.scoped("done:s-dead"), 0, -1)
            .await
            .unwrap();
        if flow.len() == 3 && dead.len() == 2 {
            assert_eq!(flow, ["0", "1", "2"]);
            // The dead letter released its session: the rest ran, in order.
            assert_eq!(dead, ["1", "2"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flow {flow:?}, dead {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry: Vec<String> = conn
        .lrange(keys.scoped("done:s-retry"), 0, -1)
        .await
        .unwrap();
    assert!(retry.is_empty(), "the retrying session waits: {retry:?}");
    let starts: Vec<String> = conn
        .lrange(keys.scoped("start:s-retry"), 0, -1)
        .await
        .unwrap();
    assert!(
        starts.iter().all(|s| s.ends_with('0')),
        "nothing after the retrying event started: {starts:?}"
    );
    // Server side: three entries of one key queued (its field and two links), two of them
    // held back.
    let queues = queue_fields(&mut conn, &keys.order_hash(GROUP)).await;
    let names: Vec<&str> = queues.iter().map(|(f, _)| &f[..2]).collect();
    assert_eq!(names, ["n:", "n:", "se"], "{queues:?}");
    assert_eq!(queues[2].0, "session:s-retry");
    assert_eq!(held_count(&mut conn, &keys.order_hash(GROUP)).await, 2);
    assert!(c.stats().held_back > 0, "{:?}", c.stats());
    let info = asdlc::get_stream_info(&mut conn, "asdlc:events")
        .await
        .unwrap();
    assert_eq!(
        info.group(GROUP).unwrap().held_back,
        2,
        "as `asdlc info` shows"
    );

    wait_done(&mut conn, &keys, 3 + 2 + 3, Duration::from_secs(10)).await;
    let retry: Vec<String> = conn
        .lrange(keys.scoped("done:s-retry"), 0, -1)
        .await
        .unwrap();
    assert_eq!(retry, ["0", "1", "2"]);
    let dead = asdlc::deadletter::list(&mut conn, "asdlc:events", "-", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event().unwrap().session_id, "s-dead");
    c.stop();
    let stats = running.await.unwrap().unwrap();
    assert_eq!(
        (stats.processed, stats.dead_lettered, stats.retried),
        (8, 1, 2)
    );
    assert_order_empty(&mut conn, &keys).await;
}

// The queues through the functions themselves, on one consumer's entries.

/// Five entries of one consumer, `s1 s1 s2 s1 s1`, begun and committed by calling the
/// library's functions directly.
struct Protocol {
    stream: &'static str,
    order: String,
    ids: Vec<String>,
}

impl Protocol {
    const LEASES: &'static str = "order:queues:leases";
    const DEAD: &'static str = "order:queues:dead";
    /// Marks in one hash: one shard, one bucket of 10^13 ms (bucket 0 until the 2280s).
    const MARK: &'static str = "order:queues:marks:0:0000";
    /// The layout of those marks: bucket 0, one shard named by 4 digits.
    const LAYOUT: [&'static str; 5] = ["order:queues:marks:", "10000000000000", "0", "1000", "1:4"];
    const MARK_LAYOUT: &'static str = "order:queues:marks:0:layout";

    async fn new(conn: &mut RedisConnection) -> Protocol {
        asdlc::functions::ensure_loaded(conn).await.unwrap();
        let stream = "order:queues";
        let mut ids = Vec::new();
        for s in ["s1", "s1", "s2", "s1", "s1"] {
            let id: String = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("event_type")
                .arg("task_created")
                .arg("session_id")
                .arg(s)
                .query_async(conn)
                .await
                .unwrap();
            ids.push(id);
        }
        asdlc::create_consumer_group(conn, stream, GROUP, asdlc::GroupStart::Beginning)
            .await
            .unwrap();
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("c")
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(conn)
            .await
            .unwrap();
        Protocol {
            stream,
            order: StreamKeys::new(stream).order_hash(GROUP),
            ids,
        }
    }

    fn key(i: usize) -> &'static str {
        if i == 2 { "session:s2" } else { "session:s1" }
    }

    fn fp(i: usize) -> String {
        format!("fingerprint{i}")
    }

    async fn call(
        &self,
        conn: &mut RedisConnection,
        step: &str,
        keys: &[&str],
        args: &[String],
    ) -> Vec<i64> {
        redis::cmd("FCALL")
            .arg(format!("{}_{step}", asdlc::functions::library_name()))
            .arg(keys.len())
            .arg(keys)
            .arg(&Self::LAYOUT)
            .arg(args)
            .query_async(conn)
            .await
            .unwrap()
    }

    /// The begin step's codes for entries `entries`.
    async fn begin(&self, conn: &mut RedisConnection, entries: &[usize]) -> Vec<i64> {
        let mut args: Vec<String> = [GROUP, "token", "", "60000", &self.order, "task_created=s;"]
            .map(str::to_owned)
            .to_vec();
        for &i in entries {
            args.extend([self.ids[i].clone(), Self::fp(i), Self::key(i).to_owned()]);
        }
        // The mark hash once for each entry, at its place (marks.lua).
        let mut keys = vec![self.stream, Self::LEASES, Self::MARK_LAYOUT];
        keys.extend(entries.iter().map(|_| Self::MARK));
        keys.push(&self.order);
        self.call(conn, "begin_ordered", &keys, &args).await
    }

    /// The commit step's replies to `records`: `O` (release), `R` (retry), `s` (success).
    async fn commit(&self, conn: &mut RedisConnection, records: &[(char, usize)]) -> Vec<i64> {
        // Group, token, the dead-letter retention ('' and 0: none), recheck '0'.
        let mut args: Vec<String> = [GROUP, "token", "", "0", "0"].map(str::to_owned).to_vec();
        for &(kind, i) in records {
            let id = self.ids[i].clone();
            match kind {
                'O' => args.extend([
                    "O".to_owned(),
                    id,
                    self.order.clone(),
                    Self::key(i).to_owned(),
                ]),
                'R' => args.extend(["R".to_owned(), id, Self::fp(i)]),
                _ => args.extend(["s".to_owned(), id, Self::fp(i)]),
            }
        }
        // The mark hash once for each success record, at its place (marks.lua).
        let mut keys = vec![
            self.stream,
            Self::DEAD,
            Self::LEASES,
            &self.order,
            Self::MARK_LAYOUT,
        ];
        keys.extend(
            records
                .iter()
                .filter(|(kind, _)| !matches!(kind, 'O' | 'R'))
                .map(|_| Self::MARK),
        );
        self.call(conn, "commit", &keys, &args).await
    }

    /// The link from entry `i` to entry `j`.
    fn link(&self, i: usize, j: usize) -> (String, String) {
        (format!("n:{}", self.ids[i]), self.ids[j].clone())
    }
}

fn field(f: &str, v: &str) -> (String, String) {
    (f.to_owned(), v.to_owned())
}

#[tokio::test]
async fn queues_stay_exact_through_releases_out_of_turn_a_stale_head_and_a_repeat() {
    let server = TestServer::start();
    let mut conn = RedisConnection::connect(&server.redis_url()).await.unwrap();
    let p = Protocol::new(&mut conn).await;
    let ids = &p.ids;

    // s1: 0 1 3 4, s2: 2; only the heads run.
    assert_eq!(
        p.begin(&mut conn, &[0, 1, 2, 3, 4]).await,
        [1, -2, 1, -2, -2]
    );
    assert_eq!(
        queue_fields(&mut conn, &p.order).await,
        [
            p.link(0, 1),
            p.link(1, 3),
            p.link(3, 4),
            field("session:s1", &format!("{} {}", ids[0], ids[4])),
            field("session:s2", &ids[2]),
        ]
    );
    assert_eq!(held_count(&mut conn, &p.order).await, 3);
    let info = asdlc::get_stream_info(&mut conn, p.stream).await.unwrap();
    assert_eq!(info.group(GROUP).unwrap().held_back, 3);

    // A retry keeps the hold: nothing changes.
    let before = queue_fields(&mut conn, &p.order).await;
    assert_eq!(p.commit(&mut conn, &[('O', 0), ('R', 0)]).await, [1]);
    assert_eq!(queue_fields(&mut conn, &p.order).await, before);
    // Released out of turn: a middle entry, then the tail.
    assert_eq!(p.commit(&mut conn, &[('O', 3), ('s', 3)]).await, [1]);
    assert_eq!(p.commit(&mut conn, &[('O', 4), ('s', 4)]).await, [1]);
    assert_eq!(
        queue_fields(&mut conn, &p.order).await,
        [
            p.link(0, 1),
            field("session:s1", &format!("{} {}", ids[0], ids[1])),
            field("session:s2", &ids[2]),
        ]
    );
    assert_eq!(held_count(&mut conn, &p.order).await, 1);

    // The head acknowledged by hand: checked again, the next entry finds it gone and runs.
    let _: i64 = conn.xack(p.stream, GROUP, &[&ids[0]]).await.unwrap();
    assert_eq!(p.begin(&mut conn, &[1]).await, [1]);
    assert_eq!(
        queue_fields(&mut conn, &p.order).await,
        [field("session:s1", &ids[1]), field("session:s2", &ids[2])]
    );
    assert_eq!(held_count(&mut conn, &p.order).await, 0);

    let records = [('O', 1), ('s', 1), ('O', 2), ('s', 2)];
    assert_eq!(p.commit(&mut conn, &records).await, [1, 1]);
    // A second commit of a released entry (processed: acknowledged again) changes nothing.
    assert_eq!(p.commit(&mut conn, &[('O', 1), ('s', 1)]).await, [0]);
    assert_order_empty(&mut conn, &StreamKeys::new(p.stream)).await;
}

/// The ordered begin runs the begin step for the entries whose turn it is, a subset of the
/// call's: each is looked up in its own mark hash (the call declares one per entry, in order),
/// not in the hash of whichever entry sits at its place among those that run.
#[tokio::test]
async fn an_entry_begun_behind_one_held_back_is_looked_up_in_its_own_mark_hash() {
    let server = TestServer::start();
    let mut conn = RedisConnection::connect(&server.redis_url()).await.unwrap();
    // Entries 0 and 1 of session s1, 2 of s2; entry 2's key is processed already.
    let p = Protocol::new(&mut conn).await;
    let fps: Vec<[u8; 12]> = (1..=3u8).map(|k| [k; 12]).collect();
    let hash = |fp: &[u8; 12]| {
        let shard = ((u32::from(fp[0]) << 8) | u32::from(fp[1])) % 16_384;
        format!("order:queues:marks:0:{shard:04x}")
    };
    let () = redis::cmd("HSET")
        .arg(hash(&fps[2]))
        .arg(&fps[2][..])
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(format!(
        "{}_begin_ordered",
        asdlc::functions::library_name()
    ))
    .arg(7)
    .arg(p.stream)
    .arg(Protocol::LEASES)
    .arg(Protocol::MARK_LAYOUT);
    for fp in &fps {
        cmd.arg(hash(fp));
    }
    cmd.arg(&p.order)
        .arg(&Protocol::LAYOUT[..4])
        .arg("16384:4")
        .arg(&[GROUP, "token", "", "60000", &p.order, "task_created=s;"][..]);
    for (i, fp) in fps.iter().enumerate() {
        cmd.arg(&p.ids[i]).arg(&fp[..]).arg(Protocol::key(i));
    }
    let codes: Vec<i64> = cmd.query_async(&mut conn).await.unwrap();
    // 0 runs, 1 waits behind it, 2 is a duplicate: acknowledged, never run.
    assert_eq!(codes, [1, -2, 0]);
}

/// `ordered_by = session` in the attribute becomes the registration's option.
#[test]
fn the_macro_option_reaches_the_registration() {
    let reg = asdlc::registered_handlers()
        .into_iter()
        .find(|r| r.group == "ordering-macro")
        .expect("the handler below is registered");
    assert_eq!(reg.options.ordered_by, Some(OrderBy::Session));
}

#[asdlc::event_handler(types = [TaskCompleted], group = "ordering-macro", ordered_by = session)]
async fn ordered_by_the_macro(_: &AsdlcEvent) {}

// The SIGKILL test: worker processes, one of them killed mid-run.

const WORKER_ENV: &str = "ORDERING_WORKER";

/// The worker entry point: a no-op unless `ORDERING_WORKER` is set (by [`start_worker`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the worker process of the SIGKILL test; it starts it itself"]
async fn ordering_worker_process() {
    let Ok(name) = std::env::var(WORKER_ENV) else {
        return;
    };
    if let Ok(dir) = std::env::var("ORDERING_LOG_DIR") {
        let file = std::fs::File::create(format!("{dir}/{name}.log")).unwrap();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("asdlc_runtime=debug"))
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    }
    let url = RedisUrl::parse(std::env::var("ORDERING_URL").unwrap()).unwrap();
    let stream = std::env::var("ORDERING_STREAM").unwrap();
    let conn = RedisConnection::connect(&url).await.unwrap();
    let handler = Recorder {
        conn,
        max_delay_ms: 6,
        script: always_ok,
    };
    let c = consumer(config(url, &stream), &name, handler, |_| {}).await;
    // Runs until killed.
    let _ = c.start().await;
}

/// How many pending entries of the group `consumer` owns.
async fn owned_by(conn: &mut RedisConnection, stream: &str, consumer: &str) -> usize {
    let owned: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query_async(conn)
        .await
        .unwrap();
    match owned {
        redis::Value::Array(entries) => entries.len(),
        _ => 0,
    }
}

/// Worker processes, killed when dropped.
struct Workers(Mutex<HashMap<String, Child>>);

impl Workers {
    fn start(&self, name: &str, url: &str, stream: &str) {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "ordering_worker_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, name)
            .env("ORDERING_URL", url)
            .env("ORDERING_STREAM", stream)
            .spawn()
            .unwrap();
        self.0.lock().unwrap().insert(name.to_owned(), child);
    }

    /// SIGKILL.
    fn kill(&self, name: &str) {
        if let Some(mut child) = self.0.lock().unwrap().remove(name) {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let names: Vec<String> = self.0.lock().unwrap().keys().cloned().collect();
        for name in names {
            self.kill(&name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_in_order_when_a_consumer_is_killed_mid_run() {
    trace();
    let _heavy = HEAVY.lock().await;
    let server = TestServer::start();
    let stream = "asdlc:events";
    let config = config(server.redis_url(), stream);
    let keys = StreamKeys::new(stream);
    let mut conn = RedisConnection::connect(&server.redis_url()).await.unwrap();
    asdlc::create_consumer_group(&mut conn, stream, GROUP, asdlc::GroupStart::Beginning)
        .await
        .unwrap();
    publish_interleaved(&config, SESSIONS, PER_SESSION).await;
    let workers = Workers(Mutex::new(HashMap::new()));
    for n in 1..=4 {
        workers.start(&format!("w{n}"), &server.url(), stream);
    }
    let total = (SESSIONS * PER_SESSION) as u64;
    wait_done(&mut conn, &keys, total / 4, Duration::from_secs(120)).await;
    // The worker that owns the most entries (running or waiting) is killed: its peers claim
    // them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (owned, victim) = loop {
        let mut most = (0, String::new());
        for n in 1..=4 {
            let name = format!("w{n}");
            let owned = owned_by(&mut conn, stream, &name).await;
            if owned > most.0 {
                most = (owned, name);
            }
        }
        if most.0 > 0 || tokio::time::Instant::now() > deadline {
            break most;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(owned > 0, "no worker owned an entry");
    workers.kill(&victim);
    wait_done(&mut conn, &keys, total, Duration::from_secs(180)).await;
    drop(workers);
    check_all(&mut conn, &keys, SESSIONS, PER_SESSION).await;
    // The killed worker's calls that never ended were handled again by a peer.
    let mut open = 0;
    for s in 0..SESSIONS {
        let starts: Vec<String> = conn
            .lrange(keys.scoped(&format!("start:{}", session(s))), 0, -1)
            .await
            .unwrap();
        open += starts.iter().filter(|s| s.starts_with('s')).count()
            - starts.iter().filter(|s| s.starts_with('e')).count();
    }
    println!("entries the killed worker owned: {owned}; calls it left open: {open}");
}
