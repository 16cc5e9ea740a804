//! Idempotency: which events a consumer group has already processed.
//!
//! Marks are per stream (so per tenant) **and per consumer group**: two groups that both
//! handle an event each handle it once. The consumer never uses a check and a mark as two
//! round trips: its begin step (check, and take an in-flight lease) and its commit step (mark,
//! apply staged effects, acknowledge, drop the lease) are each one Lua script. The
//! [`IdempotencyTracker`] here offers the same marks for direct use, with
//! [`IdempotencyTracker::mark_processed`] as an atomic check-and-set.
//!
//! **Layout and memory.** A mark is a 12-byte fingerprint of the idempotency key (the first
//! 96 bits of its SHA-256) stored as a field of a small hash `<prefix><bucket>:<shard>`,
//! bucketed by time and sharded by fingerprint (see `marks.lua`). A hash stays in Redis's
//! compact listpack encoding up to the server's `hash-max-listpack-entries` (128 fields by
//! default, one of them a marker, so 127 marks): about 18 bytes a mark, where a hash that
//! outgrew it (a hashtable) costs 30 to 40 and a key per mark 100 to 160. So a bucket needs
//! enough shards for the marks it gets: the default 16,384 keep about 2 million marks a bucket
//! compact (5 events a second at the default TTL), and [`MarkLayout::for_rate`] sizes the
//! shards for a group's rate, up to [`MAX_SHARDS`]. A mark lives at least the TTL (default
//! 7 days) and at most one bucket (by default TTL / 2) longer.
//!
//! **One layout per bucket, kept by the server.** A mark is found only in the hash it was
//! written to, so every process of a group must shard a bucket alike. The first mark written
//! in a bucket stores the layout it was written with next to the bucket's hashes
//! (`<prefix><bucket>:layout`, expiring with them); every call names the layout it assumes for
//! each bucket it reads, and the server refuses a call that assumes another, before it writes
//! anything (`ASDLC_LAYOUT`). The process then follows the stored layout for that bucket,
//! logging a warning that names both, and makes the call again. So a process configured for
//! another rate follows its group instead of missing marks, and a changed rate takes effect
//! from the first bucket begun once every process runs with it (older buckets keep theirs
//! until they expire).
//!
//! **Lookups.** A mark can be in any bucket of the TTL: `buckets + 1` hashes (3 by default),
//! each one command inside the script, and commands inside scripts are the main cost of the
//! consumer's protocol on the server. But a key that says when it was born (a fresh
//! `evt-<UUIDv7>` key, a keyless entry's id) cannot have been processed before it existed, so
//! its lookup starts at the bucket of its birth (less a margin for clock differences): one
//! hash for nearly every fresh event. Keys of any age (operation keys) read every bucket.
//! The buckets are the server's, so every process agrees on them whatever its own clock says.
//! Checking the layouts costs one `GET` a call for each bucket it reads (one for a call of
//! fresh keys), not a command per event.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::functions::{MARK, MARK_MANY};
use crate::keys::StreamKeys;

/// Bytes of SHA-256 kept as a key's fingerprint.
pub const FINGERPRINT_LEN: usize = 12;

mod layout;
mod lookup;

pub use layout::{COMPACT_MARKS_PER_HASH, DEFAULT_SHARDS, MAX_SHARDS, MarkLayout};
pub(crate) use lookup::{GroupMarks, MarkSet, mark_floor};

/// The fingerprint of an idempotency key: 96 bits, so a false "already processed" needs a
/// collision with probability about n²/2⁹⁷ (1e-11 at a billion marks).
pub fn fingerprint(key: &str) -> [u8; FINGERPRINT_LEN] {
    let digest = Sha256::digest(key.as_bytes());
    let mut fp = [0u8; FINGERPRINT_LEN];
    fp.copy_from_slice(&digest[..FINGERPRINT_LEN]);
    fp
}

/// Processed marks of one consumer group on one stream, for direct use.
///
/// ```no_run
/// # async fn demo(conn: asdlc_runtime::RedisConnection) -> Result<(), asdlc_runtime::StreamError> {
/// use asdlc_runtime::{StreamKeys, idempotency::IdempotencyTracker};
/// let tracker = IdempotencyTracker::new(conn, StreamKeys::new("asdlc:events"), "hitl-handlers");
/// if tracker.mark_processed("gate-42@abc1234").await? {
///     // first time: advance the gate
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct IdempotencyTracker {
    conn: RedisConnection,
    keys: StreamKeys,
    group: String,
    marks: Arc<GroupMarks>,
}

impl IdempotencyTracker {
    /// The marks of `group` on the stream of `keys`, with the default layout (7-day TTL).
    pub fn new(conn: RedisConnection, keys: StreamKeys, group: &str) -> Self {
        let marks = GroupMarks::new(keys.marks_prefix(group), MarkLayout::default());
        IdempotencyTracker {
            conn,
            keys,
            group: group.to_owned(),
            marks,
        }
    }

    /// Uses `layout`: for a TTL other than 7 days, or the shards of a busier group
    /// ([`MarkLayout::for_rate`]). A bucket whose marks the group already laid out otherwise
    /// is read and written as they are (see [`MarkLayout`]).
    pub fn with_layout(mut self, layout: MarkLayout) -> Self {
        self.marks = GroupMarks::new(self.keys.marks_prefix(&self.group), layout);
        self
    }

    /// Whether `key` is marked processed.
    pub async fn is_processed(&self, key: &str) -> Result<bool, StreamError> {
        self.run(key, "check").await
    }

    /// Marks `key` processed, atomically with the check: returns `true` if this call marked
    /// it, `false` if it was already marked. Of many concurrent callers, exactly one gets
    /// `true`.
    pub async fn mark_processed(&self, key: &str) -> Result<bool, StreamError> {
        Ok(!self.run(key, "mark").await?)
    }

    /// Marks many keys processed in one round trip (per 1,000 keys), each atomically with its
    /// check: the answer says, key by key, whether this call marked it (`true`) or it was
    /// already marked (`false`). A key given twice is marked by its first occurrence.
    pub async fn mark_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<bool>, StreamError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(1000) {
            let fps: Vec<_> = chunk.iter().map(|k| fingerprint(k.as_ref())).collect();
            let mut inv = MARK_MANY.key(self.keys.stream());
            inv.clocked(
                self.marks.marks(
                    chunk
                        .iter()
                        .zip(&fps)
                        .map(|(k, fp)| (&fp[..], mark_floor(k.as_ref()))),
                ),
            );
            for fp in &fps {
                inv.arg(&fp[..]);
            }
            let marked: Vec<Marking> = inv
                .invoke_async(&mut conn)
                .await
                .map_err(StreamError::redis(self.keys.stream()))?;
            out.extend(marked.into_iter().map(|m| m == Marking::Marked));
        }
        Ok(out)
    }

    /// Whether the key was already processed (checked, and in mode `mark` marked if not).
    async fn run(&self, key: &str, mode: &str) -> Result<bool, StreamError> {
        let fp = fingerprint(key);
        let mut inv = MARK.key(self.keys.stream());
        inv.clocked(self.marks.marks([(&fp[..], mark_floor(key))]));
        inv.arg(&fp[..]).arg(mode);
        let mut conn = self.conn.clone();
        let found: Lookup = inv
            .invoke_async(&mut conn)
            .await
            .map_err(StreamError::redis(self.keys.stream()))?;
        Ok(found == Lookup::Processed)
    }
}

/// What the tracker script found for one key (tracker.lua: `1` or `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Already processed.
    Processed,
    /// Not processed (in mode `mark`: marked now).
    Unprocessed,
}

impl redis::FromRedisValue for Lookup {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        match v {
            redis::Value::Int(1) => Ok(Lookup::Processed),
            redis::Value::Int(0) => Ok(Lookup::Unprocessed),
            other => Err(crate::functions::unexpected(MARK, &other)),
        }
    }
}

/// What the mark-many script did with one key (tracker_many.lua: `1` or `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marking {
    /// This call marked it.
    Marked,
    /// It was already processed.
    AlreadyProcessed,
}

impl redis::FromRedisValue for Marking {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        match v {
            redis::Value::Int(1) => Ok(Marking::Marked),
            redis::Value::Int(0) => Ok(Marking::AlreadyProcessed),
            other => Err(crate::functions::unexpected(MARK_MANY, &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable() {
        assert_eq!(fingerprint("evt-1"), fingerprint("evt-1"));
        assert_ne!(fingerprint("evt-1"), fingerprint("evt-2"));
        // The first 12 bytes of SHA-256("").
        assert_eq!(
            fingerprint(""),
            [
                0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8
            ]
        );
    }
}
