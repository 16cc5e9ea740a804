//! Per-key ordering, the consumer's side: which order list each in-flight ordered entry is
//! placed in, and which entries wait for a key to be released.
//!
//! The server decides (begin_ordered.lua places entries and says whose turn it is; commit.lua
//! releases a key with its `O` records; the state is described in order.lua). This book
//! only remembers, per entry, the list to release at commit, and wakes this consumer's
//! waiting entries of a key as soon as it commits the key's head here; entries waiting on a
//! key another consumer holds are checked again after a short, growing pause.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::shared::StreamCtx;
use crate::event::AsdlcEvent;
use crate::handler::OrderBy;
use crate::idempotency::fingerprint;
use crate::retry::Policy;

/// The pause before an entry that waits on its key (or on an earlier entry's placement) is
/// checked again: 20 ms, doubling up to half a second. A wait is short when the key's head
/// runs in another consumer; a key released here wakes its waiters at once.
const WAIT: Policy = Policy::exponential(Duration::from_millis(20))
    .cap(Duration::from_millis(500))
    .jitter(0.5);

/// The order list of `event` under `order`, in `stream`'s slot (`None`: the event has no
/// key, so it is not ordered).
pub(super) fn order_list(
    stream: &StreamCtx,
    group: &str,
    order: &OrderBy,
    event: &AsdlcEvent,
) -> Option<Arc<str>> {
    let key = order.key_of(event)?;
    let hex: String = fingerprint(&key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(Arc::from(stream.keys.order_list(group, &hex)))
}

struct Placed {
    list: Arc<str>,
    /// How many times the entry was told to wait, for the pause before the next check.
    waits: u32,
}

#[derive(Default)]
struct Inner {
    /// (stream, entry id) -> its order list.
    placed: HashMap<(Arc<str>, String), Placed>,
    /// Order list -> entries of this consumer waiting for it.
    waiting: HashMap<Arc<str>, Vec<(Arc<StreamCtx>, String)>>,
}

/// The ordered entries this consumer is working on, and those waiting for their key.
#[derive(Default)]
pub(super) struct OrderBook {
    inner: Mutex<Inner>,
}

impl OrderBook {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the order list of an entry about to begin (keeping its count of waits).
    pub(super) fn place(&self, stream: &Arc<str>, id: &str, list: Arc<str>) {
        let mut inner = self.lock();
        inner
            .placed
            .entry((stream.clone(), id.to_owned()))
            .and_modify(|p| p.list = list.clone())
            .or_insert(Placed { list, waits: 0 });
    }

    /// The order list of an entry, if it is ordered.
    pub(super) fn list(&self, stream: &Arc<str>, id: &str) -> Option<Arc<str>> {
        self.lock()
            .placed
            .get(&(stream.clone(), id.to_owned()))
            .map(|p| p.list.clone())
    }

    /// Notes that an entry waits for its key; returns the pause before it is checked again.
    pub(super) fn wait(&self, stream: &Arc<StreamCtx>, id: &str) -> Duration {
        let mut inner = self.lock();
        let Some(placed) = inner.placed.get_mut(&(stream.name.clone(), id.to_owned())) else {
            return WAIT.delay(1);
        };
        placed.waits = placed.waits.saturating_add(1);
        let (list, waits) = (placed.list.clone(), placed.waits);
        let waiters = inner.waiting.entry(list).or_default();
        if !waiters.iter().any(|(s, i)| s.name == stream.name && i == id) {
            waiters.push((stream.clone(), id.to_owned()));
        }
        WAIT.delay(waits)
    }

    /// A key was released here: the entries of this consumer waiting for it.
    pub(super) fn release(&self, list: &str) -> Vec<(Arc<StreamCtx>, String)> {
        self.lock().waiting.remove(list).unwrap_or_default()
    }

    /// Forgets an entry: committed, or let go.
    pub(super) fn forget(&self, stream: &Arc<str>, id: &str) {
        let mut inner = self.lock();
        if let Some(placed) = inner.placed.remove(&(stream.clone(), id.to_owned()))
            && let Some(waiters) = inner.waiting.get_mut(&placed.list)
        {
            waiters.retain(|(s, i)| !(s.name == *stream && i == id));
            if waiters.is_empty() {
                inner.waiting.remove(&placed.list);
            }
        }
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
    fn a_waiting_entry_is_woken_once_by_its_key_and_forgotten_with_its_entry() {
        let book = OrderBook::default();
        let stream = Arc::new(StreamCtx::new("s".to_owned(), None, "g"));
        let list: Arc<str> = Arc::from("{s}:order:g:00");
        book.place(&stream.name, "2-0", list.clone());
        book.place(&stream.name, "3-0", list.clone());
        assert_eq!(book.list(&stream.name, "2-0").as_deref(), Some(&*list));
        let first = book.wait(&stream, "2-0");
        assert!(first <= Duration::from_millis(20), "{first:?}");
        book.wait(&stream, "2-0");
        let third = book.wait(&stream, "2-0");
        assert!(third >= Duration::from_millis(40), "waits grow: {third:?}");
        book.wait(&stream, "3-0");
        let woken: Vec<String> = book.release(&list).into_iter().map(|(_, id)| id).collect();
        assert_eq!(woken, ["2-0", "3-0"]);
        assert!(book.release(&list).is_empty());
        book.wait(&stream, "3-0");
        book.forget(&stream.name, "3-0");
        assert!(book.release(&list).is_empty());
        assert_eq!(book.list(&stream.name, "3-0"), None);
    }
}
