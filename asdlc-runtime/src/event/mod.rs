//! The event model: what travels on a stream.
//!
//! [`AsdlcEvent`] is the one message type of the aSDLC backbone. Every event is validated
//! ([`AsdlcEvent::validate`]) before it is published, so a consumer only ever sees well-formed
//! events, and bad input from other producers is caught by the decoder (see
//! [`crate::encoding`]) and dead-lettered with its reason.

// One module per concern: `kind` (the event types and their names), `validate` (the checks and
// limits), `key` (idempotency keys). The event and its builder are here.
mod key;
mod kind;
mod validate;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::tenancy::TenantId;

pub(crate) use key::BornKey;
pub(crate) use key::born_ms;
pub use key::{generate_idempotency_key, keyless_identity, unique_idempotency_key};
pub use kind::{EventType, UnknownEventType};
pub use validate::{MAX_EVENT_BYTES, MAX_ID_LEN, MAX_PATH_LEN};

/// How the orchestrator runs a session's agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Ordinary agent execution.
    #[default]
    Normal,
    /// Recursive language-model execution.
    Rlm,
}

impl Mode {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Rlm => "rlm",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Mode::Normal),
            "rlm" => Ok(Mode::Rlm),
            other => Err(format!("mode must be `normal` or `rlm`, got `{other}`")),
        }
    }
}

/// One event of the aSDLC backbone.
///
/// Build one with [`AsdlcEvent::builder`]; it gets a fresh, unique idempotency key when it is
/// built, so publishing the same value twice (a retry after a timeout, say) is handled once.
/// For an operation-level key (one patch applied at one git SHA), use
/// [`AsdlcEventBuilder::operation_key`] or [`generate_idempotency_key`].
///
/// Beside its public fields, an event made by [`AsdlcEvent::new`] or the builder remembers the
/// fresh key it was born with (not serialized, compared or shown), so that
/// [`crate::HandlerContext::emit`] can tell whether the application set a key of its own.
/// Hence no struct literal outside this crate: make one with the builder (or decode or
/// deserialize it).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AsdlcEvent {
    /// The stream entry id, assigned by Redis on publish; `None` before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// What happened.
    pub event_type: EventType,
    /// The session the event belongs to (required, non-empty).
    pub session_id: String,
    /// The epic, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epic_id: Option<String>,
    /// The task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The git commit the event refers to: 7 to 40 hex characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<String>,
    /// Paths of artifacts the event refers to. Any UTF-8 text survives the round trip,
    /// commas and newlines included.
    #[serde(default)]
    pub artifact_paths: Vec<String>,
    /// How the session runs.
    #[serde(default)]
    pub mode: Mode,
    /// The tenant, in multi-tenant deployments; filled from the [`crate::TenantContext`] on
    /// publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// When the event happened (UTC).
    pub timestamp: DateTime<Utc>,
    /// What makes two deliveries "the same event" for deduplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Free-form JSON data.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The fresh key the event was born with; none for an event decoded or deserialized, or
    /// whose builder was given a key.
    #[serde(skip)]
    pub(crate) born_key: BornKey,
}

impl fmt::Debug for AsdlcEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The public fields only, as a derive would show them.
        f.debug_struct("AsdlcEvent")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("session_id", &self.session_id)
            .field("epic_id", &self.epic_id)
            .field("task_id", &self.task_id)
            .field("git_sha", &self.git_sha)
            .field("artifact_paths", &self.artifact_paths)
            .field("mode", &self.mode)
            .field("tenant_id", &self.tenant_id)
            .field("timestamp", &self.timestamp)
            .field("idempotency_key", &self.idempotency_key)
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl AsdlcEvent {
    /// An event of `event_type` in `session_id`, stamped now, with a fresh idempotency key.
    pub fn new(event_type: EventType, session_id: impl Into<String>) -> Self {
        let (born_key, key) = BornKey::fresh();
        AsdlcEvent {
            event_id: None,
            event_type,
            session_id: session_id.into(),
            epic_id: None,
            task_id: None,
            git_sha: None,
            artifact_paths: Vec::new(),
            mode: Mode::Normal,
            tenant_id: None,
            timestamp: Utc::now(),
            idempotency_key: Some(key),
            metadata: serde_json::Map::new(),
            born_key,
        }
    }

    /// A builder for an event of `event_type` in `session_id`.
    pub fn builder(event_type: EventType, session_id: impl Into<String>) -> AsdlcEventBuilder {
        AsdlcEventBuilder {
            event: AsdlcEvent::new(event_type, session_id),
        }
    }
}

/// Builds an [`AsdlcEvent`] field by field.
#[derive(Debug, Clone)]
#[must_use]
pub struct AsdlcEventBuilder {
    event: AsdlcEvent,
}

impl AsdlcEventBuilder {
    /// Sets the epic.
    pub fn epic_id(mut self, id: impl Into<String>) -> Self {
        self.event.epic_id = Some(id.into());
        self
    }
    /// Sets the task.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.event.task_id = Some(id.into());
        self
    }
    /// Sets the git commit.
    pub fn git_sha(mut self, sha: impl Into<String>) -> Self {
        self.event.git_sha = Some(sha.into());
        self
    }
    /// Adds an artifact path.
    pub fn artifact_path(mut self, path: impl Into<String>) -> Self {
        self.event.artifact_paths.push(path.into());
        self
    }
    /// Replaces the artifact paths.
    pub fn artifact_paths<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event.artifact_paths = paths.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.event.mode = mode;
        self
    }
    /// Sets the tenant explicitly (it is otherwise taken from the context on publish).
    pub fn tenant_id(mut self, tenant: TenantId) -> Self {
        self.event.tenant_id = Some(tenant);
        self
    }
    /// Sets the timestamp (default: when the builder was made).
    pub fn timestamp(mut self, at: DateTime<Utc>) -> Self {
        self.event.timestamp = at;
        self
    }
    /// Sets an explicit idempotency key (kept by [`crate::HandlerContext::emit`], whatever it
    /// looks like).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.event.idempotency_key = Some(key.into());
        self.event.born_key = BornKey::default();
        self
    }
    /// Uses the deterministic [`generate_idempotency_key`] of the fields set so far (call it
    /// last), so that every event announcing the same operation is handled once.
    pub fn operation_key(mut self) -> Self {
        self.event.idempotency_key = Some(self.event.operation_key());
        self.event.born_key = BornKey::default();
        self
    }
    /// Adds one metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.event.metadata.insert(key.into(), value.into());
        self
    }
    /// Replaces the metadata.
    pub fn metadata(mut self, metadata: serde_json::Map<String, serde_json::Value>) -> Self {
        self.event.metadata = metadata;
        self
    }
    /// The event, validated.
    pub fn build(self) -> Result<AsdlcEvent, ValidationError> {
        self.event.validate()?;
        Ok(self.event)
    }
    /// The event, not validated (publishing validates it).
    pub fn build_unchecked(self) -> AsdlcEvent {
        self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_events_validate_and_get_unique_keys() {
        let a = AsdlcEvent::builder(EventType::TaskCreated, "s1")
            .task_id("t1")
            .build()
            .unwrap();
        let b = AsdlcEvent::builder(EventType::TaskCreated, "s1")
            .task_id("t1")
            .build()
            .unwrap();
        assert_ne!(a.idempotency_key, b.idempotency_key);
        assert!(a.idempotency_key.as_deref().unwrap().starts_with("evt-"));
    }

    #[test]
    fn an_event_remembers_its_born_key_until_a_key_is_set_and_only_in_memory() {
        let built = AsdlcEvent::builder(EventType::TaskCreated, "s1")
            .build()
            .unwrap();
        let key = built.idempotency_key.clone().unwrap();
        assert!(built.born_key.is(&key));
        assert!(
            built.clone().born_key.is(&key),
            "a copy is born with it too"
        );
        assert!(!built.born_key.is(&key.to_uppercase()));
        let set = AsdlcEvent::builder(EventType::TaskCreated, "s1").idempotency_key(key.clone());
        assert!(!set.build_unchecked().born_key.is(&key));
        // Not part of the value: a round trip through JSON is equal, and forgets it.
        let json = serde_json::to_string(&built).unwrap();
        assert!(!json.contains("born"), "{json}");
        let back: AsdlcEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, built);
        assert!(!back.born_key.is(&key));
        assert!(!format!("{built:?}").contains("born"));
    }
}
