//! Memory: bytes per retained idempotency mark, asdlc's layout against one key per mark.

use asdlc::{IdempotencyTracker, StreamKeys};

use crate::{Bench, MARK_TTL_SECS};

pub(crate) fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| asdlc::event::unique_idempotency_key())
        .collect()
}

/// Bytes per retained mark, asdlc's layout, marking through [`IdempotencyTracker`].
pub(crate) async fn marks_asdlc(b: &Bench, n: usize) -> f64 {
    b.flush().await;
    let keys = keys(n);
    let tracker = IdempotencyTracker::new(
        b.conn.clone(),
        StreamKeys::new("asdlc:events"),
        "development-handlers",
    );
    let before = b.used_memory().await;
    for chunk in keys.chunks(1000) {
        let fresh = tracker.mark_many(chunk).await.expect("mark_many");
        assert!(fresh.iter().all(|f| *f), "every key new");
    }
    let after = b.used_memory().await;
    (after - before) as f64 / n as f64
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
