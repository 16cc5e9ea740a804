//! The runtime's errors: a handler set that cannot run ([`RegistryError`]) and whatever stops a
//! start or a run ([`RuntimeError`]). They live with the runtime, not in [`crate::error`],
//! because a conflict names an [`EventType`] and the crate's error module stays below events.

use crate::error::{ConfigError, ConsumeError, StreamError, ValidationError};
use crate::event::EventType;

/// The handler set is inconsistent: found at startup, before anything is consumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two handlers of one group handle the same event type.
    #[error(
        "handlers `{first}` and `{second}` of group `{group}` both handle `{event_type}`; \
         a group may have one handler per event type"
    )]
    Conflict {
        /// The group.
        group: String,
        /// The contested event type.
        event_type: EventType,
        /// One handler (`name (file:line)`).
        first: String,
        /// The other.
        second: String,
    },
    /// Two handlers of one group have the same name.
    #[error("two handlers of group `{group}` are named `{name}` ({first} and {second})")]
    DuplicateName {
        /// The group.
        group: String,
        /// The name.
        name: String,
        /// Where one is declared.
        first: String,
        /// Where the other is.
        second: String,
    },
    /// A requested group has no handler: a typo, or its handlers live in a library crate the
    /// binary never names, which the linker leaves out (see [`RegistryError::NoHandlers`]).
    #[error(
        "no handler belongs to group `{group}`; groups with handlers: {known}. If its handlers \
         are declared in a library crate, the binary must name that crate (`use that_crate as _;`) \
         or the linker leaves them out"
    )]
    UnknownGroup {
        /// The group asked for.
        group: String,
        /// The groups that exist, comma-separated.
        known: String,
    },
    /// There is nothing to run: no `#[event_handler]` is linked into the program and none
    /// was added to the builder. The usual cause is handlers declared in a library crate that
    /// the binary depends on but never names: rustc links a dependency only if the binary
    /// refers to it, so its registrations are silently left out; `use that_crate as _;` in the
    /// binary brings them back. A process that only publishes needs a
    /// [`crate::Publisher`], not a runtime.
    #[error(
        "no event handlers found: declare some with #[event_handler] or add them to the builder. \
         Handlers declared in a library crate are linked only if the binary names that crate: \
         add `use that_crate as _;` to the binary (e.g. in main.rs)"
    )]
    NoHandlers,
    /// A handler takes state of a type the runtime was not given: a `State<T>` parameter of an
    /// `#[event_handler]`, or a type a hand-written handler's `required_state` lists.
    #[error(
        "handler `{handler}` of group `{group}` takes state of type `{type_name}`, which the \
         runtime was not given: add `.state(...)` with a value of type `{type_name}` to the \
         runtime builder"
    )]
    MissingState {
        /// The group.
        group: String,
        /// The handler (`name (file:line)`).
        handler: String,
        /// The type, as `std::any::type_name` names it.
        type_name: String,
    },
    /// A group name is invalid.
    #[error("handler `{handler}`: {source}")]
    InvalidGroup {
        /// The handler.
        handler: String,
        /// Why.
        #[source]
        source: ValidationError,
    },
}

/// The runtime could not start, or a consumer failed while running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The handler set is inconsistent.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A consumer could not start or stopped with an error.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// A stream operation failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}
