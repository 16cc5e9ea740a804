//! The runtime of asdlc: declarative event handlers on Redis Streams.
//!
//! Most applications depend on the `asdlc` crate, which re-exports this one together with the
//! `#[event_handler]` attribute. The modules, each owning one idea:
//!
//! - [`event`]: the event model ([`AsdlcEvent`], [`EventType`], idempotency keys, validation).
//! - [`encoding`]: events as stream fields, and back.
//! - [`keys`]: the key layout and the slot rule.
//! - [`tenancy`]: tenant ids, the task-local [`TenantContext`], tenant discovery.
//! - [`config`]: [`Config`], from code or the environment.
//! - [`streams`]: stream and group operations.
//! - [`publish`]: the validating, tenant-aware [`Publisher`].
//! - [`consume`]: the [`EventConsumer`]: dispatch, retries, dead letters, recovery.
//! - [`idempotency`]: processed marks and the [`IdempotencyTracker`].
//! - [`deadletter`]: the dead-letter stream: list, replay, purge.
//! - [`handler`]: the [`EventHandler`] trait, [`HandlerContext`], what a handler reports
//!   ([`HandlerResult`]), the [`State`] it is given, the handler registry.
//! - [`runtime`]: the [`Runtime`]: discovery, checks, recovery, consumers, shutdown.
//! - [`effects`]: Redis writes staged to commit exactly once.
//! - [`monitor`]: stream discovery, health, safe retention, metrics, trace context.
//! - [`error`]: one error enum per concern.
//! - [`connection`]: the [`RedisConnection`] to one server or a Redis Cluster, and the
//!   [`topology`] of every node behind it.
//! - [`acl`] (in [`tenancy`]): one Redis ACL user per tenant, so the server enforces tenant
//!   isolation.
//! - [`functions`]: the protocol's server side, one versioned Redis Functions library.
//!
//! The crate root re-exports what an application names: the event model, configuration,
//! publishing, handlers, consumers and the runtime, the errors, and the operations most
//! deployments script (health, retention, stream info). Tools find the rest in the modules:
//! the `asdlc` command line and the dashboard are built only on this public API, chiefly
//! [`monitor`], [`deadletter`], [`functions`], [`keys`] and [`acl`]. Everything else is
//! private to the crate.
//!
//! With the `prometheus` feature, `monitor::serve_prometheus` serves the metrics. Tests and
//! examples start a real server with the `asdlc-testing` crate.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod connection;
pub mod consume;
pub mod deadletter;
pub mod effects;
pub mod encoding;
pub mod error;
pub mod event;
pub mod functions;
pub mod gate;
pub mod handler;
pub mod idempotency;
pub mod keys;
pub mod monitor;
pub mod publish;
mod reply;
mod retry;
pub mod runtime;
pub mod schedule;
pub mod streams;
pub mod tenancy;
mod text;

pub use config::{Config, RedisUrl, Tenancy};
pub use connection::RedisConnection;
pub use connection::topology;
pub use consume::{
    Backoff, ConsumerOptions, ConsumerStats, EventConsumer, EventConsumerBuilder, HandlerSpec,
    RecoveryResult,
};
pub use deadletter::DeadLetter;
pub use effects::Effect;
pub use error::{
    ConfigError, ConsumeError, DecodeError, EffectError, EmitError, PublishError, StreamError,
    ValidationError,
};
pub use event::{AsdlcEvent, AsdlcEventBuilder, EventType, Mode, generate_idempotency_key};
pub use gate::{Gate, GateDecision, GateOutcome, GateRequest, GateState};
pub use handler::{
    BoxFuture, EventHandler, HandlerContext, HandlerError, HandlerOptions, HandlerRegistration,
    HandlerResult, IntoHandlerResult, OrderBy, State, StateType, registered_handlers,
};
pub use idempotency::{IdempotencyTracker, MarkLayout};
pub use keys::{StreamKeys, get_stream_name};
pub use monitor::{
    HealthReport, HealthStatus, HealthThresholds, RetentionPolicy, TraceParent, TrimReport,
    check_health, extract_trace_context, inject_trace_context, list_streams, run_retention,
    trim_acknowledged,
};
pub use publish::{Published, Publisher};
pub use runtime::{
    GroupReport, HandlerInfo, RegistryError, Runtime, RuntimeBuilder, RuntimeError, RuntimeHandle,
    RuntimeReport, shutdown_signal,
};
pub use schedule::Scheduled;
pub use streams::{
    ConsumerInfo, EntryId, GroupInfo, GroupStart, StreamInfo, create_consumer_group,
    ensure_stream_exists, get_stream_info,
};
pub use tenancy::acl;
pub use tenancy::{InvalidTenantId, TenantContext, TenantError, TenantId, discover_tenants};

/// The event model, what a handler reports and what a recovery pass did, under the one module
/// name code written against `asdlc::events::...` imports them from, so that code keeps
/// compiling. New code names them where they live: [`event`], [`HandlerResult`],
/// [`RecoveryResult`].
///
/// ```
/// use asdlc_runtime::events;
///
/// // The same types as at their homes, not copies.
/// let task = events::EventType::TaskCreated;
/// let _: asdlc_runtime::event::AsdlcEvent = events::AsdlcEvent::new(task, "s1");
/// let _: events::AsdlcEventBuilder = events::AsdlcEvent::builder(task, "s1").mode(events::Mode::Rlm);
/// let _: Result<events::EventType, events::UnknownEventType> = "task_created".parse();
/// let _: asdlc_runtime::HandlerResult = events::HandlerResult::ok();
/// let _: asdlc_runtime::RecoveryResult = events::RecoveryResult::default();
/// assert!(events::unique_idempotency_key().starts_with("evt-"));
/// assert!(events::generate_idempotency_key(task, "s1", None, None, None).starts_with("op-"));
/// assert!(events::MAX_ID_LEN < events::MAX_PATH_LEN && events::MAX_PATH_LEN < events::MAX_EVENT_BYTES);
/// ```
#[doc(hidden)]
pub mod events {
    pub use crate::consume::RecoveryResult;
    pub use crate::event::{
        AsdlcEvent, AsdlcEventBuilder, EventType, MAX_EVENT_BYTES, MAX_ID_LEN, MAX_PATH_LEN, Mode,
        UnknownEventType, generate_idempotency_key, unique_idempotency_key,
    };
    pub use crate::handler::HandlerResult;
}

/// The names nearly every handler module uses.
pub mod prelude {
    pub use crate::{
        AsdlcEvent, Config, Effect, EventType, HandlerContext, HandlerError, HandlerResult,
        Publisher, Runtime, State, TenantContext, TenantId,
    };
}

/// What `#[event_handler]` expands to. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{AsdlcEvent, EventType};
    pub use crate::handler::{
        BoxFuture, EventHandler, HandlerContext, HandlerOptions, HandlerRegistration,
        HandlerResult, IntoHandlerResult, OrderBy, StateExtractor, StateParam, StateType,
        missing_state, state_param,
    };
    pub use inventory;
    pub use std::boxed::Box;
    pub use std::time::Duration;
}
