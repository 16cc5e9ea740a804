//! How the consume side tries a failed Redis step again: the pauses of the read loop, the
//! begin and commit steps, and the start-up steps that must survive a cut connection.

use std::time::Duration;

use super::shared::Shared;
use crate::error::ConsumeError;

pub(super) async fn backoff(shared: &Shared, failures: &mut u32) {
    *failures += 1;
    let delay = Duration::from_millis(50u64 << (*failures).min(6)).min(Duration::from_secs(3));
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shared.stop.cancelled() => {}
    }
}

/// Whether to pause before the retry after the `failures`-th failure in a row: not after the
/// first of a pair. A command that fails on a connection that was cut while idle is mostly
/// just the first one after the cut (the connection is re-made for the next), so an
/// immediate retry usually succeeds where one after a pause would meet the next cut.
pub(super) fn retry_pause(failures: u32) -> bool {
    failures.is_multiple_of(2)
}

/// Whether a start-up step that failed with `e` is worth trying again: a cut connection, a
/// timeout, a server loading or failing over, not a refusal (a name in use, a permission).
fn is_transient(e: &ConsumeError) -> bool {
    let ConsumeError::Redis { source, .. } = e else {
        return false;
    };
    source.kind() != redis::ErrorKind::AuthenticationFailed
        && !matches!(source.retry_method(), redis::RetryMethod::NoRetry)
}

/// Runs a start-up step until it succeeds, retrying transient Redis errors with a backoff (a
/// connection cut while a consumer starts must not end it), until the consumer is stopped.
pub(super) async fn at_startup<T, F, Fut>(
    shared: &Shared,
    what: &str,
    mut step: F,
) -> Result<T, ConsumeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ConsumeError>>,
{
    let mut failures = 0u32;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && !shared.stop.is_cancelled() => {
                tracing::warn!(group = %shared.group, error = %e, "{what} failed; retrying");
                if retry_pause(failures + 1) {
                    backoff(shared, &mut failures).await;
                } else {
                    failures += 1;
                }
            }
            Err(e) => return Err(e),
        }
    }
}
