//! Where processed marks live: the time buckets and shards of a group's mark hashes
//! ([`MarkLayout`]), its shard count following the rate it must hold, and a layout's name as a
//! bucket stores it.

use crate::config::DEFAULT_IDEMPOTENCY_TTL;
use std::time::Duration;

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

/// How marks are bucketed and sharded.
///
/// Every process of a group should use the same layout; one that does not follows the
/// group's, bucket by bucket (see the [module](crate::idempotency) documentation). Pick it with
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
    pub(super) fn shard_count(&self) -> u32 {
        self.shards.clamp(1, MAX_SHARDS)
    }

    /// The hex digits of a shard's name: 4 up to 65,536 shards, 5 above.
    pub(super) fn digits(&self) -> usize {
        if self.shard_count() > 1 << 16 { 5 } else { 4 }
    }

    /// The layout's name as the server stores and compares it: `<shards>:<digits>`.
    pub(super) fn name(&self) -> String {
        format!("{}:{}", self.shard_count(), self.digits())
    }

    /// The shard count of a stored layout's name, if this build lays marks out that way.
    pub(super) fn parse_name(name: &str) -> Option<u32> {
        let (shards, digits) = name.split_once(':')?;
        let shards: u32 = shards.parse().ok()?;
        let layout = MarkLayout {
            shards,
            ..MarkLayout::default()
        };
        (layout.shard_count() == shards && digits == layout.digits().to_string()).then_some(shards)
    }

    /// The shard of a fingerprint whose [`shard_source`] is `source`, as marks.lua computes it.
    pub(super) fn shard(&self, source: u32) -> u32 {
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
pub(super) fn shard_source(fp: &[u8]) -> u32 {
    let byte = |i: usize| u32::from(fp.get(i).copied().unwrap_or(0));
    (byte(2) << 16) | (byte(0) << 8) | byte(1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
