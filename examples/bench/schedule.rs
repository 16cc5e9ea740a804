//! Scheduled events: how late the promoter appends them. Events are scheduled at a steady
//! 1,000 per second, each due 100 ms after it is scheduled, to a running consumer; lateness is
//! the appended entry's id time (the server's clock) minus its due time.

use std::time::Duration;

use asdlc::prelude::*;
use chrono::Utc;

use crate::Bench;
use crate::consume::{committed, runtime, stop_all};

/// Percentiles of due-to-appended, and how many were measured.
pub(crate) struct Lateness {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    pub(crate) count: usize,
}

pub(crate) async fn lateness(b: &Bench, secs: u64) -> Lateness {
    let stream = b.fresh_stream("scheduled");
    let (handle, task) = runtime(b, &stream, "scheduled", |_| {}).await;
    tokio::time::timeout(Duration::from_secs(20), handle.ready())
        .await
        .expect("runtime ready in time")
        .expect("runtime ready");
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
    let mut late: Vec<u64> = reply
        .ids
        .iter()
        .filter_map(|e| {
            let appended: u64 = e.id.split('-').next()?.parse().ok()?;
            let meta: String = e.get("metadata")?;
            let meta: serde_json::Value = serde_json::from_str(&meta).ok()?;
            let due = meta.get("due_ms")?.as_u64()?;
            Some(appended.saturating_sub(due))
        })
        .collect();
    assert_eq!(late.len(), total, "every scheduled event appended once");
    late.sort_unstable();
    let at = |q: f64| {
        Duration::from_millis(late[((late.len() as f64 * q) as usize).min(late.len() - 1)])
    };
    Lateness {
        p50: at(0.50),
        p99: at(0.99),
        max: Duration::from_millis(*late.last().unwrap_or(&0)),
        count: late.len(),
    }
}
