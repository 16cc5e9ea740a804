//! Scheduled events: how late the promoter appends them. Events are scheduled at a steady
//! 1,000 per second, each due 100 ms after it is scheduled, to a running consumer; lateness is
//! the appended entry's id time (the server's clock) minus its due time.

use std::time::Duration;

use asdlc::prelude::*;
use chrono::Utc;

use crate::Bench;
use crate::consume::{committed, stop_all};
use crate::latency::{Latency, ready_runtime};

/// Due-to-appended of events scheduled at 1,000 per second for `secs`.
pub(crate) async fn lateness(b: &Bench, secs: u64) -> Latency {
    let stream = b.fresh_stream("scheduled");
    let (handle, task) = ready_runtime(b, &stream, "scheduled").await;
    let p = Publisher::new(b.conn.clone(), b.config(&stream));
    let total = (secs * 1000) as usize;
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_micros(1000 * i as u64)).await;
        let due = Utc::now() + chrono::Duration::milliseconds(100);
        let e = AsdlcEvent::builder(EventType::TaskCreated, "scheduled")
            .task_id(format!("task-{i}"))
            .meta("due_ms", due.timestamp_millis())
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
            Some(Duration::from_millis(appended.saturating_sub(due)))
        })
        .collect();
    assert_eq!(late.len(), total, "every scheduled event appended once");
    Latency::of(late)
}
