//! Retention that never loses work.
//!
//! A consumer group needs an entry until it has both read it (its last-delivered id is at or
//! past it) and acknowledged it (it is older than the group's oldest pending entry). The safe
//! bound of a stream is the smallest of those positions over all its groups;
//! [`trim_acknowledged`] removes exactly the entries below it (`XTRIM MINID`, exact), with the
//! bound computed in the same Lua script (`XINFO GROUPS` and the `XPENDING` summary are allowed
//! in scripts), so no read, claim or acknowledgement can slip in between.
//!
//! What this keeps, by construction: every entry some group has not read yet (a slow group's
//! backlog), every entry some group still has pending (in flight, waiting for a retry, owned by
//! a dead consumer), and, with [`TrimOptions::min_age`], everything younger than that. A stream
//! without groups is left alone: nobody has read anything. Entries whose handling failed for
//! good are already copied to the dead-letter stream before they are acknowledged.
//!
//! One thing no trim can know: a group that does not exist yet. A group created later "from
//! the beginning" sees only what retention kept, so create groups before trimming.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::streams::value_string;

/// Options of one trim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrimOptions {
    /// Keep entries younger than this (by the server's clock and the entry id's time), even if
    /// every group is done with them.
    pub min_age: Option<Duration>,
    /// Compute and count, remove nothing.
    pub dry_run: bool,
}

impl TrimOptions {
    /// Keeps entries younger than this, even if every group is done with them.
    pub fn with_min_age(mut self, min_age: Duration) -> Self {
        self.min_age = Some(min_age);
        self
    }

    /// Computes and counts, removes nothing (`true`).
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What bounded a trim: why the first kept entry was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrimLimit {
    /// The stream does not exist.
    NoStream,
    /// The stream has no consumer groups, so nobody has read anything: nothing is removed.
    NoGroups,
    /// `group` still has `oldest_pending_id` pending (read, not acknowledged).
    Pending {
        /// The group.
        group: String,
        /// Its oldest pending entry.
        oldest_pending_id: String,
    },
    /// `group` has not read past `last_delivered_id`.
    Unread {
        /// The group.
        group: String,
        /// The last entry delivered to it.
        last_delivered_id: String,
    },
    /// Entries younger than the minimum age are kept.
    MinAge {
        /// Entries from this id on are young enough to keep.
        cutoff_id: String,
    },
    /// Nothing bounds the trim: every group has read and acknowledged every possible id.
    None,
}

impl std::fmt::Display for TrimLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrimLimit::NoStream => f.write_str("the stream does not exist"),
            TrimLimit::NoGroups => f.write_str(
                "the stream has no consumer groups, so nobody has read anything: nothing removed",
            ),
            TrimLimit::Pending {
                group,
                oldest_pending_id,
            } => write!(
                f,
                "group `{group}` has not acknowledged entry {oldest_pending_id} yet (its oldest pending)"
            ),
            TrimLimit::Unread {
                group,
                last_delivered_id,
            } if last_delivered_id == "0-0" => {
                write!(f, "group `{group}` has not read anything yet")
            }
            TrimLimit::Unread {
                group,
                last_delivered_id,
            } => write!(
                f,
                "group `{group}` has not read past entry {last_delivered_id}"
            ),
            TrimLimit::MinAge { cutoff_id } => write!(
                f,
                "entries from {cutoff_id} on are younger than the minimum age"
            ),
            TrimLimit::None => f.write_str("every group has read and acknowledged everything"),
        }
    }
}

/// What a trim removed, what it kept and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimReport {
    /// The stream.
    pub stream: String,
    /// Whether this was a dry run (`removed` then counts what would be removed).
    pub dry_run: bool,
    /// Entries removed.
    pub removed: u64,
    /// Entries before the trim.
    pub length_before: u64,
    /// Entries after the trim.
    pub length_after: u64,
    /// Entries with ids below this were removed; `None` when nothing could be (no stream, no
    /// groups).
    pub safe_min_id: Option<String>,
    /// What bounded the trim.
    pub limit: TrimLimit,
    /// The same, in words, for people and logs.
    pub kept_reason: String,
}

/// Removes the entries of `stream` that every consumer group has read and acknowledged, and
/// nothing else: an entry some group has not read yet or still has pending stays. With no
/// groups nothing is removed.
pub async fn trim_acknowledged(
    conn: &mut RedisConnection,
    stream: &str,
) -> Result<TrimReport, StreamError> {
    trim_acknowledged_with(conn, stream, TrimOptions::default()).await
}

/// Entries counted per call of a dry run: each call stays short however long the stream.
pub(crate) const DRY_RUN_PAGE: u64 = 10_000;

/// Counts the entries of `stream` below `bound`, a bounded page per call.
async fn count_below(
    conn: &mut RedisConnection,
    stream: &str,
    bound: &str,
) -> Result<u64, StreamError> {
    if bound == "0-0" {
        // Nothing is below the smallest id (and `(0-0` is no valid range end).
        return Ok(0);
    }
    let (mut total, mut from) = (0, "-".to_owned());
    loop {
        let (n, last): (u64, String) = crate::functions::COUNT_RANGE
            .key(stream)
            .arg(&from)
            .arg(bound)
            .arg(DRY_RUN_PAGE)
            .invoke_async(conn)
            .await
            .map_err(StreamError::redis(stream))?;
        total += n;
        if n < DRY_RUN_PAGE || last.is_empty() {
            return Ok(total);
        }
        from = format!("({last}");
    }
}

/// A reply of the trim script (retention.lua: `{ outcome, removed, length_before, safe_min_id,
/// limit_kind, limit_group, limit_id }`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrimReply {
    /// Entries removed; `None` in a dry run that leaves the counting to the caller (`-1`).
    removed: Option<u64>,
    length_before: u64,
    /// Entries below it are (or would be) removed; `None` if none or all.
    safe_min_id: Option<String>,
    limit: TrimLimit,
}

impl redis::FromRedisValue for TrimReply {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let bad = |v: &redis::Value| crate::functions::unexpected(crate::functions::TRIM, v);
        let items = match &v {
            redis::Value::Array(items) if items.len() == 7 => items,
            other => return Err(bad(other)),
        };
        let text = |i: usize| value_string(&items[i]).ok_or_else(|| bad(&v));
        let count = |i: usize| match items[i] {
            redis::Value::Int(n) => Ok(u64::try_from(n).ok()),
            _ => Err(bad(&v)),
        };
        let (outcome, kind) = (text(0)?, text(4)?);
        let (group, limit_id) = (text(5)?, text(6)?);
        let limit = match (outcome.as_str(), kind.as_str()) {
            ("no-stream", _) => TrimLimit::NoStream,
            ("no-groups", _) => TrimLimit::NoGroups,
            ("trimmed", "pending") => TrimLimit::Pending {
                group,
                oldest_pending_id: limit_id,
            },
            ("trimmed", "unread") => TrimLimit::Unread {
                group,
                last_delivered_id: limit_id,
            },
            ("trimmed", "min-age") => TrimLimit::MinAge {
                cutoff_id: limit_id,
            },
            ("trimmed", "none" | "") => TrimLimit::None,
            _ => return Err(bad(&v)),
        };
        Ok(TrimReply {
            removed: count(1)?,
            length_before: count(2)?.unwrap_or(0),
            safe_min_id: Some(text(3)?).filter(|s| !s.is_empty()),
            limit,
        })
    }
}

/// [`trim_acknowledged`] with a minimum age, or as a dry run (which counts in bounded
/// calls, not in one long one).
pub async fn trim_acknowledged_with(
    conn: &mut RedisConnection,
    stream: &str,
    options: TrimOptions,
) -> Result<TrimReport, StreamError> {
    let min_age_ms = options.min_age.map_or(0, |d| d.as_millis().max(1) as u64);
    let reply: TrimReply = crate::functions::TRIM
        .key(stream)
        .arg(min_age_ms)
        .arg(if options.dry_run { "1" } else { "0" })
        .invoke_async(conn)
        .await
        .map_err(StreamError::redis(stream))?;
    let TrimReply {
        removed,
        length_before,
        safe_min_id,
        limit,
    } = reply;
    let removed = match (removed, &safe_min_id) {
        (Some(n), _) => n,
        (None, Some(bound)) if options.dry_run => count_below(conn, stream, bound).await?,
        (None, _) => 0,
    };
    let length_after = if options.dry_run {
        length_before
    } else {
        length_before.saturating_sub(removed)
    };
    let remaining = length_before.saturating_sub(removed);
    let kept_reason = match &limit {
        TrimLimit::NoStream | TrimLimit::NoGroups => limit.to_string(),
        _ if remaining == 0 => {
            "nothing kept: every group has read and acknowledged every entry".to_owned()
        }
        _ => format!("kept {remaining}: {limit}"),
    };
    let report = TrimReport {
        stream: stream.to_owned(),
        dry_run: options.dry_run,
        removed,
        length_before,
        length_after,
        safe_min_id,
        limit,
        kept_reason,
    };
    tracing::debug!(
        stream,
        removed,
        dry_run = options.dry_run,
        kept = %report.kept_reason,
        "trimmed acknowledged entries"
    );
    Ok(report)
}

/// A periodic [`trim_acknowledged`] over every stream of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionPolicy {
    /// Time between two rounds.
    pub interval: Duration,
    /// Keep entries younger than this even when every group is done with them (room to
    /// inspect recent history, and for groups about to be created).
    pub min_age: Duration,
}

impl RetentionPolicy {
    /// Time between two rounds.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Keeps entries younger than this even when every group is done with them.
    pub fn with_min_age(mut self, min_age: Duration) -> Self {
        self.min_age = min_age;
        self
    }
}

impl Default for RetentionPolicy {
    /// Every 5 minutes, keeping the last hour.
    fn default() -> Self {
        RetentionPolicy {
            interval: Duration::from_secs(300),
            min_age: Duration::from_secs(3600),
        }
    }
}

/// What [`run_retention`] did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionTotals {
    /// Rounds run.
    pub rounds: u64,
    /// Entries removed over all rounds and streams.
    pub removed: u64,
    /// Stream trims that failed (logged, retried next round).
    pub errors: u64,
}

/// Runs [`trim_acknowledged_with`] (with `policy.min_age`) on every stream of `config`
/// ([`super::list_streams`], found again each round, so new tenants are covered) every
/// `policy.interval`, starting at once, until `cancel` is cancelled. Failures are logged and
/// retried next round.
pub async fn run_retention(
    mut conn: RedisConnection,
    config: Config,
    policy: RetentionPolicy,
    cancel: CancellationToken,
) -> RetentionTotals {
    let mut totals = RetentionTotals::default();
    let options = TrimOptions {
        min_age: Some(policy.min_age).filter(|d| !d.is_zero()),
        dry_run: false,
    };
    loop {
        if cancel.is_cancelled() {
            return totals;
        }
        totals.rounds += 1;
        match super::list_streams(&mut conn, &config).await {
            Ok(streams) => {
                for stream in streams {
                    if cancel.is_cancelled() {
                        return totals;
                    }
                    match trim_acknowledged_with(&mut conn, &stream, options).await {
                        Ok(report) => {
                            totals.removed += report.removed;
                            if report.removed > 0 {
                                tracing::info!(%stream, removed = report.removed, kept = %report.kept_reason, "retention trimmed acknowledged entries");
                            }
                        }
                        Err(e) => {
                            totals.errors += 1;
                            tracing::warn!(%stream, error = %e, "retention trim failed; trying next round");
                        }
                    }
                }
            }
            Err(e) => {
                totals.errors += 1;
                tracing::warn!(error = %e, "retention could not list the streams; trying next round");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.interval) => {}
            _ = cancel.cancelled() => return totals,
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::{FromRedisValue, Value};

    use super::*;

    fn reply(items: &[Value]) -> Value {
        Value::Array(items.to_vec())
    }

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_trim_reply_reads_into_its_limit() {
        let r = TrimReply::from_redis_value(reply(&[
            text("trimmed"),
            Value::Int(4),
            Value::Int(10),
            text("5-0"),
            text("pending"),
            text("g1"),
            text("5-0"),
        ]))
        .unwrap();
        assert_eq!(r.removed, Some(4));
        assert_eq!(r.length_before, 10);
        assert_eq!(r.safe_min_id.as_deref(), Some("5-0"));
        assert_eq!(
            r.limit,
            TrimLimit::Pending {
                group: "g1".into(),
                oldest_pending_id: "5-0".into()
            }
        );
    }

    #[test]
    fn a_dry_run_leaves_the_count_to_the_caller() {
        let r = TrimReply::from_redis_value(reply(&[
            text("trimmed"),
            Value::Int(-1),
            Value::Int(10),
            text("5-0"),
            text("unread"),
            text("g1"),
            text("4-0"),
        ]))
        .unwrap();
        assert_eq!(r.removed, None);
        let r = TrimReply::from_redis_value(reply(&[
            text("no-groups"),
            Value::Int(0),
            Value::Int(3),
            text(""),
            text(""),
            text(""),
            text(""),
        ]))
        .unwrap();
        assert_eq!((r.limit, r.safe_min_id), (TrimLimit::NoGroups, None));
    }

    #[test]
    fn an_unexpected_trim_reply_is_an_error_naming_it() {
        let short = TrimReply::from_redis_value(reply(&[text("trimmed")])).unwrap_err();
        assert!(short.to_string().contains("trim function"), "{short}");
        let odd = [
            text("trimmed"),
            Value::Int(0),
            Value::Int(0),
            text(""),
            text("sideways"),
            text(""),
            text(""),
        ];
        assert!(TrimReply::from_redis_value(reply(&odd)).is_err());
    }
}
