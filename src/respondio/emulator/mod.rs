//! The respond.io emulator: a local HTTP server that plays respond.io's side of a Custom Channel
//! (`shared/spec/respondio-custom-channel.md`), for tests, the `demo` command, benchmarks, and
//! operators trying a setup without a respond.io account.
//!
//! It serves
//! - `POST /custom/channel/webhook/` (and without the trailing slash): the inbound webhook. Every
//!   call is authenticated, rate limited per channel, validated from the spec (see `validate.rs`)
//!   and recorded;
//! - a control API under `/_emulator/` (see `control.rs`): recorded events and calls, fault
//!   injection, the channel registry, the switches for what the spec leaves unknown, and
//!   `send`, which plays respond.io calling the gateway's `/message` endpoint.
//!
//! The control API is unauthenticated: the emulator is a local test tool and holds no real secrets.
//!
//! [UNK] §3.4 / open question 15: the official example posts to `/custom/webhook`; the docs say
//! `/custom/channel/webhook/`. Only the documented path is served, so a gateway configured with
//! the example's path fails loudly against the emulator.

mod control;
mod limiter;
mod send;
mod validate;
mod webhook;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use limiter::max_in_window;

use limiter::SlidingWindow;

/// The documented Custom Channel rate limit: 20 requests per second [DOC seed Overview].
pub const DEFAULT_RATE_LIMIT: u32 = 20;

/// Largest accepted webhook body. [UNK] respond.io's limit; 1 MiB is ample for an envelope whose
/// attachments are URLs.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The inbound webhook path [DOC S1, S4].
pub const WEBHOOK_PATH: &str = "/custom/channel/webhook/";

/// How long `send_to_gateway` waits for the gateway. [UNK] open question 3: respond.io's timeout
/// on `/message`; 30 s is generous so a slow gateway shows up as slow rather than as a failure.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Start-up configuration. The switches can also be changed later (Rust API or control API).
#[derive(Debug, Clone, Default)]
pub struct EmulatorConfig {
    pub channels: Vec<EmulatedChannel>,
    /// [UNK] open question 6: whether respond.io dedupes events by `mId`. When on, an event whose
    /// (channelId, mId, type) was already accepted is acknowledged but recorded as a duplicate.
    pub dedupe_by_mid: bool,
    /// [UNK] open question 11: max events per envelope. `None` = unlimited.
    pub max_events_per_call: Option<usize>,
    /// [UNK] open question 4: the form of `Retry-After` on 429.
    pub retry_after: RetryAfterForm,
}

/// One emulated Custom Channel: the values respond.io shows in the channel dialog (§3.2) plus the
/// id type chosen at setup (§3.3) and its rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedChannel {
    pub channel_id: String,
    pub token: String,
    pub id_type: EmulatedIdType,
    /// Requests per sliding second; 0 = unlimited.
    pub rate_limit: u32,
}

impl EmulatedChannel {
    /// A phone-number channel with the default rate limit.
    pub fn new(channel_id: impl Into<String>, token: impl Into<String>) -> Self {
        EmulatedChannel {
            channel_id: channel_id.into(),
            token: token.into(),
            id_type: EmulatedIdType::Phone,
            rate_limit: DEFAULT_RATE_LIMIT,
        }
    }
}

/// How the channel identifies contacts (§3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmulatedIdType {
    /// E.164 phone numbers, `^\+[1-9][0-9]{6,14}$`.
    #[default]
    Phone,
    /// `^[A-Za-z0-9_=+/@]{1,50}$`.
    Custom,
}

impl FromStr for EmulatedIdType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "phone" => Ok(EmulatedIdType::Phone),
            "custom" => Ok(EmulatedIdType::Custom),
            other => Err(format!(
                "unknown id type {other:?} (expected phone or custom)"
            )),
        }
    }
}

/// The form of the `Retry-After` header on a 429. [UNK] what respond.io sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfterForm {
    /// Integer delta-seconds, e.g. `Retry-After: 2`.
    #[default]
    Seconds,
    /// An IMF-fixdate, e.g. `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`.
    HttpDate,
    /// No header at all.
    None,
}

impl FromStr for RetryAfterForm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seconds" => Ok(RetryAfterForm::Seconds),
            "http_date" => Ok(RetryAfterForm::HttpDate),
            "none" => Ok(RetryAfterForm::None),
            other => Err(format!(
                "unknown Retry-After form {other:?} (expected seconds, http_date or none)"
            )),
        }
    }
}

/// One accepted event, flattened with its call's envelope data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Epoch milliseconds when the call arrived.
    pub arrival_ms: i64,
    #[serde(rename = "channelId")]
    pub channel_id: String,
    #[serde(rename = "contactId")]
    pub contact_id: String,
    /// The [`RecordedCall::call`] this event came in.
    pub call: u64,
    /// The event exactly as received.
    pub event: Value,
    /// True when `dedupe_by_mid` was on and this (channelId, mId, type) had already been
    /// accepted: respond.io would have acknowledged it without storing it again.
    pub duplicate: bool,
}

/// One webhook call, accepted or rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedCall {
    /// Epoch milliseconds when the call arrived.
    pub arrival_ms: i64,
    /// The channel the call is attributed to: the token's channel once authenticated; before
    /// that (401 for a bad token), the `channelId` the body claimed, if any.
    #[serde(rename = "channelId")]
    pub channel_id: Option<String>,
    pub status: u16,
    /// Why it was rejected; `None` for accepted calls.
    pub reason: Option<String>,
    /// Number of events in the body (0 if it had no readable `events` array).
    pub events: usize,
    /// Sequence number of the call, unique per emulator, starting at 1.
    pub call: u64,
    #[serde(rename = "contactId")]
    pub contact_id: Option<String>,
    /// The `contact` object of an accepted call, if it had one.
    pub contact: Option<Value>,
}

/// Misbehaviour at random, per call, for fault suites (see [`Emulator::set_fault_rates`]).
/// Each is a probability in 0..=1; they are drawn in this order and at most one applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultRates {
    /// Answer 500 without storing anything.
    #[serde(default)]
    pub server_error: f64,
    /// Answer 429 with `Retry-After: 1`.
    #[serde(default)]
    pub throttle: f64,
    /// Close the connection without an answer, storing nothing.
    #[serde(default)]
    pub reset: f64,
    /// Store the events, then answer only after `slow_ms` (a client that timed out will
    /// send them again: respond.io sees a repeat with the same mId).
    #[serde(default)]
    pub slow: f64,
    #[serde(default)]
    pub slow_ms: u64,
    /// Answer 429 without `Retry-After`.
    #[serde(default)]
    pub throttle_bare: f64,
    /// Never answer: hold the connection for [`HANG_MS`], then close it, storing nothing.
    #[serde(default)]
    pub hang: f64,
    /// Store the events and answer 200 at once, but trickle the body over `slow_ms`.
    #[serde(default)]
    pub slow_body: f64,
}

/// How long a `hang` holds the connection: longer than any client timeout worth testing.
pub const HANG_MS: u64 = 30_000;

/// What a random draw decided for one call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RandomFault {
    Answer(FaultResponse),
    Reset,
    Slow(u64),
    Hang,
    SlowBody(u64),
}

/// An injected answer for a future webhook call (see [`Emulator::inject`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultResponse {
    pub status: u16,
    /// Seconds for a `Retry-After` header, rendered in the configured [`RetryAfterForm`].
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Delay before answering.
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// The emulator. Cheap to clone: all clones share one state.
#[derive(Debug, Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    http: reqwest::Client,
    /// Every accepted call as it arrives, for benchmarks timing end to end.
    arrivals: tokio::sync::broadcast::Sender<Arrival>,
}

/// An accepted call, announced to subscribers the moment it is recorded.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Epoch microseconds when the request arrived.
    pub arrival_us: i64,
    pub channel_id: String,
    pub contact_id: String,
    pub events: usize,
}

/// Everything mutable, behind one mutex that is only ever held for short, synchronous sections.
#[derive(Debug, Default)]
struct State {
    /// Registry in registration order (token lookup prefers earlier entries on ties).
    channels: Vec<EmulatedChannel>,
    windows: HashMap<String, SlidingWindow>,
    faults: HashMap<String, VecDeque<FaultResponse>>,
    fault_rates: HashMap<String, FaultRates>,
    dedupe_by_mid: bool,
    max_events_per_call: Option<usize>,
    retry_after: RetryAfterForm,
    calls: Vec<RecordedCall>,
    events: Vec<RecordedEvent>,
    /// (channelId, mId, type) of every accepted event, for `dedupe_by_mid`.
    seen: HashSet<(String, String, String)>,
    last_call: u64,
}

impl State {
    fn channel(&self, channel_id: &str) -> Option<&EmulatedChannel> {
        self.channels.iter().find(|c| c.channel_id == channel_id)
    }

    fn next_call(&mut self) -> u64 {
        self.last_call += 1;
        self.last_call
    }
}

impl Emulator {
    pub fn new(cfg: EmulatorConfig) -> Emulator {
        let emulator = Emulator {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    dedupe_by_mid: cfg.dedupe_by_mid,
                    max_events_per_call: cfg.max_events_per_call,
                    retry_after: cfg.retry_after,
                    ..State::default()
                }),
                http: http_client(),
                arrivals: tokio::sync::broadcast::channel(4096).0,
            }),
        };
        for channel in cfg.channels {
            emulator.add_channel(channel);
        }
        emulator
    }

    /// Announces every accepted call from now on (a slow subscriber misses the oldest).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arrival> {
        self.inner.arrivals.subscribe()
    }

    /// All routes: the webhook and the control API.
    pub fn router(&self) -> Router {
        let webhook_without_slash = WEBHOOK_PATH.trim_end_matches('/');
        Router::new()
            .route(WEBHOOK_PATH, post(webhook::handle))
            .route(webhook_without_slash, post(webhook::handle))
            .route(
                "/_emulator/events",
                get(control::list_events).delete(control::clear),
            )
            .route("/_emulator/calls", get(control::list_calls))
            .route("/_emulator/faults", post(control::faults))
            .route("/_emulator/fault-rates", post(control::fault_rates))
            .route(
                "/_emulator/channels",
                get(control::list_channels).post(control::add_channel),
            )
            .route(
                "/_emulator/config",
                get(control::get_config).post(control::set_config),
            )
            .route("/_emulator/send", post(control::send))
            .with_state(self.clone())
    }

    /// Serves [`Emulator::router`] on `listener` until the server fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Accepted events of `channel` in arrival order (duplicates included, flagged).
    pub fn events(&self, channel: &str) -> Vec<RecordedEvent> {
        let st = self.lock();
        st.events
            .iter()
            .filter(|e| e.channel_id == channel)
            .cloned()
            .collect()
    }

    /// Calls attributed to `channel` (accepted and rejected) in the order they were answered.
    pub fn calls(&self, channel: &str) -> Vec<RecordedCall> {
        let st = self.lock();
        st.calls
            .iter()
            .filter(|c| c.channel_id.as_deref() == Some(channel))
            .cloned()
            .collect()
    }

    /// Every recorded call, whatever its channel (including 401s that named no channel).
    pub fn all_calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.clone()
    }

    /// Forgets recorded events and calls, and the dedupe memory. Channels, switches, pending
    /// faults and rate-limit windows are kept.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.events.clear();
        st.calls.clear();
        st.seen.clear();
    }

    /// Registers a channel, replacing any channel with the same id.
    pub fn add_channel(&self, ch: EmulatedChannel) {
        let mut st = self.lock();
        match st
            .channels
            .iter_mut()
            .find(|c| c.channel_id == ch.channel_id)
        {
            Some(existing) => *existing = ch,
            None => st.channels.push(ch),
        }
    }

    /// Registered channels in registration order.
    pub fn channels(&self) -> Vec<EmulatedChannel> {
        self.lock().channels.clone()
    }

    /// Makes `channel` misbehave at random from now on (all zeros: behave).
    pub fn set_fault_rates(&self, channel: &str, rates: FaultRates) {
        self.lock().fault_rates.insert(channel.to_owned(), rates);
    }

    /// Draws this call's random misbehaviour, if any.
    pub(crate) fn draw_fault(&self, channel: &str) -> Option<RandomFault> {
        let rates = self.lock().fault_rates.get(channel).cloned()?;
        let mut r: f64 = rand::random();
        for (p, fault) in [
            (
                rates.server_error,
                RandomFault::Answer(FaultResponse {
                    status: 500,
                    retry_after: None,
                    delay_ms: None,
                }),
            ),
            (
                rates.throttle,
                RandomFault::Answer(FaultResponse {
                    status: 429,
                    retry_after: Some(1),
                    delay_ms: None,
                }),
            ),
            (rates.reset, RandomFault::Reset),
            (rates.slow, RandomFault::Slow(rates.slow_ms)),
            (
                rates.throttle_bare,
                RandomFault::Answer(FaultResponse {
                    status: 429,
                    retry_after: None,
                    delay_ms: None,
                }),
            ),
            (rates.hang, RandomFault::Hang),
            (rates.slow_body, RandomFault::SlowBody(rates.slow_ms)),
        ] {
            if r < p {
                return Some(fault);
            }
            r -= p;
        }
        None
    }

    /// Queues answers for the next authenticated calls of `channel`, in order. A call that gets an
    /// injected answer is not validated and not recorded as accepted.
    pub fn inject(&self, channel: &str, responses: Vec<FaultResponse>) {
        let mut st = self.lock();
        st.faults
            .entry(channel.to_owned())
            .or_default()
            .extend(responses);
    }

    /// Drops the pending injected answers of `channel`.
    pub fn clear_faults(&self, channel: &str) {
        self.lock().faults.remove(channel);
    }

    pub fn set_dedupe_by_mid(&self, on: bool) {
        self.lock().dedupe_by_mid = on;
    }

    pub fn set_max_events_per_call(&self, n: Option<usize>) {
        self.lock().max_events_per_call = n;
    }

    pub fn set_retry_after(&self, f: RetryAfterForm) {
        self.lock().retry_after = f;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// Parses the CLI's `--channel CH1=TOKEN[:phone|custom[:rate]]`.
///
/// The optional parts are taken from the right, so a token may itself contain `:` as long as it
/// does not end in `:phone`/`:custom` (optionally followed by `:<rate>`). A rate of 0 means
/// unlimited.
pub fn parse_channel_arg(s: &str) -> Result<EmulatedChannel, String> {
    let (channel_id, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected CHANNEL_ID=TOKEN[:phone|custom[:rate]]"))?;
    if channel_id.is_empty() {
        return Err(format!("{s:?}: empty channel id"));
    }
    let (token, id_type, rate_limit) = split_token_options(rest)?;
    if token.is_empty() {
        return Err(format!("{s:?}: empty token"));
    }
    Ok(EmulatedChannel {
        channel_id: channel_id.to_owned(),
        token: token.to_owned(),
        id_type,
        rate_limit,
    })
}

/// `TOKEN[:type[:rate]]` → its parts, with defaults for what is absent.
fn split_token_options(rest: &str) -> Result<(&str, EmulatedIdType, u32), String> {
    let Some((head, last)) = rest.rsplit_once(':') else {
        return Ok((rest, EmulatedIdType::Phone, DEFAULT_RATE_LIMIT));
    };
    if let Ok(id_type) = last.parse::<EmulatedIdType>() {
        return Ok((head, id_type, DEFAULT_RATE_LIMIT));
    }
    if let Some((token, ty)) = head.rsplit_once(':')
        && let Ok(id_type) = ty.parse::<EmulatedIdType>()
    {
        let rate = last
            .parse::<u32>()
            .map_err(|_| format!("rate {last:?} is not a non-negative integer"))?;
        return Ok((token, id_type, rate));
    }
    // No recognised options: the whole thing is the token.
    Ok((rest, EmulatedIdType::Phone, DEFAULT_RATE_LIMIT))
}
