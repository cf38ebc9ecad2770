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
        .layer(middleware::from_fn_with_state(
            Arc::new(Inflight::new(
                state.cfg.server.max_concurrent_requests,
                state.cfg.server.max_concurrent_webhooks,
            )),
            admit,
        ))
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

/// What an overloaded gateway asks a client to wait before it tries again.
pub const RETRY_AFTER_SECS: u64 = 1;

/// 503 with `Retry-After`: too much work is waiting already; nothing was taken.
pub fn overloaded(message: &str) -> Response {
    let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(RETRY_AFTER_SECS),
    );
    r
}

/// Requests being handled on the public listener, by kind.
struct Inflight {
    all: std::sync::atomic::AtomicUsize,
    webhooks: std::sync::atomic::AtomicUsize,
    max: usize,
    webhook_max: usize,
}

impl Inflight {
    fn new(max: usize, webhook_max: usize) -> Inflight {
        Inflight {
            all: Default::default(),
            webhooks: Default::default(),
            max: max.max(1),
            webhook_max: webhook_max.max(1),
        }
    }
}

/// Takes one of `counter`'s `limit` places, or `None` when all are taken.
fn take_place(counter: &std::sync::atomic::AtomicUsize, limit: usize) -> Option<()> {
    use std::sync::atomic::Ordering;
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| ())
}

/// Gives the places taken back when the request is done (or dropped).
struct Places<'a>(&'a Inflight, bool);

impl Drop for Places<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::AcqRel;
        self.0.all.fetch_sub(1, AcqRel);
        if self.1 {
            self.0.webhooks.fetch_sub(1, AcqRel);
        }
    }
}

/// Bounds the requests handled at once (`server.max_concurrent_requests`): beyond it a
/// request is answered 503 with `Retry-After` before its body is read. Provider webhooks
/// have the smaller share (`server.max_concurrent_webhooks`), so under a flood they are
/// refused first and respond.io's `/message` still gets in. Health checks are never
/// refused.
async fn admit(
    axum::extract::State(inflight): axum::extract::State<Arc<Inflight>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let webhook =
        path.starts_with("/channels/") && (path.ends_with("/inbound") || path.ends_with("/status"));
    if take_place(&inflight.all, inflight.max).is_none() {
        return overloaded("too many requests in progress, try again");
    }
    if webhook && take_place(&inflight.webhooks, inflight.webhook_max).is_none() {
        inflight
            .all
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        return overloaded("too many webhooks in progress, try again");
    }
    let _places = Places(&inflight, webhook);
    next.run(req).await
}

/// Records the latency of every request by route. A request whose client hung up before
/// the answer (its handler was dropped) is recorded with status 499.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let mut seen = Observed {
        route,
        started: Instant::now(),
        status: None,
    };
    let resp = next.run(req).await;
    seen.status = Some(resp.status().as_u16());
    resp
}

struct Observed {
    route: String,
    started: Instant,
    /// `None` until the handler answered.
    status: Option<u16>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(499).to_string();
        ::metrics::histogram!("rio_http_request_duration_seconds", "route" => std::mem::take(&mut self.route), "status" => status)
            .record(self.started.elapsed().as_secs_f64());
    }
}
