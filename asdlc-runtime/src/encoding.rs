//! How an event is stored as stream fields, and read back.
//!
//! | field | value |
//! |---|---|
//! | `v` | encoding version, `1` |
//! | `event_type` | wire name (`task_created`) |
//! | `session_id` | text |
//! | `epic_id`, `task_id`, `git_sha`, `tenant_id`, `idempotency_key` | text; absent when unset |
//! | `artifact_paths` | JSON array of strings (commas and newlines in paths survive) |
//! | `mode` | `normal` or `rlm` |
//! | `timestamp` | RFC 3339, UTC, full precision |
//! | `metadata` | JSON object |
//!
//! Every valid event decodes to an equal event (a property test proves it). Decoding any
//! field map never panics: a wrong entry gives a [`DecodeError`] naming the field, and the
//! consumer dead-letters the entry with that reason.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::{DecodeError, ValidationError};
use crate::event::{AsdlcEvent, EventType, MAX_EVENT_BYTES, Mode, UnknownEventType};
use crate::tenancy::TenantId;

/// The encoding version written in the `v` field.
pub const ENCODING_VERSION: &str = "1";

/// Every field an entry may carry ([`encode`] leaves out the empty optional ones); [`decode`]
/// ignores any other.
pub const FIELDS: [&str; 12] = [
    "v",
    "event_type",
    "session_id",
    "epic_id",
    "task_id",
    "git_sha",
    "tenant_id",
    "idempotency_key",
    "artifact_paths",
    "mode",
    "timestamp",
    "metadata",
];

/// An event's stream fields, ready for `XADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    fields: Vec<(&'static str, Vec<u8>)>,
}

impl EncodedEvent {
    /// The field/value pairs, in order.
    pub fn fields(&self) -> &[(&'static str, Vec<u8>)] {
        &self.fields
    }

    /// The total size of names and values, in bytes.
    pub fn len_bytes(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The value of `field`, if present.
    pub fn get(&self, field: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| *k == field)
            .map(|(_, v)| v.as_slice())
    }
}

/// The event's stream fields.
pub fn encode(event: &AsdlcEvent) -> EncodedEvent {
    let mut fields: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(12);
    write_fields(
        event,
        event.tenant_id.as_ref(),
        event.idempotency_key.as_deref(),
        &mut Vec::new(),
        &mut |name, value| fields.push((name, value.to_vec())),
    );
    EncodedEvent { fields }
}

/// Writes the fields of `event`, published with `tenant` and idempotency `key` in place of its
/// own, straight into `cmd`'s arguments (no intermediate copy), and returns their encoded size
/// in bytes (names and values, as [`EncodedEvent::len_bytes`] counts them). `scratch` is a
/// buffer for the JSON fields, reused across calls.
pub(crate) fn encode_into(
    event: &AsdlcEvent,
    tenant: Option<&TenantId>,
    key: &str,
    cmd: &mut redis::Cmd,
    scratch: &mut Vec<u8>,
) -> usize {
    let mut size = 0;
    write_fields(event, tenant, Some(key), scratch, &mut |name, value| {
        size += name.len() + value.len();
        cmd.arg(name).arg(value);
    });
    size
}

/// The one definition of the field layout, in order, for [`encode`] and [`encode_into`].
fn write_fields(
    event: &AsdlcEvent,
    tenant: Option<&TenantId>,
    key: Option<&str>,
    scratch: &mut Vec<u8>,
    put: &mut dyn FnMut(&'static str, &[u8]),
) {
    put("v", ENCODING_VERSION.as_bytes());
    put("event_type", event.event_type.as_str().as_bytes());
    put("session_id", event.session_id.as_bytes());
    let optional = [
        ("epic_id", event.epic_id.as_deref()),
        ("task_id", event.task_id.as_deref()),
        ("git_sha", event.git_sha.as_deref()),
        ("tenant_id", tenant.map(TenantId::as_str)),
        ("idempotency_key", key),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            put(name, value.as_bytes());
        }
    }
    scratch.clear();
    if serde_json::to_writer(&mut *scratch, &event.artifact_paths).is_err() {
        scratch.clear();
        scratch.extend_from_slice(b"[]");
    }
    put("artifact_paths", scratch);
    put("mode", event.mode.as_str().as_bytes());
    put(
        "timestamp",
        event
            .timestamp
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
            .as_bytes(),
    );
    scratch.clear();
    if serde_json::to_writer(&mut *scratch, &event.metadata).is_err() {
        scratch.clear();
        scratch.extend_from_slice(b"{}");
    }
    put("metadata", scratch);
}

impl AsdlcEvent {
    /// Checks every field and the encoded size; the error names the first bad field and says
    /// why.
    ///
    /// Publishing calls this, so an invalid event never reaches the stream.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_fields()?;
        check_encoded_size(encoded_len(self))
    }
}

/// Refuses an event whose encoding takes `size` bytes, more than [`MAX_EVENT_BYTES`].
pub(crate) fn check_encoded_size(size: usize) -> Result<(), ValidationError> {
    if size > MAX_EVENT_BYTES {
        return Err(ValidationError::new(
            "event",
            format!("encoded size {size} bytes exceeds the limit of {MAX_EVENT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The encoded size of `event`, in bytes: what [`EncodedEvent::len_bytes`] says of
/// [`encode`]`(event)`, without building the fields.
pub fn encoded_len(event: &AsdlcEvent) -> usize {
    let mut size = 0;
    write_fields(
        event,
        event.tenant_id.as_ref(),
        event.idempotency_key.as_deref(),
        &mut Vec::new(),
        &mut |name, value| size += name.len() + value.len(),
    );
    size
}

/// Decodes stream fields into an event (without `event_id`, which is the entry id).
///
/// Unknown fields are ignored, so newer producers can add fields; a field given twice is an
/// error. An `artifact_paths` that is not a JSON array is read as a comma-joined list, the
/// form some producers write. The event passes every check of
/// [`AsdlcEvent::validate`]; the encoded-size limit is checked only on entries stored with
/// more than half of it (measuring it means encoding the event again).
pub fn decode<K, V>(fields: &[(K, V)]) -> Result<AsdlcEvent, DecodeError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut slots: [Option<&[u8]>; 12] = [None; 12];
    for (k, v) in fields {
        let Some(i) = FIELDS.iter().position(|n| n.as_bytes() == k.as_ref()) else {
            continue;
        };
        if slots[i].is_some() {
            return Err(DecodeError::new(FIELDS[i], "given more than once"));
        }
        slots[i] = Some(v.as_ref());
    }
    let text = |i: usize| -> Result<Option<&str>, DecodeError> {
        slots[i]
            .map(|b| {
                std::str::from_utf8(b)
                    .map_err(|_| DecodeError::new(FIELDS[i], "is not valid UTF-8"))
            })
            .transpose()
    };
    let required = |i: usize| -> Result<&str, DecodeError> {
        text(i)?.ok_or_else(|| DecodeError::new(FIELDS[i], "is missing"))
    };

    if let Some(v) = text(0)?
        && v != ENCODING_VERSION
    {
        return Err(DecodeError::new(
            "v",
            format!(
                "encoding version `{}` is not supported (expected {ENCODING_VERSION})",
                short(v)
            ),
        ));
    }
    let event_type: EventType = required(1)?
        .parse()
        .map_err(|e: UnknownEventType| DecodeError::new("event_type", e.to_string()))?;
    let session_id = required(2)?.to_owned();
    let tenant_id = text(6)?
        .map(TenantId::new)
        .transpose()
        .map_err(|e| DecodeError::from(ValidationError::from(e)))?;
    let artifact_paths = match text(8)? {
        None => Vec::new(),
        Some(s) if s.trim_start().starts_with('[') => serde_json::from_str::<Vec<String>>(s)
            .map_err(|e| {
                DecodeError::new(
                    "artifact_paths",
                    format!("is not a JSON array of strings: {e}"),
                )
            })?,
        Some("") => Vec::new(),
        Some(s) => s.split(',').map(str::to_owned).collect(),
    };
    let mode = match text(9)? {
        None => Mode::Normal,
        Some(s) => s.parse().map_err(|e: String| DecodeError::new("mode", e))?,
    };
    let timestamp = DateTime::parse_from_rfc3339(required(10)?)
        .map_err(|e| DecodeError::new("timestamp", format!("is not an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    let metadata = match text(11)? {
        None => serde_json::Map::new(),
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Err(DecodeError::new("metadata", "is not a JSON object")),
            Err(e) => {
                return Err(DecodeError::new(
                    "metadata",
                    format!("is not valid JSON: {e}"),
                ));
            }
        },
    };
    let event = AsdlcEvent {
        event_id: None,
        event_type,
        session_id,
        epic_id: text(3)?.map(str::to_owned),
        task_id: text(4)?.map(str::to_owned),
        git_sha: text(5)?.map(str::to_owned),
        artifact_paths,
        mode,
        tenant_id,
        timestamp,
        idempotency_key: text(7)?.map(str::to_owned),
        metadata,
        // Its key came from the publisher: never one born here.
        born_key: crate::event::BornKey::default(),
    };
    event.validate_fields()?;
    // The size limit applies to the entry as stored; only an entry near it is worth encoding
    // again to measure (the stored size is what the reader paid for anyway).
    let stored: usize = fields
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
        .sum();
    if stored > MAX_EVENT_BYTES / 2 {
        event.validate()?;
    }
    Ok(event)
}

fn short(s: &str) -> String {
    crate::text::truncate(s, 40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> AsdlcEvent {
        AsdlcEvent::builder(EventType::PatchApplied, "session-1")
            .epic_id("epic")
            .task_id("task-1")
            .git_sha("abc1234")
            .artifact_paths(["a,b.txt", "line\nbreak", "ünï/cødé"])
            .mode(Mode::Rlm)
            .tenant_id(TenantId::new("acme").unwrap())
            .meta("nested", serde_json::json!({"a": [1, 2, {"b": null}]}))
            .build()
            .unwrap()
    }

    #[test]
    fn encoded_event_round_trips() {
        let e = sample();
        let enc = encode(&e);
        assert_eq!(decode(enc.fields()).unwrap(), e);
    }

    #[test]
    fn encoding_into_a_command_writes_the_same_fields() {
        let e = sample();
        let mut published = e.clone();
        published.tenant_id = Some(TenantId::new("other").unwrap());
        published.idempotency_key = Some("key-1".to_owned());
        let mut expected = redis::cmd("XADD");
        for (k, v) in encode(&published).fields() {
            expected.arg(*k).arg(v.as_slice());
        }
        let mut cmd = redis::cmd("XADD");
        let size = encode_into(
            &e,
            published.tenant_id.as_ref(),
            "key-1",
            &mut cmd,
            &mut Vec::new(),
        );
        assert_eq!(cmd.get_packed_command(), expected.get_packed_command());
        assert_eq!(size, encode(&published).len_bytes());
        assert_eq!(encoded_len(&published), size);
    }

    #[test]
    fn missing_fields_are_named() {
        let enc = encode(&sample());
        for field in ["event_type", "session_id", "timestamp"] {
            let fields: Vec<_> = enc
                .fields()
                .iter()
                .filter(|(k, _)| *k != field)
                .cloned()
                .collect();
            assert_eq!(decode(&fields).unwrap_err().field, field);
        }
    }

    #[test]
    fn wrong_values_are_named() {
        let enc = encode(&sample());
        let cases: [(&str, &[u8]); 9] = [
            ("event_type", b"task_exploded"),
            ("session_id", b""),
            ("metadata", b"[1]"),
            ("metadata", b"{not json"),
            ("artifact_paths", b"[1,2]"),
            ("mode", b"turbo"),
            ("timestamp", b"yesterday"),
            ("tenant_id", b"a:b"),
            ("git_sha", b"zzzzzzz"),
        ];
        for (field, value) in cases {
            let fields: Vec<(&str, Vec<u8>)> = enc
                .fields()
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        if *k == field {
                            value.to_vec()
                        } else {
                            v.clone()
                        },
                    )
                })
                .collect();
            let err = decode(&fields).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let bad_utf8: Vec<(&str, Vec<u8>)> = vec![("event_type", vec![0xff, 0xfe])];
        assert_eq!(decode(&bad_utf8).unwrap_err().field, "event_type");
        let twice: Vec<(&str, &str)> = vec![("session_id", "a"), ("session_id", "b")];
        assert_eq!(decode(&twice).unwrap_err().field, "session_id");
    }

    #[test]
    fn python_original_entries_decode() {
        let fields = [
            ("event_type", "task_created"),
            ("session_id", "s1"),
            ("task_id", "t1"),
            ("artifact_paths", "a.py,b.py"),
            ("mode", "normal"),
            ("timestamp", "2026-01-22T10:00:00.123456+00:00"),
            ("metadata", "{}"),
        ];
        let e = decode(&fields).unwrap();
        assert_eq!(e.artifact_paths, vec!["a.py", "b.py"]);
        assert_eq!(e.idempotency_key, None);
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ,\n\t:{}*?ü✓🦀\"\\\\/._-]{1,40}".prop_filter("non-blank, no control", |s| {
            !s.trim().is_empty() && !s.chars().any(char::is_control)
        })
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[^\u{0}]{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z,\n]{0,8}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn arb_event()(
            t in prop::sample::select(EventType::ALL),
            session in arb_text(),
            epic in proptest::option::of(arb_text()),
            task in proptest::option::of(arb_text()),
            sha in proptest::option::of("[0-9a-fA-F]{7,40}"),
            paths in prop::collection::vec("[^\u{0}]{1,30}", 0..5),
            rlm in any::<bool>(),
            tenant in proptest::option::of("[a-z0-9_-]{1,63}"),
            nanos in 0i64..4_000_000_000_000_000_000,
            key in proptest::option::of(arb_text()),
            meta in prop::collection::btree_map("[^\u{0}]{0,10}", arb_json(), 0..4),
        ) -> AsdlcEvent {
            AsdlcEvent {
                event_id: None,
                event_type: t,
                session_id: session,
                epic_id: epic,
                task_id: task,
                git_sha: sha,
                artifact_paths: paths,
                mode: if rlm { Mode::Rlm } else { Mode::Normal },
                tenant_id: tenant.map(|t| TenantId::new(t).unwrap()),
                timestamp: DateTime::from_timestamp_nanos(nanos),
                idempotency_key: key,
                metadata: meta.into_iter().collect(),
                born_key: Default::default(),
            }
        }
    }

    proptest! {
        #[test]
        fn every_valid_event_round_trips(e in arb_event()) {
            prop_assume!(e.validate().is_ok());
            let enc = encode(&e);
            prop_assert_eq!(decode(enc.fields()).unwrap(), e);
        }

        #[test]
        fn decoding_arbitrary_fields_never_panics(
            fields in prop::collection::vec(
                (prop_oneof![
                    prop::sample::select(vec!["v", "event_type", "session_id", "epic_id", "task_id",
                        "git_sha", "tenant_id", "idempotency_key", "artifact_paths", "mode",
                        "timestamp", "metadata", "other"]).prop_map(|s| s.as_bytes().to_vec()),
                    prop::collection::vec(any::<u8>(), 0..8),
                ],
                prop::collection::vec(any::<u8>(), 0..64)),
                0..16)
        ) {
            let _ = decode(&fields);
        }

        #[test]
        fn corrupting_one_field_is_named_or_harmless(e in arb_event(), which in 0usize..12, junk in prop::collection::vec(any::<u8>(), 0..32)) {
            prop_assume!(e.validate().is_ok());
            let mut fields: Vec<(&str, Vec<u8>)> = encode(&e).fields().to_vec();
            let i = which % fields.len();
            let name = fields[i].0;
            fields[i].1 = junk;
            if let Err(err) = decode(&fields) {
                prop_assert!(err.field == name || err.field == "event", "{} vs {}", err.field, name);
            }
        }
    }
}
