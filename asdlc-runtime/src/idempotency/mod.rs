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
//! **Lookups.** A mark can be in any bucket of the TTL: `buckets + 1` hashes (3 by default),
//! each one command inside the script, and commands inside scripts are the main cost of the
//! consumer's protocol on the server. But a key that says when it was born (a fresh
//! `evt-<UUIDv7>` key, a keyless entry's id) cannot have been processed before it existed, so
//! its lookup starts at the bucket of its birth (less a margin for clock differences): one
//! hash for nearly every fresh event. Keys of any age (operation keys) read every bucket.
//! The buckets are the server's, so every process agrees on them whatever its own clock says.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::DEFAULT_IDEMPOTENCY_TTL;
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::functions::{ClockedPart, MARK, MARK_MANY};
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

    /// The marks section of a call touching the marks of `items` (fingerprint, and the
    /// oldest time a mark of its key can have been written, see [`mark_floor`]): the mark
    /// hashes a lookup at the server's current time reads, declared in `KEYS`, and the layout's
    /// five arguments (prefix, width, bucket, ttl, shards) in `ARGV`. Each shard is declared
    /// once, back to the oldest bucket any of its keys needs.
    pub(crate) fn marks<'a>(
        &self,
        prefix: &str,
        items: impl IntoIterator<Item = (&'a [u8], u64)>,
    ) -> MarkSet {
        let mut shards: Vec<(u32, u64)> = items
            .into_iter()
            .map(|(fp, floor)| (self.shard_of(fp), floor))
            .collect();
        // Per shard, the oldest floor first: that entry is kept by the dedup.
        shards.sort_unstable();
        shards.dedup_by_key(|(shard, _)| *shard);
        MarkSet {
            layout: *self,
            prefix: prefix.to_owned(),
            shards,
        }
    }

    /// The shard of a fingerprint, as marks.lua computes it.
    fn shard_of(&self, fp: &[u8]) -> u32 {
        let high = u32::from(fp.first().copied().unwrap_or(0));
        let low = u32::from(fp.get(1).copied().unwrap_or(0));
        (high * 256 + low) % self.shards.max(1)
    }
}

/// The marks section of one call (see [`MarkLayout::marks`]), made for the server's time
/// when the call is sent.
#[derive(Debug, Clone)]
pub(crate) struct MarkSet {
    layout: MarkLayout,
    prefix: String,
    /// Each shard touched, with the oldest time (ms) a mark of its keys can have been written.
    shards: Vec<(u32, u64)>,
}

impl ClockedPart for MarkSet {
    fn render(&self, server_ms: u64, keys: &mut Vec<Vec<u8>>, args: &mut Vec<Vec<u8>>) {
        let width = self.layout.width_ms();
        let bucket = server_ms / width;
        let deepest = bucket.saturating_sub(self.layout.lookback() - 1);
        for &(shard, floor) in &self.shards {
            let oldest = (floor / width).clamp(deepest, bucket);
            for b in (oldest..=bucket).rev() {
                keys.push(format!("{}{b}:{shard:04x}", self.prefix).into_bytes());
            }
        }
        args.push(self.prefix.clone().into_bytes());
        for n in [
            width,
            bucket,
            self.layout.ttl_ms(),
            u64::from(self.layout.shards.max(1)),
        ] {
            args.push(n.to_string().into_bytes());
        }
    }
}

/// How far ahead of the server's clock a publisher's clock may be without a duplicate going
/// unnoticed: a key's birth time counts as this much earlier than it says.
const BIRTH_MARGIN_MS: u64 = 6 * 3_600_000;

/// The oldest time (ms since the epoch, by the server's clock) a processed mark of `key` can
/// have been written: nothing processes a key before it exists. A fresh key
/// (`evt-<UUIDv7>`, see [`crate::events::unique_idempotency_key`]) and a keyless entry's identity
/// (`entry:<id>`) say when they were made, less [`BIRTH_MARGIN_MS`] for clock differences;
/// any other key may be of any age (0). A lookup then reads the buckets from this time on:
/// one hash for a fresh key instead of every bucket of the TTL.
pub(crate) fn mark_floor(key: &str) -> u64 {
    let born = if let Some(uuid) = key.strip_prefix("evt-") {
        uuid::Uuid::try_parse(uuid)
            .ok()
            .filter(|u| u.get_version_num() == 7)
            .and_then(|u| u.get_timestamp())
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                secs * 1000 + u64::from(nanos / 1_000_000)
            })
    } else if let Some(id) = key.strip_prefix("entry:") {
        crate::streams::EntryId::parse(id).map(|id| id.ms)
    } else {
        None
    };
    born.map_or(0, |ms| ms.saturating_sub(BIRTH_MARGIN_MS))
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
            inv.clocked(
                self.layout.marks(
                    &self.prefix,
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
        inv.clocked(
            self.layout
                .marks(&self.prefix, [(&fp[..], mark_floor(key))]),
        );
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

    fn rendered(set: &MarkSet, server_ms: u64) -> (Vec<String>, Vec<String>) {
        let (mut keys, mut args) = (Vec::new(), Vec::new());
        set.render(server_ms, &mut keys, &mut args);
        let text = |v: Vec<Vec<u8>>| {
            v.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        };
        (text(keys), text(args))
    }

    #[test]
    fn a_fresh_key_is_looked_up_in_its_own_bucket_only() {
        let l = MarkLayout::with_ttl(Duration::from_millis(700)); // width 350, 3 buckets
        let fresh = [0u8, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (keys, args) = rendered(&l.marks("m:", [(&fresh[..], 3_500)]), 3_600);
        assert_eq!(keys, ["m:10:0005"]);
        assert_eq!(args, ["m:", "350", "10", "700", "16384"]);
        // Of any age: every bucket of the TTL, newest first.
        let (keys, _) = rendered(&l.marks("m:", [(&fresh[..], 0)]), 3_600);
        assert_eq!(keys, ["m:10:0005", "m:9:0005", "m:8:0005"]);
        // Born two buckets ago; a shard shared with a fresh key is read as deep as the older
        // key needs, and declared once.
        let other = [0u8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let set = l.marks(
            "m:",
            [
                (&fresh[..], 3_500),
                (&fresh[..], 3_000),
                (&other[..], 9_999),
            ],
        );
        let (keys, _) = rendered(&set, 3_600);
        assert_eq!(keys, ["m:10:0005", "m:9:0005", "m:8:0005", "m:10:0006"]);
    }

    #[test]
    fn keys_that_say_when_they_were_born_bound_their_lookup() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let fresh = mark_floor(&crate::events::unique_idempotency_key());
        assert!(
            fresh <= now - BIRTH_MARGIN_MS && fresh + BIRTH_MARGIN_MS + 60_000 > now,
            "{fresh} vs {now}"
        );
        assert_eq!(
            mark_floor("entry:1733000000000-7"),
            1_733_000_000_000 - BIRTH_MARGIN_MS
        );
        // Any other key, a UUID of another version, or a malformed one: of any age.
        for key in [
            "gate-42@abc1234",
            "evt-not-a-uuid",
            "evt-6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "entry:x",
            "emit-00112233445566778899aabbccddeeff",
        ] {
            assert_eq!(mark_floor(key), 0, "{key}");
        }
    }
}
