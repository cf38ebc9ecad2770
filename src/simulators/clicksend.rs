//! A local ClickSend (shared/spec/providers.md §1) for tests and the `demo` command.
//!
//! It enforces what ClickSend documents for `POST /v3/sms/send` and `/v3/mms/send` (Basic
//! auth, a non-empty `messages` array with `to` and `body`), answers in ClickSend's shape,
//! records every raw arrival — valid or not — and never dedupes, so a test can see exactly
//! how many times the gateway called. It can push inbound SMS and delivery receipts at the
//! gateway the way ClickSend does (form-urlencoded POSTs), and faults can be queued.
//!
//! Control endpoints (JSON), for the demo and for tests that only have a URL:
//! - `GET  /_sim/sent` → `[SimArrival]`
//! - `POST /_sim/inbound` `{"from","to","body"}` → `{"status": <gateway's HTTP status>}`
//! - `POST /_sim/faults` one `SimFault` or an array, e.g. `[{"http5xx":503},"unauthorized",
//!   {"throttle":{"retry_after":2}},{"message_status":"INVALID_RECIPIENT"},{"delay":500},
//!   "drop_connection"]`
//! - `POST /_sim/recipient-faults` `{"to","status"}` (see `set_fault_for_recipient`)
//! - `POST /_sim/receipts` `{"message_id","status_code","error_text"?}` (see `push_receipt`)
//! - `POST /_sim/fault-rates` a `SimFaultRates` (see `set_fault_rates`), e.g.
//!   `{"server_error":0.1,"late":0.05,"late_ms":800}`

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock::now_ms;

/// How often an automatic receipt push is attempted. Real ClickSend's retry policy for
/// pushes is undocumented (§1.6); a few quick tries keep tests fast and still exercise the
/// gateway's handling of a redelivered receipt.
const RECEIPT_ATTEMPTS: u32 = 3;
const RECEIPT_RETRY_DELAY: Duration = Duration::from_millis(200);
/// ClickSend's MMS `subject` limit (SDK `MmsMessage`).
const MMS_SUBJECT_MAX: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub username: String,
    pub api_key: String,
    /// Where to push delivery receipts (the gateway's receipt URL with its `?secret=`).
    pub receipt_url: Option<String>,
    /// Wait before pushing a receipt, counted from just before the send is answered. With 0
    /// a receipt can race the send's own answer to the gateway, which the gateway must
    /// survive anyway (nothing orders ClickSend's pushes after its API answers).
    pub receipt_delay_ms: u64,
    /// Where `push_inbound` posts (the gateway's inbound URL with its `?secret=`).
    pub inbound_url: Option<String>,
}

/// A queued misbehaviour; each send call consumes one, whatever the call carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimFault {
    /// Answer with this HTTP status (meant for 5xx) and ClickSend's error body.
    Http5xx(u16),
    /// 429 TOO_MANY_REQUESTS, with `Retry-After: <seconds>` if given.
    Throttle { retry_after: Option<u64> },
    /// 401 even with the right credentials.
    Unauthorized,
    /// HTTP 200, but every message gets this per-message status (e.g. `INSUFFICIENT_CREDIT`).
    MessageStatus(String),
    /// Wait this many ms, then answer normally.
    Delay(u64),
    /// Close the connection without answering.
    DropConnection,
    /// Wait this many ms, then misbehave as the inner fault (e.g. a slow 429).
    Delayed(u64, Box<SimFault>),
}

/// Misbehaviour at random, per send call, for fault suites (see
/// [`ClickSendSim::set_fault_rates`]). Each field is a probability in 0..=1; they are drawn
/// in this order and at most one applies. A queued [`SimFault`] takes precedence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimFaultRates {
    /// 503 with ClickSend's error body; nothing is sent.
    pub server_error: f64,
    /// 429 with `Retry-After: 1`.
    pub throttle: f64,
    /// 429 without `Retry-After`.
    pub throttle_bare: f64,
    /// Close the connection without an answer; nothing is sent.
    pub reset: f64,
    /// Never answer: hold the connection for [`HANG_MS`], then close it; nothing is sent.
    pub hang: f64,
    /// Send the messages (they get ids and receipts), but answer only after `late_ms`.
    pub late: f64,
    /// Send the messages and answer at once, but trickle the body over `late_ms`.
    pub slow_body: f64,
    pub late_ms: u64,
}

/// How long a `hang` holds the connection: longer than any client timeout worth testing.
pub const HANG_MS: u64 = 30_000;

/// What one random draw decided.
#[derive(Debug, Clone, PartialEq)]
enum RandomSimFault {
    /// Handled like the queued fault.
    As(SimFault),
    Hang,
    Late(u64),
    SlowBody(u64),
}

impl SimFaultRates {
    fn probabilities(&self) -> [f64; 7] {
        [
            self.server_error,
            self.throttle,
            self.throttle_bare,
            self.reset,
            self.hang,
            self.late,
            self.slow_body,
        ]
    }

    /// Each a probability, and together at most 1 (at most one fault per call).
    pub fn is_valid(&self) -> bool {
        let p = self.probabilities();
        p.iter().all(|p| (0.0..=1.0).contains(p)) && p.iter().sum::<f64>() <= 1.0
    }

    fn draw(&self) -> Option<RandomSimFault> {
        let mut r: f64 = rand::random();
        for (p, fault) in [
            (
                self.server_error,
                RandomSimFault::As(SimFault::Http5xx(503)),
            ),
            (
                self.throttle,
                RandomSimFault::As(SimFault::Throttle {
                    retry_after: Some(1),
                }),
            ),
            (
                self.throttle_bare,
                RandomSimFault::As(SimFault::Throttle { retry_after: None }),
            ),
            (self.reset, RandomSimFault::As(SimFault::DropConnection)),
            (self.hang, RandomSimFault::Hang),
            (self.late, RandomSimFault::Late(self.late_ms)),
            (self.slow_body, RandomSimFault::SlowBody(self.late_ms)),
        ] {
            if r < p {
                return Some(fault);
            }
            r -= p;
        }
        None
    }
}

/// One send call as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimArrival {
    pub arrival_ms: i64,
    /// The arrival on this process's monotonic clock, for counting arrivals per window
    /// whatever the wall clock does.
    #[serde(skip)]
    pub arrived: std::time::Instant,
    /// The request body as JSON; a body that is not JSON is kept as a JSON string.
    pub body: Value,
    /// The HTTP status answered; 0 while still answering or when the connection was dropped.
    pub status: u16,
    /// The ids assigned to the call's messages, in message order (empty unless answered 200).
    pub message_ids: Vec<String>,
}

#[derive(Clone)]
pub struct ClickSendSim {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SimConfig,
    client: reqwest::Client,
    state: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    sent: Vec<SimArrival>,
    faults: VecDeque<SimFault>,
    fault_rates: SimFaultRates,
    recipient_faults: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Sms,
    Mms,
}

/// What a send call is answered with, plus what the simulator does next.
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
    message_ids: Vec<String>,
    /// Ids whose status was SUCCESS: these get a delivery receipt.
    queued: Vec<String>,
}

impl Answer {
    /// ClickSend's error envelope (§1.7): the same keys as success, `data` null.
    fn error(code: u16, msg: &str) -> Answer {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Answer {
            status,
            body: json!({
                "http_code": status.as_u16(),
                "response_code": response_code(status),
                "response_msg": msg,
                "data": null,
            }),
            retry_after: None,
            message_ids: Vec::new(),
            queued: Vec::new(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// `BAD_REQUEST`, `TOO_MANY_REQUESTS`, ...: ClickSend's `response_code` is the reason phrase.
fn response_code(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("ERROR")
        .to_ascii_uppercase()
        .replace(' ', "_")
}

impl ClickSendSim {
    pub fn new(cfg: SimConfig) -> Self {
        // Like ClickSend, the pusher does not follow redirects; the timeout keeps a hung
        // gateway from pinning push tasks forever.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        ClickSendSim {
            inner: Arc::new(Inner {
                cfg,
                client,
                state: Mutex::new(SimState::default()),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v3/sms/send", post(send_sms))
            .route("/v3/mms/send", post(send_mms))
            .route("/_sim/sent", get(ctl_sent))
            .route("/_sim/inbound", post(ctl_inbound))
            .route("/_sim/faults", post(ctl_faults))
            .route("/_sim/recipient-faults", post(ctl_recipient_faults))
            .route("/_sim/receipts", post(ctl_receipts))
            .route("/_sim/fault-rates", post(ctl_fault_rates))
            .with_state(self.clone())
    }

    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Every send call so far, in arrival order.
    pub fn sent(&self) -> Vec<SimArrival> {
        self.state().sent.clone()
    }

    /// Arrivals from index `from` on (cheap polling of a long record).
    pub fn sent_since(&self, from: usize) -> Vec<SimArrival> {
        let st = self.state();
        st.sent
            .get(from..)
            .map(<[SimArrival]>::to_vec)
            .unwrap_or_default()
    }

    /// How many send calls arrived.
    pub fn sent_count(&self) -> usize {
        self.state().sent.len()
    }

    pub fn push_fault(&self, f: SimFault) {
        self.state().faults.push_back(f);
    }

    /// Makes send calls misbehave at random from now on (all zeros: behave).
    pub fn set_fault_rates(&self, rates: SimFaultRates) {
        self.state().fault_rates = rates;
    }

    /// From now on, every message to `to` gets per-message status `status`.
    pub fn set_fault_for_recipient(&self, to: &str, status: &str) {
        self.state()
            .recipient_faults
            .insert(to.to_string(), status.to_string());
    }

    /// POSTs an inbound SMS to `inbound_url` as ClickSend's default (form) push, with a fresh
    /// `message_id`. Returns the gateway's HTTP status.
    pub async fn push_inbound(&self, from: &str, to: &str, body: &str) -> Result<u16, String> {
        let url = self
            .inner
            .cfg
            .inbound_url
            .as_deref()
            .ok_or("simulator has no inbound_url")?;
        let form = self.inbound_form(from, to, body);
        self.post_form(url, &form).await
    }

    /// As [`ClickSendSim::push_inbound`], to another URL (e.g. with a rotated secret).
    pub async fn push_inbound_to(
        &self,
        url: &str,
        from: &str,
        to: &str,
        body: &str,
    ) -> Result<u16, String> {
        let form = self.inbound_form(from, to, body);
        self.post_form(url, &form).await
    }

    /// POSTs one delivery receipt for `message_id` to `receipt_url` (one attempt).
    pub async fn push_receipt(
        &self,
        message_id: &str,
        status_code: u16,
        error_text: Option<&str>,
    ) -> Result<u16, String> {
        let url = self
            .inner
            .cfg
            .receipt_url
            .as_deref()
            .ok_or("simulator has no receipt_url")?;
        let form = self.receipt_form(message_id, status_code, error_text);
        self.post_form(url, &form).await
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        // A panicking test thread must not take the simulator down with it.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn post_form(&self, url: &str, form: &[(&str, String)]) -> Result<u16, String> {
        let resp = self
            .inner
            .client
            .post(url)
            .form(form)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    }

    // ---- send calls ----

    async fn handle_send(&self, ep: Endpoint, headers: &HeaderMap, raw: &[u8]) -> Response {
        let parsed: Option<Value> = serde_json::from_slice(raw).ok();
        let recorded = parsed
            .clone()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(raw).into_owned()));
        let (index, fault, random) = self.arrive(recorded);
        let (fault, late) = match random {
            None => (fault, None),
            Some(RandomSimFault::As(f)) => (Some(f), None),
            Some(RandomSimFault::Hang) => {
                tokio::time::sleep(Duration::from_millis(HANG_MS)).await;
                drop_connection()
            }
            Some(RandomSimFault::Late(ms)) => (None, Some(Late::Answer(ms))),
            Some(RandomSimFault::SlowBody(ms)) => (None, Some(Late::Body(ms))),
        };
        let fault = match fault {
            Some(SimFault::Delayed(ms, inner)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some(*inner)
            }
            other => other,
        };
        let fault = match fault {
            Some(SimFault::Delay(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                None
            }
            Some(SimFault::DropConnection) => drop_connection(),
            other => other,
        };
        let answer = self.answer(ep, fault, headers, parsed.as_ref());
        self.settle(index, &answer);
        if !answer.queued.is_empty() {
            self.spawn_receipts(answer.queued.clone());
        }
        match late {
            None => answer.into_response(),
            Some(Late::Answer(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                answer.into_response()
            }
            Some(Late::Body(ms)) => trickled(answer, ms),
        }
    }

    /// Records the arrival (status 0 until answered) and takes the next queued fault or, with
    /// none queued, draws a random one, atomically, so arrival order and fault order agree
    /// even for concurrent calls.
    fn arrive(&self, body: Value) -> (usize, Option<SimFault>, Option<RandomSimFault>) {
        let mut st = self.state();
        st.sent.push(SimArrival {
            arrival_ms: now_ms(),
            arrived: std::time::Instant::now(),
            body,
            status: 0,
            message_ids: Vec::new(),
        });
        let queued = st.faults.pop_front();
        let random = match queued {
            Some(_) => None,
            None => st.fault_rates.draw(),
        };
        (st.sent.len() - 1, queued, random)
    }

    fn settle(&self, index: usize, answer: &Answer) {
        if let Some(a) = self.state().sent.get_mut(index) {
            a.status = answer.status.as_u16();
            a.message_ids = answer.message_ids.clone();
        }
    }

    fn answer(
        &self,
        ep: Endpoint,
        fault: Option<SimFault>,
        headers: &HeaderMap,
        body: Option<&Value>,
    ) -> Answer {
        let forced_status = match fault {
            Some(SimFault::Http5xx(code)) => {
                return Answer::error(code, "Internal server error (simulated).");
            }
            Some(SimFault::Throttle { retry_after }) => {
                let mut a = Answer::error(429, "Too many requests (simulated).");
                a.retry_after = retry_after;
                return a;
            }
            Some(SimFault::Unauthorized) => {
                return Answer::error(401, "Invalid credentials (simulated).");
            }
            Some(SimFault::MessageStatus(s)) => Some(s),
            _ => None,
        };
        if !self.authorized(headers) {
            return Answer::error(401, "Unauthorized: check your username and API key.");
        }
        match validate(ep, body) {
            Ok((messages, media)) => self.accept(messages, media, forced_status),
            Err(why) => Answer::error(400, &why),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let expected = format!("{}:{}", self.inner.cfg.username, self.inner.cfg.api_key);
        basic_credentials(headers).is_some_and(|got| got == expected)
    }

    /// A valid call: every message gets an id and a status (SUCCESS unless a fault says not).
    fn accept(&self, messages: &[Value], media: Option<&str>, forced: Option<String>) -> Answer {
        let now_s = now_ms() / 1000;
        let recipient_faults = self.state().recipient_faults.clone();
        let (mut out, mut ids, mut queued) = (Vec::new(), Vec::new(), Vec::new());
        for m in messages {
            let to = str_of(m, "to");
            let status = recipient_faults
                .get(to)
                .cloned()
                .or_else(|| forced.clone())
                .unwrap_or_else(|| "SUCCESS".into());
            let id = new_message_id();
            if status == "SUCCESS" {
                queued.push(id.clone());
            }
            out.push(message_record(m, media, &id, &status, now_s));
            ids.push(id);
        }
        let price = 0.077 * queued.len() as f64;
        Answer {
            status: StatusCode::OK,
            body: json!({
                "http_code": 200,
                "response_code": "SUCCESS",
                "response_msg": "Messages queued for delivery.",
                "data": {
                    "total_price": price,
                    "total_count": out.len(),
                    "queued_count": queued.len(),
                    "blocked_count": out.len() - queued.len(),
                    "messages": out,
                },
            }),
            retry_after: None,
            message_ids: ids,
            queued,
        }
    }

    /// After `receipt_delay_ms`, a 201 Delivered receipt per queued message, retried a little.
    fn spawn_receipts(&self, ids: Vec<String>) {
        if self.inner.cfg.receipt_url.is_none() {
            return;
        }
        let sim = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(sim.inner.cfg.receipt_delay_ms)).await;
            for id in ids {
                sim.push_receipt_retrying(&id).await;
            }
        });
    }

    /// A redelivery repeats the same receipt byte for byte (same `timestamp`), as a
    /// redelivered webhook would, so the gateway's dedupe key sees a duplicate.
    async fn push_receipt_retrying(&self, id: &str) {
        let Some(url) = self.inner.cfg.receipt_url.as_deref() else {
            return;
        };
        let form = self.receipt_form(id, 201, None);
        for attempt in 1..=RECEIPT_ATTEMPTS {
            match self.post_form(url, &form).await {
                Ok(s) if (200..300).contains(&s) => return,
                Ok(s) => tracing::debug!(
                    message_id = id,
                    status = s,
                    attempt,
                    "sim: receipt push refused"
                ),
                Err(e) => {
                    tracing::debug!(message_id = id, error = %e, attempt, "sim: receipt push failed")
                }
            }
            tokio::time::sleep(RECEIPT_RETRY_DELAY).await;
        }
    }

    // ---- pushes toward the gateway ----

    /// The receipt fields of §1.5. `custom_string` is documented as deprecated and null.
    pub fn receipt_form(
        &self,
        message_id: &str,
        status_code: u16,
        error_text: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let (sent_ms, is_mms) = self.find_sent(message_id).unwrap_or((now_ms(), false));
        let status_text = match status_code {
            200 => "Sent",
            201 => "Delivered",
            300 => "Temporary network error",
            301 => "Failed",
            _ => "Unknown",
        };
        vec![
            ("message_id", message_id.to_string()),
            ("status_code", status_code.to_string()),
            ("status_text", status_text.to_string()),
            ("error_code", String::new()),
            ("error_text", error_text.unwrap_or("").to_string()),
            ("timestamp_send", (sent_ms / 1000).to_string()),
            ("timestamp", (now_ms() / 1000).to_string()),
            ("custom_string", String::new()),
            ("subaccount_id", "1".to_string()),
            (
                "message_type",
                if is_mms { "mms" } else { "sms" }.to_string(),
            ),
        ]
    }

    /// When the message was sent and whether it went as MMS.
    fn find_sent(&self, message_id: &str) -> Option<(i64, bool)> {
        let st = self.state();
        st.sent
            .iter()
            .find(|a| a.message_ids.iter().any(|m| m == message_id))
            .map(|a| (a.arrival_ms, a.body.get("media_file").is_some()))
    }

    /// The inbound fields of §1.4, with the legacy duplicates real pushes carry. Like
    /// ClickSend, `original_*` describe the last message sent to this contact.
    pub fn inbound_form(&self, from: &str, to: &str, body: &str) -> Vec<(&'static str, String)> {
        let (orig_id, orig_body, orig_custom) = self.last_sent_to(from).unwrap_or_default();
        vec![
            ("timestamp", (now_ms() / 1000).to_string()),
            ("from", from.to_string()),
            ("to", to.to_string()),
            ("body", body.to_string()),
            ("original_body", orig_body.clone()),
            ("original_message_id", orig_id.clone()),
            ("custom_string", orig_custom.clone()),
            ("message_id", new_message_id()),
            ("user_id", "1".to_string()),
            ("subaccount_id", "1".to_string()),
            ("message", body.to_string()),
            ("originalmessage", orig_body),
            ("originalmessageid", orig_id),
            ("customstring", orig_custom),
        ]
    }

    /// (message_id, body, custom_string) of the newest message accepted for `contact`.
    fn last_sent_to(&self, contact: &str) -> Option<(String, String, String)> {
        let st = self.state();
        st.sent
            .iter()
            .rev()
            .filter(|a| a.status == 200)
            .find_map(|a| {
                let msgs = a.body.get("messages")?.as_array()?;
                msgs.iter()
                    .zip(&a.message_ids)
                    .rev()
                    .find(|(m, _)| str_of(m, "to") == contact)
                    .map(|(m, id)| {
                        (
                            id.clone(),
                            str_of(m, "body").to_string(),
                            str_of(m, "custom_string").to_string(),
                        )
                    })
            })
    }
}

/// A random fault that still sends the messages but answers slowly.
enum Late {
    /// The whole answer waits this many ms.
    Answer(u64),
    /// Status and headers at once, the body trickled over this many ms.
    Body(u64),
}

/// `answer` with its body sent in small pieces spread over `ms`.
fn trickled(answer: Answer, ms: u64) -> Response {
    const PIECES: u64 = 8;
    let mut resp = answer.into_response();
    let body = std::mem::take(resp.body_mut());
    let stream = futures::stream::once(axum::body::to_bytes(body, usize::MAX))
        .map(move |whole| {
            let whole = whole.unwrap_or_default();
            let size = whole.len().div_ceil(PIECES as usize).max(1);
            let pieces: Vec<Bytes> = whole.chunks(size).map(Bytes::copy_from_slice).collect();
            futures::stream::iter(pieces).then(move |piece| async move {
                tokio::time::sleep(Duration::from_millis(ms / PIECES)).await;
                Ok::<_, std::convert::Infallible>(piece)
            })
        })
        .flatten();
    *resp.body_mut() = axum::body::Body::from_stream(stream);
    // The length is no longer known up front.
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp
}

/// Ends the connection without an answer. Unwinding out of the handler drops hyper's
/// connection task (axum::serve runs one task per connection; tokio contains the unwind),
/// which closes the socket. `resume_unwind` skips the panic hook, so nothing is printed.
/// A router wrapped in a catch-panic layer would turn this into a 500 instead.
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("clicksend sim: dropping connection"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `Authorization: Basic <base64(user:key)>` decoded, if well formed.
fn basic_credentials(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    String::from_utf8(raw).ok()
}

/// The documented request rules; `Err` is the 400 `response_msg`.
fn validate(ep: Endpoint, body: Option<&Value>) -> Result<(&[Value], Option<&str>), String> {
    let body = body
        .and_then(Value::as_object)
        .ok_or("Request body must be a JSON object.")?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("messages must be a non-empty array.")?;
    let media = match ep {
        Endpoint::Sms => None,
        Endpoint::Mms => Some(
            body.get("media_file")
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .ok_or("media_file is required for MMS.")?,
        ),
    };
    for (i, m) in messages.iter().enumerate() {
        for key in ["to", "body"] {
            if str_of(m, key).trim().is_empty() {
                return Err(format!("messages[{i}].{key} is required."));
            }
        }
        if ep == Endpoint::Mms {
            let n = str_of(m, "subject").trim().chars().count();
            if !(1..=MMS_SUBJECT_MAX).contains(&n) {
                return Err(format!(
                    "messages[{i}].subject is required (max {MMS_SUBJECT_MAX} characters)."
                ));
            }
        }
    }
    Ok((messages, media))
}

/// One element of `data.messages` in the §1.3 success shape.
fn message_record(m: &Value, media: Option<&str>, id: &str, status: &str, now_s: i64) -> Value {
    let body = str_of(m, "body");
    let mut rec = json!({
        "direction": "out",
        "date": now_s,
        "to": str_of(m, "to"),
        "from": str_of(m, "from"),
        "body": body,
        "schedule": str_of(m, "schedule"),
        "message_id": id,
        "message_parts": message_parts(body),
        "message_price": if status == "SUCCESS" { "0.0770" } else { "0.0000" },
        "custom_string": str_of(m, "custom_string"),
        "user_id": 1,
        "subaccount_id": 1,
        "country": "AU",
        "carrier": "Telstra",
        "status": status,
    });
    if let Some(url) = media {
        rec["subject"] = json!(str_of(m, "subject"));
        rec["_media_file_url"] = json!(url);
    }
    rec
}

/// SMS parts: 160/153 characters for GSM-ish text, 70/67 once anything needs UCS-2.
fn message_parts(body: &str) -> u32 {
    let n = body.chars().count();
    let (single, multi) = if body.is_ascii() {
        (160, 153)
    } else {
        (70, 67)
    };
    if n <= single {
        1
    } else {
        n.div_ceil(multi) as u32
    }
}

/// An uppercase UUID-shaped id, like ClickSend's `BF7AD270-0DE2-418B-B606-71D527D9C1AE`.
fn new_message_id() -> String {
    let v: u128 = rand::random();
    let hex = format!("{v:032X}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

// ---- axum handlers ----

async fn send_sms(State(sim): State<ClickSendSim>, headers: HeaderMap, body: Bytes) -> Response {
    sim.handle_send(Endpoint::Sms, &headers, &body).await
}

async fn send_mms(State(sim): State<ClickSendSim>, headers: HeaderMap, body: Bytes) -> Response {
    sim.handle_send(Endpoint::Mms, &headers, &body).await
}

async fn ctl_sent(State(sim): State<ClickSendSim>) -> Response {
    axum::Json(sim.sent()).into_response()
}

use super::control::{InboundReq, bad_request, one_or_many, push_outcome};

async fn ctl_inbound(State(sim): State<ClickSendSim>, body: Bytes) -> Response {
    match serde_json::from_slice::<InboundReq>(&body) {
        Ok(r) => push_outcome(sim.push_inbound(&r.from, &r.to, &r.body).await),
        Err(e) => bad_request(e),
    }
}

async fn ctl_faults(State(sim): State<ClickSendSim>, body: Bytes) -> Response {
    let faults = match one_or_many::<SimFault>(&body) {
        Ok(fs) => fs,
        Err(r) => return r,
    };
    let queued = faults.len();
    faults.into_iter().for_each(|f| sim.push_fault(f));
    axum::Json(json!({ "queued": queued })).into_response()
}

#[derive(Deserialize)]
struct RecipientFaultReq {
    to: String,
    status: String,
}

async fn ctl_recipient_faults(State(sim): State<ClickSendSim>, body: Bytes) -> Response {
    match serde_json::from_slice::<RecipientFaultReq>(&body) {
        Ok(r) => {
            sim.set_fault_for_recipient(&r.to, &r.status);
            axum::Json(json!({ "ok": true })).into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn ctl_fault_rates(State(sim): State<ClickSendSim>, body: Bytes) -> Response {
    match serde_json::from_slice::<SimFaultRates>(&body) {
        Ok(rates) if !rates.is_valid() => {
            bad_request("rates: each must be in 0..=1 and together at most 1")
        }
        Ok(rates) => {
            sim.set_fault_rates(rates);
            axum::Json(json!({ "ok": true })).into_response()
        }
        Err(e) => bad_request(e),
    }
}

#[derive(Deserialize)]
struct ReceiptReq {
    message_id: String,
    status_code: u16,
    #[serde(default)]
    error_text: Option<String>,
}

async fn ctl_receipts(State(sim): State<ClickSendSim>, body: Bytes) -> Response {
    match serde_json::from_slice::<ReceiptReq>(&body) {
        Ok(r) => push_outcome(
            sim.push_receipt(&r.message_id, r.status_code, r.error_text.as_deref())
                .await,
        ),
        Err(e) => bad_request(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    struct Running {
        sim: ClickSendSim,
        base: String,
        http: reqwest::Client,
    }

    impl Running {
        fn send(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
            self.http
                .post(format!("{}{path}", self.base))
                .basic_auth("user", Some("key"))
                .json(&body)
        }
    }

    async fn start(receipt_url: Option<String>, inbound_url: Option<String>) -> Running {
        let sim = ClickSendSim::new(SimConfig {
            username: "user".into(),
            api_key: "key".into(),
            receipt_url,
            receipt_delay_ms: 10,
            inbound_url,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener));
        Running {
            sim,
            base,
            http: reqwest::Client::new(),
        }
    }

    fn one(to: &str, body: &str) -> Value {
        json!({ "messages": [{ "source": "test", "to": to, "body": body, "custom_string": "mid-1" }] })
    }

    /// A gateway stand-in that records each call's query and body, refusing the first
    /// `fail_first` with a 500.
    #[derive(Clone, Default)]
    struct Receiver {
        hits: Arc<Mutex<Vec<(String, String)>>>,
    }

    impl Receiver {
        async fn start(fail_first: usize) -> (Receiver, String) {
            let rx = Receiver::default();
            let hits = rx.hits.clone();
            let app = Router::new().fallback(move |uri: axum::http::Uri, body: String| {
                let hits = hits.clone();
                async move {
                    let mut h = hits.lock().unwrap();
                    h.push((uri.query().unwrap_or("").to_string(), body));
                    if h.len() <= fail_first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (rx, base)
        }

        fn hits(&self) -> Vec<(String, String)> {
            self.hits.lock().unwrap().clone()
        }

        async fn wait_for(&self, n: usize) -> Vec<(String, String)> {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.hits().len() < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.hits()
        }
    }

    fn form(body: &str) -> HashMap<String, String> {
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    #[tokio::test]
    async fn rejects_bad_credentials_and_records_them() {
        let r = start(None, None).await;
        let url = format!("{}/v3/sms/send", r.base);
        let no_auth = r
            .http
            .post(&url)
            .json(&one("+61422222222", "hi"))
            .send()
            .await
            .unwrap();
        let wrong = r
            .http
            .post(&url)
            .basic_auth("user", Some("nope"))
            .json(&one("+61422222222", "hi"))
            .send()
            .await
            .unwrap();
        for resp in [no_auth, wrong] {
            assert_eq!(resp.status(), 401);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["response_code"], "UNAUTHORIZED");
            assert_eq!(v["http_code"], 401);
        }
        let sent = r.sim.sent();
        assert_eq!(
            sent.iter().map(|a| a.status).collect::<Vec<_>>(),
            [401, 401]
        );
        assert!(sent.iter().all(|a| a.message_ids.is_empty()));
    }

    #[tokio::test]
    async fn rejects_malformed_bodies() {
        let r = start(None, None).await;
        let cases = [
            ("/v3/sms/send", json!("not an object")),
            ("/v3/sms/send", json!({ "messages": [] })),
            (
                "/v3/sms/send",
                json!({ "messages": [{ "to": "+61422222222" }] }),
            ),
            ("/v3/sms/send", json!({ "messages": [{ "body": "hi" }] })),
            ("/v3/mms/send", one("+61422222222", "hi")),
            (
                "/v3/mms/send",
                json!({ "media_file": "https://x/y.jpg", "messages": [{ "to": "+6142", "body": "b", "subject": "x".repeat(21) }] }),
            ),
        ];
        for (path, body) in &cases {
            let resp = r.send(path, body.clone()).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{path} {body}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["response_code"], "BAD_REQUEST");
        }
        let raw = r
            .http
            .post(format!("{}/v3/sms/send", r.base))
            .basic_auth("user", Some("key"))
            .body("to=+614&body=hi")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 400);
        let sent = r.sim.sent();
        assert_eq!(sent.len(), cases.len() + 1);
        assert_eq!(sent.last().unwrap().body, json!("to=+614&body=hi"));
    }

    #[tokio::test]
    async fn success_has_clicksend_shape() {
        let r = start(None, None).await;
        let body = json!({ "messages": [
            { "source": "t", "to": "+61422222222", "body": "one", "from": "+61411111111", "custom_string": "a" },
            { "source": "t", "to": "+61433333333", "body": "x".repeat(161) },
        ]});
        let resp = r.send("/v3/sms/send", body.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["http_code"], 200);
        assert_eq!(v["response_code"], "SUCCESS");
        assert_eq!(v["data"]["queued_count"], 2);
        let msgs = v["data"]["messages"].as_array().unwrap();
        assert_eq!(msgs[0]["status"], "SUCCESS");
        assert_eq!(msgs[0]["custom_string"], "a");
        assert_eq!(msgs[0]["from"], "+61411111111");
        assert_eq!(msgs[1]["message_parts"], 2);
        let ids: Vec<&str> = msgs
            .iter()
            .map(|m| m["message_id"].as_str().unwrap())
            .collect();
        assert_ne!(ids[0], ids[1]);
        for id in &ids {
            assert_eq!(id.len(), 36);
            assert_eq!(
                id.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>(),
                [8, 13, 18, 23]
            );
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase())
            );
        }
        let sent = r.sim.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].body, body);
        assert_eq!(sent[0].message_ids, ids);
        assert!(sent[0].arrival_ms > 0);

        let mms = json!({ "media_file": "https://x/y.jpg", "messages": [{ "to": "+61422222222", "body": "b", "subject": "s" }] });
        let v: Value = r
            .send("/v3/mms/send", mms)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            v["data"]["messages"][0]["_media_file_url"],
            "https://x/y.jpg"
        );
    }

    #[tokio::test]
    async fn faults_apply_in_order_then_normal_service_resumes() {
        let r = start(None, None).await;
        r.sim.push_fault(SimFault::Http5xx(503));
        r.sim.push_fault(SimFault::Throttle {
            retry_after: Some(3),
        });
        // The rest arrive over the control endpoint, in its JSON form.
        let ctl = json!([ "unauthorized", { "message_status": "INSUFFICIENT_CREDIT" }, { "delay": 150 } ]);
        let resp = r
            .http
            .post(format!("{}/_sim/faults", r.base))
            .json(&ctl)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);

        let mut statuses = Vec::new();
        for _ in 0..6 {
            let started = Instant::now();
            let resp = r
                .send("/v3/sms/send", one("+61422222222", "hi"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = resp.json().await.unwrap();
            statuses.push((
                status,
                retry_after,
                v["data"]["messages"][0]["status"]
                    .as_str()
                    .map(str::to_string),
                started.elapsed(),
            ));
        }
        let codes: Vec<u16> = statuses.iter().map(|s| s.0).collect();
        assert_eq!(codes, [503, 429, 401, 200, 200, 200]);
        assert_eq!(statuses[1].1.as_deref(), Some("3"));
        assert_eq!(statuses[3].2.as_deref(), Some("INSUFFICIENT_CREDIT"));
        assert!(
            statuses[4].3 >= Duration::from_millis(150),
            "delay fault waited"
        );
        assert_eq!(statuses[4].2.as_deref(), Some("SUCCESS"));
        assert_eq!(statuses[5].2.as_deref(), Some("SUCCESS"));
        assert_eq!(r.sim.sent().len(), 6, "every call recorded");
    }

    #[tokio::test]
    async fn random_faults_follow_their_rates() {
        let r = start(None, None).await;
        let send = || async {
            let started = Instant::now();
            let resp = r
                .send("/v3/sms/send", one("+61422222222", "hi"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match resp {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp.headers().get("retry-after").cloned();
                    let body = resp.text().await.map_err(|e| e.to_string());
                    (Some(status), retry_after, body, started.elapsed())
                }
                Err(e) => (None, None, Err(e.to_string()), started.elapsed()),
            }
        };
        let rates = |f: fn(&mut SimFaultRates)| {
            let mut rates = SimFaultRates {
                late_ms: 300,
                ..SimFaultRates::default()
            };
            f(&mut rates);
            r.sim.set_fault_rates(rates);
        };
        rates(|r| r.server_error = 1.0);
        assert_eq!(send().await.0, Some(503));
        rates(|r| r.throttle = 1.0);
        let (status, retry_after, ..) = send().await;
        assert_eq!(
            (status, retry_after.unwrap()),
            (Some(429), "1".parse().unwrap())
        );
        rates(|r| r.throttle_bare = 1.0);
        let (status, retry_after, ..) = send().await;
        assert_eq!((status, retry_after), (Some(429), None));
        rates(|r| r.reset = 1.0);
        assert_eq!(send().await.0, None, "reset: no answer");
        rates(|r| r.hang = 1.0);
        let (status, _, body, _) = send().await;
        assert!(status.is_none() && body.is_err(), "hang: no answer in 2 s");
        rates(|r| r.late = 1.0);
        let (status, _, body, took) = send().await;
        assert_eq!(status, Some(200));
        assert!(body.unwrap().contains("SUCCESS"));
        assert!(
            took >= Duration::from_millis(300),
            "late answer after {took:?}"
        );
        rates(|r| r.slow_body = 1.0);
        let (status, _, body, took) = send().await;
        assert_eq!(status, Some(200));
        let body: Value = serde_json::from_str(&body.unwrap()).unwrap();
        assert_eq!(body["data"]["messages"][0]["status"], "SUCCESS");
        assert!(took >= Duration::from_millis(200), "trickled over {took:?}");
        // A queued fault goes before the random draw; all zeros behave.
        r.sim.push_fault(SimFault::Http5xx(502));
        assert_eq!(send().await.0, Some(502));
        rates(|_| {});
        assert_eq!(send().await.0, Some(200));
        // Only the calls that sent something carry ids: late, slow body, the last one.
        let sent = r.sim.sent();
        let statuses: Vec<u16> = sent.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [503, 429, 429, 0, 0, 200, 200, 502, 200]);
        let with_ids = sent.iter().filter(|a| !a.message_ids.is_empty()).count();
        assert_eq!(with_ids, 3);
        // The control endpoint takes the same switches.
        let resp = r
            .http
            .post(format!("{}/_sim/fault-rates", r.base))
            .json(&json!({"server_error": 1.0}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(send().await.0, Some(503));
        let resp = r
            .http
            .post(format!("{}/_sim/fault-rates", r.base))
            .json(&json!({"server_error": 0.8, "hang": 0.8}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "impossible rates are refused");
    }

    #[tokio::test]
    async fn dropped_connection_gets_no_answer() {
        let r = start(None, None).await;
        r.sim.push_fault(SimFault::DropConnection);
        let err = r
            .send("/v3/sms/send", one("+61422222222", "hi"))
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_connect(), "the request went out: {err}");
        let sent = r.sim.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, 0);
        // The server survives.
        assert_eq!(
            r.send("/v3/sms/send", one("+61422222222", "hi"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }

    #[tokio::test]
    async fn recipient_fault_sticks_to_that_number() {
        let r = start(None, None).await;
        r.sim
            .set_fault_for_recipient("+61400000000", "INVALID_RECIPIENT");
        let body = json!({ "messages": [
            { "to": "+61400000000", "body": "a" },
            { "to": "+61422222222", "body": "b" },
        ]});
        for _ in 0..2 {
            let v: Value = r
                .send("/v3/sms/send", body.clone())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["data"]["messages"][0]["status"], "INVALID_RECIPIENT");
            assert_eq!(v["data"]["messages"][1]["status"], "SUCCESS");
            assert_eq!(v["data"]["blocked_count"], 1);
        }
    }

    #[tokio::test]
    async fn pushes_delivery_receipts_and_retries_refusals() {
        let (rx, rx_base) = Receiver::start(1).await;
        let r = start(Some(format!("{rx_base}/status?secret=abc")), None).await;
        let v: Value = r
            .send("/v3/sms/send", one("+61422222222", "hi"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["data"]["messages"][0]["message_id"]
            .as_str()
            .unwrap()
            .to_string();

        let hits = rx.wait_for(2).await;
        assert_eq!(hits.len(), 2, "refused once, then redelivered");
        assert_eq!(hits[0], hits[1]);
        let (query, body) = &hits[1];
        assert_eq!(query, "secret=abc");
        let f = form(body);
        assert_eq!(f["message_id"], id);
        assert_eq!(f["status_code"], "201");
        assert_eq!(f["status_text"], "Delivered");
        assert_eq!(f["message_type"], "sms");
        assert!(f["timestamp"].parse::<i64>().unwrap() > 0);

        // A failure receipt on demand, over the control endpoint.
        let ctl =
            json!({ "message_id": id, "status_code": 301, "error_text": "Unknown subscriber" });
        let v: Value = r
            .http
            .post(format!("{}/_sim/receipts", r.base))
            .json(&ctl)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], 200);
        let f = form(&rx.hits()[2].1);
        assert_eq!(
            (f["status_code"].as_str(), f["error_text"].as_str()),
            ("301", "Unknown subscriber")
        );
    }

    #[tokio::test]
    async fn no_receipt_for_failed_messages() {
        let (rx, rx_base) = Receiver::start(0).await;
        let r = start(Some(format!("{rx_base}/status")), None).await;
        r.sim
            .push_fault(SimFault::MessageStatus("INVALID_RECIPIENT".into()));
        r.send("/v3/sms/send", one("+61422222222", "hi"))
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.hits().is_empty());
    }

    #[tokio::test]
    async fn pushes_inbound_with_fresh_ids_and_threading() {
        let (rx, rx_base) = Receiver::start(0).await;
        let r = start(None, Some(format!("{rx_base}/inbound?secret=abc"))).await;
        let v: Value = r
            .send("/v3/sms/send", one("+61422222222", "Your order shipped"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sent_id = v["data"]["messages"][0]["message_id"]
            .as_str()
            .unwrap()
            .to_string();

        assert_eq!(
            r.sim
                .push_inbound("+61422222222", "+61411111111", "Thanks!")
                .await,
            Ok(200)
        );
        let ctl = json!({ "from": "+61499999999", "to": "+61411111111", "body": "Who is this?" });
        let v: Value = r
            .http
            .post(format!("{}/_sim/inbound", r.base))
            .json(&ctl)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], 200);

        let hits = rx.hits();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].0, "secret=abc");
        let (a, b) = (form(&hits[0].1), form(&hits[1].1));
        assert_eq!(
            (a["from"].as_str(), a["to"].as_str(), a["body"].as_str()),
            ("+61422222222", "+61411111111", "Thanks!")
        );
        assert_eq!(a["message"], "Thanks!");
        assert_eq!(a["original_message_id"], sent_id);
        assert_eq!(a["original_body"], "Your order shipped");
        assert_eq!(a["custom_string"], "mid-1");
        assert_eq!(
            b["original_message_id"], "",
            "no earlier message to this contact"
        );
        assert_ne!(a["message_id"], b["message_id"]);
        assert_eq!(a["message_id"].len(), 36);
    }

    #[tokio::test]
    async fn pushes_need_a_target() {
        let r = start(None, None).await;
        assert!(
            r.sim
                .push_inbound("+61422222222", "+61411111111", "x")
                .await
                .is_err()
        );
        assert!(r.sim.push_receipt("ID", 201, None).await.is_err());
        let resp = r
            .http
            .post(format!("{}/_sim/inbound", r.base))
            .json(&json!({ "from": "+6142" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }

    #[tokio::test]
    async fn sent_is_served_over_http() {
        let r = start(None, None).await;
        r.send("/v3/sms/send", one("+61422222222", "hi"))
            .send()
            .await
            .unwrap();
        let v: Value = r
            .http
            .get(format!("{}/_sim/sent", r.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["status"], 200);
        assert_eq!(v[0]["body"]["messages"][0]["body"], "hi");
        assert_eq!(v[0]["message_ids"].as_array().unwrap().len(), 1);
    }
}
