//! Follow-up events: a handler stages them with [`HandlerContext::emit`], and the commit step
//! appends them to their stream in the same atomic step as the cause's processed mark, its
//! staged effects and its acknowledgement.
//!
//! So a chain of handlers (a task designed, then dispatched, then a patch created...) publishes
//! each link exactly once: a crash before the commit emits nothing (the redelivered cause runs
//! again and stages its follow-ups anew), a redelivery of a committed cause is skipped as a
//! duplicate and emits nothing, a retry or a refused commit emits nothing.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::HandlerContext;
use crate::effects::Effect;
use crate::error::EmitError;
use crate::event::{AsdlcEvent, BornKey};
use crate::keys::get_stream_name;
use crate::monitor::{TraceParent, extract_trace_context};

/// One follow-up, as the commit step will write it.
#[derive(Debug, Clone)]
pub(super) struct StagedEmit {
    pub(super) stream: String,
    pub(super) event: AsdlcEvent,
    fields: Vec<(&'static str, Vec<u8>)>,
    /// How long after the commit it is due (ms), for a follow-up scheduled for later.
    delay_ms: Option<i64>,
}

impl HandlerContext {
    /// Stages `event` to be appended to this event's stream when this event commits: in the
    /// same atomic step as its processed mark, its effects and its acknowledgement, so it is
    /// published exactly once, or (if the handler fails or the process dies first) not at all.
    ///
    /// The event is checked now (the error names the field). It takes this event's tenant, a
    /// child of its trace context (so a chain of follow-ups is one trace), and an idempotency
    /// key derived from this event's key and the follow-up's position among its emits (the
    /// same on every delivery of this event) in place of:
    ///
    /// - the fresh key it was born with ([`AsdlcEvent::new`], [`AsdlcEvent::builder`]),
    ///   still unchanged;
    /// - no key (`idempotency_key: None`);
    /// - this event's own key (a copy of this event, say), which would make the follow-up
    ///   a duplicate of its cause for every group that handles both.
    ///
    /// Any other key the application set is kept, whatever it looks like: one given to
    /// [`crate::AsdlcEventBuilder::idempotency_key`] or
    /// [`crate::AsdlcEventBuilder::operation_key`], or assigned to the `idempotency_key` field
    /// (a key taken from a decoded or deserialized event included).
    ///
    /// ```
    /// use asdlc_runtime::{AsdlcEvent, EventType, HandlerContext};
    ///
    /// let ctx = HandlerContext::detached();
    /// let next = AsdlcEvent::builder(EventType::TaskDispatched, "s1").task_id("t1").build()?;
    /// ctx.emit(next)?;
    /// assert_eq!(ctx.emitted().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn emit(&self, event: AsdlcEvent) -> Result<(), EmitError> {
        self.emit_all([event])
    }

    /// Stages several follow-ups, all or none: if one is refused, none is staged.
    pub fn emit_all<I>(&self, events: I) -> Result<(), EmitError>
    where
        I: IntoIterator<Item = AsdlcEvent>,
    {
        let stream = self.keys.stream().to_owned();
        self.stage_emits(events.into_iter().map(|e| (stream.clone(), e)))
    }

    /// Stages a follow-up for the stream of another base (its tenant's stream, in multi-tenant
    /// mode). The stream must be in this event's cluster slot, or the commit could not write
    /// it in the same atomic step: this is checked on every deployment, a single server
    /// included, so what works on one server works on a cluster. A tenant's streams always
    /// share a slot; other bases share one when they carry the same hash tag (`{app}:tasks`
    /// and `{app}:gates`).
    pub fn emit_to(&self, base: &str, event: AsdlcEvent) -> Result<(), EmitError> {
        let stream = get_stream_name(base, self.tenant.as_ref());
        self.stage_emits([(stream, event)])
    }

    /// Stages `event` like [`HandlerContext::emit`], to be appended `delay` after this
    /// event's commit instead of with it: the commit schedules it (in the same atomic step as
    /// the processed mark and the acknowledgement), and the promoter every consumer of the
    /// stream runs appends it when due (see [`crate::schedule`]). A retry, a refused commit or
    /// a redelivery of a committed cause schedules nothing.
    pub fn emit_after(&self, event: AsdlcEvent, delay: Duration) -> Result<(), EmitError> {
        let stream = self.keys.stream().to_owned();
        let mut emits = self.emits.lock().unwrap_or_else(|p| p.into_inner());
        let mut staged = self.prepare(stream, event, emits.len())?;
        // Counted from the commit, by the server's clock.
        staged.delay_ms = Some(delay.as_millis().min(i64::MAX as u128 / 2) as i64);
        emits.push(staged);
        Ok(())
    }

    /// The follow-ups staged so far, as they will be written (tenant, key and trace context
    /// filled in).
    pub fn emitted(&self) -> Vec<AsdlcEvent> {
        self.emits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| e.event.clone())
            .collect()
    }

    fn stage_emits(
        &self,
        events: impl IntoIterator<Item = (String, AsdlcEvent)>,
    ) -> Result<(), EmitError> {
        let mut emits = self.emits.lock().unwrap_or_else(|p| p.into_inner());
        let mut staged = Vec::new();
        for (stream, event) in events {
            let position = emits.len() + staged.len();
            staged.push(self.prepare(stream, event, position)?);
        }
        emits.extend(staged);
        Ok(())
    }

    fn prepare(
        &self,
        stream: String,
        mut event: AsdlcEvent,
        position: usize,
    ) -> Result<StagedEmit, EmitError> {
        if !self.keys.same_slot(stream.as_bytes()) {
            return Err(EmitError::CrossSlot {
                stream,
                cause_stream: self.keys.stream().to_owned(),
            });
        }
        match (&event.tenant_id, &self.tenant) {
            (Some(theirs), mine) if Some(theirs) != mine.as_ref() => {
                return Err(EmitError::OtherTenant {
                    event_tenant: theirs.to_string(),
                    tenant: mine.as_ref().map(ToString::to_string),
                });
            }
            _ => event.tenant_id = self.tenant.clone(),
        }
        let derive = event
            .idempotency_key
            .as_deref()
            .is_none_or(|k| event.born_key.is(k) || k == self.cause_key);
        if derive {
            event.idempotency_key = Some(derived_key(&self.cause_key, &self.group, position));
            event.born_key = BornKey::default();
        }
        if extract_trace_context(&event).is_none() {
            self.trace
                .get_or_init(TraceParent::new_root)
                .child()
                .insert_into(&mut event);
        }
        event.event_id = None;
        event.validate().map_err(EmitError::Invalid)?;
        let fields = crate::encoding::encode(&event).fields().to_vec();
        Ok(StagedEmit {
            stream,
            event,
            fields,
            delay_ms: None,
        })
    }

    /// The staged follow-ups as the commit step's XADDs, in the order they were staged.
    pub(crate) fn take_emits(&self) -> Vec<Effect> {
        let emits = std::mem::take(&mut *self.emits.lock().unwrap_or_else(|p| p.into_inner()));
        emits
            .into_iter()
            .map(|e| match e.delay_ms {
                None => Effect::xadd(e.stream, self.max_len, e.fields),
                Some(delay) => Effect::schedule(
                    &crate::keys::StreamKeys::new(&e.stream),
                    e.event.idempotency_key.clone().unwrap_or_default(),
                    delay,
                    crate::schedule::pack(&e.fields),
                ),
            })
            .collect()
    }
}

/// The key of the follow-up at `position` that `group` emits for the cause whose key is
/// `cause`: the same on every delivery of the cause, different for each follow-up and for each
/// group that handles the cause (two groups' follow-ups are two events).
fn derived_key(cause: &str, group: &str, position: usize) -> String {
    let digest = Sha256::new()
        .chain_update(cause.as_bytes())
        .chain_update(b"\x00")
        .chain_update(group.as_bytes())
        .chain_update(b"\x00emit\x00")
        .chain_update(position.to_string().as_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("emit-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::tenancy::TenantId;

    fn next(session: &str) -> AsdlcEvent {
        AsdlcEvent::builder(EventType::TaskDispatched, session)
            .build()
            .unwrap()
    }

    #[test]
    fn a_follow_up_takes_a_key_derived_from_its_cause_and_position() {
        let ctx = HandlerContext::detached();
        ctx.emit_all([next("s1"), next("s1")]).unwrap();
        let keys: Vec<_> = ctx
            .emitted()
            .into_iter()
            .map(|e| e.idempotency_key.unwrap())
            .collect();
        assert_eq!(keys[0], derived_key(&ctx.cause_key, ctx.group(), 0));
        assert_eq!(keys[1], derived_key(&ctx.cause_key, ctx.group(), 1));
        assert_ne!(keys[0], derived_key(&ctx.cause_key, "another-group", 0));
        assert_ne!(keys[0], keys[1]);
        // The same cause emits the same keys again on its next delivery.
        let again = HandlerContext::detached();
        again.emit(next("s1")).unwrap();
        assert_eq!(again.emitted()[0].idempotency_key, Some(keys[0].clone()));
    }

    #[test]
    fn a_key_the_application_set_is_kept() {
        let ctx = HandlerContext::detached();
        let e = AsdlcEvent::builder(EventType::PatchApplied, "s1")
            .git_sha("4f2a9c1")
            .operation_key()
            .build()
            .unwrap();
        let key = e.idempotency_key.clone();
        ctx.emit(e).unwrap();
        assert_eq!(ctx.emitted()[0].idempotency_key, key);
    }

    #[test]
    fn a_key_the_application_set_is_kept_whatever_it_looks_like() {
        let ctx = HandlerContext::detached();
        let given = AsdlcEvent::builder(EventType::TaskDispatched, "s1")
            .idempotency_key("evt-set-by-the-application")
            .build()
            .unwrap();
        let mut assigned = next("s1");
        assigned.idempotency_key = Some("evt-0190b0b0-0000-7000-8000-000000000000".into());
        // Another event's fresh key, taken on purpose: set by the application for this one.
        let mut taken = next("s1");
        taken.idempotency_key = next("s1").idempotency_key;
        let decoded =
            crate::encoding::decode(crate::encoding::encode(&next("s1")).fields()).unwrap();
        let kept = [given, assigned, taken, decoded];
        let keys: Vec<_> = kept.iter().map(|e| e.idempotency_key.clone()).collect();
        ctx.emit_all(kept).unwrap();
        let emitted: Vec<_> = ctx
            .emitted()
            .into_iter()
            .map(|e| e.idempotency_key)
            .collect();
        assert_eq!(emitted, keys);
    }

    #[test]
    fn the_key_an_event_was_born_with_none_or_the_causes_own_is_replaced() {
        let ctx = HandlerContext::detached().with_cause(Some("evt-the-cause"), None, None);
        let built = next("s1");
        let copy = built.clone();
        let mut keyless = next("s1");
        keyless.idempotency_key = None;
        let mut of_the_cause = next("s1");
        of_the_cause.idempotency_key = Some("evt-the-cause".into());
        ctx.emit_all([built, copy, keyless, of_the_cause]).unwrap();
        let keys: Vec<_> = ctx
            .emitted()
            .into_iter()
            .map(|e| e.idempotency_key.unwrap())
            .collect();
        let derived: Vec<_> = (0..4)
            .map(|at| derived_key("evt-the-cause", ctx.group(), at))
            .collect();
        assert_eq!(keys, derived);
    }

    #[test]
    fn an_invalid_follow_up_names_its_field_and_stages_nothing() {
        let ctx = HandlerContext::detached();
        let mut bad = next("s1");
        bad.git_sha = Some("not-a-sha".into());
        let err = ctx.emit_all([next("s1"), bad]).unwrap_err();
        match &err {
            EmitError::Invalid(v) => assert_eq!(v.field, "git_sha"),
            other => panic!("{other:?}"),
        }
        assert!(ctx.emitted().is_empty(), "all or none");
    }

    #[test]
    fn a_follow_up_takes_the_tenant_and_refuses_another() {
        let acme = TenantId::new("acme").unwrap();
        let ctx = HandlerContext::detached_for(acme.clone());
        ctx.emit(next("s1")).unwrap();
        assert_eq!(ctx.emitted()[0].tenant_id, Some(acme));
        let mut other = next("s1");
        other.tenant_id = Some(TenantId::new("globex").unwrap());
        let err = ctx.emit(other).unwrap_err();
        assert!(matches!(err, EmitError::OtherTenant { .. }), "{err}");
    }

    #[test]
    fn a_stream_outside_the_slot_is_refused_and_a_tenants_other_base_is_not() {
        let ctx = HandlerContext::detached();
        let err = ctx.emit_to("elsewhere", next("s1")).unwrap_err();
        assert!(matches!(err, EmitError::CrossSlot { .. }), "{err}");
        assert!(err.to_string().contains("hash tag"), "{err}");
        let tenant = HandlerContext::detached_for(TenantId::new("acme").unwrap());
        tenant.emit_to("gates", next("s1")).unwrap();
    }

    #[test]
    fn follow_ups_of_one_cause_share_its_trace() {
        let ctx = HandlerContext::detached();
        ctx.emit_all([next("s1"), next("s1")]).unwrap();
        let traces: Vec<_> = ctx
            .emitted()
            .iter()
            .map(|e| extract_trace_context(e).unwrap())
            .collect();
        assert_eq!(traces[0].trace_id_hex(), traces[1].trace_id_hex());
        assert_ne!(traces[0].parent_id_hex(), traces[1].parent_id_hex());
    }
}
