//! Dead letters: items that gave up (state dead) and authentic webhooks we could not read
//! (kept raw). Replay sends again, discard settles without sending; both are audited.
//!
//! Replay is idempotent: the store moves an item from dead to pending only if it is still
//! dead at the moment of the write, so two replays (one after the other, or at once) send
//! it once. A raw webhook replay goes through the provider's parser again and the usual
//! dedupe, so it too produces its events once.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::views::{self, FilterQuery};
use super::{
    Actor, BULK_MAX, bad_request, cursor, json_body, next_cursor, not_found, ok_json, page_size,
    query, store_failed,
};
use crate::app::AppState;
use crate::http::json_error;
use crate::providers::WebhookRequest;
use crate::store::admin::{ReplayOutcome, ReplayResult};
use crate::store::{IngestResult, Lane, ReceiptIn, ReceiptResult, STATE_DEAD};

/// `GET /admin/dead-letters`: dead items (every kind), newest first.
pub async fn list(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let q: FilterQuery = match query(q.as_deref()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if q.state.is_some() {
        return bad_request("dead letters are the items in state dead: no state filter here");
    }
    let limit = match page_size(q.limit) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let mut filter = match q.to_filter(limit) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    filter.state = Some(STATE_DEAD);
    match state.admin_store().list_messages(filter).await {
        Ok(rows) => ok_json(json!({
            "items": rows.iter().map(views::message).collect::<Vec<_>>(),
            "next_cursor": next_cursor(rows.iter().map(|r| r.id), rows.len(), limit),
        })),
        Err(e) => store_failed(e),
    }
}

/// Which dead items a replay or discard is about: ids, or a filter (at most `limit`,
/// default and maximum [`BULK_MAX`], newest first).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    ids: Option<Vec<i64>>,
    filter: Option<FilterQuery>,
    limit: Option<usize>,
    /// Replay only: also replay sends whose earlier attempt may already have reached the
    /// contact (ambiguous). Without it they stay dead and are listed as `needs_force`.
    force: Option<bool>,
}

async fn select(state: &AppState, body: &Bytes) -> Result<Vec<i64>, Response> {
    select_with(state, json_body(body)?).await
}

async fn select_with(state: &AppState, sel: Selection) -> Result<Vec<i64>, Response> {
    match (sel.ids, sel.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > BULK_MAX {
                return Err(bad_request(format!("ids: give 1 to {BULK_MAX}")));
            }
            Ok(ids)
        }
        (None, Some(f)) => {
            if f.state.is_some() || f.cursor.is_some() || f.limit.is_some() {
                return Err(bad_request(
                    "filter: state, cursor and limit do not apply (use the top-level limit)",
                ));
            }
            let limit = sel.limit.unwrap_or(BULK_MAX).clamp(1, BULK_MAX);
            let mut filter = f.to_filter(limit).map_err(bad_request)?;
            filter.state = Some(STATE_DEAD);
            let rows = state
                .admin_store()
                .list_messages(filter)
                .await
                .map_err(store_failed)?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }
        _ => Err(bad_request("give either ids or filter")),
    }
}

/// `POST /admin/dead-letters/replay`.
pub async fn replay(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Response {
    let sel: Selection = match json_body(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let force = sel.force.unwrap_or(false);
    let ids = match select_with(&state, sel).await {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    let results = match state.admin_store().replay_items(ids, &actor.0, force).await {
        Ok(r) => r,
        Err(e) => return store_failed(e),
    };
    wake_lanes(&state, &results);
    let pick = |o: ReplayOutcome| {
        results
            .iter()
            .filter(|r| r.outcome == o)
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    let replayed = pick(ReplayOutcome::Replayed);
    tracing::info!(actor = %actor.0, replayed = replayed.len(), force, "dead letters replayed");
    ok_json(json!({
        "replayed": replayed,
        "not_dead": pick(ReplayOutcome::NotDead),
        "not_found": pick(ReplayOutcome::NotFound),
        "superseded": pick(ReplayOutcome::Superseded),
        "needs_force": pick(ReplayOutcome::NeedsForce),
    }))
}

/// Replayed items are pending again: their lanes count and look for them now.
fn wake_lanes(state: &AppState, results: &[ReplayResult]) {
    for r in results
        .iter()
        .filter(|r| r.outcome == ReplayOutcome::Replayed)
    {
        let (Some(channel), Some(lane)) = (&r.channel, r.lane) else {
            continue;
        };
        if let Some(ch) = state.channel(channel) {
            let ctx = if Lane::from_code(lane) == Lane::RespondIo {
                &ch.to_respondio
            } else {
                &ch.to_provider
            };
            ctx.add_backlog(1);
            ctx.wake();
        }
    }
}

/// `POST /admin/dead-letters/discard`.
pub async fn discard(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Response {
    let ids = match select(&state, &body).await {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    let asked = ids.clone();
    match state.admin_store().discard_items(ids, &actor.0).await {
        Ok(done) => {
            let skipped: Vec<i64> = asked.into_iter().filter(|id| !done.contains(id)).collect();
            ok_json(json!({"discarded": done, "not_dead": skipped}))
        }
        Err(e) => store_failed(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryParams {
    channel: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/raw-webhooks`: kept raw webhooks, newest first (bodies cut to 4 KiB).
pub async fn list_raw(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let q: RawQueryParams = match query(q.as_deref()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (limit, before) = match (page_size(q.limit), cursor(q.cursor.as_deref())) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let channel = q.channel.filter(|c| !c.is_empty());
    match state
        .admin_store()
        .list_raw_webhooks(channel, before, limit)
        .await
    {
        Ok(rows) => {
            let items: Vec<_> = rows
                .iter()
                .map(|r| {
                    let secrets = channel_secrets(&state, &r.channel);
                    json!({
                        "id": r.id,
                        "channel": r.channel,
                        "route": r.route,
                        "content_type": r.content_type,
                        "reason": r.reason,
                        "received_ms": r.received_ms,
                        "body": crate::channel_log::redact::body(&r.body, &secrets),
                    })
                })
                .collect();
            ok_json(json!({
                "items": items,
                "next_cursor": next_cursor(rows.iter().map(|r| r.id), rows.len(), limit),
            }))
        }
        Err(e) => store_failed(e),
    }
}

fn channel_secrets(state: &AppState, channel: &str) -> Vec<String> {
    state
        .cfg
        .channel(channel)
        .map(|c| {
            crate::app::channel_secrets(c)
                .into_iter()
                .map(|s| s.expose().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /admin/raw-webhooks/{id}/replay`: parses the kept body again (a newer release may
/// read it now). Read: its events are committed (deduped as usual) and the raw copy goes.
/// Still unreadable: it stays, with the new reason.
pub async fn replay_raw(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Response {
    let raw = match state.admin_store().raw_webhook(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found("no raw webhook with that id"),
        Err(e) => return store_failed(e),
    };
    let Some(ch) = state.channel(&raw.channel) else {
        return json_error(StatusCode::CONFLICT, "its channel is no longer configured");
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&raw.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let public_url = format!(
        "{}/channels/{}/{}",
        state.cfg.server.public_url.trim_end_matches('/'),
        raw.channel,
        raw.route
    );
    let req = WebhookRequest {
        query: "",
        headers: &headers,
        body: &raw.body,
        public_url: &public_url,
    };
    let committed = match raw.route.as_str() {
        "inbound" => {
            let items = ch.provider.parse_inbound(&req).and_then(|events| {
                if let Some(bad) = events
                    .iter()
                    .find_map(|e| ch.cfg.id_type.validate(&e.contact_id).err())
                {
                    return Err(bad);
                }
                let now_s = (crate::clock::now_ms() / 1000) as u64;
                events
                    .iter()
                    .map(|e| crate::http::webhooks::to_new_inbound(e, &state, &ch.cfg.name, now_s))
                    .collect::<Result<Vec<_>, _>>()
            });
            match items {
                Err(reason) => Err(reason),
                Ok(items) => match state.store.ingest_inbound(&ch.cfg.name, items).await {
                    Ok(results) => {
                        let stored = results
                            .iter()
                            .filter(|r| matches!(r, IngestResult::Stored { .. }))
                            .count();
                        ch.to_respondio.add_backlog(stored);
                        ch.to_respondio.wake();
                        Ok(json!({"events": results.len(), "stored": stored}))
                    }
                    Err(e) => return store_failed(e),
                },
            }
        }
        "status" => match ch.provider.parse_receipts(&req) {
            Err(reason) => Err(reason),
            Ok(receipts) => {
                let items = receipts
                    .into_iter()
                    .map(|r| ReceiptIn {
                        dedupe_key: r.dedupe_key,
                        provider_id: r.provider_id,
                        status: r.status,
                        reason: r.reason,
                    })
                    .collect();
                match state.store.apply_receipts(&ch.cfg.name, items).await {
                    Ok(results) => {
                        let forwarded = results
                            .iter()
                            .filter(|r| matches!(r, ReceiptResult::Forwarded { .. }))
                            .count();
                        ch.to_respondio.add_backlog(forwarded);
                        ch.to_respondio.wake();
                        Ok(json!({"receipts": results.len(), "forwarded": forwarded}))
                    }
                    Err(e) => return store_failed(e),
                }
            }
        },
        other => Err(format!("unknown route {other:?}")),
    };
    match committed {
        Ok(summary) => match state
            .admin_store()
            .delete_raw_webhook(id, &actor.0, "replay", Some(summary.to_string()))
            .await
        {
            Ok(_) => ok_json(json!({"outcome": "replayed", "result": summary})),
            Err(e) => store_failed(e),
        },
        Err(reason) => match state
            .admin_store()
            .update_raw_webhook_reason(id, &reason)
            .await
        {
            Ok(()) => ok_json(json!({"outcome": "still_unparseable", "reason": reason})),
            Err(e) => store_failed(e),
        },
    }
}

/// `POST /admin/raw-webhooks/{id}/discard`: deletes the kept body.
pub async fn discard_raw(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Response {
    match state
        .admin_store()
        .delete_raw_webhook(id, &actor.0, "discard", None)
        .await
    {
        Ok(true) => ok_json(json!({"discarded": [id]})),
        Ok(false) => not_found("no raw webhook with that id"),
        Err(e) => store_failed(e),
    }
}
