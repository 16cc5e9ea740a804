//! Tenant isolation enforced by the server: one Redis ACL user per tenant.
//!
//! Key names keep tenants apart only while every client plays by them. An ACL user per tenant
//! makes the server refuse everything else: a process connected as tenant `acme`'s user can
//! touch only keys matching `tenant:{acme}:*` (its stream, dead letters, processed marks,
//! leases, consumer locks and scoped keys all match, by the slot rule of [`crate::keys`]), and
//! can run only the commands asdlc needs. It cannot read, write or even list another
//! tenant's keys: `KEYS`, `SCAN`, `RANDOMKEY`, `INFO keyspace`, `FLUSHDB` and the like are not
//! granted, and a function of the protocol runs with its caller's permissions, key by key.
//!
//! A tenant user runs no code of its own: it may call the protocol's functions (`FCALL`,
//! see [`crate::functions`]) but not `EVAL`, `SCRIPT` or `FUNCTION LOAD`, so it cannot block
//! the server for the other tenants with a long script. An admin loads the library:
//! [`provision_tenant`] does.
//!
//! ```no_run
//! # async fn demo(mut admin: asdlc_runtime::RedisConnection) -> Result<(), Box<dyn std::error::Error>> {
//! use asdlc_runtime::{Config, RedisUrl, TenantId, acl};
//! let acme = TenantId::new("acme")?;
//! let creds = acl::provision_tenant(&mut admin, &acme, &acl::generate_password()).await?;
//! // Hand acme's processes a URL with its own user:
//! let url = creds.url(&RedisUrl::parse("redis://10.0.0.5:6379")?)?;
//! assert_eq!(creds.username(), "asdlc-tenant-acme");
//! # let _ = url; Ok(()) }
//! ```
//!
//! # What a tenant user may run
//!
//! [`TENANT_COMMANDS`]: the stream commands of publishing, consuming, recovery and dead
//! letters; `FCALL`/`FCALL_RO` for the protocol's functions, and the data commands those
//! functions and staged [`Effect`](crate::Effect)s run (every key declared, and checked
//! against the key pattern before the call and at each command inside it); `TIME` (read by the
//! functions); `MULTI`/`EXEC`/`DISCARD`
//! (each queued command is still checked against the key pattern); `WAIT` (durable
//! publishing);
//! `PING`, `CLIENT ID`/`SETNAME`/`GETNAME` about its own connection (not `CLIENT SETINFO`,
//! which Redis 7.0 lacks and redis-rs sends only as a hint whose refusal it ignores); `ASKING` and
//! `CLUSTER SLOTS`/`SHARDS` so a cluster client can find its way. Add more for handlers that
//! need them with [`TenantAcl::command`].
//!
//! **`CLIENT LIST` is not granted by default.** It would show every connection of the server,
//! other tenants' user names and addresses included. The consumer-name lock uses it only to
//! see at once that a crashed holder's connection is gone; without it a consumer restarting
//! under the name of a crashed one waits for the old lock to lapse (15 s) instead. A clean
//! stop releases the lock, so only restarts after a crash pay that wait.
//! [`TenantAcl::allow_client_list`] trades that isolation for the faster takeover.
//!
//! # Every node, replicas included
//!
//! `ACL SETUSER` changes only the node it runs on: it is neither replicated nor kept across a
//! restart without an `aclfile`. A replica promoted by a failover without the tenant's user
//! locks the tenant out. So provisioning does not go through the ordinary connection: it lists
//! every node of the deployment ([`RedisConnection::nodes`]: each master and replica of a
//! cluster, or one server and the replicas `ROLE` lists), connects to each directly, sets the
//! user there and reads it back (`ACL GETUSER`) before it returns. A node it cannot reach makes
//! it fail with [`AclError::Unreached`], which names the node: never a silent success.
//!
//! # The record, and `sync`
//!
//! Provisioning also records the user under the admin key [`TENANT_RECORD_KEY`] (a hash: one
//! field per tenant, the `ACL SETUSER` rules with the password as its SHA-256, `#<hex>`, the
//! form `ACL GETUSER` shows anyway; the plain password is not stored). That key is ordinary
//! data, so it is replicated and persisted like any other, and no tenant user can read it.
//! Revoking a tenant replaces its record with a tombstone (`revoked`).
//!
//! [`sync_tenants`] (`asdlc tenant sync`) applies the record to every node again: a node that
//! lost a user (a new replica, a node restarted without an `aclfile`) gets it back, a node that
//! still has a revoked tenant's user (it was down during the revoke) loses it, and
//! `asdlc-tenant-*` users with no record at all are reported and left alone. Run it after any
//! change of topology, or keep it running with [`keep_tenant_users_synced`]; both need an
//! admin URL (a tenant user may not read the record nor run `ACL`, and must not try).
//! Configuring an `aclfile` (and `ACL SAVE`) on every node as well is still wise: it keeps
//! users across restarts even before a sync has run.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use futures_util::future::join_all;
use redis::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::RedisUrl;
use crate::connection::RedisConnection;
use crate::error::ConfigError;
use crate::tenancy::TenantId;
use crate::topology::{Node, NodeRole};

/// The admin key recording every provisioned tenant user: a hash from tenant id to its
/// `ACL SETUSER` rules (password as `#<sha256>`), or `revoked`. Outside every tenant's key
/// pattern, so only an admin can read or change it.
pub const TENANT_RECORD_KEY: &str = "asdlc:acl:tenants";

/// The record value of a revoked tenant.
const REVOKED: &str = "revoked";

/// The commands (and subcommands) a tenant user is granted, lower-case as `ACL SETUSER` takes
/// them.
pub const TENANT_COMMANDS: &[&str] = &[
    // Streams: publishing, consuming, recovery, dead letters, monitoring.
    "xadd",
    "xreadgroup",
    "xack",
    "xclaim",
    "xautoclaim",
    "xpending",
    "xinfo|stream",
    "xinfo|groups",
    "xinfo|consumers",
    "xgroup|create",
    "xgroup|createconsumer",
    "xgroup|delconsumer",
    "xgroup|destroy",
    "xgroup|setid",
    "xlen",
    "xrange",
    "xrevrange",
    "xdel",
    "xtrim",
    // The protocol's functions (never EVAL, SCRIPT or FUNCTION LOAD: a tenant runs no code of
    // its own), and what they (and staged effects) run inside.
    "fcall",
    "fcall_ro",
    "time",
    "get",
    "set",
    "del",
    "unlink",
    "exists",
    "type",
    "ttl",
    "pttl",
    "expire",
    "pexpire",
    "pexpireat",
    "incrby",
    "hset",
    "hget",
    "hmget",
    "hgetall",
    "hexists",
    "hincrby",
    "hdel",
    "hlen",
    "sadd",
    "srem",
    "smembers",
    "sismember",
    "scard",
    "rpush",
    "lrange",
    "llen",
    // Transactions on its own keys (dead-letter purge).
    "multi",
    "exec",
    "discard",
    // Durable publishing.
    "wait",
    // The connection itself.
    "ping",
    "client|id",
    "client|setname",
    "client|getname",
    // Finding the way around a cluster.
    "asking",
    "cluster|slots",
    "cluster|shards",
];

/// Why a tenant user could not be provisioned, revoked or synced.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The password cannot be used.
    #[error("the password for tenant `{tenant}`'s user {reason}")]
    Password {
        /// The tenant.
        tenant: TenantId,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A command name given to [`TenantAcl::command`] cannot be used.
    #[error("`{command}` is not a command name")]
    Command {
        /// The name given.
        command: String,
    },
    /// Redis refused or failed a command for the tenant (writing its record).
    #[error("ACL command for tenant `{tenant}` failed: {source}")]
    Redis {
        /// The tenant.
        tenant: TenantId,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// The nodes of the deployment could not be listed (`CLUSTER NODES`, or `ROLE`).
    #[error("cannot list the nodes of the deployment: {source}")]
    Topology {
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// The record of provisioned tenants ([`TENANT_RECORD_KEY`]) could not be read, or holds
    /// something that is not a record.
    #[error("cannot read the tenant record `{key}`: {reason}", key = TENANT_RECORD_KEY)]
    Record {
        /// What went wrong.
        reason: String,
    },
    /// Some nodes could not be reached or refused: the change is on the others (listed in the
    /// report) and in the record, so [`sync_tenants`] completes it once they are back.
    #[error(
        "{action} did not reach {} of {} node(s): {}; run `asdlc tenant sync` once they are back",
        report.unreached.len(),
        report.unreached.len() + report.nodes.len(),
        report.unreached.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; ")
    )]
    Unreached {
        /// What was being done, e.g. "provisioning tenant `acme`".
        action: String,
        /// What was done on the nodes that were reached, and why the others failed.
        report: Box<AclReport>,
        /// For provisioning: the credentials, valid on every reached node (and on the others
        /// after a sync).
        credentials: Option<Box<TenantCredentials>>,
    },
}

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

/// The ACL user name of `tenant`: `asdlc-tenant-<id>`.
pub fn tenant_username(tenant: &TenantId) -> String {
    format!("asdlc-tenant-{}", tenant.as_str())
}

/// The key pattern `tenant` is allowed: `tenant:{<id>}:*`, every key of its streams. (Tenant
/// ids have no glob characters, so the pattern matches exactly these keys.)
pub fn tenant_key_pattern(tenant: &TenantId) -> String {
    format!(
        "{}:*",
        crate::keys::get_stream_name("", Some(tenant)).trim_end_matches(':')
    )
}

/// A new random password: 64 hex digits (256 bits).
pub fn generate_password() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`TenantAcl::provision`] created: the user and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantCredentials {
    tenant: TenantId,
    username: String,
    password: String,
    nodes: Vec<String>,
}

impl fmt::Debug for TenantCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantCredentials")
            .field("tenant", &self.tenant)
            .field("username", &self.username)
            .field("password", &"***")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl TenantCredentials {
    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The ACL user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The nodes (`host:port`) the user was set and read back on, masters first.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The password: hand it only to the tenant's processes.
    pub fn expose_password(&self) -> &str {
        &self.password
    }

    /// `server` (one server or a cluster URL) with this user's credentials in place of any it
    /// had, for the tenant's [`Config`](crate::Config).
    pub fn url(&self, server: &RedisUrl) -> Result<RedisUrl, ConfigError> {
        let url = server.expose();
        let bad = || ConfigError::RedisUrl {
            url: server.redacted(),
            reason: "cannot put credentials into this URL (it needs a host)".to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        if scheme.starts_with("unix") || scheme == "redis+unix" {
            return Err(bad());
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let hosts = authority
            .rfind('@')
            .map_or(authority, |at| &authority[at + 1..]);
        RedisUrl::parse(format!(
            "{scheme}://{}:{}@{hosts}{tail}",
            percent_encode(&self.username),
            percent_encode(&self.password)
        ))
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The ACL user of one tenant, to provision: [`TENANT_COMMANDS`] on `tenant:{<id>}:*`, plus
/// what is added here.
#[derive(Debug, Clone)]
#[must_use]
pub struct TenantAcl {
    tenant: TenantId,
    client_list: bool,
    extra: Vec<String>,
}

impl TenantAcl {
    /// The default grant for `tenant`.
    pub fn new(tenant: TenantId) -> Self {
        TenantAcl {
            tenant,
            client_list: false,
            extra: Vec::new(),
        }
    }

    /// Also grants `CLIENT LIST`: a consumer restarting after a crash takes its name over at
    /// once instead of after 15 s, at the price of seeing every connection of the server (see
    /// the [module docs](self)).
    pub fn allow_client_list(mut self, allow: bool) -> Self {
        self.client_list = allow;
        self
    }

    /// Also grants `command` (e.g. `"zadd"`, or `"object|encoding"`), still only on the
    /// tenant's keys.
    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.extra.push(command.into().to_ascii_lowercase());
        self
    }

    /// The `ACL SETUSER` arguments after the user name, password excluded: the user is reset
    /// (so provisioning again replaces every earlier grant), enabled, allowed the tenant's
    /// key pattern and no pub/sub channel, and denied every command but the granted ones.
    pub fn rules(&self) -> Vec<String> {
        let mut rules = vec![
            "reset".to_owned(),
            "on".to_owned(),
            format!("~{}", tenant_key_pattern(&self.tenant)),
            "resetchannels".to_owned(),
            "-@all".to_owned(),
        ];
        rules.extend(TENANT_COMMANDS.iter().map(|c| format!("+{c}")));
        if self.client_list {
            rules.push("+client|list".to_owned());
        }
        rules.extend(self.extra.iter().map(|c| format!("+{c}")));
        rules
    }

    /// Creates (or replaces) the tenant's user with `password` on every node of the
    /// deployment, replicas included, records it under [`TENANT_RECORD_KEY`], and returns once
    /// every node has it (read back with `ACL GETUSER`), and loads the protocol's functions
    /// library if the server lacks it (the tenant may call it, not load it). `conn` must be an
    /// admin's.
    ///
    /// A node that cannot be reached gives [`AclError::Unreached`], naming it; the user is
    /// then on the other nodes and in the record, and [`sync_tenants`] puts it on the missing
    /// ones later.
    #[tracing::instrument(skip_all, fields(tenant = %self.tenant))]
    pub async fn provision(
        &self,
        conn: &mut RedisConnection,
        password: &str,
    ) -> Result<TenantCredentials, AclError> {
        let tenant = self.tenant.clone();
        if password.len() < 16 {
            return Err(AclError::Password {
                tenant,
                reason: "must be at least 16 characters long",
            });
        }
        if password.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(AclError::Password {
                tenant,
                reason: "must be printable ASCII without spaces",
            });
        }
        if let Some(bad) = self.extra.iter().find(|c| {
            c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'|' | b'.' | b'_' | b'-'))
        }) {
            return Err(AclError::Command {
                command: bad.clone(),
            });
        }
        let username = tenant_username(&tenant);
        let user = DesiredUser {
            username: username.clone(),
            password_hash: password_hash(password),
            rules: self.rules(),
        };
        // The record first: if a node is missed below, a sync can still finish the job.
        redis::cmd("HSET")
            .arg(TENANT_RECORD_KEY)
            .arg(tenant.as_str())
            .arg(user.record())
            .query_async::<()>(conn)
            .await
            .map_err(|source| AclError::Redis {
                tenant: tenant.clone(),
                source,
            })?;
        // The tenant may call the protocol's functions but not load them: load them now.
        crate::functions::ensure_loaded(conn)
            .await
            .map_err(|e| AclError::Redis {
                tenant: tenant.clone(),
                source: e.into(),
            })?;
        let nodes = conn
            .nodes()
            .await
            .map_err(|source| AclError::Topology { source })?;
        let report = apply_everywhere(&nodes, |_| vec![Op::Set(user.clone())]).await;
        let credentials = TenantCredentials {
            tenant: tenant.clone(),
            username: username.clone(),
            password: password.to_owned(),
            nodes: report.nodes.clone(),
        };
        if !report.is_complete() {
            return Err(AclError::Unreached {
                action: format!("provisioning tenant `{tenant}`"),
                report: Box::new(report),
                credentials: Some(Box::new(credentials)),
            });
        }
        tracing::info!(%tenant, user = %username, nodes = report.nodes.len(),
            "provisioned the tenant's ACL user on every node");
        Ok(credentials)
    }
}

/// Creates (or replaces) `tenant`'s ACL user with the default grant (see the
/// [module docs](self)) and `password` (at least 16 printable characters; see
/// [`generate_password`]) on every node, replicas included.
pub async fn provision_tenant(
    conn: &mut RedisConnection,
    tenant: &TenantId,
    password: &str,
) -> Result<TenantCredentials, AclError> {
    TenantAcl::new(tenant.clone())
        .provision(conn, password)
        .await
}

/// Deletes `tenant`'s ACL user on every node (each server closes the connections
/// authenticated as it) and marks it revoked in the record, so a node that was down now loses
/// the user at the next [`sync_tenants`]. Returns whether any node had the user. The tenant's
/// keys stay.
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
pub async fn revoke_tenant(
    conn: &mut RedisConnection,
    tenant: &TenantId,
) -> Result<bool, AclError> {
    let username = tenant_username(tenant);
    redis::cmd("HSET")
        .arg(TENANT_RECORD_KEY)
        .arg(tenant.as_str())
        .arg(REVOKED)
        .query_async::<()>(conn)
        .await
        .map_err(|source| AclError::Redis {
            tenant: tenant.clone(),
            source,
        })?;
    let nodes = conn
        .nodes()
        .await
        .map_err(|source| AclError::Topology { source })?;
    let report = apply_everywhere(&nodes, |_| vec![Op::Delete(username.clone())]).await;
    if !report.is_complete() {
        return Err(AclError::Unreached {
            action: format!("revoking tenant `{tenant}`"),
            report: Box::new(report),
            credentials: None,
        });
    }
    let existed = report.changes_of(UserChange::Deleted).next().is_some();
    tracing::info!(%tenant, user = %username, existed, "revoked the tenant's ACL user on every node");
    Ok(existed)
}

/// Applies the record ([`TENANT_RECORD_KEY`]) to every node: each recorded tenant's user is
/// set where it is missing or differs, each revoked tenant's user is deleted where it is
/// still present, and unrecorded `asdlc-tenant-*` users are reported and left alone. `conn`
/// must be an admin's. A node that cannot be reached gives [`AclError::Unreached`] with the
/// report of the others.
#[tracing::instrument(skip_all)]
pub async fn sync_tenants(conn: &mut RedisConnection) -> Result<AclReport, AclError> {
    let record = read_record(conn).await?;
    let nodes = conn
        .nodes()
        .await
        .map_err(|source| AclError::Topology { source })?;
    let report = apply_everywhere(&nodes, |present: &[String]| {
        let mut ops = Vec::new();
        for (tenant, entry) in &record {
            match entry {
                Recorded::User(user) => ops.push(Op::Set(user.clone())),
                Recorded::Revoked => {
                    let name = tenant_username(tenant);
                    if present.contains(&name) {
                        ops.push(Op::Delete(name));
                    }
                }
            }
        }
        for user in present {
            let known = user
                .strip_prefix(USER_PREFIX)
                .and_then(|id| TenantId::new(id).ok())
                .is_some_and(|t| record.contains_key(&t));
            if user.starts_with(USER_PREFIX) && !known {
                ops.push(Op::Report(user.clone()));
            }
        }
        ops
    })
    .await;
    if !report.is_complete() {
        return Err(AclError::Unreached {
            action: "syncing the tenant users".to_owned(),
            report: Box::new(report),
            credentials: None,
        });
    }
    tracing::info!(
        nodes = report.nodes.len(),
        restored = report.changes_of(UserChange::Created).count(),
        updated = report.changes_of(UserChange::Updated).count(),
        deleted = report.changes_of(UserChange::Deleted).count(),
        "synced the tenant users"
    );
    Ok(report)
}

/// Runs [`sync_tenants`] whenever the set of nodes or their roles change (a failover, a new
/// or restarted replica), and at least every `every`, until `cancel` fires. For a process
/// with an admin URL (an operator's sidecar, or the one service that provisions tenants):
/// a tenant-scoped runtime cannot run `ACL` and must not be given this. A failed round is
/// logged and tried again at the next tick.
pub async fn keep_tenant_users_synced(
    mut conn: RedisConnection,
    every: Duration,
    cancel: CancellationToken,
) {
    let check = Duration::from_secs(1).min(every);
    let mut last_topology: Option<Vec<(String, NodeRole)>> = None;
    let mut last_sync = tokio::time::Instant::now();
    loop {
        let topology = match conn.nodes().await {
            Ok(nodes) => Some(
                nodes
                    .iter()
                    .map(|n| (n.address().to_owned(), n.role()))
                    .collect::<Vec<_>>(),
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot list the nodes to check the tenant users");
                None
            }
        };
        let changed = topology.is_some() && topology != last_topology;
        if changed || last_sync.elapsed() >= every {
            match sync_tenants(&mut conn).await {
                Ok(report) => {
                    last_topology = topology;
                    for c in report.changes_of(UserChange::Created) {
                        tracing::warn!(node = %c.node, user = %c.user,
                            "restored a tenant user the node had lost");
                    }
                }
                Err(error) => {
                    // Leave `last_topology` as it was, so the next tick tries again.
                    tracing::warn!(%error, "could not sync the tenant users");
                }
            }
            last_sync = tokio::time::Instant::now();
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(check) => {}
        }
    }
}

const USER_PREFIX: &str = "asdlc-tenant-";

/// A user as it must be on every node.
#[derive(Debug, Clone)]
struct DesiredUser {
    username: String,
    /// SHA-256 of the password, lower-case hex, as `ACL GETUSER` shows it.
    password_hash: String,
    /// [`TenantAcl::rules`]: `reset` first, password excluded.
    rules: Vec<String>,
}

impl DesiredUser {
    /// The `ACL SETUSER` arguments after the user name: `reset`, the password, the grants.
    fn setuser_args(&self) -> Vec<String> {
        let mut args = Vec::with_capacity(self.rules.len() + 1);
        args.push(self.rules[0].clone());
        args.push(format!("#{}", self.password_hash));
        args.extend(self.rules[1..].iter().cloned());
        args
    }

    fn record(&self) -> String {
        self.setuser_args().join(" ")
    }

    fn from_record(tenant: &TenantId, value: &str) -> Result<Self, AclError> {
        let bad = |reason: &str| AclError::Record {
            reason: format!("tenant `{tenant}`: {reason}"),
        };
        let mut args: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
        if args.len() < 2 || args[0] != "reset" {
            return Err(bad("the rules do not start with `reset`"));
        }
        let hash = args.remove(1);
        let hash = hash
            .strip_prefix('#')
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad("the second rule is not a password hash `#<sha256>`"))?;
        Ok(DesiredUser {
            username: tenant_username(tenant),
            password_hash: hash.to_ascii_lowercase(),
            rules: args,
        })
    }
}

fn password_hash(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

enum Recorded {
    User(DesiredUser),
    Revoked,
}

async fn read_record(conn: &mut RedisConnection) -> Result<HashMap<TenantId, Recorded>, AclError> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(TENANT_RECORD_KEY)
        .query_async(conn)
        .await
        .map_err(|e| AclError::Record {
            reason: e.to_string(),
        })?;
    let mut record = HashMap::with_capacity(raw.len());
    for (id, value) in raw {
        let tenant = TenantId::new(&id).map_err(|e| AclError::Record {
            reason: format!("field `{id}`: {e}"),
        })?;
        let entry = if value == REVOKED {
            Recorded::Revoked
        } else {
            Recorded::User(DesiredUser::from_record(&tenant, &value)?)
        };
        record.insert(tenant, entry);
    }
    Ok(record)
}

/// One thing to do on a node.
enum Op {
    Set(DesiredUser),
    Delete(String),
    /// Only report the user as [`UserChange::Unrecorded`].
    Report(String),
}

/// Runs `plan(users present on the node)` on every node concurrently, each on a direct
/// connection, and gathers what happened.
async fn apply_everywhere<F>(nodes: &[Node], plan: F) -> AclReport
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

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn the_user_gets_only_the_tenant_keys() {
        assert_eq!(tenant_key_pattern(&acme()), "tenant:{acme}:*");
        assert_eq!(tenant_username(&acme()), "asdlc-tenant-acme");
        let rules = TenantAcl::new(acme()).rules();
        assert_eq!(
            &rules[..5],
            ["reset", "on", "~tenant:{acme}:*", "resetchannels", "-@all"]
        );
        for forbidden in [
            "+keys",
            "+scan",
            "+randomkey",
            "+flushdb",
            "+flushall",
            "+info",
            "+client|list",
        ] {
            assert!(
                !rules.iter().any(|r| r == forbidden),
                "{forbidden} is granted"
            );
        }
        let rules = TenantAcl::new(acme())
            .allow_client_list(true)
            .command("ZADD")
            .rules();
        assert!(rules.iter().any(|r| r == "+client|list"));
        assert!(rules.iter().any(|r| r == "+zadd"));
    }

    #[test]
    fn every_tenant_key_matches_the_pattern() {
        let keys = crate::keys::StreamKeys::new(crate::keys::get_stream_name(
            "asdlc:events",
            Some(&acme()),
        ));
        let prefix = tenant_key_pattern(&acme());
        let prefix = prefix.trim_end_matches('*');
        for key in [
            keys.stream().to_owned(),
            keys.dead_letter(),
            keys.marks_prefix("g"),
            keys.lease_prefix("g"),
            keys.consumer_lock("g", "c"),
            keys.scoped("x"),
        ] {
            assert!(key.starts_with(prefix), "{key}");
        }
    }

    #[test]
    fn credentials_go_into_urls_and_never_into_logs() {
        let creds = TenantCredentials {
            tenant: acme(),
            username: tenant_username(&acme()),
            password: "p@ss:s3cret/with#odd%chars".to_owned(),
            nodes: Vec::new(),
        };
        assert!(!format!("{creds:?}").contains("s3cret"));
        let url = creds
            .url(&RedisUrl::parse("redis://admin:x@127.0.0.1:7000/0").unwrap())
            .unwrap();
        assert_eq!(
            url.expose(),
            "redis://asdlc-tenant-acme:p%40ss%3As3cret%2Fwith%23odd%25chars@127.0.0.1:7000/0"
        );
        let cluster = creds
            .url(&RedisUrl::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap())
            .unwrap();
        assert!(cluster.is_cluster());
        assert!(cluster.expose_nodes()[1].starts_with("redis://asdlc-tenant-acme:p%40ss"));
        assert!(
            creds
                .url(&RedisUrl::parse("unix:///tmp/redis.sock").unwrap())
                .is_err()
        );
        assert_eq!(generate_password().len(), 64);
        assert_ne!(generate_password(), generate_password());
    }
}
