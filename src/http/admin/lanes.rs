//! Lanes (depths, rates, pause/resume), contact purge, and the audit log.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::views::parse_lane;
use super::{
    Actor, bad_request, cursor, json_body, next_cursor, not_found, ok_json, page_size, query,
    store_failed,
};
use crate::app::{AppState, Channel};
use crate::clock::now_ms;
use crate::lanes::LaneCtx;
use crate::store::Lane;

/// The window lane rates are averaged over.
const RATE_WINDOW_MS: i64 = 60_000;
/// An indefinite pause ends in the year 9999: far enough, and still safe to add to.
pub const PAUSED_INDEFINITELY_MS: i64 = 253_402_300_799_000;

fn lane_of(ch: &Channel, lane: Lane) -> &Arc<LaneCtx> {
    match lane {
        Lane::RespondIo => &ch.to_respondio,
        Lane::Provider => &ch.to_provider,
    }
}

/// `GET /admin/lanes`: every lane with its depth, age, dead letters, pause, circuit and
/// request rates over the last minute, as numbers; then the lanes of channels no longer
/// configured (a reload removed them) that still hold items, with `configured: false`.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let (stats, activity) = match (
        state.store.lane_stats().await,
        state
            .admin_store()
            .lane_activity(now_ms() - RATE_WINDOW_MS)
            .await,
    ) {
        (Ok(s), Ok(a)) => (s, a),
        (Err(e), _) | (_, Err(e)) => return store_failed(e),
    };
    let now = now_ms();
    let set = state.channels();
    let mut names: Vec<&String> = set.by_name.keys().collect();
    names.sort();
    let mut lanes = Vec::new();
    for name in names {
        let ch = &set.by_name[name];
        for lane in [Lane::RespondIo, Lane::Provider] {
            let ctx = lane_of(ch, lane);
            let s = stats.iter().find(|s| &s.channel == name && s.lane == lane);
            let a = activity
                .iter()
                .find(|a| &a.channel == name && a.lane == lane);
            let paused_until = ctx.paused_until();
            let requests = a.map_or(0, |a| a.requests);
            let delivered = a.map_or(0, |a| a.delivered);
            lanes.push(json!({
                "channel": name,
                "configured": true,
                "direction": lane.name(),
                "depth": s.map_or(0, |s| s.pending),
                "oldest_pending_age_ms": s.and_then(|s| s.oldest_pending_ms).map(|t| (now - t).max(0)),
                "dead": s.map_or(0, |s| s.dead),
                "paused": paused_until > now,
                "paused_until_ms": (paused_until > now).then_some(paused_until),
                "paused_indefinitely": paused_until >= PAUSED_INDEFINITELY_MS,
                "circuit_open": ctx.circuit_is_open(),
                "running": ctx.is_running(),
                "rate_limit_per_sec": ctx.rate_limit,
                "requests_last_minute": requests,
                "requests_per_sec": requests as f64 / (RATE_WINDOW_MS as f64 / 1000.0),
                "delivered_last_minute": delivered,
                "delivered_per_sec": delivered as f64 / (RATE_WINDOW_MS as f64 / 1000.0),
            }));
        }
    }
    // Channels a reload removed that still have items in the store: their items are kept
    // (parked, never dropped) and go out when the channel is configured again.
    let mut parked: Vec<_> = stats
        .iter()
        .filter(|s| !set.by_name.contains_key(&s.channel) && (s.pending > 0 || s.dead > 0))
        .collect();
    parked.sort_by(|a, b| (&a.channel, a.lane).cmp(&(&b.channel, b.lane)));
    for s in parked {
        lanes.push(json!({
            "channel": s.channel,
            "configured": false,
            "direction": s.lane.name(),
            "depth": s.pending,
            "oldest_pending_age_ms": s.oldest_pending_ms.map(|t| (now - t).max(0)),
            "dead": s.dead,
            "running": false,
        }));
    }
    ok_json(json!({"lanes": lanes}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// Pause for this long; absent: until resumed.
    for_secs: Option<u64>,
}

fn find_lane(state: &AppState, channel: &str, direction: &str) -> Result<Arc<LaneCtx>, Response> {
    let lane = parse_lane(direction).map_err(bad_request)?;
    let ch = state
        .channel(channel)
        .ok_or_else(|| not_found("unknown channel"))?;
    Ok(lane_of(&ch, lane).clone())
}

/// `POST /admin/lanes/{channel}/{direction}/pause`: nothing is sent on the lane until it is
/// resumed (or `for_secs` pass); attempts already dispatched stop before they send. The
/// pause survives a restart. `/message` still accepts (and answers at once) meanwhile.
pub async fn pause(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path((channel, direction)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let ctx = match find_lane(&state, &channel, &direction) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let b: PauseBody = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let until = match b.for_secs {
        Some(0) => return bad_request("for_secs must be at least 1"),
        Some(s) => now_ms().saturating_add((s.min(10 * 365 * 86_400) as i64) * 1000),
        None => PAUSED_INDEFINITELY_MS,
    };
    // Persist first: a pause the store did not take must not look like it worked.
    if let Err(e) = state
        .admin_store()
        .pause_lane(&channel, ctx.lane, until, &actor.0)
        .await
    {
        return store_failed(e);
    }
    ctx.set_paused_until(until);
    tracing::warn!(channel = %channel, lane = ctx.lane.name(), actor = %actor.0, until_ms = until, "lane paused by an operator");
    ok_json(json!({"channel": channel, "direction": ctx.lane.name(), "paused_until_ms": until}))
}

/// `POST /admin/lanes/{channel}/{direction}/resume`: lifts the pause (an operator's or a
/// 429's) and wakes the lane at once.
pub async fn resume(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path((channel, direction)): Path<(String, String)>,
) -> Response {
    let ctx = match find_lane(&state, &channel, &direction) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = state
        .admin_store()
        .resume_lane(&channel, ctx.lane, now_ms(), &actor.0)
        .await
    {
        return store_failed(e);
    }
    ctx.set_paused_until(0);
    tracing::info!(channel = %channel, lane = ctx.lane.name(), actor = %actor.0, "lane resumed by an operator");
    ok_json(json!({"channel": channel, "direction": ctx.lane.name(), "paused": false}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    channel: String,
    contact: String,
}

/// `POST /admin/contacts/purge`: deletes one contact's messages, history, attempts,
/// channel logs, dedupe keys, parked receipts, raw webhooks and profile. In the body, not
/// the URL, so the contact id does not land in access logs.
pub async fn purge(
    State(state): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Response {
    let b: PurgeBody = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if state.channel(&b.channel).is_none() {
        return not_found("unknown channel");
    }
    if b.contact.trim().is_empty() {
        return bad_request("contact is required");
    }
    match state
        .admin_store()
        .purge_contact(&b.channel, &b.contact, &actor.0)
        .await
    {
        Ok(report) if report.in_flight > 0 => crate::http::json_error(
            axum::http::StatusCode::CONFLICT,
            "a message of this contact is being sent right now; purge again in a moment",
        ),
        Ok(report) => {
            tracing::warn!(channel = %b.channel, actor = %actor.0, items = report.items, "contact purged");
            ok_json(json!({"purged": report}))
        }
        Err(e) => store_failed(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    actor: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/audit`: who replayed, discarded, paused, resumed or purged what, newest first.
pub async fn audit(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let q: AuditQuery = match query(q.as_deref()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (limit, before) = match (page_size(q.limit), cursor(q.cursor.as_deref())) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    match state
        .admin_store()
        .list_audit(q.actor.filter(|a| !a.is_empty()), before, limit)
        .await
    {
        Ok(rows) => ok_json(json!({
            "items": rows,
            "next_cursor": next_cursor(rows.iter().map(|r| r.id), rows.len(), limit),
        })),
        Err(e) => store_failed(e),
    }
}
