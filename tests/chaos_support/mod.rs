//! The crash and fault suite, shared by `tests/chaos.rs` (the short run, in CI),
//! `examples/soak.rs` (the long run) and `examples/chaos_worker.rs` (the worker on its own).
//!
//! - [`worker`]: a worker process: one `#[event_handler]` run by the [`asdlc::Runtime`], whose
//!   handler logs every invocation to Redis directly and stages the exactly-once effect.
//! - [`driver`]: starts a server with an append-only file, runs worker processes, publishes
//!   events (some twice), kills workers, cuts connections and restarts the server meanwhile,
//!   drains, and checks the outcome from Redis.
//!
//! Worker processes are the driver's own executable started again in worker mode (the test
//! binary with a filter that selects its worker entry point; the soak with `--worker`), so the
//! worker is always the very build being tested and nothing has to be built or found on disk.
#![allow(dead_code)]

pub mod driver;
pub mod worker;
