//! What a handler reports: the [`HandlerResult`] the commit step acts on, the
//! [`HandlerError`] a `Result`-returning handler fails with, and [`IntoHandlerResult`], which
//! turns every supported return type into a [`HandlerResult`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a handler reports for one event; the consumer acks, retries or dead-letters from it.
///
/// One variant per decision, so a result cannot be both a success and a retry. Build one with
/// [`ok`](Self::ok), [`ok_with_artifacts`](Self::ok_with_artifacts), [`retry`](Self::retry) or
/// [`permanent`](Self::permanent), and read it with the accessors; a `match` outside this crate
/// needs a wildcard arm, as more outcomes may come.
///
/// ```
/// use asdlc_runtime::HandlerResult;
///
/// let r = HandlerResult::retry("database busy");
/// assert!(r.is_retry() && !r.is_ok());
/// assert_eq!(r.error_message(), Some("database busy"));
/// assert_eq!(HandlerResult::ok_with_artifacts(["out.txt"]).artifacts(), ["out.txt"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HandlerResult {
    /// The event was handled: it is marked done and acked.
    Ok {
        /// Artifacts the handler produced.
        artifacts: Vec<String>,
    },
    /// A failure worth retrying: the entry stays pending and is redelivered after a backoff
    /// (or dead-lettered once its deliveries run out).
    Retry {
        /// Why it failed.
        message: String,
        /// Redeliver after this long instead of the consumer's backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Duration>,
    },
    /// A failure that retrying cannot fix: the entry goes to the dead-letter stream.
    Permanent {
        /// Why it failed.
        message: String,
    },
}

impl HandlerResult {
    /// Success.
    pub fn ok() -> Self {
        HandlerResult::Ok {
            artifacts: Vec::new(),
        }
    }
    /// Success, with the artifacts produced.
    pub fn ok_with_artifacts<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HandlerResult::Ok {
            artifacts: paths.into_iter().map(Into::into).collect(),
        }
    }
    /// A failure worth retrying: the entry stays pending and is redelivered after a backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        HandlerResult::Retry {
            message: message.into(),
            after: None,
        }
    }
    /// A failure worth retrying after `delay` (a rate limit's reset, a dependency's
    /// maintenance window), instead of the consumer's backoff. The delivery still counts
    /// toward `max_deliveries`.
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        HandlerResult::Retry {
            message: message.into(),
            after: Some(delay),
        }
    }
    /// A failure that retrying cannot fix: the entry goes to the dead-letter stream.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerResult::Permanent {
            message: message.into(),
        }
    }

    /// Whether the event was handled.
    pub fn is_ok(&self) -> bool {
        matches!(self, HandlerResult::Ok { .. })
    }
    /// Whether the event failed and should be retried.
    pub fn is_retry(&self) -> bool {
        matches!(self, HandlerResult::Retry { .. })
    }
    /// Whether the event failed for good and goes to the dead-letter stream.
    pub fn is_permanent(&self) -> bool {
        matches!(self, HandlerResult::Permanent { .. })
    }
    /// Why it failed; `None` on success.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            HandlerResult::Ok { .. } => None,
            HandlerResult::Retry { message, .. } | HandlerResult::Permanent { message } => {
                Some(message)
            }
        }
    }
    /// The artifacts a successful handler produced; empty on failure.
    pub fn artifacts(&self) -> &[String] {
        match self {
            HandlerResult::Ok { artifacts } => artifacts,
            _ => &[],
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
    after: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: true,
            after: None,
        }
    }

    /// A failure worth retrying after `delay` instead of the consumer's backoff (see
    /// [`HandlerResult::retry_after`]).
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        HandlerError {
            message: message.into(),
            retryable: true,
            after: Some(delay),
        }
    }

    /// A failure retrying cannot fix: the event goes to the dead-letter stream.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: false,
            after: None,
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
            Err(e) if e.retryable => HandlerResult::Retry {
                message: e.message,
                after: e.after,
            },
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
        assert!(().into_handler_result().is_ok());
        let r: Result<(), HandlerError> = Err(DiskFull.into());
        let r = r.into_handler_result();
        assert!(r.is_retry() && !r.is_ok());
        assert_eq!(r.error_message(), Some("disk full"));
        let p: Result<HandlerResult, HandlerError> = Err(HandlerError::permanent("bad patch"));
        let p = p.into_handler_result();
        assert!(p.is_permanent() && !p.is_retry() && !p.is_ok());
    }

    #[test]
    fn handler_result_constructors() {
        assert!(HandlerResult::ok().is_ok());
        assert_eq!(HandlerResult::ok().error_message(), None);
        let r = HandlerResult::retry("later");
        assert!(!r.is_ok() && r.is_retry());
        let p = HandlerResult::permanent("never");
        assert!(!p.is_ok() && !p.is_retry() && p.is_permanent());
        assert_eq!(p.error_message(), Some("never"));
        assert!(p.artifacts().is_empty());
        let a = HandlerResult::ok_with_artifacts(["a", "b"]);
        assert_eq!(a.artifacts(), ["a", "b"]);
    }

    #[test]
    fn handler_result_serializes_with_its_outcome() {
        let json = serde_json::to_string(&HandlerResult::retry("later")).unwrap();
        assert_eq!(json, r#"{"outcome":"retry","message":"later"}"#);
        let back: HandlerResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, HandlerResult::retry("later"));
    }
}
