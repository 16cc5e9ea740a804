//! What kind of event it is: [`EventType`], its wire names (the stream's `event_type` field)
//! and its Rust variant names, and [`UnknownEventType`] for a name that is neither.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! event_types {
    ($($(#[$doc:meta])* $variant:ident => $wire:literal,)*) => {
        /// Every kind of event on the aSDLC backbone.
        ///
        /// On the wire an event type is its snake_case name (`task_created`); in Rust, and in
        /// `#[event_handler(types = [...])]`, it is the variant name (`TaskCreated`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventType {
            $($(#[$doc])* $variant,)*
        }

        impl EventType {
            /// Every event type, in declaration order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            /// The wire name, as stored in the stream's `event_type` field.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $wire,)*
                }
            }

            /// The Rust variant name, as written in `#[event_handler(types = [...])]`.
            pub const fn variant_name(self) -> &'static str {
                match self {
                    $(EventType::$variant => stringify!($variant),)*
                }
            }

            fn from_wire(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some(EventType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    /// A development session began.
    SessionStarted => "session_started",
    /// A development session ended.
    SessionCompleted => "session_completed",
    /// A task was created in a session.
    TaskCreated => "task_created",
    /// A task was handed to an agent.
    TaskDispatched => "task_dispatched",
    /// A task finished successfully.
    TaskCompleted => "task_completed",
    /// A task failed.
    TaskFailed => "task_failed",
    /// A human approval gate was requested.
    GateRequested => "gate_requested",
    /// A human approved a gate.
    GateApproved => "gate_approved",
    /// A human rejected a gate.
    GateRejected => "gate_rejected",
    /// A gate expired without a decision.
    GateExpired => "gate_expired",
    /// An agent started work.
    AgentStarted => "agent_started",
    /// An agent finished work.
    AgentCompleted => "agent_completed",
    /// An agent reported an error.
    AgentError => "agent_error",
    /// An agent produced a patch.
    PatchCreated => "patch_created",
    /// A patch was applied to the repository.
    PatchApplied => "patch_applied",
    /// A patch was rejected.
    PatchRejected => "patch_rejected",
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown event type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event type `{name}`; valid types are: {}",
    valid_event_type_list()
)]
pub struct UnknownEventType {
    /// The name that was not recognised.
    pub name: String,
}

fn valid_event_type_list() -> String {
    EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    /// Accepts the wire name (`task_created`) and, for convenience on command lines, the
    /// variant name (`TaskCreated`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::from_wire(s)
            .or_else(|| {
                EventType::ALL
                    .iter()
                    .copied()
                    .find(|t| t.variant_name() == s)
            })
            .ok_or_else(|| UnknownEventType { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_round_trips_by_wire_name() {
        assert_eq!(EventType::ALL.len(), 16);
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), *t);
            assert_eq!(t.variant_name().parse::<EventType>().unwrap(), *t);
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }

    #[test]
    fn unknown_event_type_lists_valid_ones() {
        let err = "task_exploded".parse::<EventType>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("task_exploded"), "{msg}");
        assert!(
            msg.contains("task_created") && msg.contains("patch_rejected"),
            "{msg}"
        );
    }
}
