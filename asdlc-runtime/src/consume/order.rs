//! Per-key ordering, the consumer's side: the order key of each in-flight ordered entry, and
//! which entries wait for a key to be released.
//!
//! The server decides (begin_ordered.lua places entries and says whose turn it is; commit.lua
//! releases a key with its `O` records; the state is described in order.lua). This book
//! only remembers, per entry, the key to release at commit, and wakes this consumer's
//! waiting entries of a key as soon as it commits the key's head here; entries waiting on a
//! key another consumer holds are checked again after a short, growing pause.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::stream::StreamCtx;
use crate::event::AsdlcEvent;
use crate::handler::OrderBy;
use crate::retry::Policy;

/// The pause before an entry that waits on its key (or on an earlier entry's placement) is
/// checked again: 20 ms, doubling up to half a second. A wait is short when the key's head
/// runs in another consumer; a key released here wakes its waiters at once.
const WAIT: Policy = Policy::exponential(Duration::from_millis(20))
    .cap(Duration::from_millis(500))
    .jitter(0.5);

/// The order key of `event` under `order` (`None`: the event has no key, so it is not
/// ordered).
pub(super) fn order_key(order: &OrderBy, event: &AsdlcEvent) -> Option<Arc<str>> {
    order.key_of(event).map(Arc::from)
}

/// The group's order rule as begin_ordered.lua reads it: `<event type>=<s|t|f>;` for every
/// event type an ordered handler takes (by session, by task, by a key function), so the begin
/// step can place another consumer's entries from their fields.
pub(super) fn order_rule(handlers: &[super::HandlerSpec]) -> String {
    let mut rule = String::new();
    for t in crate::event::EventType::ALL {
        let Some(h) = handlers.iter().find(|h| h.handler.can_handle(*t)) else {
            continue;
        };
        let kind = match h.options.ordered_by {
            Some(OrderBy::Session) => 's',
            Some(OrderBy::Task) => 't',
            Some(OrderBy::Key(_)) => 'f',
            None => continue,
        };
        rule.push_str(&format!("{}={kind};", t.as_str()));
    }
    rule
}

struct Placed {
    order_key: Arc<str>,
    /// How many times the entry was told to wait, for the pause before the next check.
    waits: u32,
}

/// An entry waiting for its key, by its place in the stream.
type Waiters = BTreeMap<(u64, u64), (Arc<StreamCtx>, String)>;

#[derive(Default)]
struct Inner {
    /// (stream, entry id) -> its order key.
    placed: HashMap<(Arc<str>, String), Placed>,
    /// Order key -> this consumer's entries waiting for it, earliest first.
    waiting: HashMap<Arc<str>, Waiters>,
}

/// An entry id as numbers, to order by (`<ms>-<seq>`; anything else sorts first).
pub(super) fn id_key(id: &str) -> (u64, u64) {
    let id = crate::streams::EntryId::or_zero(id);
    (id.ms, id.seq)
}

/// The ordered entries this consumer is working on, and those waiting for their key.
///
/// Of the entries of one key waiting here, only the earliest is checked again on a timer:
/// the later ones cannot run before it, so they wait (kept fresh by the keep-alive) until it
/// has run and been committed here, which wakes the next, or until it leaves this consumer.
#[derive(Default)]
pub(super) struct OrderBook {
    inner: Mutex<Inner>,
}

impl OrderBook {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the order key of an entry about to begin (keeping its count of waits); it is
    /// no longer waiting.
    pub(super) fn place(&self, stream: &Arc<str>, id: &str, order_key: Arc<str>) {
        let mut inner = self.lock();
        if let Some(waiters) = inner.waiting.get_mut(&order_key) {
            waiters.remove(&id_key(id));
            if waiters.is_empty() {
                inner.waiting.remove(&order_key);
            }
        }
        inner
            .placed
            .entry((stream.clone(), id.to_owned()))
            .and_modify(|p| p.order_key = order_key.clone())
            .or_insert(Placed {
                order_key,
                waits: 0,
            });
    }

    /// The order key of an entry, if it is ordered.
    pub(super) fn key_of(&self, stream: &Arc<str>, id: &str) -> Option<Arc<str>> {
        self.lock()
            .placed
            .get(&(stream.clone(), id.to_owned()))
            .map(|p| p.order_key.clone())
    }

    /// Notes that an entry waits for an earlier entry of its key. Returns the pause before
    /// it is checked again if it is the earliest of its key waiting here; `None`: it waits
    /// to be woken.
    pub(super) fn wait(&self, stream: &Arc<StreamCtx>, id: &str) -> Option<Duration> {
        let mut inner = self.lock();
        let Some(placed) = inner.placed.get_mut(&(stream.name.clone(), id.to_owned())) else {
            return Some(WAIT.delay(1));
        };
        placed.waits = placed.waits.saturating_add(1);
        let (order_key, waits) = (placed.order_key.clone(), placed.waits);
        let waiters = inner.waiting.entry(order_key).or_default();
        let key = id_key(id);
        waiters.insert(key, (stream.clone(), id.to_owned()));
        let earliest = waiters.keys().next() == Some(&key);
        earliest.then(|| WAIT.delay(waits))
    }

    /// Notes that an entry waits to be placed (behind another consumer's unplaced entries);
    /// returns the pause before it is checked again.
    pub(super) fn behind(&self, stream: &Arc<str>, id: &str) -> Duration {
        let mut inner = self.lock();
        let waits = match inner.placed.get_mut(&(stream.clone(), id.to_owned())) {
            Some(placed) => {
                placed.waits = placed.waits.saturating_add(1);
                placed.waits
            }
            None => 1,
        };
        WAIT.delay(waits)
    }

    /// A key was released here: the earliest entry of this consumer waiting for it, to run
    /// now.
    pub(super) fn release(&self, order_key: &str) -> Option<(Arc<StreamCtx>, String)> {
        let mut inner = self.lock();
        let waiters = inner.waiting.get_mut(order_key)?;
        let first = waiters.pop_first().map(|(_, w)| w);
        if waiters.is_empty() {
            inner.waiting.remove(order_key);
        }
        first
    }

    /// Forgets an entry (committed, or let go). If entries of its key wait here and none
    /// is earlier than it, the earliest of them is returned, to be woken: nothing else here
    /// would wake it.
    pub(super) fn forget(&self, stream: &Arc<str>, id: &str) -> Option<(Arc<StreamCtx>, String)> {
        let mut inner = self.lock();
        let placed = inner.placed.remove(&(stream.clone(), id.to_owned()))?;
        let waiters = inner.waiting.get_mut(&placed.order_key)?;
        let key = id_key(id);
        waiters.remove(&key);
        let woken = match waiters.first_key_value() {
            Some((first, _)) if *first > key => waiters.pop_first().map(|(_, w)| w),
            _ => None,
        };
        if waiters.is_empty() {
            inner.waiting.remove(&placed.order_key);
        }
        woken
    }

    /// Forgets everything (a run ended).
    pub(super) fn clear(&self) {
        *self.lock() = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_earliest_waiter_of_a_key_polls_and_a_release_wakes_it() {
        let book = OrderBook::default();
        let stream = Arc::new(StreamCtx::new(
            "s".to_owned(),
            None,
            "g",
            crate::idempotency::MarkLayout::default(),
        ));
        let order_key: Arc<str> = Arc::from("session:s-1");
        for id in ["2-0", "3-0", "10-0"] {
            book.place(&stream.name, id, order_key.clone());
        }
        assert_eq!(
            book.key_of(&stream.name, "2-0").as_deref(),
            Some(&*order_key)
        );
        assert!(
            book.wait(&stream, "3-0").is_some(),
            "the earliest waiting polls"
        );
        assert!(
            book.wait(&stream, "10-0").is_none(),
            "a later one waits to be woken"
        );
        assert!(
            book.wait(&stream, "2-0").is_some(),
            "an earlier one polls too"
        );
        let woken = book.release(&order_key).map(|(_, id)| id);
        assert_eq!(woken.as_deref(), Some("2-0"));
        // Begun again: no longer waiting; waiting again, its pause grows.
        book.place(&stream.name, "2-0", order_key.clone());
        book.wait(&stream, "2-0");
        let third = book.wait(&stream, "2-0").unwrap();
        assert!(third >= Duration::from_millis(20), "waits grow: {third:?}");
        assert_eq!(
            book.release(&order_key).map(|(_, id)| id).as_deref(),
            Some("2-0")
        );
        assert_eq!(
            book.release(&order_key).map(|(_, id)| id).as_deref(),
            Some("3-0")
        );
    }

    #[test]
    fn forgetting_the_entry_before_the_waiters_wakes_the_earliest() {
        let book = OrderBook::default();
        let stream = Arc::new(StreamCtx::new(
            "s".to_owned(),
            None,
            "g",
            crate::idempotency::MarkLayout::default(),
        ));
        let order_key: Arc<str> = Arc::from("session:s-1");
        for id in ["2-0", "3-0", "4-0"] {
            book.place(&stream.name, id, order_key.clone());
        }
        book.wait(&stream, "3-0");
        book.wait(&stream, "4-0");
        // 4-0 leaves: 3-0 still comes before it, nothing to wake.
        assert!(book.forget(&stream.name, "4-0").is_none());
        // 2-0, running, leaves (claimed by a peer): 3-0 must not sleep on.
        let woken = book.forget(&stream.name, "2-0").map(|(_, id)| id);
        assert_eq!(woken.as_deref(), Some("3-0"));
        assert!(book.release(&order_key).is_none());
        assert_eq!(id_key("1796412177499-22"), (1_796_412_177_499, 22));
        book.clear();
        assert_eq!(book.key_of(&stream.name, "3-0"), None);
    }
}
