//! The in-flight ledger: every entry this consumer is working on, per stream.
//!
//! An entry is admitted once, by whichever path finds it first (a fresh read, a re-read of
//! our own pending entries, recovery, a claim, a redelivery), and stays until its outcome is
//! committed or the run lets it go. Admission is one atomic check-and-insert, so two paths
//! never dispatch the same entry at once in one process. An entry waiting for a retry stays
//! in the ledger as deferred: it is ours, only not running.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::idempotency::FINGERPRINT_LEN;

/// The fingerprint a delivery holds the lease of, if it took one.
pub(crate) type Lease = Option<[u8; FINGERPRINT_LEN]>;

/// A lease as a script argument: the fingerprint, or empty for none.
pub(super) fn lease_arg(lease: &Lease) -> &[u8] {
    lease.as_ref().map_or(&[], |fp| &fp[..])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Dispatched: decoding, beginning, running or committing; with its lease once taken.
    Running(Lease),
    /// Pending for a retry or a recheck, scheduled for redelivery to this consumer.
    Deferred,
    /// Pending, waiting for an earlier entry of its order key; kept fresh by the keep-alive
    /// (no timer of its own brings it back: it is woken).
    Held,
}

/// One stream's running entries and their leases, for the keep-alive.
pub(crate) type RunningSnapshot = (Arc<str>, Vec<(String, Lease)>);

/// How many of the entries let go last the ledger remembers (see [`Ledger::let_go_since`]).
const RECENT: usize = 4096;

/// The entries this consumer is working on.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    streams: Mutex<HashMap<Arc<str>, HashMap<String, Slot>>>,
    recent: Mutex<Recent>,
}

/// How many entries were let go so far, and the last [`RECENT`] of them: the count before
/// each, its stream and its id.
#[derive(Debug, Default)]
struct Recent {
    removals: u64,
    ids: VecDeque<(u64, Arc<str>, String)>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, HashMap<String, Slot>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits entries as running and says which were admitted: not those already running,
    /// and deferred ones only if `redelivery` (the redelivery of a deferred entry is its
    /// one way back).
    pub(crate) fn admit(&self, stream: &Arc<str>, ids: &[&str], redelivery: bool) -> Vec<bool> {
        let mut streams = self.lock();
        let m = streams.entry(stream.clone()).or_default();
        ids.iter()
            .map(|id| match m.get(*id) {
                Some(Slot::Running(_)) => false,
                Some(Slot::Deferred | Slot::Held) if !redelivery => false,
                _ => {
                    m.insert((*id).to_owned(), Slot::Running(None));
                    true
                }
            })
            .collect()
    }

    /// Notes the leases running entries are about to take, for the keep-alive.
    pub(crate) fn set_leases<'a>(
        &self,
        stream: &Arc<str>,
        leases: impl Iterator<Item = (&'a str, [u8; FINGERPRINT_LEN])>,
    ) {
        let mut streams = self.lock();
        let Some(m) = streams.get_mut(stream) else {
            return;
        };
        for (id, fp) in leases {
            if let Some(slot @ Slot::Running(_)) = m.get_mut(id) {
                *slot = Slot::Running(Some(fp));
            }
        }
    }

    /// Marks an entry as waiting for its redelivery.
    pub(crate) fn defer(&self, stream: &Arc<str>, id: &str) {
        self.lock()
            .entry(stream.clone())
            .or_default()
            .insert(id.to_owned(), Slot::Deferred);
    }

    /// Marks an entry as waiting to be woken for its order key.
    pub(crate) fn hold(&self, stream: &Arc<str>, id: &str) {
        self.lock()
            .entry(stream.clone())
            .or_default()
            .insert(id.to_owned(), Slot::Held);
    }

    /// Lets an entry go: committed, or left pending for a later run or for a peer.
    pub(crate) fn remove(&self, stream: &Arc<str>, id: &str) {
        let removed = self
            .lock()
            .get_mut(stream)
            .is_some_and(|m| m.remove(id).is_some());
        if removed {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let n = recent.removals;
            recent.removals += 1;
            recent.ids.push_back((n, stream.clone(), id.to_owned()));
            if recent.ids.len() > RECENT {
                recent.ids.pop_front();
            }
        }
    }

    /// How many entries were let go so far: a mark to ask [`Ledger::let_go_since`] from.
    pub(crate) fn removals(&self) -> u64 {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .removals
    }

    /// The entries of `stream` let go since `removals` said `since`, or `None` if more were
    /// let go since than the ledger remembers. A reply read while its entries were running
    /// may list entries that finished since (committed, dead-lettered): not ours to run again.
    pub(crate) fn let_go_since(&self, stream: &str, since: u64) -> Option<HashSet<String>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.removals > since && recent.ids.front().is_none_or(|(n, ..)| *n > since) {
            return None;
        }
        Some(
            recent
                .ids
                .iter()
                .filter(|(n, s, _)| *n >= since && &**s == stream)
                .map(|(_, _, id)| id.clone())
                .collect(),
        )
    }

    /// Whether an entry is running or deferred here.
    pub(crate) fn contains(&self, stream: &str, id: &str) -> bool {
        self.lock().get(stream).is_some_and(|m| m.contains_key(id))
    }

    /// The entries of every stream this consumer works on, with their leases: running ones,
    /// and deferred or held ones without a lease, so a peer does not claim a retry waiting out
    /// a delay longer than the claim threshold, or an entry held back behind its key, while this
    /// consumer lives.
    pub(crate) fn running(&self) -> Vec<RunningSnapshot> {
        self.lock()
            .iter()
            .filter_map(|(s, m)| {
                let entries: Vec<(String, Lease)> = m
                    .iter()
                    .map(|(id, slot)| match slot {
                        Slot::Running(lease) => (id.clone(), *lease),
                        Slot::Deferred | Slot::Held => (id.clone(), None),
                    })
                    .collect();
                (!entries.is_empty()).then(|| (s.clone(), entries))
            })
            .collect()
    }

    /// Forgets everything (a run ended: what is left stays pending in Redis).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_admitted_once_until_removed() {
        let l = Ledger::default();
        let s: Arc<str> = Arc::from("s");
        assert_eq!(l.admit(&s, &["1-0", "2-0"], false), [true, true]);
        assert_eq!(l.admit(&s, &["1-0", "3-0"], false), [false, true]);
        l.remove(&s, "1-0");
        assert_eq!(l.admit(&s, &["1-0"], false), [true]);
    }

    #[test]
    fn a_deferred_entry_comes_back_only_through_its_redelivery() {
        let l = Ledger::default();
        let s: Arc<str> = Arc::from("s");
        l.admit(&s, &["1-0"], false);
        l.set_leases(&s, [("1-0", [7u8; FINGERPRINT_LEN])].into_iter());
        assert_eq!(l.running()[0].1, vec![("1-0".to_owned(), Some([7; 12]))]);
        l.defer(&s, "1-0");
        // Kept fresh without a lease while it waits.
        assert_eq!(l.running()[0].1, vec![("1-0".to_owned(), None)]);
        assert!(l.contains("s", "1-0"));
        assert_eq!(l.admit(&s, &["1-0"], false), [false]);
        assert_eq!(l.admit(&s, &["1-0"], true), [true]);
        assert_eq!(l.admit(&s, &["1-0"], true), [false]);
    }

    #[test]
    fn a_held_entry_is_kept_fresh_without_a_lease_and_comes_back_when_woken() {
        let l = Ledger::default();
        let s: Arc<str> = Arc::from("s");
        l.admit(&s, &["1-0"], false);
        l.hold(&s, "1-0");
        assert_eq!(l.running()[0].1, vec![("1-0".to_owned(), None)]);
        assert_eq!(l.admit(&s, &["1-0"], false), [false]);
        assert_eq!(l.admit(&s, &["1-0"], true), [true]);
    }

    #[test]
    fn the_entries_let_go_since_a_mark_are_known_while_remembered() {
        let l = Ledger::default();
        let (s, t): (Arc<str>, Arc<str>) = (Arc::from("s"), Arc::from("t"));
        l.admit(&s, &["1-0", "2-0"], false);
        l.admit(&t, &["1-0"], false);
        l.remove(&s, "1-0");
        let mark = l.removals();
        assert_eq!(l.let_go_since("s", mark), Some(HashSet::new()));
        l.remove(&s, "2-0");
        l.remove(&t, "1-0");
        // Removing what is not there lets nothing go.
        l.remove(&s, "9-0");
        assert_eq!(
            l.let_go_since("s", mark),
            Some(HashSet::from(["2-0".to_owned()]))
        );
        assert_eq!(
            l.let_go_since("t", mark),
            Some(HashSet::from(["1-0".to_owned()]))
        );
        // More let go than remembered: unknown.
        for i in 0..RECENT as u64 + 1 {
            let id = format!("{i}-1");
            l.admit(&s, &[id.as_str()], false);
            l.remove(&s, &id);
        }
        assert_eq!(l.let_go_since("s", mark), None);
        assert!(l.let_go_since("s", l.removals()).is_some());
    }
}
