//! Consuming a prefilled stream: the raw XREADGROUP + dedup + XACK loop against the
//! [`Runtime`] with the full protocol.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use asdlc::{
    ConsumerOptions, EventConsumer, Runtime, RuntimeHandle, RuntimeReport, registered_handlers,
};

use crate::meter::{Meter, Sample};
use crate::workload::{self, fill, prefill, read_new, xack};
use crate::{BATCH, Bench, GROUP, HANDLED};

/// XREADGROUP COUNT 100 and one XACK per batch; with `dedup`, one Lua call per batch that
/// sets a mark per key with SET NX EX in between.
pub(crate) async fn raw(b: &Bench, dedup: bool) -> Sample {
    let n = b.args.events;
    let stream = prefill(b, "raw-consume", n).await;
    let mut c = b.conn.clone();
    asdlc::create_consumer_group(&mut c, &stream, GROUP, asdlc::GroupStart::Beginning)
        .await
        .expect("group");
    let mut done = 0usize;
    let t = Meter::start(b).await;
    loop {
        let entries = read_new(&mut c, &stream, GROUP, "raw", BATCH).await;
        if entries.is_empty() {
            break;
        }
        if dedup {
            workload::dedup(&mut c, &entries).await;
        }
        let acked: usize = xack(&stream, GROUP, &entries)
            .query_async(&mut c)
            .await
            .expect("XACK");
        done += acked;
    }
    let sample = t.stop(b, n).await;
    assert_eq!(done, n, "every entry read and acknowledged");
    sample
}

/// A consumer of the benchmark group, as a direct [`EventConsumer`] (for `process_pending`).
pub(crate) async fn consumer(b: &Bench, stream: &str, name: &str) -> EventConsumer {
    let mut builder = EventConsumer::builder(b.config(stream), GROUP).configure(|o| {
        o.consumer = Some(name.to_owned());
    });
    for reg in registered_handlers() {
        if reg.group == GROUP {
            builder = builder.registered(reg);
        }
    }
    builder.build().await.expect("consumer")
}

pub(crate) type RuntimeTask = tokio::task::JoinHandle<Result<RuntimeReport, asdlc::RuntimeError>>;

/// The [`Runtime`] running the `#[event_handler]`s of the benchmark group, as consumer `name`.
pub(crate) async fn runtime(
    b: &Bench,
    stream: &str,
    name: &str,
    tune: fn(&mut ConsumerOptions),
) -> (RuntimeHandle, RuntimeTask) {
    runtime_of(b, GROUP, stream, name, tune).await
}

/// The same for the handlers of `group`.
pub(crate) async fn runtime_of(
    b: &Bench,
    group: &str,
    stream: &str,
    name: &str,
    tune: fn(&mut ConsumerOptions),
) -> (RuntimeHandle, RuntimeTask) {
    let rt = Runtime::builder()
        .config(b.config(stream))
        .groups([group])
        .consumer_name(name)
        .configure(move |_, o| tune(o))
        .build()
        .await
        .expect("runtime");
    let handle = rt.handle();
    let task = tokio::spawn(rt.run_until(std::future::pending()));
    (handle, task)
}

/// Waits until the runtimes have committed `n` events in all.
pub(crate) async fn committed(handles: &[RuntimeHandle], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: u64 = handles.iter().map(|h| h.report().processed()).sum();
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumers stalled at {done} of {n}"
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

pub(crate) async fn stop_all(handles: &[RuntimeHandle], tasks: Vec<RuntimeTask>) -> u64 {
    for h in handles {
        h.stop();
    }
    let mut processed = 0;
    for t in tasks {
        processed += t
            .await
            .expect("runtime task")
            .expect("runtime run")
            .processed();
    }
    processed
}

/// asdlc consuming a prefilled stream with `consumers` runtimes (one consumer each): the
/// `#[event_handler]` through the [`Runtime`], full protocol (lease, handler, atomic mark +
/// effects + ack), idempotency on. Timed from start to the last commit.
pub(crate) async fn asdlc(b: &Bench, consumers: usize, tune: fn(&mut ConsumerOptions)) -> Sample {
    let n = b.args.events;
    let stream = b.fresh_stream("asdlc-consume");
    warm_up(b, &stream, consumers, tune).await;
    fill(b, &stream, n).await;
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    let handled_before = HANDLED.load(Ordering::Relaxed);
    let t = Meter::start(b).await;
    for i in 0..consumers {
        let (h, task) = runtime(b, &stream, &format!("bench-{i}"), tune).await;
        handles.push(h);
        tasks.push(task);
    }
    committed(&handles, n as u64).await;
    let sample = t.stop(b, n).await;
    let processed = stop_all(&handles, tasks).await;
    assert_eq!(processed, n as u64, "each event committed once");
    assert_eq!(
        HANDLED.load(Ordering::Relaxed) - handled_before,
        n as u64,
        "each event handled once"
    );
    sample
}

/// Starts and stops the runtimes once on `stream`, untimed. The first start of a deployment
/// takes its consumer names on probation (the server may just have lost the locks of live
/// holders) and waits out that watch; every later start does not. The timed part is a later
/// start, as every restart of a running deployment is.
async fn warm_up(b: &Bench, stream: &str, consumers: usize, tune: fn(&mut ConsumerOptions)) {
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..consumers {
        let (h, task) = runtime(b, stream, &format!("bench-{i}"), tune).await;
        handles.push(h);
        tasks.push(task);
    }
    for h in &handles {
        tokio::time::timeout(Duration::from_secs(30), h.ready())
            .await
            .expect("warm-up runtime ready in time")
            .expect("warm-up runtime ready");
    }
    assert_eq!(stop_all(&handles, tasks).await, 0, "nothing to consume yet");
}
