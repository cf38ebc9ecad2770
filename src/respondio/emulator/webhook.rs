//! `POST /custom/channel/webhook/`: respond.io's inbound webhook (§4).
//!
//! Order of checks for one call:
//! 1. read the body (≤ [`MAX_BODY_BYTES`]) and parse it, remembering any failure for step 5;
//! 2. authenticate the bearer token (401) — the token decides the channel;
//! 3. count the call in that channel's sliding window (every authenticated call counts);
//! 4. a queued injected fault answers instead of anything else; otherwise over the limit → 429;
//! 5. Content-Type, body size (413), JSON, then the envelope (400/401 with a reason);
//! 6. record the accepted events and answer 200.
//!
//! [UNK] §4.7: respond.io's response bodies are unknown. Rejections answer
//! `{"error":{"message":"<reason>"}}` (the same shape respond.io expects from `/message`, §5.4);
//! success answers `200 {}` so that a gateway cannot come to depend on a body that the real
//! service may not send.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::limiter::retry_after_secs;
use super::validate::{Envelope, Rejection, Rules, validate_envelope};
use super::{
    EmulatedChannel, Emulator, FaultResponse, MAX_BODY_BYTES, RecordedCall, RecordedEvent,
    RetryAfterForm,
};
use crate::clock;

/// How much of an oversized body is read and discarded before answering 413, so the client is
/// not still writing when the connection closes (which would hide the 413 from it).
const DRAIN_LIMIT: usize = 16 * MAX_BODY_BYTES;

/// What the call's body says, as far as it can be read, for recording rejected calls.
#[derive(Debug, Default)]
struct Summary {
    arrival_ms: i64,
    claimed_channel: Option<String>,
    contact_id: Option<String>,
    events: usize,
}

impl Summary {
    fn of(arrival_ms: i64, body: Option<&Value>) -> Self {
        let text = |key: &str| body?.get(key)?.as_str().map(str::to_owned);
        Summary {
            arrival_ms,
            claimed_channel: text("channelId"),
            contact_id: text("contactId"),
            events: body
                .and_then(|b| b.get("events")?.as_array().map(Vec::len))
                .unwrap_or(0),
        }
    }
}

/// The outcome of authentication, rate limiting and the fault queue.
enum Gate {
    Unauthorized(&'static str),
    Fault {
        channel: String,
        fault: FaultResponse,
        form: RetryAfterForm,
    },
    Limited {
        channel: String,
        wait: Duration,
        form: RetryAfterForm,
    },
    Admitted(Rules),
}

pub(super) async fn handle(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrival_us = clock::now_us();
    let arrival_ms = arrival_us / 1000;
    let arrived = Instant::now();
    let body: Result<Value, Rejection> = read_limited(body).await.and_then(|bytes| {
        serde_json::from_slice(&bytes)
            .map_err(|e| Rejection::bad_request(format!("body: invalid JSON: {e}")))
    });
    let summary = Summary::of(arrival_ms, body.as_ref().ok());

    let rules = match emu.admit(&headers, summary.claimed_channel.as_deref(), arrived) {
        Gate::Admitted(rules) => rules,
        Gate::Unauthorized(reason) => {
            let channel = summary.claimed_channel.clone();
            return emu.reject(&summary, channel, Rejection::unauthorized(reason), None);
        }
        Gate::Fault {
            channel,
            fault,
            form,
        } => return emu.answer_fault(&summary, channel, fault, form).await,
        Gate::Limited {
            channel,
            wait,
            form,
        } => {
            let rejection = Rejection {
                status: StatusCode::TOO_MANY_REQUESTS,
                reason: format!("rate limit exceeded for channel {channel:?}"),
            };
            let header = retry_after_header(form, retry_after_secs(wait));
            return emu.reject(&summary, Some(channel), rejection, header);
        }
    };

    // Random misbehaviour, when a fault suite asked for it.
    let mut slow = None;
    match emu.draw_fault(&rules.token_channel) {
        Some(super::RandomFault::Answer(fault)) => {
            let channel = rules.token_channel.clone();
            return emu
                .answer_fault(&summary, channel, fault, RetryAfterForm::Seconds)
                .await;
        }
        Some(super::RandomFault::Reset) => {
            let reason = Some("injected connection reset".to_string());
            emu.record_call(
                &summary,
                Some(rules.token_channel.clone()),
                StatusCode::BAD_GATEWAY,
                reason,
            );
            drop_connection();
        }
        Some(super::RandomFault::Hang) => {
            let reason = Some("injected hang (no answer)".to_string());
            emu.record_call(
                &summary,
                Some(rules.token_channel.clone()),
                StatusCode::GATEWAY_TIMEOUT,
                reason,
            );
            tokio::time::sleep(Duration::from_millis(super::HANG_MS)).await;
            drop_connection();
        }
        Some(super::RandomFault::Slow(ms)) => slow = Some(Slowness::Answer(ms)),
        Some(super::RandomFault::SlowBody(ms)) => slow = Some(Slowness::Body(ms)),
        None => {}
    }

    let checked = check_content_type(&headers)
        .and(body.as_ref().map_err(Clone::clone))
        .and_then(|value| validate_envelope(value, &rules));
    match checked {
        Ok(envelope) => {
            emu.record_accepted(arrival_ms, &envelope);
            let _ = emu.inner.arrivals.send(super::Arrival {
                arrival_us,
                channel_id: envelope.channel_id.to_owned(),
                contact_id: envelope.contact_id.to_owned(),
                events: envelope.events.len(),
            });
            match slow {
                None => (StatusCode::OK, Json(json!({}))).into_response(),
                Some(Slowness::Answer(ms)) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    (StatusCode::OK, Json(json!({}))).into_response()
                }
                Some(Slowness::Body(ms)) => trickled_ok(ms),
            }
        }
        Err(rejection) => emu.reject(&summary, Some(rules.token_channel.clone()), rejection, None),
    }
}

/// How a call that stores its events answers slowly.
enum Slowness {
    /// The whole answer waits this many ms.
    Answer(u64),
    /// Status and headers at once, the `{}` body trickled over this many ms.
    Body(u64),
}

/// `200 {}` whose body arrives a byte at a time (after leading whitespace) over `ms`.
fn trickled_ok(ms: u64) -> Response {
    const PIECES: u64 = 8;
    let body = format!("{}{{}}", " ".repeat(PIECES as usize - 2));
    let pieces: Vec<Bytes> = body
        .into_bytes()
        .into_iter()
        .map(|b| Bytes::copy_from_slice(&[b]))
        .collect();
    let stream = futures::stream::iter(pieces).then(move |piece| async move {
        tokio::time::sleep(Duration::from_millis(ms / PIECES)).await;
        Ok::<_, std::convert::Infallible>(piece)
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl Emulator {
    /// Steps 2–4: authentication, the rate window, the fault queue. One short critical section.
    fn admit(&self, headers: &HeaderMap, claimed: Option<&str>, now: Instant) -> Gate {
        let token = match bearer_token(headers) {
            Ok(token) => token,
            Err(reason) => return Gate::Unauthorized(reason),
        };
        let mut st = self.lock();
        let Some(channel) = token_channel(&st.channels, token, claimed) else {
            return Gate::Unauthorized("Authorization: invalid API token");
        };
        let (channel, limit) = (channel.channel_id.clone(), channel.rate_limit);
        let verdict = st
            .windows
            .entry(channel.clone())
            .or_default()
            .hit(now, limit);
        let form = st.retry_after;
        // Injected faults take precedence over the limiter: a test that queued a fault expects
        // the very next call to get it. The call was still counted in the window above.
        if let Some(fault) = st.faults.get_mut(&channel).and_then(VecDeque::pop_front) {
            return Gate::Fault {
                channel,
                fault,
                form,
            };
        }
        if let Err(wait) = verdict {
            return Gate::Limited {
                channel,
                wait,
                form,
            };
        }
        let claimed_id_type = claimed.and_then(|c| st.channel(c)).map(|c| c.id_type);
        Gate::Admitted(Rules {
            token_channel: channel,
            claimed_id_type,
            max_events_per_call: st.max_events_per_call,
        })
    }

    /// Records a rejected call and builds its answer.
    fn reject(
        &self,
        summary: &Summary,
        channel: Option<String>,
        rejection: Rejection,
        retry_after: Option<HeaderValue>,
    ) -> Response {
        tracing::debug!(
            status = rejection.status.as_u16(),
            channel = channel.as_deref(),
            reason = %rejection.reason,
            "respond.io emulator rejected a webhook call"
        );
        self.record_call(
            summary,
            channel,
            rejection.status,
            Some(rejection.reason.clone()),
        );
        error_response(rejection.status, &rejection.reason, retry_after)
    }

    /// Answers with an injected fault (after its delay) and records it.
    async fn answer_fault(
        &self,
        summary: &Summary,
        channel: String,
        fault: FaultResponse,
        form: RetryAfterForm,
    ) -> Response {
        if let Some(ms) = fault.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let status =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let reason = format!("injected fault {}", status.as_u16());
        self.record_call(summary, Some(channel), status, Some(reason.clone()));
        // An explicit retry_after was asked for by the test, so it is always sent: in the
        // configured form, or as delta-seconds when the form is `none`.
        let form = match form {
            RetryAfterForm::None => RetryAfterForm::Seconds,
            other => other,
        };
        let header = fault
            .retry_after
            .and_then(|secs| retry_after_header(form, secs));
        if status.is_success() {
            let mut response = (status, Json(json!({}))).into_response();
            if let Some(value) = header {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        error_response(status, &reason, header)
    }

    fn record_call(
        &self,
        summary: &Summary,
        channel: Option<String>,
        status: StatusCode,
        reason: Option<String>,
    ) {
        let mut st = self.lock();
        let call = st.next_call();
        st.calls.push(RecordedCall {
            arrival_ms: summary.arrival_ms,
            channel_id: channel,
            status: status.as_u16(),
            reason,
            events: summary.events,
            call,
            contact_id: summary.contact_id.clone(),
            contact: None,
        });
    }

    /// Step 6: records a valid envelope. With `dedupe_by_mid` on, an event whose
    /// (channelId, mId, type) was accepted before is recorded with `duplicate: true`. The key
    /// includes `type` because a receipt legitimately reuses the mId of the message it reports on
    /// (§4.3, open question 6).
    fn record_accepted(&self, arrival_ms: i64, envelope: &Envelope<'_>) {
        let mut st = self.lock();
        let call = st.next_call();
        let dedupe = st.dedupe_by_mid;
        for event in envelope.events {
            let field = |key: &str| {
                event
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let first_time =
                st.seen
                    .insert((envelope.channel_id.to_owned(), field("mId"), field("type")));
            st.events.push(RecordedEvent {
                arrival_ms,
                channel_id: envelope.channel_id.to_owned(),
                contact_id: envelope.contact_id.to_owned(),
                call,
                event: event.clone(),
                duplicate: dedupe && !first_time,
            });
        }
        st.calls.push(RecordedCall {
            arrival_ms,
            channel_id: Some(envelope.channel_id.to_owned()),
            status: StatusCode::OK.as_u16(),
            reason: None,
            events: envelope.events.len(),
            call,
            contact_id: Some(envelope.contact_id.to_owned()),
            contact: envelope.contact.cloned(),
        });
    }
}

/// The token from `Authorization: Bearer <token>` [DOC S1]. The scheme is matched
/// case-insensitively (RFC 9110 §11.1) [INF].
fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    const EXPECTED: &str = "Authorization: expected \"Bearer <API token>\"";
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("Authorization: missing (expected \"Bearer <API token>\")")?;
    let value = value.to_str().map_err(|_| EXPECTED)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(EXPECTED)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(EXPECTED);
    }
    Ok(token)
}

/// The channel `token` belongs to. Every registered token is compared in constant time (no early
/// exit on the first match). If several channels share the token, the one the body claims wins,
/// else the first registered.
fn token_channel<'a>(
    channels: &'a [EmulatedChannel],
    token: &str,
    claimed: Option<&str>,
) -> Option<&'a EmulatedChannel> {
    let mut chosen: Option<&EmulatedChannel> = None;
    for channel in channels {
        let matches: bool = channel.token.as_bytes().ct_eq(token.as_bytes()).into();
        if matches && (chosen.is_none() || claimed == Some(channel.channel_id.as_str())) {
            chosen = Some(channel);
        }
    }
    chosen
}

/// `Content-Type: application/json` [DOC S1 lists the header]. [INF] respond.io's behaviour
/// without it is unknown; a JSON API commonly ignores such a body, so the emulator rejects it.
fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(Rejection::bad_request(
            "Content-Type: must be application/json",
        ))
    }
}

/// Reads at most [`MAX_BODY_BYTES`]; a larger body is drained (up to [`DRAIN_LIMIT`]) and refused
/// with 413.
async fn read_limited(body: Body) -> Result<Bytes, Rejection> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Rejection::bad_request(format!("body: could not be read: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen > DRAIN_LIMIT {
            break;
        }
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            reason: format!("body: larger than {MAX_BODY_BYTES} bytes"),
        });
    }
    Ok(buf.freeze())
}

/// The `Retry-After` value for `secs` in `form`; `None` for [`RetryAfterForm::None`].
fn retry_after_header(form: RetryAfterForm, secs: u64) -> Option<HeaderValue> {
    match form {
        RetryAfterForm::Seconds => Some(HeaderValue::from(secs)),
        RetryAfterForm::HttpDate => {
            let at = ceil_to_second(SystemTime::now() + Duration::from_secs(secs));
            HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()
        }
        RetryAfterForm::None => None,
    }
}

/// An HTTP-date has whole seconds and formatting truncates; rounding up first keeps the date from
/// naming a moment earlier than intended.
fn ceil_to_second(t: SystemTime) -> SystemTime {
    let nanos = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    if nanos == 0 {
        t
    } else {
        t + Duration::from_nanos(u64::from(1_000_000_000 - nanos))
    }
}

/// `{"error":{"message": reason}}` with `status`, plus a `Retry-After` header if given.
pub(super) fn error_response(
    status: StatusCode,
    reason: &str,
    retry_after: Option<HeaderValue>,
) -> Response {
    let mut response = (status, Json(json!({ "error": { "message": reason } }))).into_response();
    if let Some(value) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Ends the connection without an answer: unwinding out of the handler drops hyper's
/// connection task (axum::serve runs one per connection and contains the unwind), which
/// closes the socket. `resume_unwind` skips the panic hook, so nothing is printed. The
/// call was recorded before (status 502, "injected connection reset").
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("respond.io emulator: injected connection reset"))
}
