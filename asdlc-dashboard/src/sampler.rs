//! Throughput, sampled by the server: every few seconds, each group's count of entries read
//! and acknowledged (`entries-read` minus pending, Redis 7+); the rate between two samples is
//! the group's processed/s. Sampled server-side so every open page sees the same history from
//! the moment the dashboard started, not from the moment the page was opened.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asdlc_runtime::monitor::list_streams;
use asdlc_runtime::{Config, RedisConnection, get_stream_info};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One point of a group's chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// Entries processed per second since the previous sample.
    pub per_second: f64,
}

/// The chart of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSeries {
    /// The stream.
    pub stream: String,
    /// The group.
    pub group: String,
    /// Oldest first.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Default)]
struct Series {
    last: Option<(i64, u64)>,
    samples: VecDeque<Sample>,
}

/// The samples of every group, shared by the sampler and the API.
#[derive(Debug, Clone)]
pub struct Throughput {
    keep: usize,
    series: Arc<Mutex<BTreeMap<(String, String), Series>>>,
}

impl Throughput {
    pub(crate) fn new(keep: usize) -> Self {
        Throughput {
            keep,
            series: Arc::default(),
        }
    }

    /// Records that `group` on `stream` had processed `done` entries in total at `at_ms`.
    pub(crate) fn record(&self, stream: &str, group: &str, at_ms: i64, done: u64) {
        let mut all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = all
            .entry((stream.to_owned(), group.to_owned()))
            .or_default();
        if let Some((t0, d0)) = s.last
            && at_ms > t0
        {
            // A group recreated (or a counter reset) goes backwards: count it as no progress.
            let per_second = done.saturating_sub(d0) as f64 * 1000.0 / (at_ms - t0) as f64;
            s.samples.push_back(Sample { at_ms, per_second });
            while s.samples.len() > self.keep {
                s.samples.pop_front();
            }
        }
        s.last = Some((at_ms, done));
    }

    /// Every group's samples, optionally of `streams` only.
    pub fn snapshot(&self, streams: Option<&[String]>) -> Vec<GroupSeries> {
        let all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|((stream, _), _)| streams.is_none_or(|only| only.contains(stream)))
            .map(|((stream, group), s)| GroupSeries {
                stream: stream.clone(),
                group: group.clone(),
                samples: s.samples.iter().copied().collect(),
            })
            .collect()
    }
}

/// Samples every group of every stream each `every` until `stop`.
pub(crate) async fn run(
    mut conn: RedisConnection,
    config: Config,
    throughput: Throughput,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sample(&mut conn, &config, &throughput).await {
            tracing::debug!(error = %e, "throughput sample failed");
        }
    }
}

async fn sample(
    conn: &mut RedisConnection,
    config: &Config,
    throughput: &Throughput,
) -> Result<(), asdlc_runtime::StreamError> {
    for stream in list_streams(conn, config).await? {
        let info = get_stream_info(conn, &stream).await?;
        let at_ms = chrono::Utc::now().timestamp_millis();
        for g in &info.groups {
            if let Some(read) = g.entries_read {
                throughput.record(&stream, &g.name, at_ms, read.saturating_sub(g.pending));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_progress_per_second_between_samples() {
        let t = Throughput::new(3);
        t.record("s", "g", 1_000, 10);
        t.record("s", "g", 3_000, 30);
        t.record("s", "g", 4_000, 30);
        t.record("s", "g", 5_000, 5);
        t.record("s", "g", 6_000, 9);
        let series = t.snapshot(None);
        assert_eq!(series.len(), 1);
        let rates: Vec<f64> = series[0].samples.iter().map(|s| s.per_second).collect();
        // The first (10/s) fell out of the three kept; a reset counts as 0.
        assert_eq!(rates, vec![0.0, 0.0, 4.0]);
        assert!(t.snapshot(Some(&["other".to_owned()])).is_empty());
    }
}
