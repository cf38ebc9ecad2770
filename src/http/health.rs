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

/// What `/readyz` checks: the store accepts a committed write and every lane is running
/// here or, in a cluster, owned by another node while this one stands by.
pub struct Readiness {
    pub store: Result<(), String>,
    /// `channel/direction` of each lane that neither runs here nor stands by.
    pub lanes_not_running: Vec<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.store.is_ok() && self.lanes_not_running.is_empty()
    }
}

pub async fn readiness(state: &AppState) -> Readiness {
    let store = state.store.probe_write().await.map_err(|e| e.to_string());
    let lanes_not_running = state
        .channels()
        .by_name
        .values()
        .flat_map(|c| [&c.to_respondio, &c.to_provider])
        .filter(|l| !l.is_running() && !l.is_standby())
        .map(|l| format!("{}/{}", l.channel, l.lane.name()))
        .collect();
    Readiness {
        store,
        lanes_not_running,
    }
}

/// 200 when ready (see [`Readiness`]), 503 with what is not.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let r = readiness(&state).await;
    let ok = r.is_ready();
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not ready" },
        "store": match &r.store { Ok(()) => "ok", Err(e) => e.as_str() },
        "lanes_not_running": r.lanes_not_running,
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
