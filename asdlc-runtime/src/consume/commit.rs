//! The commit step: finished entries are batched per stream into one commit script call, whose
//! records (success with staged effects, retry, dead letter, ack) are encoded here, and each
//! reply is counted and settled.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Value;
use tokio::sync::mpsc;

use super::handoff::{Delay, defer, failed_attempt, wake};
use super::ledger::lease_arg;
use super::retry;
use super::shared::{Kind, Outcome, RunCtx, SCRIPT_CHUNK, Shared, StreamCtx, finish};
use super::stats::Tally;
use crate::functions::COMMIT;
use crate::monitor::Labels;

/// What the commit step said of one record (commit.lua: `1` or `{1, id...}`, `0`, `2`, or a
/// refusal's text).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Committed {
    /// Done: marked and applied, retried, dead-lettered or acknowledged, as the record asked;
    /// with the entry ids of the follow-ups a success emitted, in order.
    Done(Vec<String>),
    /// (A success) The key was already processed: acknowledged, effects dropped.
    AlreadyProcessed,
    /// (A success) Another delivery of the key holds its lease (ours lapsed): nothing
    /// applied, the entry stays pending.
    LeaseTaken,
    /// (A success with effects) A staged effect was refused, so nothing of the record was
    /// applied; the lease is kept.
    Refused(String),
}

impl redis::FromRedisValue for Committed {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        match v {
            Value::Int(1) => Ok(Committed::Done(Vec::new())),
            Value::Array(parts) if parts.first() == Some(&Value::Int(1)) => parts
                .into_iter()
                .skip(1)
                .map(|id| match id {
                    Value::BulkString(b) => String::from_utf8(b).map_err(|e| {
                        crate::functions::unexpected(COMMIT, &Value::BulkString(e.into_bytes()))
                    }),
                    other => Err(crate::functions::unexpected(COMMIT, &other)),
                })
                .collect::<Result<_, _>>()
                .map(Committed::Done),
            Value::Int(0) => Ok(Committed::AlreadyProcessed),
            Value::Int(2) => Ok(Committed::LeaseTaken),
            Value::BulkString(b) => {
                Ok(Committed::Refused(String::from_utf8_lossy(&b).into_owned()))
            }
            Value::SimpleString(s) => Ok(Committed::Refused(s)),
            other => Err(crate::functions::unexpected(COMMIT, &other)),
        }
    }
}

/// Commits finished entries in batches: one script call per stream per batch.
pub(super) async fn committer(
    shared: Arc<Shared>,
    run: Arc<RunCtx>,
    mut rx: mpsc::Receiver<Outcome>,
) {
    let mut again: Vec<Outcome> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut again);
        if batch.is_empty() {
            match rx.recv().await {
                Some(o) => batch.push(o),
                None => break,
            }
        }
        while batch.len() < SCRIPT_CHUNK {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut by_stream: HashMap<Arc<str>, Vec<Outcome>> = HashMap::new();
        for o in batch {
            by_stream.entry(o.stream.name.clone()).or_default().push(o);
        }
        for (_, outcomes) in by_stream {
            commit_batch(&shared, &run, outcomes, &mut again).await;
        }
    }
}

async fn commit_batch(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    outcomes: Vec<Outcome>,
    again: &mut Vec<Outcome>,
) {
    let stream = outcomes[0].stream.clone();
    // The order keys the records release, for entries of ordered handlers.
    let order_keys: Vec<Option<Arc<str>>> = outcomes
        .iter()
        .map(|o| match o.kind {
            Kind::Success { .. } | Kind::Dead { .. } if shared.ordered => {
                shared.order.key_of(&stream.name, &o.id)
            }
            _ => None,
        })
        .collect();
    let mut tries = retry::COMMIT.start();
    // A failed call may have applied some of its records before it failed (Redis does not roll
    // a function back) without acknowledging them or dropping their leases: every later call
    // of these records asks the script to look at the marks even under a live lease of ours,
    // so those records are answered "already processed" and not applied again.
    let mut recheck = false;
    let results = loop {
        match commit(shared, run, &stream, &outcomes, &order_keys, recheck).await {
            Ok(v) => break Some(v),
            Err(e) => {
                recheck = true;
                let pause = tries.failed();
                let attempt = tries.failures();
                tracing::warn!(stream = %stream.name, error = %e, attempt, "commit failed; retrying");
                let Some(pause) = pause.filter(|_| !run.abort.is_cancelled()) else {
                    break None;
                };
                crate::retry::sleep(pause, None).await;
            }
        }
    };
    let Some(results) = results else {
        // Given up: the entries stay pending; a re-read of our own pending entries finds them,
        // and its begin step acknowledges those a failed call marked.
        for o in outcomes {
            shared.untrack(&stream.name, &o.id);
            finish(shared, o.pass.as_deref());
        }
        run.reread.store(true, Ordering::Release);
        return;
    };
    let attempt = tries.failures();
    for ((o, r), order_key) in outcomes.into_iter().zip(results).zip(order_keys) {
        let pass = o.pass.as_deref();
        let acked = matches!(
            (&o.kind, &r),
            (
                Kind::Success { .. },
                Committed::Done(_) | Committed::AlreadyProcessed
            ) | (Kind::Dead { .. }, _)
        );
        if let Some(order_key) = order_key.filter(|_| acked) {
            // Released: this consumer's next entries of the key need not wait for a check.
            wake(shared, run, &order_key);
        }
        let labels = shared.labels(&stream, o.handler);
        match (o.kind, r) {
            // After a failed attempt whose reply was lost, "already marked" is nearly always
            // that attempt's own work (a key another delivery marks meanwhile needs our lease
            // to have lapsed): counted as processed.
            (Kind::Success { .. }, Committed::Done(emitted)) => {
                shared.stats.record(Tally::Processed, &labels, pass);
                if !emitted.is_empty() {
                    shared
                        .stats
                        .record_n(Tally::Emitted, emitted.len() as u64, &labels, pass);
                    tracing::debug!(stream = %stream.name, id = %o.id, ?emitted, "committed with follow-ups");
                }
            }
            (Kind::Success { .. }, Committed::AlreadyProcessed) if attempt > 0 => {
                shared.stats.record(Tally::Processed, &labels, pass);
            }
            (Kind::Success { .. }, Committed::LeaseTaken) => {
                // Our lease lapsed and another delivery of the key took it: that one decides.
                shared.stats.record(Tally::Rechecked, &labels, pass);
                tracing::info!(stream = %stream.name, id = %o.id, "another delivery holds this key's lease; checking again later");
                defer(shared, run, &stream, o.id, Delay::Recheck, None);
                finish(shared, pass);
                continue;
            }
            (Kind::Success { .. }, Committed::AlreadyProcessed) => {
                shared.stats.record(Tally::Duplicate, &labels, pass);
                tracing::info!(stream = %stream.name, id = %o.id, "another delivery committed this key first; effects dropped");
            }
            (
                Kind::Success {
                    attempt: tried,
                    fields,
                    ..
                },
                Committed::Refused(refusal),
            ) => {
                // A refused effect is a failed attempt: nothing of the record was applied.
                let error = format!("effect refused: {refusal}");
                tracing::warn!(stream = %stream.name, id = %o.id, %error, attempt = tried, "staged effect refused");
                shared.stats.record(Tally::Failed, &labels, pass);
                if let Some(h) = o.handler {
                    again.push(Outcome {
                        kind: failed_attempt(shared, h, tried, fields, error, None),
                        ..o
                    });
                    continue;
                }
            }
            (
                Kind::Retry {
                    attempt: tried,
                    error,
                    after,
                },
                _,
            ) => {
                shared.stats.record(Tally::Retried, &labels, pass);
                tracing::info!(stream = %stream.name, id = %o.id, attempt = tried, %error, ?after, "handler failed; will retry");
                let delay = after.map_or(Delay::Retry(tried), Delay::After);
                defer(shared, run, &stream, o.id, delay, None);
                finish(shared, pass);
                continue;
            }
            (
                Kind::Dead {
                    reason,
                    error,
                    handler: dead_handler,
                    ..
                },
                _,
            ) => {
                let labels = Labels {
                    handler: &dead_handler,
                    ..labels
                };
                shared.stats.record(Tally::DeadLettered, &labels, pass);
                tracing::warn!(stream = %stream.name, id = %o.id, %reason, %error, "moved to the dead-letter stream");
            }
            (Kind::Ack { deleted }, _) => {
                shared.stats.record(Tally::Unhandled, &labels, pass);
                tracing::debug!(stream = %stream.name, id = %o.id, deleted, "acknowledged without handling");
            }
        }
        shared.untrack(&stream.name, &o.id);
        finish(shared, pass);
    }
}

async fn commit(
    shared: &Shared,
    run: &RunCtx,
    stream: &StreamCtx,
    outcomes: &[Outcome],
    order_keys: &[Option<Arc<str>>],
    recheck: bool,
) -> redis::RedisResult<Vec<Committed>> {
    let mut inv = COMMIT.key(&*stream.name);
    inv.key(&stream.dead_letter).key(&stream.lease_key);
    if order_keys.iter().any(Option::is_some) {
        inv.key(&stream.order_hash);
    }
    // Declared: the mark hashes of the records that mark, and every staged effect's key.
    let marking = outcomes.iter().filter_map(|o| match &o.kind {
        Kind::Success { fp, floor, .. } => Some((&fp[..], *floor)),
        _ => None,
    });
    inv.clocked(stream.marks.marks(marking));
    for o in outcomes {
        if let Kind::Success { effects, .. } = &o.kind {
            for e in effects {
                inv.key(e.key());
                if let Some(k) = e.second_key() {
                    inv.key(k);
                }
            }
        }
    }
    inv.arg(&*shared.group).arg(&*run.token);
    let dead_letters = &shared.options.dead_letters;
    match dead_letters.max_len {
        Some(n) => inv.arg(n),
        None => inv.arg(""),
    };
    inv.arg(
        dead_letters
            .max_age
            .map_or(0, |d| d.as_millis().max(1) as u64),
    );
    inv.arg(if recheck { "1" } else { "0" });
    let mut now = String::new();
    for (o, order_key) in outcomes.iter().zip(order_keys) {
        if let Some(order_key) = order_key {
            // Settled at the end of the call: released only if the call acknowledges it.
            inv.arg("O")
                .arg(&o.id)
                .arg(&stream.order_hash)
                .arg(&**order_key);
        }
        match &o.kind {
            Kind::Success { fp, effects, .. }
                if effects.is_empty() && o.lease.as_ref() == Some(fp) =>
            {
                // The common record, in its short form.
                inv.arg("s").arg(&o.id).arg(&fp[..]);
            }
            Kind::Success { fp, effects, .. } => {
                inv.arg("S")
                    .arg(&o.id)
                    .arg(&fp[..])
                    .arg(lease_arg(&o.lease))
                    .arg(effects.len());
                for e in effects {
                    inv.arg(e.command()).arg(e.key()).arg(e.args().len());
                    for a in e.args() {
                        inv.arg(a.as_slice());
                    }
                }
            }
            Kind::Retry { .. } => {
                inv.arg("R").arg(&o.id).arg(lease_arg(&o.lease));
            }
            Kind::Dead {
                fields,
                reason,
                error,
                attempts,
                handler,
            } => {
                if now.is_empty() {
                    now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                }
                // A handler's error can be any size: it gets at most a tenth of the cap.
                let error_kept = crate::text::truncate(error, dead_letters.max_payload / 10);
                let meta: [(&str, &str); 8] = [
                    ("source_stream", &stream.name),
                    ("source_id", &o.id),
                    ("group", &shared.group),
                    ("consumer", &run.consumer),
                    ("handler", handler),
                    ("reason", reason),
                    ("error", &error_kept),
                    ("dead_at", &now),
                ];
                let (fields, truncated_from) = dead_letters.cap(fields);
                let extra = 1 + usize::from(truncated_from.is_some());
                inv.arg("D")
                    .arg(&o.id)
                    .arg(lease_arg(&o.lease))
                    .arg(meta.len() + extra + fields.len());
                for (k, v) in meta {
                    inv.arg(k).arg(v);
                }
                inv.arg("attempts").arg(*attempts);
                if let Some(n) = truncated_from {
                    inv.arg("truncated_from").arg(n);
                }
                for (k, v) in fields {
                    let mut name = Vec::with_capacity(k.len() + 2);
                    name.extend_from_slice(crate::deadletter::FIELD_PREFIX.as_bytes());
                    name.extend_from_slice(k);
                    inv.arg(name).arg(v);
                }
            }
            Kind::Ack { .. } => {
                inv.arg("A").arg(&o.id);
            }
        }
    }
    let mut conn = shared.conn.clone();
    inv.invoke_async(&mut conn).await
}
