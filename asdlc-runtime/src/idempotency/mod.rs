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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::DEFAULT_IDEMPOTENCY_TTL;
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::functions::{ClockedPart, MARK, MARK_MANY};
use crate::keys::StreamKeys;

/// Bytes of SHA-256 kept as a key's fingerprint.
pub const FINGERPRINT_LEN: usize = 12;

/// The default layout's shards, and the fewest [`MarkLayout::for_rate`] gives: a bucket stays
/// compact up to about 2 million marks.
pub const DEFAULT_SHARDS: u32 = 16_384;

/// The most shards a layout has: 2²⁰ (1,048,576), named by five hex digits and taken from the
/// fingerprint's first three bytes. A bucket of this many shards stays compact up to about
/// 133 million marks.
pub const MAX_SHARDS: u32 = 1 << 20;

/// Marks a mark hash keeps in the compact encoding: the server's `hash-max-listpack-entries`
/// default of 128 fields, one of them the marker.
pub const COMPACT_MARKS_PER_HASH: u64 = 127;

/// The marks a hash gets on average, at most, at the rate [`MarkLayout::for_rate`] is given:
/// well under [`COMPACT_MARKS_PER_HASH`], since marks do not spread evenly (of hashes expecting
/// 100 marks, about 1 in 250 gets more than 127 and leaves the compact encoding).
const RATE_MARKS_PER_HASH: u64 = 100;

/// The fingerprint of an idempotency key: 96 bits, so a false "already processed" needs a
/// collision with probability about n²/2⁹⁷ (1e-11 at a billion marks).
pub fn fingerprint(key: &str) -> [u8; FINGERPRINT_LEN] {
    let digest = Sha256::digest(key.as_bytes());
    let mut fp = [0u8; FINGERPRINT_LEN];
    fp.copy_from_slice(&digest[..FINGERPRINT_LEN]);
    fp
}

/// How marks are bucketed and sharded.
///
/// Every process of a group should use the same layout; one that does not follows the
/// group's, bucket by bucket (see the [module](self) documentation). Pick it with
/// [`MarkLayout::for_rate`] (through [`Config::idempotency_rate`](crate::Config)) when a group
/// handles more than about 5 events a second; the default holds less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkLayout {
    /// How long a mark lives at least.
    pub ttl: Duration,
    /// How many time buckets a TTL spans (a mark lives up to `ttl / buckets` longer, and a
    /// check looks at `buckets + 1` hashes). Default 2.
    pub buckets: u32,
    /// How many hashes a bucket is spread over, 1 to [`MAX_SHARDS`] (a larger value counts as
    /// the maximum). Each hash stays compact up to [`COMPACT_MARKS_PER_HASH`] marks, so a
    /// bucket stays compact up to `shards * 127` marks: with the default [`DEFAULT_SHARDS`]
    /// (16,384), 2 million marks a bucket. Each hash costs about 200 bytes of its own, so
    /// shards far beyond the marks a bucket gets cost memory too. Up to 65,536 shards a
    /// shard is the fingerprint's first two bytes modulo `shards`, named by four hex digits;
    /// above, its first three bytes, by five.
    pub shards: u32,
}

impl Default for MarkLayout {
    fn default() -> Self {
        MarkLayout::with_ttl(DEFAULT_IDEMPOTENCY_TTL)
    }
}

impl MarkLayout {
    /// The default layout for `ttl`: 2 buckets, [`DEFAULT_SHARDS`] shards.
    pub fn with_ttl(ttl: Duration) -> Self {
        MarkLayout {
            ttl,
            buckets: 2,
            shards: DEFAULT_SHARDS,
        }
    }

    /// The layout for a group that marks up to `events_per_second` events a second on one
    /// stream (in multi-tenant mode: on its busiest tenant's stream), with marks kept `ttl`.
    ///
    /// Give the group's sustained rate at its busiest, averaged over a bucket (half the TTL,
    /// 3.5 days by default), not a burst's: a bucket's marks are what fills its hashes. The
    /// shards are a power of two with about 100 marks a hash at that rate (at most; well under
    /// the 127 a hash keeps compact), never fewer than the default [`DEFAULT_SHARDS`] and at
    /// most [`MAX_SHARDS`]: at the 7-day TTL, the default up to 5 events a second, then twice
    /// the shards for each doubling, up to the maximum at about 350 a second (beyond it
    /// hashes fill up, and from about 440 a second they outgrow the compact encoding again
    /// and each mark costs about twice as much: shorten the TTL, or raise the server's
    /// `hash-max-listpack-entries`).
    ///
    /// What it costs: nothing per event (a lookup reads as many hashes whatever the shard
    /// count); memory is about 18 bytes a mark at the rate given. Each hash also costs about
    /// 200 bytes of its own, shared by its marks: a rate set far too high leaves hashes
    /// nearly empty (at 10 marks a hash, about 35 bytes a mark), one set too low fills them
    /// past 127 marks, and they then take about twice the memory.
    ///
    /// ```
    /// use std::time::Duration;
    /// use asdlc_runtime::MarkLayout;
    /// let week = Duration::from_secs(7 * 24 * 3600);
    /// assert_eq!(MarkLayout::for_rate(week, 1), MarkLayout::with_ttl(week));
    /// assert_eq!(MarkLayout::for_rate(week, 100).shards, 1 << 19);
    /// ```
    pub fn for_rate(ttl: Duration, events_per_second: u64) -> Self {
        let layout = MarkLayout::with_ttl(ttl);
        let per_bucket = u128::from(events_per_second) * u128::from(layout.width_ms()) / 1000;
        let wanted = per_bucket
            .div_ceil(u128::from(RATE_MARKS_PER_HASH))
            .min(u128::from(MAX_SHARDS)) as u32;
        MarkLayout {
            shards: wanted.next_power_of_two().clamp(DEFAULT_SHARDS, MAX_SHARDS),
            ..layout
        }
    }

    /// How many marks a bucket of this layout keeps in the compact encoding:
    /// `shards * 127`.
    pub fn compact_marks_per_bucket(&self) -> u64 {
        u64::from(self.shard_count()) * COMPACT_MARKS_PER_HASH
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

    /// The shards in use: `shards`, from 1 to [`MAX_SHARDS`].
    fn shard_count(&self) -> u32 {
        self.shards.clamp(1, MAX_SHARDS)
    }

    /// The hex digits of a shard's name: 4 up to 65,536 shards, 5 above.
    fn digits(&self) -> usize {
        if self.shard_count() > 1 << 16 { 5 } else { 4 }
    }

    /// The layout's name as the server stores and compares it: `<shards>:<digits>`.
    fn name(&self) -> String {
        format!("{}:{}", self.shard_count(), self.digits())
    }

    /// The shard count of a stored layout's name, if this build lays marks out that way.
    fn parse_name(name: &str) -> Option<u32> {
        let (shards, digits) = name.split_once(':')?;
        let shards: u32 = shards.parse().ok()?;
        let layout = MarkLayout {
            shards,
            ..MarkLayout::default()
        };
        (layout.shard_count() == shards && digits == layout.digits().to_string()).then_some(shards)
    }

    /// The shard of a fingerprint whose [`shard_source`] is `source`, as marks.lua computes it.
    fn shard(&self, source: u32) -> u32 {
        let shards = self.shard_count();
        if shards > 1 << 16 {
            source % shards
        } else {
            (source & 0xffff) % shards
        }
    }
}

/// The bytes of a fingerprint its shard comes from, as one number: the first two bytes, and
/// the third above them. Layouts of up to 65,536 shards use the first two only, so their
/// shards are those the two-byte layouts always had.
fn shard_source(fp: &[u8]) -> u32 {
    let byte = |i: usize| u32::from(fp.get(i).copied().unwrap_or(0));
    (byte(2) << 16) | (byte(0) << 8) | byte(1)
}

/// The processed marks of one group on one stream as this process uses them: the configured
/// layout, and the buckets the server says use another (each keeps the layout its first mark
/// was written with). Shared by every call of the group on the stream, so what one call
/// learns, the next uses.
#[derive(Debug)]
pub(crate) struct GroupMarks {
    prefix: String,
    layout: MarkLayout,
    /// Buckets whose stored layout is not the configured one, with their shard counts.
    followed: Mutex<Vec<(u64, u32)>>,
}

impl GroupMarks {
    /// The marks under `prefix` (see [`StreamKeys::marks_prefix`]), laid out by `layout`.
    pub(crate) fn new(prefix: String, layout: MarkLayout) -> Arc<Self> {
        Arc::new(GroupMarks {
            prefix,
            layout,
            followed: Mutex::new(Vec::new()),
        })
    }

    /// The marks section of a call touching the marks of `items` (fingerprint, and the
    /// oldest time a mark of its key can have been written, see [`mark_floor`]): see
    /// [`MarkSet`].
    pub(crate) fn marks<'a>(
        self: &Arc<Self>,
        items: impl IntoIterator<Item = (&'a [u8], u64)>,
    ) -> MarkSet {
        MarkSet {
            group: Arc::clone(self),
            items: items
                .into_iter()
                .map(|(fp, floor)| (shard_source(fp), floor))
                .collect(),
        }
    }

    /// The layout of `bucket`, as far as this process knows.
    fn layout_at(&self, followed: &[(u64, u32)], bucket: u64) -> MarkLayout {
        let shards = followed
            .iter()
            .find(|(b, _)| *b == bucket)
            .map_or(self.layout.shards, |(_, s)| *s);
        MarkLayout {
            shards,
            ..self.layout
        }
    }

    /// Follows an `ASDLC_LAYOUT` refusal whose detail is `stored` (`<bucket>=<layout> ...`,
    /// the stored layout of each bucket the call assumed another for, then whatever the
    /// server adds: Redis 7.0 names the script): true if every layout it names is one this
    /// build can use, and the call is to be made again.
    fn follow(&self, stored: &str) -> bool {
        let stored: Option<Vec<(u64, u32)>> = stored
            .split_whitespace()
            .take_while(|item| item.contains('='))
            .map(|item| {
                let (bucket, name) = item.split_once('=')?;
                Some((bucket.parse().ok()?, MarkLayout::parse_name(name)?))
            })
            .collect();
        let Some(stored) = stored.filter(|s| !s.is_empty()) else {
            return false;
        };
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        for &(bucket, shards) in &stored {
            tracing::warn!(
                marks = %self.prefix,
                bucket,
                group_shards = shards,
                configured_shards = self.layout.shard_count(),
                "this group's processed marks in this bucket are laid out in {shards} shards, \
                 this process is set for {}: following the group's layout (a process set for \
                 another rate; a changed rate takes effect from the first bucket begun once \
                 every process runs with it)",
                self.layout.shard_count()
            );
            followed.retain(|(b, _)| *b != bucket);
            if shards != self.layout.shard_count() {
                followed.push((bucket, shards));
            }
        }
        // Buckets no lookup reads any more are forgotten.
        if let Some(newest) = followed.iter().map(|(b, _)| *b).max() {
            let lookback = self.layout.lookback();
            followed.retain(|(b, _)| b + lookback >= newest);
        }
        true
    }
}

/// The marks section of one call (see [`GroupMarks::marks`]), made for the server's time
/// when the call is sent: for each bucket the call reads (the current one, and older ones
/// back to the oldest any of its keys needs), the bucket's layout key and the mark hashes of
/// its keys, declared in `KEYS`; in `ARGV`, the layout's five arguments: prefix, width,
/// bucket, ttl, and the layout assumed for each bucket read, newest first
/// (`<shards>:<digits>`, comma-separated). Each hash is declared once.
#[derive(Debug, Clone)]
pub(crate) struct MarkSet {
    group: Arc<GroupMarks>,
    /// Each key's [`shard_source`], with the oldest time (ms) a mark of it can have been
    /// written.
    items: Vec<(u32, u64)>,
}

impl ClockedPart for MarkSet {
    fn render(&self, server_ms: u64, keys: &mut Vec<Vec<u8>>, args: &mut Vec<Vec<u8>>) {
        let group = &*self.group;
        let width = group.layout.width_ms();
        let bucket = server_ms / width;
        let deepest = bucket.saturating_sub(group.layout.lookback() - 1);
        let oldest = |floor: u64| (floor / width).clamp(deepest, bucket);
        let mut layouts = String::new();
        if let Some(last) = self.items.iter().map(|&(_, floor)| oldest(floor)).min() {
            let followed = group
                .followed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut shards = Vec::with_capacity(self.items.len());
            for b in (last..=bucket).rev() {
                let layout = group.layout_at(&followed, b);
                keys.push(format!("{}{b}:layout", group.prefix).into_bytes());
                shards.clear();
                shards.extend(
                    self.items
                        .iter()
                        .filter(|&&(_, floor)| oldest(floor) <= b)
                        .map(|&(source, _)| layout.shard(source)),
                );
                shards.sort_unstable();
                shards.dedup();
                let digits = layout.digits();
                for s in &shards {
                    keys.push(format!("{}{b}:{s:0digits$x}", group.prefix).into_bytes());
                }
                if !layouts.is_empty() {
                    layouts.push(',');
                }
                layouts.push_str(&layout.name());
            }
        }
        args.push(group.prefix.clone().into_bytes());
        for n in [width, bucket, group.layout.ttl_ms()] {
            args.push(n.to_string().into_bytes());
        }
        args.push(layouts.into_bytes());
    }

    fn follow(&self, refusal: &redis::RedisError) -> bool {
        refusal.code() == Some("ASDLC_LAYOUT") && self.group.follow(refusal.detail().unwrap_or(""))
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
        // Width 350, 3 buckets.
        let g = GroupMarks::new(
            "m:".into(),
            MarkLayout::with_ttl(Duration::from_millis(700)),
        );
        let fresh = [0u8, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (keys, args) = rendered(&g.marks([(&fresh[..], 3_500)]), 3_600);
        assert_eq!(keys, ["m:10:layout", "m:10:0005"]);
        assert_eq!(args, ["m:", "350", "10", "700", "16384:4"]);
        // Of any age: every bucket of the TTL, newest first, each with its layout.
        let (keys, args) = rendered(&g.marks([(&fresh[..], 0)]), 3_600);
        assert_eq!(
            keys,
            [
                "m:10:layout",
                "m:10:0005",
                "m:9:layout",
                "m:9:0005",
                "m:8:layout",
                "m:8:0005"
            ]
        );
        assert_eq!(args[4], "16384:4,16384:4,16384:4");
        // Born two buckets ago; a shard shared with a fresh key is read as deep as the older
        // key needs, and declared once.
        let other = [0u8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let set = g.marks([
            (&fresh[..], 3_500),
            (&fresh[..], 3_000),
            (&other[..], 9_999),
        ]);
        let (keys, _) = rendered(&set, 3_600);
        assert_eq!(
            keys,
            [
                "m:10:layout",
                "m:10:0005",
                "m:10:0006",
                "m:9:layout",
                "m:9:0005",
                "m:8:layout",
                "m:8:0005"
            ]
        );
        // A call without keys reads no bucket.
        let (keys, args) = rendered(&g.marks([]), 3_600);
        assert!(keys.is_empty());
        assert_eq!(args, ["m:", "350", "10", "700", ""]);
    }

    #[test]
    fn a_shard_is_the_first_two_bytes_up_to_65536_shards_and_three_above() {
        let fp = [0x12u8, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0, 0, 0];
        let source = shard_source(&fp);
        assert_eq!(source, 0x56_1234);
        let at = |shards: u32| {
            let l = MarkLayout {
                shards,
                ..MarkLayout::default()
            };
            format!("{:0w$x}", l.shard(source), w = l.digits())
        };
        // The shards the two-byte layouts always had.
        assert_eq!(at(16_384), "1234");
        assert_eq!(at(65_536), "1234");
        assert_eq!(at(256), "0034");
        assert_eq!(at(1000), format!("{:04x}", 0x1234 % 1000));
        assert_eq!(at(1), "0000");
        // Above, the third byte too, in five digits.
        assert_eq!(at(1 << 17), "01234");
        assert_eq!(at(1 << 20), "61234");
        assert_eq!(at(100_000), format!("{:05x}", 0x56_1234 % 100_000));
        // Out of range: 0 counts as 1, more than the maximum as the maximum.
        assert_eq!(at(0), "0000");
        assert_eq!(at(u32::MAX), "61234");
        // Every shard of a layout is reached, none beyond it.
        let l = MarkLayout {
            shards: 1 << 18,
            ..MarkLayout::default()
        };
        let mut seen = vec![false; 1 << 18];
        for i in 0..(1u32 << 24) {
            let b = i.to_be_bytes();
            seen[l.shard(shard_source(&[b[2], b[3], b[1]])) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn for_rate_gives_about_100_marks_a_hash_at_the_rate() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let shards = |ttl, rate| MarkLayout::for_rate(ttl, rate).shards;
        // The default up to 5 events a second (1.5 million marks a bucket of 3.5 days)...
        assert_eq!(MarkLayout::for_rate(week, 0), MarkLayout::with_ttl(week));
        assert_eq!(shards(week, 5), DEFAULT_SHARDS);
        assert_eq!(shards(week, 6), 1 << 15);
        // ...then twice the shards for each doubling...
        assert_eq!(shards(week, 34), 1 << 17);
        assert_eq!(shards(week, 166), 1 << 19);
        assert_eq!(shards(week, 346), MAX_SHARDS);
        // ...up to the maximum.
        assert_eq!(shards(week, 347), MAX_SHARDS);
        assert_eq!(shards(week, u64::MAX), MAX_SHARDS);
        // A shorter TTL, shorter buckets: fewer marks each.
        assert_eq!(shards(Duration::from_secs(24 * 3600), 346), 1 << 18);
        assert_eq!(MarkLayout::for_rate(week, 100).ttl, week);
        for rate in (0..400).chain([1000, 5000]) {
            let l = MarkLayout::for_rate(week, rate);
            let per_bucket = rate * l.width_ms() / 1000;
            assert!(l.shards.is_power_of_two(), "{rate}");
            assert!(
                per_bucket <= u64::from(l.shards) * 100 || l.shards == MAX_SHARDS,
                "{rate}: {per_bucket} marks in {} shards",
                l.shards
            );
            assert!(
                l.shards == DEFAULT_SHARDS || per_bucket > u64::from(l.shards) * 50,
                "{rate}: {per_bucket} marks in {} shards, half would do",
                l.shards
            );
        }
        assert_eq!(
            MarkLayout::with_ttl(week).compact_marks_per_bucket(),
            16_384 * 127
        );
    }

    #[test]
    fn a_layout_is_named_by_its_shards_and_digits() {
        let named = |shards: u32| {
            MarkLayout {
                shards,
                ..MarkLayout::default()
            }
            .name()
        };
        assert_eq!(named(16_384), "16384:4");
        assert_eq!(named(65_536), "65536:4");
        assert_eq!(named(65_537), "65537:5");
        assert_eq!(named(1 << 20), "1048576:5");
        assert_eq!(named(0), "1:4");
        for shards in [1, 16_384, 65_536, 65_537, 1 << 20] {
            assert_eq!(MarkLayout::parse_name(&named(shards)), Some(shards));
        }
        for other in [
            "16384:5",
            "131072:4",
            "0:4",
            "2097152:6",
            "16384",
            "x:4",
            "",
        ] {
            assert_eq!(MarkLayout::parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_refused_call_follows_the_stored_layout_of_each_bucket_it_names() {
        let g = GroupMarks::new(
            "m:".into(),
            MarkLayout::with_ttl(Duration::from_millis(700)),
        );
        let fp = [0x12u8, 0x34, 0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(g.follow("9=131072:5"));
        let (keys, args) = rendered(&g.marks([(&fp[..], 0)]), 3_600);
        assert_eq!(
            keys,
            [
                "m:10:layout",
                "m:10:1234",
                "m:9:layout",
                "m:9:01234",
                "m:8:layout",
                "m:8:1234"
            ]
        );
        assert_eq!(args[4], "16384:4,131072:5,16384:4");
        // Several at once; one back to the configured layout is no longer followed.
        assert!(g.follow("10=1048576:5 9=16384:4"));
        let (_, args) = rendered(&g.marks([(&fp[..], 0)]), 3_600);
        assert_eq!(args[4], "1048576:5,16384:4,16384:4");
        // What the server adds after the layouts is not part of them.
        assert!(g.follow("10=1048576:5 script: asdlc_1_mark, on @user_function:158."));
        // Buckets no lookup reads any more are forgotten.
        assert!(g.follow("14=131072:5"));
        assert_eq!(*g.followed.lock().unwrap(), [(14, 131_072)]);
        // A layout this build cannot use is not followed, nor is anything else of that call.
        for stored in ["", "10=16384:5", "10=4194304:6", "10:16384:4", "x=16384:4"] {
            assert!(!g.follow(stored), "{stored}");
        }
        assert!(!g.follow("15=65536:4 16=16384:9"));
        assert!(!g.follow("script: asdlc_1_mark, on @user_function:158. 15=65536:4"));
        assert_eq!(*g.followed.lock().unwrap(), [(14, 131_072)]);
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
