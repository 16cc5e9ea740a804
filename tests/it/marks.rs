//! The processed marks' layout against a real server and the cluster: marks laid out for a
//! rate are found again; a tracker or a consumer set for another rate than its group follows
//! the layout the group's marks have (and a duplicate across them is still found); a call
//! assuming another layout is refused before it writes anything; a changed rate takes effect
//! from the next bucket. The hashes a mark lands in are named here from the fingerprint, as
//! the layout documents them, and looked up by name.

use std::time::Duration;

use crate::common::*;
use asdlc::event::unique_idempotency_key;
use asdlc::idempotency::fingerprint;
use asdlc::{
    Config, EventType, IdempotencyTracker, MarkLayout, Publisher, RedisConnection, StreamKeys,
    get_stream_info,
};

const WAIT: Duration = Duration::from_secs(15);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// The server's clock, in ms.
async fn server_ms(conn: &mut RedisConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1000 + micros / 1000
}

fn width_ms(layout: &MarkLayout) -> u64 {
    layout.ttl.as_millis() as u64 / u64::from(layout.buckets)
}

/// The current bucket of `layout`, by the server's clock.
async fn bucket_now(conn: &mut RedisConnection, layout: &MarkLayout) -> u64 {
    server_ms(conn).await / width_ms(layout)
}

/// The hash the mark of `key` is in, in `bucket` of a layout of `shards` shards.
fn mark_hash(prefix: &str, bucket: u64, shards: u32, key: &str) -> String {
    crate::common::mark_hash_of(prefix, bucket, shards, &fingerprint(key))
}

/// Whether the mark of `key` is in the hash `hash`.
async fn marked_in(conn: &mut RedisConnection, hash: &str, key: &str) -> bool {
    redis::cmd("HEXISTS")
        .arg(hash)
        .arg(&fingerprint(key)[..])
        .query_async(conn)
        .await
        .unwrap()
}

/// The layout stored for `bucket` under `prefix`.
async fn stored_layout(conn: &mut RedisConnection, prefix: &str, bucket: u64) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("{prefix}{bucket}:layout"))
        .query_async(conn)
        .await
        .unwrap()
}

/// Marks of a tracker whose layout is sized for 1,000 events a second (2^20 shards, five
/// digits): each in the hash the layout names, found again by the tracker and by another
/// one of that layout, so a second mark of each is refused; the bucket's layout stored.
async fn marks_laid_out_for_a_rate_are_found_again(target: Target, stream: &str) {
    let mut conn = target.conn().await;
    let keys = StreamKeys::new(stream);
    let layout = MarkLayout::for_rate(WEEK, 1000);
    assert_eq!(layout.shards, 1 << 20);
    let tracker = IdempotencyTracker::new(conn.clone(), keys.clone(), "g").with_layout(layout);
    // Fresh keys (looked up in their own bucket) and keys of any age (in every bucket).
    let all: Vec<String> = (0..400)
        .map(|_| unique_idempotency_key())
        .chain((0..400).map(|i| format!("op-{i}@abc1234")))
        .collect();
    assert!(tracker.mark_many(&all).await.unwrap().iter().all(|m| *m));
    assert!(
        tracker.mark_many(&all).await.unwrap().iter().all(|m| !*m),
        "every key found again"
    );
    for k in all.iter().step_by(40) {
        assert!(tracker.is_processed(k).await.unwrap(), "{k}");
        assert!(!tracker.mark_processed(k).await.unwrap(), "{k}");
    }
    let prefix = keys.marks_prefix("g");
    let bucket = bucket_now(&mut conn, &layout).await;
    for k in all.iter().step_by(20) {
        let hash = mark_hash(&prefix, bucket, 1 << 20, k);
        assert!(marked_in(&mut conn, &hash, k).await, "{k} in {hash}");
    }
    assert_eq!(
        stored_layout(&mut conn, &prefix, bucket).await.as_deref(),
        Some("1048576:5")
    );
    let other = IdempotencyTracker::new(target.conn().await, keys, "g").with_layout(layout);
    assert!(other.mark_many(&all).await.unwrap().iter().all(|m| !*m));
    assert!(!other.mark_processed("op-7@abc1234").await.unwrap());
}

#[tokio::test]
async fn marks_laid_out_for_a_rate_are_found_again_on_a_server() {
    marks_laid_out_for_a_rate_are_found_again(Target::server(), "asdlc:events").await;
}

#[tokio::test]
async fn marks_laid_out_for_a_rate_are_found_again_on_a_cluster() {
    marks_laid_out_for_a_rate_are_found_again(Target::cluster(), "cl-rate-marks:events").await;
}

/// A tracker of the default layout marks first; a second tracker of the group, set for
/// 1,000 events a second, follows the group's layout: it finds the first one's marks, and
/// the first finds its marks, in the default layout's hashes only.
async fn a_tracker_set_for_another_rate_follows_the_groups_layout(target: Target, stream: &str) {
    let mut conn = target.conn().await;
    let keys = StreamKeys::new(stream);
    let first = IdempotencyTracker::new(conn.clone(), keys.clone(), "g");
    assert!(first.mark_processed("op-1@abc1234").await.unwrap());
    let busy = MarkLayout::for_rate(WEEK, 1000);
    let second = IdempotencyTracker::new(target.conn().await, keys.clone(), "g").with_layout(busy);
    // A duplicate across them is found...
    assert!(!second.mark_processed("op-1@abc1234").await.unwrap());
    assert!(second.is_processed("op-1@abc1234").await.unwrap());
    // ...both ways.
    assert!(second.mark_processed("op-2@abc1234").await.unwrap());
    assert!(!first.mark_processed("op-2@abc1234").await.unwrap());
    let fresh = [unique_idempotency_key(), unique_idempotency_key()];
    assert_eq!(second.mark_many(&fresh).await.unwrap(), [true, true]);
    assert_eq!(first.mark_many(&fresh).await.unwrap(), [false, false]);
    // The group's layout is the default's, and only its hashes were written.
    let prefix = keys.marks_prefix("g");
    let bucket = bucket_now(&mut conn, &busy).await;
    assert_eq!(
        stored_layout(&mut conn, &prefix, bucket).await.as_deref(),
        Some("16384:4")
    );
    for k in ["op-1@abc1234", "op-2@abc1234", &fresh[0], &fresh[1]] {
        let own = mark_hash(&prefix, bucket, 16_384, k);
        assert!(marked_in(&mut conn, &own, k).await, "{k} in {own}");
        let busy_hash = mark_hash(&prefix, bucket, 1 << 20, k);
        let exists: bool = redis::cmd("EXISTS")
            .arg(&busy_hash)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "{busy_hash} written");
    }
}

#[tokio::test]
async fn a_tracker_set_for_another_rate_follows_the_groups_layout_on_a_server() {
    a_tracker_set_for_another_rate_follows_the_groups_layout(Target::server(), "asdlc:events")
        .await;
}

#[tokio::test]
async fn a_tracker_set_for_another_rate_follows_the_groups_layout_on_a_cluster() {
    a_tracker_set_for_another_rate_follows_the_groups_layout(
        Target::cluster(),
        "cl-follow-marks:events",
    )
    .await;
}

/// Waits until `c` has settled `n` entries in all (handled or skipped as duplicates) and
/// nothing is pending.
async fn settled(conn: &RedisConnection, c: &asdlc::EventConsumer, n: u64) {
    eventually(WAIT, "entries settled", || {
        let mut conn = conn.clone();
        let c = c.clone();
        async move {
            let info = get_stream_info(&mut conn, "asdlc:events").await.unwrap();
            c.stats().processed + c.stats().duplicates == n && info.total_pending() == 0
        }
    })
    .await;
}

#[tokio::test]
async fn a_consumer_set_for_another_rate_follows_its_groups_layout() {
    let s = server();
    let mut conn = conn(&s).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    let group = "development-handlers";
    // The group's first consumer, of the default layout, handles an event.
    let e = event(EventType::PatchApplied, "s1");
    p.publish(&e).await.unwrap();
    let h1 = TestHandler::all("h");
    let c1 = consumer_for(&config(&s), group, "w1", &h1).await;
    let run = spawn(&c1).await;
    settled(&conn, &c1, 1).await;
    c1.stop();
    run.await.unwrap().unwrap();
    assert_eq!(h1.count(), 1);
    // A consumer set for 1,000 events a second takes over: the copy is a duplicate to it.
    let busy = Config {
        idempotency_rate: Some(1000),
        ..config(&s)
    };
    assert_eq!(busy.mark_layout().shards, 1 << 20);
    p.publish(&e).await.unwrap();
    let h2 = TestHandler::all("h");
    let c2 = consumer_for(&busy, group, "w2", &h2).await;
    let run = spawn(&c2).await;
    settled(&conn, &c2, 1).await;
    assert_eq!(h2.count(), 0, "the copy was found a duplicate");
    assert_eq!(c2.stats().duplicates, 1);
    // What it handles, it marks in the group's layout, where the first consumer finds it.
    let e2 = event(EventType::PatchApplied, "s2");
    p.publish(&e2).await.unwrap();
    settled(&conn, &c2, 2).await;
    assert_eq!(h2.count(), 1);
    c2.stop();
    run.await.unwrap().unwrap();
    let prefix = StreamKeys::new("asdlc:events").marks_prefix(group);
    let bucket = bucket_now(&mut conn, &busy.mark_layout()).await;
    assert_eq!(
        stored_layout(&mut conn, &prefix, bucket).await.as_deref(),
        Some("16384:4")
    );
    let key2 = e2.idempotency_key.clone().unwrap();
    let hash = mark_hash(&prefix, bucket, 16_384, &key2);
    assert!(marked_in(&mut conn, &hash, &key2).await, "{key2} in {hash}");
    p.publish(&e2).await.unwrap();
    let h3 = TestHandler::all("h");
    let c3 = consumer_for(&config(&s), group, "w3", &h3).await;
    let run = spawn(&c3).await;
    settled(&conn, &c3, 1).await;
    assert_eq!((h3.count(), c3.stats().duplicates), (0, 1));
    c3.stop();
    run.await.unwrap().unwrap();
}

/// The marks section of a call made by hand: the layout key and the mark hash of `key` in
/// `bucket` under `layout`, and the five layout arguments, the layout named `claimed`.
struct Section {
    keys: Vec<String>,
    args: Vec<String>,
}

fn section(prefix: &str, layout: &MarkLayout, bucket: u64, claimed: &str, key: &str) -> Section {
    Section {
        keys: vec![
            format!("{prefix}{bucket}:layout"),
            mark_hash(prefix, bucket, layout.shards, key),
        ],
        args: vec![
            prefix.to_owned(),
            width_ms(layout).to_string(),
            bucket.to_string(),
            (layout.ttl.as_millis() as u64).to_string(),
            claimed.to_owned(),
        ],
    }
}

/// `FCALL` of the protocol's function `step` with `keys` and `args`.
fn fcall(step: &str, keys: &[String], args: Vec<Vec<u8>>) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(format!("{}_{step}", asdlc::functions::library_name()))
        .arg(keys.len())
        .arg(keys);
    for a in args {
        cmd.arg(a);
    }
    cmd
}

fn text(args: &[String]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.clone().into_bytes()).collect()
}

/// Every key of the server with its type and contents, to compare before and after.
async fn snapshot(conn: &mut RedisConnection) -> Vec<(String, Vec<u8>)> {
    let mut keys = all_keys(conn).await;
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&k).query_async(conn).await.unwrap();
        out.push((k, dump));
    }
    out
}

#[tokio::test]
async fn a_call_assuming_another_layout_is_refused_before_it_writes() {
    let s = server();
    let mut conn = conn(&s).await;
    let keys = StreamKeys::new("asdlc:events");
    let group = "g";
    let prefix = keys.marks_prefix(group);
    // The group's bucket gets the default layout; an entry is pending for the begin and
    // commit steps.
    let tracker = IdempotencyTracker::new(conn.clone(), keys.clone(), group);
    assert!(tracker.mark_processed("op-0@abc1234").await.unwrap());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.stream())
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let id: String = redis::cmd("XADD")
        .arg(keys.stream())
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(keys.stream())
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let busy = MarkLayout::for_rate(WEEK, 1000);
    let bucket = bucket_now(&mut conn, &busy).await;
    let key = "op-1@abc1234";
    let fp = fingerprint(key).to_vec();
    let lease = keys.lease_prefix(group).trim_end_matches(':').to_owned();
    let before = snapshot(&mut conn).await;
    let wrong = section(&prefix, &busy, bucket, "1048576:5", key);
    let mut calls = Vec::new();
    // mark, mark_many: stream, then the marks section.
    let mut k = vec![keys.stream().to_owned()];
    k.extend(wrong.keys.clone());
    let mut a = text(&wrong.args);
    a.extend([fp.clone(), b"mark".to_vec()]);
    calls.push(("mark", fcall("mark", &k, a)));
    let mut a = text(&wrong.args);
    a.extend([fp.clone(), fingerprint("op-2@abc1234").to_vec()]);
    calls.push(("mark_many", fcall("mark_many", &k, a)));
    // begin: stream, lease hash, marks; then group, token, predecessor, lease ms, (id, fp).
    let mut k = vec![keys.stream().to_owned(), lease.clone()];
    k.extend(wrong.keys.clone());
    let mut a = text(&wrong.args);
    a.extend(text(&[
        group.into(),
        "token".into(),
        String::new(),
        "60000".into(),
        id.clone(),
    ]));
    a.push(fp.clone());
    calls.push(("begin", fcall("begin", &k, a)));
    // commit: stream, dead letters, lease hash, marks; then group, token, the dead letters'
    // retention, recheck, and a success record.
    let mut k = vec![keys.stream().to_owned(), keys.dead_letter(), lease.clone()];
    k.extend(wrong.keys.clone());
    let mut a = text(&wrong.args);
    a.extend(text(&[
        group.into(),
        "token".into(),
        String::new(),
        "0".into(),
        "0".into(),
        "s".into(),
        id.clone(),
    ]));
    a.push(fp.clone());
    calls.push(("commit", fcall("commit", &k, a)));
    for (step, cmd) in calls {
        let e = cmd
            .query_async::<redis::Value>(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("ASDLC_LAYOUT"), "{step}: {e}");
        // The stored layout of the one bucket concerned (Redis 7.0 then names the script).
        let detail = e.detail().unwrap_or_default();
        let mut items = detail.split_whitespace();
        assert_eq!(items.next(), Some(&*format!("{bucket}=16384:4")), "{step}");
        assert!(items.all(|i| !i.contains('=')), "{step}: {detail}");
        assert_eq!(snapshot(&mut conn).await, before, "{step} wrote something");
    }
    // Assuming the stored layout, the same call marks.
    let right = section(&prefix, &MarkLayout::default(), bucket, "16384:4", key);
    let mut k = vec![keys.stream().to_owned()];
    k.extend(right.keys);
    let mut a = text(&right.args);
    a.extend([fp.clone(), b"mark".to_vec()]);
    let found: i64 = fcall("mark", &k, a).query_async(&mut conn).await.unwrap();
    assert_eq!(found, 0);
    assert!(tracker.is_processed(key).await.unwrap());
}

#[tokio::test]
async fn a_changed_rate_takes_effect_from_the_next_bucket() {
    let s = server();
    let mut conn = conn(&s).await;
    let keys = StreamKeys::new("asdlc:events");
    let prefix = keys.marks_prefix("g");
    // Buckets of 2 s; the old setting's shards and a new one's (as for_rate gives for busier
    // groups, here set directly: a short TTL holds few marks).
    let old = MarkLayout::with_ttl(Duration::from_secs(4));
    let new = MarkLayout {
        shards: 1 << 17,
        ..old
    };
    let a = IdempotencyTracker::new(conn.clone(), keys.clone(), "g").with_layout(old);
    let b = IdempotencyTracker::new(conn.clone(), keys.clone(), "g").with_layout(new);
    // Each step within one bucket: start at the start of one.
    let width = width_ms(&old);
    let start_of_bucket = async |conn: &mut RedisConnection| {
        let now = server_ms(conn).await;
        tokio::time::sleep(Duration::from_millis(width - now % width + 20)).await;
        bucket_now(conn, &old).await
    };
    let first = start_of_bucket(&mut conn).await;
    assert!(a.mark_processed("op-1@abc1234").await.unwrap());
    assert!(!b.mark_processed("op-1@abc1234").await.unwrap());
    assert_eq!(bucket_now(&mut conn, &old).await, first, "too slow");
    // The next bucket is begun by a process of the new setting: it takes the new layout.
    let second = start_of_bucket(&mut conn).await;
    assert!(b.mark_processed("op-2@abc1234").await.unwrap());
    // The old process follows it there, and each finds the other's marks in both buckets.
    assert!(!a.mark_processed("op-2@abc1234").await.unwrap());
    assert!(a.mark_processed("op-3@abc1234").await.unwrap());
    assert!(b.is_processed("op-1@abc1234").await.unwrap());
    assert!(a.is_processed("op-1@abc1234").await.unwrap());
    assert!(!b.mark_processed("op-3@abc1234").await.unwrap());
    // So does a process that has not seen either bucket yet.
    let c = IdempotencyTracker::new(conn.clone(), keys.clone(), "g").with_layout(old);
    for k in ["op-1@abc1234", "op-2@abc1234", "op-3@abc1234"] {
        assert!(c.is_processed(k).await.unwrap(), "{k}");
    }
    assert_eq!(bucket_now(&mut conn, &old).await, second, "too slow");
    assert_eq!(
        stored_layout(&mut conn, &prefix, first).await.as_deref(),
        Some("16384:4")
    );
    assert_eq!(
        stored_layout(&mut conn, &prefix, second).await.as_deref(),
        Some("131072:5")
    );
    for (bucket, shards, k) in [
        (first, 16_384, "op-1@abc1234"),
        (second, 1 << 17, "op-2@abc1234"),
        (second, 1 << 17, "op-3@abc1234"),
    ] {
        let hash = mark_hash(&prefix, bucket, shards, k);
        assert!(marked_in(&mut conn, &hash, k).await, "{k} in {hash}");
    }
    // From the next bucket the marks are still found: in an older bucket the function names
    // each hash itself (by five digits in the second), where the client named them when they
    // were written, so the two namings must agree.
    start_of_bucket(&mut conn).await;
    let d = IdempotencyTracker::new(conn.clone(), keys.clone(), "g").with_layout(old);
    for k in ["op-1@abc1234", "op-2@abc1234", "op-3@abc1234"] {
        assert!(d.is_processed(k).await.unwrap(), "{k}");
    }
}
