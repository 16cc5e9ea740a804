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

// One module per step: `builder` (what to run, and `build`), `plan` (groups, their handlers,
// the set check, each group's consumer template), `discover` (which tenants, at start and while
// running), `report` (what the runtime tells about itself), `signal` (when `run` stops),
// `error`. The run loop and the handle are here.
mod builder;
mod discover;
mod error;
mod plan;
mod report;
mod signal;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Tenancy};
use crate::consume::EventConsumer;
use crate::error::ConsumeError;
use crate::tenancy::TenantId;

use discover::discover_loop;
use plan::GroupRun;
use report::report_of;

pub use builder::RuntimeBuilder;
pub use error::{RegistryError, RuntimeError};
pub use report::{GroupReport, HandlerInfo, RuntimeReport};
pub use signal::shutdown_signal;

/// Every consumer of a run, shared with the handle and with tenant discovery, which adds one
/// for a tenant in a new cluster slot.
type Consumers = Arc<Mutex<Vec<EventConsumer>>>;

fn snapshot(consumers: &Consumers) -> Vec<EventConsumer> {
    consumers.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
        RuntimeBuilder::new()
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
                        // Stopped before it was consuming: a stop, not a failure.
                        Some(Ok(Err(ConsumeError::Finished { .. }))) => break,
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
                && !matches!(e, ConsumeError::Finished { .. })
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
