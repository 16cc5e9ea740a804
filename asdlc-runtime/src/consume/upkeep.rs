//! Upkeep while a run lasts: keeping in-flight entries and leases fresh, redelivering deferred
//! entries when due, and taking and holding the consumer name.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::dispatch::dispatch;
use super::ledger::lease_arg;
use super::lock::{self, NameLock};
use super::retry::at_startup;
use super::shared::{Redelivery, RunCtx, SCRIPT_CHUNK, Shared, lock};
use crate::connection::RedisConnection;
use crate::error::ConsumeError;
use crate::functions::{KEEPALIVE, REDELIVER};
use crate::reply::parse_entries;

/// Keeps in-flight entries and their leases fresh, so no peer claims work in progress.
pub(super) async fn keepalive_loop(shared: Arc<Shared>, run: Arc<RunCtx>) {
    let period = (shared.options.claim_idle / 3).max(Duration::from_millis(50));
    let mut conn = shared.conn.clone();
    loop {
        tokio::time::sleep(period).await;
        for (stream, entries) in shared.ledger.running() {
            let Some(ctx) = shared.stream_by_name(&stream) else {
                continue;
            };
            for chunk in entries.chunks(SCRIPT_CHUNK) {
                let mut inv = KEEPALIVE.key(&*stream);
                inv.key(&ctx.lease_key)
                    .arg(&*shared.group)
                    .arg(&*run.consumer)
                    .arg(&*run.token)
                    .arg(shared.lease_ms());
                for (id, lease) in chunk {
                    inv.arg(id).arg(lease_arg(lease));
                }
                if let Err(e) = inv.invoke_async::<i64>(&mut conn).await {
                    tracing::warn!(%stream, error = %e, "keep-alive failed");
                }
            }
        }
    }
}

/// Redelivers entries whose retry (or recheck) is due, to this consumer.
pub(super) async fn redeliver_loop(shared: Arc<Shared>, run: Arc<RunCtx>) {
    let mut conn = shared.conn.clone();
    loop {
        let next_due = lock(&run.retries).peek().map(|r| r.0.due);
        let sleep = match next_due {
            Some(due) => tokio::time::sleep_until(due),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = run.retry_wake.notified() => continue,
            _ = shared.stop.cancelled() => return,
        }
        let now = Instant::now();
        let mut due: Vec<Redelivery> = Vec::new();
        {
            let mut heap = lock(&run.retries);
            while heap.peek().is_some_and(|r| r.0.due <= now) {
                if let Some(Reverse(r)) = heap.pop() {
                    due.push(r);
                }
            }
        }
        // One call per stream for everything due on it.
        let mut by_stream: HashMap<Arc<str>, Vec<Redelivery>> = HashMap::new();
        for r in due {
            by_stream.entry(r.stream.name.clone()).or_default().push(r);
        }
        for (_, items) in by_stream {
            let stream = items[0].stream.clone();
            let mut inv = REDELIVER.key(&*stream.name);
            inv.arg(&*shared.group).arg(&*run.consumer);
            for r in &items {
                inv.arg(&r.id);
            }
            match inv.invoke_async::<Value>(&mut conn).await {
                Ok(v) => {
                    let batch = parse_entries(v);
                    // Not ours any more (a peer claimed it) or deleted: let it go.
                    let back: HashSet<&str> = batch.iter().map(|e| e.id.as_str()).collect();
                    for r in items.iter().filter(|r| !back.contains(r.id.as_str())) {
                        shared.untrack(&stream.name, &r.id);
                    }
                    dispatch(&shared, &run, &stream, batch, None, true).await;
                }
                Err(e) => {
                    tracing::warn!(stream = %stream.name, error = %e, "redelivery failed; trying later");
                    let mut heap = lock(&run.retries);
                    for r in items {
                        heap.push(Reverse(Redelivery {
                            due: Instant::now() + Duration::from_secs(1),
                            ..r
                        }));
                    }
                }
            }
        }
    }
}

pub(super) async fn lock_loop(shared: Arc<Shared>) -> ConsumeError {
    let mut conn = shared.conn.clone();
    loop {
        tokio::time::sleep(lock::REFRESH).await;
        let locks = shared.locks.lock().await;
        for l in locks.iter() {
            match l.refresh(&mut conn).await {
                Ok(()) => {}
                Err(e @ ConsumeError::NameLost { .. }) => return e,
                Err(e) => tracing::warn!(error = %e, "refreshing the consumer name lock failed"),
            }
        }
    }
}

/// How many automatic names (`<host>-1`, `<host>-2`, ...) a consumer tries.
const NAME_SLOTS: u32 = 256;

/// Takes this run's consumer name on every stream: the configured one, or the lowest free
/// `<host>-<n>`. Returns the name and its locks.
pub(super) async fn take_name(
    shared: &Shared,
    token: &str,
) -> Result<(Arc<str>, Vec<NameLock>), ConsumeError> {
    let fixed = shared.options.consumer.clone();
    let host = super::host_name();
    let names: Box<dyn Iterator<Item = String> + Send> = match fixed.clone() {
        Some(name) => Box::new(std::iter::once(name)),
        None => Box::new((1..=NAME_SLOTS).map(move |n| format!("{host}-{n}"))),
    };
    let conn = shared.conn.clone();
    let mut refused = None;
    for name in names {
        let mut locks = Vec::new();
        let mut in_use = None;
        for s in shared.stream_list() {
            let lock = at_startup(shared, "taking the consumer name", || {
                let mut conn = conn.clone();
                let key = s.keys.consumer_lock(&shared.group, &name);
                let marker = s.keys.consumer_lock_marker();
                let (stream, group, name) = (s.name.clone(), shared.group.clone(), name.clone());
                async move {
                    NameLock::acquire(&mut conn, key, marker, token, &stream, &group, &name).await
                }
            })
            .await;
            match lock {
                Ok(l) => locks.push(l),
                Err(e @ ConsumeError::NameInUse { .. }) => {
                    in_use = Some(e);
                    break;
                }
                Err(e) => {
                    release(&conn, &locks).await;
                    return Err(e);
                }
            }
        }
        match in_use {
            None => return Ok((Arc::from(name.as_str()), locks)),
            Some(e) => {
                release(&conn, &locks).await;
                if fixed.is_some() {
                    return Err(e);
                }
                tracing::debug!(consumer = %name, "automatic consumer name in use; trying the next");
                refused = Some(e);
            }
        }
    }
    Err(refused.unwrap_or_else(|| ConsumeError::NameInUse {
        stream: shared.stream_names().join(", "),
        group: shared.group.to_string(),
        consumer: format!("{}-*", super::host_name()),
    }))
}

pub(super) async fn release(conn: &RedisConnection, locks: &[NameLock]) {
    let mut conn = conn.clone();
    for l in locks {
        l.release(&mut conn).await;
    }
}
