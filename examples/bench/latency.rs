//! Latency: publish to handler start, at a steady 1,000 events/s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use asdlc::Publisher;
use asdlc::prelude::*;

use crate::consume::{committed, runtime, stop_all};
use crate::{Bench, LATENCIES, RECORD_LATENCY, now_ns};

pub(crate) struct Latency {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    pub(crate) count: usize,
}

/// Publishes one event a millisecond for `secs` to a running consumer and measures publish to
/// handler start.
pub(crate) async fn latency(b: &Bench, secs: u64) -> Latency {
    let stream = b.fresh_stream("latency");
    let (handle, task) = runtime(b, &stream, "latency", |_| {}).await;
    tokio::time::timeout(Duration::from_secs(20), handle.ready())
        .await
        .expect("runtime ready in time")
        .expect("runtime ready");
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
    let mut l = std::mem::take(&mut *LATENCIES.lock().unwrap_or_else(|p| p.into_inner()));
    l.sort_unstable();
    let at = |q: f64| Duration::from_nanos(l[((l.len() as f64 * q) as usize).min(l.len() - 1)]);
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: Duration::from_nanos(*l.last().unwrap_or(&0)),
        count: l.len(),
    }
}
