//! W3C trace context (`traceparent`) carried in an event's metadata, so a publish and its
//! handling join one trace.
//!
//! A publisher calls [`inject_trace_context`] before publishing; the consumer reads it back
//! with [`extract_trace_context`] and runs the handler inside [`TraceParent::scope`] with a
//! child of it, so events the handler publishes (and injects) continue the same trace. Bridges
//! to OpenTelemetry or another tracer set the value they hold with
//! [`TraceParent::insert_into`].

use std::fmt;
use std::str::FromStr;

use crate::error::ValidationError;
use crate::event::AsdlcEvent;

/// The metadata key the trace context lives under.
pub const TRACEPARENT_KEY: &str = "traceparent";

/// The flag bit that says the trace is sampled.
const SAMPLED: u8 = 0x01;

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// A W3C `traceparent`: `version-traceid-parentid-flags`, e.g.
/// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The format version (`00` today; never `ff`).
    pub version: u8,
    /// The trace, shared by every span in it; never all zeros.
    pub trace_id: [u8; 16],
    /// The span that caused this one; never all zeros.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// A new trace (random ids), sampled.
    pub fn new_root() -> Self {
        TraceParent {
            version: 0,
            trace_id: nonzero(),
            parent_id: nonzero(),
            flags: SAMPLED,
        }
    }

    /// The context for work caused by this one: the same trace and flags, a new span id.
    pub fn child(&self) -> Self {
        TraceParent {
            version: 0,
            parent_id: nonzero(),
            ..*self
        }
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent span id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        hex(&self.parent_id)
    }

    /// Parses a `traceparent` value by the W3C rules: lowercase hex only, version `ff`
    /// invalid, all-zero trace or parent ids invalid, exactly 55 characters for version `00`,
    /// and for later versions 55 characters possibly followed by `-` and more (ignored).
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| ValidationError::new("traceparent", why.to_owned());
        let v = value.trim();
        if v.len() < 55 || !v.is_ascii() {
            return Err(bad(
                "must be `version-traceid-parentid-flags` (55 characters)",
            ));
        }
        let version =
            hex_byte(&v[0..2]).ok_or_else(|| bad("the version is not 2 lowercase hex digits"))?;
        if version == 0xff {
            return Err(bad("version ff is invalid"));
        }
        if version == 0 && v.len() != 55 {
            return Err(bad("a version 00 value is exactly 55 characters"));
        }
        if v.len() > 55 && v.as_bytes()[55] != b'-' {
            return Err(bad("fields after the flags must follow a `-`"));
        }
        let b = v.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(bad("fields must be separated by `-`"));
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&v[3 + 2 * i..5 + 2 * i])
                .ok_or_else(|| bad("the trace id is not 32 lowercase hex digits"))?;
        }
        let mut parent_id = [0u8; 8];
        for (i, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&v[36 + 2 * i..38 + 2 * i])
                .ok_or_else(|| bad("the parent id is not 16 lowercase hex digits"))?;
        }
        let flags =
            hex_byte(&v[53..55]).ok_or_else(|| bad("the flags are not 2 lowercase hex digits"))?;
        if trace_id == [0; 16] {
            return Err(bad("the trace id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(bad("the parent id is all zeros"));
        }
        Ok(TraceParent {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace context of the running task, if it runs inside [`TraceParent::scope`].
    pub fn current() -> Option<TraceParent> {
        CURRENT.try_with(|t| *t).ok()
    }

    /// Runs `f` with `self` as the current trace context.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// Sets `metadata["traceparent"]` of `event` to this value.
    pub fn insert_into(&self, event: &mut AsdlcEvent) {
        event
            .metadata
            .insert(TRACEPARENT_KEY.to_owned(), self.to_string().into());
    }
}

impl fmt::Display for TraceParent {
    /// Always written as version `00`, the only layout this crate knows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.parent_id_hex(),
            self.flags
        )
    }
}

impl FromStr for TraceParent {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s)
    }
}

/// Gives `event` a trace context, unless it already carries a valid one: a child of the
/// current one ([`TraceParent::scope`], e.g. inside a handler) or else a new trace. Returns
/// the context the event carries.
pub fn inject_trace_context(event: &mut AsdlcEvent) -> TraceParent {
    if let Some(existing) = extract_trace_context(event) {
        return existing;
    }
    let tp = TraceParent::current()
        .map(|c| c.child())
        .unwrap_or_else(TraceParent::new_root);
    tp.insert_into(event);
    tp
}

/// The trace context `event` carries in `metadata["traceparent"]`, if it is there and valid
/// (an invalid one is ignored, as the W3C spec asks, and logged at debug level).
pub fn extract_trace_context(event: &AsdlcEvent) -> Option<TraceParent> {
    let value = event.metadata.get(TRACEPARENT_KEY)?.as_str()?;
    match TraceParent::parse(value) {
        Ok(tp) => Some(tp),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring an invalid traceparent");
            None
        }
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_byte(s: &str) -> Option<u8> {
    if s.len() != 2
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_back_the_spec_example() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.version, 0);
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), VALID);
        let unsampled: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
            .parse()
            .unwrap();
        assert!(!unsampled.sampled());
        assert_eq!(TraceParent::parse(&format!("  {VALID} ")).unwrap(), tp);
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let tp = TraceParent::parse(v).unwrap();
        assert_eq!(tp.version, 0xcc);
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceParent::parse(&v[..55]).is_ok());
    }

    #[test]
    fn rejects_invalid_values_with_the_reason() {
        let cases = [
            ("", "55 characters"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "55 characters",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace id",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                "flags",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "exactly 55",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "separated",
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                "follow a `-`",
            ),
            (
                "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
                "55 characters",
            ),
        ];
        for (value, why) in cases {
            let err = TraceParent::parse(value).expect_err(value);
            assert_eq!(err.field, "traceparent");
            assert!(err.reason.contains(why), "{value}: {err}");
        }
    }

    #[test]
    fn generated_contexts_are_valid_and_children_keep_the_trace() {
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()).unwrap(), root);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.parent_id, root.parent_id);
        assert_eq!(child.flags, root.flags);
    }

    #[tokio::test]
    async fn inject_keeps_an_existing_context_and_continues_the_current_one() {
        let mut e = AsdlcEvent::new(EventType::TaskCreated, "s");
        assert_eq!(extract_trace_context(&e), None);
        let injected = inject_trace_context(&mut e);
        assert_eq!(extract_trace_context(&e), Some(injected));
        assert_eq!(inject_trace_context(&mut e), injected, "kept");

        let current = TraceParent::parse(VALID).unwrap();
        let mut follow_up = AsdlcEvent::new(EventType::TaskCompleted, "s");
        let tp = current
            .scope(async { inject_trace_context(&mut follow_up) })
            .await;
        assert_eq!(tp.trace_id, current.trace_id);
        assert_ne!(tp.parent_id, current.parent_id);

        let mut bad = AsdlcEvent::new(EventType::TaskCreated, "s");
        bad.metadata
            .insert(TRACEPARENT_KEY.into(), "not a traceparent".into());
        assert_eq!(extract_trace_context(&bad), None);
        let replaced = inject_trace_context(&mut bad);
        assert_eq!(extract_trace_context(&bad), Some(replaced));
    }
}
