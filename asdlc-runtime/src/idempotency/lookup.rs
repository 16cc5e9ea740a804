//! Which marks a call touches: the layout this process uses for each of a group's buckets
//! ([`GroupMarks`], following what the server stored), the marks section of a call for the
//! server's time ([`MarkSet`]), and how far back a key's lookup reads ([`mark_floor`]).

use std::sync::{Arc, Mutex, PoisonError};

use super::layout::{MarkLayout, shard_source};
use redis::RedisWrite;

use crate::functions::{ArgList, ClockedPart};

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
/// (`<shards>:<digits>`, comma-separated). The current bucket's hashes come one per item, in
/// the items' order (a hash shared by two items twice), since a call takes item n's hash
/// from its place instead of building its name (about a tenth of a begin and a commit's
/// server time); an older bucket's hashes once each.
#[derive(Debug, Clone)]
pub(crate) struct MarkSet {
    group: Arc<GroupMarks>,
    /// Each key's [`shard_source`], with the oldest time (ms) a mark of it can have been
    /// written.
    items: Vec<(u32, u64)>,
}

impl ClockedPart for MarkSet {
    fn render(&self, server_ms: u64, keys: &mut ArgList, args: &mut ArgList) {
        let group = &*self.group;
        let width = group.layout.width_ms();
        let bucket = server_ms / width;
        let deepest = bucket.saturating_sub(group.layout.lookback() - 1);
        // A key that says it was born after the server's now (a publisher's clock further
        // ahead than the margin, a made-up id) says nothing true about its age: every bucket.
        let oldest = |floor: u64| {
            let born = floor / width;
            if born > bucket {
                deepest
            } else {
                born.max(deepest)
            }
        };
        // Each key's oldest bucket to read, once.
        let items: Vec<(u32, u64)> = self
            .items
            .iter()
            .map(|&(source, floor)| (source, oldest(floor)))
            .collect();
        let mut layouts = String::new();
        if let Some(last) = items.iter().map(|&(_, from)| from).min() {
            let followed = group
                .followed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut shards = Vec::with_capacity(items.len());
            for b in (last..=bucket).rev() {
                let layout = group.layout_at(&followed, b);
                keys.write_arg_fmt(format_args!("{}{b}:layout", group.prefix));
                shards.clear();
                shards.extend(
                    items
                        .iter()
                        .filter(|&&(_, from)| from <= b)
                        .map(|&(source, _)| layout.shard(source)),
                );
                // The current bucket's hash of each item, in the items' order (so the call
                // finds item n's hash at its place, without naming it itself); an older
                // bucket's hashes once each.
                if b != bucket {
                    shards.sort_unstable();
                    shards.dedup();
                }
                let digits = layout.digits();
                for s in &shards {
                    keys.write_arg_fmt(format_args!("{}{b}:{s:0digits$x}", group.prefix));
                }
                if !layouts.is_empty() {
                    layouts.push(',');
                }
                layouts.push_str(&layout.name());
            }
        }
        args.write_arg(group.prefix.as_bytes());
        for n in [width, bucket, group.layout.ttl_ms()] {
            args.write_arg_fmt(format_args!("{n}"));
        }
        args.write_arg(layouts.as_bytes());
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
/// one hash for a fresh key instead of every bucket of the TTL; a key born after the
/// server's now, by its own account, is read in every bucket.
pub(crate) fn mark_floor(key: &str) -> u64 {
    crate::event::born_ms(key).map_or(0, |ms| ms.saturating_sub(BIRTH_MARGIN_MS))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rendered(set: &MarkSet, server_ms: u64) -> (Vec<String>, Vec<String>) {
        let (mut keys, mut args) = (ArgList::default(), ArgList::default());
        set.render(server_ms, &mut keys, &mut args);
        let text = |v: ArgList| {
            v.iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
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
        // key needs. In the current bucket, each item's hash at its place, in the items'
        // order (the call takes item n's from there); in older ones, each hash once.
        let other = [0u8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let set = g.marks([
            (&other[..], 3_600),
            (&fresh[..], 3_500),
            (&fresh[..], 3_000),
        ]);
        let (keys, _) = rendered(&set, 3_600);
        assert_eq!(
            keys,
            [
                "m:10:layout",
                "m:10:0006",
                "m:10:0005",
                "m:10:0005",
                "m:9:layout",
                "m:9:0005",
                "m:8:layout",
                "m:8:0005"
            ]
        );
        // Two keys of one shard, both of any age: the current bucket's hash at each one's
        // place, an older bucket's once.
        let twin = [0x40u8, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (keys, _) = rendered(&g.marks([(&fresh[..], 0), (&twin[..], 0)]), 3_600);
        assert_eq!(
            keys,
            [
                "m:10:layout",
                "m:10:0005",
                "m:10:0005",
                "m:9:layout",
                "m:9:0005",
                "m:8:layout",
                "m:8:0005"
            ]
        );
        // Born after the server's now, by its own account: every bucket, as for a key of any
        // age (a mark written when the server was at an earlier bucket is still found).
        let (keys, _) = rendered(&g.marks([(&other[..], 9_999)]), 3_600);
        assert_eq!(
            keys,
            [
                "m:10:layout",
                "m:10:0006",
                "m:9:layout",
                "m:9:0006",
                "m:8:layout",
                "m:8:0006"
            ]
        );
        // A call without keys reads no bucket.
        let (keys, args) = rendered(&g.marks([]), 3_600);
        assert!(keys.is_empty());
        assert_eq!(args, ["m:", "350", "10", "700", ""]);
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
