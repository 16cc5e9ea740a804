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

use crate::error::ValidationError;

pub use discover::discover_tenants;

/// The longest tenant id, in characters.
pub const MAX_TENANT_LEN: usize = 63;

/// A validated tenant id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, ValidationError> {
        let id = id.into();
        if id.is_empty() {
            return Err(ValidationError::new("tenant_id", "must not be empty"));
        }
        if id.len() > MAX_TENANT_LEN {
            return Err(ValidationError::new(
                "tenant_id",
                format!(
                    "is {} characters long; the limit is {MAX_TENANT_LEN}",
                    id.len()
                ),
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(ValidationError::new(
                "tenant_id",
                format!(
                    "`{}` contains {bad:?}; only lowercase letters, digits, `-` and `_` are allowed",
                    crate::text::truncate(&id, 80)
                ),
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
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::new(s)
    }
}

impl TryFrom<String> for TenantId {
    type Error = ValidationError;
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
            assert_eq!(err.field, "tenant_id", "{id:?}");
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
