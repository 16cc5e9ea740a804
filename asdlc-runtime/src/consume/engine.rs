//! The machinery behind [`super::EventConsumer`]: read loop, begin/commit scripts, handler
//! tasks, retries, keep-alive, claims and recovery.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use redis::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::entries::{RawEntry, parse_autoclaim, parse_entries, parse_pending, parse_read};
use super::ledger::{Lease, Ledger};
use super::lock::{self, NameLock};
use super::{ConsumerOptions, HandlerSpec};
use crate::config::Config;
use crate::connection::RedisConnection;
use crate::effects::Effect;
use crate::encoding::decode;
use crate::error::ConsumeError;
use crate::events::{AsdlcEvent, HandlerResult, RecoveryResult};
use crate::functions::{BEGIN, COMMIT, FORGET, KEEPALIVE, REDELIVER, SWEEP_LEASES};
use crate::handler::HandlerContext;
use crate::idempotency::{FINGERPRINT_LEN, fingerprint};
use crate::keys::StreamKeys;
use crate::streams::{create_consumer_group, is_no_group};
use crate::tenancy::{TenantContext, TenantId};

/// A lease as a script argument: the fingerprint, or empty for none.
fn lease_arg(lease: &Lease) -> &[u8] {
    lease.as_ref().map_or(&[], |fp| &fp[..])
}

/// Entries per script call, so no single call holds the server for long.
const SCRIPT_CHUNK: usize = 256;

/// What a consumer has done since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerStats {
    /// Events handled and committed.
    pub processed: u64,
    /// Deliveries skipped because their key was already processed.
    pub duplicates: u64,
    /// Handler failures left pending for a retry.
    pub retried: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries acknowledged without handling: no handler for their type, or deleted.
    pub unhandled: u64,
    /// Entries claimed from other consumers.
    pub claimed: u64,
    /// Handler calls that panicked.
    pub panics: u64,
    /// Handler calls that timed out.
    pub timeouts: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    processed: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    unhandled: AtomicU64,
    claimed: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> ConsumerStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            processed: g(&self.processed),
            duplicates: g(&self.duplicates),
            retried: g(&self.retried),
            dead_lettered: g(&self.dead_lettered),
            unhandled: g(&self.unhandled),
            claimed: g(&self.claimed),
            panics: g(&self.panics),
            timeouts: g(&self.timeouts),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Counts of one recovery pass, and how many of its entries are still being handled.
#[derive(Default)]
pub(crate) struct Pass {
    processed: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    claimed: AtomicU64,
    outstanding: AtomicUsize,
    done: Notify,
}

impl Pass {
    fn result(&self) -> RecoveryResult {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RecoveryResult {
            processed: g(&self.processed),
            skipped: g(&self.skipped),
            failed: g(&self.failed),
            claimed: g(&self.claimed),
        }
    }

    async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn begin(&self, n: usize) {
        self.outstanding.fetch_add(n, Ordering::AcqRel);
    }

    fn end(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }
}

/// One stream a consumer reads, with its derived keys.
pub(crate) struct StreamCtx {
    pub(crate) keys: Arc<StreamKeys>,
    pub(crate) name: Arc<str>,
    pub(crate) tenant: Option<TenantId>,
    marks_prefix: String,
    /// The hash of the group's in-flight leases on this stream.
    lease_key: String,
    dead_letter: String,
}

impl StreamCtx {
    fn new(stream: String, tenant: Option<TenantId>, group: &str) -> Self {
        let keys = StreamKeys::new(stream);
        StreamCtx {
            name: Arc::from(keys.stream()),
            marks_prefix: keys.marks_prefix(group),
            lease_key: keys.lease_prefix(group).trim_end_matches(':').to_owned(),
            dead_letter: keys.dead_letter(),
            keys: Arc::new(keys),
            tenant,
        }
    }
}

/// Resources of one run of the consumer (one `start()`, or one direct recovery call).
pub(crate) struct RunCtx {
    /// The consumer name of this run.
    consumer: Arc<str>,
    /// A random token naming this run's process in the name lock and in its leases.
    token: Arc<str>,
    /// Per stream, the token of the dead process whose name this run took over: its leases
    /// are ours to take back.
    predecessors: Mutex<HashMap<Arc<str>, String>>,
    /// Taken at shutdown, which ends the committer (it holds the run itself).
    commit_tx: Mutex<Option<mpsc::Sender<Outcome>>>,
    abort: CancellationToken,
    tasks: TaskTracker,
    retries: Mutex<BinaryHeap<Reverse<Redelivery>>>,
    retry_wake: Notify,
    /// Set when this consumer's own pending entries should be read again (a reconnect, a
    /// commit that gave up, the periodic check).
    reread: AtomicBool,
}

impl RunCtx {
    fn predecessor(&self, stream: &str) -> String {
        lock(&self.predecessors)
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }
}

struct Redelivery {
    due: Instant,
    stream: Arc<StreamCtx>,
    id: String,
}

impl PartialEq for Redelivery {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Redelivery {}
impl PartialOrd for Redelivery {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Redelivery {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.due.cmp(&other.due)
    }
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) options: ConsumerOptions,
    pub(crate) group: Arc<str>,
    /// The consumer name of the current (or last) run; before the first run with an
    /// automatic name, the name it will most likely get.
    consumer: RwLock<Arc<str>>,
    conn: RedisConnection,
    read_conn: RedisConnection,
    streams: RwLock<Vec<Arc<StreamCtx>>>,
    handlers: Vec<HandlerSpec>,
    handler_limits: Vec<Option<Arc<Semaphore>>>,
    permits: Arc<Semaphore>,
    ledger: Ledger,
    pub(crate) stats: Stats,
    pub(crate) stop: CancellationToken,
    pub(crate) ready: watch::Sender<Readiness>,
    running: AtomicBool,
    run: Mutex<Option<Arc<RunCtx>>>,
    locks: tokio::sync::Mutex<Vec<NameLock>>,
    active: Pass,
    pub(crate) last_recovery: Mutex<Option<RecoveryResult>>,
}

/// Where a consumer is in its life, for [`super::EventConsumer::ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Not started, or starting (taking its name, recovering).
    Starting,
    /// Recovered and reading.
    Ready,
    /// Stopped, by `stop()` (`None`) or by an error (its text).
    Ended(Option<String>),
}

enum Kind {
    Success {
        fp: [u8; FINGERPRINT_LEN],
        effects: Vec<Effect>,
        attempt: u32,
        /// Kept for a dead letter, should the commit refuse the effects on the last attempt.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Retry {
        attempt: u32,
        error: String,
    },
    Dead {
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        reason: String,
        error: String,
        attempts: u32,
        handler: String,
    },
    Ack {
        deleted: bool,
    },
}

struct Outcome {
    stream: Arc<StreamCtx>,
    id: String,
    lease: Lease,
    kind: Kind,
    pass: Option<Arc<Pass>>,
    /// The handler that ran (an index into `Shared::handlers`), for metrics labels.
    handler: Option<usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) async fn connect(
        config: Config,
        options: ConsumerOptions,
        handlers: Vec<HandlerSpec>,
        tenants: Vec<TenantId>,
    ) -> Result<Self, ConsumeError> {
        options.validate()?;
        let redis_err = |source| ConsumeError::Redis {
            stream: config.stream.clone(),
            group: options.group.clone(),
            source,
        };
        let conn = RedisConnection::connect(&config.redis_url)
            .await
            .map_err(redis_err)?;
        let read_conn = RedisConnection::connect_with_timeout(
            &config.redis_url,
            options.block + Duration::from_secs(5),
        )
        .await
        .map_err(redis_err)?;
        let group: Arc<str> = Arc::from(options.group.as_str());
        let consumer: Arc<str> = Arc::from(super::first_name(&options).as_str());
        let mut streams = Vec::new();
        if config.tenancy.is_multi() {
            for t in tenants {
                if !config.tenancy.allows(&t) {
                    return Err(ConsumeError::Config(crate::error::ConfigError::Invalid(
                        crate::error::ValidationError::new(
                            "tenant_id",
                            format!("tenant `{t}` is not in the allowed tenants"),
                        ),
                    )));
                }
                let stream = config.stream_for(Some(&t));
                streams.push(Arc::new(StreamCtx::new(stream, Some(t), &group)));
            }
        } else {
            if let Some(t) = tenants.first() {
                return Err(ConsumeError::Config(crate::error::ConfigError::Invalid(
                    crate::error::ValidationError::new(
                        "tenant_id",
                        format!("tenant `{t}` given, but the configuration is single-tenant"),
                    ),
                )));
            }
            let stream = config.stream_for(None);
            streams.push(Arc::new(StreamCtx::new(stream, None, &group)));
        }
        let handler_limits = handlers
            .iter()
            .map(|h| {
                h.options
                    .concurrency
                    .map(|n| Arc::new(Semaphore::new(n.max(1))))
            })
            .collect();
        let (ready, _) = watch::channel(Readiness::Starting);
        Ok(Shared {
            permits: Arc::new(Semaphore::new(options.concurrency)),
            config,
            options,
            group,
            consumer: RwLock::new(consumer),
            conn,
            read_conn,
            streams: RwLock::new(streams),
            handlers,
            handler_limits,
            ledger: Ledger::default(),
            stats: Stats::default(),
            stop: CancellationToken::new(),
            ready,
            running: AtomicBool::new(false),
            run: Mutex::new(None),
            locks: tokio::sync::Mutex::new(Vec::new()),
            active: Pass::default(),
            last_recovery: Mutex::new(None),
        })
    }

    fn redis_err(&self, stream: &str) -> impl FnOnce(redis::RedisError) -> ConsumeError + '_ {
        let stream = stream.to_owned();
        move |source| ConsumeError::Redis {
            stream,
            group: self.group.to_string(),
            source,
        }
    }

    pub(crate) fn stream_names(&self) -> Vec<String> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    fn stream_list(&self) -> Vec<Arc<StreamCtx>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stream_by_name(&self, name: &str) -> Option<Arc<StreamCtx>> {
        self.stream_list().into_iter().find(|s| &*s.name == name)
    }

    /// Creates the group on every stream (idempotent).
    pub(crate) async fn prepare(&self) -> Result<(), ConsumeError> {
        let mut conn = self.conn.clone();
        for s in self.stream_list() {
            create_consumer_group(&mut conn, &s.name, &self.group, self.options.group_start)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn add_tenant(&self, tenant: TenantId) -> Result<bool, ConsumeError> {
        if !self.config.tenancy.allows(&tenant) {
            return Err(ConsumeError::Config(crate::error::ConfigError::Invalid(
                crate::error::ValidationError::new(
                    "tenant_id",
                    format!("tenant `{tenant}` is not allowed by the configured tenancy"),
                ),
            )));
        }
        let stream = self.config.stream_for(Some(&tenant));
        if self.stream_by_name(&stream).is_some() {
            return Ok(false);
        }
        let ctx = Arc::new(StreamCtx::new(stream, Some(tenant), &self.group));
        let mut conn = self.conn.clone();
        create_consumer_group(&mut conn, &ctx.name, &self.group, self.options.group_start).await?;
        if let Some(run) = self.current_run() {
            let name_lock = NameLock::acquire(
                &mut conn,
                ctx.keys.consumer_lock(&self.group, &run.consumer),
                ctx.keys.consumer_lock_marker(),
                &run.token,
                &ctx.name,
                &self.group,
                &run.consumer,
            )
            .await?;
            if let Some(p) = name_lock.predecessor() {
                lock(&run.predecessors).insert(ctx.name.clone(), p.to_owned());
            }
            self.locks.lock().await.push(name_lock);
        }
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(ctx);
        Ok(true)
    }

    pub(crate) async fn acknowledge(&self, stream: &str, id: &str) -> Result<bool, ConsumeError> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::cmd("XACK")
            .arg(stream)
            .arg(&*self.group)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(self.redis_err(stream))?;
        Ok(n > 0)
    }

    fn handler_for(&self, event: &AsdlcEvent) -> Option<usize> {
        self.handlers
            .iter()
            .position(|h| h.handler.can_handle(event.event_type))
    }

    fn max_deliveries(&self, handler: usize) -> u32 {
        self.handlers[handler]
            .options
            .max_deliveries
            .unwrap_or(self.options.max_deliveries)
            .max(1)
    }

    fn lease_ms(&self) -> u64 {
        self.options.claim_idle.as_millis() as u64
    }

    fn untrack(&self, stream: &Arc<str>, id: &str) {
        self.ledger.remove(stream, id);
    }

    fn is_tracked(&self, stream: &Arc<str>, id: &str) -> bool {
        self.ledger.contains(stream, id)
    }

    /// Counts a delivery skipped because its key was already processed.
    fn count_duplicate(&self, stream: &StreamCtx, handler: Option<usize>, pass: Option<&Pass>) {
        bump(&self.stats.duplicates, 1);
        crate::monitor::record_duplicate(
            &self.group,
            stream.tenant.as_ref().map(TenantId::as_str),
            handler.map_or("", |h| self.handlers[h].name()),
        );
        if let Some(p) = pass {
            p.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The consumer name of the current (or last) run.
    pub(crate) fn consumer(&self) -> Arc<str> {
        self.consumer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn current_run(&self) -> Option<Arc<RunCtx>> {
        lock(&self.run).clone()
    }
}

fn new_run(
    consumer: Arc<str>,
    token: Arc<str>,
    predecessors: HashMap<Arc<str>, String>,
) -> (Arc<RunCtx>, mpsc::Receiver<Outcome>) {
    let (commit_tx, commit_rx) = mpsc::channel(4096);
    (
        Arc::new(RunCtx {
            consumer,
            token,
            predecessors: Mutex::new(predecessors),
            reread: AtomicBool::new(false),
            commit_tx: Mutex::new(Some(commit_tx)),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
            retries: Mutex::new(BinaryHeap::new()),
            retry_wake: Notify::new(),
        }),
        commit_rx,
    )
}

/// A run for a direct recovery call, if the consumer is not running: its committer lives
/// until the returned guard's work is done.
async fn with_run<F, Fut, T>(shared: &Arc<Shared>, f: F) -> Result<T, ConsumeError>
where
    F: FnOnce(Arc<RunCtx>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ConsumeError>>,
{
    if let Some(run) = shared.current_run() {
        return f(run).await;
    }
    let token = Arc::from(new_token().as_str());
    let (run, rx) = new_run(shared.consumer(), token, HashMap::new());
    let committer = tokio::spawn(committer(shared.clone(), run.clone(), rx));
    let result = f(run.clone()).await;
    run.tasks.close();
    run.tasks.wait().await;
    lock(&run.commit_tx).take();
    let _ = committer.await;
    result
}

pub(crate) async fn process_pending(shared: &Arc<Shared>) -> Result<RecoveryResult, ConsumeError> {
    with_run(shared, |run| async move {
        let pass = Arc::new(Pass::default());
        for stream in shared.stream_list() {
            recover_own(shared, &run, &stream, &pass).await?;
        }
        pass.wait().await;
        Ok(pass.result())
    })
    .await
}

pub(crate) async fn claim_stale(
    shared: &Arc<Shared>,
    min_idle: Duration,
) -> Result<RecoveryResult, ConsumeError> {
    with_run(shared, |run| async move {
        let pass = Arc::new(Pass::default());
        for stream in shared.stream_list() {
            claim_stream(shared, &run, &stream, min_idle, &pass).await?;
        }
        pass.wait().await;
        Ok(pass.result())
    })
    .await
}

/// This consumer's own pending entries, all of them, in batches.
async fn recover_own(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    pass: &Arc<Pass>,
) -> Result<(), ConsumeError> {
    let mut conn = shared.conn.clone();
    // Pages as large as the handler slots allow (within one script call): a recovery is a
    // backlog, and every page costs a claim and a begin round trip.
    let batch = shared
        .options
        .batch_size
        .max(shared.options.concurrency.min(SCRIPT_CHUNK))
        .max(1);
    let list = |start: &str| {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&*stream.name)
            .arg(&*shared.group)
            .arg(start)
            .arg("+")
            .arg(batch)
            .arg(&*run.consumer);
        cmd
    };
    let mut pending = parse_pending(
        list("-")
            .query_async(&mut conn)
            .await
            .map_err(shared.redis_err(&stream.name))?,
    );
    // The page claimed last, dispatched while the next one is claimed.
    let mut claimed_page: Vec<RawEntry> = Vec::new();
    loop {
        let page = std::mem::take(&mut pending);
        let claim_next = async {
            let Some(last) = page.last() else {
                return Ok(None);
            };
            let next = list(&format!("({}", last.0));
            let mut conn = conn.clone();
            let wanted: Vec<String> = page
                .into_iter()
                .filter(|(id, ..)| !shared.is_tracked(&stream.name, id))
                .map(|(id, ..)| id)
                .collect();
            if wanted.is_empty() {
                let listed: Value = next.query_async(&mut conn).await?;
                return Ok(Some((Vec::new(), parse_pending(listed))));
            }
            // One round trip per page: claim this page and list the next.
            let mut claim = redis::cmd("XCLAIM");
            claim
                .arg(&*stream.name)
                .arg(&*shared.group)
                .arg(&*run.consumer)
                .arg(0);
            for id in &wanted {
                claim.arg(id);
            }
            let mut pipe = redis::pipe();
            pipe.add_command(claim).add_command(next);
            let (claimed, listed): (Value, Value) = pipe.query_async(&mut conn).await?;
            // XCLAIM answers in the order asked, leaving out entries deleted from the
            // stream: those are acknowledged as gone.
            let mut claimed = parse_entries(claimed).into_iter().peekable();
            let mut entries: Vec<RawEntry> = Vec::with_capacity(wanted.len());
            for id in wanted {
                match claimed.next_if(|e| e.id == id) {
                    Some(e) => entries.push(e),
                    None => entries.push(RawEntry { id, fields: None }),
                }
            }
            Ok(Some((entries, parse_pending(listed))))
        };
        let current = std::mem::take(&mut claimed_page);
        let dispatch_current = async {
            if !current.is_empty() {
                dispatch(shared, run, stream, current, Some(pass.clone()), false).await;
            }
        };
        let ((), next): ((), redis::RedisResult<_>) = tokio::join!(dispatch_current, claim_next);
        match next.map_err(shared.redis_err(&stream.name))? {
            Some((entries, listed)) => {
                claimed_page = entries;
                pending = listed;
            }
            None => return Ok(()),
        }
    }
}

/// Entries idle for `min_idle` from any consumer of the group, with XAUTOCLAIM, to the end.
async fn claim_stream(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    min_idle: Duration,
    pass: &Arc<Pass>,
) -> Result<(), ConsumeError> {
    let mut conn = shared.conn.clone();
    let mut cursor = "0-0".to_owned();
    loop {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&*stream.name)
            .arg(&*shared.group)
            .arg(&*run.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(shared.options.batch_size.max(1))
            .query_async(&mut conn)
            .await
            .map_err(shared.redis_err(&stream.name))?;
        let (next, entries, deleted) = parse_autoclaim(reply);
        let n_claimed = (entries.len() + deleted.len()) as u64;
        if n_claimed > 0 {
            bump(&shared.stats.claimed, n_claimed);
            crate::monitor::record_claimed(
                &shared.group,
                stream.tenant.as_ref().map(TenantId::as_str),
                n_claimed,
            );
            pass.claimed.fetch_add(n_claimed, Ordering::Relaxed);
            tracing::info!(stream = %stream.name, group = %shared.group, claimed = n_claimed, "claimed stale entries");
        }
        // Deleted entries were dropped from the pending list by XAUTOCLAIM itself.
        if !deleted.is_empty() {
            bump(&shared.stats.unhandled, deleted.len() as u64);
            pass.skipped
                .fetch_add(deleted.len() as u64, Ordering::Relaxed);
        }
        let entries: Vec<RawEntry> = entries
            .into_iter()
            .filter(|e| !shared.is_tracked(&stream.name, &e.id))
            .collect();
        if !entries.is_empty() {
            dispatch(shared, run, stream, entries, Some(pass.clone()), false).await;
        }
        if next == "0-0" || next == "0" {
            break;
        }
        cursor = next;
    }
    Ok(())
}

struct Candidate {
    entry_id: String,
    event: AsdlcEvent,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    handler: usize,
    fp: [u8; FINGERPRINT_LEN],
}

/// What the begin step said of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begun {
    /// Already processed by the group: acknowledged.
    Duplicate,
    /// Another delivery holds the key's live lease: checked again later.
    Busy,
    /// The lease is ours; the handler runs its attempt `n` (counted in the server).
    Leased(u32),
}

impl redis::FromRedisValue for Begun {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        match i64::from_redis_value(v)? {
            0 => Ok(Begun::Duplicate),
            -1 => Ok(Begun::Busy),
            n if n > 0 => Ok(Begun::Leased(u32::try_from(n).unwrap_or(u32::MAX))),
            n => Err(format!("unexpected begin code {n}").into()),
        }
    }
}

/// Runs a batch of entries of one stream through decode, begin and the handlers. Entries
/// this consumer is already working on are left out (`redelivery`: the batch is the
/// redelivery of deferred entries, which takes them back).
async fn dispatch(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    entries: Vec<RawEntry>,
    pass: Option<Arc<Pass>>,
    redelivery: bool,
) {
    let admitted = {
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        shared.ledger.admit(&stream.name, &ids, redelivery)
    };
    let entries: Vec<RawEntry> = entries
        .into_iter()
        .zip(admitted)
        .filter_map(|(e, ok)| ok.then_some(e))
        .collect();
    if entries.is_empty() {
        return;
    }
    let n = entries.len();
    shared.active.begin(n);
    if let Some(p) = &pass {
        p.begin(n);
    }
    let mut candidates: Vec<Candidate> = Vec::with_capacity(n);
    let mut seen: HashSet<[u8; FINGERPRINT_LEN]> = HashSet::new();
    let mut deferred: Vec<String> = Vec::new();
    for entry in entries {
        let Some(fields) = entry.fields else {
            send(
                shared,
                run,
                Outcome {
                    stream: stream.clone(),
                    id: entry.id,
                    lease: None,
                    kind: Kind::Ack { deleted: true },
                    pass: pass.clone(),
                    handler: None,
                },
            )
            .await;
            continue;
        };
        let dead = |reason: String, fields| Outcome {
            stream: stream.clone(),
            id: entry.id.clone(),
            lease: None,
            kind: Kind::Dead {
                fields,
                reason,
                error: String::new(),
                attempts: 0,
                handler: String::new(),
            },
            pass: pass.clone(),
            handler: None,
        };
        let event = match decode(&fields) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(stream = %stream.name, id = %entry.id, error = %e, "malformed entry: dead-lettering it");
                send(shared, run, dead(e.to_string(), fields)).await;
                continue;
            }
        };
        if event.tenant_id != stream.tenant {
            let reason = format!(
                "tenant mismatch: the event names tenant {:?} but stream `{}` belongs to {:?}",
                event.tenant_id.as_ref().map(TenantId::as_str),
                stream.name,
                stream.tenant.as_ref().map(TenantId::as_str)
            );
            tracing::warn!(stream = %stream.name, id = %entry.id, %reason, "dead-lettering entry");
            send(shared, run, dead(reason, fields)).await;
            continue;
        }
        // A dead letter replayed for one group: the others acknowledge it unhandled.
        let for_other_group = fields.iter().any(|(k, v)| {
            k.as_slice() == crate::deadletter::REPLAY_GROUP_FIELD.as_bytes()
                && v.as_slice() != shared.group.as_bytes()
        });
        let handler = if for_other_group {
            None
        } else {
            shared.handler_for(&event)
        };
        let Some(handler) = handler else {
            send(
                shared,
                run,
                Outcome {
                    stream: stream.clone(),
                    id: entry.id,
                    lease: None,
                    kind: Kind::Ack { deleted: false },
                    pass: pass.clone(),
                    handler: None,
                },
            )
            .await;
            continue;
        };
        let key = event
            .idempotency_key
            .clone()
            .unwrap_or_else(|| crate::deadletter::keyless_identity(&entry.id));
        let fp = fingerprint(&key);
        if !seen.insert(fp) {
            // A second copy of a key in one batch waits for the first to finish.
            deferred.push(entry.id);
            continue;
        }
        candidates.push(Candidate {
            entry_id: entry.id,
            event,
            fields,
            handler,
            fp,
        });
    }
    shared.ledger.set_leases(
        &stream.name,
        candidates.iter().map(|c| (c.entry_id.as_str(), c.fp)),
    );
    for id in deferred {
        defer(shared, run, stream, id, Delay::Recheck, pass.as_deref());
        finish(shared, pass.as_deref());
    }

    let mut remaining = candidates;
    while !remaining.is_empty() {
        let rest = if remaining.len() > SCRIPT_CHUNK {
            remaining.split_off(SCRIPT_CHUNK)
        } else {
            Vec::new()
        };
        let chunk = std::mem::replace(&mut remaining, rest);
        let mut failures = 0u32;
        let codes = loop {
            match begin(shared, run, stream, &chunk).await {
                Ok(codes) => break Some(codes),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(stream = %stream.name, error = %e, "begin step failed; retrying");
                    if shared.stop.is_cancelled() || run.abort.is_cancelled() {
                        break None;
                    }
                    if retry_pause(failures) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        let Some(codes) = codes else {
            // Stopping: leave the rest pending for the next start.
            for c in chunk.into_iter().chain(std::mem::take(&mut remaining)) {
                shared.untrack(&stream.name, &c.entry_id);
                finish(shared, pass.as_deref());
            }
            return;
        };
        for (c, code) in chunk.into_iter().zip(codes) {
            match code {
                Begun::Duplicate => {
                    shared.count_duplicate(stream, Some(c.handler), pass.as_deref());
                    tracing::debug!(stream = %stream.name, id = %c.entry_id, "duplicate: already processed");
                    shared.untrack(&stream.name, &c.entry_id);
                    finish(shared, pass.as_deref());
                }
                Begun::Leased(attempt) if attempt > shared.max_deliveries(c.handler) => {
                    // Every allowed attempt began and none ended with an outcome: the handler
                    // (or its process) kept crashing.
                    let max = shared.max_deliveries(c.handler);
                    let started = attempt - 1;
                    let reason = format!(
                        "{started} attempts started and none finished, max_deliveries is {max}: the handler or its process kept crashing"
                    );
                    let out = Outcome {
                        stream: stream.clone(),
                        id: c.entry_id,
                        lease: Some(c.fp),
                        kind: Kind::Dead {
                            fields: c.fields,
                            reason,
                            error: String::new(),
                            attempts: started,
                            handler: shared.handlers[c.handler].name().to_owned(),
                        },
                        pass: pass.clone(),
                        handler: Some(c.handler),
                    };
                    send(shared, run, out).await;
                }
                Begun::Leased(attempt) => {
                    spawn_handler(shared, run, stream, c, attempt, pass.clone()).await
                }
                Begun::Busy => {
                    tracing::debug!(stream = %stream.name, id = %c.entry_id, "key held by another delivery; checking again later");
                    defer(
                        shared,
                        run,
                        stream,
                        c.entry_id,
                        Delay::Recheck,
                        pass.as_deref(),
                    );
                    finish(shared, pass.as_deref());
                }
            }
        }
    }
}

/// How long a deferred entry waits.
#[derive(Debug, Clone, Copy)]
enum Delay {
    /// Another delivery holds its key: a short wait, not counted as an attempt.
    Recheck,
    /// Attempt `n` failed: the backoff after it.
    Retry(u32),
}

/// Leaves an entry pending and schedules it for redelivery to this consumer.
fn defer(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    id: String,
    delay: Delay,
    pass: Option<&Pass>,
) {
    shared.ledger.defer(&stream.name, &id);
    let delay = match delay {
        Delay::Recheck => {
            if let Some(p) = pass {
                p.skipped.fetch_add(1, Ordering::Relaxed);
            }
            shared
                .options
                .retry
                .delay(1)
                .max(Duration::from_millis(100))
        }
        Delay::Retry(attempt) => shared.options.retry.delay(attempt),
    };
    lock(&run.retries).push(Reverse(Redelivery {
        due: Instant::now() + delay,
        stream: stream.clone(),
        id,
    }));
    run.retry_wake.notify_one();
}

fn finish(shared: &Shared, pass: Option<&Pass>) {
    if let Some(p) = pass {
        p.end();
    }
    shared.active.end();
}

async fn begin(
    shared: &Shared,
    run: &RunCtx,
    stream: &StreamCtx,
    chunk: &[Candidate],
) -> redis::RedisResult<Vec<Begun>> {
    let mut inv = BEGIN.key(&*stream.name);
    inv.key(&stream.lease_key);
    let marks = &shared.options.marks;
    marks.mark_keys(
        &stream.marks_prefix,
        chunk.iter().map(|c| &c.fp[..]),
        &mut inv,
    );
    shared
        .options
        .marks
        .script_args(&stream.marks_prefix, &mut inv);
    inv.arg(&*shared.group)
        .arg(&*run.token)
        .arg(run.predecessor(&stream.name))
        .arg(shared.lease_ms());
    for c in chunk {
        inv.arg(&c.entry_id).arg(&c.fp[..]);
    }
    let mut conn = shared.conn.clone();
    inv.invoke_async(&mut conn).await
}

async fn send(shared: &Shared, run: &RunCtx, outcome: Outcome) {
    let tx = lock(&run.commit_tx).clone();
    let result = match tx {
        Some(tx) => tx.send(outcome).await,
        None => Err(mpsc::error::SendError(outcome)),
    };
    if let Err(mpsc::error::SendError(outcome)) = result {
        // The committer is gone (the run is ending): the entry stays pending.
        shared.untrack(&outcome.stream.name, &outcome.id);
        finish(shared, outcome.pass.as_deref());
    }
}

async fn spawn_handler(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    c: Candidate,
    attempt: u32,
    pass: Option<Arc<Pass>>,
) {
    // A free slot is taken without waiting (and without registering with the abort token).
    let permit = match shared.permits.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => tokio::select! {
            p = shared.permits.clone().acquire_owned() => p.ok(),
            _ = run.abort.cancelled() => None,
        },
    };
    let Some(permit) = permit else {
        shared.untrack(&stream.name, &c.entry_id);
        finish(shared, pass.as_deref());
        return;
    };
    let shared = shared.clone();
    let run2 = run.clone();
    let stream = stream.clone();
    let spec = shared.handlers[c.handler].clone();
    // At debug level: a span per event costs little when debug is off, and a consumer at info
    // level should not pay for one per event.
    let span = tracing::debug_span!(
        "asdlc.handle",
        event_id = %c.entry_id,
        event_type = %c.event.event_type,
        group = %shared.group,
        tenant = stream.tenant.as_ref().map(TenantId::as_str).unwrap_or(""),
        attempt,
        handler = spec.name(),
        trace_id = tracing::field::Empty,
    );
    // A publish and its handling join one trace; events the handler publishes continue it.
    let trace = crate::monitor::extract_trace_context(&c.event).map(|t| t.child());
    if let Some(t) = &trace {
        span.record("trace_id", t.trace_id_hex());
    }
    run.tasks.spawn(
        async move {
            let _permit = permit;
            let _limit = match &shared.handler_limits[c.handler] {
                Some(sem) => sem.clone().acquire_owned().await.ok(),
                None => None,
            };
            let ctx = HandlerContext::new(
                stream.tenant.clone(),
                attempt,
                c.entry_id.clone(),
                stream.keys.clone(),
                shared.group.clone(),
                run2.consumer.clone(),
            );
            let mut event = c.event;
            event.event_id = Some(c.entry_id.clone());
            let timeout = spec
                .options
                .timeout
                .unwrap_or(shared.options.handler_timeout);
            let call = AssertUnwindSafe(spec.handler.handle(&event, &ctx)).catch_unwind();
            let call = tokio::time::timeout(timeout, call);
            let tenant = stream.tenant.as_ref().map(TenantId::as_str);
            crate::monitor::record_publish_to_handle(
                &shared.group,
                tenant,
                spec.name(),
                &c.entry_id,
            );
            let started = std::time::Instant::now();
            let scoped = async {
                match stream.tenant.clone() {
                    Some(t) => TenantContext::scope(t, call).await,
                    None => call.await,
                }
            };
            // The handler first: one that finishes at once never registers with the abort
            // token (a lock each way). An abort that came before the start is seen here.
            let outcome = if run2.abort.is_cancelled() {
                None
            } else {
                tokio::select! {
                    biased;
                    r = async {
                        match trace {
                            Some(t) => t.scope(scoped).await,
                            None => scoped.await,
                        }
                    } => Some(r),
                    _ = run2.abort.cancelled() => None,
                }
            };
            let Some(outcome) = outcome else {
                // Aborted at shutdown: the entry stays pending, handled again on restart.
                shared.untrack(&stream.name, &c.entry_id);
                finish(&shared, pass.as_deref());
                return;
            };
            let result = match outcome {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => {
                    bump(&shared.stats.panics, 1);
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".to_owned());
                    tracing::error!(panic = %msg, "handler panicked");
                    HandlerResult::retry(format!("handler panicked: {msg}"))
                }
                Err(_) => {
                    bump(&shared.stats.timeouts, 1);
                    tracing::warn!(?timeout, "handler timed out");
                    HandlerResult::retry(format!("timed out after {timeout:?}"))
                }
            };
            crate::monitor::record_handler_latency(
                &shared.group,
                tenant,
                spec.name(),
                started.elapsed(),
            );
            if !result.success {
                crate::monitor::record_failed(&shared.group, tenant, spec.name());
            }
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                success = result.success,
                "handled"
            );
            let kind = if result.success {
                Kind::Success {
                    fp: c.fp,
                    effects: ctx.take_effects(),
                    attempt,
                    fields: c.fields,
                }
            } else {
                let error = result
                    .error_message
                    .unwrap_or_else(|| "handler failed".to_owned());
                if result.should_retry {
                    failed_attempt(&shared, c.handler, attempt, c.fields, error)
                } else {
                    Kind::Dead {
                        fields: c.fields,
                        reason: "permanent failure".to_owned(),
                        error,
                        attempts: attempt,
                        handler: spec.name().to_owned(),
                    }
                }
            };
            let out = Outcome {
                stream: stream.clone(),
                id: c.entry_id,
                lease: Some(c.fp),
                kind,
                pass,
                handler: Some(c.handler),
            };
            send(&shared, &run2, out).await;
        }
        .instrument(span),
    );
}

/// What follows a failed attempt: a retry after its backoff, or, on the last allowed attempt,
/// the dead-letter stream.
fn failed_attempt(
    shared: &Shared,
    handler: usize,
    attempt: u32,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    error: String,
) -> Kind {
    let max = shared.max_deliveries(handler);
    if attempt < max {
        Kind::Retry { attempt, error }
    } else {
        Kind::Dead {
            fields,
            reason: format!("failed on the last allowed attempt ({max})"),
            error,
            attempts: attempt,
            handler: shared.handlers[handler].name().to_owned(),
        }
    }
}

/// Commits finished entries in batches: one script call per stream per batch.
async fn committer(shared: Arc<Shared>, run: Arc<RunCtx>, mut rx: mpsc::Receiver<Outcome>) {
    let mut again: Vec<Outcome> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut again);
        if batch.is_empty() {
            match rx.recv().await {
                Some(o) => batch.push(o),
                None => break,
            }
        }
        while batch.len() < SCRIPT_CHUNK {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut by_stream: HashMap<Arc<str>, Vec<Outcome>> = HashMap::new();
        for o in batch {
            by_stream.entry(o.stream.name.clone()).or_default().push(o);
        }
        for (_, outcomes) in by_stream {
            commit_batch(&shared, &run, outcomes, &mut again).await;
        }
    }
}

async fn commit_batch(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    outcomes: Vec<Outcome>,
    again: &mut Vec<Outcome>,
) {
    let stream = outcomes[0].stream.clone();
    let mut attempt = 0u32;
    let results = loop {
        match commit(shared, run, &stream, &outcomes).await {
            Ok(v) => break Some(v),
            Err(e) => {
                attempt += 1;
                // Committing again is safe: a record whose mark is already set acks without
                // applying its effects a second time.
                tracing::warn!(stream = %stream.name, error = %e, attempt, "commit failed; retrying");
                if run.abort.is_cancelled() || attempt > 100 {
                    break None;
                }
                if retry_pause(attempt) {
                    let pause = 100 * u64::from((attempt / 2).min(20));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    };
    let Some(results) = results else {
        // Given up: the entries stay pending; a re-read of our own pending entries finds them.
        for o in outcomes {
            shared.untrack(&stream.name, &o.id);
            finish(shared, o.pass.as_deref());
        }
        run.reread.store(true, Ordering::Release);
        return;
    };
    let tenant = stream.tenant.as_ref().map(TenantId::as_str);
    for (o, r) in outcomes.into_iter().zip(results) {
        let pass = o.pass.as_deref();
        let handler = o.handler.map_or("", |i| shared.handlers[i].name());
        let count = |f: fn(&Pass) -> &AtomicU64| {
            if let Some(p) = pass {
                f(p).fetch_add(1, Ordering::Relaxed);
            }
        };
        match (o.kind, r) {
            // After a failed attempt whose reply was lost, "already marked" is nearly always
            // that attempt's own work (a key another delivery marks meanwhile needs our lease
            // to have lapsed): counted as processed.
            (Kind::Success { .. }, Value::Int(n)) if n == 1 || (n == 0 && attempt > 0) => {
                bump(&shared.stats.processed, 1);
                crate::monitor::record_processed(&shared.group, tenant, handler);
                count(|p| &p.processed);
            }
            (Kind::Success { .. }, Value::Int(2)) => {
                // Our lease lapsed and another delivery of the key took it: that one decides.
                count(|p| &p.skipped);
                tracing::info!(stream = %stream.name, id = %o.id, "another delivery holds this key's lease; checking again later");
                defer(shared, run, &stream, o.id, Delay::Recheck, None);
                finish(shared, pass);
                continue;
            }
            (Kind::Success { .. }, Value::Int(_)) => {
                shared.count_duplicate(&stream, o.handler, pass);
                tracing::info!(stream = %stream.name, id = %o.id, "another delivery committed this key first; effects dropped");
            }
            (
                Kind::Success {
                    attempt: tried,
                    fields,
                    ..
                },
                refusal,
            ) => {
                // A refused effect is a failed attempt: nothing of the record was applied.
                let refusal = match refusal {
                    Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    Value::SimpleString(s) => s,
                    other => format!("{other:?}"),
                };
                let error = format!("effect refused: {refusal}");
                tracing::warn!(stream = %stream.name, id = %o.id, %error, attempt = tried, "staged effect refused");
                crate::monitor::record_failed(&shared.group, tenant, handler);
                if let Some(h) = o.handler {
                    again.push(Outcome {
                        kind: failed_attempt(shared, h, tried, fields, error),
                        ..o
                    });
                    continue;
                }
            }
            (
                Kind::Retry {
                    attempt: tried,
                    error,
                },
                _,
            ) => {
                bump(&shared.stats.retried, 1);
                crate::monitor::record_retried(&shared.group, tenant, handler);
                count(|p| &p.failed);
                tracing::info!(stream = %stream.name, id = %o.id, attempt = tried, %error, "handler failed; will retry");
                defer(shared, run, &stream, o.id, Delay::Retry(tried), None);
                finish(shared, pass);
                continue;
            }
            (
                Kind::Dead {
                    reason,
                    error,
                    handler: dead_handler,
                    ..
                },
                _,
            ) => {
                bump(&shared.stats.dead_lettered, 1);
                crate::monitor::record_dead_lettered(&shared.group, tenant, &dead_handler);
                count(|p| &p.failed);
                tracing::warn!(stream = %stream.name, id = %o.id, %reason, %error, "moved to the dead-letter stream");
            }
            (Kind::Ack { deleted }, _) => {
                bump(&shared.stats.unhandled, 1);
                count(|p| &p.skipped);
                tracing::debug!(stream = %stream.name, id = %o.id, deleted, "acknowledged without handling");
            }
        }
        shared.untrack(&stream.name, &o.id);
        finish(shared, pass);
    }
}

async fn commit(
    shared: &Shared,
    run: &RunCtx,
    stream: &StreamCtx,
    outcomes: &[Outcome],
) -> redis::RedisResult<Vec<Value>> {
    let mut inv = COMMIT.key(&*stream.name);
    inv.key(&stream.dead_letter).key(&stream.lease_key);
    // Declared: the mark hashes of the records that mark, and every staged effect's key.
    let marking = outcomes.iter().filter_map(|o| match &o.kind {
        Kind::Success { fp, .. } => Some(&fp[..]),
        _ => None,
    });
    shared
        .options
        .marks
        .mark_keys(&stream.marks_prefix, marking, &mut inv);
    for o in outcomes {
        if let Kind::Success { effects, .. } = &o.kind {
            for e in effects {
                inv.key(e.key());
            }
        }
    }
    shared
        .options
        .marks
        .script_args(&stream.marks_prefix, &mut inv);
    inv.arg(&*shared.group).arg(&*run.token);
    let dead_letters = &shared.options.dead_letters;
    match dead_letters.max_len {
        Some(n) => inv.arg(n),
        None => inv.arg(""),
    };
    inv.arg(
        dead_letters
            .max_age
            .map_or(0, |d| d.as_millis().max(1) as u64),
    );
    let mut now = String::new();
    for o in outcomes {
        match &o.kind {
            Kind::Success { fp, effects, .. }
                if effects.is_empty() && o.lease.as_ref() == Some(fp) =>
            {
                // The common record, in its short form.
                inv.arg("s").arg(&o.id).arg(&fp[..]);
            }
            Kind::Success { fp, effects, .. } => {
                inv.arg("S")
                    .arg(&o.id)
                    .arg(&fp[..])
                    .arg(lease_arg(&o.lease))
                    .arg(effects.len());
                for e in effects {
                    inv.arg(e.command()).arg(e.key()).arg(e.args().len());
                    for a in e.args() {
                        inv.arg(a.as_slice());
                    }
                }
            }
            Kind::Retry { .. } => {
                inv.arg("R").arg(&o.id).arg(lease_arg(&o.lease));
            }
            Kind::Dead {
                fields,
                reason,
                error,
                attempts,
                handler,
            } => {
                if now.is_empty() {
                    now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                }
                let meta: [(&str, &str); 8] = [
                    ("source_stream", &stream.name),
                    ("source_id", &o.id),
                    ("group", &shared.group),
                    ("consumer", &run.consumer),
                    ("handler", handler),
                    ("reason", reason),
                    ("error", error),
                    ("dead_at", &now),
                ];
                let (fields, truncated_from) = dead_letters.cap(fields);
                let extra = 1 + usize::from(truncated_from.is_some());
                inv.arg("D")
                    .arg(&o.id)
                    .arg(lease_arg(&o.lease))
                    .arg(meta.len() + extra + fields.len());
                for (k, v) in meta {
                    inv.arg(k).arg(v);
                }
                inv.arg("attempts").arg(*attempts);
                if let Some(n) = truncated_from {
                    inv.arg("truncated_from").arg(n);
                }
                for (k, v) in fields {
                    let mut name = Vec::with_capacity(k.len() + 2);
                    name.extend_from_slice(crate::deadletter::FIELD_PREFIX.as_bytes());
                    name.extend_from_slice(k);
                    inv.arg(name).arg(v);
                }
            }
            Kind::Ack { .. } => {
                inv.arg("A").arg(&o.id);
            }
        }
    }
    let mut conn = shared.conn.clone();
    inv.invoke_async(&mut conn).await
}

/// Redelivers entries whose retry (or recheck) is due, to this consumer.
async fn redeliver_loop(shared: Arc<Shared>, run: Arc<RunCtx>) {
    let mut conn = shared.conn.clone();
    loop {
        let next_due = lock(&run.retries).peek().map(|r| r.0.due);
        let sleep = match next_due {
            Some(due) => tokio::time::sleep_until(due),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = run.retry_wake.notified() => continue,
            _ = shared.stop.cancelled() => return,
        }
        let now = Instant::now();
        let mut due: Vec<Redelivery> = Vec::new();
        {
            let mut heap = lock(&run.retries);
            while heap.peek().is_some_and(|r| r.0.due <= now) {
                if let Some(Reverse(r)) = heap.pop() {
                    due.push(r);
                }
            }
        }
        // One call per stream for everything due on it.
        let mut by_stream: HashMap<Arc<str>, Vec<Redelivery>> = HashMap::new();
        for r in due {
            by_stream.entry(r.stream.name.clone()).or_default().push(r);
        }
        for (_, items) in by_stream {
            let stream = items[0].stream.clone();
            let mut inv = REDELIVER.key(&*stream.name);
            inv.arg(&*shared.group).arg(&*run.consumer);
            for r in &items {
                inv.arg(&r.id);
            }
            match inv.invoke_async::<Value>(&mut conn).await {
                Ok(v) => {
                    let batch = parse_entries(v);
                    // Not ours any more (a peer claimed it) or deleted: let it go.
                    let back: HashSet<&str> = batch.iter().map(|e| e.id.as_str()).collect();
                    for r in items.iter().filter(|r| !back.contains(r.id.as_str())) {
                        shared.untrack(&stream.name, &r.id);
                    }
                    dispatch(&shared, &run, &stream, batch, None, true).await;
                }
                Err(e) => {
                    tracing::warn!(stream = %stream.name, error = %e, "redelivery failed; trying later");
                    let mut heap = lock(&run.retries);
                    for r in items {
                        heap.push(Reverse(Redelivery {
                            due: Instant::now() + Duration::from_secs(1),
                            ..r
                        }));
                    }
                }
            }
        }
    }
}

/// Keeps in-flight entries and their leases fresh, so no peer claims work in progress.
async fn keepalive_loop(shared: Arc<Shared>, run: Arc<RunCtx>) {
    let period = (shared.options.claim_idle / 3).max(Duration::from_millis(50));
    let mut conn = shared.conn.clone();
    loop {
        tokio::time::sleep(period).await;
        for (stream, entries) in shared.ledger.running() {
            let Some(ctx) = shared.stream_by_name(&stream) else {
                continue;
            };
            for chunk in entries.chunks(SCRIPT_CHUNK) {
                let mut inv = KEEPALIVE.key(&*stream);
                inv.key(&ctx.lease_key)
                    .arg(&*shared.group)
                    .arg(&*run.consumer)
                    .arg(&*run.token)
                    .arg(shared.lease_ms());
                for (id, lease) in chunk {
                    inv.arg(id).arg(lease_arg(lease));
                }
                if let Err(e) = inv.invoke_async::<i64>(&mut conn).await {
                    tracing::warn!(%stream, error = %e, "keep-alive failed");
                }
            }
        }
    }
}

/// Claims stale entries from dead peers while running, and forgets consumers that are gone.
async fn claim_loop(shared: Arc<Shared>, run: Arc<RunCtx>) {
    let mut conn = shared.conn.clone();
    // The first pass sweeps (a start after a long pause finds the most left behind), then
    // every SWEEP_PASSES passes.
    let mut passes = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.options.claim_interval) => {}
            _ = shared.stop.cancelled() => return,
        }
        // Entries of ours that nobody is working on (a read reply lost on a cut connection, a
        // commit that gave up) are read again by the read loop, without waiting for a claim.
        run.reread.store(true, Ordering::Release);
        let sweep = passes.is_multiple_of(SWEEP_PASSES);
        passes = passes.wrapping_add(1);
        let pass = Arc::new(Pass::default());
        for stream in shared.stream_list() {
            if sweep && let Err(e) = sweep_leases(&shared, &mut conn, &stream).await {
                tracing::warn!(stream = %stream.name, error = %e, "sweeping stale leases failed");
            }
            if let Err(e) =
                claim_stream(&shared, &run, &stream, shared.options.claim_idle, &pass).await
            {
                tracing::warn!(stream = %stream.name, error = %e, "claiming stale entries failed");
            }
            if let Some(idle) = shared.options.forget_idle
                && let Err(e) = forget_gone(&shared, &run, &mut conn, &stream, idle).await
            {
                tracing::warn!(stream = %stream.name, error = %e, "removing gone consumers failed");
            }
        }
    }
}

/// Claim passes between two sweeps of the lease hashes (every 10 minutes by default).
const SWEEP_PASSES: u32 = 40;

/// Removes leases (and attempt counts) that lapsed long ago, one bounded page per call.
async fn sweep_leases(
    shared: &Shared,
    conn: &mut RedisConnection,
    stream: &StreamCtx,
) -> Result<(), ConsumeError> {
    let stale = (shared.options.claim_idle * 2).max(Duration::from_secs(3600));
    let mut cursor = "0".to_owned();
    let mut removed = 0u64;
    loop {
        let (next, n): (String, u64) = SWEEP_LEASES
            .key(&stream.lease_key)
            .arg(&cursor)
            .arg(500)
            .arg(stale.as_millis() as u64)
            .invoke_async(conn)
            .await
            .map_err(shared.redis_err(&stream.name))?;
        removed += n;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    if removed > 0 {
        tracing::info!(stream = %stream.name, group = %shared.group, removed, "swept stale leases");
    }
    Ok(())
}

async fn forget_gone(
    shared: &Shared,
    run: &RunCtx,
    conn: &mut RedisConnection,
    stream: &StreamCtx,
    idle: Duration,
) -> Result<(), ConsumeError> {
    let consumers: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&*stream.name)
        .arg(&*shared.group)
        .query_async(conn)
        .await
        .map_err(shared.redis_err(&stream.name))?;
    for c in crate::streams::as_array(&consumers) {
        let f = crate::streams::Fields::new(c);
        let (Some(name), Some(pending), Some(idle_ms)) =
            (f.string("name"), f.u64("pending"), f.u64("idle"))
        else {
            continue;
        };
        if name == *run.consumer || pending > 0 || idle_ms < idle.as_millis() as u64 {
            continue;
        }
        let lock_key = stream.keys.consumer_lock(&shared.group, &name);
        let removed: i64 = FORGET
            .key(&*stream.name)
            .key(lock_key)
            .arg(&*shared.group)
            .arg(&name)
            .arg(lock::TTL.as_millis() as u64)
            .invoke_async(conn)
            .await
            .map_err(shared.redis_err(&stream.name))?;
        if removed == 1 {
            tracing::info!(stream = %stream.name, group = %shared.group, consumer = %name, "removed a consumer that is gone and owned nothing");
        }
    }
    Ok(())
}

async fn lock_loop(shared: Arc<Shared>) -> ConsumeError {
    let mut conn = shared.conn.clone();
    loop {
        tokio::time::sleep(lock::REFRESH).await;
        let locks = shared.locks.lock().await;
        for l in locks.iter() {
            match l.refresh(&mut conn).await {
                Ok(()) => {}
                Err(e @ ConsumeError::NameLost { .. }) => return e,
                Err(e) => tracing::warn!(error = %e, "refreshing the consumer name lock failed"),
            }
        }
    }
}

/// Entries read from one stream.
type StreamBatch = (Arc<StreamCtx>, Vec<RawEntry>);

/// A read's reply, and the streams it asked.
type Read = (Vec<Arc<StreamCtx>>, redis::RedisResult<Value>);

/// Reads new entries and dispatches them until stopped.
async fn read_loop(shared: &Arc<Shared>, run: &Arc<RunCtx>) {
    let read_conn = shared.read_conn.clone();
    let mut failures = 0u32;
    // Wait until a good share of the handler slots is free before reading more: reading as
    // soon as one handler finishes would read (and begin, and commit) one entry per round trip.
    let low = (shared.options.batch_size.min(shared.options.concurrency) / 2).max(1);
    // A read sent while the previous batch was being dispatched, and its streams.
    let mut prefetched: Option<Read> = None;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        // Between reads, with nothing read and not yet dispatched: our own pending entries
        // that nobody here works on, when asked for.
        if prefetched.is_none()
            && run.reread.swap(false, Ordering::AcqRel)
            && let Err(e) = reread_own(shared, run).await
        {
            tracing::warn!(group = %shared.group, error = %e, "reading our own pending entries failed; retrying");
            run.reread.store(true, Ordering::Release);
            backoff(shared, &mut failures).await;
            continue;
        }
        let (streams, reply) = match prefetched.take() {
            Some(read) => read,
            None => {
                let free = shared.permits.available_permits();
                if free < low {
                    tokio::select! {
                        p = shared.permits.acquire_many(low as u32) => drop(p),
                        _ = shared.stop.cancelled() => return,
                    }
                    continue;
                }
                let streams = shared.stream_list();
                if streams.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        _ = shared.stop.cancelled() => return,
                    }
                }
                let reply = tokio::select! {
                    r = read_batch(shared, run, read_conn.clone(), &streams, free) => r,
                    // Entries a dropped read had delivered stay pending and are recovered
                    // on start.
                    _ = shared.stop.cancelled() => return,
                };
                (streams, reply)
            }
        };
        match reply {
            Ok(v) => {
                failures = 0;
                let batches: Vec<StreamBatch> = parse_read(v)
                    .into_iter()
                    .filter_map(|(name, entries)| {
                        let stream = streams.iter().find(|s| *s.name == *name)?;
                        Some((stream.clone(), entries))
                    })
                    .collect();
                let n: usize = batches.iter().map(|(_, b)| b.len()).sum();
                let dispatch_all = async {
                    for (stream, batch) in batches {
                        dispatch(shared, run, &stream, batch, None, false).await;
                    }
                };
                // While this batch begins, the next read is already on its way, if the
                // handler slots left allow one.
                let free_after = shared.permits.available_permits().saturating_sub(n);
                let next_streams = shared.stream_list();
                if n == 0 || free_after < low || next_streams.is_empty() {
                    dispatch_all.await;
                    continue;
                }
                let next = async {
                    tokio::select! {
                        r = read_batch(shared, run, read_conn.clone(), &next_streams, free_after) => Some(r),
                        _ = shared.stop.cancelled() => None,
                    }
                };
                let ((), next) = tokio::join!(dispatch_all, next);
                match next {
                    Some(reply) => prefetched = Some((next_streams, reply)),
                    None => return,
                }
            }
            Err(e) if is_no_group(&e) => {
                tracing::warn!(group = %shared.group, "group or stream missing; creating it again");
                if let Err(e) = shared.prepare().await {
                    tracing::warn!(error = %e, "re-creating the group failed");
                    backoff(shared, &mut failures).await;
                }
            }
            Err(e) => {
                tracing::warn!(group = %shared.group, error = %e, "read failed; retrying");
                // A read cut short may have been delivered to us all the same.
                run.reread.store(true, Ordering::Release);
                backoff(shared, &mut failures).await;
            }
        }
    }
}

/// Reads this consumer's own pending entries again (`XREADGROUP` from id 0), page by page,
/// and dispatches those nobody here is working on: entries whose read reply was lost on a
/// cut connection, or whose commit gave up, without waiting for a claim.
async fn reread_own(shared: &Arc<Shared>, run: &Arc<RunCtx>) -> Result<(), ConsumeError> {
    let mut conn = shared.conn.clone();
    let page = shared.options.batch_size.max(1);
    for stream in shared.stream_list() {
        let mut after = "0-0".to_owned();
        loop {
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&*shared.group)
                .arg(&*run.consumer)
                .arg("COUNT")
                .arg(page)
                .arg("STREAMS")
                .arg(&*stream.name)
                .arg(&after)
                .query_async(&mut conn)
                .await
                .map_err(shared.redis_err(&stream.name))?;
            let entries: Vec<RawEntry> = parse_read(reply)
                .into_iter()
                .flat_map(|(_, entries)| entries)
                .collect();
            let Some(last) = entries.last() else {
                break;
            };
            after = last.id.clone();
            let full = entries.len() >= page;
            let fresh: Vec<RawEntry> = entries
                .into_iter()
                .filter(|e| !shared.is_tracked(&stream.name, &e.id))
                .collect();
            if !fresh.is_empty() {
                tracing::info!(stream = %stream.name, group = %shared.group, entries = fresh.len(), "handling our own pending entries again");
                dispatch(shared, run, &stream, fresh, None, false).await;
            }
            if !full || shared.stop.is_cancelled() {
                break;
            }
        }
    }
    Ok(())
}

/// One blocking read of new entries from every stream, for at most `free` handler slots.
async fn read_batch(
    shared: &Shared,
    run: &RunCtx,
    mut conn: RedisConnection,
    streams: &[Arc<StreamCtx>],
    free: usize,
) -> redis::RedisResult<Value> {
    let count = (free / streams.len().max(1)).clamp(1, shared.options.batch_size);
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&*shared.group)
        .arg(&*run.consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(shared.options.block.as_millis() as u64)
        .arg("STREAMS");
    for s in streams {
        cmd.arg(&*s.name);
    }
    for _ in streams {
        cmd.arg(">");
    }
    cmd.query_async(&mut conn).await
}

async fn backoff(shared: &Shared, failures: &mut u32) {
    *failures += 1;
    let delay = Duration::from_millis(50u64 << (*failures).min(6)).min(Duration::from_secs(3));
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shared.stop.cancelled() => {}
    }
}

/// Whether to pause before the retry after the `failures`-th failure in a row: not after the
/// first of a pair. A command that fails on a connection that was cut while idle is mostly
/// just the first one after the cut (the connection is re-made for the next), so an
/// immediate retry usually succeeds where one after a pause would meet the next cut.
fn retry_pause(failures: u32) -> bool {
    failures.is_multiple_of(2)
}

/// Whether a start-up step that failed with `e` is worth trying again: a cut connection, a
/// timeout, a server loading or failing over, not a refusal (a name in use, a permission).
fn is_transient(e: &ConsumeError) -> bool {
    let source = match e {
        ConsumeError::Redis { source, .. } => source,
        ConsumeError::Stream(crate::error::StreamError::Redis { source, .. }) => source,
        _ => return false,
    };
    source.kind() != redis::ErrorKind::AuthenticationFailed
        && !matches!(source.retry_method(), redis::RetryMethod::NoRetry)
}

/// Runs a start-up step until it succeeds, retrying transient Redis errors with a backoff (a
/// connection cut while a consumer starts must not end it), until the consumer is stopped.
async fn at_startup<T, F, Fut>(shared: &Shared, what: &str, mut step: F) -> Result<T, ConsumeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ConsumeError>>,
{
    let mut failures = 0u32;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && !shared.stop.is_cancelled() => {
                tracing::warn!(group = %shared.group, error = %e, "{what} failed; retrying");
                if retry_pause(failures + 1) {
                    backoff(shared, &mut failures).await;
                } else {
                    failures += 1;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

struct RunningGuard<'a>(&'a Shared);
impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
        *lock(&self.0.run) = None;
        self.0.ledger.clear();
        self.0.ready.send_if_modified(|r| {
            if matches!(r, Readiness::Ended(_)) {
                return false;
            }
            *r = Readiness::Ended(None);
            true
        });
    }
}

/// A random token naming one run of a process.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// How many automatic names (`<host>-1`, `<host>-2`, ...) a consumer tries.
const NAME_SLOTS: u32 = 256;

/// Takes this run's consumer name on every stream: the configured one, or the lowest free
/// `<host>-<n>`. Returns the name and its locks.
async fn take_name(
    shared: &Shared,
    token: &str,
) -> Result<(Arc<str>, Vec<NameLock>), ConsumeError> {
    let fixed = shared.options.consumer.clone();
    let host = super::host_name();
    let names: Box<dyn Iterator<Item = String> + Send> = match fixed.clone() {
        Some(name) => Box::new(std::iter::once(name)),
        None => Box::new((1..=NAME_SLOTS).map(move |n| format!("{host}-{n}"))),
    };
    let conn = shared.conn.clone();
    let mut refused = None;
    for name in names {
        let mut locks = Vec::new();
        let mut in_use = None;
        for s in shared.stream_list() {
            let lock = at_startup(shared, "taking the consumer name", || {
                let mut conn = conn.clone();
                let key = s.keys.consumer_lock(&shared.group, &name);
                let marker = s.keys.consumer_lock_marker();
                let (stream, group, name) = (s.name.clone(), shared.group.clone(), name.clone());
                async move {
                    NameLock::acquire(&mut conn, key, marker, token, &stream, &group, &name).await
                }
            })
            .await;
            match lock {
                Ok(l) => locks.push(l),
                Err(e @ ConsumeError::NameInUse { .. }) => {
                    in_use = Some(e);
                    break;
                }
                Err(e) => {
                    release(&conn, &locks).await;
                    return Err(e);
                }
            }
        }
        match in_use {
            None => return Ok((Arc::from(name.as_str()), locks)),
            Some(e) => {
                release(&conn, &locks).await;
                if fixed.is_some() {
                    return Err(e);
                }
                tracing::debug!(consumer = %name, "automatic consumer name in use; trying the next");
                refused = Some(e);
            }
        }
    }
    Err(refused.unwrap_or_else(|| ConsumeError::NameInUse {
        stream: shared.stream_names().join(", "),
        group: shared.group.to_string(),
        consumer: format!("{}-*", super::host_name()),
    }))
}

async fn release(conn: &RedisConnection, locks: &[NameLock]) {
    let mut conn = conn.clone();
    for l in locks {
        l.release(&mut conn).await;
    }
}

pub(crate) async fn run(shared: Arc<Shared>) -> Result<super::ConsumerStats, ConsumeError> {
    if shared.running.swap(true, Ordering::AcqRel) {
        return Err(ConsumeError::AlreadyRunning {
            group: shared.group.to_string(),
            consumer: shared.consumer().to_string(),
        });
    }
    if matches!(*shared.ready.borrow(), Readiness::Ended(_)) {
        return Err(ConsumeError::Finished {
            group: shared.group.to_string(),
            consumer: shared.consumer().to_string(),
        });
    }
    let _running = RunningGuard(&shared);
    let result = run_inner(&shared).await;
    shared.ready.send_replace(Readiness::Ended(match &result {
        Ok(_) | Err(ConsumeError::Finished { .. }) => None,
        Err(e) => Some(e.to_string()),
    }));
    result
}

async fn run_inner(shared: &Arc<Shared>) -> Result<super::ConsumerStats, ConsumeError> {
    let stopped = || ConsumeError::Finished {
        group: shared.group.to_string(),
        consumer: shared.consumer().to_string(),
    };
    if shared.stop.is_cancelled() {
        return Err(stopped());
    }
    at_startup(shared, "creating the consumer group", || shared.prepare()).await?;
    let token = new_token();
    let (name, locks) = tokio::select! {
        r = take_name(shared, &token) => r?,
        _ = shared.stop.cancelled() => return Err(stopped()),
    };
    *shared.consumer.write().unwrap_or_else(|p| p.into_inner()) = name.clone();
    let predecessors = locks
        .iter()
        .filter_map(|l| Some((Arc::from(l.stream()), l.predecessor()?.to_owned())))
        .collect();
    let (run, rx) = new_run(name, Arc::from(token.as_str()), predecessors);
    *shared.locks.lock().await = locks;
    // Dropping this future (a crash, in tests) aborts the handlers: their entries stay pending.
    let _abort_on_drop = run.abort.clone().drop_guard();
    *lock(&shared.run) = Some(run.clone());
    let mut background = JoinSet::new();
    let committer_task = tokio::spawn(committer(shared.clone(), run.clone(), rx));
    let committer_abort = committer_task.abort_handle();
    let _committer_guard = AbortOnDrop(Some(committer_abort));
    background.spawn(keepalive_loop(shared.clone(), run.clone()));
    let lock_task = tokio::spawn(lock_loop(shared.clone()));
    let _lock_guard = AbortOnDrop(Some(lock_task.abort_handle()));
    background.spawn(redeliver_loop(shared.clone(), run.clone()));

    let started = std::time::Instant::now();
    let mut recovery = RecoveryResult::default();
    let pass = Arc::new(Pass::default());
    for s in shared.stream_list() {
        // Entries already dispatched by a failed attempt are in flight and skipped.
        at_startup(shared, "recovering pending entries", || {
            recover_own(shared, &run, &s, &pass)
        })
        .await?;
    }
    pass.wait().await;
    recovery.merge(pass.result());
    let pass = Arc::new(Pass::default());
    for s in shared.stream_list() {
        at_startup(shared, "claiming stale entries", || {
            claim_stream(shared, &run, &s, shared.options.claim_idle, &pass)
        })
        .await?;
    }
    pass.wait().await;
    recovery.merge(pass.result());
    tracing::info!(
        group = %shared.group,
        consumer = %run.consumer,
        streams = shared.stream_list().len(),
        processed = recovery.processed,
        skipped = recovery.skipped,
        failed = recovery.failed,
        claimed = recovery.claimed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery finished; consuming"
    );
    *lock(&shared.last_recovery) = Some(recovery);
    shared.ready.send_replace(Readiness::Ready);
    background.spawn(claim_loop(shared.clone(), run.clone()));

    let lost = tokio::select! {
        _ = read_loop(shared, &run) => None,
        e = lock_task => e.ok(),
    };
    if let Some(e) = &lost {
        tracing::error!(error = %e, "stopping: the consumer name was taken over");
        shared.stop.cancel();
    }

    // Graceful stop: no more reads; let running handlers finish, then commit them.
    let grace = shared.options.shutdown_grace;
    if tokio::time::timeout(grace, shared.active.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "handlers still running after the grace period; leaving their entries pending"
        );
        run.abort.cancel();
    }
    run.tasks.close();
    run.tasks.wait().await;
    background.shutdown().await;
    *lock(&shared.run) = None;
    lock(&run.commit_tx).take();
    let _ = committer_task.await;
    {
        let locks = std::mem::take(&mut *shared.locks.lock().await);
        release(&shared.conn, &locks).await;
    }
    tracing::info!(group = %shared.group, consumer = %run.consumer, stats = ?shared.stats.snapshot(), "consumer stopped");
    match lost {
        Some(e) => Err(e),
        None => Ok(shared.stats.snapshot()),
    }
}

struct AbortOnDrop(Option<tokio::task::AbortHandle>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}
