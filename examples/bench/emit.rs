//! Follow-up events: every handled event emits one follow-up. asdlc's handler stages it with
//! `ctx.emit` (appended by the commit, atomically with the mark and the ack) against a raw loop
//! doing, per batch, XREADGROUP, one dedup script call (SET NX per key), then the XADDs of
//! the fresh entries' follow-ups and one XACK in one pipeline. Both write the follow-ups to the
//! stream they read, so both read them back and acknowledge them: the run ends when the `n`
//! events and their `n` follow-ups are acknowledged.

use std::time::{Duration, Instant};

use asdlc::encoding::encode;
use asdlc::prelude::*;

use crate::consume::{RuntimeTask, runtime_of};
use crate::meter::{Meter, Sample};
use crate::workload::{dedup, fill, read_new, xack, xadd};
use crate::{BATCH, Bench};

/// The group of the emitting handler.
pub(crate) const GROUP: &str = "bench-emitters";

/// The benchmark's emitting handler: one `task_dispatched` per `task_created`.
#[asdlc::event_handler(types = [TaskCreated], group = "bench-emitters")]
async fn bench_emit(event: &AsdlcEvent, ctx: &HandlerContext) -> Result<(), HandlerError> {
    ctx.emit(next_of(event))?;
    Ok(())
}

fn next_of(event: &AsdlcEvent) -> AsdlcEvent {
    let mut next = AsdlcEvent::builder(EventType::TaskDispatched, event.session_id.clone());
    if let Some(task) = &event.task_id {
        next = next.task_id(task.clone());
    }
    next.build_unchecked()
}

/// The raw loop.
pub(crate) async fn raw(b: &Bench) -> Sample {
    let n = b.args.events;
    let stream = b.fresh_stream("raw-emit");
    fill(b, &stream, n).await;
    let mut c = b.conn.clone();
    asdlc::create_consumer_group(&mut c, &stream, GROUP, asdlc::GroupStart::Beginning)
        .await
        .expect("group");
    let mut acked = 0usize;
    let t = Meter::start(b).await;
    loop {
        let entries = read_new(&mut c, &stream, GROUP, "raw", BATCH).await;
        if entries.is_empty() {
            break;
        }
        let fresh = dedup(&mut c, &entries).await;
        let mut pipe = redis::pipe();
        for ((_, key), fresh) in entries.iter().zip(&fresh) {
            let key = key.as_deref().unwrap_or_default();
            // A cause (not a follow-up) seen for the first time: its follow-up, keyed after it.
            if *fresh == 1 && !key.starts_with(b"fu-") {
                let mut next =
                    AsdlcEvent::builder(EventType::TaskDispatched, "bench").build_unchecked();
                next.idempotency_key = Some(format!("fu-{}", String::from_utf8_lossy(key)));
                pipe.add_command(xadd(&stream, encode(&next).fields()))
                    .ignore();
            }
        }
        pipe.add_command(xack(&stream, GROUP, &entries));
        let (done,): (usize,) = pipe.query_async(&mut c).await.expect("XADD + XACK");
        acked += done;
    }
    let sample = t.stop(b, n).await;
    assert_eq!(acked, 2 * n, "every event and every follow-up acknowledged");
    sample
}

/// asdlc: the emitting handler through the [`Runtime`], full protocol.
pub(crate) async fn asdlc(b: &Bench) -> Sample {
    let n = b.args.events;
    let stream = b.fresh_stream("asdlc-emit");
    // A later start, not a deployment's first (see `consume::warm_up`).
    let (h, task) = runtime_of(b, GROUP, &stream, "bench-emit", |_| {}).await;
    h.ready().await.expect("warm-up ready");
    stop(&h, task).await;
    fill(b, &stream, n).await;
    let t = Meter::start(b).await;
    let (h, task) = runtime_of(b, GROUP, &stream, "bench-emit", |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let report = h.report();
        let unhandled: u64 = report.groups.iter().map(|g| g.stats.unhandled).sum();
        if report.processed() >= n as u64 && unhandled >= n as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "stalled: {report:?}");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let sample = t.stop(b, n).await;
    let report = stop(&h, task).await;
    let emitted: u64 = report.groups.iter().map(|g| g.stats.emitted).sum();
    assert_eq!(report.processed(), n as u64, "each event committed once");
    assert_eq!(emitted, n as u64, "each follow-up emitted once");
    sample
}

async fn stop(h: &asdlc::RuntimeHandle, task: RuntimeTask) -> asdlc::RuntimeReport {
    h.stop();
    task.await.expect("runtime task").expect("runtime run")
}
