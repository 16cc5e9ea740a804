//! The dispatch step: a batch of entries is admitted to the ledger, decoded, run through the
//! begin script (duplicate, busy or leased; in a group with ordered handlers also held back
//! behind an earlier entry of its key) and handed to a handler, to the commit step, or back to
//! the redelivery schedule.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::execute::spawn_handler;
use super::handoff::{Candidate, Delay, defer, hold, send, wake};
use super::order::{id_key, order_key};
use super::retry;
use super::shared::{Kind, Outcome, RunCtx, SCRIPT_CHUNK, Shared, StreamCtx, finish};
use super::stats::{Pass, Tally};
use crate::encoding::decode;
use crate::functions::{BEGIN, BEGIN_ORDERED};
use crate::idempotency::{FINGERPRINT_LEN, MarkSet, fingerprint, mark_floor};
use crate::reply::RawEntry;
use crate::tenancy::TenantError;

/// What the begin step said of one entry (begin.lua: `0`, `-1`, or the attempt `n > 0`;
/// begin_ordered.lua also `-2` and `-3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begun {
    /// Already processed by the group: acknowledged.
    Duplicate,
    /// Another delivery holds the key's live lease: checked again later.
    Busy,
    /// An earlier entry of its order key is unfinished: held back until that one is
    /// committed or dead-lettered.
    Held,
    /// An earlier pending entry of the group is not placed in order yet (its consumer's
    /// begin step has not run): checked again shortly.
    Behind,
    /// The lease is ours; the handler runs its attempt `n` (counted in the server).
    Leased(u32),
}

impl redis::FromRedisValue for Begun {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        match v {
            Value::Int(0) => Ok(Begun::Duplicate),
            Value::Int(-1) => Ok(Begun::Busy),
            Value::Int(-2) => Ok(Begun::Held),
            Value::Int(-3) => Ok(Begun::Behind),
            Value::Int(n) if n > 0 => Ok(Begun::Leased(u32::try_from(n).unwrap_or(u32::MAX))),
            other => Err(crate::functions::unexpected(BEGIN, &other)),
        }
    }
}

/// Runs a batch of entries of one stream through decode, begin and the handlers. Entries
/// this consumer is already working on are left out (`redelivery`: the batch is the
/// redelivery of deferred entries, which takes them back).
pub(super) async fn dispatch(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    entries: Vec<RawEntry>,
    pass: Option<Arc<Pass>>,
    redelivery: bool,
) {
    let admitted = {
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        shared.ledger.admit(&stream.name, &ids, redelivery)
    };
    let entries: Vec<RawEntry> = entries
        .into_iter()
        .zip(admitted)
        .filter_map(|(e, ok)| ok.then_some(e))
        .collect();
    if entries.is_empty() {
        return;
    }
    let n = entries.len();
    shared.active.begin(n);
    if let Some(p) = &pass {
        p.begin(n);
    }
    let mut candidates: Vec<Candidate> = Vec::with_capacity(n);
    let mut seen: HashSet<[u8; FINGERPRINT_LEN]> = HashSet::new();
    let mut deferred: Vec<String> = Vec::new();
    for entry in entries {
        // Acknowledged without a handler: an entry deleted meanwhile, or one no handler of
        // this group takes.
        let ack = |id: String, deleted: bool| Outcome {
            stream: stream.clone(),
            id,
            lease: None,
            kind: Kind::Ack { deleted },
            pass: pass.clone(),
            handler: None,
        };
        let Some(fields) = entry.fields else {
            send(shared, run, ack(entry.id, true)).await;
            continue;
        };
        // A dead letter replayed for one group: the others acknowledge it unhandled, before
        // decoding it, so a malformed one replayed to its group is not dead-lettered by them.
        let for_other_group = fields.iter().any(|(k, v)| {
            k.as_slice() == crate::deadletter::REPLAY_GROUP_FIELD.as_bytes()
                && v.as_slice() != shared.group.as_bytes()
        });
        if for_other_group {
            send(shared, run, ack(entry.id, false)).await;
            continue;
        }
        let dead = |reason: String, fields| Outcome {
            stream: stream.clone(),
            id: entry.id.clone(),
            lease: None,
            kind: Kind::Dead {
                fields,
                reason,
                error: String::new(),
                attempts: 0,
                handler: String::new(),
            },
            pass: pass.clone(),
            handler: None,
        };
        let event = match decode(&fields) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(stream = %stream.name, id = %entry.id, error = %e, "malformed entry: dead-lettering it");
                send(shared, run, dead(e.to_string(), fields)).await;
                continue;
            }
        };
        if event.tenant_id != stream.tenant {
            let reason = TenantError::WrongStream {
                event: event.tenant_id.clone(),
                stream: stream.name.to_string(),
                stream_tenant: stream.tenant.clone(),
            }
            .to_string();
            tracing::warn!(stream = %stream.name, id = %entry.id, %reason, "dead-lettering entry");
            send(shared, run, dead(reason, fields)).await;
            continue;
        }
        let Some(handler) = shared.handler_for(&event) else {
            send(shared, run, ack(entry.id, false)).await;
            continue;
        };
        let key = event
            .idempotency_key
            .clone()
            .unwrap_or_else(|| crate::deadletter::keyless_identity(&entry.id));
        let fp = fingerprint(&key);
        let floor = mark_floor(&key);
        if !seen.insert(fp) {
            // A second copy of a key in one batch waits for the first to finish.
            deferred.push(entry.id);
            continue;
        }
        let order = shared.handlers[handler]
            .options
            .ordered_by
            .and_then(|by| order_key(&by, &event));
        if let Some(order_key) = &order {
            shared
                .order
                .place(&stream.name, &entry.id, order_key.clone());
        }
        candidates.push(Candidate {
            entry_id: entry.id,
            event,
            fields,
            handler,
            fp,
            floor,
            order,
        });
    }
    if shared.ordered {
        // The ordered begin step places entries in stream order.
        candidates.sort_by_key(|c| id_key(&c.entry_id));
    }
    shared.ledger.set_leases(
        &stream.name,
        candidates.iter().map(|c| (c.entry_id.as_str(), c.fp)),
    );
    for id in deferred {
        defer(shared, run, stream, id, Delay::Recheck, pass.as_deref());
        finish(shared, pass.as_deref());
    }

    let mut remaining = candidates;
    while !remaining.is_empty() {
        let rest = if remaining.len() > SCRIPT_CHUNK {
            remaining.split_off(SCRIPT_CHUNK)
        } else {
            Vec::new()
        };
        let mut chunk = std::mem::replace(&mut remaining, rest);
        // Entries behind an unplaced entry of another consumer (one the begin step cannot
        // place for it: ordered by a key function) are begun again at once, a few times:
        // that consumer's begin step is usually a moment away.
        let mut behind_tries = 0u32;
        loop {
            let mut failures = retry::BEGIN.start();
            let codes = loop {
                match begin(shared, run, stream, &chunk).await {
                    Ok(codes) => break Some(codes),
                    Err(e) => {
                        tracing::warn!(stream = %stream.name, error = %e, "begin step failed; retrying");
                        let pause = failures.failed();
                        if shared.stop.is_cancelled() || run.abort.is_cancelled() {
                            break None;
                        }
                        crate::retry::sleep(pause.unwrap_or_default(), None).await;
                    }
                }
            };
            let Some(codes) = codes else {
                // Stopping: leave the rest pending for the next start.
                for c in chunk.into_iter().chain(std::mem::take(&mut remaining)) {
                    shared.untrack(&stream.name, &c.entry_id);
                    finish(shared, pass.as_deref());
                }
                return;
            };
            let mut behind = Vec::new();
            for (c, code) in chunk.into_iter().zip(codes) {
                match code {
                    Begun::Behind if behind_tries < BEHIND_TRIES => behind.push(c),
                    Begun::Duplicate => {
                        if let Some(order_key) = &c.order {
                            // The begin step took it out of its key's order.
                            wake(shared, run, order_key);
                        }
                        shared.stats.record(
                            Tally::Duplicate,
                            &shared.labels(stream, Some(c.handler)),
                            pass.as_deref(),
                        );
                        tracing::debug!(stream = %stream.name, id = %c.entry_id, "duplicate: already processed");
                        shared.untrack(&stream.name, &c.entry_id);
                        finish(shared, pass.as_deref());
                    }
                    Begun::Leased(attempt) if attempt > shared.max_deliveries(c.handler) => {
                        // Every allowed attempt began and none ended with an outcome: the handler
                        // (or its process) kept crashing.
                        let max = shared.max_deliveries(c.handler);
                        let started = attempt - 1;
                        let reason = format!(
                            "{started} attempts started and none finished, max_deliveries is {max}: the handler or its process kept crashing"
                        );
                        let out = Outcome {
                            stream: stream.clone(),
                            id: c.entry_id,
                            lease: Some(c.fp),
                            kind: Kind::Dead {
                                fields: c.fields,
                                reason,
                                error: String::new(),
                                attempts: started,
                                handler: shared.handlers[c.handler].name().to_owned(),
                            },
                            pass: pass.clone(),
                            handler: Some(c.handler),
                        };
                        send(shared, run, out).await;
                    }
                    Begun::Leased(attempt) => {
                        spawn_handler(shared, run, stream, c, attempt, pass.clone()).await
                    }
                    Begun::Held => {
                        shared.stats.record(
                            Tally::HeldBack,
                            &shared.labels(stream, Some(c.handler)),
                            pass.as_deref(),
                        );
                        tracing::debug!(stream = %stream.name, id = %c.entry_id, "an earlier entry of its key is unfinished; waiting");
                        hold(shared, run, stream, c.entry_id, pass.as_deref());
                        finish(shared, pass.as_deref());
                    }
                    Begun::Behind => {
                        tracing::debug!(stream = %stream.name, id = %c.entry_id, "an earlier entry of the group is not placed yet; checking again");
                        let pause = shared.order.behind(&stream.name, &c.entry_id);
                        defer(
                            shared,
                            run,
                            stream,
                            c.entry_id,
                            Delay::Held(pause),
                            pass.as_deref(),
                        );
                        finish(shared, pass.as_deref());
                    }
                    Begun::Busy => {
                        tracing::debug!(stream = %stream.name, id = %c.entry_id, "key held by another delivery; checking again later");
                        defer(
                            shared,
                            run,
                            stream,
                            c.entry_id,
                            Delay::Recheck,
                            pass.as_deref(),
                        );
                        finish(shared, pass.as_deref());
                    }
                }
            }
            if behind.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1 << behind_tries)).await;
            behind_tries += 1;
            chunk = behind;
        }
    }
}

/// How many times in a row an entry behind unplaced ones is begun again before it waits
/// (after 1, 2, 4 and 8 ms).
const BEHIND_TRIES: u32 = 4;

async fn begin(
    shared: &Shared,
    run: &RunCtx,
    stream: &StreamCtx,
    chunk: &[Candidate],
) -> redis::RedisResult<Vec<Begun>> {
    if shared.ordered {
        return begin_ordered(shared, run, stream, chunk).await;
    }
    let mut inv = BEGIN.key(&*stream.name);
    inv.key(&stream.lease_key).clocked(marks_of(stream, chunk));
    inv.arg(&*shared.group)
        .arg(&*run.token)
        .arg(run.predecessor(&stream.name))
        .arg(shared.lease_ms());
    for c in chunk {
        inv.arg(&c.entry_id).arg(&c.fp[..]);
    }
    let mut conn = shared.conn.clone();
    inv.invoke_async(&mut conn).await
}

/// The marks section of a begin step for `chunk`.
fn marks_of(stream: &StreamCtx, chunk: &[Candidate]) -> MarkSet {
    stream
        .marks
        .marks(chunk.iter().map(|c| (&c.fp[..], c.floor)))
}

/// The begin step of a group with ordered handlers (begin_ordered.lua): the same, after placing
/// each entry in the order of its key. `chunk` is in stream order.
async fn begin_ordered(
    shared: &Shared,
    run: &RunCtx,
    stream: &StreamCtx,
    chunk: &[Candidate],
) -> redis::RedisResult<Vec<Begun>> {
    let mut inv = BEGIN_ORDERED.key(&*stream.name);
    inv.key(&stream.lease_key)
        .clocked(marks_of(stream, chunk))
        .key(&stream.order_hash);
    inv.arg(&*shared.group)
        .arg(&*run.token)
        .arg(run.predecessor(&stream.name))
        .arg(shared.lease_ms())
        .arg(&stream.order_hash)
        .arg(&*shared.order_rule);
    for c in chunk {
        inv.arg(&c.entry_id)
            .arg(&c.fp[..])
            .arg(c.order.as_deref().unwrap_or(""));
    }
    let mut conn = shared.conn.clone();
    inv.invoke_async(&mut conn).await
}
