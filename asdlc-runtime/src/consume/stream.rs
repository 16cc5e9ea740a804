//! One stream a consumer reads and the keys derived from it: below every step, the ordering
//! book included, so none of them imports the consumer's shared state for it.

use std::sync::Arc;

use crate::idempotency::{GroupMarks, MarkLayout};
use crate::keys::StreamKeys;
use crate::tenancy::TenantId;

/// One stream a consumer reads, with its derived keys.
pub(super) struct StreamCtx {
    pub(super) keys: Arc<StreamKeys>,
    pub(super) name: Arc<str>,
    pub(super) tenant: Option<TenantId>,
    /// The group's processed marks on this stream, and the layout they use.
    pub(super) marks: Arc<GroupMarks>,
    /// The hash of the group's in-flight leases on this stream.
    pub(super) lease_key: String,
    /// The hash of the group's per-key ordering on this stream (used if a handler is ordered).
    pub(super) order_hash: String,
    pub(super) dead_letter: String,
}

impl StreamCtx {
    pub(super) fn new(
        stream: String,
        tenant: Option<TenantId>,
        group: &str,
        marks: MarkLayout,
    ) -> Self {
        let keys = StreamKeys::new(stream);
        StreamCtx {
            name: Arc::from(keys.stream()),
            marks: GroupMarks::new(keys.marks_prefix(group), marks),
            lease_key: keys.lease_prefix(group).trim_end_matches(':').to_owned(),
            order_hash: keys.order_hash(group),
            dead_letter: keys.dead_letter(),
            keys: Arc::new(keys),
            tenant,
        }
    }
}
