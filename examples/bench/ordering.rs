//! What ordering costs: one consumer handling the prefilled workload (events of 1,000
//! sessions, round-robin, so many more sessions than handler slots) ordered by session,
//! against the same consumer unordered, both through the builder API with the same handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use asdlc::prelude::*;
use asdlc::{BoxFuture, EventConsumer, EventHandler, HandlerSpec, OrderBy};

use crate::Bench;
use crate::meter::{Meter, Sample};
use crate::workload::fill;

const GROUP: &str = "bench-ordering";

/// Counts the events it handles, and does nothing else.
struct Count(Arc<AtomicU64>);

impl EventHandler for Count {
    fn name(&self) -> &str {
        "bench-count"
    }

    fn can_handle(&self, event_type: EventType) -> bool {
        event_type == EventType::TaskCreated
    }

    fn handle<'a>(
        &'a self,
        _: &'a AsdlcEvent,
        _: &'a HandlerContext,
    ) -> BoxFuture<'a, HandlerResult> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { HandlerResult::ok() })
    }
}

async fn consumer(b: &Bench, stream: &str, ordered: bool, count: &Arc<AtomicU64>) -> EventConsumer {
    let spec = HandlerSpec::new(Arc::new(Count(count.clone())));
    let spec = if ordered {
        spec.ordered_by(OrderBy::Session)
    } else {
        spec
    };
    EventConsumer::builder(b.config(stream), GROUP)
        .handler_spec(spec)
        .configure(|o| o.consumer = Some("bench-ordering-1".to_owned()))
        .build()
        .await
        .expect("consumer")
}

/// One consumer consuming `--events` prefilled events, ordered by session or not. Timed from
/// start to the last commit.
pub(crate) async fn consume(b: &Bench, ordered: bool) -> Sample {
    let n = b.args.events;
    let stream = b.fresh_stream(if ordered { "ordered" } else { "unordered" });
    let count = Arc::new(AtomicU64::new(0));
    // Untimed: the first start on a stream takes its consumer name on probation.
    let warm = consumer(b, &stream, ordered, &count).await;
    let c = warm.clone();
    let task = tokio::spawn(async move { c.start().await });
    warm.ready().await.expect("warm-up consumer ready");
    warm.stop();
    task.await.expect("warm-up task").expect("warm-up run");
    fill(b, &stream, n).await;

    let consumer = consumer(b, &stream, ordered, &count).await;
    let t = Meter::start(b).await;
    let c = consumer.clone();
    let task = tokio::spawn(async move { c.start().await });
    let deadline = Instant::now() + Duration::from_secs(600);
    while consumer.stats().processed < n as u64 {
        assert!(Instant::now() < deadline, "the consumer stalled");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let sample = t.stop(b, n).await;
    consumer.stop();
    let stats = task.await.expect("consumer task").expect("consumer run");
    assert_eq!(stats.processed, n as u64, "each event committed once");
    assert_eq!(
        count.load(Ordering::Relaxed),
        n as u64,
        "each event handled once"
    );
    sample
}
