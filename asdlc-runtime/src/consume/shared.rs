//! The state every step of a consumer shares: [`Shared`] (connections, streams, handlers, the
//! ledger, counters), one run's [`RunCtx`], and the [`Outcome`] a handled entry hands to the
//! commit step. Kept apart so each step's file holds only what that step does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ledger::{Lease, Ledger};
use super::lock::NameLock;
use super::order::OrderBook;
use super::stats::{Pass, RecoveryResult, Stats};
use super::{ConsumerOptions, HandlerSpec};
use crate::config::{Config, Valid};
use crate::connection::RedisConnection;
use crate::effects::Effect;
use crate::error::ConsumeError;
use crate::event::AsdlcEvent;
use crate::handler::StateMap;
use crate::idempotency::FINGERPRINT_LEN;
use crate::monitor::Labels;
use crate::streams::create_consumer_group;
use crate::tenancy::{TenantError, TenantId};

pub(super) use super::stream::StreamCtx;

/// Entries per script call, so no single call holds the server for long.
pub(super) const SCRIPT_CHUNK: usize = 256;

/// Resources of one run of the consumer (one `start()`, or one direct recovery call).
pub(super) struct RunCtx {
    /// The consumer name of this run.
    pub(super) consumer: Arc<str>,
    /// A random token naming this run's process in the name lock and in its leases.
    pub(super) token: Arc<str>,
    /// Per stream, the token of the dead process whose name this run took over: its leases
    /// are ours to take back.
    predecessors: Mutex<HashMap<Arc<str>, String>>,
    /// Taken at shutdown, which ends the committer (it holds the run itself).
    pub(super) commit_tx: Mutex<Option<mpsc::Sender<Outcome>>>,
    pub(super) abort: CancellationToken,
    pub(super) tasks: TaskTracker,
    pub(super) retries: Mutex<BinaryHeap<Reverse<Redelivery>>>,
    pub(super) retry_wake: Notify,
    /// Set when this consumer's own pending entries should be read again (a reconnect, a
    /// commit that gave up, the periodic check).
    pub(super) reread: AtomicBool,
}

impl RunCtx {
    /// Schedules an entry of this consumer for redelivery now.
    pub(super) fn redeliver_now(&self, stream: Arc<StreamCtx>, id: String) {
        lock(&self.retries).push(Reverse(Redelivery {
            due: Instant::now(),
            stream,
            id,
        }));
        self.retry_wake.notify_one();
    }

    pub(super) fn predecessor(&self, stream: &str) -> String {
        lock(&self.predecessors)
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }
}

/// A new run's resources, and the receiving end of its commit channel.
pub(super) fn new_run(
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

pub(super) struct Redelivery {
    pub(super) due: Instant,
    pub(super) stream: Arc<StreamCtx>,
    pub(super) id: String,
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

pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) options: ConsumerOptions,
    pub(super) group: Arc<str>,
    /// The consumer name of the current (or last) run; before the first run with an
    /// automatic name, the name it will most likely get.
    pub(super) consumer: RwLock<Arc<str>>,
    pub(super) conn: RedisConnection,
    pub(super) read_conn: RedisConnection,
    streams: RwLock<Vec<Arc<StreamCtx>>>,
    pub(super) handlers: Vec<HandlerSpec>,
    /// What the handlers are given as state, lent to each call's context.
    pub(super) state: StateMap,
    pub(super) handler_limits: Vec<Option<Arc<Semaphore>>>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) ledger: Ledger,
    /// Whether a handler is ordered: then every begin step of the group places its entries.
    pub(super) ordered: bool,
    /// What orders each event type (see `order::order_rule`), for the ordered begin step.
    pub(super) order_rule: String,
    pub(super) order: OrderBook,
    pub(super) stats: Stats,
    pub(super) stop: CancellationToken,
    pub(super) ready: watch::Sender<Readiness>,
    pub(super) running: AtomicBool,
    pub(super) run: Mutex<Option<Arc<RunCtx>>>,
    pub(super) locks: tokio::sync::Mutex<Vec<NameLock>>,
    pub(super) active: Pass,
    pub(super) last_recovery: Mutex<Option<RecoveryResult>>,
}

/// Where a consumer is in its life, for [`super::EventConsumer::ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Readiness {
    /// Not started, or starting (taking its name, recovering).
    Starting,
    /// Recovered and reading.
    Ready,
    /// Stopped, by `stop()` (`None`) or by an error (its text).
    Ended(Option<String>),
}

pub(super) enum Kind {
    Success {
        fp: [u8; FINGERPRINT_LEN],
        /// The oldest time a mark of its key can have (`idempotency::mark_floor`).
        floor: u64,
        effects: Vec<Effect>,
        attempt: u32,
        /// Kept for a dead letter, should the commit refuse the effects on the last attempt.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Retry {
        attempt: u32,
        error: String,
        /// The handler's own delay before the next delivery, instead of the backoff.
        after: Option<std::time::Duration>,
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

pub(super) struct Outcome {
    pub(super) stream: Arc<StreamCtx>,
    pub(super) id: String,
    pub(super) lease: Lease,
    pub(super) kind: Kind,
    pub(super) pass: Option<Arc<Pass>>,
    /// The handler that ran (an index into `Shared::handlers`), for metrics labels.
    pub(super) handler: Option<usize>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(super) async fn connect(
        config: Valid<Config>,
        options: Valid<ConsumerOptions>,
        handlers: Vec<HandlerSpec>,
        tenants: Vec<TenantId>,
        state: StateMap,
    ) -> Result<Self, ConsumeError> {
        let (config, options) = (config.into_inner(), options.into_inner());
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
                    return Err(TenantError::NotAllowed(t).into());
                }
                let stream = config.stream_for(Some(&t));
                streams.push(Arc::new(StreamCtx::new(
                    stream,
                    Some(t),
                    &group,
                    options.marks,
                )));
            }
        } else {
            if let Some(t) = tenants.first() {
                return Err(TenantError::InSingleMode(t.clone()).into());
            }
            let stream = config.stream_for(None);
            streams.push(Arc::new(StreamCtx::new(
                stream,
                None,
                &group,
                options.marks,
            )));
        }
        let handler_limits = handlers
            .iter()
            .map(|h| {
                h.options
                    .concurrency
                    .map(|n| Arc::new(Semaphore::new(n.max(1))))
            })
            .collect();
        let ordered = handlers.iter().any(|h| h.options.ordered_by.is_some());
        let order_rule = super::order::order_rule(&handlers);
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
            state,
            handler_limits,
            ledger: Ledger::default(),
            ordered,
            order_rule,
            order: OrderBook::default(),
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

    pub(super) fn redis_err(
        &self,
        stream: &str,
    ) -> impl FnOnce(redis::RedisError) -> ConsumeError + '_ {
        let stream = stream.to_owned();
        move |source| ConsumeError::Redis {
            stream,
            group: self.group.to_string(),
            source,
        }
    }

    pub(super) fn stream_names(&self) -> Vec<String> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    pub(super) fn stream_list(&self) -> Vec<Arc<StreamCtx>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn stream_by_name(&self, name: &str) -> Option<Arc<StreamCtx>> {
        self.stream_list().into_iter().find(|s| &*s.name == name)
    }

    /// Creates the group on every stream (idempotent).
    pub(super) async fn prepare(&self) -> Result<(), ConsumeError> {
        let mut conn = self.conn.clone();
        for s in self.stream_list() {
            create_consumer_group(&mut conn, &s.name, &self.group, self.options.group_start)
                .await
                .map_err(|e| e.in_group(&self.group))?;
        }
        Ok(())
    }

    pub(super) async fn add_tenant(&self, tenant: TenantId) -> Result<bool, ConsumeError> {
        if !self.config.tenancy.allows(&tenant) {
            return Err(TenantError::NotAllowed(tenant).into());
        }
        let stream = self.config.stream_for(Some(&tenant));
        if self.stream_by_name(&stream).is_some() {
            return Ok(false);
        }
        let ctx = Arc::new(StreamCtx::new(
            stream,
            Some(tenant),
            &self.group,
            self.options.marks,
        ));
        let mut conn = self.conn.clone();
        create_consumer_group(&mut conn, &ctx.name, &self.group, self.options.group_start)
            .await
            .map_err(|e| e.in_group(&self.group))?;
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

    pub(super) async fn acknowledge(&self, stream: &str, id: &str) -> Result<bool, ConsumeError> {
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

    pub(super) fn handler_for(&self, event: &AsdlcEvent) -> Option<usize> {
        self.handlers
            .iter()
            .position(|h| h.handler.can_handle(event.event_type))
    }

    pub(super) fn max_deliveries(&self, handler: usize) -> u32 {
        self.handlers[handler]
            .options
            .max_deliveries
            .unwrap_or(self.options.max_deliveries)
            .max(1)
    }

    pub(super) fn lease_ms(&self) -> u64 {
        self.options.claim_idle.as_millis() as u64
    }

    pub(super) fn untrack(&self, stream: &Arc<str>, id: &str) {
        self.ledger.remove(stream, id);
        if self.ordered
            && let Some((stream, id)) = self.order.forget(stream, id)
            && let Some(run) = self.current_run()
        {
            run.redeliver_now(stream, id);
        }
    }

    pub(super) fn is_tracked(&self, stream: &Arc<str>, id: &str) -> bool {
        self.ledger.contains(stream, id)
    }

    /// The metric labels of entries of `stream` for `handler` (none: no handler chosen).
    pub(super) fn labels<'a>(
        &'a self,
        stream: &'a StreamCtx,
        handler: Option<usize>,
    ) -> Labels<'a> {
        Labels {
            group: &self.group,
            tenant: stream.tenant.as_ref().map(TenantId::as_str),
            handler: handler.map_or("", |h| self.handlers[h].name()),
        }
    }

    /// The consumer name of the current (or last) run.
    pub(super) fn consumer(&self) -> Arc<str> {
        self.consumer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn current_run(&self) -> Option<Arc<RunCtx>> {
        lock(&self.run).clone()
    }
}

pub(super) fn finish(shared: &Shared, pass: Option<&Pass>) {
    if let Some(p) = pass {
        p.end();
    }
    shared.active.end();
}
