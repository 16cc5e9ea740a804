//! The page: HTML, script and style compiled into the binary, so it works without internet.

use axum::Router;
use axum::extract::OriginalUri;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Dashboard;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

pub(crate) fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
}

async fn index(OriginalUri(uri): OriginalUri) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(uri.path()),
    )
}

/// The page, its asset links relative to where it is mounted. Nested with
/// `Router::nest("/ops", ..)` the page is at `/ops`, without a trailing slash, where a plain
/// `app.js` would resolve to `/app.js`: there the links name the last segment (`ops/app.js`).
/// At `/` or `/ops/` they stay plain, which also works behind a proxy that strips a prefix.
/// The script finds the API beside itself, so its requests follow.
fn page(path: &str) -> String {
    let base = match path.rsplit_once('/') {
        Some((_, last)) if !last.is_empty() => format!("{}/", escape(last)),
        _ => String::new(),
    };
    INDEX.replace("{{base}}", &base)
}

/// Escapes text for an HTML attribute (the segment comes from the request's URI).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn asset_links_follow_the_mount_point() {
        assert!(page("/").contains(r#"src="app.js""#));
        assert!(page("/ops/").contains(r#"src="app.js""#));
        assert!(page("/ops").contains(r#"src="ops/app.js""#));
        assert!(page("/a/ops").contains(r#"href="ops/app.css""#));
        let hostile = page(r#"/x"><script>"#);
        assert!(!hostile.contains("<script>\""), "{hostile}");
        assert!(hostile.contains("x&quot;&gt;&lt;script&gt;/app.js"));
    }
}
