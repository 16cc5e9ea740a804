//! Consuming: the [`EventConsumer`] of one consumer group, over one stream or many (one per
//! tenant).
//!
//! Each entry goes through one protocol, whether it arrives fresh, is recovered from this
//! consumer's own pending list, is claimed from a dead consumer or is redelivered for a retry:
//!
//! 1. **Decode.** An entry that is not a valid event, or whose tenant does not match its
//!    stream, goes to the dead-letter stream with its reason; the rest of its batch goes on.
//! 2. **Begin** (one Lua call per batch): entries whose idempotency key this group already
//!    processed are acknowledged; the others take an in-flight lease on their key. A copy
//!    whose key is leased by another delivery stays pending and is checked again later.
//! 3. **Handle**, concurrently up to a limit, with a timeout, catching panics. While it runs
//!    the consumer keeps the entry's idle time and lease fresh, so no peer claims it.
//! 4. **Commit** (one Lua call per batch of finished entries): on success, mark the key
//!    processed, apply the effects the handler staged, acknowledge and drop the lease, all
//!    atomically; on a retryable failure drop the lease and redeliver after a backoff; on a
//!    permanent failure, or after the last allowed delivery, move the entry to the dead-letter
//!    stream and acknowledge it, atomically.
//!
//! A group with an ordered handler (`ordered_by`) begins its entries through the ordered
//! begin step, which also places each entry in the queue of its order key and holds it back
//! while an earlier entry of the key is unfinished; the commit releases the key.
//!
//! A crash anywhere before the commit leaves the entry pending and unmarked: it is handled
//! again, by this consumer when it restarts under its (stable) name, or by a peer once it has
//! been idle for `claim_idle`. Effects staged in Redis happen exactly once; effects outside
//! Redis happen at least once.

// One module per step: `read` (new entries, and our own pending ones again), `dispatch`
// (decode, begin, hand out), `execute` (one handler attempt), `commit` (the commit script and
// its records), `recover` (our own pending entries, claims from dead peers, lease sweeps),
// `upkeep` (keep-alive, redelivery, the name lock), `run` (one run, start to stop). What they
// share: `handoff` (an entry passed from step to step), `shared`, `ledger` (what is in
// flight), `order` (ordered entries and the entries waiting for their key), `stats`, `retry`.
mod commit;
mod dispatch;
mod execute;
mod handoff;
mod ledger;
mod lock;
mod order;
mod promote;
mod read;
mod recover;
mod retry;
mod run;
mod shared;
mod stats;
mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Valid};
use crate::error::{ConfigError, ConsumeError};
use crate::handler::{EventHandler, HandlerOptions, HandlerRegistration, StateMap};
use crate::idempotency::MarkLayout;
use crate::keys::{validate_consumer, validate_group};
use crate::streams::GroupStart;
use crate::tenancy::TenantId;

pub use stats::{ConsumerStats, RecoveryResult};

/// How retries are spaced: exponential from `base`, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the second delivery.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after the `delivery`-th delivery failed: `base * 2^(delivery-1)`, capped,
    /// then scaled by a random factor in [0.5, 1] so that retries of a burst spread out.
    pub fn delay(&self, delivery: u32) -> Duration {
        crate::retry::Policy::exponential(self.base)
            .cap(self.max)
            .jitter(0.5)
            .delay(delivery)
    }
}

/// Settings of one consumer: [`ConsumerOptions::new`] for a group's defaults, then the
/// `with_` setters (or assignments to the fields).
///
/// ```
/// # use std::time::Duration;
/// use asdlc_runtime::ConsumerOptions;
///
/// let options = ConsumerOptions::new("billing")
///     .with_batch_size(50)
///     .with_handler_timeout(Duration::from_secs(30));
/// assert_eq!(options.batch_size, 50);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The consumer group.
    pub group: String,
    /// This consumer's name (default: `ASDLC_CONSUMER`, else `None`). A name is held by one
    /// live process at a time: a second process given a name in use is refused. `None`
    /// takes the lowest free `<host>-<n>` (`n` from 1), which is stable across restarts (a
    /// restarted process gets its number back, and with it its pending entries) and lets
    /// several processes of one group run on one host without configuration.
    pub consumer: Option<String>,
    /// Entries read per round trip.
    pub batch_size: usize,
    /// How long a read waits for new entries. Kept well under the read connection's timeout,
    /// so an idle consumer logs nothing.
    pub block: Duration,
    /// Handlers running at once (default 256). Reads wait until half a batch of these slots
    /// is free, so a small value also makes small batches: more round trips per event.
    pub concurrency: usize,
    /// An entry idle this long belongs to a dead or stuck consumer and may be claimed.
    /// Entries being handled are kept fresh, so they are never claimed.
    pub claim_idle: Duration,
    /// How often a running consumer claims stale entries from dead peers.
    pub claim_interval: Duration,
    /// How retries are spaced.
    pub retry: Backoff,
    /// Deliveries before an event is dead-lettered (a handler can lower or raise it).
    pub max_deliveries: u32,
    /// How long one handler call may run (a handler can set its own).
    pub handler_timeout: Duration,
    /// How long [`EventConsumer::stop`] lets running handlers finish.
    pub shutdown_grace: Duration,
    /// Consumers idle this long that own nothing are removed from the group (`None`: never).
    pub forget_idle: Option<Duration>,
    /// Processed marks: TTL and layout.
    pub marks: MarkLayout,
    /// Where a new group starts reading.
    pub group_start: GroupStart,
    /// What the dead-letter stream keeps (length, age, bytes of an entry).
    pub dead_letters: crate::deadletter::DeadLetterPolicy,
}

/// The consumer name `ASDLC_CONSUMER` sets, if it is set to a valid name.
pub fn default_consumer_name() -> Option<String> {
    std::env::var("ASDLC_CONSUMER")
        .ok()
        .filter(|name| validate_consumer(name).is_ok())
}

/// The host name as automatic consumer names start (`<host>-<n>`): characters a consumer
/// name may not hold become `-`; `consumer` if there is none.
pub fn host_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    if host.is_empty() {
        "consumer".to_owned()
    } else {
        host
    }
}

/// The name a consumer most likely runs under before it has taken one.
fn first_name(options: &ConsumerOptions) -> String {
    options
        .consumer
        .clone()
        .unwrap_or_else(|| format!("{}-1", host_name()))
}

impl ConsumerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerOptions {
            group: group.into(),
            consumer: default_consumer_name(),
            batch_size: 100,
            block: Duration::from_secs(2),
            concurrency: 256,
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(15),
            retry: Backoff::default(),
            max_deliveries: 5,
            handler_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            forget_idle: Some(Duration::from_secs(3600)),
            marks: MarkLayout::default(),
            group_start: GroupStart::Beginning,
            dead_letters: crate::deadletter::DeadLetterPolicy::default(),
        }
    }

    /// Sets the consumer name.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Entries read per round trip.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// How long a read waits for new entries.
    pub fn with_block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Handlers running at once.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long an entry stays idle before it may be claimed from its consumer.
    pub fn with_claim_idle(mut self, claim_idle: Duration) -> Self {
        self.claim_idle = claim_idle;
        self
    }

    /// How often a running consumer claims stale entries from dead peers.
    pub fn with_claim_interval(mut self, claim_interval: Duration) -> Self {
        self.claim_interval = claim_interval;
        self
    }

    /// How retries are spaced.
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// Deliveries before an event is dead-lettered.
    pub fn with_max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries;
        self
    }

    /// How long one handler call may run.
    pub fn with_handler_timeout(mut self, handler_timeout: Duration) -> Self {
        self.handler_timeout = handler_timeout;
        self
    }

    /// How long [`EventConsumer::stop`] lets running handlers finish.
    pub fn with_shutdown_grace(mut self, shutdown_grace: Duration) -> Self {
        self.shutdown_grace = shutdown_grace;
        self
    }

    /// How long an idle consumer that owns nothing stays in the group (`None`: forever).
    pub fn with_forget_idle(mut self, forget_idle: Option<Duration>) -> Self {
        self.forget_idle = forget_idle;
        self
    }

    /// Processed marks: TTL and layout.
    pub fn with_marks(mut self, marks: MarkLayout) -> Self {
        self.marks = marks;
        self
    }

    /// Where a new group starts reading.
    pub fn with_group_start(mut self, group_start: GroupStart) -> Self {
        self.group_start = group_start;
        self
    }

    /// What the dead-letter stream keeps.
    pub fn with_dead_letters(mut self, dead_letters: crate::deadletter::DeadLetterPolicy) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    /// These options, checked: a group and consumer name Redis accepts, limits that leave a
    /// consumer able to work.
    pub(crate) fn checked(self) -> Result<Valid<ConsumerOptions>, ConfigError> {
        Valid::checked(self, ConsumerOptions::validate)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate_group(&self.group)?;
        if let Some(name) = &self.consumer {
            validate_consumer(name)?;
        }
        let bad = |what: &str| {
            Err(ConfigError::Invalid(crate::error::ValidationError::new(
                "consumer options",
                what.to_owned(),
            )))
        };
        if self.batch_size == 0 || self.concurrency == 0 {
            return bad("batch_size and concurrency must be at least 1");
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1");
        }
        if self.block < Duration::from_millis(1) || self.block > Duration::from_secs(60) {
            return bad("block must be between 1 ms and 60 s");
        }
        if self.claim_idle < Duration::from_millis(100) {
            return bad("claim_idle must be at least 100 ms");
        }
        if self.dead_letters.max_len == Some(0) {
            return bad("dead_letters.max_len must be at least 1 (or None: no limit)");
        }
        if self.dead_letters.max_payload < 1024 {
            return bad("dead_letters.max_payload must be at least 1024 bytes");
        }
        Ok(())
    }
}

/// A handler as a consumer holds it.
#[derive(Clone)]
pub struct HandlerSpec {
    pub(crate) handler: Arc<dyn EventHandler>,
    pub(crate) options: HandlerOptions,
}

impl std::fmt::Debug for HandlerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerSpec")
            .field("name", &self.handler.name())
            .field("options", &self.options)
            .finish()
    }
}

struct StaticHandler(&'static dyn EventHandler);

impl EventHandler for StaticHandler {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn can_handle(&self, event_type: crate::EventType) -> bool {
        self.0.can_handle(event_type)
    }
    fn handle<'a>(
        &'a self,
        event: &'a crate::AsdlcEvent,
        ctx: &'a crate::HandlerContext,
    ) -> crate::BoxFuture<'a, crate::HandlerResult> {
        self.0.handle(event, ctx)
    }
    fn required_state(&self) -> &[crate::StateType] {
        self.0.required_state()
    }
}

impl HandlerSpec {
    /// A handler with default options.
    pub fn new(handler: Arc<dyn EventHandler>) -> Self {
        HandlerSpec {
            handler,
            options: HandlerOptions::default(),
        }
    }

    /// A handler with `options`.
    pub fn with_options(handler: Arc<dyn EventHandler>, options: HandlerOptions) -> Self {
        HandlerSpec { handler, options }
    }

    /// A handler registered by `#[event_handler]`.
    pub fn registered(reg: &'static HandlerRegistration) -> Self {
        HandlerSpec {
            handler: Arc::new(StaticHandler(reg.handler)),
            options: reg.options,
        }
    }

    /// Handles this handler's events with the same key one at a time, in stream order,
    /// across the group (see [`OrderBy`](crate::OrderBy)); a key function
    /// (`OrderBy::Key`) orders by a key of the application's choosing.
    pub fn ordered_by(mut self, order: crate::handler::OrderBy) -> Self {
        self.options.ordered_by = Some(order);
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        self.handler.name()
    }
}

/// Consumes one consumer group over one or more streams: reads, dispatches to the
/// handlers, acknowledges, retries, dead-letters and recovers. Cheap to clone; clones control
/// the same consumer.
#[derive(Clone)]
pub struct EventConsumer {
    shared: Arc<shared::Shared>,
}

impl std::fmt::Debug for EventConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventConsumer")
            .field("group", &self.shared.group)
            .field("consumer", &self.shared.consumer())
            .finish_non_exhaustive()
    }
}

/// Builds an [`EventConsumer`].
#[derive(Debug)]
#[must_use]
pub struct EventConsumerBuilder {
    /// Checked already (by the runtime that builds its consumers), or checked by `build`.
    config: Result<Valid<Config>, Config>,
    options: ConsumerOptions,
    handlers: Vec<HandlerSpec>,
    tenants: Vec<TenantId>,
    state: StateMap,
}

impl EventConsumerBuilder {
    /// Adds a handler.
    pub fn handler(mut self, handler: impl EventHandler) -> Self {
        self.handlers.push(HandlerSpec::new(Arc::new(handler)));
        self
    }

    /// Adds a handler with its options.
    pub fn handler_spec(mut self, spec: HandlerSpec) -> Self {
        self.handlers.push(spec);
        self
    }

    /// Adds a handler registered by `#[event_handler]`.
    pub fn registered(mut self, reg: &'static HandlerRegistration) -> Self {
        self.handlers.push(HandlerSpec::registered(reg));
        self
    }

    /// Gives the handlers `value`, found by its type: a `State<T>` parameter of an
    /// `#[event_handler]` function, or [`HandlerContext::state`](crate::HandlerContext::state).
    /// Several types can be given, one value each (a second value of a type replaces the
    /// first). [`build`](Self::build) fails with [`ConsumeError::MissingState`] if a handler
    /// needs a type that was not given.
    pub fn state<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.state_arc(Arc::new(value))
    }

    /// As [`state`](Self::state), with a value already shared, or a trait object
    /// (`state_arc::<dyn Mailer>(mailer)`).
    pub fn state_arc<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.state.insert(value);
        self
    }

    /// Every state value at once (the runtime's, checked already).
    pub(crate) fn state_map(mut self, state: StateMap) -> Self {
        self.state = state;
        self
    }

    /// Consumes this tenant's stream too (multi-tenant mode; more can be added while running
    /// with [`EventConsumer::add_tenant`]).
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenants.push(tenant);
        self
    }

    /// Replaces the options (the group stays the one given to [`EventConsumer::builder`]
    /// unless `options.group` says otherwise).
    pub fn options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Changes the options in place.
    pub fn configure(mut self, f: impl FnOnce(&mut ConsumerOptions)) -> Self {
        f(&mut self.options);
        self
    }

    /// Checks everything (the configuration, the options, that every handler's state was
    /// given), then connects; the group is created when the consumer starts.
    pub async fn build(self) -> Result<EventConsumer, ConsumeError> {
        let config = match self.config {
            Ok(config) => config,
            Err(config) => config.checked()?,
        };
        let options = self.options.checked()?;
        for spec in &self.handlers {
            if let Some(missing) = self.state.missing_for(&*spec.handler) {
                return Err(ConsumeError::MissingState {
                    group: options.group.clone(),
                    handler: spec.name().to_owned(),
                    type_name: missing.type_name().to_owned(),
                });
            }
        }
        let shared =
            shared::Shared::connect(config, options, self.handlers, self.tenants, self.state)
                .await?;
        Ok(EventConsumer {
            shared: Arc::new(shared),
        })
    }
}

impl EventConsumer {
    /// A builder for a consumer of `group` under `config`. In multi-tenant mode, add the
    /// tenants to consume with [`EventConsumerBuilder::tenant`]. The processed-mark TTL comes
    /// from `config.idempotency_ttl`.
    pub fn builder(config: Config, group: impl Into<String>) -> EventConsumerBuilder {
        Self::builder_with(Err(config), group)
    }

    /// As [`EventConsumer::builder`], under a configuration checked already.
    pub(crate) fn builder_checked(
        config: Valid<Config>,
        group: impl Into<String>,
    ) -> EventConsumerBuilder {
        Self::builder_with(Ok(config), group)
    }

    fn builder_with(
        config: Result<Valid<Config>, Config>,
        group: impl Into<String>,
    ) -> EventConsumerBuilder {
        let mut options = ConsumerOptions::new(group);
        let ttl = match &config {
            Ok(c) => c.idempotency_ttl,
            Err(c) => c.idempotency_ttl,
        };
        options.marks = MarkLayout::with_ttl(ttl);
        EventConsumerBuilder {
            config,
            options,
            handlers: Vec::new(),
            tenants: Vec::new(),
            state: StateMap::default(),
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// This consumer's name: the one its current (or last) run took; before the first run,
    /// the configured name, or for an automatic one `<host>-1`, the one it most likely gets.
    pub fn consumer_name(&self) -> String {
        self.shared.consumer().to_string()
    }

    /// The streams consumed.
    pub fn streams(&self) -> Vec<String> {
        self.shared.stream_names()
    }

    /// Runs until [`EventConsumer::stop`]: creates the group if needed, takes the consumer
    /// name, recovers (this consumer's pending entries, then stale ones of dead peers), then
    /// reads and dispatches. Returns the counts of the whole run.
    ///
    /// A consumer runs once: after its run ended, or after [`EventConsumer::stop`] (even
    /// one called before `start`), `start` returns [`ConsumeError::Finished`]; build a new
    /// consumer to consume again.
    pub async fn start(&self) -> Result<ConsumerStats, ConsumeError> {
        run::run(self.shared.clone()).await
    }

    /// Asks a running consumer to stop: it stops reading at once (even mid-read), lets
    /// running handlers finish up to `shutdown_grace` and commits them; whatever is left stays
    /// pending for the next start. [`EventConsumer::start`] returns when that is done.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Waits until the consumer has finished its start-up recovery and is reading. Fails
    /// if its run ends first: [`ConsumeError::Finished`] if it was stopped (or had been,
    /// before it started), [`ConsumeError::NotReady`] with the reason if the run failed (the
    /// error itself is what [`EventConsumer::start`] returns).
    pub async fn ready(&self) -> Result<(), ConsumeError> {
        let mut rx = self.shared.ready.subscribe();
        let state = rx
            .wait_for(|r| !matches!(r, shared::Readiness::Starting))
            .await
            .map(|r| r.clone())
            .unwrap_or(shared::Readiness::Ended(None));
        let (group, consumer) = (self.group().to_owned(), self.consumer_name());
        match state {
            shared::Readiness::Ready => Ok(()),
            shared::Readiness::Ended(None) | shared::Readiness::Starting => {
                Err(ConsumeError::Finished { group, consumer })
            }
            shared::Readiness::Ended(Some(reason)) => Err(ConsumeError::NotReady {
                group,
                consumer,
                reason,
            }),
        }
    }

    /// Acknowledges entry `id` on the first stream, without handling it. Returns whether it
    /// was pending.
    pub async fn acknowledge(&self, id: &str) -> Result<bool, ConsumeError> {
        let stream = self
            .shared
            .stream_names()
            .into_iter()
            .next()
            .unwrap_or_default();
        self.shared.acknowledge(&stream, id).await
    }

    /// Acknowledges entry `id` of `stream`.
    pub async fn acknowledge_on(&self, stream: &str, id: &str) -> Result<bool, ConsumeError> {
        self.shared.acknowledge(stream, id).await
    }

    /// Consumes `tenant`'s stream too, from now on (creating its group).
    pub async fn add_tenant(&self, tenant: TenantId) -> Result<bool, ConsumeError> {
        self.shared.add_tenant(tenant).await
    }

    /// Re-processes this consumer's own pending entries, all of them, in batches, through
    /// the idempotency protocol. The consumer runs this at
    /// start; call it directly to recover without starting.
    pub async fn process_pending(&self) -> Result<RecoveryResult, ConsumeError> {
        self.shared.prepare().await?;
        run::process_pending(&self.shared).await
    }

    /// Claims entries idle for at least `min_idle` from any consumer of the group (dead
    /// ones, in practice) and processes them; entries
    /// deleted from the stream are acknowledged and counted as skipped.
    pub async fn claim_stale_messages(
        &self,
        min_idle: Duration,
    ) -> Result<RecoveryResult, ConsumeError> {
        self.shared.prepare().await?;
        run::claim_stale(&self.shared, min_idle).await
    }

    /// What the start-up recovery of the current (or last) run did, once it has finished.
    pub fn last_recovery(&self) -> Option<RecoveryResult> {
        *self
            .shared
            .last_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The counts so far.
    pub fn stats(&self) -> ConsumerStats {
        self.shared.stats.snapshot()
    }
}
