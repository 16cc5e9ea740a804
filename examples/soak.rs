//! The crash and fault suite, long form: 100 000 events through three worker processes that
//! are SIGKILLed dozens of times, with client connections cut and the server crashed and
//! restarted under them; then one summary line, checked from Redis:
//!
//! ```text
//! published=100000 processed=100000 duplicates_skipped=… applied_twice=0 lost=0 kills=… restarts=… server_restarts=…
//! ```
//!
//! Run it (it starts its own server with an append-only file, so nothing needs to be running):
//!
//! ```text
//! ASDLC_REDIS_SERVER=$(scripts/ensure-redis.sh) cargo run --release --example soak
//! ```
//!
//! Flags (defaults in brackets): `--events N` [100000], `--batch N` [250], `--pause-ms N`
//! [100], `--workers N` [3], `--kill-every-ms MIN-MAX` [500-2000], `--min-kills N` [30],
//! `--cut-every-ms MIN-MAX` [1000-4000], `--server-restarts N` [3], `--sleep-ms MIN-MAX`
//! [0-20], `--concurrency N` [64], `--claim-idle-ms N` [3000], `--seed N` [random],
//! `--log-dir PATH` [a new directory under the system's temporary directory]. It exits with
//! status 1, after listing what went wrong, unless every check passed.
//!
//! The workers are this executable started again with `--worker` (see
//! `examples/chaos_worker.rs` for the same worker on its own).

#[path = "../tests/chaos_support/mod.rs"]
mod chaos_support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chaos_support::driver::{self, Plan};

fn range(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn ms(r: (u64, u64)) -> (Duration, Duration) {
    (Duration::from_millis(r.0), Duration::from_millis(r.1))
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let mut plan = Plan {
        events: 100_000,
        batch: 250,
        duplicate_percent: 10,
        publish_pause: Duration::from_millis(100),
        workers: 3,
        kill_every: ms((500, 2000)),
        min_kills: 30,
        cut_every: ms((1000, 4000)),
        server_restarts: 3,
        handler_sleep_ms: (0, 20),
        concurrency: 64,
        claim_idle: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(300),
        seed: rand::random(),
        log_dir: std::env::temp_dir().join(format!("asdlc-soak-{}", std::process::id())),
        chain: false,
        schedule: false,
        schedule_within: Duration::from_secs(3),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        let bad = || format!("{flag}: cannot use `{value}`");
        let num = || value.parse::<u64>().map_err(|_| bad());
        match flag.as_str() {
            "--events" => plan.events = num()? as usize,
            "--batch" => plan.batch = num()?.max(1) as usize,
            "--pause-ms" => plan.publish_pause = Duration::from_millis(num()?),
            "--workers" => plan.workers = num()?.max(1) as usize,
            "--kill-every-ms" => plan.kill_every = ms(range(value).ok_or_else(bad)?),
            "--min-kills" => plan.min_kills = num()? as usize,
            "--cut-every-ms" => plan.cut_every = ms(range(value).ok_or_else(bad)?),
            "--server-restarts" => plan.server_restarts = num()? as usize,
            "--sleep-ms" => plan.handler_sleep_ms = range(value).ok_or_else(bad)?,
            "--concurrency" => plan.concurrency = num()?.max(1) as usize,
            "--claim-idle-ms" => plan.claim_idle = Duration::from_millis(num()?.max(100)),
            "--seed" => plan.seed = num()?,
            "--log-dir" => plan.log_dir = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(plan)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        if let Err(e) = chaos_support::worker::run_from_env().await {
            eprintln!("chaos worker failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOAK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let plan = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("soak: {e} (see the flags at the top of examples/soak.rs)");
            std::process::exit(2);
        }
    };
    let exe = std::env::current_exe().expect("this executable's path");
    let spawner: driver::Spawner = Arc::new(move || {
        let mut cmd = Command::new(&exe);
        cmd.arg("--worker");
        cmd
    });
    eprintln!(
        "soak: {} events, {} workers, seed {}, worker logs in {}",
        plan.events,
        plan.workers,
        plan.seed,
        plan.log_dir.display()
    );
    let log_dir = plan.log_dir.clone();
    let summary = driver::run(plan, spawner).await;
    println!("{summary}");
    for (reason, (n, applied)) in &summary.dead_reasons {
        eprintln!("dead letters: {n} ({applied} of them copies of an applied key): {reason}");
    }
    for note in &summary.notes {
        eprintln!("NOTE: {note}");
    }
    if summary.problems.is_empty() {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        for p in &summary.problems {
            eprintln!("PROBLEM: {p}");
        }
        eprintln!("worker logs kept in {}", log_dir.display());
        std::process::exit(1);
    }
}
