//! Monitoring and operations against a real server (seed US-07): stream discovery, lag,
//! health, retention that never loses work, and trace context.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use asdlc::monitor::{
    HealthThresholds, Limits, RetentionPolicy, TrimLimit, TrimOptions, check_health,
    check_health_url, list_streams, run_retention, tenant_streams, trim_acknowledged,
    trim_acknowledged_with,
};
use asdlc::{
    EventConsumer, EventType, GroupStart, HealthStatus, Publisher, RedisConnection, RedisUrl,
    TenantContext, TraceParent, create_consumer_group, ensure_stream_exists, extract_trace_context,
    get_stream_info, inject_trace_context,
};
use redis::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);
const STREAM: &str = "asdlc:events";

async fn publish_n(p: &Publisher, n: usize) -> Vec<String> {
    let events: Vec<_> = (0..n)
        .map(|i| event(EventType::TaskCreated, &format!("s{i}")))
        .collect();
    p.publish_batch(&events)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.event_id)
        .collect()
}

/// Reads up to `n` new entries for `consumer` of `group` without acknowledging them.
async fn read(c: &mut RedisConnection, stream: &str, group: &str, n: usize) -> Vec<String> {
    let v: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("worker")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(c)
        .await
        .unwrap();
    ids_of_read(v)
}

fn ids_of_read(v: Value) -> Vec<String> {
    let mut out = Vec::new();
    let Value::Array(streams) = v else {
        return out;
    };
    for s in streams {
        let Value::Array(mut parts) = s else { continue };
        let Some(Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for e in entries {
            if let Value::Array(e) = e
                && let Some(Value::BulkString(id)) = e.first()
            {
                out.push(String::from_utf8_lossy(id).into_owned());
            }
        }
    }
    out
}

async fn ack(c: &mut RedisConnection, stream: &str, group: &str, ids: &[String]) {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(stream).arg(group);
    for id in ids {
        cmd.arg(id);
    }
    let n: u64 = cmd.query_async(c).await.unwrap();
    assert_eq!(n, ids.len() as u64);
}

async fn ids(c: &mut RedisConnection, stream: &str) -> Vec<String> {
    xrange(c, stream)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

async fn group(c: &mut RedisConnection, stream: &str, name: &str) {
    create_consumer_group(c, stream, name, GroupStart::Beginning)
        .await
        .unwrap();
}

fn lag_thresholds(degraded: u64, unhealthy: u64) -> HealthThresholds {
    HealthThresholds::default().with_lag(Limits::new(degraded, unhealthy))
}

#[tokio::test]
async fn list_streams_finds_the_shared_and_every_tenant_stream() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(multi_config(&s)).await.unwrap();
    for t in ["globex", "acme"] {
        TenantContext::scope(tenant(t), async {
            p.publish(&event(EventType::TaskCreated, "s"))
                .await
                .unwrap();
        })
        .await;
    }
    // Lookalikes that are not tenant streams: a string, a dead-letter stream, another base.
    let _: () = redis::cmd("SET")
        .arg("tenant:{initech}:asdlc:events")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    for key in [
        "tenant:{acme}:asdlc:events:dead",
        "tenant:{acme}:other:events",
    ] {
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("f")
            .arg("v")
            .query_async(&mut c)
            .await
            .unwrap();
    }

    let found = tenant_streams(&mut c, STREAM).await.unwrap();
    assert_eq!(
        found,
        vec![
            (tenant("acme"), "tenant:{acme}:asdlc:events".to_owned()),
            (tenant("globex"), "tenant:{globex}:asdlc:events".to_owned()),
        ]
    );
    // Multi-tenant: the shared stream only once it exists.
    assert_eq!(
        list_streams(&mut c, &multi_config(&s)).await.unwrap(),
        vec!["tenant:{acme}:asdlc:events", "tenant:{globex}:asdlc:events"]
    );
    ensure_stream_exists(&mut c, STREAM).await.unwrap();
    assert_eq!(
        list_streams(&mut c, &multi_config(&s)).await.unwrap(),
        vec![
            STREAM,
            "tenant:{acme}:asdlc:events",
            "tenant:{globex}:asdlc:events"
        ]
    );
}

#[tokio::test]
async fn list_streams_includes_a_missing_shared_stream_in_single_tenant_mode() {
    let s = server();
    let mut c = conn(&s).await;
    assert_eq!(
        list_streams(&mut c, &config(&s)).await.unwrap(),
        vec![STREAM]
    );
}

#[tokio::test]
async fn stream_info_counts_lag_the_server_cannot_report() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    let published = publish_n(&p, 6).await;
    group(&mut c, STREAM, "g").await;
    read(&mut c, STREAM, "g", 2).await;
    // Deleting an entry the group has not read yet makes Redis 7 report no lag.
    let _: u64 = redis::cmd("XDEL")
        .arg(STREAM)
        .arg(&published[4])
        .query_async(&mut c)
        .await
        .unwrap();
    let info = get_stream_info(&mut c, STREAM).await.unwrap();
    let g = info.group("g").unwrap();
    assert_eq!(g.lag, Some(3), "three unread entries left");
    assert_eq!(g.pending, 2);
    assert_eq!(g.last_delivered_id, published[1]);
    assert_eq!(info.first_id.as_deref(), Some(published[0].as_str()));
    assert_eq!(info.last_id.as_deref(), Some(published[5].as_str()));
}

#[tokio::test]
async fn health_is_healthy_for_an_empty_stream() {
    let s = server();
    let mut c = conn(&s).await;
    ensure_stream_exists(&mut c, STREAM).await.unwrap();
    group(&mut c, STREAM, "g").await;
    let report = check_health(&mut c, &[STREAM.to_owned()], &HealthThresholds::default()).await;
    assert_eq!(report.status, HealthStatus::Healthy, "{:?}", report.reasons);
    assert!(report.reasons.is_empty());
    assert!(report.ping_ms.is_some_and(|ms| ms >= 0.0));
    assert!(!report.server_version.as_deref().unwrap_or("").is_empty());
    assert_eq!(report.server_mode.as_deref(), Some("standalone"));
    assert_eq!(report.streams.len(), 1);
    assert!(report.streams[0].exists);
}

#[tokio::test]
async fn health_is_degraded_by_a_backlog() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    group(&mut c, STREAM, "slow").await;
    group(&mut c, STREAM, "fast").await;
    let published = publish_n(&p, 20).await;
    read(&mut c, STREAM, "fast", 20).await;
    ack(&mut c, STREAM, "fast", &published).await;
    let streams = [STREAM.to_owned()];

    let report = check_health(&mut c, &streams, &lag_thresholds(10, 100)).await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert_eq!(
        report.reasons,
        vec!["degraded: group `slow` on `asdlc:events` is 20 entries behind (limit 10)"]
    );
    let report = check_health(&mut c, &streams, &lag_thresholds(10, 20)).await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(report.status.exit_code(), 2);

    // The backlog drains: healthy again.
    read(&mut c, STREAM, "slow", 20).await;
    ack(&mut c, STREAM, "slow", &published).await;
    let report = check_health(&mut c, &streams, &lag_thresholds(10, 20)).await;
    assert_eq!(report.status, HealthStatus::Healthy, "{:?}", report.reasons);
}

#[tokio::test]
async fn health_is_degraded_by_old_or_many_pending_entries() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    group(&mut c, STREAM, "g").await;
    publish_n(&p, 5).await;
    read(&mut c, STREAM, "g", 5).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let streams = [STREAM.to_owned()];
    let old = HealthThresholds::default().with_oldest_pending(Limits::new(
        Duration::from_millis(100),
        Duration::from_secs(3600),
    ));
    let report = check_health(&mut c, &streams, &old).await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert!(
        report.reasons[0].contains("has an entry pending for"),
        "{:?}",
        report.reasons
    );
    let many = HealthThresholds::default().with_pending(Limits::new(2, 5));
    let report = check_health(&mut c, &streams, &many).await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(
        report.reasons,
        vec!["unhealthy: group `g` on `asdlc:events` has 5 pending entries (limit 5)"]
    );
}

#[tokio::test]
async fn health_flags_missing_streams_and_dead_letters_when_asked() {
    let s = server();
    let mut c = conn(&s).await;
    let streams = [STREAM.to_owned()];
    let report = check_health(&mut c, &streams, &HealthThresholds::default()).await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert!(report.reasons[0].contains("does not exist"));
    let relaxed = HealthThresholds::default()
        .with_missing_stream(HealthStatus::Healthy)
        .with_dead_letters(Limits::new(1, 10));
    assert_eq!(
        check_health(&mut c, &streams, &relaxed).await.status,
        HealthStatus::Healthy
    );
    ensure_stream_exists(&mut c, STREAM).await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(asdlc::StreamKeys::new(STREAM).dead_letter())
        .arg("*")
        .arg("reason")
        .arg("test")
        .query_async(&mut c)
        .await
        .unwrap();
    let report = check_health(&mut c, &streams, &relaxed).await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert_eq!(
        report.reasons,
        vec!["degraded: stream `asdlc:events` has 1 dead letters (limit 1)"]
    );
}

#[tokio::test]
async fn health_of_an_unreachable_server_is_unhealthy() {
    let url = RedisUrl::parse("redis://127.0.0.1:1").unwrap();
    let report = check_health_url(&url, &[STREAM.to_owned()], &HealthThresholds::default()).await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(report.ping_ms, None);
    assert!(
        report.reasons[0].contains("cannot connect"),
        "{:?}",
        report.reasons
    );

    // A server that goes away under an open connection.
    let mut s = server();
    let mut c = conn(&s).await;
    s.kill();
    let report = check_health(&mut c, &[STREAM.to_owned()], &HealthThresholds::default()).await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert!(
        report.reasons[0].contains("unreachable"),
        "{:?}",
        report.reasons
    );
}

#[tokio::test]
async fn health_report_serializes_for_logs() {
    let s = server();
    let mut c = conn(&s).await;
    ensure_stream_exists(&mut c, STREAM).await.unwrap();
    let report = check_health(&mut c, &[STREAM.to_owned()], &HealthThresholds::default()).await;
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["streams"][0]["stream"], STREAM);
    assert!(json["ping_ms"].is_number());
    let back: asdlc::HealthReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

#[tokio::test]
async fn trim_never_drops_unacknowledged_entries() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    // A fast group, a real consumer, handles everything.
    let fast = TestHandler::all("fast");
    let consumer = consumer_for(&config(&s), "fast", "w1", &fast).await;
    let run = spawn(&consumer).await;
    // A slow group reads six and acknowledges three.
    group(&mut c, STREAM, "slow").await;
    let published = publish_n(&p, 10).await;
    eventually(WAIT, "the fast group handled everything", || async {
        fast.count() == 10
    })
    .await;
    all_acknowledged(&c, "fast", "the fast group acknowledged everything").await;
    let read_ids = read(&mut c, STREAM, "slow", 6).await;
    assert_eq!(read_ids, published[..6]);
    ack(&mut c, STREAM, "slow", &published[..3]).await;

    let report = trim_acknowledged(&mut c, STREAM).await.unwrap();
    assert_eq!(report.removed, 3);
    assert_eq!((report.length_before, report.length_after), (10, 7));
    assert_eq!(report.safe_min_id.as_deref(), Some(published[3].as_str()));
    assert_eq!(
        report.limit,
        TrimLimit::Pending {
            group: "slow".into(),
            oldest_pending_id: published[3].clone()
        }
    );
    assert!(
        report.kept_reason.contains("`slow`"),
        "{}",
        report.kept_reason
    );
    assert_eq!(ids(&mut c, STREAM).await, published[3..]);

    // The slow group's pending entries are intact (claimable with their fields) and its unread
    // entries are still delivered.
    let claimed: Value = redis::cmd("XCLAIM")
        .arg(STREAM)
        .arg("slow")
        .arg("other")
        .arg(0)
        .arg(&published[3])
        .arg(&published[4])
        .arg(&published[5])
        .query_async(&mut c)
        .await
        .unwrap();
    let Value::Array(claimed) = claimed else {
        panic!("{claimed:?}")
    };
    assert_eq!(claimed.len(), 3);
    assert!(
        claimed
            .iter()
            .all(|e| matches!(e, Value::Array(parts) if matches!(parts[1], Value::Array(_)))),
        "every pending entry still has its fields: {claimed:?}"
    );
    ack(&mut c, STREAM, "slow", &published[3..6]).await;
    let report = trim_acknowledged(&mut c, STREAM).await.unwrap();
    assert_eq!(report.removed, 3);
    assert_eq!(
        report.limit,
        TrimLimit::Unread {
            group: "slow".into(),
            last_delivered_id: published[5].clone()
        }
    );
    assert_eq!(read(&mut c, STREAM, "slow", 100).await, published[6..]);
    ack(&mut c, STREAM, "slow", &published[6..]).await;
    let report = trim_acknowledged(&mut c, STREAM).await.unwrap();
    assert_eq!((report.removed, report.length_after), (4, 0));
    assert!(
        report.kept_reason.starts_with("nothing kept"),
        "{}",
        report.kept_reason
    );

    consumer.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.processed, 10);
}

#[tokio::test]
async fn trim_without_groups_removes_nothing() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    publish_n(&p, 4).await;
    let report = trim_acknowledged(&mut c, STREAM).await.unwrap();
    assert_eq!((report.removed, report.length_after), (0, 4));
    assert_eq!(report.limit, TrimLimit::NoGroups);
    assert_eq!(report.safe_min_id, None);
    assert!(report.kept_reason.contains("no consumer groups"));

    let missing = trim_acknowledged(&mut c, "nope").await.unwrap();
    assert_eq!(missing.limit, TrimLimit::NoStream);
    assert_eq!(missing.removed, 0);
}

async fn dry_run(c: &mut RedisConnection) -> asdlc::monitor::TrimReport {
    let options = TrimOptions::default().with_dry_run(true);
    trim_acknowledged_with(c, STREAM, options).await.unwrap()
}

#[tokio::test]
async fn trim_dry_run_and_min_age_keep_everything_they_promise() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(config(&s)).await.unwrap();
    group(&mut c, STREAM, "g").await;
    let published = publish_n(&p, 2500).await;
    assert_eq!(read(&mut c, STREAM, "g", 3000).await.len(), 2500);
    ack(&mut c, STREAM, "g", &published[..2100]).await;

    let dry = dry_run(&mut c).await;
    assert!(dry.dry_run);
    assert_eq!((dry.removed, dry.length_after), (2100, 2500));
    assert_eq!(
        ids(&mut c, STREAM).await.len(),
        2500,
        "a dry run removes nothing"
    );

    let young = trim_acknowledged_with(
        &mut c,
        STREAM,
        TrimOptions::default().with_min_age(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(young.removed, 0);
    assert!(matches!(young.limit, TrimLimit::MinAge { .. }), "{young:?}");

    let real = trim_acknowledged(&mut c, STREAM).await.unwrap();
    assert_eq!(real.removed, dry.removed);
    assert_eq!(ids(&mut c, STREAM).await, published[2100..]);
}

#[tokio::test]
async fn a_dry_run_trim_counts_a_long_stream_in_bounded_calls() {
    let s = server();
    let mut c = conn(&s).await;
    let n = 25_000;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("n")
            .arg(i)
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    // A group that starts at the end has read everything and owes nothing.
    create_consumer_group(&mut c, STREAM, "g", GroupStart::End)
        .await
        .unwrap();

    let before = command_calls(&mut c, "fcall").await;
    let dry = dry_run(&mut c).await;
    let calls = command_calls(&mut c, "fcall").await - before;
    assert_eq!((dry.removed, dry.length_after), (n, n));
    // One call finds the bound; each further call counts at most 10,000 entries.
    assert!(calls > n.div_ceil(10_000), "{calls} calls");
    assert_eq!(ids(&mut c, STREAM).await.len() as u64, n, "nothing removed");
    let real = trim_acknowledged(&mut c, STREAM).await.unwrap();
    assert_eq!(real.removed, dry.removed);
}

#[tokio::test]
async fn trimming_while_consuming_loses_nothing() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("h").behave(|_, _| Behavior::Sleep(Duration::from_millis(2)));
    let consumer = EventConsumer::builder(config(&s), "g")
        .handler(h.clone())
        .configure(|o| {
            fast_options(o);
            o.concurrency = 8;
            o.batch_size = 10;
        })
        .build()
        .await
        .unwrap();
    let run = spawn(&consumer).await;
    let stop = CancellationToken::new();
    let trimmer = {
        let mut c = conn(&s).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut removed = 0;
            while !stop.is_cancelled() {
                removed += trim_acknowledged(&mut c, STREAM).await.unwrap().removed;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            removed
        })
    };
    let mut keys = HashSet::new();
    for _ in 0..10 {
        for id in publish_n(&p, 30).await {
            keys.insert(id);
        }
    }
    eventually(WAIT, "every event handled", || async { h.count() >= 300 }).await;
    stop.cancel();
    let removed = trimmer.await.unwrap();
    consumer.stop();
    let stats = run.await.unwrap().unwrap();
    let handled: HashSet<String> = h.calls().into_iter().map(|c| c.entry_id).collect();
    assert_eq!(handled, keys, "every published entry was handled");
    assert_eq!(stats.processed, 300);
    assert_eq!(
        stats.unhandled, 0,
        "no entry vanished before it was handled"
    );
    assert!(removed > 0, "the trimmer did remove handled entries");
}

#[tokio::test]
async fn retention_policy_trims_every_stream_until_cancelled() {
    let s = server();
    let mut c = conn(&s).await;
    let p = Publisher::connect(multi_config(&s)).await.unwrap();
    let mut total = 0;
    for (t, n) in [("acme", 3), ("globex", 5)] {
        let stream = format!("tenant:{{{t}}}:asdlc:events");
        group(&mut c, &stream, "g").await;
        let published = TenantContext::scope(tenant(t), publish_n(&p, n)).await;
        read(&mut c, &stream, "g", n).await;
        ack(&mut c, &stream, "g", &published).await;
        total += n as u64;
    }
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_retention(
        conn(&s).await,
        multi_config(&s),
        RetentionPolicy::default()
            .with_interval(Duration::from_millis(50))
            .with_min_age(Duration::ZERO),
        cancel.clone(),
    ));
    eventually(WAIT, "both tenant streams trimmed", || async {
        let mut c = conn(&s).await;
        let mut empty = true;
        for t in ["acme", "globex"] {
            let info = get_stream_info(&mut c, &format!("tenant:{{{t}}}:asdlc:events"))
                .await
                .unwrap();
            empty &= info.exists && info.length == 0;
        }
        empty
    })
    .await;
    cancel.cancel();
    let totals = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops when cancelled")
        .unwrap();
    assert_eq!(totals.removed, total);
    assert!(totals.rounds >= 1);
    assert_eq!(totals.errors, 0);
}

#[tokio::test]
async fn trace_context_joins_publish_and_handling() {
    let s = server();
    let p = Publisher::connect(config(&s)).await.unwrap();
    let h = TestHandler::all("h");
    let consumer = consumer_for(&config(&s), "g", "w1", &h).await;
    let run = spawn(&consumer).await;
    let mut e = event(EventType::GateRequested, "s");
    let sent = inject_trace_context(&mut e);
    p.publish(&e).await.unwrap();
    let mut plain = event(EventType::GateApproved, "s");
    plain
        .metadata
        .insert("traceparent".into(), "00-not-valid".into());
    p.publish(&plain).await.unwrap();
    eventually(WAIT, "both handled", || async { h.count() == 2 }).await;
    let calls = h.calls();
    let got = extract_trace_context(&calls[0].event);
    assert_eq!(got, Some(sent));
    assert_eq!(
        got.unwrap().to_string(),
        calls[0].event.metadata["traceparent"]
    );
    assert_eq!(extract_trace_context(&calls[1].event), None::<TraceParent>);
    consumer.stop();
    run.await.unwrap().unwrap();
}

fn fast_options(o: &mut asdlc::ConsumerOptions) {
    fast(o);
    o.consumer = Some("w1".to_owned());
}

/// A metrics recorder for the whole test binary that keeps every counter and histogram by
/// name and labels; tests read their own series (by a group name no other test uses).
mod capture {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };

    #[derive(Default)]
    pub struct Capture {
        counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
        histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    }

    #[derive(Default)]
    struct Samples(Mutex<Vec<f64>>);

    impl HistogramFn for Samples {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    fn render(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut map = self.counters.lock().unwrap();
            Counter::from_arc(map.entry(render(key)).or_default().clone())
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            let mut map = self.histograms.lock().unwrap();
            Histogram::from_arc(map.entry(render(key)).or_default().clone())
        }
    }

    pub fn global() -> &'static Capture {
        static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let capture: &'static Capture = Box::leak(Box::default());
            metrics::set_global_recorder(capture).expect("the only recorder of this binary");
            capture
        })
    }

    impl Capture {
        pub fn counter(&self, series: &str) -> u64 {
            self.counters
                .lock()
                .unwrap()
                .get(series)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        }

        pub fn samples(&self, series: &str) -> usize {
            self.histograms
                .lock()
                .unwrap()
                .get(series)
                .map_or(0, |h| h.0.lock().unwrap().len())
        }
    }
}

#[tokio::test]
async fn consumer_records_metrics_per_group_tenant_and_handler() {
    let metrics = capture::global();
    let s = server();
    let p = Publisher::connect(multi_config(&s)).await.unwrap();
    let h = TestHandler::all("metered-handler").behave(|e, attempt| match e.session_id.as_str() {
        "retry-once" if attempt == 1 => Behavior::Retry,
        "refuse" => Behavior::Permanent,
        _ => Behavior::Ok,
    });
    let consumer =
        tenant_consumer_for(&multi_config(&s), "metered", &tenant("acme"), "w1", &h).await;
    let run = spawn(&consumer).await;
    TenantContext::scope(tenant("acme"), async {
        for session in ["ok-1", "ok-2", "retry-once", "refuse"] {
            p.publish(&event(EventType::TaskCreated, session))
                .await
                .unwrap();
        }
    })
    .await;
    let series = |name: &str, handler: &str| {
        format!("{name}{{group=metered,tenant=acme,handler={handler}}}")
    };
    eventually(WAIT, "all four settled", || async {
        metrics.counter(&series("asdlc_events_processed_total", "metered-handler")) == 3
            && metrics.counter(&series(
                "asdlc_events_dead_lettered_total",
                "metered-handler",
            )) == 1
    })
    .await;
    consumer.stop();
    run.await.unwrap().unwrap();
    assert_eq!(
        metrics.counter(&series("asdlc_events_failed_total", "metered-handler")),
        2
    );
    assert_eq!(
        metrics.counter(&series("asdlc_events_retried_total", "metered-handler")),
        1
    );
    assert_eq!(
        metrics.samples(&series("asdlc_handler_seconds", "metered-handler")),
        5
    );
    assert_eq!(
        metrics.samples(&series(
            "asdlc_publish_to_handle_seconds",
            "metered-handler"
        )),
        5
    );
}
