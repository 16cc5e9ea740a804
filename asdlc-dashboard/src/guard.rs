//! What every request passes: the `Host` check against DNS rebinding, the write token, and
//! security headers on every answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Dashboard;
use crate::error::ApiError;

/// Refuses (421) a request whose `Host` is not one of `hosts` (when set). A page on another
/// site that points its own name at 127.0.0.1 sends its own name as `Host`, so it is refused.
pub(crate) async fn check_host(
    State(hosts): State<Arc<Option<Vec<String>>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(hosts) = hosts.as_ref() {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return ApiError::MisdirectedHost(host).into_response();
        }
    }
    next.run(request).await
}

/// No framing by other sites, nothing loaded from elsewhere, no referrer, no caching.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Allows a mutating request only on a writable dashboard, with `Authorization: Bearer
/// <token>` matching its token.
pub(crate) fn authorize(dashboard: &Dashboard, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = dashboard.options().write_token.as_deref() else {
        return Err(ApiError::Forbidden(
            "this dashboard is read-only (start it with --write and a token)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    if given.is_empty() {
        return Err(ApiError::Forbidden("a write token is required"));
    }
    if !same(given.as_bytes(), token.as_bytes()) {
        return Err(ApiError::Forbidden("wrong write token"));
    }
    Ok(())
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
