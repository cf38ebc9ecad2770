//! The web console at `/console`: a small hand-written page (HTML, CSS, one script, no
//! build step) embedded in the binary, so it works offline and ships with the gateway.
//! It is a client of the admin API: the operator signs in with an admin token, which the
//! page keeps in `sessionStorage` (gone with the tab) and sends as a bearer header to
//! `/admin`. No cookie is involved, so there is nothing for a cross-site request to ride
//! on; the token never appears in a URL.
//!
//! The pages hold no data themselves and are served without a token. Every answer carries
//! a strict Content-Security-Policy (scripts and styles from this origin only, no inline
//! code, no framing, no form posts), so injected markup could neither run nor exfiltrate;
//! the script also builds every element with text nodes, never `innerHTML`.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Only this origin's script, style and API; nothing inline, nothing framed, no form
/// submissions (sign-in is handled by the script).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes. Mounted next to `/admin`, and only where it is (see
/// `crate::http::router` and `internal_router`).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{file}", get(asset))
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "console.js" => page("text/javascript; charset=utf-8", CONSOLE_JS),
        "console.css" => page("text/css; charset=utf-8", CONSOLE_CSS),
        "favicon.svg" => page("image/svg+xml", FAVICON_SVG),
        _ => with_headers((StatusCode::NOT_FOUND, "no such console file").into_response()),
    }
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    with_headers(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |v: &'static str| HeaderValue::from_static(v);
    h.insert(header::CONTENT_SECURITY_POLICY, set(CSP));
    h.insert(header::X_FRAME_OPTIONS, set("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, set("nosniff"));
    h.insert(header::REFERRER_POLICY, set("no-referrer"));
    h.insert("cross-origin-opener-policy", set("same-origin"));
    // Small files, and a release must never run an old script against a new API.
    h.insert(header::CACHE_CONTROL, set("no-store"));
    r
}
