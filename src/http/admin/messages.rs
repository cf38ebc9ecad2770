//! Messages: list with filters, one message with its whole story, channel logs.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::views::{self, FilterQuery};
use super::{bad_request, cursor, next_cursor, not_found, ok_json, page_size, query, store_failed};
use crate::app::AppState;

/// `GET /admin/messages`: newest first, cursor-paginated (the cursor is an id, so pages
/// stay stable while new messages arrive).
pub async fn list(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let q: FilterQuery = match query(q.as_deref()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let limit = match page_size(q.limit) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let filter = match q.to_filter(limit) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    match state.admin_store().list_messages(filter).await {
        Ok(rows) => ok_json(json!({
            "items": rows.iter().map(views::message).collect::<Vec<_>>(),
            "next_cursor": next_cursor(rows.iter().map(|r| r.id), rows.len(), limit),
        })),
        Err(e) => store_failed(e),
    }
}

/// `GET /admin/messages/{mid}`: the message, its status events, history, attempts,
/// channel logs and one timeline of them all.
pub async fn detail(State(state): State<Arc<AppState>>, Path(mid): Path<String>) -> Response {
    if mid.is_empty() || mid.len() > 100 {
        return bad_request("mid must be 1-100 characters");
    }
    match state.admin_store().message_detail(&mid).await {
        Ok(Some(d)) => ok_json(views::detail(&d)),
        Ok(None) => not_found("no message with that mid"),
        Err(e) => store_failed(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    channel: Option<String>,
    mid: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/channel-logs`: exchanges newest first, by channel and/or mId (those with
/// no message are how an unparseable or rejected webhook is found).
pub async fn channel_logs(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let q: LogQuery = match query(q.as_deref()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (limit, before) = match (page_size(q.limit), cursor(q.cursor.as_deref())) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let nonempty = |s: Option<String>| s.filter(|v| !v.is_empty());
    match state
        .admin_store()
        .list_channel_logs(nonempty(q.channel), nonempty(q.mid), before, limit)
        .await
    {
        Ok(rows) => ok_json(json!({
            "items": rows.iter().map(views::channel_log).collect::<Vec<_>>(),
            "next_cursor": next_cursor(rows.iter().map(|r| r.id), rows.len(), limit),
        })),
        Err(e) => store_failed(e),
    }
}
