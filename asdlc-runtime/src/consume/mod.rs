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
mod options;
mod order;
mod promote;
mod read;
mod recover;
mod retry;
mod run;
mod shared;
mod stats;
mod stream;
mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Valid};
use crate::error::ConsumeError;
use crate::handler::{EventHandler, HandlerOptions, HandlerRegistration, StateMap};
use crate::tenancy::TenantId;

pub use options::{Backoff, ConsumerOptions, default_consumer_name, host_name};
pub use stats::{ConsumerStats, RecoveryResult};

use options::first_name;

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
    /// tenants to consume with [`EventConsumerBuilder::tenant`]. The processed marks' layout
    /// comes from `config.idempotency_ttl` and `config.idempotency_rate`
    /// ([`Config::mark_layout`]).
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
        options.marks = match &config {
            Ok(c) => c.mark_layout(),
            Err(c) => c.mark_layout(),
        };
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
