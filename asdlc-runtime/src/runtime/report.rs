//! What the runtime tells about itself: the handlers it plans to run ([`HandlerInfo`]) and what
//! a run did, per group ([`RuntimeReport`], [`GroupReport`]), added up over each group's
//! consumers.

use serde::Serialize;

use crate::consume::{ConsumerStats, EventConsumer};
use crate::{EventType, RecoveryResult};

/// One handler as the runtime plans to run it.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerInfo {
    /// Its name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// The event types it handles.
    pub types: Vec<EventType>,
    /// Where it was declared, for registered handlers.
    pub location: Option<String>,
}

/// What one group did in a run.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// The group.
    pub group: String,
    /// Its start-up recovery.
    pub recovery: Option<RecoveryResult>,
    /// Its counts.
    pub stats: ConsumerStats,
}

/// What a run did, per group.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeReport {
    /// One entry per group.
    pub groups: Vec<GroupReport>,
}

impl RuntimeReport {
    /// The counts of `group`.
    pub fn group(&self, group: &str) -> Option<&GroupReport> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// Events processed over all groups.
    pub fn processed(&self) -> u64 {
        self.groups.iter().map(|g| g.stats.processed).sum()
    }
}

fn add_stats(a: &mut ConsumerStats, b: ConsumerStats) {
    a.processed += b.processed;
    a.duplicates += b.duplicates;
    a.retried += b.retried;
    a.dead_lettered += b.dead_lettered;
    a.unhandled += b.unhandled;
    a.claimed += b.claimed;
    a.panics += b.panics;
    a.timeouts += b.timeouts;
    a.held_back += b.held_back;
    a.emitted += b.emitted;
}

/// One report per group, adding up the group's consumers (one per cluster slot of its
/// tenants).
pub(super) fn report_of(consumers: &[EventConsumer]) -> RuntimeReport {
    let mut groups: Vec<GroupReport> = Vec::new();
    for c in consumers {
        let i = match groups.iter().position(|g| g.group == c.group()) {
            Some(i) => i,
            None => {
                groups.push(GroupReport {
                    group: c.group().to_owned(),
                    recovery: None,
                    stats: ConsumerStats::default(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[i];
        if let Some(r) = c.last_recovery() {
            g.recovery
                .get_or_insert_with(RecoveryResult::default)
                .merge(r);
        }
        add_stats(&mut g.stats, c.stats());
    }
    RuntimeReport { groups }
}
