//! Provider webhooks: inbound messages and delivery receipts.
//!
//! Authenticity first (nothing is parsed or stored before it), then parse, dedupe and
//! commit, then answer. An authentic payload we cannot read is stored raw, answered 2xx
//! and dead-lettered: some providers retry a non-2xx for a day. A store failure answers
//! 503 so the provider retries: never 200-and-drop.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::json_error;
use super::logged::Tagged;
use crate::app::{AppState, Channel};
use crate::clock::now_ms;
use crate::providers::{InboundEvent, InboundKind, WebhookRequest, WebhookRoute};
use crate::respondio::wire::{Event, EventType, Message};
use crate::store::{IngestResult, ItemKind, NewInbound, ReceiptIn, ReceiptResult};

/// The provider's expected answer to a webhook we took.
fn reply(ch: &Channel, route: WebhookRoute) -> Response {
    let r = ch.provider.webhook_reply(route);
    (
        r.status,
        [(axum::http::header::CONTENT_TYPE, r.content_type)],
        r.body,
    )
        .into_response()
}

fn unavailable(channel: &str, e: crate::store::StoreError) -> Response {
    if let crate::store::StoreError::Overloaded(why) = &e {
        tracing::warn!(channel, reason = %why, "webhook refused: the store is overloaded; answering 503 so the provider retries");
        return super::overloaded("overloaded, try again later");
    }
    tracing::error!(channel, error = %e, "could not commit a webhook; answering 503 so the provider retries");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store unavailable, try again",
    )
}

struct Incoming {
    channel: Arc<Channel>,
    public_url: String,
    query: String,
}

fn prepare(state: &AppState, name: &str, uri: &axum::http::Uri) -> Result<Incoming, Response> {
    let channel = state
        .channel(name)
        .ok_or_else(|| json_error(StatusCode::NOT_FOUND, "unknown channel"))?;
    let base = state.cfg.server.public_url.trim_end_matches('/');
    let path_q = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Ok(Incoming {
        channel,
        public_url: format!("{base}{path_q}"),
        query: uri.query().unwrap_or("").to_string(),
    })
}

impl Incoming {
    fn request<'a>(&'a self, headers: &'a HeaderMap, body: &'a [u8]) -> WebhookRequest<'a> {
        WebhookRequest {
            query: &self.query,
            headers,
            body,
            public_url: &self.public_url,
        }
    }
}

/// Finds the channel and checks that the webhook is authentic, before anything is parsed
/// or stored: 404 for an unknown channel, 403 for a bad signature or secret (503 for a
/// missing one where the provider retries it signed, see `Provider::retry_unsigned`).
fn authentic(
    state: &AppState,
    name: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    route: &str,
) -> Result<Incoming, Response> {
    let inc = prepare(state, name, uri)?;
    if let Err(reason) = inc
        .channel
        .provider
        .authenticate(&inc.request(headers, body))
    {
        if inc
            .channel
            .provider
            .retry_unsigned(&inc.request(headers, body))
        {
            tracing::warn!(channel = %inc.channel.cfg.name, route, reason = %reason,
                "webhook refused: unsigned; answering 503 so the provider retries it signed");
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unsigned webhook; retry it signed",
            ));
        }
        tracing::warn!(channel = %inc.channel.cfg.name, route, reason = %reason, "webhook rejected: not authentic");
        return Err(json_error(StatusCode::FORBIDDEN, "forbidden"));
    }
    Ok(inc)
}

async fn store_raw(
    state: &AppState,
    ch: &Channel,
    route: WebhookRoute,
    headers: &HeaderMap,
    body: &[u8],
    reason: &str,
) -> Response {
    let route_name = route.path();
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match state
        .store
        .store_unparseable(&ch.cfg.name, route_name, ct, body.to_vec(), reason)
        .await
    {
        Ok(id) => {
            metrics::counter!("rio_unparseable_webhooks_total", "channel" => ch.cfg.name.clone(), "route" => route_name)
                .increment(1);
            tracing::warn!(channel = %ch.cfg.name, route = route_name, raw_id = id, reason, "authentic webhook could not be read: kept raw and dead-lettered");
            reply(ch, route)
        }
        Err(e) => unavailable(&ch.cfg.name, e),
    }
}

/// `POST /channels/{name}/inbound`.
pub async fn inbound(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inc = match authentic(&state, &name, &uri, &headers, &body, "inbound") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let ch = &inc.channel;
    let req = inc.request(&headers, &body);
    let events = match ch.provider.parse_inbound(&req) {
        Ok(ev) => ev,
        Err(reason) => {
            return store_raw(&state, ch, WebhookRoute::Inbound, &headers, &body, &reason).await;
        }
    };
    if let Some(bad) = events
        .iter()
        .find_map(|e| ch.cfg.id_type.validate(&e.contact_id).err())
    {
        return store_raw(&state, ch, WebhookRoute::Inbound, &headers, &body, &bad).await;
    }
    let now_s = (now_ms() / 1000) as u64;
    let items = match events
        .iter()
        .map(|e| to_new_inbound(e, &state, &ch.cfg.name, now_s))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(items) => items,
        Err(reason) => {
            return store_raw(&state, ch, WebhookRoute::Inbound, &headers, &body, &reason).await;
        }
    };
    let mids: Vec<String> = items.iter().map(|i| i.mid.clone()).collect();
    match state.store.ingest_inbound(&ch.cfg.name, items).await {
        Ok(results) => {
            for (r, mid) in results.iter().zip(&mids) {
                match r {
                    IngestResult::Stored { .. } => {
                        metrics::counter!("rio_accepted_total", "channel" => ch.cfg.name.clone(), "direction" => "to_respondio")
                            .increment(1);
                        tracing::info!(channel = %ch.cfg.name, mid = %mid, "inbound accepted");
                    }
                    IngestResult::Duplicate => {
                        metrics::counter!("rio_duplicates_total", "channel" => ch.cfg.name.clone())
                            .increment(1);
                        tracing::info!(channel = %ch.cfg.name, mid = %mid, "inbound redelivery dropped (duplicate)");
                    }
                }
            }
            let stored = results
                .iter()
                .filter(|r| matches!(r, IngestResult::Stored { .. }))
                .count();
            ch.to_respondio.add_backlog(stored);
            ch.to_respondio.wake();
            for (e, r) in events.iter().zip(&results) {
                if let (Some(m), IngestResult::Stored { .. }) = (&e.media, r) {
                    state
                        .media
                        .prefetch(ch.cfg.name.clone(), ch.provider.clone(), m.clone());
                }
            }
            let stored_mids = results
                .iter()
                .zip(mids)
                .filter(|(r, _)| matches!(r, IngestResult::Stored { .. }))
                .map(|(_, m)| m)
                .collect();
            Tagged::on(reply(ch, WebhookRoute::Inbound), &ch.cfg.name, stored_mids)
        }
        Err(e) => unavailable(&ch.cfg.name, e),
    }
}

pub(crate) fn to_new_inbound(
    e: &InboundEvent,
    state: &AppState,
    channel: &str,
    now_s: u64,
) -> Result<NewInbound, String> {
    let mid = ulid::Ulid::new().to_string();
    // An attachment respond.io cannot fetch as given goes out under our signed media URL.
    let mut message = e.message.clone();
    if let Some(media) = &e.media {
        match &mut message {
            Message::Attachment { attachment } => {
                attachment.url = state.media.signed_url(channel, media, now_s);
            }
            _ => {
                return Err(
                    "provider gave proxied media for a message that is not an attachment".into(),
                );
            }
        }
    }
    let (kind, event_type) = match e.kind {
        InboundKind::Message => (ItemKind::Message, EventType::Message),
        InboundKind::Echo => (ItemKind::Echo, EventType::MessageEcho),
    };
    // respond.io wants epoch milliseconds; a provider clock in seconds would look like 1970.
    let ts = if e.timestamp_ms < 1_000_000_000_000 {
        now_ms()
    } else {
        e.timestamp_ms
    };
    let event = Event {
        kind: event_type,
        mid: mid.clone(),
        timestamp: ts,
        message: Some(message),
        status: None,
    };
    let contact_json = match &e.contact {
        Some(c) if !c.is_empty() => Some(serde_json::to_string(c).map_err(|e| e.to_string())?),
        _ => None,
    };
    Ok(NewInbound {
        dedupe_key: e.dedupe_key.clone(),
        contact: e.contact_id.clone(),
        kind,
        mid,
        event_json: serde_json::to_string(&event).map_err(|e| e.to_string())?,
        contact_json,
        provider_id: e.provider_id.clone(),
    })
}

/// `POST /channels/{name}/status`.
pub async fn status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inc = match authentic(&state, &name, &uri, &headers, &body, "status") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let ch = &inc.channel;
    let req = inc.request(&headers, &body);
    let receipts = match ch.provider.parse_receipts(&req) {
        Ok(r) => r,
        Err(reason) => {
            return store_raw(&state, ch, WebhookRoute::Status, &headers, &body, &reason).await;
        }
    };
    let items = receipts
        .into_iter()
        .map(|r| ReceiptIn {
            dedupe_key: r.dedupe_key,
            provider_id: r.provider_id,
            status: r.status,
            reason: r.reason,
        })
        .collect();
    match state.store.apply_receipts(&ch.cfg.name, items).await {
        Ok(results) => {
            let mut forwarded = false;
            for r in &results {
                match r {
                    ReceiptResult::Forwarded { mid, status, .. } => {
                        forwarded = true;
                        tracing::info!(channel = %ch.cfg.name, mid = %mid, status = status.as_str(), "receipt applied");
                    }
                    ReceiptResult::Ignored { mid, why } => {
                        tracing::info!(channel = %ch.cfg.name, mid = %mid, why = %why, "receipt not forwarded")
                    }
                    ReceiptResult::Parked => {
                        tracing::info!(channel = %ch.cfg.name, "receipt for an unknown provider id parked until its send records it")
                    }
                    ReceiptResult::Duplicate => {
                        tracing::info!(channel = %ch.cfg.name, "receipt redelivery dropped")
                    }
                }
            }
            if forwarded {
                let n = results
                    .iter()
                    .filter(|r| matches!(r, ReceiptResult::Forwarded { .. }))
                    .count();
                ch.to_respondio.add_backlog(n);
                ch.to_respondio.wake();
            }
            // The receipt shows in the history of the sends it concerns.
            let mids = results
                .iter()
                .filter_map(|r| match r {
                    ReceiptResult::Forwarded { mid, .. } | ReceiptResult::Ignored { mid, .. } => {
                        Some(mid.clone()).filter(|m| !m.is_empty())
                    }
                    _ => None,
                })
                .collect();
            Tagged::on(reply(ch, WebhookRoute::Status), &ch.cfg.name, mids)
        }
        Err(e) => unavailable(&ch.cfg.name, e),
    }
}
