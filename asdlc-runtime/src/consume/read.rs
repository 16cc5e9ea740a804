//! The read step: new entries with a blocking `XREADGROUP` (the next read prefetched while a
//! batch is dispatched), and this consumer's own pending entries read again when asked.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;

use super::dispatch::dispatch;
use super::recover::dispatch_own_pending;
use super::retry;
use super::shared::{RunCtx, Shared, StreamCtx};
use crate::connection::RedisConnection;
use crate::error::ConsumeError;
use crate::reply::{RawEntry, parse_read};
use crate::streams::is_no_group;

/// Entries read from one stream.
type StreamBatch = (Arc<StreamCtx>, Vec<RawEntry>);

/// A read's reply, and the streams it asked.
type Read = (Vec<Arc<StreamCtx>>, redis::RedisResult<Value>);

/// Reads new entries and dispatches them until stopped.
pub(super) async fn read_loop(shared: &Arc<Shared>, run: &Arc<RunCtx>) {
    let read_conn = shared.read_conn.clone();
    let mut failures = retry::READ.start();
    // Wait until a good share of the handler slots is free before reading more: reading as
    // soon as one handler finishes would read (and begin, and commit) one entry per round trip.
    let low = (shared.options.batch_size.min(shared.options.concurrency) / 2).max(1);
    // A read sent while the previous batch was being dispatched, and its streams.
    let mut prefetched: Option<Read> = None;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        // Between reads, with nothing read and not yet dispatched: our own pending entries
        // that nobody here works on, when asked for.
        if prefetched.is_none()
            && run.reread.swap(false, Ordering::AcqRel)
            && let Err(e) = reread_own(shared, run).await
        {
            tracing::warn!(group = %shared.group, error = %e, "reading our own pending entries failed; retrying");
            run.reread.store(true, Ordering::Release);
            failures.wait(&shared.stop).await;
            continue;
        }
        let (streams, reply) = match prefetched.take() {
            Some(read) => read,
            None => {
                let free = shared.permits.available_permits();
                if free < low {
                    tokio::select! {
                        p = shared.permits.acquire_many(low as u32) => drop(p),
                        _ = shared.stop.cancelled() => return,
                    }
                    continue;
                }
                let streams = shared.stream_list();
                if streams.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        _ = shared.stop.cancelled() => return,
                    }
                }
                let reply = tokio::select! {
                    r = read_batch(shared, run, read_conn.clone(), &streams, free) => r,
                    // Entries a dropped read had delivered stay pending and are recovered
                    // on start.
                    _ = shared.stop.cancelled() => return,
                };
                (streams, reply)
            }
        };
        match reply {
            Ok(v) => {
                failures.succeeded();
                let batches: Vec<StreamBatch> = parse_read(v)
                    .into_iter()
                    .filter_map(|(name, entries)| {
                        let stream = streams.iter().find(|s| *s.name == *name)?;
                        Some((stream.clone(), entries))
                    })
                    .collect();
                let n: usize = batches.iter().map(|(_, b)| b.len()).sum();
                let dispatch_all = async {
                    for (stream, batch) in batches {
                        dispatch(shared, run, &stream, batch, None, false).await;
                    }
                };
                // While this batch begins, the next read is already on its way, if the
                // handler slots left allow one.
                let free_after = shared.permits.available_permits().saturating_sub(n);
                let next_streams = shared.stream_list();
                if n == 0 || free_after < low || next_streams.is_empty() {
                    dispatch_all.await;
                    continue;
                }
                let next = async {
                    tokio::select! {
                        r = read_batch(shared, run, read_conn.clone(), &next_streams, free_after) => Some(r),
                        _ = shared.stop.cancelled() => None,
                    }
                };
                let ((), next) = tokio::join!(dispatch_all, next);
                match next {
                    Some(reply) => prefetched = Some((next_streams, reply)),
                    None => return,
                }
            }
            Err(e) if is_no_group(&e) => {
                tracing::warn!(group = %shared.group, "group or stream missing; creating it again");
                if let Err(e) = shared.prepare().await {
                    tracing::warn!(error = %e, "re-creating the group failed");
                    failures.wait(&shared.stop).await;
                }
            }
            Err(e) => {
                tracing::warn!(group = %shared.group, error = %e, "read failed; retrying");
                // A read cut short may have been delivered to us all the same.
                run.reread.store(true, Ordering::Release);
                failures.wait(&shared.stop).await;
            }
        }
    }
}

/// Reads this consumer's own pending entries again, page by page, and dispatches those
/// nobody here is working on: entries whose read reply was lost on a cut connection, or whose
/// commit gave up, without waiting for a claim.
async fn reread_own(shared: &Arc<Shared>, run: &Arc<RunCtx>) -> Result<(), ConsumeError> {
    let page = shared.options.batch_size.max(1);
    for stream in shared.stream_list() {
        let again = dispatch_own_pending(shared, run, &stream, page, None).await?;
        if again > 0 {
            tracing::info!(stream = %stream.name, group = %shared.group, entries = again, "read our own pending entries again, to handle them");
        }
    }
    Ok(())
}

/// One blocking read of new entries from every stream, for at most `free` handler slots.
async fn read_batch(
    shared: &Shared,
    run: &RunCtx,
    mut conn: RedisConnection,
    streams: &[Arc<StreamCtx>],
    free: usize,
) -> redis::RedisResult<Value> {
    let count = (free / streams.len().max(1)).clamp(1, shared.options.batch_size);
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&*shared.group)
        .arg(&*run.consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(shared.options.block.as_millis() as u64)
        .arg("STREAMS");
    for s in streams {
        cmd.arg(&*s.name);
    }
    for _ in streams {
        cmd.arg(">");
    }
    cmd.query_async(&mut conn).await
}
