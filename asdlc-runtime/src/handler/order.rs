//! What orders a handler's events: [`OrderBy`], chosen with `ordered_by` in
//! `#[event_handler(...)]` or [`HandlerOptions::with_ordered_by`](super::HandlerOptions::with_ordered_by).

use std::fmt;

use crate::event::AsdlcEvent;

/// The key a handler's events are ordered by: within the handler's group, events with the
/// same key are handled one at a time, in stream order, whichever consumer reads them; events
/// with different keys run concurrently. An event without a key (a `Task` order and no
/// `task_id`, a key function returning `None`) is not ordered.
///
/// ```
/// use asdlc_runtime::{AsdlcEvent, EventType, HandlerOptions, OrderBy};
///
/// fn by_epic(event: &AsdlcEvent) -> Option<String> {
///     event.epic_id.clone()
/// }
/// const OPTIONS: HandlerOptions = HandlerOptions::new().with_ordered_by(OrderBy::Key(by_epic));
///
/// let event = AsdlcEvent::builder(EventType::TaskCreated, "s-1").task_id("t-1").build().unwrap();
/// assert_eq!(OrderBy::Session.key_of(&event).as_deref(), Some("session:s-1"));
/// assert_eq!(OrderBy::Task.key_of(&event).as_deref(), Some("task:t-1"));
/// assert_eq!(OPTIONS.ordered_by.unwrap().key_of(&event), None);
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum OrderBy {
    /// The event's `session_id` (`ordered_by = session`).
    Session,
    /// The event's `task_id` (`ordered_by = task`); events without one are not ordered.
    Task,
    /// A key of the application's choosing; `None` leaves the event unordered.
    Key(fn(&AsdlcEvent) -> Option<String>),
}

impl OrderBy {
    /// The order key of `event`, as the consumer groups events by: prefixed with the kind of
    /// key (`session:`, `task:`, `key:`), so that a session and a task of the same name,
    /// ordered by two handlers of one group, stay two keys.
    pub fn key_of(&self, event: &AsdlcEvent) -> Option<String> {
        match self {
            OrderBy::Session => Some(format!("session:{}", event.session_id)),
            OrderBy::Task => event.task_id.as_ref().map(|t| format!("task:{t}")),
            OrderBy::Key(f) => f(event).map(|k| format!("key:{k}")),
        }
    }
}

impl PartialEq for OrderBy {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (OrderBy::Session, OrderBy::Session) | (OrderBy::Task, OrderBy::Task) => true,
            (OrderBy::Key(a), OrderBy::Key(b)) => std::ptr::fn_addr_eq(*a, *b),
            _ => false,
        }
    }
}

impl Eq for OrderBy {}

impl fmt::Debug for OrderBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderBy::Session => f.write_str("Session"),
            OrderBy::Task => f.write_str("Task"),
            OrderBy::Key(_) => f.write_str("Key(fn)"),
        }
    }
}
