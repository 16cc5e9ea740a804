//! Operations: what an operator needs to see and keep an event backbone healthy.
//!
//! - **Discovery**: [`list_streams`] finds the shared stream and every tenant stream;
//!   [`crate::get_stream_info`] describes one (length, groups, consumers, pending, lag, oldest
//!   pending, dead letters).
//! - **Health**: [`check_health`] pings the server, reads its version and mode and checks every
//!   group against [`HealthThresholds`], giving a [`HealthReport`] that is `Healthy`,
//!   `Degraded` or `Unhealthy`, with its reasons.
//! - **Retention that never loses work**: [`trim_acknowledged`] removes only entries every group
//!   has both read and acknowledged, in one atomic step, and says what it kept and why;
//!   [`run_retention`] does it periodically under a [`RetentionPolicy`].
//! - **Metrics**: counters and histograms through the [`metrics`](::metrics) facade, named in
//!   [`metric_names`], labelled by group, tenant and handler; with the `prometheus` feature,
//!   [`serve_prometheus`] exposes them over HTTP.
//! - **Trace context**: a W3C `traceparent` carried in an event's metadata
//!   ([`inject_trace_context`], [`extract_trace_context`], [`TraceParent`]), so a publish and
//!   its handling join one trace.
//!
//! The `asdlc` command-line tool (crate `asdlc-cli`) is built on these functions.

mod discovery;
mod health;
mod metrics;
mod retention;
mod trace;

pub use discovery::{list_streams, tenant_streams};
pub use health::{
    HealthReport, HealthStatus, HealthThresholds, Limits, ServerInfo, check_health,
    check_health_url,
};
pub(crate) use metrics::{Count, Labels, count, record_handler_latency, record_publish_to_handle};
#[cfg(feature = "prometheus")]
pub use metrics::{MetricsError, serve_prometheus};
pub use metrics::{describe_metrics, metric_names};
pub use retention::{
    RetentionPolicy, RetentionTotals, TrimLimit, TrimOptions, TrimReport, run_retention,
    trim_acknowledged, trim_acknowledged_with,
};
pub use trace::{TRACEPARENT_KEY, TraceParent, extract_trace_context, inject_trace_context};
