//! The dead-letter stream beside each stream: entries that could not be handled, with why.
//!
//! A dead letter keeps the original entry's fields exactly (prefixed with `f:`) and its
//! provenance: source stream and id, group, consumer, handler, reason, last error, delivery
//! count and time. [`replay`] puts the original fields back on the source stream (same
//! identity: its idempotency key, or for an entry written without one the original entry id,
//! so a group that already handled it skips it) and removes the dead letter, in one atomic
//! step; [`replay_to_group`] puts it back for one group only.
//!
//! The stream is bounded by a [`DeadLetterPolicy`] (length, age, and the bytes of an entry it
//! keeps): a poison flood or one huge bad entry cannot grow it without end.

use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};

use crate::connection::RedisConnection;
use crate::encoding::decode;
use crate::error::{DecodeError, StreamError};
use crate::event::AsdlcEvent;
use crate::keys::StreamKeys;
use crate::tenancy::TenantError;

mod replay;

pub use replay::{
    ReplayAll, ReplayOptions, ReplayReport, Replayed, Skipped, replay, replay_all, replay_all_with,
    replay_to_group,
};

/// The prefix of the original entry's fields in a dead letter.
pub const FIELD_PREFIX: &str = "f:";

/// The field a copy replayed for one group carries: every other group acknowledges it
/// without handling it.
pub const REPLAY_GROUP_FIELD: &str = "asdlc:replay_group";

pub use crate::event::keyless_identity;

/// What the dead-letter stream keeps. Every commit that writes a dead letter trims the
/// stream to it, exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterPolicy {
    /// Keep at most this many dead letters, the newest (`None`: no limit). Default 100,000.
    pub max_len: Option<u64>,
    /// Drop dead letters older than this (`None`: never). Default 30 days.
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes of the original entry's values; longer values are cut
    /// and the record says so (`truncated_from`). Such a dead letter cannot be replayed.
    /// Default 64 KiB.
    pub max_payload: usize,
}

impl DeadLetterPolicy {
    /// Keeps at most this many dead letters, the newest (`None`: no limit).
    pub fn with_max_len(mut self, max_len: Option<u64>) -> Self {
        self.max_len = max_len;
        self
    }

    /// Drops dead letters older than this (`None`: never).
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// Keeps at most this many bytes of the original entry's values.
    pub fn with_max_payload(mut self, max_payload: usize) -> Self {
        self.max_payload = max_payload;
        self
    }
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        DeadLetterPolicy {
            max_len: Some(100_000),
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            max_payload: 64 * 1024,
        }
    }
}

/// Where to cut `v` to at most `max` bytes: at a character boundary if it is UTF-8 text.
fn cut_at(v: &[u8], max: usize) -> usize {
    if v.len() <= max {
        return v.len();
    }
    match std::str::from_utf8(v) {
        Ok(text) => crate::text::floor_char_boundary(text, max),
        Err(_) => max,
    }
}

/// Field/value pairs borrowed from an entry.
type FieldRefs<'a> = Vec<(&'a [u8], &'a [u8])>;

impl DeadLetterPolicy {
    /// The original entry's fields as the dead letter stores them, and the entry's size in
    /// bytes if they had to be cut to `max_payload`. Each value longer than an even share
    /// of the cap is cut to that share, so the small fields that say what the entry was
    /// (its type, session, key) survive a huge one.
    pub(crate) fn cap<'a>(
        &self,
        fields: &'a [(Vec<u8>, Vec<u8>)],
    ) -> (FieldRefs<'a>, Option<usize>) {
        let total: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total <= self.max_payload || fields.is_empty() {
            let kept = fields
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            return (kept, None);
        }
        // At least a little of each, so the type and session survive even a flood of fields.
        let share = (self.max_payload / fields.len()).max(64);
        let kept = fields
            .iter()
            .map(|(k, v)| (k.as_slice(), &v[..cut_at(v, share)]))
            .collect();
        (kept, Some(total))
    }
}

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
    /// The original entry's size in bytes, if it was over the payload cap and its values
    /// were cut (see [`DeadLetterPolicy::max_payload`]); such a dead letter cannot be
    /// replayed.
    pub truncated_from: Option<u64>,
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

    /// Why replaying this dead letter cannot succeed, if it cannot: it was cut to the
    /// payload cap, its entry does not decode (unknown type, missing or bad fields), or it
    /// names another tenant than its stream's. [`replay_all`] skips these unless asked.
    pub fn cannot_succeed(&self) -> Option<String> {
        if let Some(n) = self.truncated_from {
            return Some(format!("kept only part of its {n}-byte entry"));
        }
        let event = match self.event() {
            Ok(event) => event,
            Err(e) => return Some(format!("malformed: {e}")),
        };
        // The consumer dead-letters an entry of another tenant than its stream's before any
        // handler runs; a replay puts it back on the same stream, to the same end.
        let stream_tenant = crate::keys::tenant_in_stream_name(&self.source_stream);
        if event.tenant_id != stream_tenant {
            let refusal = TenantError::WrongStream {
                event: event.tenant_id,
                stream: self.source_stream.clone(),
                stream_tenant,
            };
            return Some(refusal.to_string());
        }
        None
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
            truncated_from: None,
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
                b"truncated_from" => d.truncated_from = text.parse().ok(),
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
    range(conn, stream, start, "+", count).await
}

/// Dead letters of `stream` from `start` to `end` (ids, or `-`/`+`, `(` for exclusive),
/// oldest first, at most `count`.
async fn range(
    conn: &mut RedisConnection,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<DeadLetter>, StreamError> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(StreamKeys::new(stream).dead_letter())
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    Ok(crate::reply::parse_present_entries(reply)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_value_is_cut_to_its_share_and_the_small_fields_survive() {
        let policy = DeadLetterPolicy {
            max_payload: 4096,
            ..DeadLetterPolicy::default()
        };
        let fields = vec![
            (b"event_type".to_vec(), b"task_created".to_vec()),
            (b"metadata".to_vec(), vec![b'x'; 1_200_000]),
        ];
        let (kept, truncated_from) = policy.cap(&fields);
        assert_eq!(truncated_from, Some(10 + 12 + 8 + 1_200_000));
        assert_eq!(kept[0], (&b"event_type"[..], &b"task_created"[..]));
        assert_eq!(kept[1].1.len(), 2048);
        let small = vec![(b"a".to_vec(), b"b".to_vec())];
        assert_eq!(policy.cap(&small).1, None);
    }

    #[test]
    fn a_cut_text_value_ends_on_a_character_boundary() {
        let policy = DeadLetterPolicy {
            max_payload: 1024,
            ..DeadLetterPolicy::default()
        };
        let fields = vec![(b"m".to_vec(), "é".repeat(2000).into_bytes())];
        let (kept, _) = policy.cap(&fields);
        assert_eq!(kept[0].1.len(), 1024);
        assert!(std::str::from_utf8(kept[0].1).is_ok());
        let odd = DeadLetterPolicy {
            max_payload: 1025,
            ..DeadLetterPolicy::default()
        };
        let (kept, _) = odd.cap(&fields);
        assert_eq!(kept[0].1.len(), 1024, "not inside the two bytes of an é");
    }

    fn letter(source_stream: &str, tenant: Option<&str>, reason: &str) -> DeadLetter {
        let mut event = AsdlcEvent::builder(crate::EventType::TaskCreated, "s");
        if let Some(t) = tenant {
            event = event.tenant_id(crate::TenantId::new(t).unwrap());
        }
        let encoded = crate::encoding::encode(&event.build().unwrap());
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"source_stream".to_vec(), source_stream.as_bytes().to_vec()),
            (b"reason".to_vec(), reason.as_bytes().to_vec()),
        ];
        for (k, v) in encoded.fields() {
            pairs.push((format!("{FIELD_PREFIX}{k}").into_bytes(), v.clone()));
        }
        DeadLetter::from_entry("1-0".into(), pairs)
    }

    #[test]
    fn a_letter_of_another_tenant_than_its_stream_cannot_succeed_whatever_its_reason() {
        let acme = "tenant:{acme}:asdlc:events";
        assert_eq!(
            letter(acme, Some("acme"), "permanent failure").cannot_succeed(),
            None
        );
        assert_eq!(letter("asdlc:events", None, "").cannot_succeed(), None);
        let other = letter(acme, Some("globex"), "").cannot_succeed().unwrap();
        assert!(other.starts_with("tenant mismatch"), "{other}");
        assert!(letter(acme, None, "").cannot_succeed().is_some());
        assert!(
            letter("asdlc:events", Some("acme"), "")
                .cannot_succeed()
                .is_some()
        );
    }

    #[test]
    fn keyless_identity_is_the_one_the_consumer_deduplicates_under() {
        assert_eq!(keyless_identity("1-0"), "entry:1-0");
        assert!(include_str!("replay.lua").contains("'entry:' .. source_id"));
    }
}
