//! Latency: publish to handler start, at a steady 1,000 events/s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use asdlc::Publisher;
use asdlc::prelude::*;

use asdlc::RuntimeHandle;

use crate::consume::{RuntimeTask, committed, runtime, stop_all};
use crate::{Bench, LATENCIES, RECORD_LATENCY, now_ns};

/// Percentiles of a set of durations, and how many there were.
pub(crate) struct Latency {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    pub(crate) count: usize,
}

impl Latency {
    /// The percentiles of `samples` (any order).
    pub(crate) fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
            count: samples.len(),
        }
    }
}

/// A runtime of the benchmark group on `stream`, as consumer `name`, once it is consuming.
pub(crate) async fn ready_runtime(
    b: &Bench,
    stream: &str,
    name: &str,
) -> (RuntimeHandle, RuntimeTask) {
    let (handle, task) = runtime(b, stream, name, |_| {}).await;
    tokio::time::timeout(Duration::from_secs(20), handle.ready())
        .await
        .expect("runtime ready in time")
        .expect("runtime ready");
    (handle, task)
}

/// Publishes one event a millisecond for `secs` to a running consumer and measures publish to
/// handler start.
pub(crate) async fn latency(b: &Bench, secs: u64) -> Latency {
    let stream = b.fresh_stream("latency");
    let (handle, task) = ready_runtime(b, &stream, "latency").await;
    let p = Publisher::new(b.conn.clone(), b.config(&stream));
    let total = (secs * 1000) as usize;
    let warmup = 200;
    let start = tokio::time::Instant::now();
    for i in 0..warmup + total {
        if i == warmup {
            // Let the warm-up events through before recording.
            tokio::time::sleep(Duration::from_millis(50)).await;
            RECORD_LATENCY.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep_until(start + Duration::from_micros(1000 * i as u64)).await;
        let e = AsdlcEvent::builder(EventType::TaskCreated, "latency")
            .task_id(format!("task-{i}"))
            .meta("sent_ns", now_ns())
            .build_unchecked();
        p.publish(&e).await.expect("publish");
    }
    let handles = [handle];
    committed(&handles, (warmup + total) as u64).await;
    RECORD_LATENCY.store(false, Ordering::Relaxed);
    stop_all(&handles, vec![task]).await;
    let l = std::mem::take(&mut *LATENCIES.lock().unwrap_or_else(|p| p.into_inner()));
    Latency::of(l.into_iter().map(Duration::from_nanos).collect())
}
