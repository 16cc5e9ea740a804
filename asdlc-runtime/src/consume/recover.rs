//! Recovery: this consumer's own pending entries at start, stale entries claimed from dead
//! peers (at start and periodically), lapsed leases swept and gone consumers forgotten. All of
//! it feeds the same dispatch step as fresh reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;

use super::dispatch::dispatch;
use super::lock;
use super::shared::{RunCtx, SCRIPT_CHUNK, Shared, StreamCtx};
use super::stats::{Pass, Tally};
use crate::connection::RedisConnection;
use crate::error::ConsumeError;
use crate::functions::{FORGET, SWEEP_LEASES};
use crate::reply::{RawEntry, parse_autoclaim, parse_pending_summary, parse_read};

/// This consumer's own pending entries, all of them, in pages.
pub(super) async fn recover_own(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    pass: &Arc<Pass>,
) -> Result<(), ConsumeError> {
    // Pages as large as the handler slots allow (within one script call): a recovery is a
    // backlog, and every page costs a read and a begin round trip.
    let page = shared
        .options
        .batch_size
        .max(shared.options.concurrency.min(SCRIPT_CHUNK))
        .max(1);
    // XPENDING's summary first: how many entries this consumer left pending (none after a
    // clean stop, and then nothing more to read).
    let mut conn = shared.conn.clone();
    let summary: Value = redis::cmd("XPENDING")
        .arg(&*stream.name)
        .arg(&*shared.group)
        .query_async(&mut conn)
        .await
        .map_err(shared.redis_err(&stream.name))?;
    let own = parse_pending_summary(summary)
        .into_iter()
        .find_map(|(name, n)| (name == *run.consumer).then_some(n))
        .unwrap_or(0);
    if own == 0 {
        return Ok(());
    }
    tracing::info!(stream = %stream.name, group = %shared.group, pending = own, "recovering this consumer's pending entries");
    dispatch_own_pending(shared, run, stream, page, Some(pass)).await?;
    Ok(())
}

/// Dispatches this consumer's pending entries of `stream` that nobody here is working on, in
/// pages of `page`, each page read while the one before is dispatched; returns how many were
/// read to be dispatched. The pages are this consumer's history (`XREADGROUP` from an id): its
/// pending entries with their fields in one command a page, which also resets their idle
/// time, so no peer claims them meanwhile. A deleted entry comes without fields and is
/// acknowledged as gone.
///
/// A page is read while entries of it may be running here, and one of them may finish (be
/// committed or dead-lettered) before the page arrives: so a page leaves out the entries
/// running when it arrives and those let go while it was read. Should more have been let go
/// meanwhile than the ledger remembers, the page is skipped: its entries stay pending, found
/// by the next re-read or claim.
pub(super) async fn dispatch_own_pending(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    page: usize,
    pass: Option<&Arc<Pass>>,
) -> Result<usize, ConsumeError> {
    // The page after `after`: the id to read the next one after (none: the end), and its
    // entries nobody here is working on.
    let read_after = |after: String| {
        let mut conn = shared.conn.clone();
        async move {
            let since = shared.ledger.removals();
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&*shared.group)
                .arg(&*run.consumer)
                .arg("COUNT")
                .arg(page)
                .arg("STREAMS")
                .arg(&*stream.name)
                .arg(&after)
                .query_async(&mut conn)
                .await?;
            let entries: Vec<RawEntry> = parse_read(reply)
                .into_iter()
                .flat_map(|(_, entries)| entries)
                .collect();
            let last = entries.last().map(|e| e.id.clone());
            let fresh = match shared.ledger.let_go_since(&stream.name, since) {
                Some(gone) => entries
                    .into_iter()
                    .filter(|e| !gone.contains(&e.id) && !shared.is_tracked(&stream.name, &e.id))
                    .collect(),
                None => Vec::new(),
            };
            redis::RedisResult::Ok((last, fresh))
        }
    };
    let (mut last, mut current) = read_after("0-0".to_owned())
        .await
        .map_err(shared.redis_err(&stream.name))?;
    let mut dispatched = 0;
    while let Some(after) = last {
        if shared.stop.is_cancelled() {
            break;
        }
        dispatched += current.len();
        let entries = std::mem::take(&mut current);
        let dispatch_current = async {
            if !entries.is_empty() {
                dispatch(shared, run, stream, entries, pass.cloned(), false).await;
            }
        };
        let ((), next) = tokio::join!(dispatch_current, read_after(after));
        (last, current) = next.map_err(shared.redis_err(&stream.name))?;
    }
    Ok(dispatched)
}

/// Entries idle for `min_idle` from any consumer of the group, with XAUTOCLAIM, to the end.
pub(super) async fn claim_stream(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    min_idle: Duration,
    pass: &Arc<Pass>,
) -> Result<(), ConsumeError> {
    let mut conn = shared.conn.clone();
    let mut cursor = "0-0".to_owned();
    loop {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&*stream.name)
            .arg(&*shared.group)
            .arg(&*run.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(shared.options.batch_size.max(1))
            .query_async(&mut conn)
            .await
            .map_err(shared.redis_err(&stream.name))?;
        let (next, entries, deleted) = parse_autoclaim(reply);
        let n_claimed = (entries.len() + deleted.len()) as u64;
        if n_claimed > 0 {
            shared.stats.record_n(
                Tally::Claimed,
                n_claimed,
                &shared.labels(stream, None),
                Some(pass),
            );
            tracing::info!(stream = %stream.name, group = %shared.group, claimed = n_claimed, "claimed stale entries");
        }
        // Deleted entries were dropped from the pending list by XAUTOCLAIM itself.
        if !deleted.is_empty() {
            shared.stats.record_n(
                Tally::Unhandled,
                deleted.len() as u64,
                &shared.labels(stream, None),
                Some(pass),
            );
        }
        let entries: Vec<RawEntry> = entries
            .into_iter()
            .filter(|e| !shared.is_tracked(&stream.name, &e.id))
            .collect();
        if !entries.is_empty() {
            dispatch(shared, run, stream, entries, Some(pass.clone()), false).await;
        }
        if next == "0-0" || next == "0" {
            break;
        }
        cursor = next;
    }
    Ok(())
}

/// Claims stale entries from dead peers while running, and forgets consumers that are gone.
pub(super) async fn claim_loop(shared: Arc<Shared>, run: Arc<RunCtx>) {
    let mut conn = shared.conn.clone();
    // The first pass sweeps (a start after a long pause finds the most left behind), then
    // every SWEEP_PASSES passes.
    let mut passes = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.options.claim_interval) => {}
            _ = shared.stop.cancelled() => return,
        }
        // Entries of ours that nobody is working on (a read reply lost on a cut connection, a
        // commit that gave up) are read again by the read loop, without waiting for a claim.
        run.reread.store(true, Ordering::Release);
        let sweep = passes.is_multiple_of(SWEEP_PASSES);
        passes = passes.wrapping_add(1);
        let pass = Arc::new(Pass::default());
        for stream in shared.stream_list() {
            if sweep && let Err(e) = sweep_leases(&shared, &mut conn, &stream).await {
                tracing::warn!(stream = %stream.name, error = %e, "sweeping stale leases failed");
            }
            if let Err(e) =
                claim_stream(&shared, &run, &stream, shared.options.claim_idle, &pass).await
            {
                tracing::warn!(stream = %stream.name, error = %e, "claiming stale entries failed");
            }
            if let Some(idle) = shared.options.forget_idle
                && let Err(e) = forget_gone(&shared, &run, &mut conn, &stream, idle).await
            {
                tracing::warn!(stream = %stream.name, error = %e, "removing gone consumers failed");
            }
        }
    }
}

/// Claim passes between two sweeps of the lease hashes (every 10 minutes by default).
const SWEEP_PASSES: u32 = 40;

/// Removes leases (and attempt counts) that lapsed long ago, one bounded page per call.
async fn sweep_leases(
    shared: &Shared,
    conn: &mut RedisConnection,
    stream: &StreamCtx,
) -> Result<(), ConsumeError> {
    let stale = (shared.options.claim_idle * 2).max(Duration::from_secs(3600));
    let mut cursor = "0".to_owned();
    let mut removed = 0u64;
    loop {
        let (next, n): (String, u64) = SWEEP_LEASES
            .key(&stream.lease_key)
            .arg(&cursor)
            .arg(500)
            .arg(stale.as_millis() as u64)
            .invoke_async(conn)
            .await
            .map_err(shared.redis_err(&stream.name))?;
        removed += n;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    if removed > 0 {
        tracing::info!(stream = %stream.name, group = %shared.group, removed, "swept stale leases");
    }
    Ok(())
}

/// What the forget script did with a consumer (forget.lua: `1` or `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgot {
    /// Removed from its group: it owned nothing and no live process held its name.
    Removed,
    /// Kept: it owns pending entries, or a live process holds its name.
    Kept,
}

impl redis::FromRedisValue for Forgot {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        match v {
            Value::Int(1) => Ok(Forgot::Removed),
            Value::Int(0) => Ok(Forgot::Kept),
            other => Err(crate::functions::unexpected(FORGET, &other)),
        }
    }
}

async fn forget_gone(
    shared: &Shared,
    run: &RunCtx,
    conn: &mut RedisConnection,
    stream: &StreamCtx,
    idle: Duration,
) -> Result<(), ConsumeError> {
    let consumers: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&*stream.name)
        .arg(&*shared.group)
        .query_async(conn)
        .await
        .map_err(shared.redis_err(&stream.name))?;
    for c in crate::streams::as_array(&consumers) {
        let f = crate::streams::Fields::new(c);
        let (Some(name), Some(pending), Some(idle_ms)) =
            (f.string("name"), f.u64("pending"), f.u64("idle"))
        else {
            continue;
        };
        if name == *run.consumer || pending > 0 || idle_ms < idle.as_millis() as u64 {
            continue;
        }
        let lock_key = stream.keys.consumer_lock(&shared.group, &name);
        let forgot: Forgot = FORGET
            .key(&*stream.name)
            .key(lock_key)
            .arg(&*shared.group)
            .arg(&name)
            .arg(lock::TTL.as_millis() as u64)
            .invoke_async(conn)
            .await
            .map_err(shared.redis_err(&stream.name))?;
        if forgot == Forgot::Removed {
            tracing::info!(stream = %stream.name, group = %shared.group, consumer = %name, "removed a consumer that is gone and owned nothing");
        }
    }
    Ok(())
}
