//! The integration tests that can share one test binary: every module here starts its own
//! servers and clusters (or reads only the book), registers no `#[event_handler]` that another
//! module's `Runtime` would discover, and leaves no process-wide state another module reads.
//!
//! Linking them into one binary builds and links the crate's test dependencies once instead of
//! once per file. The tests that must stand alone are their own binaries in `tests/`:
//! `trybuild` (the compile-fail suite), `runtime_conflict` (two handlers in conflict on purpose),
//! `no_handlers` (needs zero registered handlers), `runtime` (builds a `Runtime` of every
//! registered handler), `macro_registration` (checks the names and places its handlers are
//! registered under), `state` (its handlers take state a `Runtime` of every handler would lack)
//! and `chaos` (starts its own binary again as a worker process).
//!
//! Run one module with a filter: `cargo test --test it edges::`.

mod common;

mod acl;
mod bad_input;
mod book_defaults;
mod cluster;
mod cluster_runtime;
mod commit;
mod consuming;
mod edges;
mod emit;
mod gate;
mod integration;
mod leases;
mod marks;
mod monitoring;
mod publishing;
mod schedule;
