//! Records the exchanges that reach us (provider webhooks, respond.io's `/message`) in the
//! channel log. A layer, so handlers only say which messages an exchange belongs to (a
//! [`Tagged`] response extension); the request and answer are captured here.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::channel_log::{Direction, Exchange};

/// Set by a handler on its response: the channel and the mIds the exchange concerns.
#[derive(Debug, Clone, Default)]
pub struct Tagged {
    pub channel: String,
    pub mids: Vec<String>,
}

impl Tagged {
    pub fn on(mut resp: Response, channel: &str, mids: Vec<String>) -> Response {
        resp.extensions_mut().insert(Tagged {
            channel: channel.to_string(),
            mids,
        });
        resp
    }
}

/// Our answers are small; anything larger is cut (the log keeps 4 KiB anyway).
const ANSWER_MAX: usize = 64 * 1024;

pub async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let kind = if route.ends_with("/inbound") {
        "webhook_inbound"
    } else if route.ends_with("/status") {
        "webhook_status"
    } else {
        "message"
    };
    let public = state.cfg.server.public_url.trim_end_matches('/');
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut ex = Exchange::new(
        Direction::In,
        kind,
        req.method().as_str(),
        &format!("{public}{path_q}"),
    )
    .headers_from(req.headers());
    // The path names the channel for /channels/{name}/...; `/message` handlers tag it.
    let path_channel = req
        .uri()
        .path()
        .strip_prefix("/channels/")
        .and_then(|p| p.split('/').next())
        .map(str::to_string);
    let (parts, body) = req.into_parts();
    // The body limit layer outside this one has bounded the body already.
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return crate::http::json_error(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body: {e}"),
            );
        }
    };
    ex.request_body = bytes.to_vec();
    let started = Instant::now();
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    ex.duration = started.elapsed();
    ex.status = Some(resp.status().as_u16());
    let tag = resp.extensions().get::<Tagged>().cloned();
    let channel = match (&tag, path_channel) {
        (Some(t), _) => Some(t.channel.clone()),
        // Only configured channels: requests to made-up names must not fill the log.
        (None, Some(c)) if state.channel(&c).is_some() => Some(c),
        _ => None,
    };
    let Some(channel) = channel else {
        return resp;
    };
    let (parts, body) = resp.into_parts();
    let answer = to_bytes(body, ANSWER_MAX).await.unwrap_or_default();
    ex.response_body = answer.to_vec();
    let mids = tag.map(|t| t.mids).unwrap_or_default();
    state.channel_log.record(&channel, &mids, &ex);
    Response::from_parts(parts, Body::from(answer))
}
