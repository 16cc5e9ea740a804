//! Provisioning and revoking a tenant's user on every node, and the credentials handed to the
//! tenant's processes.

use std::fmt;

use super::apply::{Op, UserChange, apply_everywhere};
use super::grant::{TenantAcl, tenant_username};
use super::record::{self, DesiredUser, password_hash};
use super::{AclError, AclStep};
use crate::config::RedisUrl;
use crate::connection::RedisConnection;
use crate::error::ConfigError;
use crate::tenancy::TenantId;

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

impl TenantAcl {
    /// Creates (or replaces) the tenant's user with `password` on every node of the
    /// deployment, replicas included, records it under
    /// [`TENANT_RECORD_KEY`](super::TENANT_RECORD_KEY), and returns once every node has it
    /// (read back with `ACL GETUSER`), and loads the protocol's functions library if the
    /// server lacks it (the tenant may call it, not load it). `conn` must be an admin's.
    ///
    /// A node that cannot be reached gives [`AclError::Unreached`], naming it; the user is
    /// then on the other nodes and in the record, and [`sync_tenants`](super::sync_tenants)
    /// puts it on the missing ones later.
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
        record::record_user(conn, &tenant, &user).await?;
        // The tenant may call the protocol's functions but not load them: load them now.
        crate::functions::ensure_loaded(conn).await?;
        let nodes = conn.nodes().await.map_err(|source| AclError::Redis {
            step: AclStep::ListNodes,
            source,
        })?;
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
/// [module docs](super)) and `password` (at least 16 printable characters; see
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
/// the user at the next [`sync_tenants`](super::sync_tenants). Returns whether any node had
/// the user. The tenant's keys stay.
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
pub async fn revoke_tenant(
    conn: &mut RedisConnection,
    tenant: &TenantId,
) -> Result<bool, AclError> {
    let username = tenant_username(tenant);
    record::record_revoked(conn, tenant).await?;
    let nodes = conn.nodes().await.map_err(|source| AclError::Redis {
        step: AclStep::ListNodes,
        source,
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_into_urls_and_never_into_logs() {
        let acme = TenantId::new("acme").unwrap();
        let creds = TenantCredentials {
            username: tenant_username(&acme),
            tenant: acme,
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
