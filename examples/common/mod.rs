//! What the runnable examples share: each runs on a stream base of its own, started clean.
//!
//! A user with one local Redis runs the examples one after another against it (and
//! `scripts/examples.sh` does the same against one server). On one shared stream base they
//! would meet each other's consumer groups and `fx:` keys (`quickstart` keeps a hash under
//! `fx:applied-patches`, `crash_recovery` counts in one of the same name), so each example
//! takes `examples:<name>` as its base and deletes what an earlier run left there: an example
//! can run again after a failed or interrupted run and finds only its own events.

use asdlc::{Config, ConfigError, RedisConnection, StreamKeys};

/// Logs to stderr (the examples tell their story on stdout), filtered by `RUST_LOG`, at
/// `default` (e.g. `"warn"`) when it is unset.
pub fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Prints the example's verdict, `ok_message` when `ok`, and exits with status 1 when not, so
/// `scripts/examples.sh` sees a failed example fail.
pub fn outcome(ok: bool, ok_message: &str) {
    println!("outcome: {}", if ok { ok_message } else { "FAILED" });
    if !ok {
        std::process::exit(1);
    }
}

/// [`Config::from_env`] on the stream base `examples:<name>`, whatever `ASDLC_STREAM` says:
/// the examples delete the keys of their base (see [`start_clean`]), so they never take one
/// an application may be using.
pub fn config(name: &str) -> Result<Config, ConfigError> {
    let config = Config {
        stream: format!("examples:{name}"),
        ..Config::from_env()?
    };
    config.validate()?;
    Ok(config)
}

/// Deletes every key of `config`'s stream base, so the example starts from nothing: the
/// stream, its tenant streams, and what asdlc derives from each (marks, leases, consumer
/// locks, dead letters, `fx:` keys). Prints what it did; returns how many keys it deleted.
pub async fn start_clean(config: &Config) -> Result<usize, redis::RedisError> {
    let mut conn = RedisConnection::connect(&config.redis_url).await?;
    let base = &config.stream;
    let shared = StreamKeys::new(base.clone());
    let mut keys = Vec::new();
    for pattern in [
        base.clone(),
        format!("{}:*", shared.namespace()),
        format!("tenant:{{*}}:{base}"),
        format!("tenant:{{*}}:{base}:*"),
    ] {
        keys.extend(conn.scan_match(&pattern, None).await?);
    }
    // One DEL per key: on a cluster the keys of different tenants live in different slots.
    for key in &keys {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<i64>(&mut conn)
            .await?;
    }
    println!(
        "stream base {base}: this example's own, started clean ({} keys of an earlier run deleted)",
        keys.len()
    );
    Ok(keys.len())
}
