//! The dashboard's errors: starting it ([`DashboardError`]) and answering a request
//! ([`ApiError`], one HTTP status each).

use std::net::SocketAddr;

use asdlc_runtime::StreamError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The dashboard could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// The Redis server could not be reached.
    #[error("cannot reach {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving on {addr} failed: {source}")]
    Serve {
        /// The address served.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A write token that is empty would let anyone write.
    #[error("the write token must not be empty")]
    EmptyToken,
}

/// Why a request was refused; each variant is one HTTP status, sent as
/// `{"error": "...", "status": N}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The dashboard is read-only, or the token is missing or wrong (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The `Host` header is not one the dashboard serves (421).
    #[error("this dashboard does not serve host `{0}`")]
    MisdirectedHost(String),
    /// No such stream, group or dead letter (404).
    #[error("{0}")]
    NotFound(String),
    /// A parameter is missing or invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// Redis failed or could not be reached (502): `stream` names the stream it concerned,
    /// if one.
    #[error(
        "redis error{}: {source}",
        stream.as_ref().map(|s| format!(" on stream `{s}`")).unwrap_or_default()
    )]
    Redis {
        /// The stream.
        stream: Option<String>,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Redis { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<StreamError> for ApiError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Redis { stream, source } => ApiError::Redis {
                stream: Some(stream),
                source,
            },
            StreamError::Invalid(v) => ApiError::BadRequest(v.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(source: redis::RedisError) -> Self {
        ApiError::Redis {
            stream: None,
            source,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard request failed");
        }
        let body = serde_json::json!({ "error": self.to_string(), "status": status.as_u16() });
        (status, Json(body)).into_response()
    }
}
