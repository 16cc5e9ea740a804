//! Tenants: validated ids, and the context that carries the current tenant through a task.
//!
//! In a multi-tenant deployment every key carries the tenant id, so the id is the only thing
//! between one tenant and another's data. [`TenantId`] accepts only lowercase letters, digits,
//! `-` and `_` (1 to 63 characters): nothing that could change what a key means (`:`, braces,
//! glob characters, whitespace) can get in.
//!
//! [`discover_tenants`] finds the tenants a deployment has; [`acl`] makes the server itself keep
//! them apart, with one ACL user per tenant.

pub mod acl;
mod discover;

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use discover::discover_tenants;

/// The longest tenant id, in characters.
pub const MAX_TENANT_LEN: usize = 63;

/// A validated tenant id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// A tenant id that [`TenantId::new`] refuses, and why. It converts into a
/// [`ValidationError`](crate::ValidationError) of the field `tenant_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `tenant_id`: {reason}")]
pub struct InvalidTenantId {
    reason: String,
}

impl InvalidTenantId {
    /// Why the id is refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A tenant that does not fit where it is used: none where one is needed, one where none
/// belongs, another tenant than the context's or the stream's, or one the configuration does
/// not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// The id is not a valid tenant id.
    #[error(transparent)]
    Invalid(#[from] InvalidTenantId),
    /// Multi-tenant mode and no tenant in the event or the context.
    #[error("multi-tenant mode needs a tenant: set one with TenantContext::scope or on the event")]
    Missing,
    /// The event names a different tenant than the current context.
    #[error("the event's tenant `{event}` differs from the context's tenant `{context}`")]
    Mismatch {
        /// The event's tenant.
        event: TenantId,
        /// The context's tenant.
        context: TenantId,
    },
    /// An entry names another tenant than the stream it was read from (`None`: no tenant).
    #[error(
        "tenant mismatch: the event names tenant {:?} but stream `{stream}` belongs to {:?}",
        event.as_ref().map(TenantId::as_str),
        stream_tenant.as_ref().map(TenantId::as_str)
    )]
    WrongStream {
        /// The event's tenant.
        event: Option<TenantId>,
        /// The stream.
        stream: String,
        /// The stream's tenant.
        stream_tenant: Option<TenantId>,
    },
    /// The tenant is not in the configured allow-list.
    #[error("tenant `{0}` is not in the allowed tenants")]
    NotAllowed(TenantId),
    /// Single-tenant mode, but a tenant is named (by an event, a context or a caller).
    #[error("single-tenant mode, but tenant `{0}` is named; enable multi-tenancy to use tenants")]
    InSingleMode(TenantId),
}

impl TenantId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let id = id.into();
        let invalid = |reason: String| Err(InvalidTenantId { reason });
        if id.is_empty() {
            return invalid("must not be empty".to_owned());
        }
        if id.len() > MAX_TENANT_LEN {
            return invalid(format!(
                "is {} characters long; the limit is {MAX_TENANT_LEN}",
                id.len()
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return invalid(format!(
                "`{}` contains {bad:?}; only lowercase letters, digits, `-` and `_` are allowed",
                crate::text::truncate(&id, 80)
            ));
        }
        Ok(TenantId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::new(s)
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TenantId::new(s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

tokio::task_local! {
    static CURRENT_TENANT: TenantId;
}

/// The tenant the current task works for.
///
/// Set it around a piece of work with [`TenantContext::scope`]; publishing reads it with
/// [`TenantContext::current`], and the runtime runs every handler inside its tenant's scope,
/// so events a handler publishes stay with that tenant.
///
/// ```
/// # use asdlc_runtime::{TenantContext, TenantId};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let acme = TenantId::new("acme").unwrap();
/// let seen = TenantContext::scope(acme.clone(), async { TenantContext::current() }).await;
/// assert_eq!(seen, Some(acme));
/// assert_eq!(TenantContext::current(), None);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TenantContext;

impl TenantContext {
    /// Runs `future` with `tenant` as the current tenant.
    pub fn scope<F: Future>(tenant: TenantId, future: F) -> impl Future<Output = F::Output> {
        CURRENT_TENANT.scope(tenant, future)
    }

    /// The current tenant, if a scope set one.
    pub fn current() -> Option<TenantId> {
        CURRENT_TENANT.try_with(Clone::clone).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_tenant_ids_are_accepted() {
        for id in ["acme", "a", "tenant-1", "t_2", &"a".repeat(63)] {
            TenantId::new(id).unwrap();
        }
    }

    #[test]
    fn hostile_tenant_ids_are_rejected() {
        for id in [
            "",
            "a:b",
            "{acme}",
            "ac}me",
            "a*",
            "a?",
            "a b",
            "a\n",
            "..",
            "Acme",
            "ünïcode",
            "tenant:{other}",
            &"a".repeat(64),
        ] {
            let err = TenantId::new(id).unwrap_err();
            assert!(!err.reason().is_empty(), "{id:?}");
            assert!(err.to_string().starts_with("invalid `tenant_id`"), "{id:?}");
        }
    }

    #[test]
    fn tenant_ids_deserialize_through_validation() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"a:b\"").is_err());
    }

    #[tokio::test]
    async fn context_follows_the_task_and_nests() {
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        TenantContext::scope(a.clone(), async {
            assert_eq!(TenantContext::current(), Some(a.clone()));
            TenantContext::scope(b.clone(), async {
                assert_eq!(TenantContext::current(), Some(b.clone()));
            })
            .await;
            assert_eq!(TenantContext::current(), Some(a.clone()));
        })
        .await;
        assert_eq!(TenantContext::current(), None);
    }
}
