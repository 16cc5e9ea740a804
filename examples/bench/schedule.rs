//! Scheduled events: how late the promoter appends them. Events are scheduled at a steady
//! 1,000 per second, each due 100 ms after it is scheduled, to a running consumer; lateness is
//! the appended entry's id time (the server's clock) minus its due time. The first 300 are a
//! warm-up, not measured: an idle promoter looks at the schedule every 200 ms, so the first
//! events, due sooner than that, can be up to 200 ms late; once something is scheduled, the
//! promoter wakes for the next due time.

use std::time::Duration;

use asdlc::prelude::*;
use chrono::Utc;

use crate::Bench;
use crate::consume::{committed, stop_all};
use crate::latency::{Latency, ready_runtime};

/// Events scheduled before the measured ones.
const WARMUP: usize = 300;

/// Due-to-appended of events scheduled at 1,000 per second for `secs` (after the warm-up).
pub(crate) async fn lateness(b: &Bench, secs: u64) -> Latency {
    let stream = b.fresh_stream("scheduled");
    let (handle, task) = ready_runtime(b, &stream, "scheduled").await;
    let p = Publisher::new(b.conn.clone(), b.config(&stream));
    let total = WARMUP + (secs * 1000) as usize;
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_micros(1000 * i as u64)).await;
        let due = Utc::now() + chrono::Duration::milliseconds(100);
        let e = AsdlcEvent::builder(EventType::TaskCreated, "scheduled")
            .task_id(format!("task-{i}"))
            .meta("due_ms", due.timestamp_millis())
            .meta("i", i)
            .build_unchecked();
        p.publish_at(&e, due).await.expect("publish_at");
    }
    let handles = [handle];
    committed(&handles, total as u64).await;
    stop_all(&handles, vec![task]).await;
    let mut conn = b.conn.clone();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let late: Vec<Duration> = reply
        .ids
        .iter()
        .filter_map(|e| {
            let appended: u64 = e.id.split('-').next()?.parse().ok()?;
            let meta: String = e.get("metadata")?;
            let meta: serde_json::Value = serde_json::from_str(&meta).ok()?;
            let due = meta.get("due_ms")?.as_u64()?;
            let i = meta.get("i")?.as_u64()?;
            if i < WARMUP as u64 {
                return None;
            }
            Some(Duration::from_millis(appended.saturating_sub(due)))
        })
        .collect();
    assert_eq!(
        late.len(),
        total - WARMUP,
        "every scheduled event appended once"
    );
    Latency::of(late)
}
