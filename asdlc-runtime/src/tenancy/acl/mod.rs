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
//! every node of the deployment ([`RedisConnection::nodes`](crate::RedisConnection::nodes):
//! each master and replica of a cluster, or one server and the replicas `ROLE` lists),
//! connects to each directly, sets the user there and reads it back (`ACL GETUSER`) before it
//! returns. A node it cannot reach makes it fail with [`AclError::Unreached`], which names the
//! node: never a silent success.
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

mod apply;
mod grant;
mod provision;
mod record;
mod sync;

pub use apply::{AclReport, NodeChange, NodeFailure, UserChange};
pub use grant::{TENANT_COMMANDS, TenantAcl, tenant_key_pattern, tenant_username};
pub use provision::{TenantCredentials, generate_password, provision_tenant, revoke_tenant};
pub use record::TENANT_RECORD_KEY;
pub use sync::{keep_tenant_users_synced, sync_tenants};

use crate::tenancy::TenantId;

/// What provisioning, revoking or syncing was doing when Redis failed it
/// ([`AclError::Redis`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AclStep {
    /// Writing the record of this tenant's user (or its tombstone).
    WriteRecord(TenantId),
    /// Reading the record of provisioned tenants.
    ReadRecord,
    /// Listing the nodes of the deployment (`CLUSTER NODES`, or `ROLE`).
    ListNodes,
}

impl std::fmt::Display for AclStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AclStep::WriteRecord(tenant) => write!(f, "writing the record of tenant `{tenant}`"),
            AclStep::ReadRecord => write!(f, "reading the tenant record `{TENANT_RECORD_KEY}`"),
            AclStep::ListNodes => f.write_str("listing the nodes of the deployment"),
        }
    }
}

/// Why a tenant user could not be provisioned, revoked or synced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Redis refused or failed a command: writing or reading the record, or listing the
    /// nodes of the deployment.
    #[error("redis error {step}: {source}")]
    Redis {
        /// What was being done.
        step: AclStep,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// The protocol's functions, which a tenant may call but not load, could not be loaded.
    #[error(transparent)]
    Functions(#[from] crate::functions::FunctionsError),
    /// The record of provisioned tenants ([`TENANT_RECORD_KEY`]) holds something that is not
    /// a record.
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
