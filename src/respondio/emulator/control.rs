//! The control API under `/_emulator/`: not part of respond.io, used by tests, `demo` and
//! operators. JSON in, JSON out; errors answer `{"error":{"message":...}}` like the webhook.
//!
//! | Route | Does |
//! |---|---|
//! | `GET /_emulator/events?channel=&contact=` | accepted events, flattened (both filters optional) |
//! | `DELETE /_emulator/events` | forgets recorded events, calls and the dedupe memory |
//! | `GET /_emulator/calls?channel=&status=` | calls, accepted and rejected (filters optional) |
//! | `POST /_emulator/faults` | `{"channel","responses":[{status,retry_after?,delay_ms?}],"clear"?}` |
//! | `POST /_emulator/fault-rates` | `{"channel","rates":{server_error?,throttle?,throttle_bare?,reset?,hang?,slow?,slow_body?,slow_ms?}}` |
//! | `GET/POST /_emulator/channels` | list (tokens omitted) / register `{"channelId","token","id_type"?,"rate_limit"?}` |
//! | `GET/POST /_emulator/config` | the switches `dedupe_by_mid`, `max_events_per_call`, `retry_after` |
//! | `POST /_emulator/send` | `{"channelId","contactId","message","url"}` → `{"status","body"}` |

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::webhook::error_response;
use super::{
    DEFAULT_RATE_LIMIT, EmulatedChannel, EmulatedIdType, Emulator, FaultRates, FaultResponse,
    RecordedCall, RecordedEvent, RetryAfterForm,
};

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    channel: Option<String>,
    contact: Option<String>,
}

pub(super) async fn list_events(
    State(emu): State<Emulator>,
    Query(q): Query<EventsQuery>,
) -> Json<Vec<RecordedEvent>> {
    let st = emu.lock();
    let events = st
        .events
        .iter()
        .filter(|e| q.channel.as_ref().is_none_or(|c| *c == e.channel_id))
        .filter(|e| q.contact.as_ref().is_none_or(|c| *c == e.contact_id))
        .cloned()
        .collect();
    Json(events)
}

#[derive(Debug, Deserialize)]
pub(super) struct CallsQuery {
    channel: Option<String>,
    status: Option<u16>,
}

pub(super) async fn list_calls(
    State(emu): State<Emulator>,
    Query(q): Query<CallsQuery>,
) -> Json<Vec<RecordedCall>> {
    let st = emu.lock();
    let calls = st
        .calls
        .iter()
        .filter(|c| q.channel.is_none() || c.channel_id == q.channel)
        .filter(|c| q.status.is_none_or(|s| s == c.status))
        .cloned()
        .collect();
    Json(calls)
}

pub(super) async fn clear(State(emu): State<Emulator>) -> StatusCode {
    emu.clear();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    channel: String,
    #[serde(default)]
    responses: Vec<FaultResponse>,
    #[serde(default)]
    clear: bool,
}

/// Queues injected answers; with `"clear": true` the pending ones are dropped first.
pub(super) async fn faults(State(emu): State<Emulator>, body: Bytes) -> Response {
    let body: FaultsBody = match parse(&body) {
        Ok(body) => body,
        Err(reason) => return bad_request(&reason),
    };
    if let Some(i) = body
        .responses
        .iter()
        .position(|r| !(100..=599).contains(&r.status))
    {
        return bad_request(&format!("responses[{i}].status: must be 100..=599"));
    }
    if body.clear {
        emu.clear_faults(&body.channel);
    }
    emu.inject(&body.channel, body.responses);
    let pending = emu
        .lock()
        .faults
        .get(&body.channel)
        .map_or(0, |queue| queue.len());
    Json(json!({ "channel": body.channel, "pending": pending })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRatesBody {
    channel: String,
    rates: FaultRates,
}

/// Random misbehaviour from now on (all zeros: behave). Each rate is a probability.
pub(super) async fn fault_rates(State(emu): State<Emulator>, body: Bytes) -> Response {
    let body: FaultRatesBody = match parse(&body) {
        Ok(body) => body,
        Err(reason) => return bad_request(&reason),
    };
    let r = &body.rates;
    let rates = [
        r.server_error,
        r.throttle,
        r.throttle_bare,
        r.reset,
        r.hang,
        r.slow,
        r.slow_body,
    ];
    if rates.iter().any(|p| !(0.0..=1.0).contains(p)) || rates.iter().sum::<f64>() > 1.0 {
        return bad_request("rates: each must be in 0..=1 and together at most 1");
    }
    emu.set_fault_rates(&body.channel, body.rates);
    Json(json!({ "channel": body.channel })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    #[serde(rename = "channelId")]
    channel_id: String,
    token: String,
    #[serde(default)]
    id_type: EmulatedIdType,
    #[serde(default = "default_rate_limit")]
    rate_limit: u32,
}

fn default_rate_limit() -> u32 {
    DEFAULT_RATE_LIMIT
}

pub(super) async fn add_channel(State(emu): State<Emulator>, body: Bytes) -> Response {
    let body: ChannelBody = match parse(&body) {
        Ok(body) => body,
        Err(reason) => return bad_request(&reason),
    };
    if body.channel_id.is_empty() || body.token.is_empty() {
        return bad_request("channelId and token must not be empty");
    }
    let channel = EmulatedChannel {
        channel_id: body.channel_id,
        token: body.token,
        id_type: body.id_type,
        rate_limit: body.rate_limit,
    };
    let shown = channel_json(&channel);
    emu.add_channel(channel);
    (StatusCode::CREATED, Json(shown)).into_response()
}

pub(super) async fn list_channels(State(emu): State<Emulator>) -> Json<Vec<Value>> {
    Json(emu.channels().iter().map(channel_json).collect())
}

/// A channel without its token.
fn channel_json(channel: &EmulatedChannel) -> Value {
    json!({
        "channelId": channel.channel_id,
        "id_type": channel.id_type,
        "rate_limit": channel.rate_limit,
    })
}

pub(super) async fn get_config(State(emu): State<Emulator>) -> Json<Value> {
    Json(config_json(&emu))
}

fn config_json(emu: &Emulator) -> Value {
    let st = emu.lock();
    json!({
        "dedupe_by_mid": st.dedupe_by_mid,
        "max_events_per_call": st.max_events_per_call,
        "retry_after": st.retry_after,
    })
}

/// The switches that can change, parsed before any is applied (all or nothing).
#[derive(Debug, Default)]
struct ConfigChange {
    dedupe_by_mid: Option<bool>,
    /// Outer `None`: unchanged; `Some(None)` (JSON `null`): unlimited.
    max_events_per_call: Option<Option<usize>>,
    retry_after: Option<RetryAfterForm>,
}

/// Changes the switches present in the body; absent keys keep their value. Answers the new config.
pub(super) async fn set_config(State(emu): State<Emulator>, body: Bytes) -> Response {
    let change = match parse::<Map<String, Value>>(&body).and_then(|m| config_change(&m)) {
        Ok(change) => change,
        Err(reason) => return bad_request(&reason),
    };
    if let Some(on) = change.dedupe_by_mid {
        emu.set_dedupe_by_mid(on);
    }
    if let Some(n) = change.max_events_per_call {
        emu.set_max_events_per_call(n);
    }
    if let Some(form) = change.retry_after {
        emu.set_retry_after(form);
    }
    Json(config_json(&emu)).into_response()
}

/// The change a config body asks for, or the reason it is refused.
fn config_change(body: &Map<String, Value>) -> Result<ConfigChange, String> {
    let mut change = ConfigChange::default();
    for (key, value) in body {
        match (key.as_str(), value) {
            ("dedupe_by_mid", Value::Bool(on)) => change.dedupe_by_mid = Some(*on),
            ("max_events_per_call", Value::Null) => change.max_events_per_call = Some(None),
            ("max_events_per_call", Value::Number(n)) => {
                let n = n
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or("max_events_per_call: must be a non-negative integer or null")?;
                change.max_events_per_call = Some(Some(n));
            }
            ("retry_after", Value::String(form)) => {
                change.retry_after = Some(form.parse()?);
            }
            ("dedupe_by_mid" | "max_events_per_call" | "retry_after", _) => {
                return Err(format!("{key}: wrong type"));
            }
            _ => return Err(format!("{key}: unknown setting")),
        }
    }
    Ok(change)
}

#[derive(Debug, Deserialize)]
struct SendBody {
    #[serde(rename = "channelId")]
    channel_id: String,
    #[serde(rename = "contactId")]
    contact_id: String,
    message: Value,
    url: String,
}

/// Plays respond.io sending a message: answers `{"status": <gateway status>, "body": <its body>}`,
/// 404 for an unknown channel, 502 when the gateway could not be reached.
pub(super) async fn send(State(emu): State<Emulator>, body: Bytes) -> Response {
    let body: SendBody = match parse(&body) {
        Ok(body) => body,
        Err(reason) => return bad_request(&reason),
    };
    if emu.lock().channel(&body.channel_id).is_none() {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("channelId: unknown channel {:?}", body.channel_id),
            None,
        );
    }
    match emu
        .send_to_gateway(&body.url, &body.channel_id, &body.contact_id, body.message)
        .await
    {
        Ok((status, body)) => Json(json!({ "status": status, "body": body })).into_response(),
        Err(reason) => error_response(StatusCode::BAD_GATEWAY, &reason, None),
    }
}

/// A control request body, or the reason it cannot be read.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

fn bad_request(reason: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, reason, None)
}
