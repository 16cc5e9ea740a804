//! Replaying dead letters: one back to its source stream (for every group, or for the group
//! that gave up on it), or all of them, skipping those that cannot succeed.

use redis::Value;
use serde::Serialize;

use super::{FIELD_PREFIX, REPLAY_GROUP_FIELD, range};
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::keys::StreamKeys;

/// Re-publishes dead letter `id` to its source stream with its original fields and removes
/// it, atomically. Every group sees the copy; a group that already handled the original
/// skips it. Returns the new entry id, or `None` if there is no such dead letter.
pub async fn replay(
    conn: &mut RedisConnection,
    stream: &str,
    id: &str,
) -> Result<Option<String>, StreamError> {
    replay_inner(conn, stream, id, "").await
}

/// [`replay`] for one group: only `group` handles the copy; every other group acknowledges
/// it unhandled. `group` must be the group that gave up on the letter and must exist (any
/// other would lose it: a group that handled the original skips the copy), else an error.
pub async fn replay_to_group(
    conn: &mut RedisConnection,
    stream: &str,
    id: &str,
    group: &str,
) -> Result<Option<String>, StreamError> {
    crate::keys::validate_group(group)?;
    replay_inner(conn, stream, id, group).await
}

async fn replay_inner(
    conn: &mut RedisConnection,
    stream: &str,
    id: &str,
    group: &str,
) -> Result<Option<String>, StreamError> {
    let keys = StreamKeys::new(stream);
    crate::functions::REPLAY
        .key(keys.dead_letter())
        .key(stream)
        .arg(id)
        .arg(FIELD_PREFIX)
        .arg(group)
        .arg(REPLAY_GROUP_FIELD)
        .invoke_async(conn)
        .await
        .map_err(StreamError::redis(stream))
}

/// How [`replay_all_with`] replays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// Replay for this group only (see [`replay_to_group`]); `None`: for every group.
    pub to_group: Option<String>,
    /// Replay only dead letters this group gave up on; `None`: every dead letter.
    pub from_group: Option<String>,
    /// Also replay dead letters that cannot succeed ([`DeadLetter::cannot_succeed`](super::DeadLetter::cannot_succeed)); they
    /// are dead-lettered again. A truncated one is never replayed.
    pub include_malformed: bool,
}

impl ReplayOptions {
    /// Replays for this group only (see [`replay_to_group`]).
    pub fn with_to_group(mut self, to_group: impl Into<String>) -> Self {
        self.to_group = Some(to_group.into());
        self
    }

    /// Replays only dead letters this group gave up on.
    pub fn with_from_group(mut self, from_group: impl Into<String>) -> Self {
        self.from_group = Some(from_group.into());
        self
    }

    /// Also replays dead letters that cannot succeed (`true`).
    pub fn with_include_malformed(mut self, include_malformed: bool) -> Self {
        self.include_malformed = include_malformed;
        self
    }
}

/// One dead letter put back on its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// The source stream it went back to.
    pub stream: String,
    /// Its id in the dead-letter stream (now removed).
    pub dead_letter_id: String,
    /// The copy's id in the source stream.
    pub new_id: String,
}

/// One dead letter left where it is, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The source stream of its dead-letter stream.
    pub stream: String,
    /// Its id in the dead-letter stream.
    pub dead_letter_id: String,
    /// Why it was not replayed.
    pub reason: String,
}

/// What [`replay_all_with`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Dead letters put back.
    pub replayed: Vec<Replayed>,
    /// Dead letters left, with why.
    pub skipped: Vec<Skipped>,
}

/// Replays the dead letters of a stream batch by batch, so a caller can show progress.
/// It covers the dead letters that exist when it starts: one dead-lettered again meanwhile
/// is not replayed a second time.
#[derive(Debug)]
pub struct ReplayAll {
    stream: String,
    options: ReplayOptions,
    after: Option<String>,
    last: Option<String>,
}

impl ReplayAll {
    /// Starts replaying `stream`'s dead letters.
    pub async fn new(
        conn: &mut RedisConnection,
        stream: &str,
        options: ReplayOptions,
    ) -> Result<Self, StreamError> {
        if let Some(g) = &options.to_group {
            crate::keys::validate_group(g)?;
        }
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(StreamKeys::new(stream).dead_letter())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await
            .map_err(StreamError::redis(stream))?;
        let last = crate::reply::parse_present_entries(newest)
            .into_iter()
            .next()
            .map(|(id, _)| id);
        Ok(ReplayAll {
            stream: stream.to_owned(),
            options,
            after: None,
            last,
        })
    }

    /// Replays the next batch (up to 100 dead letters); `None` when all are done.
    pub async fn next_batch(
        &mut self,
        conn: &mut RedisConnection,
    ) -> Result<Option<ReplayReport>, StreamError> {
        let Some(last) = self.last.clone() else {
            return Ok(None);
        };
        let start = match &self.after {
            Some(id) => format!("({id}"),
            None => "-".to_owned(),
        };
        let batch = range(conn, &self.stream, &start, &last, 100).await?;
        let Some(tail) = batch.last() else {
            self.last = None;
            return Ok(None);
        };
        self.after = Some(tail.id.clone());
        if tail.id == last {
            self.last = None;
        }
        let mut report = ReplayReport::default();
        for d in batch {
            if self
                .options
                .from_group
                .as_deref()
                .is_some_and(|g| g != d.group)
            {
                continue;
            }
            let why = d.cannot_succeed();
            if let Some(reason) = why
                && (!self.options.include_malformed || d.truncated_from.is_some())
            {
                report.skipped.push(Skipped {
                    stream: self.stream.clone(),
                    dead_letter_id: d.id,
                    reason,
                });
                continue;
            }
            let to = self.options.to_group.as_deref().unwrap_or("");
            if !to.is_empty() && to != d.group {
                report.skipped.push(Skipped {
                    stream: self.stream.clone(),
                    reason: format!("given up by group {}, not {to}", d.group),
                    dead_letter_id: d.id,
                });
                continue;
            }
            match replay_inner(conn, &self.stream, &d.id, to).await {
                Ok(Some(new_id)) => report.replayed.push(Replayed {
                    stream: self.stream.clone(),
                    dead_letter_id: d.id,
                    new_id,
                }),
                Ok(None) => {}
                // The function refused this letter (and changed nothing): say so, go on.
                Err(StreamError::Redis { source, .. })
                    if source.to_string().contains("asdlc replay:") =>
                {
                    report.skipped.push(Skipped {
                        stream: self.stream.clone(),
                        dead_letter_id: d.id,
                        reason: source.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(report))
    }
}

/// Replays every dead letter of `stream` for every group, skipping those that cannot
/// succeed (see [`ReplayReport::skipped`]).
pub async fn replay_all(
    conn: &mut RedisConnection,
    stream: &str,
) -> Result<ReplayReport, StreamError> {
    replay_all_with(conn, stream, ReplayOptions::default()).await
}

/// [`replay_all`] with options: one target group, only one group's dead letters, or the
/// malformed ones too.
pub async fn replay_all_with(
    conn: &mut RedisConnection,
    stream: &str,
    options: ReplayOptions,
) -> Result<ReplayReport, StreamError> {
    let mut all = ReplayAll::new(conn, stream, options).await?;
    let mut report = ReplayReport::default();
    while let Some(batch) = all.next_batch(conn).await? {
        report.replayed.extend(batch.replayed);
        report.skipped.extend(batch.skipped);
    }
    Ok(report)
}
