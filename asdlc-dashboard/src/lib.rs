//! The operator's web dashboard for asdlc: every stream (shared and per tenant), its groups,
//! lag, pending entries, consumers, dead letters and health, refreshed live, with a small
//! throughput chart per group; dead letters can be replayed or purged from the page when the
//! dashboard is started writable, with a token.
//!
//! Mount it in an application's own axum router with [`router`], or run it alone with
//! [`serve`] (what `asdlc dashboard` does):
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use asdlc_dashboard::{Dashboard, DashboardOptions};
//! let config = asdlc_runtime::Config::from_env()?;
//! let dashboard = Dashboard::start(config, DashboardOptions::default()).await?;
//! let app = axum::Router::new().nest("/ops", asdlc_dashboard::router(dashboard.clone()));
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! The page is three assets compiled into the binary (no CDN, works offline); it polls the
//! JSON API under `/api/` every two seconds. Reads go through [`asdlc_runtime::monitor`] and
//! [`asdlc_runtime::deadletter`], so the numbers are those of `asdlc info --json`.
//!
//! Safety: read-only unless [`DashboardOptions::write_token`] is set; a mutating request
//! without `Authorization: Bearer <token>` is refused with 403. [`serve`] bound to a loopback
//! or specific address checks the `Host` header against it (421 otherwise), so a web page on
//! another site cannot reach it through DNS rebinding. The Redis URL is shown with its password
//! redacted, never in full.

mod api;
mod assets;
mod error;
mod guard;
mod sampler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use asdlc_runtime::{Config, RedisConnection};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use api::{
    DeadLetterView, EventSummary, GroupPage, Overview, PendingView, RecentEntry, StreamView, Totals,
};
pub use error::{ApiError, DashboardError};
pub use sampler::{GroupSeries, Sample, Throughput};

/// How the dashboard behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DashboardOptions {
    /// The token that allows replay and purge. `None` (the default): read-only, every
    /// mutating request is refused with 403.
    pub write_token: Option<String>,
    /// The `Host` header values accepted (e.g. `127.0.0.1:7878`); others get 421. `None`
    /// accepts any host: set it when the dashboard is reachable from a browser, or use
    /// [`serve`], which sets it from the address it binds.
    pub allowed_hosts: Option<Vec<String>>,
    /// How often the server samples every group's progress for the throughput charts.
    pub sample_every: Duration,
    /// How many samples each group keeps (the chart's width in time is
    /// `sample_every * samples_kept`).
    pub samples_kept: usize,
}

impl DashboardOptions {
    /// The token that allows replay and purge (without one the dashboard is read-only).
    pub fn with_write_token(mut self, write_token: impl Into<String>) -> Self {
        self.write_token = Some(write_token.into());
        self
    }

    /// The `Host` header values accepted; others get 421.
    pub fn with_allowed_hosts(
        mut self,
        allowed_hosts: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.allowed_hosts = Some(allowed_hosts.into_iter().map(Into::into).collect());
        self
    }

    /// How often the server samples every group's progress.
    pub fn with_sample_every(mut self, sample_every: Duration) -> Self {
        self.sample_every = sample_every;
        self
    }

    /// How many samples each group keeps.
    pub fn with_samples_kept(mut self, samples_kept: usize) -> Self {
        self.samples_kept = samples_kept;
        self
    }
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            write_token: None,
            allowed_hosts: None,
            sample_every: Duration::from_secs(2),
            samples_kept: 150,
        }
    }
}

/// A running dashboard: the connection, the options and the throughput sampler. Cheap to
/// clone; [`Dashboard::shutdown`] stops the sampler (dropping the last clone does too).
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    conn: RedisConnection,
    options: DashboardOptions,
    throughput: Throughput,
    stop: CancellationToken,
    sampler: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("url", &self.inner.config.redis_url.redacted())
            .field("stream", &self.inner.config.stream)
            .field("writable", &self.writable())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// Connects to the server `config` names and starts sampling throughput. Call from
    /// inside a Tokio runtime.
    pub async fn start(config: Config, options: DashboardOptions) -> Result<Self, DashboardError> {
        if options.write_token.as_deref().is_some_and(str::is_empty) {
            return Err(DashboardError::EmptyToken);
        }
        let conn = RedisConnection::connect(&config.redis_url)
            .await
            .map_err(|source| DashboardError::Connect {
                url: config.redis_url.redacted(),
                source,
            })?;
        let throughput = Throughput::new(options.samples_kept.max(2));
        let stop = CancellationToken::new();
        let task = tokio::spawn(sampler::run(
            conn.clone(),
            config.clone(),
            throughput.clone(),
            options.sample_every.max(Duration::from_millis(100)),
            stop.clone(),
        ));
        Ok(Dashboard {
            inner: Arc::new(Inner {
                config,
                conn,
                options,
                throughput,
                stop,
                sampler: tokio::sync::Mutex::new(Some(task)),
            }),
        })
    }

    /// Whether replay and purge are allowed (a write token is set).
    pub fn writable(&self) -> bool {
        self.inner.options.write_token.is_some()
    }

    /// The throughput samples taken so far.
    pub fn throughput(&self) -> &Throughput {
        &self.inner.throughput
    }

    /// Stops the sampler and waits for it.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        if let Some(task) = self.inner.sampler.lock().await.take() {
            let _ = task.await;
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn conn(&self) -> RedisConnection {
        self.inner.conn.clone()
    }

    pub(crate) fn options(&self) -> &DashboardOptions {
        &self.inner.options
    }
}

/// The dashboard's routes (the page at `/`, its assets, the JSON API under `/api/`), to mount
/// in an application's router, e.g. with `Router::nest("/ops", router(d))`.
pub fn router(dashboard: Dashboard) -> Router {
    let hosts = dashboard.options().allowed_hosts.clone();
    Router::new()
        .merge(assets::routes())
        .nest("/api", api::routes())
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            guard::check_host,
        ))
        .layer(axum::middleware::from_fn(guard::security_headers))
        .with_state(dashboard)
}

/// The `Host` values a browser sends to reach `addr`: for a loopback address, the address
/// itself and `localhost`; for another specific address, that address; `None` for an
/// unspecified one (`0.0.0.0`, `[::]`), where any name may point at the machine.
pub fn hosts_for(addr: SocketAddr) -> Option<Vec<String>> {
    let ip = addr.ip();
    if ip.is_unspecified() {
        return None;
    }
    let port = addr.port();
    let mut hosts = vec![addr.to_string()];
    if ip.is_loopback() {
        hosts.push(format!("localhost:{port}"));
        hosts.push(format!("127.0.0.1:{port}"));
        hosts.push(format!("[::1]:{port}"));
    }
    hosts.dedup();
    Some(hosts)
}

/// A dashboard served on its own: bound, and running until [`Served::stop`] or the future
/// from [`Served::wait`] ends.
#[derive(Debug)]
pub struct Served {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// The dashboard behind it.
    pub dashboard: Dashboard,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops serving (open requests finish) and the sampler; waits for both.
    pub async fn stop(self) -> Result<(), DashboardError> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> Result<(), DashboardError> {
        let result = match self.task.await {
            Ok(r) => r.map_err(|source| DashboardError::Serve {
                addr: self.addr,
                source,
            }),
            Err(e) => Err(DashboardError::Serve {
                addr: self.addr,
                source: std::io::Error::other(e),
            }),
        };
        self.dashboard.shutdown().await;
        result
    }
}

/// Binds `addr`, starts a [`Dashboard`] and serves it. Unless `options.allowed_hosts` is
/// set, the accepted `Host` values come from the bound address ([`hosts_for`]).
pub async fn serve(
    addr: SocketAddr,
    config: Config,
    mut options: DashboardOptions,
) -> Result<Served, DashboardError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DashboardError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DashboardError::Bind { addr, source })?;
    if options.allowed_hosts.is_none() {
        options.allowed_hosts = hosts_for(addr);
    }
    let dashboard = Dashboard::start(config, options).await?;
    let app = router(dashboard.clone());
    let stop = CancellationToken::new();
    let until = stop.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await
    });
    tracing::info!(%addr, writable = dashboard.writable(), "serving the dashboard");
    Ok(Served {
        addr,
        dashboard,
        stop,
        task,
    })
}
