//! Metrics through the [`metrics`] facade: the application picks the exporter (or, with the
//! `prometheus` feature, calls [`serve_prometheus`]); without one, recording costs next to
//! nothing.
//!
//! Every series is labelled `group`, `tenant` (empty in single-tenant mode) and `handler`
//! (empty where no handler was chosen, e.g. a claim).

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

/// The names of the series asdlc records.
pub mod metric_names {
    /// Events handled and committed.
    pub const PROCESSED: &str = "asdlc_events_processed_total";
    /// Handler calls that failed (retryable or not).
    pub const FAILED: &str = "asdlc_events_failed_total";
    /// Failures left pending for another delivery.
    pub const RETRIED: &str = "asdlc_events_retried_total";
    /// Entries moved to the dead-letter stream.
    pub const DEAD_LETTERED: &str = "asdlc_events_dead_lettered_total";
    /// Deliveries skipped because their idempotency key was already processed.
    pub const DUPLICATES: &str = "asdlc_events_duplicates_total";
    /// Entries claimed from other (dead or stuck) consumers.
    pub const CLAIMED: &str = "asdlc_events_claimed_total";
    /// Entries of ordered handlers held back because an earlier entry of their key was
    /// unfinished.
    pub const HELD_BACK: &str = "asdlc_events_held_back_total";
    /// Follow-up events handlers emitted, appended with their cause's commit.
    pub const EMITTED: &str = "asdlc_events_emitted_total";
    /// How long one handler call took, in seconds.
    pub const HANDLER_SECONDS: &str = "asdlc_handler_seconds";
    /// From publish (the entry id's time, on the server's clock) to the start of handling, in
    /// seconds.
    pub const PUBLISH_TO_HANDLE_SECONDS: &str = "asdlc_publish_to_handle_seconds";
}

use metric_names::*;

/// Registers a description and unit for every asdlc series with the installed recorder. Call
/// it once after installing one ([`serve_prometheus`] does).
pub fn describe_metrics() {
    describe_counter!(PROCESSED, "Events handled and committed");
    describe_counter!(FAILED, "Handler calls that failed");
    describe_counter!(RETRIED, "Failed events left pending for another delivery");
    describe_counter!(DEAD_LETTERED, "Events moved to the dead-letter stream");
    describe_counter!(
        DUPLICATES,
        "Deliveries skipped because their idempotency key was already processed"
    );
    describe_counter!(CLAIMED, "Entries claimed from dead or stuck consumers");
    describe_counter!(
        HELD_BACK,
        "Entries of ordered handlers held back behind an unfinished earlier entry of their key"
    );
    describe_counter!(
        EMITTED,
        "Follow-up events emitted by handlers, appended with their cause's commit"
    );
    describe_histogram!(HANDLER_SECONDS, Unit::Seconds, "Handler call duration");
    describe_histogram!(
        PUBLISH_TO_HANDLE_SECONDS,
        Unit::Seconds,
        "Time from publish to the start of handling"
    );
}

/// Which series a [`Labels`] belongs to: the group, the tenant (`None` in single-tenant
/// mode, recorded empty) and the handler (empty where none was chosen, e.g. a claim).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Labels<'a> {
    pub(crate) group: &'a str,
    pub(crate) tenant: Option<&'a str>,
    pub(crate) handler: &'a str,
}

impl Labels<'_> {
    fn pairs(&self) -> [(&'static str, String); 3] {
        [
            ("group", self.group.to_owned()),
            ("tenant", self.tenant.unwrap_or("").to_owned()),
            ("handler", self.handler.to_owned()),
        ]
    }
}

/// The counters asdlc records, one per series name in [`metric_names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// An event was handled and committed.
    Processed,
    /// A handler call failed (whatever happens next).
    Failed,
    /// A failed event was left pending for another delivery.
    Retried,
    /// An entry was moved to the dead-letter stream.
    DeadLettered,
    /// A delivery was skipped: its key was already processed.
    Duplicate,
    /// Entries were claimed from other consumers.
    Claimed,
    /// An ordered entry was held back behind an earlier entry of its key.
    HeldBack,
    /// Follow-up events were appended with their cause's commit.
    Emitted,
}

impl Count {
    fn name(self) -> &'static str {
        match self {
            Count::Processed => PROCESSED,
            Count::Failed => FAILED,
            Count::Retried => RETRIED,
            Count::DeadLettered => DEAD_LETTERED,
            Count::Duplicate => DUPLICATES,
            Count::Claimed => CLAIMED,
            Count::HeldBack => HELD_BACK,
            Count::Emitted => EMITTED,
        }
    }
}

/// Adds `n` to the counter `c` of the series `labels`. The consumer counts through its
/// stats (`Stats::record` in `consume`), which call this together with their own counter.
pub(crate) fn count(c: Count, labels: &Labels<'_>, n: u64) {
    counter!(c.name(), &labels.pairs()).increment(n);
}

/// One handler call took `elapsed`.
pub(crate) fn record_handler_latency(labels: &Labels<'_>, elapsed: Duration) {
    histogram!(HANDLER_SECONDS, &labels.pairs()).record(elapsed.as_secs_f64());
}

/// Handling of entry `entry_id` starts now: records the time since it was published (the
/// millisecond part of its id, stamped by the server). Ids not of the `ms-seq` form, or from
/// the future (clock skew), record nothing.
pub(crate) fn record_publish_to_handle(labels: &Labels<'_>, entry_id: &str) {
    if let Some(seconds) =
        publish_to_handle_seconds(entry_id, chrono::Utc::now().timestamp_millis())
    {
        histogram!(PUBLISH_TO_HANDLE_SECONDS, &labels.pairs()).record(seconds);
    }
}

fn publish_to_handle_seconds(entry_id: &str, now_ms: i64) -> Option<f64> {
    let published = i64::try_from(crate::streams::EntryId::parse(entry_id)?.ms).ok()?;
    let waited = now_ms.checked_sub(published)?;
    (waited >= 0).then(|| waited as f64 / 1000.0)
}

/// The Prometheus exporter could not start.
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
#[derive(Debug, thiserror::Error)]
#[error("cannot serve Prometheus metrics on {addr}: {source}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: std::net::SocketAddr,
    /// Why (the address is taken, or another recorder is installed).
    #[source]
    pub source: metrics_exporter_prometheus::BuildError,
}

/// Installs the Prometheus exporter as the global metrics recorder and serves
/// `GET /metrics` (any path, in fact) on `addr`, then describes the asdlc series. Call it
/// once, from inside a Tokio runtime (feature `prometheus`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// asdlc_runtime::monitor::serve_prometheus("127.0.0.1:9187".parse()?)?;
/// # Ok(()) }
/// ```
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub fn serve_prometheus(addr: std::net::SocketAddr) -> Result<(), MetricsError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|source| MetricsError { addr, source })?;
    describe_metrics();
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};

    /// Records every counter and histogram by its name and labels.
    #[derive(Default)]
    struct Capture {
        counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
        histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    }

    #[derive(Default)]
    struct Samples(Mutex<Vec<f64>>);

    impl metrics::HistogramFn for Samples {
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
            let c = self
                .counters
                .lock()
                .unwrap()
                .entry(render(key))
                .or_default()
                .clone();
            Counter::from_arc(c)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            let h = self
                .histograms
                .lock()
                .unwrap()
                .entry(render(key))
                .or_default()
                .clone();
            Histogram::from_arc(h)
        }
    }

    #[test]
    fn counters_and_histograms_carry_group_tenant_and_handler() {
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || {
            let l = |tenant, handler| Labels {
                group: "g",
                tenant,
                handler,
            };
            count(Count::Processed, &l(Some("acme"), "h"), 1);
            count(Count::Processed, &l(Some("acme"), "h"), 1);
            count(Count::Failed, &l(None, "h"), 1);
            count(Count::Retried, &l(None, "h"), 1);
            count(Count::DeadLettered, &l(None, ""), 1);
            count(Count::Duplicate, &l(Some("acme"), "h"), 1);
            count(Count::Claimed, &l(None, ""), 3);
            record_handler_latency(&l(None, "h"), Duration::from_millis(250));
        });
        let counters: BTreeMap<String, u64> = capture
            .counters
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        assert_eq!(
            counters[&"asdlc_events_processed_total{group=g,tenant=acme,handler=h}".to_owned()],
            2
        );
        assert_eq!(
            counters[&"asdlc_events_claimed_total{group=g,tenant=,handler=}".to_owned()],
            3
        );
        for name in [FAILED, RETRIED, DEAD_LETTERED, DUPLICATES] {
            assert_eq!(
                counters
                    .iter()
                    .filter(|(k, _)| k.starts_with(name))
                    .map(|(_, v)| v)
                    .sum::<u64>(),
                1,
                "{name}"
            );
        }
        let histograms = capture.histograms.lock().unwrap();
        let samples = histograms[&"asdlc_handler_seconds{group=g,tenant=,handler=h}".to_owned()]
            .0
            .lock()
            .unwrap()
            .clone();
        assert_eq!(samples, vec![0.25]);
    }

    #[test]
    fn publish_to_handle_latency_comes_from_the_entry_id() {
        assert_eq!(publish_to_handle_seconds("1000-0", 3500), Some(2.5));
        assert_eq!(publish_to_handle_seconds("1000-7", 1000), Some(0.0));
        assert_eq!(publish_to_handle_seconds("5000-0", 1000), None, "future");
        assert_eq!(publish_to_handle_seconds("garbage", 1000), None);
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || {
            let l = Labels {
                group: "g",
                tenant: None,
                handler: "h",
            };
            record_publish_to_handle(&l, "1-0");
            record_publish_to_handle(&l, "not-an-id");
        });
        let histograms = capture.histograms.lock().unwrap();
        let samples = histograms
            [&"asdlc_publish_to_handle_seconds{group=g,tenant=,handler=h}".to_owned()]
            .0
            .lock()
            .unwrap()
            .clone();
        assert_eq!(samples.len(), 1);
        assert!(samples[0] > 1.0e9, "published at the epoch: {samples:?}");
    }

    #[cfg(feature = "prometheus")]
    #[tokio::test]
    async fn prometheus_endpoint_serves_the_asdlc_series() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        serve_prometheus(addr).unwrap();
        let l = Labels {
            group: "design-handlers",
            tenant: Some("acme"),
            handler: "review",
        };
        count(Count::Processed, &l, 1);
        record_handler_latency(&l, Duration::from_millis(5));
        let mut body = String::new();
        for _ in 0..100 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                body.clear();
                s.read_to_string(&mut body).await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            body.contains(r#"asdlc_events_processed_total{group="design-handlers",tenant="acme",handler="review"} 1"#),
            "{body}"
        );
        assert!(body.contains("asdlc_handler_seconds"), "{body}");
    }
}
