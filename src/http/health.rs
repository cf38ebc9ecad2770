//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::app::AppState;

/// The process is up and answering.
pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
}

/// Ready when the store accepts a committed write and every lane is running here or, in a
/// cluster, owned by another node while this one stands by.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let store = state.store.probe_write().await;
    let stopped: Vec<String> = state
        .channels()
        .by_name
        .values()
        .flat_map(|c| [&c.to_respondio, &c.to_provider])
        .filter(|l| !l.is_running() && !l.is_standby())
        .map(|l| format!("{}/{}", l.channel, l.lane.name()))
        .collect();
    let ok = store.is_ok() && stopped.is_empty();
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not ready" },
        "store": match &store { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
        "lanes_not_running": stopped,
    });
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
