//! Connections to Redis: one type for everything asdlc sends, to one server or to a Redis
//! Cluster, reconnecting by itself.
//!
//! [`RedisConnection::connect`] looks at the URL (see [`RedisUrl`]): `redis://host:port` gives
//! a connection to one server (redis-rs's `ConnectionManager`), `redis+cluster://host:port,...`
//! a connection to a cluster (redis-rs's async cluster client), which learns the slot map from
//! the seed nodes, sends each command to the master of its key's slot, follows `MOVED` and
//! `ASK` redirections, and refreshes the slot map when a node fails over. Everything in asdlc
//! takes a `&mut RedisConnection`, so publishing, consuming, recovery, dead letters and
//! monitoring work on both unchanged.
//!
//! # What a cluster asks of asdlc
//!
//! - **One slot per command.** Every key asdlc derives from a stream hashes to the stream's slot
//!   (the slot rule of [`crate::keys`]), so each script runs on one node. A consumer reading
//!   several streams with one `XREADGROUP` needs them all in one slot:
//!   [`crate::keys::partition_by_slot`] groups streams that can share a consumer.
//! - **Pipelines across slots** (a batch publish to several tenants) are split by slot here,
//!   sent to their nodes concurrently, and their replies put back in order. Transactions
//!   (`MULTI`) must stay in one slot, as Redis requires.
//! - **Per-connection commands.** `CLIENT ID`, `CLIENT INFO` and `CLIENT LIST` describe one
//!   socket of one node. On a cluster they always go to the master of slot 0, so a client id
//!   one process reads can be checked by another (the consumer-name lock relies on this).
//! - **Replication.** [`RedisConnection::wait_for_replicas`] sends `WAIT` to the node that
//!   holds a key, for writes that must survive a failover.
//! - **State that is not replicated** (ACL users) must be set on each node directly:
//!   [`RedisConnection::nodes`] lists them, replicas included ([`topology`]).

pub mod topology;

use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Arg, Cmd, Pipeline, RedisFuture, Value};

use self::topology::Node;
use crate::config::RedisUrl;
use crate::keys::hash_slot;

/// How long an ordinary command may take before it fails with a timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one server (or one cluster node) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A multiplexed, self-reconnecting connection to one Redis server or to a Redis Cluster.
/// Cheap to clone: clones share the same sockets, so use a separate connection for blocking
/// reads.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
    url: RedisUrl,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects to `url`, with [`DEFAULT_RESPONSE_TIMEOUT`].
    pub async fn connect(url: &RedisUrl) -> redis::RedisResult<Self> {
        Self::connect_with_timeout(url, DEFAULT_RESPONSE_TIMEOUT).await
    }

    /// Connects to `url`; commands fail after `response_timeout`. A connection for blocking
    /// reads needs a timeout longer than its longest block.
    ///
    /// On a cluster the timeout bounds each command including its retries and redirections:
    /// a command to a master that has just died waits, within it, for its replica to take
    /// over.
    pub async fn connect_with_timeout(
        url: &RedisUrl,
        response_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        if url.is_cluster() {
            let client = redis::cluster::ClusterClientBuilder::new(url.expose_nodes())
                .response_timeout(response_timeout)
                .connection_timeout(CONNECT_TIMEOUT)
                .retries(8)
                .min_retry_wait(20)
                .max_retry_wait(500)
                .build()?;
            let inner = client.get_async_connection().await?;
            tracing::debug!(url = %url, "connected to a Redis Cluster");
            return Ok(RedisConnection {
                inner: Inner::Cluster(inner),
                url: url.clone(),
            });
        }
        let client = redis::Client::open(url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let inner = client.get_connection_manager_with_config(config).await?;
        Ok(RedisConnection {
            inner: Inner::Single(inner),
            url: url.clone(),
        })
    }

    /// Every node behind this connection, each reachable on its own: the masters and replicas
    /// of a cluster, or the server and its replicas (see [`topology`]). For server state
    /// that is not replicated, such as ACL users.
    pub async fn nodes(&self) -> redis::RedisResult<Vec<Node>> {
        topology::discover_nodes(&self.url).await
    }

    /// Whether this is a connection to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Sends `cmd` to the master that holds `key` (on one server: to the server). For commands
    /// without a key that must reach a given node, like `WAIT`.
    pub async fn query_on_node_of(&mut self, key: &str, cmd: &Cmd) -> redis::RedisResult<Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd).await,
            Inner::Cluster(c) => {
                c.route_command(cmd.clone(), master_of(hash_slot(key.as_bytes())))
                    .await
            }
        }
    }

    /// Waits until the writes this connection made to the node holding `key` are on at least
    /// `replicas` replicas, or `timeout` has passed (`WAIT`); returns how many replicas have
    /// them. Redis replicates asynchronously: a write acknowledged by a master that then dies
    /// is lost unless a replica had it, and this is how a writer finds out that one had.
    /// (The count covers every earlier write of this connection to that node, not only the
    /// last one.)
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let reply = self.query_on_node_of(key, &cmd).await?;
        Ok(redis::from_redis_value(reply)?)
    }

    /// Every key matching `pattern` (and of type `key_type`, e.g. `"stream"`), by `SCAN`. On a
    /// cluster each master is scanned to the end in turn (a `SCAN` cursor belongs to one node);
    /// a key seen twice (on both sides of a slot being moved) is listed once. For discovery
    /// and administration: it walks the whole keyspace.
    pub async fn scan_match(
        &mut self,
        pattern: &str,
        key_type: Option<&str>,
    ) -> redis::RedisResult<Vec<String>> {
        let scan = |cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            if let Some(t) = key_type {
                cmd.arg("TYPE").arg(t);
            }
            cmd
        };
        let mut found = Vec::new();
        match &mut self.inner {
            Inner::Single(c) => {
                let mut cursor = 0u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = scan(cursor).query_async(c).await?;
                    found.extend(keys);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Inner::Cluster(c) => {
                for (host, port) in cluster_masters(c).await? {
                    let mut cursor = 0u64;
                    loop {
                        let reply = c
                            .route_command(
                                scan(cursor),
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                    host: host.clone(),
                                    port,
                                }),
                            )
                            .await?;
                        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        found.extend(keys);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                found.sort();
                found.dedup();
            }
        }
        Ok(found)
    }
}

/// The address of every master that serves slots, from `CLUSTER SLOTS`.
async fn cluster_masters(c: &mut ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
    let reply = c
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let mut masters = Vec::new();
    if let Value::Array(ranges) = reply {
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(master)) = parts.get(2) else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            if !masters.contains(&(host.clone(), port)) {
                masters.push((host, port));
            }
        }
    }
    Ok(masters)
}

/// The routing to the master of `slot`.
fn master_of(slot: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
        slot,
        SlotAddr::Master,
    )))
}

/// The upper-cased name of `cmd` and, for `CLIENT`, its subcommand.
fn command_name(cmd: &Cmd) -> (Vec<u8>, Vec<u8>) {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(b) => Some(b.to_ascii_uppercase()),
        _ => None,
    });
    let name = args.next().unwrap_or_default();
    let sub = args.next().unwrap_or_default();
    (name, sub)
}

/// Whether `cmd` describes the socket it is sent on, so it must always reach the same node.
fn is_per_connection(cmd: &Cmd) -> bool {
    let (name, sub) = command_name(cmd);
    name == b"CLIENT" && matches!(sub.as_slice(), b"ID" | b"INFO" | b"LIST")
}

/// The slot of a command's key, for the commands a batch may hold: `None` when the command
/// has no single key asdlc can see (the caller then leaves the batch whole).
fn command_slot(cmd: &Cmd) -> Option<u16> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"XADD" | b"XACK" | b"XDEL" | b"XLEN" | b"XRANGE" | b"XREVRANGE" | b"XTRIM"
        | b"XPENDING" | b"XCLAIM" | b"XAUTOCLAIM" | b"GET" | b"SET" | b"DEL" | b"UNLINK"
        | b"EXISTS" | b"EXPIRE" | b"PEXPIRE" | b"TTL" | b"PTTL" | b"TYPE" | b"HSET" | b"HGET"
        | b"HGETALL" | b"HDEL" | b"HINCRBY" | b"INCRBY" | b"SADD" | b"RPUSH" => args.get(1)?,
        b"XGROUP" | b"XINFO" => args.get(2)?,
        _ => return None,
    };
    Some(hash_slot(key))
}

/// Replies of a pipeline whose commands span several slots: one sub-pipeline per slot, sent
/// concurrently, replies put back in the order of the commands.
async fn split_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    slots: &[u16],
) -> redis::RedisResult<Vec<Value>> {
    let mut order: Vec<u16> = Vec::new();
    for s in slots {
        if !order.contains(s) {
            order.push(*s);
        }
    }
    let mut parts = Vec::with_capacity(order.len());
    for slot in &order {
        let mut sub = redis::pipe();
        let mut indices = Vec::new();
        for (i, cmd) in pipeline.cmd_iter().enumerate() {
            if slots[i] == *slot {
                sub.add_command(cmd.clone());
                indices.push(i);
            }
        }
        parts.push((sub, indices));
    }
    let replies = try_join_all(parts.iter().map(|(sub, _)| {
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(sub, 0, sub.len()).await }
    }))
    .await?;
    let mut out = vec![Value::Nil; slots.len()];
    for ((_, indices), values) in parts.iter().zip(replies) {
        for (i, v) in indices.iter().zip(values) {
            out[*i] = v;
        }
    }
    Ok(out)
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => {
                if is_per_connection(cmd) {
                    Box::pin(async move { c.route_command(cmd.clone(), master_of(0)).await })
                } else {
                    c.req_packed_command(cmd)
                }
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => {
                if !pipeline.is_transaction() && offset == 0 && count == pipeline.len() {
                    let slots: Option<Vec<u16>> = pipeline.cmd_iter().map(command_slot).collect();
                    if let Some(slots) = slots
                        && slots.iter().any(|s| *s != slots[0])
                    {
                        return Box::pin(async move { split_pipeline(c, pipeline, &slots).await });
                    }
                }
                c.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_commands_are_recognised() {
        assert!(is_per_connection(redis::cmd("CLIENT").arg("ID")));
        assert!(is_per_connection(
            redis::cmd("client").arg("list").arg("ID").arg(7)
        ));
        assert!(!is_per_connection(
            redis::cmd("CLIENT").arg("SETNAME").arg("x")
        ));
        assert!(!is_per_connection(redis::cmd("GET").arg("CLIENT")));
    }

    #[test]
    fn batch_commands_have_the_slot_of_their_key() {
        let xadd = redis::cmd("XADD")
            .arg("tenant:{a}:asdlc:events")
            .arg("*")
            .arg("f")
            .arg("v")
            .clone();
        assert_eq!(command_slot(&xadd), Some(hash_slot(b"a")));
        let eval = redis::cmd("EVALSHA")
            .arg("abc")
            .arg(1)
            .arg("tenant:{b}:x")
            .clone();
        assert_eq!(command_slot(&eval), Some(hash_slot(b"b")));
        let info = redis::cmd("XINFO").arg("STREAM").arg("{c}").clone();
        assert_eq!(command_slot(&info), Some(hash_slot(b"c")));
        assert_eq!(
            command_slot(redis::cmd("EVAL").arg("return 1").arg(0)),
            None
        );
        assert_eq!(command_slot(&redis::cmd("PING")), None);
    }
}
