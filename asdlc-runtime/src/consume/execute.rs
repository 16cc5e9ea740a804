//! The execute step: one handler attempt as its own task, within the concurrency limits, with
//! a timeout, catching panics, in the event's tenant and trace context; its result becomes an
//! [`Outcome`] for the commit step.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use super::handoff::{Candidate, failed_attempt, send};
use super::shared::{Kind, Outcome, RunCtx, Shared, StreamCtx, finish};
use super::stats::{Pass, Tally};
use crate::handler::HandlerContext;
use crate::handler::HandlerResult;
use crate::tenancy::{TenantContext, TenantId};

pub(super) async fn spawn_handler(
    shared: &Arc<Shared>,
    run: &Arc<RunCtx>,
    stream: &Arc<StreamCtx>,
    c: Candidate,
    attempt: u32,
    pass: Option<Arc<Pass>>,
) {
    // A free slot is taken without waiting (and without registering with the abort token).
    let permit = match shared.permits.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => tokio::select! {
            p = shared.permits.clone().acquire_owned() => p.ok(),
            _ = run.abort.cancelled() => None,
        },
    };
    let Some(permit) = permit else {
        shared.untrack(&stream.name, &c.entry_id);
        finish(shared, pass.as_deref());
        return;
    };
    let shared = shared.clone();
    let run2 = run.clone();
    let stream = stream.clone();
    let spec = shared.handlers[c.handler].clone();
    // At debug level: a span per event costs little when debug is off, and a consumer at info
    // level should not pay for one per event.
    let span = tracing::debug_span!(
        "asdlc.handle",
        event_id = %c.entry_id,
        event_type = %c.event.event_type,
        group = %shared.group,
        tenant = stream.tenant.as_ref().map(TenantId::as_str).unwrap_or(""),
        attempt,
        handler = spec.name(),
        trace_id = tracing::field::Empty,
    );
    // A publish and its handling join one trace; events the handler publishes continue it.
    let trace = crate::monitor::extract_trace_context(&c.event).map(|t| t.child());
    if let Some(t) = &trace {
        span.record("trace_id", t.trace_id_hex());
    }
    run.tasks.spawn(
        async move {
            let _permit = permit;
            let _limit = match &shared.handler_limits[c.handler] {
                Some(sem) => sem.clone().acquire_owned().await.ok(),
                None => None,
            };
            // A gate's late answer is acknowledged without reaching the handler.
            let mut c = c;
            let early = match crate::gate::on_delivery(
                &shared.conn,
                &stream.keys,
                &c.event,
                &c.entry_id,
                shared.config.max_len,
            )
            .await
            {
                Ok(crate::gate::Delivery::Proceed) => None,
                Ok(crate::gate::Delivery::Late { outcome, by }) => {
                    tracing::warn!(
                        id = %c.entry_id,
                        event_type = %c.event.event_type,
                        lost_to = %outcome,
                        decided_by = %by,
                        "late gate answer: the gate was decided already; acknowledged without handling"
                    );
                    Some(Kind::Success {
                        fp: c.fp,
                        floor: c.floor,
                        effects: Vec::new(),
                        attempt,
                        fields: std::mem::take(&mut c.fields),
                    })
                }
                Err(e) => Some(failed_attempt(
                    &shared,
                    c.handler,
                    attempt,
                    std::mem::take(&mut c.fields),
                    format!("checking the gate failed: {e}"),
                    None,
                )),
            };
            if let Some(kind) = early {
                let out = outcome_of(&stream, c.entry_id, c.fp, c.handler, kind, pass);
                send(&shared, &run2, out).await;
                return;
            }
            let ctx = HandlerContext::new(
                stream.tenant.clone(),
                attempt,
                c.entry_id.clone(),
                stream.keys.clone(),
                shared.group.clone(),
                run2.consumer.clone(),
            )
            .with_cause(
                c.event.idempotency_key.as_deref(),
                trace,
                shared.config.max_len,
            )
            .with_state_map(shared.state.clone());
            let mut event = c.event;
            event.event_id = Some(c.entry_id.clone());
            let timeout = spec
                .options
                .timeout
                .unwrap_or(shared.options.handler_timeout);
            let call = AssertUnwindSafe(spec.handler.handle(&event, &ctx)).catch_unwind();
            let call = tokio::time::timeout(timeout, call);
            let labels = shared.labels(&stream, Some(c.handler));
            crate::monitor::record_publish_to_handle(&labels, &c.entry_id);
            let started = std::time::Instant::now();
            let scoped = async {
                match stream.tenant.clone() {
                    Some(t) => TenantContext::scope(t, call).await,
                    None => call.await,
                }
            };
            // The handler first: one that finishes at once never registers with the abort
            // token (a lock each way). An abort that came before the start is seen here.
            let outcome = if run2.abort.is_cancelled() {
                None
            } else {
                tokio::select! {
                    biased;
                    r = async {
                        match trace {
                            Some(t) => t.scope(scoped).await,
                            None => scoped.await,
                        }
                    } => Some(r),
                    _ = run2.abort.cancelled() => None,
                }
            };
            let Some(outcome) = outcome else {
                // Aborted at shutdown: the entry stays pending, handled again on restart.
                shared.untrack(&stream.name, &c.entry_id);
                finish(&shared, pass.as_deref());
                return;
            };
            let result = match outcome {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => {
                    shared.stats.record(Tally::Panicked, &labels, None);
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".to_owned());
                    tracing::error!(panic = %msg, "handler panicked");
                    HandlerResult::retry(format!("handler panicked: {msg}"))
                }
                Err(_) => {
                    shared.stats.record(Tally::TimedOut, &labels, None);
                    tracing::warn!(?timeout, "handler timed out");
                    HandlerResult::retry(format!("timed out after {timeout:?}"))
                }
            };
            crate::monitor::record_handler_latency(&labels, started.elapsed());
            if !result.is_ok() {
                shared.stats.record(Tally::Failed, &labels, None);
            }
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                success = result.is_ok(),
                "handled"
            );
            let kind = match result {
                HandlerResult::Ok { .. } => Kind::Success {
                    fp: c.fp,
                    floor: c.floor,
                    effects: {
                        // Effects first, then the follow-ups: all applied in one atomic step.
                        let mut effects = ctx.take_effects();
                        effects.extend(ctx.take_emits());
                        effects
                    },
                    attempt,
                    fields: c.fields,
                },
                HandlerResult::Retry { message, after } => {
                    failed_attempt(&shared, c.handler, attempt, c.fields, message, after)
                }
                HandlerResult::Permanent { message } => Kind::Dead {
                    fields: c.fields,
                    reason: "permanent failure".to_owned(),
                    error: message,
                    attempts: attempt,
                    handler: spec.name().to_owned(),
                },
            };
            let out = outcome_of(&stream, c.entry_id, c.fp, c.handler, kind, pass);
            send(&shared, &run2, out).await;
        }
        .instrument(span),
    );
}

/// What an attempt of `handler` on entry `id` (leased under `fp`) came to, for the committer.
fn outcome_of(
    stream: &Arc<StreamCtx>,
    id: String,
    fp: [u8; crate::idempotency::FINGERPRINT_LEN],
    handler: usize,
    kind: Kind,
    pass: Option<Arc<Pass>>,
) -> Outcome {
    Outcome {
        stream: stream.clone(),
        id,
        lease: Some(fp),
        kind,
        pass,
        handler: Some(handler),
    }
}
