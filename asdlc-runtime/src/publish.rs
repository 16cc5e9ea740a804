//! Publishing: validated, tenant-aware, idempotency-keyed.
//!
//! [`Publisher::publish`] checks the event, stamps the tenant from the
//! [`TenantContext`], fills a unique idempotency key if there is none,
//! resolves the tenant's stream and returns the id Redis assigned. An invalid event writes
//! nothing. Streams are not trimmed unless [`Config::max_len`] asks for it.

use std::sync::Arc;

use redis::Cmd;

use crate::config::Config;
use crate::connection::RedisConnection;
use crate::encoding::{check_encoded_size, encode_into};
use crate::error::PublishError;
use crate::error::ValidationError;
use crate::event::{AsdlcEvent, unique_idempotency_key};
use crate::tenancy::{TenantContext, TenantError, TenantId};

/// What a successful publish returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The entry id Redis assigned (the event's `event_id`).
    pub event_id: String,
    /// The stream written to.
    pub stream: String,
    /// The idempotency key the event was published with.
    pub idempotency_key: String,
}

/// Publishes events. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct Publisher {
    conn: RedisConnection,
    config: Arc<Config>,
}

/// An event ready to write later: its stream, its idempotency key and its fields.
pub(crate) type Fields = (String, String, Vec<(&'static str, Vec<u8>)>);

struct Prepared {
    stream: String,
    key: String,
    cmd: Cmd,
}

impl Publisher {
    /// A publisher over an existing connection.
    pub fn new(conn: RedisConnection, config: Config) -> Self {
        Publisher {
            conn,
            config: Arc::new(config),
        }
    }

    /// Connects to the configured server.
    pub async fn connect(config: Config) -> Result<Self, PublishError> {
        config.validate().map_err(|e| match e {
            crate::error::ConfigError::Invalid(v) => PublishError::Validation(v),
            other => PublishError::Validation(crate::error::ValidationError::new(
                "config",
                other.to_string(),
            )),
        })?;
        let conn = RedisConnection::connect(&config.redis_url)
            .await
            .map_err(|source| PublishError::Redis {
                stream: config.stream.clone(),
                source,
            })?;
        Ok(Publisher::new(conn, config))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The stream an event for the current context goes to.
    pub fn current_stream(&self) -> Result<String, PublishError> {
        let tenant = self.resolve_tenant(None)?;
        Ok(self.config.stream_for(tenant.as_ref()))
    }

    /// Validates and publishes `event`.
    pub async fn publish(&self, event: &AsdlcEvent) -> Result<Published, PublishError> {
        let prepared = self.prepare(event, &mut Vec::new())?;
        let mut conn = self.conn.clone();
        let event_id: String = prepared
            .cmd
            .query_async(&mut conn)
            .await
            .map_err(|source| PublishError::Redis {
                stream: prepared.stream.clone(),
                source,
            })?;
        tracing::debug!(stream = %prepared.stream, %event_id, event_type = %event.event_type, "published");
        Ok(Published {
            event_id,
            stream: prepared.stream,
            idempotency_key: prepared.key,
        })
    }

    /// Validates every event, then publishes them all in one pipelined round trip. If any
    /// event is invalid nothing is written and the error says which (by index).
    pub async fn publish_batch(
        &self,
        events: &[AsdlcEvent],
    ) -> Result<Vec<Published>, PublishError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let mut written = Vec::with_capacity(events.len());
        let mut scratch = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let p = self.prepare(event, &mut scratch).map_err(|e| match e {
                PublishError::Validation(v) => PublishError::Validation(ValidationError::new(
                    v.field,
                    format!("event {i}: {}", v.reason),
                )),
                other => other,
            })?;
            pipe.add_command(p.cmd);
            written.push((p.stream, p.key));
        }
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            pipe.query_async(&mut conn)
                .await
                .map_err(|source| PublishError::Redis {
                    stream: written[0].0.clone(),
                    source,
                })?;
        Ok(written
            .into_iter()
            .zip(ids)
            .map(|((stream, idempotency_key), event_id)| Published {
                event_id,
                stream,
                idempotency_key,
            })
            .collect())
    }

    /// Writes raw fields to the current context's stream, unvalidated, for producers that
    /// write fields of their own rather than an [`AsdlcEvent`]. Consumers
    /// dead-letter entries that do not decode.
    pub async fn publish_event<K, V>(&self, fields: &[(K, V)]) -> Result<String, PublishError>
    where
        K: redis::ToRedisArgs + redis::ToSingleRedisArg,
        V: redis::ToRedisArgs + redis::ToSingleRedisArg,
    {
        let stream = self.current_stream()?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream);
        self.add_trim(&mut cmd);
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|source| PublishError::Redis { stream, source })
    }

    fn resolve_tenant(
        &self,
        event_tenant: Option<&TenantId>,
    ) -> Result<Option<TenantId>, PublishError> {
        if !self.config.tenancy.is_multi() {
            return match event_tenant {
                Some(t) => Err(TenantError::InSingleMode(t.clone()).into()),
                None => Ok(None),
            };
        }
        let context = TenantContext::current();
        let tenant = match (event_tenant, context) {
            (Some(e), Some(c)) if *e != c => {
                return Err(TenantError::Mismatch {
                    event: e.clone(),
                    context: c,
                }
                .into());
            }
            (Some(e), _) => e.clone(),
            (None, Some(c)) => c,
            (None, None) => return Err(TenantError::Missing.into()),
        };
        if !self.config.tenancy.allows(&tenant) {
            return Err(TenantError::NotAllowed(tenant).into());
        }
        Ok(Some(tenant))
    }

    /// `event` as [`Publisher::publish`] would write it (tenant resolved, key filled, checked),
    /// as its stream and fields, for writing later.
    pub(crate) fn prepare_fields(&self, event: &AsdlcEvent) -> Result<Fields, PublishError> {
        let tenant = self.resolve_tenant(event.tenant_id.as_ref())?;
        let mut published = event.clone();
        published.event_id = None;
        published.tenant_id = tenant.clone();
        let key = published
            .idempotency_key
            .get_or_insert_with(unique_idempotency_key)
            .clone();
        published.validate()?;
        let fields = crate::encoding::encode(&published).fields().to_vec();
        Ok((self.config.stream_for(tenant.as_ref()), key, fields))
    }

    /// The connection, for the publishing done beside this module.
    pub(crate) fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    fn add_trim(&self, cmd: &mut Cmd) {
        if let Some(max) = self.config.max_len {
            cmd.arg("MAXLEN").arg("~").arg(max);
        }
    }

    /// The XADD for `event`, encoded straight into the command's arguments: the event is
    /// published as it is but for its tenant (resolved), its key (filled if missing) and its
    /// id (left out: Redis assigns one).
    fn prepare(&self, event: &AsdlcEvent, scratch: &mut Vec<u8>) -> Result<Prepared, PublishError> {
        let tenant = self.resolve_tenant(event.tenant_id.as_ref())?;
        let key = match &event.idempotency_key {
            Some(key) => key.clone(),
            None => unique_idempotency_key(),
        };
        if event.event_id.is_none() {
            // The checks do not look at the tenant, and a generated key is valid: the event
            // as given checks the same as the event as published.
            event.validate_fields()?;
        } else {
            let mut published = event.clone();
            published.event_id = None;
            published.validate_fields()?;
        }
        let stream = self.config.stream_for(tenant.as_ref());
        let mut cmd = Cmd::with_capacity(32, 512);
        cmd.arg("XADD").arg(&stream);
        self.add_trim(&mut cmd);
        cmd.arg("*");
        let size = encode_into(event, tenant.as_ref(), &key, &mut cmd, scratch);
        check_encoded_size(size)?;
        Ok(Prepared { stream, key, cmd })
    }
}

// Durable publishing (waiting for replicas): kept apart from the publishing hot path above.

/// How many replicas must have an event before [`Publisher::publish_durable`] returns, and
/// how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must have the write (`WAIT numreplicas`).
    pub replicas: u32,
    /// How long to wait for them (`WAIT timeout`); the wait ends early once they have it.
    pub timeout: std::time::Duration,
}

impl ReplicaWait {
    /// Wait for one replica, up to `timeout`.
    pub fn one(timeout: std::time::Duration) -> Self {
        ReplicaWait {
            replicas: 1,
            timeout,
        }
    }
}

/// What [`Publisher::publish_durable`] returns: the publish, and how many replicas had it when
/// the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurablyPublished {
    /// The publish itself: it happened whatever the replicas say.
    pub published: Published,
    /// How many replicas had the event when the wait ended.
    pub replicas: u32,
    /// How many were asked for.
    pub wanted: u32,
}

impl DurablyPublished {
    /// Whether as many replicas as asked for had the event: then it survives a failover to
    /// one of them.
    pub fn is_replicated(&self) -> bool {
        self.replicas >= self.wanted
    }
}

impl Publisher {
    /// Publishes `event`, then waits until `wait.replicas` replicas of the node holding its
    /// stream have it (Redis `WAIT`), up to `wait.timeout`.
    ///
    /// Redis replicates asynchronously: [`publish`](Self::publish) returns once the master has
    /// the event, and a master that dies before its replica copied it loses it when the
    /// replica takes over. An event for which this returns
    /// [`is_replicated`](DurablyPublished::is_replicated) survives such a failover (unless
    /// those replicas fail too). When it returns fewer replicas the event is still published
    /// (a retry would publish it again; keep its idempotency key so a duplicate is handled
    /// once). Costs one replication round trip per call.
    pub async fn publish_durable(
        &self,
        event: &AsdlcEvent,
        wait: ReplicaWait,
    ) -> Result<DurablyPublished, PublishError> {
        let published = self.publish(event).await?;
        let mut conn = self.conn.clone();
        let replicas = conn
            .wait_for_replicas(&published.stream, wait.replicas, wait.timeout)
            .await
            .map_err(|source| PublishError::Redis {
                stream: published.stream.clone(),
                source,
            })?;
        if replicas < wait.replicas {
            tracing::warn!(stream = %published.stream, event_id = %published.event_id, replicas, wanted = wait.replicas, "event published but not on enough replicas");
        }
        Ok(DurablyPublished {
            published,
            replicas,
            wanted: wait.replicas,
        })
    }
}
