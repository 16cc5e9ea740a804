//! Connections to Redis: one type for everything asdlc sends, reconnecting by itself.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisUrl;

/// How long an ordinary command may take before it fails with a timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A multiplexed, self-reconnecting Redis connection. Cheap to clone: clones share one
/// socket, so use a separate connection for blocking reads.
#[derive(Clone)]
pub struct RedisConnection {
    inner: ConnectionManager,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection").finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects to `url`, with [`DEFAULT_RESPONSE_TIMEOUT`].
    pub async fn connect(url: &RedisUrl) -> redis::RedisResult<Self> {
        Self::connect_with_timeout(url, DEFAULT_RESPONSE_TIMEOUT).await
    }

    /// Connects to `url`; commands fail after `response_timeout`. A connection for blocking
    /// reads needs a timeout longer than its longest block.
    pub async fn connect_with_timeout(
        url: &RedisUrl,
        response_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let inner = client.get_connection_manager_with_config(config).await?;
        Ok(RedisConnection { inner })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
