//! Memory: bytes per retained idempotency mark. At each size, every mark in one bucket (the
//! worst case for a layout: a bucket's hashes hold all of them), in the layout
//! [`MarkLayout::for_rate`] gives for the rate that fills one bucket with that many marks;
//! at sizes up to 1 million, also the seed's layout, one key per mark (slow and big beyond).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use asdlc::{IdempotencyTracker, MarkLayout, StreamKeys};

use crate::{Bench, MARK_TTL_SECS};

/// Marks per `mark_many` call, and calls in flight at once while filling.
const CHUNK: usize = 1000;
const IN_FLIGHT: usize = 4;

/// The largest size the seed's layout is measured at.
pub(crate) const SEED_MAX: usize = 1_000_000;

pub(crate) fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| asdlc::event::unique_idempotency_key())
        .collect()
}

/// What filling one bucket with marks cost.
pub(crate) struct Fill {
    /// Marks written.
    pub(crate) marks: usize,
    /// The rate the layout was made for (events a second), and its shards.
    pub(crate) rate: u64,
    pub(crate) shards: u32,
    /// `used_memory` after less before, per mark.
    pub(crate) bytes_per_mark: f64,
    /// How long the fill took (keys made, fingerprinted and marked).
    pub(crate) took: Duration,
    /// Keys on the server afterwards (the mark hashes and the bucket's layout).
    pub(crate) keys: u64,
    /// Of a sample of the mark hashes, the share still in the compact (listpack) encoding.
    pub(crate) listpack: f64,
    /// Whether the fill crossed a bucket boundary (then its marks are in two buckets).
    pub(crate) two_buckets: bool,
}

/// The rate, in events a second (rounded up), that fills one bucket of the default TTL with
/// `n` marks.
pub(crate) fn rate_filling_a_bucket(n: usize) -> u64 {
    let layout = MarkLayout::default();
    let width_ms = layout.ttl.as_millis() / u128::from(layout.buckets);
    (n as u128 * 1000).div_ceil(width_ms) as u64
}

/// Bytes per retained mark of `n` fresh keys marked now through [`IdempotencyTracker`], in
/// the layout for the rate that fills a bucket with them.
pub(crate) async fn marks_asdlc(b: &Bench, n: usize) -> Fill {
    b.flush().await;
    let rate = rate_filling_a_bucket(n);
    let layout = MarkLayout::for_rate(MarkLayout::default().ttl, rate);
    let tracker = IdempotencyTracker::new(
        b.conn.clone(),
        StreamKeys::new("asdlc:events"),
        "development-handlers",
    )
    .with_layout(layout);
    let before = b.used_memory().await;
    let bucket_before = b.server_ms().await / width_ms(&layout);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (tracker, next) = (tracker.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    let chunk = keys(CHUNK.min(n - from));
                    let fresh = tracker.mark_many(&chunk).await.expect("mark_many");
                    assert!(fresh.iter().all(|f| *f), "every key new");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("fill task");
    }
    let took = started.elapsed();
    let after = b.used_memory().await;
    let bucket_after = b.server_ms().await / width_ms(&layout);
    let mut c = b.conn.clone();
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut c)
        .await
        .expect("DBSIZE");
    Fill {
        marks: n,
        rate,
        shards: layout.shards,
        bytes_per_mark: (after - before) as f64 / n as f64,
        took,
        keys,
        listpack: listpack_share(b).await,
        two_buckets: bucket_before != bucket_after,
    }
}

fn width_ms(layout: &MarkLayout) -> u64 {
    layout.ttl.as_millis() as u64 / u64::from(layout.buckets)
}

/// Of up to 1,000 random mark hashes, the share in the listpack encoding.
async fn listpack_share(b: &Bench) -> f64 {
    let mut c = b.conn.clone();
    let mut pipe = redis::pipe();
    for _ in 0..1000 {
        pipe.cmd("RANDOMKEY");
    }
    let sample: Vec<Option<String>> = pipe.query_async(&mut c).await.expect("RANDOMKEY");
    let hashes: Vec<String> = sample
        .into_iter()
        .flatten()
        .filter(|k| !k.ends_with(":layout"))
        .collect();
    if hashes.is_empty() {
        return 0.0;
    }
    let mut pipe = redis::pipe();
    for k in &hashes {
        pipe.cmd("OBJECT").arg("ENCODING").arg(k);
    }
    let encodings: Vec<String> = pipe.query_async(&mut c).await.expect("OBJECT ENCODING");
    encodings.iter().filter(|e| *e == "listpack").count() as f64 / hashes.len() as f64
}

/// The same for the seed's layout: `SET asdlc:processed:<key> <entry id> EX 604800`.
pub(crate) async fn marks_seed(b: &Bench, n: usize) -> f64 {
    b.flush().await;
    let keys = keys(n);
    let mut c = b.conn.clone();
    let before = b.used_memory().await;
    let base_ms = 1_767_000_000_000u64;
    for (j, chunk) in keys.chunks(1000).enumerate() {
        let mut pipe = redis::pipe();
        for (i, k) in chunk.iter().enumerate() {
            pipe.cmd("SET")
                .arg(format!("asdlc:processed:{k}"))
                .arg(format!("{}-{}", base_ms + j as u64, i))
                .arg("EX")
                .arg(MARK_TTL_SECS)
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("SET pipeline");
    }
    let after = b.used_memory().await;
    (after - before) as f64 / n as f64
}
