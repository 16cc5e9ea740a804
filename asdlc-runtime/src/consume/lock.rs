//! The consumer-name lock: one live process per consumer name and group.
//!
//! A stable consumer name lets a restarted process find its own pending entries at once, but
//! two live processes sharing a name would share (and double-handle) those entries. So a
//! consumer holds a lock key while it runs, renewed every [`REFRESH`] under a random token of
//! its own. The renewal time is in the value, so a newcomer can tell a live holder (the value
//! changes within a renewal period: the newcomer is refused with
//! [`ConsumeError::NameInUse`] in about that time) from a dead one (it does not). A holder
//! whose connection was cut or whose server restarted keeps its name: it renews as soon as it
//! is connected again, and a newcomer never takes a name before it has watched it unrenewed
//! for [`WATCH`]. A dead holder's name is taken over after [`WATCH`] when the server can say
//! its connection is gone (`CLIENT LIST`), else once the lock lapsed ([`TTL`]).

use std::time::Duration;

use redis::Value;

use crate::connection::RedisConnection;
use crate::error::ConsumeError;
use crate::retry::Policy;

/// How long a lock lives without a renewal.
pub(crate) const TTL: Duration = Duration::from_secs(6);
/// How often a running consumer renews its lock.
pub(crate) const REFRESH: Duration = Duration::from_millis(500);
/// How long a newcomer watches a lock unrenewed before it believes the holder gone, and how
/// long it waits on probation after finding a name free.
pub(crate) const WATCH: Duration = Duration::from_secs(2);
/// How a newcomer polls a name held by another: every 100 ms, until a dead holder's lock
/// has lapsed ([`TTL`]) and its probation passed.
const CLAIM_POLL: Policy = Policy::constant(Duration::from_millis(100))
    .deadline(TTL.saturating_add(WATCH.saturating_mul(2)));

/// A held consumer-name lock.
#[derive(Debug)]
pub(crate) struct NameLock {
    key: String,
    marker: String,
    token: String,
    stream: String,
    group: String,
    consumer: String,
    /// The token of the dead process this lock was taken over from, if known.
    predecessor: Option<String>,
}

/// A reply of the lock script (name_lock.lua: `{1, predecessor or '', probation 0/1}` or
/// `{0, current value}`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum LockReply {
    /// The name is ours.
    Taken {
        /// The token of the process that held the name before, if known.
        predecessor: Option<String>,
        /// Whether the name is ours only on probation.
        probation: bool,
    },
    /// Someone else holds the name: the lock's current value.
    Refused(String),
}

impl redis::FromRedisValue for LockReply {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        if let Value::Array(items) = &v {
            match (items.first(), items.get(1).and_then(text), items.get(2)) {
                (Some(Value::Int(1)), Some(pred), probation) => {
                    return Ok(LockReply::Taken {
                        predecessor: Some(pred).filter(|s| !s.is_empty()),
                        probation: probation == Some(&Value::Int(1)),
                    });
                }
                (Some(Value::Int(0)), Some(current), None) => {
                    return Ok(LockReply::Refused(current));
                }
                _ => {}
            }
        }
        Err(crate::functions::unexpected(
            crate::functions::NAME_LOCK,
            &v,
        ))
    }
}

async fn client_id(conn: &mut RedisConnection) -> String {
    redis::cmd("CLIENT")
        .arg("ID")
        .query_async::<i64>(conn)
        .await
        .map(|id| id.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Whether the client that wrote `value` is still connected; `None` if the server will not
/// say (an ACL user without CLIENT LIST).
async fn holder_alive(conn: &mut RedisConnection, value: &str) -> Option<bool> {
    let id = value.split('|').nth(2)?;
    if id.parse::<u64>().is_err() {
        return None;
    }
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("ID")
        .arg(id)
        .query_async(conn)
        .await
        .ok()?;
    Some(!list.trim().is_empty())
}

impl NameLock {
    /// Takes the lock for `consumer` in `group` under `token`, or fails with `NameInUse` if
    /// a live process holds it.
    pub(crate) async fn acquire(
        conn: &mut RedisConnection,
        key: String,
        marker: String,
        token: &str,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<NameLock, ConsumeError> {
        let mut lock = NameLock {
            key,
            marker,
            token: token.to_owned(),
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            predecessor: None,
        };
        let in_use = || ConsumeError::NameInUse {
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        };
        let mut polls = CLAIM_POLL.start();
        let mut seen: Option<(String, tokio::time::Instant)> = None;
        loop {
            match lock.invoke(conn, "claim", "").await? {
                LockReply::Taken {
                    predecessor,
                    probation: false,
                } => {
                    lock.predecessor = predecessor;
                    return Ok(lock);
                }
                LockReply::Taken { .. } => {
                    // On probation: a live holder whose server lost the key in a restart
                    // renews it meanwhile, and keeps its name.
                    tokio::time::sleep(WATCH).await;
                    return match lock.invoke(conn, "confirm", "").await? {
                        LockReply::Taken { .. } => Ok(lock),
                        LockReply::Refused(_) => Err(in_use()),
                    };
                }
                LockReply::Refused(current) => {
                    let now = tokio::time::Instant::now();
                    match &seen {
                        None => seen = Some((current, now)),
                        // Renewed (or taken by another newcomer) while we watched: alive.
                        Some((first, _)) if *first != current => return Err(in_use()),
                        Some((first, since)) => {
                            if now.duration_since(*since) >= WATCH
                                && holder_alive(conn, first).await == Some(false)
                            {
                                let expected = first.clone();
                                if let LockReply::Taken { predecessor, .. } =
                                    lock.invoke(conn, "takeover", &expected).await?
                                {
                                    tracing::info!(
                                        group,
                                        consumer,
                                        "took over the name of a consumer whose process is gone"
                                    );
                                    lock.predecessor = predecessor;
                                    return Ok(lock);
                                }
                            }
                        }
                    }
                    let Some(pause) = polls.failed() else {
                        return Err(in_use());
                    };
                    crate::retry::sleep(pause, None).await;
                }
            }
        }
    }

    /// The stream this lock is on.
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    /// The token of the dead process whose name this lock took over, if known: its leases
    /// are this process's to take back.
    pub(crate) fn predecessor(&self) -> Option<&str> {
        self.predecessor.as_deref()
    }

    /// Renews the lock; `Err(NameLost)` if another process took it.
    pub(crate) async fn refresh(&self, conn: &mut RedisConnection) -> Result<(), ConsumeError> {
        match self.invoke(conn, "refresh", "").await? {
            LockReply::Taken { .. } => Ok(()),
            LockReply::Refused(_) => Err(ConsumeError::NameLost {
                group: self.group.clone(),
                consumer: self.consumer.clone(),
            }),
        }
    }

    /// Releases the lock (best effort: it lapses by itself anyway).
    pub(crate) async fn release(&self, conn: &mut RedisConnection) {
        let _ = self.invoke(conn, "release", "").await;
    }

    async fn invoke(
        &self,
        conn: &mut RedisConnection,
        mode: &str,
        expected: &str,
    ) -> Result<LockReply, ConsumeError> {
        let client = client_id(conn).await;
        crate::functions::NAME_LOCK
            .key(&self.key)
            .key(&self.marker)
            .arg(&self.token)
            .arg(client)
            .arg(TTL.as_millis() as u64)
            .arg(mode)
            .arg(expected)
            .invoke_async(conn)
            .await
            .map_err(|source| ConsumeError::Redis {
                stream: self.stream.clone(),
                group: self.group.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use redis::{FromRedisValue, Value};

    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn lock_replies_read_as_taken_or_refused() {
        let taken = Value::Array(vec![Value::Int(1), text("tok"), Value::Int(1)]);
        assert_eq!(
            LockReply::from_redis_value(taken).unwrap(),
            LockReply::Taken {
                predecessor: Some("tok".into()),
                probation: true
            }
        );
        let released = Value::Array(vec![Value::Int(1), text("")]);
        assert_eq!(
            LockReply::from_redis_value(released).unwrap(),
            LockReply::Taken {
                predecessor: None,
                probation: false
            }
        );
        let refused = Value::Array(vec![Value::Int(0), text("other|H|7|1")]);
        assert_eq!(
            LockReply::from_redis_value(refused).unwrap(),
            LockReply::Refused("other|H|7|1".into())
        );
        let odd = Value::Array(vec![Value::Int(2), text("x")]);
        let err = LockReply::from_redis_value(odd).unwrap_err();
        assert!(err.to_string().contains("name_lock function"), "{err}");
    }
}
