//! Finding the streams of a deployment: the shared stream and one per tenant.

use crate::config::Config;
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::keys::get_stream_name;
use crate::tenancy::{TenantId, discover_tenants};

/// Every tenant stream of stream base `base` (`tenant:{<id>}:<base>`) that exists, as
/// (tenant, stream), sorted by tenant: the streams of the tenants [`discover_tenants`] finds
/// (a `SCAN` for `tenant:{*}:<base>` streams).
pub async fn tenant_streams(
    conn: &mut RedisConnection,
    base: &str,
) -> Result<Vec<(TenantId, String)>, StreamError> {
    crate::keys::validate_stream_base(base)?;
    Ok(discover_tenants(conn, base)
        .await?
        .into_iter()
        .map(|t| {
            let stream = get_stream_name(base, Some(&t));
            (t, stream)
        })
        .collect())
}

/// The streams of the deployment `config` describes: the shared stream (first; always in
/// single-tenant mode, and in multi-tenant mode when it exists) and then every tenant stream
/// of the same base that exists, whatever the configured tenancy.
pub async fn list_streams(
    conn: &mut RedisConnection,
    config: &Config,
) -> Result<Vec<String>, StreamError> {
    let shared = config.stream_for(None);
    let mut out = Vec::new();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&shared)
        .query_async(conn)
        .await
        .map_err(StreamError::redis(&shared))?;
    if exists == 1 || !config.tenancy.is_multi() {
        out.push(shared);
    }
    out.extend(
        tenant_streams(conn, &config.stream)
            .await?
            .into_iter()
            .map(|(_, stream)| stream),
    );
    Ok(out)
}
