//! `GET /admin/lanes/history`: the last hour of every lane (see `crate::lane_history`),
//! for plots of depth and rate.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ok_json, query};
use crate::app::AppState;
use crate::clock::now_ms;
use crate::lane_history::{KEEP_MS, LaneSeries, SAMPLE_EVERY};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Epoch ms: only samples taken at or after it (a console that has the earlier ones
    /// asks for the rest). Default: an hour ago.
    since: Option<i64>,
}

/// One lane as columns (one array per field, same length, oldest first): an hour of
/// samples is 720 per lane, and columns keep that a few kilobytes.
fn columns(s: &LaneSeries) -> Value {
    let col = |f: fn(&crate::lane_history::Sample) -> Value| -> Vec<Value> {
        s.samples.iter().map(f).collect()
    };
    json!({
        "channel": s.channel,
        "direction": s.lane.name(),
        "at_ms": col(|x| x.at_ms.into()),
        "interval_ms": col(|x| x.interval_ms.into()),
        "depth": col(|x| x.depth.into()),
        "oldest_age_ms": col(|x| x.oldest_age_ms.into()),
        "dead": col(|x| x.dead.into()),
        "requests": col(|x| x.requests.into()),
        "delivered": col(|x| x.delivered.into()),
        "failed": col(|x| x.failed.into()),
    })
}

pub async fn lanes(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let q: HistoryQuery = match query(q.as_deref()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let now = now_ms();
    let since = q.since.unwrap_or(now - KEEP_MS);
    ok_json(json!({
        "now_ms": now,
        "sample_every_ms": SAMPLE_EVERY.as_millis() as i64,
        "lanes": state.lane_history.series(since).iter().map(columns).collect::<Vec<_>>(),
    }))
}
