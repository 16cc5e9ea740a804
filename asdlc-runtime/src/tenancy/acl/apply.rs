//! Setting and deleting users on every node at once, each on a direct connection, and the
//! report of what each node did.

use std::fmt;

use futures_util::future::join_all;
use redis::Value;

use super::record::DesiredUser;
use crate::connection::topology::{Node, NodeRole};

/// What happened to one user on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// The node did not have the user: it has it now.
    Created,
    /// The node had the user with other rules or another password: it has the recorded ones.
    Updated,
    /// The node already had the user exactly as recorded.
    Unchanged,
    /// The user was revoked (or is being revoked) and the node had it: it is gone.
    Deleted,
    /// An `asdlc-tenant-*` user the record knows nothing about: left alone, reported.
    Unrecorded,
}

/// One user's change on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    /// The node, `host:port`.
    pub node: String,
    /// Its role when listed.
    pub role: NodeRole,
    /// The ACL user name.
    pub user: String,
    /// What happened.
    pub change: UserChange,
}

/// A node that could not be reached, or refused.
#[derive(Debug)]
pub struct NodeFailure {
    /// The node, `host:port`.
    pub node: String,
    /// Its role when listed.
    pub role: NodeRole,
    /// Why.
    pub error: redis::RedisError,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.role, self.node, self.error)
    }
}

/// What provisioning, revoking or syncing did, node by node.
#[derive(Debug, Default)]
#[must_use]
pub struct AclReport {
    /// The nodes reached (`host:port`), masters first.
    pub nodes: Vec<String>,
    /// Every user touched (or found unrecorded) on every reached node.
    pub changes: Vec<NodeChange>,
    /// The nodes that could not be reached or refused.
    pub unreached: Vec<NodeFailure>,
}

impl AclReport {
    /// Whether every node was reached.
    pub fn is_complete(&self) -> bool {
        self.unreached.is_empty()
    }

    /// The changes of one kind.
    pub fn changes_of(&self, change: UserChange) -> impl Iterator<Item = &NodeChange> {
        self.changes.iter().filter(move |c| c.change == change)
    }
}

/// One thing to do on a node.
pub(super) enum Op {
    Set(DesiredUser),
    Delete(String),
    /// Only report the user as [`UserChange::Unrecorded`].
    Report(String),
}

/// Runs `plan(users present on the node)` on every node concurrently, each on a direct
/// connection, and gathers what happened.
pub(super) async fn apply_everywhere<F>(nodes: &[Node], plan: F) -> AclReport
where
    F: Fn(&[String]) -> Vec<Op>,
{
    let plan = &plan;
    let outcomes = join_all(nodes.iter().map(|node| async move {
        let result = apply_on(node, plan).await;
        (node, result)
    }))
    .await;
    let mut report = AclReport::default();
    for (node, result) in outcomes {
        match result {
            Ok(changes) => {
                report.nodes.push(node.address().to_owned());
                report
                    .changes
                    .extend(changes.into_iter().map(|(user, change)| NodeChange {
                        node: node.address().to_owned(),
                        role: node.role(),
                        user,
                        change,
                    }));
            }
            Err(error) => {
                tracing::warn!(node = %node.address(), role = %node.role(), %error,
                    "cannot apply the tenant users on a node");
                report.unreached.push(NodeFailure {
                    node: node.address().to_owned(),
                    role: node.role(),
                    error,
                });
            }
        }
    }
    report
}

async fn apply_on<F>(node: &Node, plan: &F) -> Result<Vec<(String, UserChange)>, redis::RedisError>
where
    F: Fn(&[String]) -> Vec<Op>,
{
    let mut con = node.connect().await?;
    let present: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut con).await?;
    let mut changes = Vec::new();
    for op in plan(&present) {
        match op {
            Op::Set(user) => {
                let before: Value = getuser(&mut con, &user.username).await?;
                let mut cmd = redis::cmd("ACL");
                cmd.arg("SETUSER").arg(&user.username);
                for arg in user.setuser_args() {
                    cmd.arg(arg);
                }
                cmd.query_async::<()>(&mut con).await?;
                // Read it back: the node has the user, with this password, before we say so.
                let after = getuser(&mut con, &user.username).await?;
                if !has_password(&after, &user.password_hash) {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the node did not keep the user",
                        user.username.clone(),
                    )));
                }
                let change = if before == Value::Nil {
                    UserChange::Created
                } else if before == after {
                    UserChange::Unchanged
                } else {
                    UserChange::Updated
                };
                changes.push((user.username, change));
            }
            Op::Delete(name) => {
                let n: i64 = redis::cmd("ACL")
                    .arg("DELUSER")
                    .arg(&name)
                    .query_async(&mut con)
                    .await?;
                if n > 0 {
                    changes.push((name, UserChange::Deleted));
                }
            }
            Op::Report(name) => changes.push((name, UserChange::Unrecorded)),
        }
    }
    Ok(changes)
}

async fn getuser(
    con: &mut redis::aio::MultiplexedConnection,
    user: &str,
) -> redis::RedisResult<Value> {
    redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query_async(con)
        .await
}

/// Whether an `ACL GETUSER` reply lists `hash` among the user's passwords.
fn has_password(reply: &Value, hash: &str) -> bool {
    let fields: &[Value] = match reply {
        Value::Array(v) => v,
        Value::Map(pairs) => {
            return pairs
                .iter()
                .any(|(k, v)| is_text(k, "passwords") && lists(v, hash));
        }
        _ => return false,
    };
    fields
        .chunks(2)
        .any(|kv| kv.len() == 2 && is_text(&kv[0], "passwords") && lists(&kv[1], hash))
}

fn is_text(v: &Value, s: &str) -> bool {
    match v {
        Value::BulkString(b) => b == s.as_bytes(),
        Value::SimpleString(t) => t == s,
        _ => false,
    }
}

fn lists(v: &Value, s: &str) -> bool {
    matches!(v, Value::Array(items) | Value::Set(items) if items.iter().any(|i| is_text(i, s)))
}
