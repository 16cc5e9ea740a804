//! How an entry passes between the steps: a [`Candidate`] from dispatch to a handler, an
//! [`Outcome`] to the committer ([`send`]), back to the redelivery schedule ([`defer`]), and
//! what a failed attempt becomes ([`failed_attempt`]). Below dispatch, execute and commit, so
//! each of them hands entries on without importing another.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::shared::{Kind, Outcome, Redelivery, RunCtx, Shared, StreamCtx, finish, lock};
use super::stats::{Pass, Tally};
use crate::event::AsdlcEvent;
use crate::idempotency::FINGERPRINT_LEN;

/// A decoded entry whose handler may run, once the begin step leases its key.
pub(super) struct Candidate {
    pub(super) entry_id: String,
    pub(super) event: AsdlcEvent,
    pub(super) fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) handler: usize,
    pub(super) fp: [u8; FINGERPRINT_LEN],
    /// The oldest time a mark of its key can have (`idempotency::mark_floor`).
    pub(super) floor: u64,
    /// Its order key, if its handler is ordered and it has one.
    pub(super) order: Option<Arc<str>>,
}

/// Hands a finished entry to the committer; if it is gone (the run is ending), the entry
/// stays pending.
pub(super) async fn send(shared: &Shared, run: &RunCtx, outcome: Outcome) {
    let tx = lock(&run.commit_tx).clone();
    let result = match tx {
        Some(tx) => tx.send(outcome).await,
        None => Err(mpsc::error::SendError(outcome)),
    };
    if let Err(mpsc::error::SendError(outcome)) = result {
        // The committer is gone (the run is ending): the entry stays pending.
        shared.untrack(&outcome.stream.name, &outcome.id);
        finish(shared, outcome.pass.as_deref());
    }
}

/// How long a deferred entry waits.
#[derive(Debug, Clone, Copy)]
pub(super) enum Delay {
    /// Another delivery holds its key: a short wait, not counted as an attempt.
    Recheck,
    /// Attempt `n` failed: the backoff after it.
    Retry(u32),
    /// An earlier entry of its order key is unfinished (or not placed yet): this long, unless
    /// the key is released here first.
    Held(Duration),
    /// The handler asked to be retried after this long.
    After(Duration),
}

/// Leaves an entry pending and schedules it for redelivery to this consumer.
pub(super) fn defer(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    id: String,
    delay: Delay,
    pass: Option<&Pass>,
) {
    shared.ledger.defer(&stream.name, &id);
    let delay = match delay {
        Delay::Recheck => {
            shared
                .stats
                .record(Tally::Rechecked, &shared.labels(stream, None), pass);
            shared
                .options
                .retry
                .delay(1)
                .max(Duration::from_millis(100))
        }
        Delay::Retry(attempt) => shared.options.retry.delay(attempt),
        Delay::Held(pause) => pause,
        Delay::After(d) => d,
    };
    lock(&run.retries).push(Reverse(Redelivery {
        // A handler's own delay can be anything: far enough is a year.
        due: Instant::now()
            .checked_add(delay)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600)),
        stream: stream.clone(),
        id,
    }));
    run.retry_wake.notify_one();
}

/// Order key `order_key` was released here (or its head left the queue): the earliest entry of
/// this consumer waiting for it is redelivered at once.
pub(super) fn wake(shared: &Shared, run: &RunCtx, order_key: &str) {
    if let Some((stream, id)) = shared.order.release(order_key) {
        run.redeliver_now(stream, id);
    }
}

/// Leaves an entry waiting for an earlier entry of its key: checked again after a pause if it
/// is the earliest of its key here, else woken when that one is done.
pub(super) fn hold(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    id: String,
    pass: Option<&Pass>,
) {
    match shared.order.wait(stream, &id) {
        Some(pause) => defer(shared, run, stream, id, Delay::Held(pause), pass),
        None => shared.ledger.hold(&stream.name, &id),
    }
}

/// What follows a failed attempt: a retry after its backoff, or, on the last allowed attempt,
/// the dead-letter stream.
pub(super) fn failed_attempt(
    shared: &Shared,
    handler: usize,
    attempt: u32,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    error: String,
    after: Option<Duration>,
) -> Kind {
    let max = shared.max_deliveries(handler);
    if attempt < max {
        Kind::Retry {
            attempt,
            error,
            after,
        }
    } else {
        Kind::Dead {
            fields,
            reason: format!("failed on the last allowed attempt ({max})"),
            error,
            attempts: attempt,
            handler: shared.handlers[handler].name().to_owned(),
        }
    }
}
