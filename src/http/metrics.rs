//! Prometheus metrics: the recorder, `/metrics`, the queue gauges read from the store and
//! the readiness gauge. deploy/prometheus/ and deploy/grafana/ build on these names
//! (tests/deploy.rs checks them against a running gateway).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;
use crate::clock::now_ms;
use crate::providers::WebhookRoute;
use crate::store::Lane;

/// Counters of each lane, labelled `channel` and `direction`.
const LANE_COUNTERS: [&str; 8] = [
    "rio_accepted_total",
    "rio_delivered_total",
    "rio_failed_total",
    "rio_dead_total",
    "rio_retries_total",
    "rio_throttled_total",
    "rio_channel_faults_total",
    "rio_expired_total",
];

/// How long the readiness gauge waits for the store's write probe. A stalled store then
/// reads as not ready well within Prometheus's scrape timeout (10 s by default) instead of
/// making the whole scrape fail.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
    // Read first: the lane statistics and the readiness probe below may wait behind it.
    let depth = state.store.queue_depth();
    for (class, n) in [
        ("webhook", depth.webhook),
        ("message", depth.message),
        ("internal", depth.internal),
    ] {
        metrics::gauge!("rio_store_queue_depth", "class" => class).set(n as f64);
    }
    publish_lane_stats(&state).await;
    publish_readiness(&state).await;
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
        // Counters exist from the first scrape on, at 0: a series that first appears at 1
        // shows no increase, so an alert on `increase()` would miss a lane's first dead
        // letter or 429.
        let channel = [("channel", ch.cfg.name.clone())];
        metrics::counter!("rio_duplicates_total", &channel).increment(0);
        metrics::counter!("rio_channel_log_dropped_total", &channel).increment(0);
        for route in [WebhookRoute::Inbound, WebhookRoute::Status] {
            metrics::counter!("rio_unparseable_webhooks_total", "channel" => ch.cfg.name.clone(), "route" => route.path())
                .increment(0);
        }
        for lane in [Lane::RespondIo, Lane::Provider] {
            let s = stats
                .iter()
                .find(|s| s.channel == ch.cfg.name && s.lane == lane);
            // Re-sync the lanes' running backlog counts, which drift a little (collapsed
            // statuses, duplicates).
            let ctx = if lane == Lane::RespondIo {
                &ch.to_respondio
            } else {
                &ch.to_provider
            };
            ctx.set_backlog(s.map_or(0, |s| s.pending));
            let labels = [
                ("channel", ch.cfg.name.clone()),
                ("direction", lane.name().to_string()),
            ];
            for name in LANE_COUNTERS {
                metrics::counter!(name, &labels).increment(0);
            }
            // The runner's own gauges are set by the node that runs the lane. Where it does
            // not run (a standby node in a cluster, or after the lease moved away) they
            // read 0, not the last value this node saw, so a max across nodes is the
            // lane's state.
            let running = ctx.is_running();
            metrics::gauge!("rio_lane_running", &labels).set(if running { 1.0 } else { 0.0 });
            if !running {
                metrics::gauge!("rio_lane_paused", &labels).set(0.0);
                metrics::gauge!("rio_lane_circuit_open", &labels).set(0.0);
                metrics::gauge!("rio_lane_inflight", &labels).set(0.0);
            }
            metrics::gauge!("rio_lane_depth", &labels).set(s.map_or(0, |s| s.pending) as f64);
            let age = s
                .and_then(|s| s.oldest_pending_ms)
                .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0);
            metrics::gauge!("rio_lane_oldest_pending_seconds", &labels).set(age);
            metrics::gauge!("rio_dead_letters", &labels).set(s.map_or(0, |s| s.dead) as f64);
            metrics::gauge!("rio_unconfigured_items", &labels).set(0.0);
        }
    }
    // Items of channels a reload removed: kept in the store, sent when the channel is
    // configured again. An alert on this gauge catches a channel removed by mistake.
    let set = state.channels();
    for s in stats
        .iter()
        .filter(|s| !set.by_name.contains_key(&s.channel))
    {
        let labels = [
            ("channel", s.channel.clone()),
            ("direction", s.lane.name().to_string()),
        ];
        metrics::gauge!("rio_unconfigured_items", &labels).set(s.pending as f64);
    }
}

/// `rio_ready`: 1 when `/readyz` would answer 200 (the same check), else 0.
pub async fn publish_readiness(state: &AppState) {
    let ready = tokio::time::timeout(READY_PROBE_TIMEOUT, super::health::readiness(state))
        .await
        .is_ok_and(|r| r.is_ready());
    metrics::gauge!("rio_ready").set(if ready { 1.0 } else { 0.0 });
}
