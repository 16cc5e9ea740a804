//! The dead-letter stream beside each stream: entries that could not be handled, with why.
//!
//! A dead letter keeps the original entry's fields exactly (prefixed with `f:`) and its
//! provenance: source stream and id, group, consumer, handler, reason, last error, delivery
//! count and time. [`replay`] puts the original fields back on the source stream (same
//! idempotency key, so a group that already handled it skips it) and removes the dead letter,
//! in one atomic step.

use redis::Value;
use serde::{Deserialize, Serialize};

use crate::connection::RedisConnection;
use crate::encoding::decode;
use crate::error::{DecodeError, StreamError};
use crate::events::AsdlcEvent;
use crate::keys::StreamKeys;

/// The prefix of the original entry's fields in a dead letter.
pub const FIELD_PREFIX: &str = "f:";

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The stream the entry came from.
    pub source_stream: String,
    /// The entry's id there.
    pub source_id: String,
    /// The group that gave up on it.
    pub group: String,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// The handler, if one was chosen.
    pub handler: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The handler's last error.
    pub error: String,
    /// Handler attempts that began (0 for an entry refused before any handler ran: malformed,
    /// or of another tenant).
    pub attempts: u32,
    /// When (RFC 3339).
    pub dead_at: String,
    /// The original entry's fields, as text (lossy for non-UTF-8 bytes).
    pub fields: Vec<(String, String)>,
    #[serde(skip)]
    raw: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DeadLetter {
    /// The original event, if the entry decodes.
    pub fn event(&self) -> Result<AsdlcEvent, DecodeError> {
        let mut e = decode(&self.raw)?;
        e.event_id = Some(self.source_id.clone());
        Ok(e)
    }

    fn from_entry(id: String, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let mut d = DeadLetter {
            id,
            source_stream: String::new(),
            source_id: String::new(),
            group: String::new(),
            consumer: String::new(),
            handler: String::new(),
            reason: String::new(),
            error: String::new(),
            attempts: 0,
            dead_at: String::new(),
            fields: Vec::new(),
            raw: Vec::new(),
        };
        for (k, v) in pairs {
            if let Some(name) = k.strip_prefix(FIELD_PREFIX.as_bytes()) {
                d.fields.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ));
                d.raw.push((name.to_vec(), v));
                continue;
            }
            let text = String::from_utf8_lossy(&v).into_owned();
            match k.as_slice() {
                b"source_stream" => d.source_stream = text,
                b"source_id" => d.source_id = text,
                b"group" => d.group = text,
                b"consumer" => d.consumer = text,
                b"handler" => d.handler = text,
                b"reason" => d.reason = text,
                b"error" => d.error = text,
                b"attempts" => d.attempts = text.parse().unwrap_or(0),
                b"dead_at" => d.dead_at = text,
                _ => {}
            }
        }
        d
    }
}

/// Dead letters of `stream`, oldest first, from `start` (an id, or `-`), at most `count`.
pub async fn list(
    conn: &mut RedisConnection,
    stream: &str,
    start: &str,
    count: usize,
) -> Result<Vec<DeadLetter>, StreamError> {
    let dlq = StreamKeys::new(stream).dead_letter();
    let reply: Value = redis::cmd("XRANGE")
        .arg(&dlq)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    Ok(crate::consume::parse_entries_pub(reply)
        .into_iter()
        .map(|(id, fields)| DeadLetter::from_entry(id, fields))
        .collect())
}

/// How many dead letters `stream` has.
pub async fn count(conn: &mut RedisConnection, stream: &str) -> Result<u64, StreamError> {
    redis::cmd("XLEN")
        .arg(StreamKeys::new(stream).dead_letter())
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))
}

/// Re-publishes dead letter `id` to its source stream with its original fields and removes
/// it, atomically. Returns the new entry id, or `None` if there is no such dead letter.
pub async fn replay(
    conn: &mut RedisConnection,
    stream: &str,
    id: &str,
) -> Result<Option<String>, StreamError> {
    let keys = StreamKeys::new(stream);
    crate::functions::REPLAY
        .key(keys.dead_letter())
        .key(stream)
        .arg(id)
        .arg(FIELD_PREFIX)
        .invoke_async(conn)
        .await
        .map_err(StreamError::redis(stream))
}

/// Replays every dead letter of `stream` (in batches); returns how many.
pub async fn replay_all(conn: &mut RedisConnection, stream: &str) -> Result<u64, StreamError> {
    let mut n = 0;
    loop {
        let batch = list(conn, stream, "-", 100).await?;
        if batch.is_empty() {
            return Ok(n);
        }
        for d in batch {
            if replay(conn, stream, &d.id).await?.is_some() {
                n += 1;
            }
        }
    }
}

/// Deletes dead letter `id`. Returns whether it existed.
pub async fn delete(
    conn: &mut RedisConnection,
    stream: &str,
    id: &str,
) -> Result<bool, StreamError> {
    let n: i64 = redis::cmd("XDEL")
        .arg(StreamKeys::new(stream).dead_letter())
        .arg(id)
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    Ok(n > 0)
}

/// Deletes every dead letter of `stream`. Returns how many there were.
pub async fn purge(conn: &mut RedisConnection, stream: &str) -> Result<u64, StreamError> {
    let dlq = StreamKeys::new(stream).dead_letter();
    let (n, _): (u64, i64) = redis::pipe()
        .atomic()
        .cmd("XLEN")
        .arg(&dlq)
        .cmd("DEL")
        .arg(&dlq)
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    Ok(n)
}
