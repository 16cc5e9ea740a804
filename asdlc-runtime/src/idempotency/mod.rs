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
//! 96 bits of its SHA-256) stored as a field of a small hash, bucketed by time and sharded by
//! fingerprint (see `marks.lua`). Keeping hashes small keeps them in Redis's listpack
//! encoding, which costs about 20 to 40 bytes per mark where a key per mark costs about 100 to
//! 160. A mark lives at least the TTL (default 7 days) and at most one bucket (by default
//! TTL / 2) longer.
//!
//! **Lookups.** A check looks at every bucket a live mark can be in: `buckets + 1` hashes (3
//! by default). Each is one command inside the script, and commands inside scripts are the
//! main cost of the consumer's protocol on the server, so the default trades a longer
//! retention (7 to 10.5 days instead of 7 to 8 with 7 buckets, about 17% more marks kept on
//! average) for checks that cost 3 commands instead of 8.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::DEFAULT_IDEMPOTENCY_TTL;
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::functions::{Call, MARK, MARK_MANY};
use crate::keys::StreamKeys;

/// Bytes of SHA-256 kept as a key's fingerprint.
pub const FINGERPRINT_LEN: usize = 12;

/// The fingerprint of an idempotency key: 96 bits, so a false "already processed" needs a
/// collision with probability about n²/2⁹⁷ (1e-11 at a billion marks).
pub fn fingerprint(key: &str) -> [u8; FINGERPRINT_LEN] {
    let digest = Sha256::digest(key.as_bytes());
    let mut fp = [0u8; FINGERPRINT_LEN];
    fp.copy_from_slice(&digest[..FINGERPRINT_LEN]);
    fp
}

/// How marks are bucketed and sharded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkLayout {
    /// How long a mark lives at least.
    pub ttl: Duration,
    /// How many time buckets a TTL spans (a mark lives up to `ttl / buckets` longer, and a
    /// check looks at `buckets + 1` hashes). Default 2.
    pub buckets: u32,
    /// How many hashes a bucket is spread over. Each hash stays compact up to 127 marks (the
    /// server's `hash-max-listpack-entries` default of 128 fields, one of them a marker), so a
    /// bucket stays compact up to `shards * 127` marks: with the default 16384 shards, 2
    /// million marks a bucket.
    pub shards: u32,
}

impl Default for MarkLayout {
    fn default() -> Self {
        MarkLayout::with_ttl(DEFAULT_IDEMPOTENCY_TTL)
    }
}

impl MarkLayout {
    /// The default layout for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        MarkLayout {
            ttl,
            buckets: 2,
            shards: 16384,
        }
    }

    pub(crate) fn ttl_ms(&self) -> u64 {
        (self.ttl.as_millis() as u64).max(1)
    }

    pub(crate) fn width_ms(&self) -> u64 {
        (self.ttl_ms() / u64::from(self.buckets.max(1))).max(1)
    }

    pub(crate) fn lookback(&self) -> u64 {
        self.ttl_ms().div_ceil(self.width_ms()) + 1
    }

    /// Adds the layout arguments every mark function takes: prefix, width, nbuckets, ttl,
    /// shards.
    pub(crate) fn script_args(&self, prefix: &str, call: &mut Call) {
        call.arg(prefix)
            .arg(self.width_ms())
            .arg(self.lookback())
            .arg(self.ttl_ms())
            .arg(self.shards.max(1));
    }

    /// Declares the mark hashes a call may touch for `fps`: the buckets a lookup at this
    /// moment reads, by this process's clock, and one more on each side, so a server whose
    /// clock is up to one bucket (by default 3.5 days) ahead or behind finds its buckets
    /// among them. Each shard is declared once.
    pub(crate) fn mark_keys<'a>(
        &self,
        prefix: &str,
        fps: impl IntoIterator<Item = &'a [u8]>,
        call: &mut Call,
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let bucket = now / self.width_ms();
        let first = bucket + 1;
        let last = bucket.saturating_sub(self.lookback());
        let mut shards: Vec<u32> = fps
            .into_iter()
            .map(|fp| self.shard_of(fp))
            .collect::<Vec<_>>();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            for b in (last..=first).rev() {
                call.key(format!("{prefix}{b}:{shard:04x}"));
            }
        }
    }

    /// The shard of a fingerprint, as marks.lua computes it.
    fn shard_of(&self, fp: &[u8]) -> u32 {
        let high = u32::from(fp.first().copied().unwrap_or(0));
        let low = u32::from(fp.get(1).copied().unwrap_or(0));
        (high * 256 + low) % self.shards.max(1)
    }
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
    prefix: String,
    layout: MarkLayout,
}

impl IdempotencyTracker {
    /// The marks of `group` on the stream of `keys`, with the default 7-day TTL.
    pub fn new(conn: RedisConnection, keys: StreamKeys, group: &str) -> Self {
        let prefix = keys.marks_prefix(group);
        IdempotencyTracker {
            conn,
            keys,
            prefix,
            layout: MarkLayout::default(),
        }
    }

    /// Uses `layout` (for a TTL other than 7 days, say).
    pub fn with_layout(mut self, layout: MarkLayout) -> Self {
        self.layout = layout;
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
            self.layout
                .mark_keys(&self.prefix, fps.iter().map(|f| &f[..]), &mut inv);
            self.layout.script_args(&self.prefix, &mut inv);
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
        self.layout.mark_keys(&self.prefix, [&fp[..]], &mut inv);
        self.layout.script_args(&self.prefix, &mut inv);
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

    #[test]
    fn layout_covers_the_ttl() {
        let l = MarkLayout::default();
        assert_eq!(l.width_ms(), 84 * 3600 * 1000);
        assert_eq!(l.lookback(), 3);
        let short = MarkLayout::with_ttl(Duration::from_millis(700));
        assert_eq!(short.width_ms(), 350);
        assert_eq!(short.lookback(), 3);
        let fine = MarkLayout {
            buckets: 7,
            ..MarkLayout::with_ttl(Duration::from_millis(700))
        };
        assert_eq!((fine.width_ms(), fine.lookback()), (100, 8));
    }
}
