//! `POST /message`: respond.io hands us a message to send.
//!
//! Check the bearer token (constant time), validate, commit, hand the item to its lane
//! and wait for the first attempt's outcome up to the budget. Accepted, retrying, or
//! budget spent → 200 `{"mId"}`; rejected for good → 400 with the provider's reason.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::json_error;
use crate::app::{AppState, Channel};
use crate::lanes::FirstOutcome;
use crate::respondio::wire::OutboundRequest;
use crate::store::NewOutbound;

/// `POST /channels/{name}/message`.
pub async fn by_name(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(channel) = state.channel(&name) else {
        return json_error(StatusCode::NOT_FOUND, "unknown channel");
    };
    if let Err(r) = check_token(&channel, &headers) {
        return r;
    }
    let req = match OutboundRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    accept(&state, &channel, req).await
}

/// `POST /message`: the channel is the one whose respond.io id is the body's `channelId`,
/// and the bearer token must be that channel's.
pub async fn by_channel_id(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bearer(&headers).is_none() {
        return json_error(StatusCode::UNAUTHORIZED, "missing bearer token");
    }
    let req = match OutboundRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    let channel = req
        .channel_id
        .as_deref()
        .and_then(|id| state.channel_by_respondio_id(id));
    // An unknown channelId answers like a wrong token, so ids cannot be probed.
    let Some(channel) = channel else {
        return json_error(StatusCode::UNAUTHORIZED, "invalid token for this channelId");
    };
    if let Err(r) = check_token(&channel, &headers) {
        return r;
    }
    // The path names no channel here: say which one, so the exchange is logged under it
    // even when it was refused before a message was made.
    let resp = accept(&state, &channel, req).await;
    if resp.extensions().get::<super::logged::Tagged>().is_some() {
        resp
    } else {
        super::logged::Tagged::on(resp, &channel.cfg.name, Vec::new())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn check_token(channel: &Channel, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = bearer(headers) else {
        return Err(json_error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    // Both comparisons always run, so timing does not tell which token matched.
    let current = channel.cfg.respondio_token.matches(token);
    let next = channel
        .cfg
        .respondio_token_next
        .as_ref()
        .is_some_and(|t| t.matches(token));
    if current | next {
        Ok(())
    } else {
        Err(json_error(StatusCode::UNAUTHORIZED, "invalid token"))
    }
}

/// Stops listening and takes an outcome the lane sent before that, if any. After the
/// close no outcome can be sent, so the lane knows nobody heard it (and reports a later
/// failure as a `message_status`).
fn heard_by_now(rx: &mut tokio::sync::oneshot::Receiver<FirstOutcome>) -> FirstOutcome {
    rx.close();
    rx.try_recv().unwrap_or(FirstOutcome::Pending)
}

/// Forgets a `/message` waiter when dropped.
struct ForgetOnDrop<'a>(&'a crate::lanes::Waiters, &'a str);

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

async fn accept(state: &AppState, channel: &Arc<Channel>, req: OutboundRequest) -> Response {
    let cfg = &channel.cfg;
    // On `/channels/{name}/message` the path and the token name the channel; respond.io
    // has been seen sending its id in other forms (a number, another prefix), so a body
    // whose `channelId` differs is taken, and the difference logged. Where `channelId` is
    // what names the channel (`/message`) it matched to get here.
    if let Some(id) = &req.channel_id
        && *id != cfg.respondio_channel_id
    {
        tracing::warn!(channel = %cfg.name, body_channel_id = %id, configured = %cfg.respondio_channel_id,
            "the body's channelId differs from the channel's respondio_channel_id; taken, since the path and token name the channel");
    }
    if let Err(e) = cfg.id_type.validate(&req.contact_id) {
        return json_error(StatusCode::BAD_REQUEST, &e);
    }
    let mid = ulid::Ulid::new().to_string();
    let message_json = match serde_json::to_string(&req.message) {
        Ok(j) => j,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("message cannot be stored: {e}"),
            );
        }
    };
    let window_ms = (cfg.delivery.conversation_window_secs as i64).saturating_mul(1000);
    let item = NewOutbound {
        mid: mid.clone(),
        contact: req.contact_id.clone(),
        message_json,
    };
    // Listen before committing: the lane may finish the first attempt before we would
    // otherwise get to listen.
    let mut rx = channel.waiters.register(&mid);
    // However this ends (answered, or the caller hung up and this future was dropped),
    // nobody listens for the outcome afterwards.
    let _forget = ForgetOnDrop(&channel.waiters, &mid);
    let accepted = match state
        .store
        .accept_outbound(&cfg.name, item, window_ms)
        .await
    {
        Ok(a) => a,
        Err(crate::store::StoreError::Overloaded(why)) => {
            tracing::warn!(channel = %cfg.name, mid = %mid, reason = %why, "outbound refused: the store is overloaded");
            return super::overloaded("overloaded, try again later");
        }
        Err(e) => {
            tracing::error!(channel = %cfg.name, mid = %mid, error = %e, "could not commit an outbound message");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable, try again",
            );
        }
    };
    metrics::counter!("rio_accepted_total", "channel" => cfg.name.clone(), "direction" => "to_provider").increment(1);
    tracing::info!(channel = %cfg.name, mid = %mid, contact = %req.contact_id, "outbound accepted");
    let lane = &channel.to_provider;
    let backlog_before = lane.backlog();
    lane.add_backlog(1);
    lane.wake();
    // Lane busy: a bulk send with more items ahead of it than the lane has rate slots free
    // right now cannot be attempted now; answer at once rather than hold the connection (a
    // broadcast burst would otherwise be accepted only as fast as it drains). Conversation
    // sends go ahead of bulk, so they wait for their outcome. A paused lane (429) or an
    // open circuit will not attempt anything soon either. Nor will a lane another node of
    // a cluster owns: its attempt cannot reach this handler, so the answer is 200 now and a
    // later rejection reaches respond.io as a `failed` status (polling the store for the
    // outcome instead would make the owner, which hears no waiter, report it twice).
    let busy = lane.is_blocked() || (!accepted.conversation && backlog_before > lane.free_slots());
    let outcome = if busy {
        // The lane may have tried and rejected it already: that answer must not be lost.
        heard_by_now(&mut rx)
    } else {
        let budget = Duration::from_millis(state.cfg.server.message_budget_ms);
        match tokio::time::timeout(budget, &mut rx).await {
            Ok(Ok(o)) => o,
            _ => heard_by_now(&mut rx),
        }
    };
    let resp = match outcome {
        FirstOutcome::Rejected(reason) => {
            tracing::info!(channel = %cfg.name, mid = %mid, reason = %reason, "outbound rejected by the provider");
            json_error(StatusCode::BAD_REQUEST, &reason)
        }
        FirstOutcome::Accepted | FirstOutcome::Pending => {
            (StatusCode::OK, Json(serde_json::json!({ "mId": mid }))).into_response()
        }
    };
    super::logged::Tagged::on(resp, &cfg.name, vec![mid.clone()])
}
