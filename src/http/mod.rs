//! The HTTP surface: respond.io's `/message`, the providers' webhooks, health and metrics.

pub mod admin;
pub mod body_deadline;
pub mod console;
pub mod health;
pub mod logged;
pub mod media;
pub mod message;
pub mod metrics;
pub mod serve;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::AppState;
use crate::respondio::wire::error_body;

/// The public router. `/admin`, `/console` and `/metrics` are on it only when no internal listener
/// (`server.admin_listen`) is configured.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.server.max_body_bytes;
    let deadline = body_deadline::BodyDeadline {
        timeout: Duration::from_millis(state.cfg.server.body_read_timeout_ms),
        max_bytes: limit,
    };
    let mut r = Router::new();
    if state.cfg.server.admin_listen.is_none() {
        r = r.route("/metrics", get(metrics::render));
        if let Some(admin) = admin::router(state.clone()) {
            r = r.merge(admin).merge(console::router());
        }
    }
    // The routes whose exchanges go into the channel log.
    let logged = Router::new()
        .route("/channels/{name}/message", post(message::by_name))
        .route("/channels/{name}//message", post(message::by_name))
        .route("/message", post(message::by_channel_id))
        .route("//message", post(message::by_channel_id))
        .route(
            "/channels/{name}/inbound",
            post(webhooks::inbound).get(webhooks::inbound),
        )
        .route(
            "/channels/{name}/status",
            post(webhooks::status).get(webhooks::status),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            logged::record,
        ));
    r.merge(logged)
        // Outside the channel log: media bytes are not an exchange of a message.
        .route("/media/{channel}/{src}", get(media::get))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(middleware::from_fn_with_state(
            deadline,
            body_deadline::read_body_in_time,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// The internal listener's router: `/admin`, `/console`, `/metrics` and the health checks.
pub fn internal_router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.server.max_body_bytes;
    let mut r = Router::new()
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if let Some(admin) = admin::router(state.clone()) {
        r = r.merge(admin).merge(console::router());
    }
    r.fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// respond.io's error shape: `{"error":{"message":"..."}}`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(error_body(message))).into_response()
}

/// Records the latency of every request by route.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    ::metrics::histogram!("rio_http_request_duration_seconds", "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    resp
}
