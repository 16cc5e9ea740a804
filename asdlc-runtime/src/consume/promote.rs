//! The promoter every running consumer runs: appends its streams' scheduled events when they
//! fall due (see [`crate::schedule`]), and expires approval gates at their deadline (see
//! [`crate::gate`]). Promoters of several consumers race harmlessly: each
//! due event is appended by exactly one call.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::shared::Shared;
use crate::schedule::promote;

/// The most events one call appends; a full call is followed by the next at once.
const BATCH: usize = 500;
/// The longest pause between two looks at a stream's schedule: an event scheduled for sooner
/// than the next due one is appended at most this late.
const IDLE: Duration = Duration::from_millis(200);
/// The shortest pause when nothing was due: the next look is at least this much later.
const MIN_WAIT: Duration = Duration::from_millis(1);

pub(super) async fn promote_loop(shared: Arc<Shared>) {
    let mut conn = shared.conn.clone();
    loop {
        let mut wait = IDLE;
        for s in shared.stream_list() {
            match promote(&mut conn, &s.keys, BATCH, shared.config.max_len).await {
                Ok(p) => {
                    if !p.appended.is_empty() {
                        tracing::debug!(stream = %s.name, appended = p.appended.len(), "scheduled events due: appended");
                    }
                    if p.appended.len() == BATCH {
                        wait = Duration::ZERO;
                    } else if let Some(next) = p.next_due {
                        wait = wait.min(next.max(MIN_WAIT));
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %s.name, error = %e, "appending scheduled events failed; trying again");
                }
            }
            match expire_gates(&mut conn, &s.keys, shared.config.max_len).await {
                Ok(Some(next)) => {
                    // The deadline is compared with this clock here and the server's there:
                    // never spin on a difference between them.
                    let until = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    wait = wait.min(until.max(MIN_WAIT));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(stream = %s.name, error = %e, "expiring approval gates failed; trying again");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stop.cancelled() => return,
        }
    }
}

/// Expires the gates whose deadline passed; returns the next deadline.
async fn expire_gates(
    conn: &mut crate::connection::RedisConnection,
    keys: &crate::keys::StreamKeys,
    max_len: Option<usize>,
) -> redis::RedisResult<Option<chrono::DateTime<Utc>>> {
    let expired = crate::gate::expire_due(conn, keys, max_len).await?;
    if expired > 0 {
        tracing::info!(
            stream = keys.stream(),
            expired,
            "approval gates expired at their deadline"
        );
    }
    crate::gate::next_deadline(conn, keys).await
}
