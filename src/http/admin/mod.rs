//! The admin API under `/admin`: find out why a message did not arrive, and fix it
//! (replay, discard, pause, resume, purge) without a database shell.
//!
//! Behind named bearer tokens (`[[admin.token]]`), compared in constant time; with no
//! token configured the routes are not mounted at all (404). Every change is audited with
//! the token's name. JSON in and out; errors are `{"error":{"message":...}}`. The routes
//! are listed once, in [`routes`], which both builds the router and is checked against the
//! OpenAPI document (`/admin/openapi.json`) by a test.

mod dead;
mod history;
mod lanes;
mod messages;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::de::DeserializeOwned;

use super::json_error;
use crate::app::AppState;

/// The OpenAPI 3 document, written by hand next to the handlers: the API is small, and a
/// derive-based generator (utoipa) would put annotations on every type and handler for
/// what one reviewed file says; `routes_are_documented` keeps the two in step.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Most rows one listing returns.
pub const LIST_MAX: usize = 500;
/// Default rows per page.
pub const LIST_DEFAULT: usize = 50;
/// Most items one replay or discard by filter touches.
pub const BULK_MAX: usize = 1000;

/// The token's name that authorised a request: the audit log's "who".
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// Every admin route: (method, path, handler). The router is built from this list only.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        (Method::GET, "/admin/openapi.json", get(openapi)),
        (Method::GET, "/admin/messages", get(messages::list)),
        (Method::GET, "/admin/messages/{mid}", get(messages::detail)),
        (
            Method::GET,
            "/admin/channel-logs",
            get(messages::channel_logs),
        ),
        (Method::GET, "/admin/dead-letters", get(dead::list)),
        (
            Method::POST,
            "/admin/dead-letters/replay",
            post(dead::replay),
        ),
        (
            Method::POST,
            "/admin/dead-letters/discard",
            post(dead::discard),
        ),
        (Method::GET, "/admin/raw-webhooks", get(dead::list_raw)),
        (
            Method::POST,
            "/admin/raw-webhooks/{id}/replay",
            post(dead::replay_raw),
        ),
        (
            Method::POST,
            "/admin/raw-webhooks/{id}/discard",
            post(dead::discard_raw),
        ),
        (Method::GET, "/admin/lanes", get(lanes::list)),
        (Method::GET, "/admin/lanes/history", get(history::lanes)),
        (
            Method::POST,
            "/admin/lanes/{channel}/{direction}/pause",
            post(lanes::pause),
        ),
        (
            Method::POST,
            "/admin/lanes/{channel}/{direction}/resume",
            post(lanes::resume),
        ),
        (Method::POST, "/admin/contacts/purge", post(lanes::purge)),
        (Method::GET, "/admin/audit", get(lanes::audit)),
    ]
}

/// The `/admin` routes behind token auth; `None` when no admin token is configured.
pub fn router(state: Arc<AppState>) -> Option<Router<Arc<AppState>>> {
    if state.cfg.admin.tokens.is_empty() {
        return None;
    }
    let mut by_path: BTreeMap<&'static str, MethodRouter<Arc<AppState>>> = BTreeMap::new();
    for (_, path, handler) in routes() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(path, merged);
    }
    let mut r = Router::new();
    for (path, handler) in by_path {
        r = r.route(path, handler);
    }
    Some(r.layer(middleware::from_fn_with_state(state, authorize)))
}

/// `Authorization: Bearer <token>` against every configured token. Every comparison runs
/// (constant time each, no early exit), so timing tells neither which token nor how much
/// of one matched.
async fn authorize(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let Some(presented) = presented else {
        return json_error(StatusCode::UNAUTHORIZED, "missing bearer token");
    };
    let mut actor: Option<String> = None;
    for t in &state.cfg.admin.tokens {
        if t.token.matches(&presented) && actor.is_none() {
            actor = Some(t.name.clone());
        }
    }
    let Some(actor) = actor else {
        tracing::warn!(path = %req.uri().path(), "admin request with an invalid token");
        return json_error(StatusCode::UNAUTHORIZED, "invalid admin token");
    };
    req.extensions_mut().insert(Actor(actor));
    next.run(req).await
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A 400 with the error shape.
pub(crate) fn bad_request(msg: impl std::fmt::Display) -> Response {
    json_error(StatusCode::BAD_REQUEST, &msg.to_string())
}

pub(crate) fn store_failed(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin request: store failed");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store unavailable, try again",
    )
}

pub(crate) fn not_found(what: &str) -> Response {
    json_error(StatusCode::NOT_FOUND, what)
}

/// Parses a query string into `T`, answering 400 with the reason.
pub(crate) fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, Response> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| bad_request(format!("bad query: {e}")))
}

/// Parses a JSON body into `T` (an empty body reads as `{}`), answering 400 with the reason.
pub(crate) fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    let raw: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(raw).map_err(|e| bad_request(format!("bad JSON body: {e}")))
}

pub(crate) fn ok_json(v: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// A page size from `limit` (default and maximum applied).
pub(crate) fn page_size(limit: Option<usize>) -> Result<usize, Response> {
    match limit {
        None => Ok(LIST_DEFAULT),
        Some(0) => Err(bad_request("limit must be at least 1")),
        Some(n) => Ok(n.min(LIST_MAX)),
    }
}

/// A cursor is the id of the last row of the previous page (rows are newest first).
pub(crate) fn cursor(raw: Option<&str>) -> Result<Option<i64>, Response> {
    raw.filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| bad_request("cursor is not one we handed out"))
        })
        .transpose()
}

pub(crate) fn next_cursor(
    ids: impl DoubleEndedIterator<Item = i64>,
    got: usize,
    limit: usize,
) -> Option<String> {
    (got == limit)
        .then(|| ids.last().map(|id| id.to_string()))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is in the OpenAPI document, with its method, and the
    /// document lists nothing the router does not serve.
    #[test]
    fn routes_are_documented() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = 0;
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                documented += 1;
                assert!(
                    routes()
                        .iter()
                        .any(|(m, p, _)| p == path && m.as_str().eq_ignore_ascii_case(method)),
                    "documented but not served: {method} {path}"
                );
            }
        }
        for (method, path, _) in routes() {
            let item = paths
                .get(path)
                .unwrap_or_else(|| panic!("route {path} is not in openapi.json"));
            assert!(
                item.get(method.as_str().to_ascii_lowercase()).is_some(),
                "{method} {path} is not in openapi.json"
            );
        }
        assert_eq!(documented, routes().len());
    }
}
