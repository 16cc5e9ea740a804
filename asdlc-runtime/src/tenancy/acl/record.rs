//! The record of provisioned tenant users, [`TENANT_RECORD_KEY`]: written by provisioning and
//! revoking, read by a sync.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::grant::tenant_username;
use super::{AclError, AclStep};
use crate::connection::RedisConnection;
use crate::tenancy::TenantId;

/// The admin key recording every provisioned tenant user: a hash from tenant id to its
/// `ACL SETUSER` rules (password as `#<sha256>`), or `revoked`. Outside every tenant's key
/// pattern, so only an admin can read or change it.
pub const TENANT_RECORD_KEY: &str = "asdlc:acl:tenants";

/// The record value of a revoked tenant.
const REVOKED: &str = "revoked";

/// A user as it must be on every node.
#[derive(Debug, Clone)]
pub(super) struct DesiredUser {
    /// The ACL user name.
    pub(super) username: String,
    /// SHA-256 of the password, lower-case hex, as `ACL GETUSER` shows it.
    pub(super) password_hash: String,
    /// [`TenantAcl::rules`](super::TenantAcl::rules): `reset` first, password excluded.
    pub(super) rules: Vec<String>,
}

impl DesiredUser {
    /// The `ACL SETUSER` arguments after the user name: `reset`, the password, the grants.
    pub(super) fn setuser_args(&self) -> Vec<String> {
        let mut args = Vec::with_capacity(self.rules.len() + 1);
        args.push(self.rules[0].clone());
        args.push(format!("#{}", self.password_hash));
        args.extend(self.rules[1..].iter().cloned());
        args
    }

    /// The record's value for this user: the `ACL SETUSER` arguments, space-separated.
    fn record(&self) -> String {
        self.setuser_args().join(" ")
    }

    /// Reads a record value back (see [`record`](Self::record)).
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

/// SHA-256 of `password`, lower-case hex: what the record and `ACL GETUSER` show.
pub(super) fn password_hash(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the record says of one tenant.
pub(super) enum Recorded {
    User(DesiredUser),
    Revoked,
}

/// Every tenant the record knows, with its user or its tombstone.
pub(super) async fn read_record(
    conn: &mut RedisConnection,
) -> Result<HashMap<TenantId, Recorded>, AclError> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(TENANT_RECORD_KEY)
        .query_async(conn)
        .await
        .map_err(|source| AclError::Redis {
            step: AclStep::ReadRecord,
            source,
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

/// Records `user` as `tenant`'s user.
pub(super) async fn record_user(
    conn: &mut RedisConnection,
    tenant: &TenantId,
    user: &DesiredUser,
) -> Result<(), AclError> {
    write(conn, tenant, &user.record()).await
}

/// Records `tenant` as revoked (a tombstone, so a sync deletes the user where it is left).
pub(super) async fn record_revoked(
    conn: &mut RedisConnection,
    tenant: &TenantId,
) -> Result<(), AclError> {
    write(conn, tenant, REVOKED).await
}

async fn write(conn: &mut RedisConnection, tenant: &TenantId, value: &str) -> Result<(), AclError> {
    redis::cmd("HSET")
        .arg(TENANT_RECORD_KEY)
        .arg(tenant.as_str())
        .arg(value)
        .query_async::<()>(conn)
        .await
        .map_err(|source| AclError::Redis {
            step: AclStep::WriteRecord(tenant.clone()),
            source,
        })
}
