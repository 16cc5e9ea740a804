//! What a handler reports: the [`HandlerResult`] the commit step acts on, the
//! [`HandlerError`] a `Result`-returning handler fails with, and [`IntoHandlerResult`], which
//! turns every supported return type into a [`HandlerResult`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a handler reports for one event; the consumer acks, retries or dead-letters from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerResult {
    /// The event was handled.
    pub success: bool,
    /// On failure: leave the entry pending and redeliver it after a backoff (`true`), or move
    /// it to the dead-letter stream (`false`).
    pub should_retry: bool,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Artifacts the handler produced.
    pub artifact_paths: Vec<String>,
}

impl HandlerResult {
    /// Success.
    pub fn ok() -> Self {
        HandlerResult {
            success: true,
            ..Default::default()
        }
    }
    /// Success, with the artifacts produced.
    pub fn ok_with_artifacts<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HandlerResult {
            success: true,
            artifact_paths: paths.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    /// A failure worth retrying: the entry stays pending and is redelivered after a backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        HandlerResult {
            success: false,
            should_retry: true,
            error_message: Some(message.into()),
            artifact_paths: Vec::new(),
        }
    }
    /// A failure that retrying cannot fix: the entry goes to the dead-letter stream.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerResult {
            success: false,
            should_retry: false,
            error_message: Some(message.into()),
            artifact_paths: Vec::new(),
        }
    }
}

/// A failure a handler reports through `Result`.
///
/// Any `std::error::Error` converts into a retryable one with `?`; say
/// [`HandlerError::permanent`] when retrying cannot help.
pub struct HandlerError {
    message: String,
    retryable: bool,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure retrying cannot fix: the event goes to the dead-letter stream.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: false,
        }
    }

    /// Whether the event should be retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HandlerError::retryable(message)
    }
}

/// What a handler function may return: [`HandlerResult`], `()`, or a `Result` of either
/// with a [`HandlerError`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler return type",
    label = "a handler returns `HandlerResult`, `()`, or a `Result` of either with `HandlerError`",
    note = "any `std::error::Error` converts into a `HandlerError` with `?`"
)]
pub trait IntoHandlerResult {
    /// The result the consumer acts on.
    fn into_handler_result(self) -> HandlerResult;
}

impl IntoHandlerResult for HandlerResult {
    fn into_handler_result(self) -> HandlerResult {
        self
    }
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> HandlerResult {
        HandlerResult::ok()
    }
}

impl<T: IntoHandlerResult> IntoHandlerResult for Result<T, HandlerError> {
    fn into_handler_result(self) -> HandlerResult {
        match self {
            Ok(v) => v.into_handler_result(),
            Err(e) if e.retryable => HandlerResult::retry(e.message),
            Err(e) => HandlerResult::permanent(e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct DiskFull;

    #[test]
    fn return_types_convert() {
        assert!(().into_handler_result().success);
        let r: Result<(), HandlerError> = Err(DiskFull.into());
        let r = r.into_handler_result();
        assert!(r.should_retry && !r.success);
        assert_eq!(r.error_message.as_deref(), Some("disk full"));
        let p: Result<HandlerResult, HandlerError> = Err(HandlerError::permanent("bad patch"));
        let p = p.into_handler_result();
        assert!(!p.should_retry && !p.success);
    }

    #[test]
    fn handler_result_constructors() {
        assert!(HandlerResult::ok().success);
        let r = HandlerResult::retry("later");
        assert!(!r.success && r.should_retry);
        let p = HandlerResult::permanent("never");
        assert!(!p.success && !p.should_retry);
        assert_eq!(p.error_message.as_deref(), Some("never"));
    }
}
