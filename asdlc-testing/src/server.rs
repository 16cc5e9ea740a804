//! [`TestServer`]: one Redis/Valkey server as a child process on its own loopback port, in a
//! temporary directory of its own; [`TestServerBuilder`] for its options.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use asdlc_runtime::config::RedisUrl;

use crate::binary::{check_binary, server_binary};
use crate::error::TestServerError;
use crate::ports::{release_port, reserve_port};
use crate::process::{
    Probe, describe_exit, file_len, is_bind_failure, kill_and_reap, logged_ready, probe, read_tail,
    send_shutdown, send_sigterm,
};

/// How long [`TestServer::start`] and [`TestServer::restart`] wait for the server by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many ports a start tries before giving up.
const START_ATTEMPTS: usize = 5;
/// How long a restart keeps retrying its port while something else holds it.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);
/// How long a graceful stop waits before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Options for a [`TestServer`]; from [`TestServer::builder`].
#[derive(Debug, Clone)]
pub struct TestServerBuilder {
    aof: bool,
    args: Vec<(String, String)>,
    binary: Option<PathBuf>,
    ready_timeout: Duration,
}

impl Default for TestServerBuilder {
    fn default() -> Self {
        TestServerBuilder {
            aof: true,
            args: Vec::new(),
            binary: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

impl TestServerBuilder {
    /// Whether to keep an append-only file (default `true`): `appendonly yes` with
    /// `appendfsync always`, so every acknowledged write survives a restart, even after
    /// [`kill`](TestServer::kill). With `false` the server keeps nothing across a restart.
    pub fn aof(mut self, aof: bool) -> Self {
        self.aof = aof;
        self
    }

    /// Passes an extra option to the server, e.g. `.arg("--maxmemory", "64mb")`. Later options
    /// override the harness's own (port, bind address and directory excepted).
    pub fn arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.args.push((name.into(), value.into()));
        self
    }

    /// Uses this binary instead of looking one up with [`server_binary`]. A path that does not
    /// exist gives [`TestServerError::NoBinary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How long to wait for the server to answer after each start (default
    /// [`DEFAULT_READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the server, panicking with the reason and how to fix it if it cannot.
    #[track_caller]
    pub fn start(self) -> TestServer {
        match self.try_start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a test Redis server: {e}"),
        }
    }

    /// Starts the server on a free loopback port and waits until it answers `PING`.
    pub fn try_start(self) -> Result<TestServer, TestServerError> {
        let binary = match &self.binary {
            Some(path) => check_binary(path, &format!("the binary {}", path.display()))?,
            None => server_binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("asdlc-server-")
            .tempdir()
            .map_err(|source| TestServerError::DataDir { source })?;
        let mut server = TestServer {
            binary,
            options: self,
            log_file: dir.path().join("server.log"),
            dir,
            port: 0,
            child: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = reserve_port().map_err(|source| TestServerError::NoPort { source })?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(Launch::PortBusy(log_tail)) => {
                    release_port(server.port);
                    if attempt >= START_ATTEMPTS {
                        let port = std::mem::take(&mut server.port);
                        return Err(TestServerError::PortInUse {
                            binary: server.binary.clone(),
                            port,
                            attempts: attempt,
                            log_tail,
                        });
                    }
                }
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
    }
}

/// A Redis or Valkey server running as a child process on its own loopback port, with its own
/// temporary data directory. Dropping it kills the server and deletes the directory.
pub struct TestServer {
    binary: PathBuf,
    options: TestServerBuilder,
    pub(crate) dir: tempfile::TempDir,
    log_file: PathBuf,
    /// 0 only while no port is held (before the first start, or after a failed one).
    port: u16,
    pub(crate) child: Option<Child>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("binary", &self.binary)
            .field("port", &self.port)
            .field("data_dir", &self.dir.path())
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

/// Why one launch failed: a busy port is worth another try, anything else is not.
enum Launch {
    PortBusy(String),
    Failed(TestServerError),
}

impl TestServer {
    /// Starts a server with the defaults (append-only file on), panicking with the reason and
    /// how to get a server binary if it cannot.
    #[track_caller]
    pub fn start() -> TestServer {
        TestServerBuilder::default().start()
    }

    /// Starts a server with the defaults (append-only file on).
    pub fn try_start() -> Result<TestServer, TestServerError> {
        TestServerBuilder::default().try_start()
    }

    /// Options for a server: append-only file, extra arguments, binary, timeout.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// The server's URL, `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's URL as a [`RedisUrl`], for a [`Config`](asdlc_runtime::Config).
    pub fn redis_url(&self) -> RedisUrl {
        RedisUrl::parse(self.url()).expect("a loopback URL is a valid Redis URL")
    }

    /// The loopback port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory: append-only files and `server.log`. Kept by
    /// [`stop`](Self::stop) and [`kill`](Self::kill); deleted when the server is dropped.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for the server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a loopback URL is a valid Redis URL")
    }

    /// A new multiplexed async connection to the server. Panics if the server does not accept
    /// it (it is stopped, say).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        match self.client().get_multiplexed_async_connection().await {
            Ok(con) => con,
            Err(e) => panic!("cannot connect to the test server at {}: {e}", self.url()),
        }
    }

    /// Stops the server gracefully (`SHUTDOWN`, or `SIGTERM` if it refuses the command) and
    /// waits for it to exit; if it has not exited after 10 seconds it is killed. The data directory is kept, so
    /// [`restart`](Self::restart) finds everything that was written. Does nothing if the
    /// server is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            if !send_shutdown(self.port) {
                send_sigterm(child.id());
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(POLL_INTERVAL);
            }
        }
        kill_and_reap(&mut child);
    }

    /// Kills the server with `SIGKILL`, as a crash would, and waits for it to exit. The data
    /// directory is kept; with the append-only file on (the default), every acknowledged write
    /// is in it. Does nothing if the server is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts the server again on the same port and data directory, stopping it first if it
    /// is running, and waits until it answers `PING` with its data loaded. Panics if it cannot,
    /// with the server's log.
    #[track_caller]
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("cannot restart the test Redis server: {e}");
        }
    }

    /// Like [`restart`](Self::restart), returning the error instead of panicking. If another
    /// process holds the port, retries for a few seconds.
    pub fn try_restart(&mut self) -> Result<(), TestServerError> {
        self.stop();
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(Launch::PortBusy(log_tail)) => {
                    if Instant::now() >= deadline {
                        return Err(TestServerError::PortInUse {
                            binary: self.binary.clone(),
                            port: self.port,
                            attempts,
                            log_tail,
                        });
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// The server binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The server's version from `INFO server`: `valkey_version` for Valkey (which also reports
    /// a Redis-compatible `redis_version`), `redis_version` otherwise; e.g. `"7.0.15"`. Panics if
    /// the server does not answer.
    pub fn server_version(&self) -> String {
        let info = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|mut con| redis::cmd("INFO").arg("server").query::<String>(&mut con))
            .unwrap_or_else(|e| panic!("INFO server failed on {}: {e}", self.url()));
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        field("valkey_version")
            .or_else(|| field("redis_version"))
            .unwrap_or_else(|| panic!("INFO server on {} names no version", self.url()))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--protected-mode")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&self.log_file);
        if self.options.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        for (name, value) in &self.options.args {
            cmd.arg(name).arg(value);
        }
        // Re-assert what the harness depends on, in case an extra argument changed it.
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Spawns the server on `self.port` and waits until it is ready, or has exited.
    fn spawn_and_wait(&mut self) -> Result<(), Launch> {
        // Errors printed before the log file is opened (a bad option, say) go to stdout.
        let console_path = self.dir.path().join("server.console");
        let log_start = file_len(&self.log_file);
        let console_start = file_len(&console_path);
        let console = File::options()
            .create(true)
            .append(true)
            .open(&console_path)
            .map_err(|source| Launch::Failed(TestServerError::DataDir { source }))?;
        let console_err = console
            .try_clone()
            .map_err(|source| Launch::Failed(TestServerError::DataDir { source }))?;
        let mut cmd = self.command();
        cmd.stdout(console).stderr(console_err);
        let child = cmd.spawn().map_err(|source| {
            Launch::Failed(TestServerError::Spawn {
                binary: self.binary.clone(),
                source,
            })
        })?;
        self.child = Some(child);

        let log_tail = |this: &Self| {
            let mut tail = read_tail(&console_path, console_start);
            let log = read_tail(&this.log_file, log_start);
            if !tail.is_empty() && !log.is_empty() {
                tail.push('\n');
            }
            tail.push_str(&log);
            tail
        };
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().expect("spawned above");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let tail = log_tail(self);
                if is_bind_failure(&tail) {
                    return Err(Launch::PortBusy(tail));
                }
                return Err(Launch::Failed(self.not_ready(
                    started.elapsed(),
                    describe_exit(status),
                    tail,
                )));
            }
            let last_error = match probe(self.port) {
                Probe::Ready => return Ok(()),
                Probe::NeedsPassword if logged_ready(&self.log_file, log_start) => return Ok(()),
                Probe::NeedsPassword => {
                    "it wants a password and has not logged that it is ready".to_owned()
                }
                Probe::NotYet(e) => e,
            };
            if started.elapsed() >= self.options.ready_timeout {
                if let Some(mut child) = self.child.take() {
                    kill_and_reap(&mut child);
                }
                let tail = log_tail(self);
                return Err(Launch::Failed(self.not_ready(
                    started.elapsed(),
                    last_error,
                    tail,
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn not_ready(&self, waited: Duration, reason: String, log_tail: String) -> TestServerError {
        TestServerError::NotReady {
            binary: self.binary.clone(),
            port: self.port,
            waited,
            reason,
            log_file: self.log_file.clone(),
            log_tail,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if self.port != 0 {
            release_port(self.port);
        }
    }
}
