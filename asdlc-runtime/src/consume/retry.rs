//! How the consume side tries a failed Redis step again: the policies of the read loop, the
//! begin and commit steps, and the start-up steps that must survive a cut connection.

use std::time::Duration;

use super::shared::Shared;
use crate::error::ConsumeError;
use crate::retry::{Policy, retry};

/// After a failed read (or re-read, or group re-creation): 100 ms, doubling up to 3 s.
pub(super) const READ: Policy =
    Policy::exponential(Duration::from_millis(100)).cap(Duration::from_secs(3));

/// A start-up step: as a read, but the first failure of each pair is retried at once.
const STARTUP: Policy = READ.in_pairs();

/// The begin step: 200 ms after every second failure in a row, until the run stops.
pub(super) const BEGIN: Policy = Policy::constant(Duration::from_millis(200)).in_pairs();

/// The commit step: 50 ms more after every second failure, up to 2 s; given up after 100
/// retries (the entries stay pending and are read again). Committing again is safe: a call
/// tried again checks the mark of every record, and one whose mark is set (by the failed call,
/// which may have applied part of its records before failing) is acknowledged without
/// applying its effects a second time.
pub(super) const COMMIT: Policy = Policy::linear(Duration::from_millis(50))
    .cap(Duration::from_secs(2))
    .in_pairs()
    .max_retries(100);

/// Whether a start-up step that failed with `e` is worth trying again: a cut connection, a
/// timeout, a server loading or failing over, not a refusal (a name in use, a permission).
fn is_transient(e: &ConsumeError) -> bool {
    let ConsumeError::Redis { source, .. } = e else {
        return false;
    };
    source.kind() != redis::ErrorKind::AuthenticationFailed
        && !matches!(source.retry_method(), redis::RetryMethod::NoRetry)
}

/// Runs a start-up step until it succeeds, retrying transient Redis errors (a connection
/// cut while a consumer starts must not end it), until the consumer is stopped.
pub(super) async fn at_startup<T, F, Fut>(
    shared: &Shared,
    what: &str,
    step: F,
) -> Result<T, ConsumeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ConsumeError>>,
{
    retry(
        STARTUP,
        &shared.stop,
        is_transient,
        |e| tracing::warn!(group = %shared.group, error = %e, "{what} failed; retrying"),
        step,
    )
    .await
}
