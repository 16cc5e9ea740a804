//! The [`Runtime`]: finds every `#[event_handler]`, checks the set, creates the consumer
//! groups, recovers what a crash left pending, runs one consumer per group, and shuts down
//! gracefully.
//!
//! ```no_run
//! # async fn demo() -> Result<(), asdlc_runtime::RuntimeError> {
//! let runtime = asdlc_runtime::Runtime::builder().build().await?;
//! let report = runtime.run().await?; // until ctrl-c or SIGTERM
//! # let _ = report; Ok(()) }
//! ```
//!
//! A deployment can run a subset of the groups ([`RuntimeBuilder::groups`]), so each handler
//! class can live in its own process. In multi-tenant mode one process serves many tenants:
//! the allow-list's, or every tenant whose stream exists, including tenants that appear while
//! it runs. Each group's consumer reads all its tenants' streams in one call with a per-stream
//! count, so a busy tenant cannot starve a quiet one, and each handler runs in its tenant's
//! [`crate::TenantContext`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Tenancy};
use crate::connection::RedisConnection;
use crate::consume::{ConsumerOptions, ConsumerStats, EventConsumer, HandlerSpec};
use crate::error::{ConfigError, ConsumeError, StreamError};
use crate::events::{EventType, RecoveryResult};
use crate::handler::{EventHandler, HandlerOptions, registered_handlers};
use crate::keys::{hash_slot, partition_tenants_by_slot, validate_group};
use crate::tenancy::{TenantId, discover_tenants};

/// The handler set is inconsistent: found at startup, before anything is consumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two handlers of one group handle the same event type.
    #[error(
        "handlers `{first}` and `{second}` of group `{group}` both handle `{event_type}`; \
         a group may have one handler per event type"
    )]
    Conflict {
        /// The group.
        group: String,
        /// The contested event type.
        event_type: EventType,
        /// One handler (`name (file:line)`).
        first: String,
        /// The other.
        second: String,
    },
    /// Two handlers of one group have the same name.
    #[error("two handlers of group `{group}` are named `{name}` ({first} and {second})")]
    DuplicateName {
        /// The group.
        group: String,
        /// The name.
        name: String,
        /// Where one is declared.
        first: String,
        /// Where the other is.
        second: String,
    },
    /// A requested group has no handler: a typo, or its handlers live in a library crate the
    /// binary never names, which the linker leaves out (see [`RegistryError::NoHandlers`]).
    #[error(
        "no handler belongs to group `{group}`; groups with handlers: {known}. If its handlers \
         are declared in a library crate, the binary must name that crate (`use that_crate as _;`) \
         or the linker leaves them out"
    )]
    UnknownGroup {
        /// The group asked for.
        group: String,
        /// The groups that exist, comma-separated.
        known: String,
    },
    /// There is nothing to run: no `#[event_handler]` is linked into the program and none
    /// was added to the builder. The usual cause is handlers declared in a library crate that
    /// the binary depends on but never names: rustc links a dependency only if the binary
    /// refers to it, so its registrations are silently left out; `use that_crate as _;` in the
    /// binary brings them back. A process that only publishes needs a
    /// [`crate::Publisher`], not a runtime.
    #[error(
        "no event handlers found: declare some with #[event_handler] or add them to the builder. \
         Handlers declared in a library crate are linked only if the binary names that crate: \
         add `use that_crate as _;` to the binary (e.g. in main.rs)"
    )]
    NoHandlers,
    /// A group name is invalid.
    #[error("handler `{handler}`: {source}")]
    InvalidGroup {
        /// The handler.
        handler: String,
        /// Why.
        #[source]
        source: crate::error::ValidationError,
    },
}

/// The runtime could not start, or a consumer failed while running.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The handler set is inconsistent.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A consumer could not start or stopped with an error.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// A stream operation failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// One handler as the runtime plans to run it.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerInfo {
    /// Its name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// The event types it handles.
    pub types: Vec<EventType>,
    /// Where it was declared, for registered handlers.
    pub location: Option<String>,
}

struct PlannedHandler {
    info: HandlerInfo,
    spec: HandlerSpec,
}

type Configure = Box<dyn Fn(&str, &mut ConsumerOptions) + Send + Sync>;

/// Builds a [`Runtime`].
#[must_use]
pub struct RuntimeBuilder {
    config: Option<Config>,
    groups: Option<Vec<String>>,
    consumer: Option<String>,
    configure: Vec<Configure>,
    extra: Vec<PlannedHandler>,
    registered: bool,
    discovery_interval: Duration,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .field("groups", &self.groups)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl RuntimeBuilder {
    /// Uses `config` (default: [`Config::from_env`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Runs only these groups (default: every group that has a handler).
    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = Some(groups.into_iter().map(Into::into).collect());
        self
    }

    /// The consumer name of this process in every group (default: `ASDLC_CONSUMER` or the
    /// host name). Keep it stable across restarts.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Adjusts each group's consumer options; called with the group name.
    pub fn configure(
        mut self,
        f: impl Fn(&str, &mut ConsumerOptions) + Send + Sync + 'static,
    ) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Adds a hand-written handler to `group`.
    pub fn handler(mut self, group: &str, handler: impl EventHandler) -> Self {
        self.add(group, Arc::new(handler), HandlerOptions::default());
        self
    }

    /// Adds a hand-written handler to `group`, with options.
    pub fn handler_with(
        mut self,
        group: &str,
        handler: Arc<dyn EventHandler>,
        options: HandlerOptions,
    ) -> Self {
        self.add(group, handler, options);
        self
    }

    fn add(&mut self, group: &str, handler: Arc<dyn EventHandler>, options: HandlerOptions) {
        let types = EventType::ALL
            .iter()
            .copied()
            .filter(|t| handler.can_handle(*t))
            .collect();
        self.extra.push(PlannedHandler {
            info: HandlerInfo {
                name: handler.name().to_owned(),
                group: group.to_owned(),
                types,
                location: None,
            },
            spec: HandlerSpec::with_options(handler, options),
        });
    }

    /// Ignores handlers registered with `#[event_handler]` (for tests and tools that bring
    /// their own).
    pub fn without_registered(mut self) -> Self {
        self.registered = false;
        self
    }

    /// How often a multi-tenant runtime without an allow-list looks for new tenant streams
    /// (default 5 s).
    pub fn tenant_discovery_interval(mut self, every: Duration) -> Self {
        self.discovery_interval = every;
        self
    }

    /// Discovers and checks the handlers, connects, and prepares one consumer per group.
    /// Nothing is consumed until [`Runtime::run`].
    pub async fn build(self) -> Result<Runtime, RuntimeError> {
        let config = match self.config {
            Some(c) => c,
            None => Config::from_env()?,
        };
        config.validate()?;
        let mut all: Vec<PlannedHandler> = Vec::new();
        if self.registered {
            for reg in registered_handlers() {
                all.push(PlannedHandler {
                    info: HandlerInfo {
                        name: reg.name.to_owned(),
                        group: reg.group.to_owned(),
                        types: reg.types.to_vec(),
                        location: Some(reg.location.to_owned()),
                    },
                    spec: HandlerSpec::registered(reg),
                });
            }
        }
        all.extend(self.extra);
        let plan = plan_groups(all, self.groups.as_deref())?;

        let tenants: Vec<TenantId> = match &config.tenancy {
            Tenancy::Single => Vec::new(),
            Tenancy::Multi {
                allowed: Some(list),
            } => list.iter().cloned().collect(),
            Tenancy::Multi { allowed: None } => {
                let mut conn = RedisConnection::connect(&config.redis_url)
                    .await
                    .map_err(StreamError::redis(&config.stream))?;
                discover_tenants(&mut conn, &config.stream).await?
            }
        };

        let configure = Arc::new(self.configure);
        let partitions: Vec<Vec<TenantId>> =
            if config.redis_url.is_cluster() && config.tenancy.is_multi() {
                // One multi-stream read per slot: a cluster refuses keys of several slots in one
                // command.
                partition_tenants_by_slot(&config.stream, tenants.clone())
            } else {
                vec![tenants.clone()]
            };
        let mut groups = Vec::new();
        let mut consumers = Vec::new();
        for (group, handlers) in plan {
            let template = GroupTemplate {
                group: group.clone(),
                specs: handlers.iter().map(|h| h.spec.clone()).collect(),
                consumer_name: self.consumer.clone(),
                configure: configure.clone(),
                config: config.clone(),
            };
            for part in &partitions {
                consumers.push(template.build(part.clone()).await?);
            }
            groups.push(GroupRun {
                template,
                handlers: handlers.into_iter().map(|h| h.info).collect(),
            });
        }
        Ok(Runtime {
            config,
            groups,
            consumers: Arc::new(Mutex::new(consumers)),
            tenants,
            discovery_interval: self.discovery_interval,
            stop: CancellationToken::new(),
        })
    }
}

/// Everything needed to build another consumer of one group (for a tenant in a new cluster
/// slot, found while running).
#[derive(Clone)]
struct GroupTemplate {
    group: String,
    specs: Vec<HandlerSpec>,
    consumer_name: Option<String>,
    configure: Arc<Vec<Configure>>,
    config: Config,
}

impl GroupTemplate {
    async fn build(&self, tenants: Vec<TenantId>) -> Result<EventConsumer, ConsumeError> {
        let mut builder = EventConsumer::builder(self.config.clone(), self.group.clone());
        for t in tenants {
            builder = builder.tenant(t);
        }
        for spec in &self.specs {
            builder = builder.handler_spec(spec.clone());
        }
        builder
            .configure(|o| {
                if let Some(name) = &self.consumer_name {
                    o.consumer = Some(name.clone());
                }
                for f in self.configure.iter() {
                    f(&self.group, o);
                }
            })
            .build()
            .await
    }
}

fn plan_groups(
    all: Vec<PlannedHandler>,
    only: Option<&[String]>,
) -> Result<BTreeMap<String, Vec<PlannedHandler>>, RegistryError> {
    if all.is_empty() {
        return Err(RegistryError::NoHandlers);
    }
    let mut by_group: BTreeMap<String, Vec<PlannedHandler>> = BTreeMap::new();
    for h in all {
        validate_group(&h.info.group).map_err(|source| RegistryError::InvalidGroup {
            handler: h.info.name.clone(),
            source,
        })?;
        by_group.entry(h.info.group.clone()).or_default().push(h);
    }
    let describe = |h: &HandlerInfo| match &h.location {
        Some(loc) => format!("{} ({loc})", h.name),
        None => h.name.clone(),
    };
    for (group, handlers) in &by_group {
        let mut owner: HashMap<EventType, &HandlerInfo> = HashMap::new();
        let mut names: HashMap<&str, &HandlerInfo> = HashMap::new();
        for h in handlers {
            if let Some(prev) = names.insert(&h.info.name, &h.info) {
                return Err(RegistryError::DuplicateName {
                    group: group.clone(),
                    name: h.info.name.clone(),
                    first: describe(prev),
                    second: describe(&h.info),
                });
            }
            for t in &h.info.types {
                if let Some(prev) = owner.insert(*t, &h.info) {
                    return Err(RegistryError::Conflict {
                        group: group.clone(),
                        event_type: *t,
                        first: describe(prev),
                        second: describe(&h.info),
                    });
                }
            }
        }
    }
    if let Some(only) = only {
        let known: Vec<String> = by_group.keys().cloned().collect();
        for g in only {
            if !by_group.contains_key(g) {
                return Err(RegistryError::UnknownGroup {
                    group: g.clone(),
                    known: known.join(", "),
                });
            }
        }
        let wanted: BTreeSet<&String> = only.iter().collect();
        by_group.retain(|g, _| wanted.contains(g));
    }
    Ok(by_group)
}

struct GroupRun {
    template: GroupTemplate,
    handlers: Vec<HandlerInfo>,
}

type Consumers = Arc<Mutex<Vec<EventConsumer>>>;

fn snapshot(consumers: &Consumers) -> Vec<EventConsumer> {
    consumers.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What one group did in a run.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// The group.
    pub group: String,
    /// Its start-up recovery.
    pub recovery: Option<RecoveryResult>,
    /// Its counts.
    pub stats: ConsumerStats,
}

/// What a run did, per group.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeReport {
    /// One entry per group.
    pub groups: Vec<GroupReport>,
}

impl RuntimeReport {
    /// The counts of `group`.
    pub fn group(&self, group: &str) -> Option<&GroupReport> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// Events processed over all groups.
    pub fn processed(&self) -> u64 {
        self.groups.iter().map(|g| g.stats.processed).sum()
    }
}

/// Controls a running [`Runtime`] from elsewhere: stop it, wait until it is consuming, read
/// its counts.
#[derive(Clone)]
pub struct RuntimeHandle {
    stop: CancellationToken,
    consumers: Consumers,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle").finish_non_exhaustive()
    }
}

impl RuntimeHandle {
    /// Asks the runtime to stop gracefully.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until every group has finished its start-up recovery and is reading; fails
    /// as [`EventConsumer::ready`] does if a consumer's run ends first (the runtime's own
    /// result says why).
    pub async fn ready(&self) -> Result<(), ConsumeError> {
        for c in snapshot(&self.consumers) {
            c.ready().await?;
        }
        Ok(())
    }

    /// The counts so far, per group.
    pub fn report(&self) -> RuntimeReport {
        report_of(&snapshot(&self.consumers))
    }
}

fn add_stats(a: &mut ConsumerStats, b: ConsumerStats) {
    a.processed += b.processed;
    a.duplicates += b.duplicates;
    a.retried += b.retried;
    a.dead_lettered += b.dead_lettered;
    a.unhandled += b.unhandled;
    a.claimed += b.claimed;
    a.panics += b.panics;
    a.timeouts += b.timeouts;
}

/// One report per group, adding up the group's consumers (one per cluster slot of its
/// tenants).
fn report_of(consumers: &[EventConsumer]) -> RuntimeReport {
    let mut groups: Vec<GroupReport> = Vec::new();
    for c in consumers {
        let i = match groups.iter().position(|g| g.group == c.group()) {
            Some(i) => i,
            None => {
                groups.push(GroupReport {
                    group: c.group().to_owned(),
                    recovery: None,
                    stats: ConsumerStats::default(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[i];
        if let Some(r) = c.last_recovery() {
            g.recovery
                .get_or_insert_with(RecoveryResult::default)
                .merge(r);
        }
        add_stats(&mut g.stats, c.stats());
    }
    RuntimeReport { groups }
}

/// Runs every registered handler's consumer group. See the module docs.
pub struct Runtime {
    config: Config,
    groups: Vec<GroupRun>,
    consumers: Consumers,
    tenants: Vec<TenantId>,
    discovery_interval: Duration,
    stop: CancellationToken,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("groups", &self.groups())
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A builder.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            config: None,
            groups: None,
            consumer: None,
            configure: Vec::new(),
            extra: Vec::new(),
            registered: true,
            discovery_interval: Duration::from_secs(5),
        }
    }

    /// The handlers the runtime will run, by group.
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        self.groups
            .iter()
            .flat_map(|g| g.handlers.clone())
            .collect()
    }

    /// The groups it will run.
    pub fn groups(&self) -> Vec<String> {
        self.groups
            .iter()
            .map(|g| g.template.group.clone())
            .collect()
    }

    /// A handle to stop it or wait for it from another task.
    pub fn handle(&self) -> RuntimeHandle {
        RuntimeHandle {
            stop: self.stop.clone(),
            consumers: self.consumers.clone(),
        }
    }

    /// Runs until ctrl-c or SIGTERM, then stops gracefully.
    pub async fn run(self) -> Result<RuntimeReport, RuntimeError> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes (or [`RuntimeHandle::stop`]), then stops gracefully:
    /// no more reads, running handlers finish and commit, the rest stays pending.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RuntimeReport, RuntimeError> {
        let initial = snapshot(&self.consumers);
        for g in &self.groups {
            let types: BTreeSet<&str> = g
                .handlers
                .iter()
                .flat_map(|h| h.types.iter().map(|t| t.as_str()))
                .collect();
            let streams: Vec<String> = initial
                .iter()
                .filter(|c| c.group() == g.template.group)
                .flat_map(|c| c.streams())
                .collect();
            tracing::info!(
                group = %g.template.group,
                handlers = ?g.handlers.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
                event_types = ?types,
                consumer = %initial.iter().find(|c| c.group() == g.template.group).map(|c| c.consumer_name()).unwrap_or_default(),
                ?streams,
                "starting group"
            );
        }
        tracing::info!(
            groups = self.groups.len(),
            handlers = self.groups.iter().map(|g| g.handlers.len()).sum::<usize>(),
            tenants = ?self.tenants.iter().map(TenantId::as_str).collect::<Vec<_>>(),
            redis = %self.config.redis_url,
            "asdlc runtime starting"
        );
        let mut tasks = tokio::task::JoinSet::new();
        for c in &initial {
            let c = c.clone();
            tasks.spawn(async move { c.start().await });
        }
        let (new_tx, mut new_rx) = tokio::sync::mpsc::channel::<EventConsumer>(16);
        let discovery = if matches!(self.config.tenancy, Tenancy::Multi { allowed: None }) {
            Some(tokio::spawn(discover_loop(
                self.config.clone(),
                self.groups.iter().map(|g| g.template.clone()).collect(),
                self.consumers.clone(),
                new_tx,
                self.discovery_interval,
                self.stop.clone(),
            )))
        } else {
            drop(new_tx);
            None
        };
        let ready = {
            let consumers = initial.clone();
            async move {
                for c in &consumers {
                    // A consumer that ends first ends the runtime, through its task.
                    if c.ready().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let mut failure: Option<ConsumeError> = None;
        tokio::pin!(shutdown);
        tokio::pin!(ready);
        let mut logged_ready = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.stop.cancelled() => break,
                _ = &mut ready, if !logged_ready => {
                    logged_ready = true;
                    for c in &initial {
                        let r = c.last_recovery().unwrap_or_default();
                        tracing::info!(group = %c.group(), processed = r.processed, skipped = r.skipped, failed = r.failed, claimed = r.claimed, "recovery done");
                    }
                    tracing::info!("asdlc runtime consuming");
                }
                Some(c) = new_rx.recv() => {
                    tasks.spawn(async move { c.start().await });
                }
                joined = tasks.join_next() => {
                    match joined {
                        Some(Ok(Err(e))) => { failure = Some(e); break; }
                        Some(Ok(Ok(_))) | None => break,
                        Some(Err(e)) => {
                            tracing::error!(error = %e, "a consumer task failed");
                            break;
                        }
                    }
                }
            }
        }
        tracing::info!("asdlc runtime stopping");
        self.stop.cancel();
        if let Some(d) = discovery {
            let _ = d.await;
        }
        // Consumers built but not started yet are in the list: stopping them is harmless.
        let consumers = snapshot(&self.consumers);
        for c in &consumers {
            c.stop();
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined
                && failure.is_none()
            {
                failure = Some(e);
            }
        }
        let report = report_of(&consumers);
        tracing::info!(processed = report.processed(), "asdlc runtime stopped");
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }
}

/// Picks up tenants whose streams appear while running: each group's consumer for the
/// tenant's cluster slot takes the new stream, or a new consumer is built for a new slot.
async fn discover_loop(
    config: Config,
    templates: Vec<GroupTemplate>,
    consumers: Consumers,
    new_consumers: tokio::sync::mpsc::Sender<EventConsumer>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut conn = match RedisConnection::connect(&config.redis_url).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "tenant discovery cannot connect; new tenants will not be picked up");
            return;
        }
    };
    let cluster = config.redis_url.is_cluster();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let tenants = match discover_tenants(&mut conn, &config.stream).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "tenant discovery failed");
                continue;
            }
        };
        for t in tenants {
            let stream = config.stream_for(Some(&t));
            let slot = hash_slot(stream.as_bytes());
            for template in &templates {
                let mine: Vec<EventConsumer> = snapshot(&consumers)
                    .into_iter()
                    .filter(|c| c.group() == template.group)
                    .collect();
                if mine.iter().any(|c| c.streams().contains(&stream)) {
                    continue;
                }
                // On a single server any consumer of the group can read it; on a cluster,
                // one whose streams share its slot (or one with none yet).
                let target = mine.iter().find(|c| {
                    let streams = c.streams();
                    !cluster
                        || streams.is_empty()
                        || streams.iter().all(|s| hash_slot(s.as_bytes()) == slot)
                });
                let result = match target {
                    Some(c) => c.add_tenant(t.clone()).await.map(|_| ()),
                    None => match template.build(vec![t.clone()]).await {
                        Ok(c) => {
                            // Register it before the next round, so the tenant is not added twice.
                            consumers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(c.clone());
                            let _ = new_consumers.send(c).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        tracing::info!(tenant = %t, group = %template.group, "new tenant picked up")
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %t, group = %template.group, error = %e, "adding tenant failed")
                    }
                }
            }
        }
    }
}

/// Completes on ctrl-c, or on SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AsdlcEvent, BoxFuture, HandlerContext, HandlerResult};

    struct H(&'static str, &'static [EventType]);
    impl EventHandler for H {
        fn name(&self) -> &str {
            self.0
        }
        fn can_handle(&self, t: EventType) -> bool {
            self.1.contains(&t)
        }
        fn handle<'a>(
            &'a self,
            _: &'a AsdlcEvent,
            _: &'a HandlerContext,
        ) -> BoxFuture<'a, HandlerResult> {
            Box::pin(async { HandlerResult::ok() })
        }
    }

    fn planned(group: &str, h: H) -> PlannedHandler {
        let mut b = Runtime::builder();
        b.add(group, Arc::new(h), HandlerOptions::default());
        b.extra.pop().unwrap()
    }

    #[test]
    fn conflicting_handlers_are_named() {
        let err = plan_groups(
            vec![
                planned("g", H("a", &[EventType::TaskCreated])),
                planned(
                    "g",
                    H("b", &[EventType::TaskDispatched, EventType::TaskCreated]),
                ),
            ],
            None,
        )
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                RegistryError::Conflict {
                    event_type: EventType::TaskCreated,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("`a`") && msg.contains("`b`"), "{msg}");
    }

    #[test]
    fn same_type_in_two_groups_is_fine() {
        let plan = plan_groups(
            vec![
                planned("g1", H("a", &[EventType::TaskCreated])),
                planned("g2", H("b", &[EventType::TaskCreated])),
            ],
            None,
        )
        .unwrap();
        assert_eq!(plan.len(), 2);
    }

    #[test]
    fn groups_can_be_selected_and_unknown_ones_are_refused() {
        let all = || {
            vec![
                planned("g1", H("a", &[EventType::TaskCreated])),
                planned("g2", H("b", &[EventType::TaskCreated])),
            ]
        };
        let plan = plan_groups(all(), Some(&["g2".to_owned()])).unwrap();
        assert_eq!(plan.keys().collect::<Vec<_>>(), vec!["g2"]);
        let err = plan_groups(all(), Some(&["g3".to_owned()])).err().unwrap();
        assert!(err.to_string().contains("g1, g2"), "{err}");
        assert_eq!(
            plan_groups(Vec::new(), None).err().unwrap(),
            RegistryError::NoHandlers
        );
        let err = plan_groups(
            vec![planned("Bad Group", H("a", &[EventType::TaskCreated]))],
            None,
        )
        .err()
        .unwrap();
        assert!(matches!(err, RegistryError::InvalidGroup { .. }));
        let err = plan_groups(
            vec![
                planned("g", H("a", &[EventType::TaskCreated])),
                planned("g", H("a", &[EventType::GateApproved])),
            ],
            None,
        )
        .err()
        .unwrap();
        assert!(matches!(err, RegistryError::DuplicateName { .. }));
    }
}
