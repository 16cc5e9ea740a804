//! The nodes behind a URL, each reachable on its own: every master and replica of a Redis
//! Cluster, or one server and its replicas.
//!
//! Most of asdlc never needs this: data commands go to the master of their key's slot and
//! replication carries them further. Server state that is *not* replicated does: `ACL SETUSER`
//! changes only the node it runs on, so a tenant user must be created on every node, replicas
//! included, or a failover promotes a replica that does not know it (see [`crate::acl`]).
//!
//! - **A cluster**: `CLUSTER NODES`, asked of the seed nodes in turn, lists every node the
//!   cluster knows, failed ones included (they are then reported as unreachable, not skipped).
//!   Nodes still in handshake or without an address are left out: they are not members yet.
//! - **One server**: the server itself and, if `ROLE` says it is a master, the replicas
//!   connected to it (`REPLICAOF`), at the address each announced. A replica that is
//!   disconnected at the time is not listed: point the URL at the master, and sync again
//!   after adding or restarting a replica.
//!
//! Each node is then connected to directly with the URL's scheme and credentials.

use std::fmt;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};

use super::{CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT};
use crate::config::RedisUrl;

/// What a node is in its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// Serves writes (a cluster master, or the one server).
    Master,
    /// Replicates a master; may be promoted by a failover.
    Replica,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Master => "master",
            NodeRole::Replica => "replica",
        })
    }
}

/// One node of a deployment, with what it takes to connect to it directly.
#[derive(Clone)]
pub struct Node {
    address: String,
    role: NodeRole,
    failed: bool,
    info: ConnectionInfo,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("address", &self.address)
            .field("role", &self.role)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node at `info`'s address, not marked failed.
    fn healthy(role: NodeRole, info: ConnectionInfo) -> Node {
        Node {
            address: address_of(&info),
            role,
            failed: false,
            info,
        }
    }

    /// `host:port` (or the socket path of a one-server URL).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Master or replica, as the deployment saw it when listed.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// Whether the cluster flagged the node as failed when it was listed.
    pub fn is_flagged_failed(&self) -> bool {
        self.failed
    }

    /// A fresh connection to this node alone (no redirections followed), with the URL's
    /// credentials.
    pub async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT));
        redis::Client::open(self.info.clone())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// Every node behind `url` (see the [module docs](self)), masters first.
#[tracing::instrument(skip_all, fields(url = %url))]
pub async fn discover_nodes(url: &RedisUrl) -> redis::RedisResult<Vec<Node>> {
    let mut nodes = if url.is_cluster() {
        cluster_nodes(url).await?
    } else {
        server_and_replicas(url).await?
    };
    nodes.sort_by_key(|n| n.role != NodeRole::Master);
    tracing::debug!(nodes = nodes.len(), "discovered the nodes");
    Ok(nodes)
}

/// `base` pointed at `host:port`, keeping its TLS settings and credentials.
fn at(base: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match base.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    base.clone().set_addr(addr)
}

fn address_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        ConnectionAddr::Unix(path) => path.display().to_string(),
        other => other.to_string(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        _ => None,
    }
}

async fn cluster_nodes(url: &RedisUrl) -> redis::RedisResult<Vec<Node>> {
    let mut last = None;
    for seed in url.expose_nodes() {
        let base = seed.as_str().into_connection_info()?;
        let seed_node = Node::healthy(NodeRole::Master, base.clone());
        let reply: redis::RedisResult<String> = async {
            let mut con = seed_node.connect().await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut con)
                .await
        }
        .await;
        match reply {
            Ok(text) => return Ok(parse_cluster_nodes(&text, &base)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed node"))
    }))
}

/// The members listed by `CLUSTER NODES` as asked of the node at `seed`.
fn parse_cluster_nodes(text: &str, seed: &ConnectionInfo) -> Vec<Node> {
    let seed_host = match seed.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => String::new(),
    };
    let mut nodes = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(_id), Some(addr), Some(flags)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if flags.iter().any(|f| matches!(*f, "handshake" | "noaddr")) {
            continue;
        }
        // `ip:port@cport[,hostname]`; the ip is empty on a node that has not met another.
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if port == 0 {
            continue;
        }
        let host = if host.is_empty() { &seed_host } else { host };
        let role = if flags.contains(&"master") {
            NodeRole::Master
        } else {
            NodeRole::Replica
        };
        let info = at(seed, host, port);
        nodes.push(Node {
            address: address_of(&info),
            role,
            failed: flags.iter().any(|f| matches!(*f, "fail" | "fail?")),
            info,
        });
    }
    nodes
}

async fn server_and_replicas(url: &RedisUrl) -> redis::RedisResult<Vec<Node>> {
    let base = url.expose().into_connection_info()?;
    let server = Node::healthy(NodeRole::Master, base.clone());
    let mut con = server.connect().await?;
    let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut con).await?;
    let mut nodes = Vec::new();
    match role.first().and_then(text).as_deref() {
        Some("master") => {
            nodes.push(server);
            if let Some(Value::Array(replicas)) = role.get(2) {
                for r in replicas {
                    let Value::Array(parts) = r else { continue };
                    let host = parts.first().and_then(text);
                    let port = parts
                        .get(1)
                        .and_then(text)
                        .and_then(|p| p.parse::<u16>().ok());
                    if let (Some(host), Some(port)) = (host, port) {
                        let info = at(&base, &host, port);
                        nodes.push(Node::healthy(NodeRole::Replica, info));
                    }
                }
            }
        }
        _ => nodes.push(Node {
            role: NodeRole::Replica,
            ..server
        }),
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_members_are_listed_with_their_role_and_failed_nodes_kept() {
        let seed = "redis://admin:pw@10.0.0.1:7000"
            .into_connection_info()
            .unwrap();
        let text = "\
a1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 10.0.0.2:7001@17001,node-b slave a1 0 0 1 connected
c3 10.0.0.3:7002@17002 master,fail - 0 0 2 disconnected 5461-16383
d4 :0@0 handshake - 0 0 0 disconnected
e5 :7004@17004 slave,noaddr c3 0 0 2 disconnected
f6 :7005@17005 myself,master - 0 0 3 connected
";
        let nodes = parse_cluster_nodes(text, &seed);
        let got: Vec<_> = nodes
            .iter()
            .map(|n| (n.address(), n.role(), n.is_flagged_failed()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:7000", NodeRole::Master, false),
                ("10.0.0.2:7001", NodeRole::Replica, false),
                ("10.0.0.3:7002", NodeRole::Master, true),
                ("10.0.0.1:7005", NodeRole::Master, false),
            ]
        );
        assert_eq!(
            nodes[1].info.redis_settings().password(),
            Some("pw"),
            "the URL's credentials go to every node"
        );
    }
}
