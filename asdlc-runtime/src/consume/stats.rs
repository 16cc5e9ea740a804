//! What the consume side counts: the public [`ConsumerStats`] and [`RecoveryResult`], and the
//! atomic counters behind them, and [`Tally`], what every step counts. Every step counts, so
//! this sits below all of them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::monitor::{Count, Labels, count};

/// What a consumer has done since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerStats {
    /// Events handled and committed.
    pub processed: u64,
    /// Deliveries skipped because their key was already processed.
    pub duplicates: u64,
    /// Handler failures left pending for a retry.
    pub retried: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries acknowledged without handling: no handler for their type, or deleted.
    pub unhandled: u64,
    /// Entries claimed from other consumers.
    pub claimed: u64,
    /// Handler calls that panicked.
    pub panics: u64,
    /// Handler calls that timed out.
    pub timeouts: u64,
    /// Times an entry of an ordered handler was held back because an earlier entry of its
    /// key was unfinished (a retry holds its key's later entries until it succeeds or is
    /// dead-lettered).
    #[serde(default)]
    pub held_back: u64,
    /// Follow-up events handlers emitted, appended with their cause's commit.
    #[serde(default)]
    pub emitted: u64,
}

/// What a recovery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryResult {
    /// Entries handled successfully.
    pub processed: u64,
    /// Entries acknowledged without handling: already processed (idempotent), or deleted
    /// from the stream.
    pub skipped: u64,
    /// Entries whose handling failed (left for retry or dead-lettered).
    pub failed: u64,
    /// Entries claimed from dead or stuck consumers.
    pub claimed: u64,
}

impl RecoveryResult {
    /// Adds another pass's counts to this one.
    pub fn merge(&mut self, other: RecoveryResult) {
        self.processed += other.processed;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.claimed += other.claimed;
    }
}

/// What happened to entries. Each is counted by [`Stats::record`] at once in the consumer's
/// [`ConsumerStats`], in the counts of the recovery pass under way (if any) and in its metric,
/// so that no step counts it in one place and forgets another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tally {
    /// Handled and committed.
    Processed,
    /// Skipped: its key was already processed.
    Duplicate,
    /// A handler failure left pending for a retry.
    Retried,
    /// Moved to the dead-letter stream.
    DeadLettered,
    /// Acknowledged without handling: no handler for its type, or deleted.
    Unhandled,
    /// Claimed from another consumer.
    Claimed,
    /// A handler call panicked.
    Panicked,
    /// A handler call timed out.
    TimedOut,
    /// A handler call failed, or its staged effects were refused (whatever happens next).
    Failed,
    /// Deferred for a recheck: another delivery holds its key's lease and decides.
    Rechecked,
    /// Held back: an earlier entry of its order key is unfinished.
    HeldBack,
    /// Follow-up events appended with their cause's commit.
    Emitted,
}

#[derive(Default)]
pub(super) struct Stats {
    processed: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    unhandled: AtomicU64,
    claimed: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
    held_back: AtomicU64,
    emitted: AtomicU64,
}

impl Stats {
    pub(super) fn snapshot(&self) -> ConsumerStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            processed: g(&self.processed),
            duplicates: g(&self.duplicates),
            retried: g(&self.retried),
            dead_lettered: g(&self.dead_lettered),
            unhandled: g(&self.unhandled),
            claimed: g(&self.claimed),
            panics: g(&self.panics),
            timeouts: g(&self.timeouts),
            held_back: g(&self.held_back),
            emitted: g(&self.emitted),
        }
    }

    /// Counts one entry (or handler call) that `what` happened to.
    pub(super) fn record(&self, what: Tally, labels: &Labels<'_>, pass: Option<&Pass>) {
        self.record_n(what, 1, labels, pass);
    }

    /// Counts `n` entries that `what` happened to.
    pub(super) fn record_n(&self, what: Tally, n: u64, labels: &Labels<'_>, pass: Option<&Pass>) {
        let (mine, of_pass, metric): (Option<&AtomicU64>, Option<PassCount>, Option<Count>) =
            match what {
                Tally::Processed => (
                    Some(&self.processed),
                    Some(|p| &p.processed),
                    Some(Count::Processed),
                ),
                Tally::Duplicate => (
                    Some(&self.duplicates),
                    Some(|p| &p.skipped),
                    Some(Count::Duplicate),
                ),
                Tally::Retried => (
                    Some(&self.retried),
                    Some(|p| &p.failed),
                    Some(Count::Retried),
                ),
                Tally::DeadLettered => (
                    Some(&self.dead_lettered),
                    Some(|p| &p.failed),
                    Some(Count::DeadLettered),
                ),
                Tally::Unhandled => (Some(&self.unhandled), Some(|p| &p.skipped), None),
                Tally::Claimed => (
                    Some(&self.claimed),
                    Some(|p| &p.claimed),
                    Some(Count::Claimed),
                ),
                Tally::Panicked => (Some(&self.panics), None, None),
                Tally::TimedOut => (Some(&self.timeouts), None, None),
                Tally::Failed => (None, None, Some(Count::Failed)),
                Tally::Rechecked => (None, Some(|p| &p.skipped), None),
                Tally::HeldBack => (Some(&self.held_back), None, Some(Count::HeldBack)),
                Tally::Emitted => (Some(&self.emitted), None, Some(Count::Emitted)),
            };
        if let Some(a) = mine {
            a.fetch_add(n, Ordering::Relaxed);
        }
        if let (Some(f), Some(p)) = (of_pass, pass) {
            f(p).fetch_add(n, Ordering::Relaxed);
        }
        if let Some(c) = metric {
            count(c, labels, n);
        }
    }
}

/// Which of a [`Pass`]'s counts an entry adds to.
type PassCount = fn(&Pass) -> &AtomicU64;

/// Counts of one recovery pass, and how many of its entries are still being handled.
#[derive(Default)]
pub(super) struct Pass {
    processed: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    claimed: AtomicU64,
    outstanding: AtomicUsize,
    done: Notify,
}

impl Pass {
    pub(super) fn result(&self) -> RecoveryResult {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RecoveryResult {
            processed: g(&self.processed),
            skipped: g(&self.skipped),
            failed: g(&self.failed),
            claimed: g(&self.claimed),
        }
    }

    pub(super) async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn begin(&self, n: usize) {
        self.outstanding.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn end(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_in_the_stats_and_the_pass_under_way() {
        let stats = Stats::default();
        let pass = Pass::default();
        let labels = Labels {
            group: "g",
            tenant: None,
            handler: "h",
        };
        stats.record(Tally::Processed, &labels, Some(&pass));
        stats.record(Tally::Duplicate, &labels, Some(&pass));
        stats.record(Tally::Retried, &labels, Some(&pass));
        stats.record(Tally::DeadLettered, &labels, None);
        stats.record_n(Tally::Unhandled, 2, &labels, Some(&pass));
        stats.record_n(Tally::Claimed, 3, &labels, Some(&pass));
        stats.record(Tally::Panicked, &labels, Some(&pass));
        stats.record(Tally::TimedOut, &labels, Some(&pass));
        stats.record(Tally::Failed, &labels, Some(&pass));
        stats.record(Tally::Rechecked, &labels, Some(&pass));
        stats.record(Tally::HeldBack, &labels, Some(&pass));
        stats.record_n(Tally::Emitted, 4, &labels, Some(&pass));
        assert_eq!(
            stats.snapshot(),
            ConsumerStats {
                processed: 1,
                duplicates: 1,
                retried: 1,
                dead_lettered: 1,
                unhandled: 2,
                claimed: 3,
                panics: 1,
                timeouts: 1,
                held_back: 1,
                emitted: 4,
            }
        );
        assert_eq!(
            pass.result(),
            RecoveryResult {
                processed: 1,
                skipped: 4,
                failed: 1,
                claimed: 3,
            }
        );
    }
}
