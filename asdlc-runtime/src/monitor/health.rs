//! Health: is the server reachable, and is every group keeping up?

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::RedisUrl;
use crate::connection::RedisConnection;
use crate::streams::{StreamInfo, get_stream_info};

/// How healthy the backbone is. Ordered: `Healthy < Degraded < Unhealthy`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Reachable, and every group within its thresholds.
    #[default]
    Healthy,
    /// Working, but some group is behind (or a stream is missing): look at the reasons.
    Degraded,
    /// Unreachable, or some group far behind.
    Unhealthy,
}

impl HealthStatus {
    /// The exit status a health command reports: 0 healthy, 1 degraded, 2 unhealthy.
    pub fn exit_code(self) -> i32 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Unhealthy => 2,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// The two levels of one threshold; a value at or above a level reaches it. `None` turns a
/// level off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits<T> {
    /// At or above this: degraded.
    pub degraded: Option<T>,
    /// At or above this: unhealthy.
    pub unhealthy: Option<T>,
}

impl<T: PartialOrd + Copy> Limits<T> {
    /// Both levels.
    pub fn new(degraded: T, unhealthy: T) -> Self {
        Limits {
            degraded: Some(degraded),
            unhealthy: Some(unhealthy),
        }
    }

    /// No levels: this check never changes the status.
    pub fn off() -> Self {
        Limits {
            degraded: None,
            unhealthy: None,
        }
    }

    /// The status `value` reaches, with the level it reached.
    fn judge(&self, value: T) -> Option<(HealthStatus, T)> {
        if let Some(u) = self.unhealthy
            && value >= u
        {
            return Some((HealthStatus::Unhealthy, u));
        }
        if let Some(d) = self.degraded
            && value >= d
        {
            return Some((HealthStatus::Degraded, d));
        }
        None
    }
}

/// What counts as behind, per group (lag, pending, oldest pending) and per stream (dead
/// letters, a missing stream).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthThresholds {
    /// Entries a group has not read yet. Default: degraded at 1,000, unhealthy at 10,000.
    pub lag: Limits<u64>,
    /// Entries a group has read and not acknowledged. Default: 1,000 / 10,000.
    pub pending: Limits<u64>,
    /// Age of a group's oldest pending entry. Default: 1 minute / 5 minutes.
    pub oldest_pending: Limits<Duration>,
    /// Entries in a stream's dead-letter stream. Default: off (dead letters wait for an
    /// operator, they do not make the system less able to work).
    pub dead_letters: Limits<u64>,
    /// The status of a stream that does not exist (no consumer started, nothing published).
    /// Default: degraded.
    pub missing_stream: HealthStatus,
}

impl HealthThresholds {
    /// Entries a group has not read yet.
    pub fn with_lag(mut self, lag: Limits<u64>) -> Self {
        self.lag = lag;
        self
    }

    /// Entries a group has read and not acknowledged.
    pub fn with_pending(mut self, pending: Limits<u64>) -> Self {
        self.pending = pending;
        self
    }

    /// Age of a group's oldest pending entry.
    pub fn with_oldest_pending(mut self, oldest_pending: Limits<Duration>) -> Self {
        self.oldest_pending = oldest_pending;
        self
    }

    /// Entries in a stream's dead-letter stream.
    pub fn with_dead_letters(mut self, dead_letters: Limits<u64>) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    /// The status of a stream that does not exist.
    pub fn with_missing_stream(mut self, missing_stream: HealthStatus) -> Self {
        self.missing_stream = missing_stream;
        self
    }
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            lag: Limits::new(1_000, 10_000),
            pending: Limits::new(1_000, 10_000),
            oldest_pending: Limits::new(Duration::from_secs(60), Duration::from_secs(300)),
            dead_letters: Limits::off(),
            missing_stream: HealthStatus::Degraded,
        }
    }
}

/// The server, as `INFO server` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `valkey` or `redis`.
    pub name: String,
    /// Its version (`valkey_version`, else `redis_version`).
    pub version: String,
    /// `standalone`, `cluster` or `sentinel`.
    pub mode: String,
}

/// The result of [`check_health`]: structured for logs and export (`serde`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The worst status any check reached.
    pub status: HealthStatus,
    /// Why the status is not healthy, one line per finding, worst first.
    pub reasons: Vec<String>,
    /// The `PING` round trip in milliseconds; `None` when the server did not answer.
    pub ping_ms: Option<f64>,
    /// The server's version, when reachable.
    pub server_version: Option<String>,
    /// `standalone`, `cluster` or `sentinel`, when reachable.
    pub server_mode: Option<String>,
    /// `valkey` or `redis`, when reachable.
    pub server_name: Option<String>,
    /// Every stream checked.
    pub streams: Vec<StreamInfo>,
    /// When the check ran (RFC 3339, UTC).
    pub checked_at: String,
}

impl HealthReport {
    fn new() -> Self {
        HealthReport {
            checked_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ..HealthReport::default()
        }
    }

    fn unreachable(mut self, why: String) -> Self {
        self.status = HealthStatus::Unhealthy;
        self.reasons.push(why);
        self
    }

    fn finding(&mut self, status: HealthStatus, reason: String) {
        self.status = self.status.max(status);
        self.reasons.push(format!("{status}: {reason}"));
    }
}

/// Connects to `url` and runs [`check_health`]; a server that cannot be reached is
/// `Unhealthy`, never an error.
pub async fn check_health_url(
    url: &RedisUrl,
    streams: &[String],
    thresholds: &HealthThresholds,
) -> HealthReport {
    match RedisConnection::connect(url).await {
        Ok(mut conn) => check_health(&mut conn, streams, thresholds).await,
        Err(e) => HealthReport::new().unreachable(format!(
            "unhealthy: cannot connect to {}: {e}",
            url.redacted()
        )),
    }
}

/// Pings the server, reads its version and mode, then checks each of `streams` (find them
/// with [`super::list_streams`]) against `thresholds`. Never fails: an unreachable server or
/// a failing command makes the report `Unhealthy`, with the reason.
pub async fn check_health(
    conn: &mut RedisConnection,
    streams: &[String],
    thresholds: &HealthThresholds,
) -> HealthReport {
    let mut report = HealthReport::new();
    let started = Instant::now();
    if let Err(e) = redis::cmd("PING").query_async::<String>(conn).await {
        return report.unreachable(format!("unhealthy: server unreachable: {e}"));
    }
    report.ping_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    match server_info(conn).await {
        Ok(info) => {
            report.server_version = Some(info.version);
            report.server_mode = Some(info.mode);
            report.server_name = Some(info.name);
        }
        Err(e) => report.finding(HealthStatus::Degraded, format!("INFO failed: {e}")),
    }
    for stream in streams {
        match get_stream_info(conn, stream).await {
            Ok(info) => {
                judge_stream(&mut report, &info, thresholds);
                report.streams.push(info);
            }
            Err(e) => report.finding(
                HealthStatus::Unhealthy,
                format!("cannot read stream `{stream}`: {e}"),
            ),
        }
    }
    // Worst first, keeping the order of discovery within a level.
    report.reasons.sort_by_key(|r| {
        if r.starts_with("unhealthy") {
            0
        } else if r.starts_with("degraded") {
            1
        } else {
            2
        }
    });
    tracing::debug!(status = %report.status, reasons = report.reasons.len(), "health checked");
    report
}

/// `INFO server`: name, version and mode.
pub(crate) async fn server_info(conn: &mut RedisConnection) -> redis::RedisResult<ServerInfo> {
    let text: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let (name, version) = match field("valkey_version") {
        Some(v) => ("valkey", v),
        None => ("redis", field("redis_version").unwrap_or_default()),
    };
    Ok(ServerInfo {
        name: field("server_name").unwrap_or_else(|| name.to_owned()),
        version,
        mode: field("redis_mode")
            .or_else(|| field("server_mode"))
            .unwrap_or_else(|| "standalone".to_owned()),
    })
}

fn judge_stream(report: &mut HealthReport, info: &StreamInfo, t: &HealthThresholds) {
    let stream = &info.stream;
    if !info.exists {
        if t.missing_stream != HealthStatus::Healthy {
            report.finding(
                t.missing_stream,
                format!("stream `{stream}` does not exist (no consumer has started on it and nothing was published)"),
            );
        }
        return;
    }
    if let Some((status, limit)) = t.dead_letters.judge(info.dead_letters) {
        report.finding(
            status,
            format!(
                "stream `{stream}` has {} dead letters (limit {limit})",
                info.dead_letters
            ),
        );
    }
    for g in &info.groups {
        let group = &g.name;
        if let Some(lag) = g.lag
            && let Some((status, limit)) = t.lag.judge(lag)
        {
            report.finding(
                status,
                format!("group `{group}` on `{stream}` is {lag} entries behind (limit {limit})"),
            );
        }
        if let Some((status, limit)) = t.pending.judge(g.pending) {
            report.finding(
                status,
                format!(
                    "group `{group}` on `{stream}` has {} pending entries (limit {limit})",
                    g.pending
                ),
            );
        }
        let age = Duration::from_millis(g.oldest_pending_ms);
        if g.pending > 0
            && let Some((status, limit)) = t.oldest_pending.judge(age)
        {
            report.finding(
                status,
                format!(
                    "group `{group}` on `{stream}` has an entry pending for {:.1}s (limit {:.1}s)",
                    age.as_secs_f64(),
                    limit.as_secs_f64()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::GroupInfo;

    fn stream_with(group: GroupInfo) -> StreamInfo {
        StreamInfo {
            stream: "s".into(),
            exists: true,
            groups: vec![group],
            ..StreamInfo::default()
        }
    }

    #[test]
    fn limits_pick_the_highest_level_reached() {
        let l = Limits::new(10u64, 100);
        assert_eq!(l.judge(9), None);
        assert_eq!(l.judge(10), Some((HealthStatus::Degraded, 10)));
        assert_eq!(l.judge(100), Some((HealthStatus::Unhealthy, 100)));
        assert_eq!(Limits::<u64>::off().judge(u64::MAX), None);
    }

    #[test]
    fn every_threshold_is_reported_with_its_stream_and_group() {
        let mut report = HealthReport::new();
        let info = stream_with(GroupInfo {
            name: "g".into(),
            pending: 5,
            lag: Some(20_000),
            oldest_pending_ms: 90_000,
            ..GroupInfo::default()
        });
        judge_stream(&mut report, &info, &HealthThresholds::default());
        assert_eq!(report.status, HealthStatus::Unhealthy);
        assert_eq!(report.reasons.len(), 2, "{:?}", report.reasons);
        assert!(report.reasons[0].starts_with("unhealthy: group `g` on `s` is 20000 entries"));
        assert!(report.reasons[1].starts_with("degraded: group `g` on `s` has an entry pending"));
    }

    #[test]
    fn unknown_lag_and_empty_groups_are_healthy() {
        let mut report = HealthReport::new();
        let info = stream_with(GroupInfo {
            name: "g".into(),
            oldest_pending_ms: 10_000_000,
            ..GroupInfo::default()
        });
        judge_stream(&mut report, &info, &HealthThresholds::default());
        assert_eq!(report.status, HealthStatus::Healthy);
        assert!(report.reasons.is_empty());
    }

    #[test]
    fn exit_codes_and_json_names() {
        assert_eq!(HealthStatus::Healthy.exit_code(), 0);
        assert_eq!(HealthStatus::Degraded.exit_code(), 1);
        assert_eq!(HealthStatus::Unhealthy.exit_code(), 2);
        assert_eq!(
            serde_json::to_string(&HealthStatus::Degraded).unwrap(),
            "\"degraded\""
        );
    }
}
