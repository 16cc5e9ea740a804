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
//! # Persistence and clusters
//!
//! `ACL SETUSER` changes the server's memory only. Configure an `aclfile` and run `ACL SAVE`
//! (or provision again at deploy time) to keep users across restarts. On a Redis Cluster the
//! command goes to every node, replicas included, through the cluster connection; a node added
//! later needs the tenant provisioned again.

use std::fmt;

use crate::config::RedisUrl;
use crate::connection::RedisConnection;
use crate::error::ConfigError;
use crate::tenancy::TenantId;

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

/// Why a tenant user could not be provisioned or revoked.
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
    /// Redis refused or failed the ACL command (on a cluster: on at least one node).
    #[error("ACL command for tenant `{tenant}` failed: {source}")]
    Redis {
        /// The tenant.
        tenant: TenantId,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
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
}

impl fmt::Debug for TenantCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantCredentials")
            .field("tenant", &self.tenant)
            .field("username", &self.username)
            .field("password", &"***")
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

    /// Creates (or replaces) the tenant's user with `password`, and loads the protocol's
    /// functions library if the server lacks it. On a cluster connection the user is created
    /// on every node.
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
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&username);
        let rules = self.rules();
        // `reset` first, then the password, then the grants.
        cmd.arg(&rules[0]).arg(format!(">{password}"));
        for rule in &rules[1..] {
            cmd.arg(rule);
        }
        cmd.query_async::<()>(conn)
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
        tracing::info!(%tenant, user = %username, "provisioned the tenant's ACL user");
        Ok(TenantCredentials {
            tenant,
            username,
            password: password.to_owned(),
        })
    }
}

/// Creates (or replaces) `tenant`'s ACL user with the default grant (see the
/// [module docs](self)) and `password` (at least 16 printable characters; see
/// [`generate_password`]).
pub async fn provision_tenant(
    conn: &mut RedisConnection,
    tenant: &TenantId,
    password: &str,
) -> Result<TenantCredentials, AclError> {
    TenantAcl::new(tenant.clone())
        .provision(conn, password)
        .await
}

/// Deletes `tenant`'s ACL user; the server closes the connections authenticated as it.
/// Returns whether the user existed (on a cluster: on any node). The tenant's keys stay.
pub async fn revoke_tenant(
    conn: &mut RedisConnection,
    tenant: &TenantId,
) -> Result<bool, AclError> {
    let username = tenant_username(tenant);
    let reply: redis::Value = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&username)
        .query_async(conn)
        .await
        .map_err(|source| AclError::Redis {
            tenant: tenant.clone(),
            source,
        })?;
    // One server answers a count; a cluster connection may answer "OK" once every node
    // has run it.
    let existed = match reply {
        redis::Value::Int(n) => n > 0,
        _ => true,
    };
    tracing::info!(%tenant, user = %username, existed, "revoked the tenant's ACL user");
    Ok(existed)
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
