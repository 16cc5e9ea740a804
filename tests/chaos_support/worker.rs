//! The worker of the crash and fault suite.
//!
//! Its one handler, for `task_created` events of group [`GROUP`]:
//!
//! 1. appends `<key> <incarnation> <attempt> <entry id>` to the invocation log
//!    ([`INVOCATIONS`]) with a plain `RPUSH`, outside the commit, so the log keeps every
//!    invocation, those whose commit never happened included;
//! 2. sleeps a random few milliseconds, so kills land mid-handler;
//! 3. stages `HINCRBY applied <key> 1` ([`APPLIED`]), which commits atomically with the
//!    event's processed mark and acknowledgement: the exactly-once effect.
//!
//! Settings come from the environment (see [`WorkerSettings::from_env`]); the process runs
//! until SIGTERM or ctrl-c, then stops gracefully and prints one [`REPORT_PREFIX`] line with
//! its [`asdlc::RuntimeReport`] as JSON.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use asdlc::prelude::*;
use asdlc::{RedisConnection, RuntimeError};

/// The consumer group of the worker's handler.
pub const GROUP: &str = "chaos";
/// The scoped key (hash) of the effect: idempotency key -> times applied.
pub const APPLIED: &str = "applied";
/// The scoped key (list) of the invocation log.
pub const INVOCATIONS: &str = "invocations";
/// The prefix of the line a worker prints with its report when it stops gracefully.
pub const REPORT_PREFIX: &str = "CHAOS-REPORT ";
/// The line a worker prints once it has recovered and is consuming.
pub const READY_LINE: &str = "CHAOS-READY";
/// In chain mode (`CHAOS_CHAIN=1`), the groups of the chain: [`GROUP`] handles the published
/// `task_created` and emits a `task_dispatched`, and each further group handles the event
/// the one before emitted and emits the next, all through `HandlerContext::emit`.
pub const CHAIN_GROUPS: [&str; 5] = [GROUP, "chain-2", "chain-3", "chain-4", "chain-5"];
/// The follow-up each group of the chain emits, in chain order: every published event ends
/// with exactly one of each, carrying its `task_id`.
pub const FOLLOW_UPS: [EventType; 5] = [
    EventType::TaskDispatched,
    EventType::PatchCreated,
    EventType::GateRequested,
    EventType::GateApproved,
    EventType::TaskCompleted,
];

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Its consumer name (`ASDLC_CONSUMER`).
    pub consumer: String,
    /// Which start of that consumer this process is, for the invocation log
    /// (`CHAOS_INCARNATION`, default `<consumer>#<pid>`).
    pub incarnation: String,
    /// The shortest handler sleep, in ms (`CHAOS_MIN_SLEEP_MS`, default 0).
    pub min_sleep_ms: u64,
    /// The longest handler sleep, in ms (`CHAOS_MAX_SLEEP_MS`, default 20).
    pub max_sleep_ms: u64,
    /// Handlers running at once (`CHAOS_CONCURRENCY`, default 64).
    pub concurrency: usize,
    /// After how long an entry counts as abandoned and may be claimed, in ms
    /// (`CHAOS_CLAIM_IDLE_MS`, default 3000).
    pub claim_idle_ms: u64,
    /// Whether the worker runs the chain of [`CHAIN_GROUPS`] (`CHAOS_CHAIN=1`).
    pub chain: bool,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl WorkerSettings {
    /// Reads the settings; the consumer name is `ASDLC_CONSUMER`, else the first argument
    /// that is not a flag, else `chaos-worker`.
    pub fn from_env() -> Self {
        let consumer = std::env::var("ASDLC_CONSUMER")
            .ok()
            .or_else(|| std::env::args().skip(1).find(|a| !a.starts_with('-')))
            .unwrap_or_else(|| "chaos-worker".to_owned());
        let incarnation = std::env::var("CHAOS_INCARNATION")
            .unwrap_or_else(|_| format!("{consumer}#{}", std::process::id()));
        let min_sleep_ms = env_num("CHAOS_MIN_SLEEP_MS", 0);
        WorkerSettings {
            consumer,
            incarnation,
            min_sleep_ms,
            max_sleep_ms: env_num("CHAOS_MAX_SLEEP_MS", 20).max(min_sleep_ms),
            concurrency: env_num("CHAOS_CONCURRENCY", 64).max(1),
            claim_idle_ms: env_num("CHAOS_CLAIM_IDLE_MS", 3000).max(100),
            chain: std::env::var("CHAOS_CHAIN").is_ok_and(|v| v == "1"),
        }
    }
}

struct Shared {
    log: RedisConnection,
    settings: WorkerSettings,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

#[event_handler(types = [TaskCreated], group = "chaos")]
async fn apply(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    let shared = SHARED
        .get()
        .ok_or_else(|| HandlerError::retryable("worker not initialised"))?;
    let key = event
        .idempotency_key
        .clone()
        .ok_or_else(|| HandlerError::permanent("the event has no idempotency key"))?;
    let record = format!(
        "{key} {} {} {}",
        shared.settings.incarnation,
        ctx.attempt(),
        ctx.entry_id()
    );
    let mut log = shared.log.clone();
    let _: i64 = redis::cmd("RPUSH")
        .arg(ctx.scoped_key(INVOCATIONS))
        .arg(record)
        .query_async(&mut log)
        .await?;
    nap(&shared.settings).await;
    if shared.settings.chain {
        ctx.emit(follow_up(event, FOLLOW_UPS[0])?)?;
    }
    ctx.stage(Effect::hincr_by(ctx.scoped_key(APPLIED), key, 1))?;
    Ok(())
}

/// Sleeps a random few milliseconds, so kills land mid-handler.
async fn nap(settings: &WorkerSettings) {
    let (lo, hi) = (settings.min_sleep_ms, settings.max_sleep_ms);
    let ms = if hi > lo {
        rand::random_range(lo..=hi)
    } else {
        lo
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The next event of `cause`'s chain: its task, of type `next`.
fn follow_up(cause: &AsdlcEvent, next: EventType) -> Result<AsdlcEvent, HandlerError> {
    let mut b = AsdlcEvent::builder(next, cause.session_id.clone());
    if let Some(task) = &cause.task_id {
        b = b.task_id(task.clone());
    }
    Ok(b.build()?)
}

/// One link of the chain after the first: sleeps, then emits the follow-up after `cause`'s
/// type.
async fn link(cause: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    let shared = SHARED
        .get()
        .ok_or_else(|| HandlerError::retryable("worker not initialised"))?;
    nap(&shared.settings).await;
    let at = FOLLOW_UPS
        .iter()
        .position(|t| *t == cause.event_type)
        .ok_or_else(|| HandlerError::permanent("not an event of the chain"))?;
    if let Some(next) = FOLLOW_UPS.get(at + 1) {
        ctx.emit(follow_up(cause, *next)?)?;
    }
    Ok(())
}

#[event_handler(types = [TaskDispatched], group = "chain-2")]
async fn chain_2(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    link(event, ctx).await
}

#[event_handler(types = [PatchCreated], group = "chain-3")]
async fn chain_3(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    link(event, ctx).await
}

#[event_handler(types = [GateRequested], group = "chain-4")]
async fn chain_4(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    link(event, ctx).await
}

#[event_handler(types = [GateApproved], group = "chain-5")]
async fn chain_5(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    link(event, ctx).await
}

/// Runs a worker until SIGTERM or ctrl-c. The server may be restarting when the worker
/// starts, so connecting is retried for up to 30 s.
pub async fn run_from_env() -> Result<(), Box<dyn std::error::Error>> {
    // Listen for SIGTERM before anything else, so a stop that comes during start-up is a
    // graceful one too.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let settings = WorkerSettings::from_env();
    let config = Config::from_env()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        match RedisConnection::connect(&config.redis_url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot connect yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let runtime = loop {
        let s = settings.clone();
        let built = Runtime::builder()
            .config(config.clone())
            .groups(if settings.chain {
                CHAIN_GROUPS.to_vec()
            } else {
                vec![GROUP]
            })
            .consumer_name(settings.consumer.clone())
            .configure(move |_, o| {
                o.concurrency = s.concurrency;
                o.batch_size = s.concurrency.min(100);
                o.block = Duration::from_millis(500);
                o.claim_idle = Duration::from_millis(s.claim_idle_ms);
                o.claim_interval = Duration::from_millis((s.claim_idle_ms / 2).max(100));
                o.retry.base = Duration::from_millis(50);
                o.retry.max = Duration::from_millis(500);
            })
            .build()
            .await;
        match built {
            Ok(rt) => break rt,
            Err(RuntimeError::Consume(e)) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot start yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let _ = SHARED.set(Shared {
        log,
        settings: settings.clone(),
    });
    tracing::info!(consumer = %settings.consumer, incarnation = %settings.incarnation, "chaos worker starting");
    let handle = runtime.handle();
    tokio::spawn(async move {
        if handle.ready().await.is_ok() {
            println!("{READY_LINE}");
        }
    });
    let report = runtime
        .run_until(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    println!("{REPORT_PREFIX}{}", serde_json::to_string(&report)?);
    Ok(())
}
