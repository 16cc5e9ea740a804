//! Tenants in a multi-tenant runtime: the ones it starts with (its allow-list, or every tenant
//! whose stream exists), how they are shared out over each group's consumers (one per cluster
//! slot), and the ones whose streams appear while it runs.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Tenancy};
use crate::connection::RedisConnection;
use crate::consume::EventConsumer;
use crate::error::StreamError;
use crate::keys::{hash_slot, partition_tenants_by_slot};
use crate::tenancy::{TenantId, discover_tenants};

use super::error::RuntimeError;
use super::plan::GroupTemplate;
use super::{Consumers, snapshot};

/// The tenants to start with: none in single-tenant mode, else the allow-list, or every tenant
/// whose stream exists now.
pub(super) async fn starting_tenants(config: &Config) -> Result<Vec<TenantId>, RuntimeError> {
    Ok(match &config.tenancy {
        Tenancy::Single => Vec::new(),
        Tenancy::Multi {
            allowed: Some(list),
        } => list.iter().cloned().collect(),
        Tenancy::Multi { allowed: None } => {
            let mut conn = RedisConnection::connect(&config.redis_url)
                .await
                .map_err(StreamError::redis(&config.stream))?;
            discover_tenants(&mut conn, &config.stream).await?
        }
    })
}

/// The tenants of each consumer a group starts with: all in one, except for several tenants on
/// a cluster.
pub(super) fn partitions(config: &Config, tenants: &[TenantId]) -> Vec<Vec<TenantId>> {
    if config.redis_url.is_cluster() && config.tenancy.is_multi() {
        // One multi-stream read per slot: a cluster refuses keys of several slots in one
        // command.
        partition_tenants_by_slot(&config.stream, tenants.to_vec())
    } else {
        vec![tenants.to_vec()]
    }
}

/// Picks up tenants whose streams appear while running: each group's consumer for the
/// tenant's cluster slot takes the new stream, or a new consumer is built for a new slot.
pub(super) async fn discover_loop(
    config: Config,
    templates: Vec<GroupTemplate>,
    consumers: Consumers,
    new_consumers: tokio::sync::mpsc::Sender<EventConsumer>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut conn = match RedisConnection::connect(&config.redis_url).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "tenant discovery cannot connect; new tenants will not be picked up");
            return;
        }
    };
    let cluster = config.redis_url.is_cluster();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let tenants = match discover_tenants(&mut conn, &config.stream).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "tenant discovery failed");
                continue;
            }
        };
        for t in tenants {
            let stream = config.stream_for(Some(&t));
            let slot = hash_slot(stream.as_bytes());
            for template in &templates {
                let mine: Vec<EventConsumer> = snapshot(&consumers)
                    .into_iter()
                    .filter(|c| c.group() == template.group)
                    .collect();
                if mine.iter().any(|c| c.streams().contains(&stream)) {
                    continue;
                }
                // On a single server any consumer of the group can read it; on a cluster,
                // one whose streams share its slot (or one with none yet).
                let target = mine.iter().find(|c| {
                    let streams = c.streams();
                    !cluster
                        || streams.is_empty()
                        || streams.iter().all(|s| hash_slot(s.as_bytes()) == slot)
                });
                let result = match target {
                    Some(c) => c.add_tenant(t.clone()).await.map(|_| ()),
                    None => match template.build(vec![t.clone()]).await {
                        Ok(c) => {
                            // Register it before the next round, so the tenant is not added twice.
                            consumers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(c.clone());
                            let _ = new_consumers.send(c).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        tracing::info!(tenant = %t, group = %template.group, "new tenant picked up")
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %t, group = %template.group, error = %e, "adding tenant failed")
                    }
                }
            }
        }
    }
}
