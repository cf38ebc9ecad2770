//! Prometheus metrics: the recorder, `/metrics`, and the queue gauges read from the store.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;
use crate::clock::now_ms;

/// The process-wide recorder (installed once, even when tests build several apps).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; then ours just renders empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub async fn render(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    publish_lane_stats(&state).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Lane depth, age of the oldest pending item and dead letters, per channel and direction.
pub async fn publish_lane_stats(state: &AppState) {
    let Ok(stats) = state.store.lane_stats().await else {
        metrics::gauge!("rio_store_up").set(0.0);
        return;
    };
    metrics::gauge!("rio_store_up").set(1.0);
    let now = now_ms();
    for ch in state.channels().by_name.values() {
        for lane in [crate::store::Lane::RespondIo, crate::store::Lane::Provider] {
            let s = stats
                .iter()
                .find(|s| s.channel == ch.cfg.name && s.lane == lane);
            // Re-sync the lanes' running backlog counts, which drift a little (collapsed
            // statuses, duplicates).
            let ctx = if lane == crate::store::Lane::RespondIo {
                &ch.to_respondio
            } else {
                &ch.to_provider
            };
            ctx.set_backlog(s.map_or(0, |s| s.pending));
            let labels = [
                ("channel", ch.cfg.name.clone()),
                ("direction", lane.name().to_string()),
            ];
            metrics::gauge!("rio_lane_depth", &labels).set(s.map_or(0, |s| s.pending) as f64);
            let age = s
                .and_then(|s| s.oldest_pending_ms)
                .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0);
            metrics::gauge!("rio_lane_oldest_pending_seconds", &labels).set(age);
            metrics::gauge!("rio_dead_letters", &labels).set(s.map_or(0, |s| s.dead) as f64);
        }
    }
}
