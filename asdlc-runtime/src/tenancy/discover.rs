//! Finding the tenants of a deployment: every tenant with a stream.

use std::collections::BTreeSet;

use super::TenantId;
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::keys::tenant_of_stream;

/// Every tenant whose stream exists for stream base `base` (a `SCAN` for
/// `tenant:{*}:<base>` streams), sorted.
pub async fn discover_tenants(
    conn: &mut RedisConnection,
    base: &str,
) -> Result<Vec<TenantId>, StreamError> {
    let pattern = format!("tenant:{{*}}:{base}");
    // scan_match walks every master of a cluster; a single SCAN cursor would not.
    let keys = conn
        .scan_match(&pattern, Some("stream"))
        .await
        .map_err(StreamError::redis(base))?;
    let found: BTreeSet<TenantId> = keys
        .iter()
        .filter_map(|k| tenant_of_stream(k, base))
        .collect();
    Ok(found.into_iter().collect())
}
