//! Errors, one enum per concern.
//!
//! ```text
//! ValidationError        a field of an event, tenant or name is wrong (which field, why)
//! DecodeError            a stream entry is not a valid event (which field, why)
//! ConfigError            configuration from code or the environment is wrong
//! StreamError            a stream operation (create, group, info) failed in Redis
//! PublishError           publishing failed: Validation | Tenant | Redis
//! ConsumeError           a consumer could not start or run: Config | Tenant | NameInUse | Redis
//! EffectError            a staged effect was refused (wrong slot, bad command)
//! EmitError              a follow-up event was refused (invalid, wrong slot, other tenant)
//! RuntimeError           the runtime could not start: Registry | Consume | Stream
//! ```
//!
//! A Redis failure arrives one way in each enum: its one `Redis` variant, which carries what it
//! concerns (the stream, and the group) and the [`redis::RedisError`] as its `source`, and
//! says `redis error <what>: <source>`. No error message ever contains a password from a
//! Redis URL. Every enum is `#[non_exhaustive]`: a `match` outside this crate needs a
//! wildcard arm.
//!
//! [`RuntimeError`](crate::RuntimeError) and [`RegistryError`](crate::RegistryError) live in
//! [`crate::runtime`], next to the code that raises them; [`TenantError`] (a tenant that does
//! not fit) and [`InvalidTenantId`] in [`crate::tenancy`], next to [`TenantId`](crate::TenantId).

use crate::tenancy::{InvalidTenantId, TenantError};

/// A field of an event (or a tenant id, or a name) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct ValidationError {
    /// The field that is wrong.
    pub field: &'static str,
    /// Why it is wrong.
    pub reason: String,
}

impl ValidationError {
    /// A validation error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ValidationError {
            field,
            reason: reason.into(),
        }
    }
}

impl From<InvalidTenantId> for ValidationError {
    fn from(e: InvalidTenantId) -> Self {
        ValidationError::new("tenant_id", e.reason())
    }
}

/// A stream entry could not be decoded into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed entry: field `{field}`: {reason}")]
pub struct DecodeError {
    /// The field that is missing or wrong.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DecodeError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ValidationError> for DecodeError {
    fn from(e: ValidationError) -> Self {
        DecodeError::new(e.field, e.reason)
    }
}

/// Configuration is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable has a value that cannot be used.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Why its value is unusable.
        reason: String,
    },
    /// The Redis URL cannot be parsed (the message never repeats a password).
    #[error("invalid Redis URL `{url}`: {reason}")]
    RedisUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// Why.
        reason: String,
    },
    /// A tenant allow-list names no tenant (`ASDLC_TENANTS=""`, `" "` or `","`, or
    /// [`crate::Tenancy::multi_only`] of nothing): it would give a service that consumes nothing
    /// and refuses every publish, so it is refused instead.
    #[error(
        "{source_name} names no tenant: list the tenants (`acme,globex`), or unset it and set \
         ASDLC_TENANCY=multi to allow any tenant"
    )]
    EmptyTenantList {
        /// Where the list came from (`ASDLC_TENANTS`, or `tenancy` for a struct literal).
        source_name: &'static str,
    },
    /// A name or value is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// A stream operation failed in Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Redis returned an error or could not be reached.
    #[error("redis error on stream `{stream}`: {source}")]
    Redis {
        /// The stream.
        stream: String,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },
    /// A name is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The group's processed marks on this stream are laid out in a way this process cannot
    /// follow (the server names the layout it stores, `<shards>:<digits>` for each bucket
    /// concerned): nothing was written. A process of another release that shards marks
    /// otherwise wrote them; run the group on one release. A process configured for another
    /// rate than its group's follows the group's layout instead of failing (see
    /// [`crate::MarkLayout`]).
    #[error(
        "the processed marks on stream `{stream}` are laid out in a way this process cannot \
         follow ({source}): nothing was written; run every process of the group on one release"
    )]
    MarkLayout {
        /// The stream.
        stream: String,
        /// The server's refusal (`ASDLC_LAYOUT <bucket>=<layout> ...`).
        #[source]
        source: redis::RedisError,
    },
}

impl StreamError {
    pub(crate) fn redis(stream: &str) -> impl FnOnce(redis::RedisError) -> StreamError + '_ {
        move |source| {
            let stream = stream.to_owned();
            if source.code() == Some("ASDLC_LAYOUT") {
                StreamError::MarkLayout { stream, source }
            } else {
                StreamError::Redis { stream, source }
            }
        }
    }

    /// This error as a consumer of `group` reports it: a Redis failure names the group too.
    pub(crate) fn in_group(self, group: &str) -> ConsumeError {
        match self {
            StreamError::Redis { stream, source } => ConsumeError::Redis {
                stream,
                group: group.to_owned(),
                source,
            },
            StreamError::MarkLayout { stream, source } => ConsumeError::Redis {
                stream,
                group: group.to_owned(),
                source,
            },
            StreamError::Invalid(v) => ConsumeError::Config(ConfigError::Invalid(v)),
        }
    }
}

/// Publishing failed; nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event is invalid.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The tenant is missing, not allowed, or not the context's.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// Redis returned an error or could not be reached.
    #[error("redis error publishing to stream `{stream}`: {source}")]
    Redis {
        /// The stream.
        stream: String,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },
}

/// A consumer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tenant to consume for is not allowed by the configured tenancy.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// Another live process uses this consumer name in this group.
    #[error(
        "consumer name `{consumer}` is in use in group `{group}` on `{stream}` by a live process; \
         give this process another name (ASDLC_CONSUMER, ConsumerOptions::consumer or \
         RuntimeBuilder::consumer_name), or none for an automatic `<host>-<n>`"
    )]
    NameInUse {
        /// The stream.
        stream: String,
        /// The group.
        group: String,
        /// The name.
        consumer: String,
    },
    /// `start()` was called on a consumer that is already running.
    #[error("consumer `{consumer}` of group `{group}` is already running")]
    AlreadyRunning {
        /// The group.
        group: String,
        /// The name.
        consumer: String,
    },
    /// The consumer has run already, or was stopped (even before `start()`): a consumer runs
    /// once. Build a new consumer to consume again.
    #[error(
        "consumer `{consumer}` of group `{group}` has run already or was stopped; a consumer \
         runs once: build a new one to consume again"
    )]
    Finished {
        /// The group.
        group: String,
        /// The name.
        consumer: String,
    },
    /// The run ended before the consumer was ready (see `EventConsumer::ready`).
    #[error("consumer `{consumer}` of group `{group}` ended before it was ready: {reason}")]
    NotReady {
        /// The group.
        group: String,
        /// The name.
        consumer: String,
        /// What ended the run.
        reason: String,
    },
    /// The consumer name lock was taken over while running.
    #[error("consumer `{consumer}` in group `{group}` lost its name lock to another process")]
    NameLost {
        /// The group.
        group: String,
        /// The name.
        consumer: String,
    },
    /// A handler takes state of a type the consumer was not given (a `State<T>` parameter,
    /// or a type its `required_state` lists). Found by `build()`, before connecting.
    #[error(
        "handler `{handler}` of group `{group}` takes state of type `{type_name}`, which the \
         consumer was not given: add `.state(...)` with a value of type `{type_name}` to the \
         consumer builder"
    )]
    MissingState {
        /// The group.
        group: String,
        /// The handler.
        handler: String,
        /// The type, as `std::any::type_name` names it.
        type_name: String,
    },
    /// Redis returned an error or could not be reached.
    #[error("redis error on stream `{stream}` in group `{group}`: {source}")]
    Redis {
        /// The stream.
        stream: String,
        /// The group.
        group: String,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },
}

/// A follow-up event was refused when it was staged ([`crate::HandlerContext::emit`]); nothing
/// of the refused call is staged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The event is invalid; the error names the field.
    #[error("follow-up event refused: {0}")]
    Invalid(#[source] ValidationError),
    /// The target stream is in another cluster slot than the cause's, so the commit cannot
    /// append to it in the same atomic step.
    #[error(
        "follow-up for stream `{stream}` refused: it is not in the cluster slot of `{cause_stream}`, \
         so it could not be written in the same atomic step as the acknowledgement; give both \
         stream bases one hash tag (`{{app}}:tasks`, `{{app}}:gates`) so they share a slot, or \
         let a handler of a group on that stream publish it"
    )]
    CrossSlot {
        /// The stream the follow-up was for.
        stream: String,
        /// The stream of the event being handled.
        cause_stream: String,
    },
    /// The event names another tenant than the one whose event is being handled.
    #[error(
        "follow-up event refused: it names tenant `{event_tenant}`, but the event being handled \
         is {}", tenant.as_deref().map_or("of no tenant".to_owned(), |t| format!("tenant `{t}`'s"))
    )]
    OtherTenant {
        /// The tenant the follow-up names.
        event_tenant: String,
        /// The tenant of the event being handled.
        tenant: Option<String>,
    },
}

/// A staged effect was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EffectError {
    /// The key is not in the stream's slot, so it cannot commit atomically with the ack.
    #[error(
        "key `{key}` is not in the slot of stream `{stream}`; build effect keys with \
         HandlerContext::scoped_key so they commit atomically with the acknowledgement"
    )]
    CrossSlot {
        /// The key.
        key: String,
        /// The stream.
        stream: String,
    },
    /// The command is not one that can be staged.
    #[error("command `{0}` cannot be staged as an effect")]
    UnsupportedCommand(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_tenant_id_is_a_validation_error_of_its_field() {
        let err = crate::TenantId::new("a:b").unwrap_err();
        let v = ValidationError::from(err.clone());
        assert_eq!((v.field, v.reason.as_str()), ("tenant_id", err.reason()));
        assert_eq!(v.to_string(), err.to_string());
    }
}
