//! The machinery behind [`super::EventConsumer`]: read loop, begin/commit scripts, handler
//! tasks, retries, keep-alive, claims and recovery.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
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

use super::entries::{RawEntry, id_key, parse_autoclaim, parse_entries, parse_pending, parse_read};
use super::lock::{self, NameLock};
use super::{ConsumerOptions, HandlerSpec};
use crate::config::Config;
use crate::connection::RedisConnection;
use crate::effects::Effect;
use crate::encoding::decode;
use crate::error::ConsumeError;
use crate::events::{AsdlcEvent, HandlerResult, RecoveryResult};
use crate::handler::HandlerContext;
use crate::idempotency::{FINGERPRINT_LEN, MARKS_LUA, fingerprint};
use crate::keys::StreamKeys;
use crate::streams::{create_consumer_group, is_no_group};
use crate::tenancy::{TenantContext, TenantId};

const LEASES_LUA: &str = include_str!("leases.lua");
static BEGIN: LazyLock<redis::Script> = LazyLock::new(|| with_helpers(include_str!("begin.lua")));
static COMMIT: LazyLock<redis::Script> = LazyLock::new(|| with_helpers(include_str!("commit.lua")));
static KEEPALIVE: LazyLock<redis::Script> =
    LazyLock::new(|| with_helpers(include_str!("keepalive.lua")));
static REDELIVER: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("redeliver.lua")));
static FORGET: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("forget.lua")));

/// A script with the mark and lease helpers it calls prepended.
fn with_helpers(script: &str) -> redis::Script {
    redis::Script::new(&format!("{MARKS_LUA}\n{LEASES_LUA}\n{script}"))
}

/// The fingerprint a delivery holds the lease of, if it took one.
type Lease = Option<[u8; FINGERPRINT_LEN]>;

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
    lock_key: String,
}

impl StreamCtx {
    fn new(stream: String, tenant: Option<TenantId>, group: &str, consumer: &str) -> Self {
        let keys = StreamKeys::new(stream);
        StreamCtx {
            name: Arc::from(keys.stream()),
            marks_prefix: keys.marks_prefix(group),
            lease_key: keys.lease_prefix(group).trim_end_matches(':').to_owned(),
            dead_letter: keys.dead_letter(),
            lock_key: keys.consumer_lock(group, consumer),
            keys: Arc::new(keys),
            tenant,
        }
    }
}

/// Resources of one run of the consumer (one `start()`, or one direct recovery call).
pub(crate) struct RunCtx {
    /// Taken at shutdown, which ends the committer (it holds the run itself).
    commit_tx: Mutex<Option<mpsc::Sender<Outcome>>>,
    abort: CancellationToken,
    tasks: TaskTracker,
    retries: Mutex<BinaryHeap<Reverse<Redelivery>>>,
    retry_wake: Notify,
}

struct Redelivery {
    due: Instant,
    stream: Arc<StreamCtx>,
    id: String,
    deliveries: u32,
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
    pub(crate) consumer: Arc<str>,
    conn: RedisConnection,
    read_conn: RedisConnection,
    streams: RwLock<Vec<Arc<StreamCtx>>>,
    handlers: Vec<HandlerSpec>,
    handler_limits: Vec<Option<Arc<Semaphore>>>,
    permits: Arc<Semaphore>,
    in_flight: Mutex<HashMap<Arc<str>, HashMap<String, Lease>>>,
    pub(crate) stats: Stats,
    pub(crate) stop: CancellationToken,
    pub(crate) ready: watch::Sender<bool>,
    running: AtomicBool,
    run: Mutex<Option<Arc<RunCtx>>>,
    locks: tokio::sync::Mutex<Vec<NameLock>>,
    active: Pass,
    pub(crate) last_recovery: Mutex<Option<RecoveryResult>>,
}

enum Kind {
    Success {
        fp: [u8; FINGERPRINT_LEN],
        effects: Vec<Effect>,
        deliveries: u32,
    },
    Retry {
        deliveries: u32,
        error: String,
    },
    Dead {
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        reason: String,
        error: String,
        deliveries: u32,
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
        let consumer: Arc<str> = Arc::from(options.consumer.as_str());
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
                streams.push(Arc::new(StreamCtx::new(stream, Some(t), &group, &consumer)));
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
            streams.push(Arc::new(StreamCtx::new(stream, None, &group, &consumer)));
        }
        let handler_limits = handlers
            .iter()
            .map(|h| {
                h.options
                    .concurrency
                    .map(|n| Arc::new(Semaphore::new(n.max(1))))
            })
            .collect();
        let (ready, _) = watch::channel(false);
        Ok(Shared {
            permits: Arc::new(Semaphore::new(options.concurrency)),
            config,
            options,
            group,
            consumer,
            conn,
            read_conn,
            streams: RwLock::new(streams),
            handlers,
            handler_limits,
            in_flight: Mutex::new(HashMap::new()),
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
        let ctx = Arc::new(StreamCtx::new(
            stream,
            Some(tenant),
            &self.group,
            &self.consumer,
        ));
        let mut conn = self.conn.clone();
        create_consumer_group(&mut conn, &ctx.name, &self.group, self.options.group_start).await?;
        if self.running.load(Ordering::Acquire) {
            let lock = NameLock::acquire(
                &mut conn,
                ctx.lock_key.clone(),
                &ctx.name,
                &self.group,
                &self.consumer,
            )
            .await?;
            self.locks.lock().await.push(lock);
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

    /// Notes entries as in flight (one lock for a batch).
    fn track_all<'a>(&self, stream: &Arc<str>, ids: impl Iterator<Item = &'a str>) {
        let mut in_flight = lock(&self.in_flight);
        let m = in_flight.entry(stream.clone()).or_default();
        for id in ids {
            m.insert(id.to_owned(), None);
        }
    }

    /// Notes the leases in-flight entries are about to take, for the keep-alive.
    fn set_leases<'a>(
        &self,
        stream: &Arc<str>,
        leases: impl Iterator<Item = (&'a str, [u8; FINGERPRINT_LEN])>,
    ) {
        let mut in_flight = lock(&self.in_flight);
        let Some(m) = in_flight.get_mut(stream) else {
            return;
        };
        for (id, fp) in leases {
            if let Some(lease) = m.get_mut(id) {
                *lease = Some(fp);
            }
        }
    }

    fn untrack(&self, stream: &Arc<str>, id: &str) {
        if let Some(m) = lock(&self.in_flight).get_mut(stream) {
            m.remove(id);
        }
    }

    fn is_tracked(&self, stream: &Arc<str>, id: &str) -> bool {
        lock(&self.in_flight)
            .get(stream)
            .is_some_and(|m| m.contains_key(id))
    }

    fn current_run(&self) -> Option<Arc<RunCtx>> {
        lock(&self.run).clone()
    }
}

fn new_run() -> (Arc<RunCtx>, mpsc::Receiver<Outcome>) {
    let (commit_tx, commit_rx) = mpsc::channel(4096);
    (
        Arc::new(RunCtx {
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
    let (run, rx) = new_run();
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
            .arg(&*shared.consumer);
        cmd
    };
    let mut pending = parse_pending(
        list("-")
            .query_async(&mut conn)
            .await
            .map_err(shared.redis_err(&stream.name))?,
    );
    // The page claimed last, dispatched while the next one is claimed.
    let mut claimed_page: Vec<(RawEntry, u32)> = Vec::new();
    loop {
        let page = std::mem::take(&mut pending);
        let claim_next = async {
            let Some(last) = page.last() else {
                return Ok(None);
            };
            let next = list(&format!("({}", last.0));
            let mut conn = conn.clone();
            let wanted: Vec<(String, u32)> = page
                .into_iter()
                .filter(|(id, ..)| !shared.is_tracked(&stream.name, id))
                .map(|(id, _, _, count)| (id, count.saturating_add(1)))
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
                .arg(&*shared.consumer)
                .arg(0);
            for (id, _) in &wanted {
                claim.arg(id);
            }
            let mut pipe = redis::pipe();
            pipe.add_command(claim).add_command(next);
            let (claimed, listed): (Value, Value) = pipe.query_async(&mut conn).await?;
            // XCLAIM answers in the order asked, leaving out entries deleted from the
            // stream: those are acknowledged as gone.
            let mut claimed = parse_entries(claimed).into_iter().peekable();
            let mut entries: Vec<(RawEntry, u32)> = Vec::with_capacity(wanted.len());
            for (id, count) in wanted {
                match claimed.next_if(|e| e.id == id) {
                    Some(e) => entries.push((e, count)),
                    None => entries.push((RawEntry { id, fields: None }, 1)),
                }
            }
            Ok(Some((entries, parse_pending(listed))))
        };
        let current = std::mem::take(&mut claimed_page);
        let dispatch_current = async {
            if !current.is_empty() {
                dispatch(shared, run, stream, current, Some(pass.clone())).await;
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
            .arg(&*shared.consumer)
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
            let counts = delivery_counts(shared, &mut conn, stream, &entries).await?;
            let batch = entries
                .into_iter()
                .map(|e| {
                    let c = counts.get(&e.id).copied().unwrap_or(1);
                    (e, c)
                })
                .collect();
            dispatch(shared, run, stream, batch, Some(pass.clone())).await;
        }
        if next == "0-0" || next == "0" {
            break;
        }
        cursor = next;
    }
    Ok(())
}

async fn delivery_counts(
    shared: &Shared,
    conn: &mut RedisConnection,
    stream: &StreamCtx,
    entries: &[RawEntry],
) -> Result<HashMap<String, u32>, ConsumeError> {
    let first = entries
        .iter()
        .map(|e| id_key(&e.id))
        .min()
        .unwrap_or((0, 0));
    let last = entries
        .iter()
        .map(|e| id_key(&e.id))
        .max()
        .unwrap_or((0, 0));
    let reply: Value = redis::cmd("XPENDING")
        .arg(&*stream.name)
        .arg(&*shared.group)
        .arg(format!("{}-{}", first.0, first.1))
        .arg(format!("{}-{}", last.0, last.1))
        .arg(entries.len().max(1) * 4)
        .arg(&*shared.consumer)
        .query_async(conn)
        .await
        .map_err(shared.redis_err(&stream.name))?;
    Ok(parse_pending(reply)
        .into_iter()
        .map(|(id, _, _, count)| (id, count))
        .collect())
}

struct Candidate {
    entry_id: String,
    event: AsdlcEvent,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    handler: usize,
    deliveries: u32,
    fp: [u8; FINGERPRINT_LEN],
}

/// Runs a batch of entries of one stream through decode, begin and the handlers.
async fn dispatch(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    entries: Vec<(RawEntry, u32)>,
    pass: Option<Arc<Pass>>,
) {
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
    let mut deferred: Vec<(String, u32)> = Vec::new();
    shared.track_all(&stream.name, entries.iter().map(|(e, _)| e.id.as_str()));
    for (entry, deliveries) in entries {
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
        let dead = |reason: String, handler: String, fields, lease: Lease| Outcome {
            stream: stream.clone(),
            id: entry.id.clone(),
            lease,
            kind: Kind::Dead {
                fields,
                reason,
                error: String::new(),
                deliveries,
                handler,
            },
            pass: pass.clone(),
            handler: None,
        };
        let event = match decode(&fields) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(stream = %stream.name, id = %entry.id, error = %e, "malformed entry: dead-lettering it");
                send(
                    shared,
                    run,
                    dead(e.to_string(), String::new(), fields, None),
                )
                .await;
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
            send(shared, run, dead(reason, String::new(), fields, None)).await;
            continue;
        }
        let Some(handler) = shared.handler_for(&event) else {
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
        let max = shared.max_deliveries(handler);
        if deliveries > max {
            let name = shared.handlers[handler].name().to_owned();
            let reason = format!(
                "delivered {deliveries} times, more than max_deliveries ({max}): the handler kept crashing or timing out"
            );
            send(shared, run, dead(reason, name, fields, None)).await;
            continue;
        }
        let key = event
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("entry:{}", entry.id));
        let fp = fingerprint(&key);
        if !seen.insert(fp) {
            // A second copy of a key in one batch waits for the first to finish.
            deferred.push((entry.id.clone(), deliveries));
            continue;
        }
        candidates.push(Candidate {
            entry_id: entry.id,
            event,
            fields,
            handler,
            deliveries,
            fp,
        });
    }
    shared.set_leases(
        &stream.name,
        candidates.iter().map(|c| (c.entry_id.as_str(), c.fp)),
    );
    for (id, deliveries) in deferred {
        defer(shared, run, stream, id, deliveries, pass.as_deref(), true);
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
            match begin(shared, stream, &chunk).await {
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
                0 => {
                    bump(&shared.stats.duplicates, 1);
                    crate::monitor::record_duplicate(
                        &shared.group,
                        stream.tenant.as_ref().map(TenantId::as_str),
                        shared.handlers[c.handler].name(),
                    );
                    if let Some(p) = &pass {
                        p.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(stream = %stream.name, id = %c.entry_id, "duplicate: already processed");
                    shared.untrack(&stream.name, &c.entry_id);
                    finish(shared, pass.as_deref());
                }
                1 => spawn_handler(shared, run, stream, c, pass.clone()).await,
                _ => {
                    tracing::debug!(stream = %stream.name, id = %c.entry_id, "key held by another delivery; checking again later");
                    defer(
                        shared,
                        run,
                        stream,
                        c.entry_id,
                        c.deliveries,
                        pass.as_deref(),
                        true,
                    );
                    finish(shared, pass.as_deref());
                }
            }
        }
    }
}

/// Leaves an entry pending and schedules it for redelivery to this consumer.
fn defer(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    id: String,
    deliveries: u32,
    pass: Option<&Pass>,
    busy: bool,
) {
    shared.untrack(&stream.name, &id);
    let delay = if busy {
        shared
            .options
            .retry
            .delay(1)
            .max(Duration::from_millis(100))
    } else {
        shared.options.retry.delay(deliveries)
    };
    if let Some(p) = pass
        && busy
    {
        p.skipped.fetch_add(1, Ordering::Relaxed);
    }
    // A recheck of a key another delivery holds is not a delivery of its own: the
    // redelivery counts one more, so this one counts one less, and a copy waiting for a long
    // handler is never dead-lettered for waiting.
    let deliveries = if busy {
        deliveries.saturating_sub(1)
    } else {
        deliveries
    };
    lock(&run.retries).push(Reverse(Redelivery {
        due: Instant::now() + delay,
        stream: stream.clone(),
        id,
        deliveries,
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
    stream: &StreamCtx,
    chunk: &[Candidate],
) -> redis::RedisResult<Vec<i64>> {
    let mut inv = BEGIN.key(&*stream.name);
    inv.key(&stream.lease_key);
    shared
        .options
        .marks
        .script_args(&stream.marks_prefix, &mut inv);
    inv.arg(&*shared.group)
        .arg(&*shared.consumer)
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
        attempt = c.deliveries,
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
                c.deliveries,
                c.entry_id.clone(),
                stream.keys.clone(),
                shared.group.clone(),
                shared.consumer.clone(),
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
                    deliveries: c.deliveries,
                }
            } else {
                let error = result
                    .error_message
                    .unwrap_or_else(|| "handler failed".to_owned());
                let max = shared.max_deliveries(c.handler);
                if result.should_retry && c.deliveries < max {
                    Kind::Retry {
                        deliveries: c.deliveries,
                        error,
                    }
                } else {
                    let reason = if result.should_retry {
                        format!("failed on the last allowed delivery ({max})")
                    } else {
                        "permanent failure".to_owned()
                    };
                    Kind::Dead {
                        fields: c.fields,
                        reason,
                        error,
                        deliveries: c.deliveries,
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
        match commit(shared, &stream, &outcomes).await {
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
        for o in outcomes {
            shared.untrack(&stream.name, &o.id);
            finish(shared, o.pass.as_deref());
        }
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
        match (&o.kind, r) {
            // After a failed attempt whose reply was lost, "already marked" is nearly always
            // that attempt's own work (a key another delivery marks meanwhile needs our lease
            // to have lapsed): counted as processed.
            (Kind::Success { .. }, Value::Int(n)) if n == 1 || (n == 0 && attempt > 0) => {
                bump(&shared.stats.processed, 1);
                crate::monitor::record_processed(&shared.group, tenant, handler);
                count(|p| &p.processed);
            }
            (Kind::Success { deliveries, .. }, Value::Int(2)) => {
                // Our lease lapsed and another delivery of the key took it: that one decides.
                count(|p| &p.skipped);
                tracing::info!(stream = %stream.name, id = %o.id, "another delivery holds this key's lease; checking again later");
                let (id, deliveries) = (o.id.clone(), *deliveries);
                defer(shared, run, &stream, id, deliveries, None, true);
            }
            (Kind::Success { .. }, Value::Int(_)) => {
                bump(&shared.stats.duplicates, 1);
                crate::monitor::record_duplicate(&shared.group, tenant, handler);
                count(|p| &p.skipped);
                tracing::info!(stream = %stream.name, id = %o.id, "another delivery committed this key first; effects dropped");
            }
            (Kind::Success { .. }, other) => {
                let error = match other {
                    Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    other => format!("{other:?}"),
                };
                tracing::warn!(stream = %stream.name, id = %o.id, %error, "staged effect refused; retrying the event");
                again.push(Outcome {
                    kind: Kind::Retry {
                        deliveries: 1,
                        error,
                    },
                    ..o
                });
                continue;
            }
            (Kind::Retry { deliveries, error }, _) => {
                bump(&shared.stats.retried, 1);
                crate::monitor::record_retried(&shared.group, tenant, handler);
                count(|p| &p.failed);
                tracing::info!(stream = %stream.name, id = %o.id, deliveries, %error, "handler failed; will retry");
                let (id, deliveries) = (o.id.clone(), *deliveries);
                defer(shared, run, &stream, id, deliveries, None, false);
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
                crate::monitor::record_dead_lettered(&shared.group, tenant, dead_handler);
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
    stream: &StreamCtx,
    outcomes: &[Outcome],
) -> redis::RedisResult<Vec<Value>> {
    let mut inv = COMMIT.key(&*stream.name);
    inv.key(&stream.dead_letter).key(&stream.lease_key);
    shared
        .options
        .marks
        .script_args(&stream.marks_prefix, &mut inv);
    inv.arg(&*shared.group).arg(&*shared.consumer);
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
                deliveries,
                handler,
            } => {
                if now.is_empty() {
                    now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                }
                let meta: [(&str, &str); 8] = [
                    ("source_stream", &stream.name),
                    ("source_id", &o.id),
                    ("group", &shared.group),
                    ("consumer", &shared.consumer),
                    ("handler", handler),
                    ("reason", reason),
                    ("error", error),
                    ("dead_at", &now),
                ];
                inv.arg("D")
                    .arg(&o.id)
                    .arg(lease_arg(&o.lease))
                    .arg(meta.len() + 1 + fields.len());
                for (k, v) in meta {
                    inv.arg(k).arg(v);
                }
                inv.arg("deliveries").arg(*deliveries);
                for (k, v) in fields {
                    let mut name = Vec::with_capacity(k.len() + 2);
                    name.extend_from_slice(crate::deadletter::FIELD_PREFIX.as_bytes());
                    name.extend_from_slice(k);
                    inv.arg(name).arg(v.as_slice());
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
            inv.arg(&*shared.group).arg(&*shared.consumer);
            for r in &items {
                inv.arg(&r.id);
            }
            match inv.invoke_async::<Value>(&mut conn).await {
                Ok(v) => {
                    let deliveries: HashMap<&str, u32> = items
                        .iter()
                        .map(|r| (r.id.as_str(), r.deliveries))
                        .collect();
                    let batch: Vec<(RawEntry, u32)> = parse_entries(v)
                        .into_iter()
                        .map(|e| {
                            let d = deliveries.get(e.id.as_str()).copied().unwrap_or(1);
                            (e, d.saturating_add(1))
                        })
                        .collect();
                    dispatch(&shared, &run, &stream, batch, None).await;
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

/// One stream's in-flight entries: (entry id, lease fingerprint).
type InFlightSnapshot = (Arc<str>, Vec<(String, Lease)>);

/// Keeps in-flight entries and their leases fresh, so no peer claims work in progress.
async fn keepalive_loop(shared: Arc<Shared>) {
    let period = (shared.options.claim_idle / 3).max(Duration::from_millis(50));
    let mut conn = shared.conn.clone();
    loop {
        tokio::time::sleep(period).await;
        let snapshot: Vec<InFlightSnapshot> = lock(&shared.in_flight)
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(s, m)| (s.clone(), m.iter().map(|(a, b)| (a.clone(), *b)).collect()))
            .collect();
        for (stream, entries) in snapshot {
            for chunk in entries.chunks(SCRIPT_CHUNK) {
                let Some(ctx) = shared.stream_by_name(&stream) else {
                    continue;
                };
                let mut inv = KEEPALIVE.key(&*stream);
                inv.key(&ctx.lease_key)
                    .arg(&*shared.group)
                    .arg(&*shared.consumer)
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
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.options.claim_interval) => {}
            _ = shared.stop.cancelled() => return,
        }
        let pass = Arc::new(Pass::default());
        for stream in shared.stream_list() {
            if let Err(e) =
                claim_stream(&shared, &run, &stream, shared.options.claim_idle, &pass).await
            {
                tracing::warn!(stream = %stream.name, error = %e, "claiming stale entries failed");
            }
            if let Some(idle) = shared.options.forget_idle
                && let Err(e) = forget_gone(&shared, &mut conn, &stream, idle).await
            {
                tracing::warn!(stream = %stream.name, error = %e, "removing gone consumers failed");
            }
        }
    }
}

async fn forget_gone(
    shared: &Shared,
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
        if name == *shared.consumer || pending > 0 || idle_ms < idle.as_millis() as u64 {
            continue;
        }
        let lock_key = stream.keys.consumer_lock(&shared.group, &name);
        let removed: i64 = FORGET
            .key(&*stream.name)
            .arg(&*shared.group)
            .arg(&name)
            .arg(lock_key)
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

/// Reads new entries and dispatches them until stopped.
/// Entries read from one stream, with their delivery counts.
type StreamBatch = (Arc<StreamCtx>, Vec<(RawEntry, u32)>);

/// A read's reply, and the streams it asked.
type Read = (Vec<Arc<StreamCtx>>, redis::RedisResult<Value>);

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
                    r = read_batch(shared, read_conn.clone(), &streams, free) => r,
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
                        Some((
                            stream.clone(),
                            entries.into_iter().map(|e| (e, 1)).collect(),
                        ))
                    })
                    .collect();
                let n: usize = batches.iter().map(|(_, b)| b.len()).sum();
                let dispatch_all = async {
                    for (stream, batch) in batches {
                        dispatch(shared, run, &stream, batch, None).await;
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
                        r = read_batch(shared, read_conn.clone(), &next_streams, free_after) => Some(r),
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
                backoff(shared, &mut failures).await;
            }
        }
    }
}

/// One blocking read of new entries from every stream, for at most `free` handler slots.
async fn read_batch(
    shared: &Shared,
    mut conn: RedisConnection,
    streams: &[Arc<StreamCtx>],
    free: usize,
) -> redis::RedisResult<Value> {
    let count = (free / streams.len().max(1)).clamp(1, shared.options.batch_size);
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&*shared.group)
        .arg(&*shared.consumer)
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
        self.0.ready.send_replace(false);
    }
}

pub(crate) async fn run(shared: Arc<Shared>) -> Result<super::ConsumerStats, ConsumeError> {
    if shared.running.swap(true, Ordering::AcqRel) {
        return Err(ConsumeError::AlreadyRunning {
            group: shared.group.to_string(),
            consumer: shared.consumer.to_string(),
        });
    }
    let _running = RunningGuard(&shared);
    if shared.stop.is_cancelled() {
        return Ok(shared.stats.snapshot());
    }
    at_startup(&shared, "creating the consumer group", || shared.prepare()).await?;
    {
        let conn = shared.conn.clone();
        let mut locks = shared.locks.lock().await;
        locks.clear();
        for s in shared.stream_list() {
            let lock = at_startup(&shared, "taking the consumer name", || {
                let mut conn = conn.clone();
                let key = s.lock_key.clone();
                let (stream, group, consumer) = (
                    s.name.clone(),
                    shared.group.clone(),
                    shared.consumer.clone(),
                );
                async move { NameLock::acquire(&mut conn, key, &stream, &group, &consumer).await }
            })
            .await?;
            locks.push(lock);
        }
    }
    let (run, rx) = new_run();
    // Dropping this future (a crash, in tests) aborts the handlers: their entries stay pending.
    let _abort_on_drop = run.abort.clone().drop_guard();
    *lock(&shared.run) = Some(run.clone());
    let mut background = JoinSet::new();
    let committer_task = tokio::spawn(committer(shared.clone(), run.clone(), rx));
    let committer_abort = committer_task.abort_handle();
    let _committer_guard = AbortOnDrop(Some(committer_abort));
    background.spawn(keepalive_loop(shared.clone()));
    let lock_task = tokio::spawn(lock_loop(shared.clone()));
    let _lock_guard = AbortOnDrop(Some(lock_task.abort_handle()));
    background.spawn(redeliver_loop(shared.clone(), run.clone()));

    let started = std::time::Instant::now();
    let mut recovery = RecoveryResult::default();
    let pass = Arc::new(Pass::default());
    for s in shared.stream_list() {
        // Entries already dispatched by a failed attempt are in flight and skipped.
        at_startup(&shared, "recovering pending entries", || {
            recover_own(&shared, &run, &s, &pass)
        })
        .await?;
    }
    pass.wait().await;
    recovery.merge(pass.result());
    let pass = Arc::new(Pass::default());
    for s in shared.stream_list() {
        at_startup(&shared, "claiming stale entries", || {
            claim_stream(&shared, &run, &s, shared.options.claim_idle, &pass)
        })
        .await?;
    }
    pass.wait().await;
    recovery.merge(pass.result());
    tracing::info!(
        group = %shared.group,
        consumer = %shared.consumer,
        streams = shared.stream_list().len(),
        processed = recovery.processed,
        skipped = recovery.skipped,
        failed = recovery.failed,
        claimed = recovery.claimed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery finished; consuming"
    );
    *lock(&shared.last_recovery) = Some(recovery);
    shared.ready.send_replace(true);
    background.spawn(claim_loop(shared.clone(), run.clone()));

    let lost = tokio::select! {
        _ = read_loop(&shared, &run) => None,
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
        let mut conn = shared.conn.clone();
        let locks = std::mem::take(&mut *shared.locks.lock().await);
        for l in &locks {
            l.release(&mut conn).await;
        }
    }
    tracing::info!(group = %shared.group, consumer = %shared.consumer, stats = ?shared.stats.snapshot(), "consumer stopped");
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
