//! What the consume side counts: the public [`ConsumerStats`] and [`RecoveryResult`], and the
//! atomic counters behind them. Every step bumps these, so they sit below all of them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

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

#[derive(Default)]
pub(super) struct Stats {
    pub(super) processed: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) unhandled: AtomicU64,
    pub(super) claimed: AtomicU64,
    pub(super) panics: AtomicU64,
    pub(super) timeouts: AtomicU64,
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
        }
    }
}

pub(super) fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Counts of one recovery pass, and how many of its entries are still being handled.
#[derive(Default)]
pub(super) struct Pass {
    pub(super) processed: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) claimed: AtomicU64,
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
