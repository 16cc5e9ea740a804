//! Scheduled events: an event published now to be appended to its stream later, at a time or
//! after a delay ([`Publisher::publish_at`], [`Publisher::publish_after`], and
//! [`crate::HandlerContext::emit_after`] for a follow-up committed with its cause).
//!
//! Redis Streams have no delayed entries, so a scheduled event waits in two keys beside its
//! stream, in its slot: a sorted set of due times and a hash of the events, both keyed by the
//! event's idempotency key (so a schedule is cancelled by key, and scheduling one key twice
//! keeps the first). Every consumer of the stream runs a small promoter that appends what is
//! due with one atomic function call, so several consumers (or runtimes) never append one
//! twice, and one killed between two calls loses none: nothing else is deployed. The schedule
//! lives in Redis, so it survives restarts of the consumers and (with persistence) of the
//! server.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::Value;

use crate::connection::RedisConnection;
use crate::error::{PublishError, StreamError};
use crate::event::AsdlcEvent;
use crate::functions::{PROMOTE, SCHEDULE};
use crate::keys::StreamKeys;
use crate::publish::Publisher;

/// What [`Publisher::publish_at`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scheduled {
    /// The idempotency key the event is scheduled under (cancel it with this).
    pub key: String,
    /// The stream it will be appended to.
    pub stream: String,
    /// When it is due.
    pub due: DateTime<Utc>,
    /// `false` if an event of this key was scheduled already: the first schedule stands.
    pub newly_scheduled: bool,
}

/// One scheduled event, as [`list`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduledEntry {
    /// Its idempotency key.
    pub key: String,
    /// When it is due.
    pub due: DateTime<Utc>,
    /// Its fields, as they will be appended.
    pub fields: Vec<(String, String)>,
}

impl Publisher {
    /// Validates `event` now and appends it to its stream at `when` (at once if that has
    /// passed), exactly once, through the promoter every consumer of the stream runs. The
    /// event is scheduled under its idempotency key: scheduling that key again keeps the
    /// first schedule, and [`Publisher::cancel_scheduled`] cancels it.
    pub async fn publish_at(
        &self,
        event: &AsdlcEvent,
        when: DateTime<Utc>,
    ) -> Result<Scheduled, PublishError> {
        self.schedule(event, "at", when.timestamp_millis().max(0))
            .await
    }

    /// [`Publisher::publish_at`] `delay` from now, by the server's clock.
    pub async fn publish_after(
        &self,
        event: &AsdlcEvent,
        delay: Duration,
    ) -> Result<Scheduled, PublishError> {
        let delay_ms = delay.as_millis().min(i64::MAX as u128 / 2) as i64;
        self.schedule(event, "after", delay_ms).await
    }

    async fn schedule(
        &self,
        event: &AsdlcEvent,
        how: &str,
        ms: i64,
    ) -> Result<Scheduled, PublishError> {
        let (stream, key, fields) = self.prepare_fields(event)?;
        let keys = StreamKeys::new(&stream);
        let mut conn = self.connection();
        let (added, due): (i64, i64) = SCHEDULE
            .key(keys.scheduled())
            .key(keys.scheduled_events())
            .arg(how)
            .arg(&key)
            .arg(ms)
            .arg(pack(&fields))
            .invoke_async(&mut conn)
            .await
            .map_err(|source| PublishError::Redis {
                stream: stream.clone(),
                source,
            })?;
        tracing::debug!(%stream, %key, due_ms = due, newly = added == 1, "scheduled");
        Ok(Scheduled {
            key,
            stream,
            due: ms_to_time(due),
            newly_scheduled: added == 1,
        })
    }

    /// Cancels the scheduled event of idempotency key `key` on the current context's stream.
    /// Returns whether it was still waiting (`false`: never scheduled, cancelled already, or
    /// appended already).
    pub async fn cancel_scheduled(&self, key: &str) -> Result<bool, PublishError> {
        let stream = self.current_stream()?;
        let mut conn = self.connection();
        cancel_key(&mut conn, &stream, key)
            .await
            .map_err(|source| PublishError::Redis { stream, source })
    }
}

/// Cancels the scheduled event of idempotency key `key` on `stream` (for tools; applications
/// use [`Publisher::cancel_scheduled`]). Returns whether it was still waiting.
pub async fn cancel(
    conn: &mut RedisConnection,
    stream: &str,
    key: &str,
) -> Result<bool, StreamError> {
    cancel_key(conn, stream, key)
        .await
        .map_err(StreamError::redis(stream))
}

async fn cancel_key(
    conn: &mut RedisConnection,
    stream: &str,
    key: &str,
) -> redis::RedisResult<bool> {
    let keys = StreamKeys::new(stream);
    let removed: i64 = SCHEDULE
        .key(keys.scheduled())
        .key(keys.scheduled_events())
        .arg("cancel")
        .arg(key)
        .invoke_async(conn)
        .await?;
    Ok(removed == 1)
}

/// The scheduled events of `stream`, soonest first, at most `limit`.
pub async fn list(
    conn: &mut RedisConnection,
    stream: &str,
    limit: usize,
) -> Result<Vec<ScheduledEntry>, StreamError> {
    let keys = StreamKeys::new(stream);
    let due: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(keys.scheduled())
        .arg(0)
        .arg(limit.saturating_sub(1) as i64)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    let mut out = Vec::with_capacity(due.len());
    for (key, ms) in due {
        let blob: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(keys.scheduled_events())
            .arg(&key)
            .query_async(conn)
            .await
            .map_err(StreamError::redis(stream))?;
        let fields = unpack_pairs(&blob.unwrap_or_default());
        out.push(ScheduledEntry {
            key,
            due: ms_to_time(ms),
            fields,
        });
    }
    Ok(out)
}

/// How many events of `stream` are scheduled.
pub async fn count(conn: &mut RedisConnection, stream: &str) -> Result<u64, StreamError> {
    redis::cmd("ZCARD")
        .arg(StreamKeys::new(stream).scheduled())
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))
}

/// What one promoter call did.
#[derive(Debug, Default)]
pub(crate) struct Promoted {
    /// (idempotency key, new entry id) of each appended event.
    pub(crate) appended: Vec<(String, String)>,
    /// How long until the next scheduled event is due (by the server's clock), if there is one.
    pub(crate) next_due: Option<Duration>,
}

/// Appends up to `limit` due events of `keys`' stream, atomically (see the module docs).
pub(crate) async fn promote(
    conn: &mut RedisConnection,
    keys: &StreamKeys,
    limit: usize,
    max_len: Option<usize>,
) -> redis::RedisResult<Promoted> {
    let reply: Value = PROMOTE
        .key(keys.scheduled())
        .key(keys.scheduled_events())
        .key(keys.stream())
        .key(keys.dead_letter())
        .arg(limit)
        .arg(max_len.map(|n| n.to_string()).unwrap_or_default())
        .invoke_async(conn)
        .await?;
    let Value::Array(items) = reply else {
        return Err(crate::functions::unexpected(PROMOTE, &reply).into());
    };
    let mut items = items.into_iter();
    let (Some(Value::Int(_)), Some(Value::Int(next))) = (items.next(), items.next()) else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected reply of the asdlc promote function",
        )));
    };
    let text = |v: Value| match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => Ok(s),
        other => Err(redis::RedisError::from(crate::functions::unexpected(
            PROMOTE, &other,
        ))),
    };
    let mut appended = Vec::new();
    while let (Some(k), Some(id)) = (items.next(), items.next()) {
        appended.push((text(k)?, text(id)?));
    }
    Ok(Promoted {
        appended,
        next_due: (next >= 0).then(|| Duration::from_millis(next as u64)),
    })
}

/// Fields packed for the schedule hash: `<length>:<bytes>` for each name and value.
pub(crate) fn pack(fields: &[(&'static str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|(k, v)| k.len() + v.len() + 12).sum());
    for (k, v) in fields {
        for part in [k.as_bytes(), v.as_slice()] {
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(part);
        }
    }
    out
}

/// Packed fields back as (name, value) text pairs.
pub(crate) fn unpack_pairs(blob: &[u8]) -> Vec<(String, String)> {
    unpack(blob)
        .chunks(2)
        .filter_map(|p| match p {
            [k, v] => Some((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// The parts [`pack`] packed; a damaged blob gives what could be read.
fn unpack(mut blob: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(colon) = blob.iter().position(|b| *b == b':') {
        let Some(n) = std::str::from_utf8(&blob[..colon])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            break;
        };
        let rest = &blob[colon + 1..];
        if rest.len() < n {
            break;
        }
        out.push(rest[..n].to_vec());
        blob = &rest[n..];
    }
    out
}

/// A time in ms since the epoch (0 for one out of range).
pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_fields_come_back_whole_whatever_they_hold() {
        let fields: Vec<(&'static str, Vec<u8>)> = vec![
            ("a", b"x:y:12:z".to_vec()),
            ("metadata", "{\"k\": \"v\u{e9}\"}".as_bytes().to_vec()),
            ("empty", Vec::new()),
        ];
        let parts = unpack(&pack(&fields));
        let expected: Vec<Vec<u8>> = fields
            .iter()
            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.clone()])
            .collect();
        assert_eq!(parts, expected);
    }
}
