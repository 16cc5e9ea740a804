//! The consumer-name lock: one live process per consumer name and group.
//!
//! A stable consumer name lets a restarted process find its own pending entries at once, but
//! two live processes sharing a name would share (and double-handle) those entries. So a
//! consumer holds a lock key while it runs, refreshed every [`REFRESH`]. Its value names the
//! holder's Redis client id: a process killed with SIGKILL loses its connection at once, so a
//! restart under the same name sees the old client gone and takes over without waiting for
//! the lock to expire; a live holder makes the newcomer fail with
//! [`ConsumeError::NameInUse`].

use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;

use crate::connection::RedisConnection;
use crate::error::ConsumeError;

/// How long a lock lives without a refresh.
pub(crate) const TTL: Duration = Duration::from_secs(15);
/// How often a running consumer refreshes its lock.
pub(crate) const REFRESH: Duration = Duration::from_secs(3);

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("name_lock.lua")));

/// A held consumer-name lock.
#[derive(Debug)]
pub(crate) struct NameLock {
    key: String,
    token: String,
    stream: String,
    group: String,
    consumer: String,
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
    let id = value.rsplit_once('|')?.1;
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
    /// Takes the lock for `consumer` in `group`, or fails with `NameInUse` if a live process
    /// holds it.
    pub(crate) async fn acquire(
        conn: &mut RedisConnection,
        key: String,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<NameLock, ConsumeError> {
        let lock = NameLock {
            key,
            token: uuid::Uuid::now_v7().simple().to_string(),
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + TTL + Duration::from_secs(1);
        loop {
            let value = lock.value(conn).await;
            let reply: Value = lock.invoke(conn, "acquire", &value, "").await?;
            let current = match reply {
                Value::Int(1) => return Ok(lock),
                Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            };
            if holder_alive(conn, &current).await == Some(false) {
                let value = lock.value(conn).await;
                if let Value::Int(1) = lock.invoke(conn, "takeover", &value, &current).await? {
                    tracing::info!(
                        group,
                        consumer,
                        "took over the name of a consumer whose process is gone"
                    );
                    return Ok(lock);
                }
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ConsumeError::NameInUse {
                    stream: stream.to_owned(),
                    group: group.to_owned(),
                    consumer: consumer.to_owned(),
                });
            }
            // The holder may be a process that just died on a server that restarted (client
            // ids start over), or one that cannot be checked: wait for its lock to lapse.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Refreshes the lock; `Err(NameLost)` if another process took it.
    pub(crate) async fn refresh(&self, conn: &mut RedisConnection) -> Result<(), ConsumeError> {
        let value = self.value(conn).await;
        match self.invoke(conn, "refresh", &value, "").await? {
            Value::Int(1) => Ok(()),
            _ => Err(ConsumeError::NameLost {
                group: self.group.clone(),
                consumer: self.consumer.clone(),
            }),
        }
    }

    /// Releases the lock (best effort: it lapses by itself anyway).
    pub(crate) async fn release(&self, conn: &mut RedisConnection) {
        let _ = self.invoke(conn, "release", "", "").await;
    }

    async fn value(&self, conn: &mut RedisConnection) -> String {
        format!("{}|{}", self.token, client_id(conn).await)
    }

    async fn invoke(
        &self,
        conn: &mut RedisConnection,
        mode: &str,
        value: &str,
        expected: &str,
    ) -> Result<Value, ConsumeError> {
        SCRIPT
            .key(&self.key)
            .arg(&self.token)
            .arg(value)
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
