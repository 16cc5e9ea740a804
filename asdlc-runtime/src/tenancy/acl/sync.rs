//! Applying the record to every node again: once ([`sync_tenants`]), or whenever the nodes
//! change ([`keep_tenant_users_synced`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::apply::{AclReport, Op, UserChange, apply_everywhere};
use super::grant::tenant_username;
use super::record::{Recorded, read_record};
use super::{AclError, AclStep};
use crate::connection::RedisConnection;
use crate::connection::topology::NodeRole;
use crate::tenancy::TenantId;

/// The prefix of every tenant user's name.
const USER_PREFIX: &str = "asdlc-tenant-";

/// Applies the record ([`TENANT_RECORD_KEY`](super::TENANT_RECORD_KEY)) to every node: each
/// recorded tenant's user is set where it is missing or differs, each revoked tenant's user is
/// deleted where it is still present, and unrecorded `asdlc-tenant-*` users are reported and
/// left alone. `conn` must be an admin's. A node that cannot be reached gives
/// [`AclError::Unreached`] with the report of the others.
#[tracing::instrument(skip_all)]
pub async fn sync_tenants(conn: &mut RedisConnection) -> Result<AclReport, AclError> {
    let record = read_record(conn).await?;
    let nodes = conn.nodes().await.map_err(|source| AclError::Redis {
        step: AclStep::ListNodes,
        source,
    })?;
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
