//! One worker of the crash and fault suite, on its own: an `#[event_handler]` for
//! `task_created` in group `chaos`, run by the `Runtime` until SIGTERM or ctrl-c. Each call
//! logs itself to `{asdlc:events}:fx:invocations` (a plain `RPUSH`, outside the commit),
//! sleeps a few random milliseconds and stages `HINCRBY {asdlc:events}:fx:applied <key> 1`,
//! the exactly-once effect.
//!
//! The suite's drivers (`tests/chaos.rs`, `examples/soak.rs`) start their own executable in
//! worker mode; this example is the same worker for running by hand, e.g. a few of them
//! against your own server while you kill them:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example chaos_worker -- w0
//! ```
//!
//! Settings: `REDIS_URL`; `ASDLC_STREAM` (the stream base, `asdlc:events` by default; the
//! other examples keep to bases of their own, `examples:<name>`); the consumer name as the
//! first argument or `ASDLC_CONSUMER`; `CHAOS_MIN_SLEEP_MS`/`CHAOS_MAX_SLEEP_MS` (0/20),
//! `CHAOS_CONCURRENCY` (64), `CHAOS_CLAIM_IDLE_MS` (3000), `CHAOS_LOG` (a tracing filter,
//! default `info`).

#[path = "../tests/chaos_support/mod.rs"]
mod chaos_support;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    chaos_support::worker::run_from_env().await
}
