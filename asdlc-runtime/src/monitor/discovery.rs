//! Finding the streams of a deployment: the shared stream and one per tenant.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::connection::RedisConnection;
use crate::error::StreamError;
use crate::keys::tenant_of_stream;
use crate::tenancy::TenantId;

/// Keys examined per `SCAN` call.
const SCAN_COUNT: u64 = 1000;

/// Every tenant stream of stream base `base` (`tenant:{<id>}:<base>`) that exists, as
/// (tenant, stream), sorted by tenant.
///
/// One `SCAN ... MATCH tenant:{*}:<base> TYPE stream` over the keyspace (braces are literal in
/// a `MATCH` pattern; the base name cannot contain glob characters). On Redis Cluster a `SCAN`
/// sees one node only: run it against each primary.
pub async fn tenant_streams(
    conn: &mut RedisConnection,
    base: &str,
) -> Result<Vec<(TenantId, String)>, StreamError> {
    crate::keys::validate_stream_base(base)?;
    let pattern = format!("tenant:{{*}}:{base}");
    let mut found = BTreeMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg("stream")
            .query_async(conn)
            .await
            .map_err(StreamError::redis(&pattern))?;
        // `*` also matches text with braces in it; only names of the exact tenant form count.
        for key in keys {
            if let Some(tenant) = tenant_of_stream(&key, base) {
                found.insert(tenant, key);
            }
        }
        if next == 0 {
            return Ok(found.into_iter().collect());
        }
        cursor = next;
    }
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
