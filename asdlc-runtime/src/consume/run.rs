//! Orchestration of one run: take the name, recover, start the background loops and the
//! committer, read until stopped, then shut down gracefully; and the short-lived run a direct
//! recovery call uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;

use super::commit::committer;
use super::promote::promote_loop;
use super::read::read_loop;
use super::recover::{claim_loop, claim_stream, recover_own};
use super::retry::at_startup;
use super::shared::{Readiness, RunCtx, Shared, lock, new_run};
use super::stats::{Pass, RecoveryResult};
use super::upkeep::{keepalive_loop, lock_loop, redeliver_loop, release, take_name};
use crate::error::ConsumeError;

pub(super) async fn run(shared: Arc<Shared>) -> Result<super::ConsumerStats, ConsumeError> {
    if shared.running.swap(true, Ordering::AcqRel) {
        return Err(ConsumeError::AlreadyRunning {
            group: shared.group.to_string(),
            consumer: shared.consumer().to_string(),
        });
    }
    if matches!(*shared.ready.borrow(), Readiness::Ended(_)) {
        return Err(ConsumeError::Finished {
            group: shared.group.to_string(),
            consumer: shared.consumer().to_string(),
        });
    }
    let _running = RunningGuard(&shared);
    let result = run_inner(&shared).await;
    shared.ready.send_replace(Readiness::Ended(match &result {
        Ok(_) | Err(ConsumeError::Finished { .. }) => None,
        Err(e) => Some(e.to_string()),
    }));
    result
}

async fn run_inner(shared: &Arc<Shared>) -> Result<super::ConsumerStats, ConsumeError> {
    let stopped = || ConsumeError::Finished {
        group: shared.group.to_string(),
        consumer: shared.consumer().to_string(),
    };
    if shared.stop.is_cancelled() {
        return Err(stopped());
    }
    at_startup(shared, "creating the consumer group", || shared.prepare()).await?;
    let token = new_token();
    let (name, locks) = tokio::select! {
        r = take_name(shared, &token) => r?,
        _ = shared.stop.cancelled() => return Err(stopped()),
    };
    *shared.consumer.write().unwrap_or_else(|p| p.into_inner()) = name.clone();
    let predecessors = locks
        .iter()
        .filter_map(|l| Some((Arc::from(l.stream()), l.predecessor()?.to_owned())))
        .collect();
    let (run, rx) = new_run(name, Arc::from(token.as_str()), predecessors);
    *shared.locks.lock().await = locks;
    // Dropping this future (a crash, in tests) aborts the handlers: their entries stay pending.
    let _abort_on_drop = run.abort.clone().drop_guard();
    *lock(&shared.run) = Some(run.clone());
    let mut background = JoinSet::new();
    let committer_task = tokio::spawn(committer(shared.clone(), run.clone(), rx));
    let committer_abort = committer_task.abort_handle();
    let _committer_guard = AbortOnDrop(Some(committer_abort));
    background.spawn(keepalive_loop(shared.clone(), run.clone()));
    let lock_task = tokio::spawn(lock_loop(shared.clone()));
    let _lock_guard = AbortOnDrop(Some(lock_task.abort_handle()));
    background.spawn(redeliver_loop(shared.clone(), run.clone()));
    background.spawn(promote_loop(shared.clone()));

    let started = std::time::Instant::now();
    let mut recovery = RecoveryResult::default();
    let pass = Arc::new(Pass::default());
    for s in shared.stream_list() {
        // Entries already dispatched by a failed attempt are in flight and skipped.
        at_startup(shared, "recovering pending entries", || {
            recover_own(shared, &run, &s, &pass)
        })
        .await?;
    }
    pass.wait().await;
    recovery.merge(pass.result());
    let pass = Arc::new(Pass::default());
    for s in shared.stream_list() {
        at_startup(shared, "claiming stale entries", || {
            claim_stream(shared, &run, &s, shared.options.claim_idle, &pass)
        })
        .await?;
    }
    pass.wait().await;
    recovery.merge(pass.result());
    tracing::info!(
        group = %shared.group,
        consumer = %run.consumer,
        streams = shared.stream_list().len(),
        processed = recovery.processed,
        skipped = recovery.skipped,
        failed = recovery.failed,
        claimed = recovery.claimed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery finished; consuming"
    );
    *lock(&shared.last_recovery) = Some(recovery);
    shared.ready.send_replace(Readiness::Ready);
    background.spawn(claim_loop(shared.clone(), run.clone()));

    let lost = tokio::select! {
        _ = read_loop(shared, &run) => None,
        e = lock_task => e.ok(),
    };
    if let Some(e) = &lost {
        tracing::error!(error = %e, "stopping: the consumer name was taken over");
        shared.stop.cancel();
    }

    // Graceful stop: no more reads; let running handlers finish, then commit them.
    let grace = shared.options.shutdown_grace;
    if tokio::time::timeout(grace, shared.active.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "handlers still running after the grace period; leaving their entries pending"
        );
        run.abort.cancel();
    }
    run.tasks.close();
    run.tasks.wait().await;
    background.shutdown().await;
    *lock(&shared.run) = None;
    lock(&run.commit_tx).take();
    let _ = committer_task.await;
    {
        let locks = std::mem::take(&mut *shared.locks.lock().await);
        release(&shared.conn, &locks).await;
    }
    tracing::info!(group = %shared.group, consumer = %run.consumer, stats = ?shared.stats.snapshot(), "consumer stopped");
    match lost {
        Some(e) => Err(e),
        None => Ok(shared.stats.snapshot()),
    }
}

struct AbortOnDrop(Option<tokio::task::AbortHandle>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

struct RunningGuard<'a>(&'a Shared);
impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
        *lock(&self.0.run) = None;
        self.0.ledger.clear();
        self.0.order.clear();
        self.0.ready.send_if_modified(|r| {
            if matches!(r, Readiness::Ended(_)) {
                return false;
            }
            *r = Readiness::Ended(None);
            true
        });
    }
}

/// Processes this consumer's own pending entries once, in a run of its own if the
/// consumer is not running.
pub(super) async fn process_pending(shared: &Arc<Shared>) -> Result<RecoveryResult, ConsumeError> {
    with_run(shared, |run| async move {
        let pass = Arc::new(Pass::default());
        for stream in shared.stream_list() {
            recover_own(shared, &run, &stream, &pass).await?;
        }
        pass.wait().await;
        Ok(pass.result())
    })
    .await
}

/// Claims and processes entries idle at least `min_idle`, in a run of its own if the consumer
/// is not running.
pub(super) async fn claim_stale(
    shared: &Arc<Shared>,
    min_idle: Duration,
) -> Result<RecoveryResult, ConsumeError> {
    with_run(shared, |run| async move {
        let pass = Arc::new(Pass::default());
        for stream in shared.stream_list() {
            claim_stream(shared, &run, &stream, min_idle, &pass).await?;
        }
        pass.wait().await;
        Ok(pass.result())
    })
    .await
}

/// A run for a direct recovery call, if the consumer is not running: its committer lives
/// until the returned guard's work is done.
pub(super) async fn with_run<F, Fut, T>(shared: &Arc<Shared>, f: F) -> Result<T, ConsumeError>
where
    F: FnOnce(Arc<RunCtx>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ConsumeError>>,
{
    if let Some(run) = shared.current_run() {
        return f(run).await;
    }
    let token = Arc::from(new_token().as_str());
    let (run, rx) = new_run(shared.consumer(), token, HashMap::new());
    let committer = tokio::spawn(committer(shared.clone(), run.clone(), rx));
    let result = f(run.clone()).await;
    run.tasks.close();
    run.tasks.wait().await;
    lock(&run.commit_tx).take();
    let _ = committer.await;
    result
}

/// A random token naming one run of a process.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}
