//! Field validation: the length limits, the checks every event passes before it is published
//! (and after it is decoded), and the limit on its encoded size (measured in `encoding`).

use super::AsdlcEvent;
use crate::error::ValidationError;
use crate::text::truncate;

/// The longest id (session, epic, task, idempotency key) an event may carry, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// The longest artifact path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// The largest encoded event, in bytes: larger events are rejected before they reach Redis.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

impl AsdlcEvent {
    /// Every check of [`AsdlcEvent::validate`] but the encoded size, which is measured where
    /// the encoding is (`encoding`), so this module does not depend on it.
    pub(crate) fn validate_fields(&self) -> Result<(), ValidationError> {
        check_id("session_id", &self.session_id)?;
        for (field, value) in [
            ("epic_id", &self.epic_id),
            ("task_id", &self.task_id),
            ("idempotency_key", &self.idempotency_key),
        ] {
            if let Some(value) = value {
                check_id(field, value)?;
            }
        }
        if let Some(sha) = &self.git_sha {
            check_git_sha(sha)?;
        }
        for (i, path) in self.artifact_paths.iter().enumerate() {
            if path.is_empty() {
                return Err(ValidationError::new(
                    "artifact_paths",
                    format!("path {i} is empty"),
                ));
            }
            if path.len() > MAX_PATH_LEN {
                return Err(ValidationError::new(
                    "artifact_paths",
                    format!("path {i} is longer than {MAX_PATH_LEN} bytes"),
                ));
            }
            if path.contains('\0') {
                return Err(ValidationError::new(
                    "artifact_paths",
                    format!("path {i} contains a NUL byte"),
                ));
            }
        }
        if let Some(id) = &self.event_id {
            check_id("event_id", id)?;
        }
        Ok(())
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes long; the limit is {MAX_ID_LEN}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_git_sha(sha: &str) -> Result<(), ValidationError> {
    if !(7..=40).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ValidationError::new(
            "git_sha",
            format!(
                "must be 7 to 40 hex characters, got `{}`",
                truncate(sha, 64)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AsdlcEventBuilder, EventType};

    #[test]
    fn validation_names_the_bad_field() {
        let cases: Vec<(AsdlcEventBuilder, &str)> = vec![
            (
                AsdlcEvent::builder(EventType::TaskCreated, ""),
                "session_id",
            ),
            (
                AsdlcEvent::builder(EventType::TaskCreated, "   "),
                "session_id",
            ),
            (
                AsdlcEvent::builder(EventType::TaskCreated, "x".repeat(MAX_ID_LEN + 1)),
                "session_id",
            ),
            (
                AsdlcEvent::builder(EventType::TaskCreated, "s").task_id(""),
                "task_id",
            ),
            (
                AsdlcEvent::builder(EventType::TaskCreated, "s").epic_id("a\nb"),
                "epic_id",
            ),
            (
                AsdlcEvent::builder(EventType::PatchApplied, "s").git_sha("xyz1234"),
                "git_sha",
            ),
            (
                AsdlcEvent::builder(EventType::PatchApplied, "s").git_sha("abc12"),
                "git_sha",
            ),
            (
                AsdlcEvent::builder(EventType::PatchApplied, "s").git_sha("a".repeat(41)),
                "git_sha",
            ),
            (
                AsdlcEvent::builder(EventType::PatchApplied, "s").artifact_path(""),
                "artifact_paths",
            ),
            (
                AsdlcEvent::builder(EventType::PatchApplied, "s").idempotency_key(""),
                "idempotency_key",
            ),
            (
                AsdlcEvent::builder(EventType::PatchApplied, "s")
                    .meta("blob", "x".repeat(MAX_EVENT_BYTES)),
                "event",
            ),
        ];
        for (builder, field) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn valid_git_shas_are_accepted() {
        for sha in ["abc1234", "ABCDEF0123456789abcdef0123456789abcdef01"] {
            AsdlcEvent::builder(EventType::PatchApplied, "s")
                .git_sha(sha)
                .build()
                .unwrap();
        }
    }
}
