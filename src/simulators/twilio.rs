//! A local Twilio Programmable Messaging (shared/spec/providers.md §2) for tests.
//!
//! It enforces what Twilio documents for `POST /2010-04-01/Accounts/{Sid}/Messages.json`
//! (Basic auth with the Account SID and Auth Token, `To`, `From` or `MessagingServiceSid`,
//! `Body` or `MediaUrl`, body ≤ 1600 characters, ≤ 10 media), answers in Twilio's shapes
//! (201 message resource; `{"code","message","more_info","status"}` errors with the real
//! codes), records every raw arrival and never dedupes. It pushes inbound messages and
//! status callbacks the way Twilio does: form POSTs signed with `X-Twilio-Signature` over
//! the exact URL. Status callbacks go to the `StatusCallback` each send named. It serves
//! the inbound media it announces, behind Basic auth when `media_auth` is on.
//!
//! Control endpoints (JSON): `GET /_sim/sent` → `[TwilioArrival]`; `POST /_sim/faults` one
//! fault or an array, e.g. `[{"http5xx":503},{"throttle":{"retry_after":2}},"unauthorized",
//! {"api_error":{"status":400,"code":21211}},{"delay":500},"drop_connection"]`;
//! `POST /_sim/inbound` `{"from","to","body"}` → `{"status"}`; `POST /_sim/status`
//! `{"sid","status","error_code"?}` → `{"status"}`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::providers::twilio::{SIGNATURE_HEADER, sign};

const MAX_BODY_CHARS: usize = 1600;
const MAX_MEDIA: usize = 10;
/// The bytes served for every simulated inbound picture.
pub const MEDIA_BYTES: &[u8] = b"\x89PNG\r\n\x1a\nsimulated twilio media";

#[derive(Debug, Clone, Default)]
pub struct TwilioSimConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// Where `push_inbound` posts (the phone number's "A message comes in" URL).
    pub inbound_url: Option<String>,
    /// After each accepted send with a `StatusCallback`, push `sent` then `delivered`.
    pub auto_receipts: bool,
    pub receipt_delay_ms: u64,
    /// Media URLs need the account's Basic auth ("HTTP Basic Authentication for media").
    pub media_auth: bool,
}

/// A queued misbehaviour; each send call consumes one.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TwilioFault {
    /// This HTTP status (meant for 5xx) with Twilio's error body (code 20500).
    Http5xx(u16),
    /// 429, code 20429, with `Retry-After: <seconds>` if given.
    Throttle { retry_after: Option<u64> },
    /// 401, code 20003, even with the right credentials.
    Unauthorized,
    /// Any documented error: HTTP status and Twilio error code (e.g. 400 / 21211).
    ApiError { status: u16, code: u32 },
    /// Wait this many ms, then answer normally.
    Delay(u64),
    /// Close the connection without answering.
    DropConnection,
}

/// One send call as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TwilioArrival {
    pub arrival_ms: i64,
    /// The form parameters in order (repeated `MediaUrl`s included).
    pub params: Vec<(String, String)>,
    /// The HTTP status answered; 0 while answering or when the connection was dropped.
    pub status: u16,
    /// The message SID assigned (201 only).
    pub sid: Option<String>,
}

impl TwilioArrival {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn params_named(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What `push_inbound` sends.
#[derive(Debug, Clone, Default)]
pub struct TwilioInbound {
    pub from: String,
    pub to: String,
    pub body: String,
    /// Content types of the pictures to attach (served by the stand-in).
    pub media: Vec<String>,
    /// WhatsApp's profile name.
    pub profile_name: Option<String>,
}

#[derive(Clone)]
pub struct TwilioSim {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TwilioSimConfig,
    client: reqwest::Client,
    state: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    base: String,
    sent: Vec<TwilioArrival>,
    faults: VecDeque<TwilioFault>,
    /// StatusCallback per message SID.
    callbacks: HashMap<String, String>,
}

fn error_body(status: u16, code: u32, message: &str) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

fn error(status: u16, code: u32, message: &str) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (s, axum::Json(error_body(status, code, message))).into_response()
}

/// `MM`/`SM`/`ME` + 32 hex characters.
fn new_sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

fn e164(n: &str) -> bool {
    let d = n.strip_prefix('+').unwrap_or("");
    (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

impl TwilioSim {
    pub fn new(cfg: TwilioSimConfig) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Twilio gives a webhook 15 s in all (§2.7).
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        TwilioSim {
            inner: Arc::new(Inner {
                cfg,
                client,
                state: Mutex::new(SimState::default()),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(send_message),
            )
            .route(
                "/2010-04-01/Accounts/{account}/Messages/{message}/Media/{media}",
                get(get_media),
            )
            .route("/_sim/sent", get(ctl_sent))
            .route("/_sim/faults", post(ctl_faults))
            .route("/_sim/inbound", post(ctl_inbound))
            .route("/_sim/status", post(ctl_status))
            .with_state(self.clone())
    }

    /// Serves on `listener`. The media URLs it announces use the listener's address, which
    /// is recorded before this returns (not when the future first runs).
    pub fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        if let Ok(addr) = listener.local_addr() {
            self.state().base = format!("http://{addr}");
        }
        let router = self.router();
        async move { axum::serve(listener, router).await }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every send call so far, in arrival order.
    pub fn sent(&self) -> Vec<TwilioArrival> {
        self.state().sent.clone()
    }

    pub fn push_fault(&self, f: TwilioFault) {
        self.state().faults.push_back(f);
    }

    /// POSTs a signed inbound message to `inbound_url` with a fresh MessageSid. Returns the
    /// gateway's status, content type and body (Twilio expects TwiML).
    pub async fn push_inbound(&self, msg: &TwilioInbound) -> Result<(u16, String, String), String> {
        let url = self
            .inner
            .cfg
            .inbound_url
            .clone()
            .ok_or("stand-in has no inbound_url")?;
        let form = self.inbound_form(msg);
        self.post_signed(&url, &form, None).await
    }

    /// POSTs one status callback for `sid` to the StatusCallback its send named.
    pub async fn push_status(
        &self,
        sid: &str,
        status: &str,
        error_code: Option<u32>,
    ) -> Result<u16, String> {
        let url = self
            .state()
            .callbacks
            .get(sid)
            .cloned()
            .ok_or_else(|| format!("no StatusCallback recorded for {sid}"))?;
        let form = self.status_form(sid, status, error_code);
        self.post_signed(&url, &form, None).await.map(|r| r.0)
    }

    /// Signs `form` for `url` with the Auth Token (or `bad_token`, to play an impostor)
    /// and POSTs it.
    pub async fn post_signed(
        &self,
        url: &str,
        form: &[(String, String)],
        bad_token: Option<&str>,
    ) -> Result<(u16, String, String), String> {
        let token = bad_token.unwrap_or(&self.inner.cfg.auth_token);
        let signature = sign(token, url, form);
        let resp = self
            .inner
            .client
            .post(url)
            .header(SIGNATURE_HEADER, signature)
            .form(form)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, ct, body))
    }

    /// The fields of a real inbound webhook (§2.3), media served by this stand-in.
    pub fn inbound_form(&self, msg: &TwilioInbound) -> Vec<(String, String)> {
        let sid = new_sid(if msg.media.is_empty() { "SM" } else { "MM" });
        let account = &self.inner.cfg.account_sid;
        let base = self.state().base.clone();
        let mut f: Vec<(String, String)> = vec![
            ("ToCountry".into(), "US".into()),
            ("ToState".into(), "CA".into()),
            ("SmsMessageSid".into(), sid.clone()),
            ("NumMedia".into(), msg.media.len().to_string()),
            ("ToCity".into(), String::new()),
            ("FromZip".into(), String::new()),
            ("SmsSid".into(), sid.clone()),
            ("FromState".into(), "CA".into()),
            ("SmsStatus".into(), "received".into()),
            ("FromCity".into(), String::new()),
            ("Body".into(), msg.body.clone()),
            ("FromCountry".into(), "US".into()),
            ("To".into(), msg.to.clone()),
            ("ToZip".into(), String::new()),
            ("NumSegments".into(), "1".into()),
            ("MessageSid".into(), sid.clone()),
            ("AccountSid".into(), account.clone()),
            ("From".into(), msg.from.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
        ];
        for (i, ct) in msg.media.iter().enumerate() {
            let url = format!(
                "{base}/2010-04-01/Accounts/{account}/Messages/{sid}/Media/{}",
                new_sid("ME")
            );
            f.push((format!("MediaContentType{i}"), ct.clone()));
            f.push((format!("MediaUrl{i}"), url));
        }
        if let Some(name) = &msg.profile_name {
            f.push(("ProfileName".into(), name.clone()));
            f.push((
                "WaId".into(),
                msg.from.trim_start_matches("whatsapp:+").to_string(),
            ));
        }
        f
    }

    /// The fields of a status callback (§2.4).
    fn status_form(
        &self,
        sid: &str,
        status: &str,
        error_code: Option<u32>,
    ) -> Vec<(String, String)> {
        let (to, from) = self
            .state()
            .sent
            .iter()
            .find(|a| a.sid.as_deref() == Some(sid))
            .map(|a| {
                (
                    a.param("To").unwrap_or("").to_string(),
                    a.param("From").unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default();
        let mut f: Vec<(String, String)> = vec![
            ("SmsSid".into(), sid.into()),
            ("SmsStatus".into(), status.into()),
            ("MessageStatus".into(), status.into()),
            ("To".into(), to),
            ("MessageSid".into(), sid.into()),
            ("AccountSid".into(), self.inner.cfg.account_sid.clone()),
            ("From".into(), from),
            ("ApiVersion".into(), "2010-04-01".into()),
        ];
        if let Some(c) = error_code {
            f.push(("ErrorCode".into(), c.to_string()));
        }
        f
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let want = format!(
            "{}:{}",
            self.inner.cfg.account_sid, self.inner.cfg.auth_token
        );
        basic_credentials(headers).is_some_and(|got| got == want)
    }

    async fn handle_send(&self, account: &str, headers: &HeaderMap, raw: &[u8]) -> Response {
        let params: Vec<(String, String)> = url::form_urlencoded::parse(raw).into_owned().collect();
        let (index, fault) = {
            let mut st = self.state();
            st.sent.push(TwilioArrival {
                arrival_ms: now_ms(),
                params: params.clone(),
                status: 0,
                sid: None,
            });
            (st.sent.len() - 1, st.faults.pop_front())
        };
        let fault = match fault {
            Some(TwilioFault::Delay(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                None
            }
            Some(TwilioFault::DropConnection) => {
                // Unwinding out of the handler drops the connection without an answer (see
                // the ClickSend stand-in).
                std::panic::resume_unwind(Box::new("twilio sim: dropping connection"))
            }
            other => other,
        };
        let (status, sid, resp) = self.answer(account, fault, headers, &params);
        {
            let mut st = self.state();
            if let Some(a) = st.sent.get_mut(index) {
                a.status = status;
                a.sid = sid.clone();
            }
        }
        if let Some(sid) = sid {
            self.after_accept(&sid, &params);
        }
        resp
    }

    fn answer(
        &self,
        account: &str,
        fault: Option<TwilioFault>,
        headers: &HeaderMap,
        params: &[(String, String)],
    ) -> (u16, Option<String>, Response) {
        let err = |status: u16, code: u32, msg: &str| (status, None, error(status, code, msg));
        match fault {
            Some(TwilioFault::Http5xx(s)) => return err(s, 20500, "Internal Server Error"),
            Some(TwilioFault::Throttle { retry_after }) => {
                let mut r = error(429, 20429, "Too Many Requests");
                if let Some(secs) = retry_after {
                    r.headers_mut().insert(header::RETRY_AFTER, secs.into());
                }
                return (429, None, r);
            }
            Some(TwilioFault::Unauthorized) => return err(401, 20003, "Authenticate"),
            Some(TwilioFault::ApiError { status, code }) => {
                return err(status, code, &format!("Simulated error {code}"));
            }
            _ => {}
        }
        if !self.authorized(headers) {
            return err(401, 20003, "Authenticate");
        }
        if account != self.inner.cfg.account_sid {
            return err(404, 20404, "The requested resource was not found");
        }
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let media: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k == "MediaUrl")
            .map(|(_, v)| v.as_str())
            .collect();
        let Some(to) = get("To") else {
            return err(400, 21604, "A 'To' phone number is required.");
        };
        let to_number = to.strip_prefix("whatsapp:").unwrap_or(to);
        if !e164(to_number) {
            return err(
                400,
                21211,
                &format!("The 'To' number {to} is not a valid phone number."),
            );
        }
        let from = get("From");
        if from.is_none() && get("MessagingServiceSid").is_none() {
            return err(400, 21603, "A 'From' phone number is required.");
        }
        if from.is_some_and(|f| f.starts_with("whatsapp:")) != to.starts_with("whatsapp:") {
            return err(
                400,
                63007,
                "Twilio could not find a Channel with the specified From address",
            );
        }
        let body = get("Body").unwrap_or("");
        if body.is_empty() && media.is_empty() {
            return err(400, 21602, "Message body is required.");
        }
        if body.chars().count() > MAX_BODY_CHARS {
            return err(
                400,
                21617,
                "The concatenated message body exceeds the 1600 character limit.",
            );
        }
        if media.len() > MAX_MEDIA {
            return err(400, 21623, "Number of media files exceeds allowed limit.");
        }
        if media.iter().any(|u| {
            !matches!(
                url::Url::parse(u)
                    .map(|u| u.scheme().to_string())
                    .as_deref(),
                Ok("http" | "https")
            )
        }) {
            return err(400, 21620, "Invalid media URL(s).");
        }
        if let Some(cb) = get("StatusCallback")
            && url::Url::parse(cb).is_err()
        {
            return err(400, 21609, "Invalid StatusCallback URL.");
        }
        let sid = new_sid(if media.is_empty() { "SM" } else { "MM" });
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        let account_sid = &self.inner.cfg.account_sid;
        let resource = json!({
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": null,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": from,
            "messaging_service_sid": get("MessagingServiceSid"),
            "num_media": media.len().to_string(),
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": if get("MessagingServiceSid").is_some() { "accepted" } else { "queued" },
            "subresource_uris": { "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json") },
            "to": to,
            "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
        });
        (
            201,
            Some(sid),
            (StatusCode::CREATED, axum::Json(resource)).into_response(),
        )
    }

    /// Remembers the StatusCallback and, if asked, plays the carrier: `sent`, then
    /// `delivered`. One attempt each, as Twilio without connection overrides retries only
    /// a failed connect.
    fn after_accept(&self, sid: &str, params: &[(String, String)]) {
        let Some(cb) = params
            .iter()
            .find(|(k, _)| k == "StatusCallback")
            .map(|(_, v)| v.clone())
        else {
            return;
        };
        self.state().callbacks.insert(sid.to_string(), cb);
        if !self.inner.cfg.auto_receipts {
            return;
        }
        let (sim, sid) = (self.clone(), sid.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(sim.inner.cfg.receipt_delay_ms)).await;
            for status in ["sent", "delivered"] {
                if let Err(e) = sim.push_status(&sid, status, None).await {
                    tracing::debug!(sid, error = %e, "twilio sim: status callback failed");
                }
            }
        });
    }
}

/// `Authorization: Basic <base64(user:secret)>` decoded, if well formed.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<String> {
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

async fn send_message(
    State(sim): State<TwilioSim>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle_send(&account, &headers, &body).await
}

async fn get_media(
    State(sim): State<TwilioSim>,
    Path((account, _message, _media)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if account != sim.inner.cfg.account_sid {
        return error(404, 20404, "The requested resource was not found");
    }
    if sim.inner.cfg.media_auth && !sim.authorized(&headers) {
        return error(401, 20003, "Authenticate");
    }
    ([(header::CONTENT_TYPE, "image/png")], MEDIA_BYTES).into_response()
}

// ---- control endpoints (for tests and tools that only have a URL) ----

use super::control::{InboundReq, bad_request, one_or_many, push_outcome};

async fn ctl_sent(State(sim): State<TwilioSim>) -> Response {
    axum::Json(sim.sent()).into_response()
}

async fn ctl_faults(State(sim): State<TwilioSim>, body: Bytes) -> Response {
    let faults = match one_or_many::<TwilioFault>(&body) {
        Ok(fs) => fs,
        Err(r) => return r,
    };
    let queued = faults.len();
    faults.into_iter().for_each(|f| sim.push_fault(f));
    axum::Json(json!({ "queued": queued })).into_response()
}

async fn ctl_inbound(State(sim): State<TwilioSim>, body: Bytes) -> Response {
    let r: InboundReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let msg = TwilioInbound {
        from: r.from,
        to: r.to,
        body: r.body,
        ..Default::default()
    };
    push_outcome(sim.push_inbound(&msg).await.map(|(status, _, _)| status))
}

#[derive(serde::Deserialize)]
struct StatusReq {
    sid: String,
    status: String,
    #[serde(default)]
    error_code: Option<u32>,
}

async fn ctl_status(State(sim): State<TwilioSim>, body: Bytes) -> Response {
    let r: StatusReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    push_outcome(sim.push_status(&r.sid, &r.status, r.error_code).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "twilio-auth-token";

    async fn start(cfg: TwilioSimConfig) -> (TwilioSim, String) {
        let sim = TwilioSim::new(cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener));
        (sim, base)
    }

    fn cfg() -> TwilioSimConfig {
        TwilioSimConfig {
            account_sid: SID.into(),
            auth_token: TOKEN.into(),
            media_auth: true,
            ..Default::default()
        }
    }

    async fn post(base: &str, auth: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{base}/2010-04-01/Accounts/{SID}/Messages.json"))
            .form(form);
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    #[tokio::test]
    async fn enforces_documented_rules_with_real_codes() {
        let (sim, base) = start(cfg()).await;
        let long = "x".repeat(1601);
        let many: Vec<(&str, &str)> = std::iter::repeat_n(("MediaUrl", "https://x/a.jpg"), 11)
            .chain([("To", "+14155550100"), ("From", "+14155550199")])
            .collect();
        /// (name, Basic credentials, form, HTTP status, Twilio error code)
        type Row<'a> = (
            &'a str,
            Option<(&'a str, &'a str)>,
            Vec<(&'a str, &'a str)>,
            u16,
            u32,
        );
        let cases: Vec<Row> = vec![
            (
                "no auth",
                None,
                vec![("To", "+14155550100"), ("From", "+1"), ("Body", "x")],
                401,
                20003,
            ),
            (
                "wrong token",
                Some((SID, "nope")),
                vec![("To", "+14155550100"), ("Body", "x")],
                401,
                20003,
            ),
            (
                "no To",
                Some((SID, TOKEN)),
                vec![("From", "+14155550199"), ("Body", "x")],
                400,
                21604,
            ),
            (
                "bad To",
                Some((SID, TOKEN)),
                vec![("To", "0412"), ("From", "+14155550199"), ("Body", "x")],
                400,
                21211,
            ),
            (
                "no From",
                Some((SID, TOKEN)),
                vec![("To", "+14155550100"), ("Body", "x")],
                400,
                21603,
            ),
            (
                "no Body",
                Some((SID, TOKEN)),
                vec![("To", "+14155550100"), ("From", "+14155550199")],
                400,
                21602,
            ),
            (
                "too long",
                Some((SID, TOKEN)),
                vec![
                    ("To", "+14155550100"),
                    ("From", "+14155550199"),
                    ("Body", &long),
                ],
                400,
                21617,
            ),
            ("too many media", Some((SID, TOKEN)), many, 400, 21623),
            (
                "bad media",
                Some((SID, TOKEN)),
                vec![
                    ("To", "+14155550100"),
                    ("From", "+14155550199"),
                    ("MediaUrl", "ftp://x"),
                ],
                400,
                21620,
            ),
            (
                "whatsapp mismatch",
                Some((SID, TOKEN)),
                vec![
                    ("To", "+14155550100"),
                    ("From", "whatsapp:+14155550199"),
                    ("Body", "x"),
                ],
                400,
                63007,
            ),
        ];
        for (name, auth, form, status, code) in &cases {
            let (s, v) = post(&base, *auth, form).await;
            assert_eq!(
                (s, v["code"].as_u64()),
                (*status, Some(*code as u64)),
                "{name}: {v}"
            );
            assert_eq!(v["status"], *status, "{name}");
            assert!(
                v["more_info"]
                    .as_str()
                    .unwrap()
                    .ends_with(&code.to_string())
            );
        }
        let (s, v) = post(
            &base,
            Some((SID, TOKEN)),
            &[
                ("To", "+14155550100"),
                ("From", "+14155550199"),
                ("Body", "hi"),
                ("MediaUrl", "https://x/a.jpg"),
            ],
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let sid = v["sid"].as_str().unwrap();
        assert!(sid.starts_with("MM") && sid.len() == 34, "{sid}");
        assert_eq!(
            (v["status"].as_str(), v["num_media"].as_str()),
            (Some("queued"), Some("1"))
        );
        let sent = sim.sent();
        assert_eq!(sent.len(), cases.len() + 1, "every call recorded");
        assert_eq!(sent.last().unwrap().sid.as_deref(), Some(sid));
        assert_eq!(
            sent.last().unwrap().params_named("MediaUrl"),
            ["https://x/a.jpg"]
        );
    }

    #[tokio::test]
    async fn faults_come_in_order_then_service_resumes() {
        let (sim, base) = start(cfg()).await;
        sim.push_fault(TwilioFault::Http5xx(503));
        sim.push_fault(TwilioFault::Throttle {
            retry_after: Some(4),
        });
        sim.push_fault(TwilioFault::ApiError {
            status: 400,
            code: 21610,
        });
        let form = [
            ("To", "+14155550100"),
            ("From", "+14155550199"),
            ("Body", "hi"),
        ];
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(post(&base, Some((SID, TOKEN)), &form).await);
        }
        let codes: Vec<_> = got.iter().map(|(s, v)| (*s, v["code"].as_u64())).collect();
        assert_eq!(
            codes,
            [
                (503, Some(20500)),
                (429, Some(20429)),
                (400, Some(21610)),
                (201, None)
            ]
        );
        assert_eq!(sim.sent().len(), 4);
    }

    #[tokio::test]
    async fn serves_media_only_with_credentials() {
        let (_sim, base) = start(cfg()).await;
        let url = format!("{base}/2010-04-01/Accounts/{SID}/Messages/MM1/Media/ME1");
        let http = reqwest::Client::new();
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
        let ok = http
            .get(&url)
            .basic_auth(SID, Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.bytes().await.unwrap().as_ref(), MEDIA_BYTES);
    }

    #[tokio::test]
    async fn pushes_signed_inbound_and_status_callbacks() {
        // A receiver that checks each signature against the URL it was called at.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rx = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let (h, rx2) = (hits.clone(), rx.clone());
        let app = Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let (h, url) = (h.clone(), format!("{rx2}{uri}"));
                async move {
                    let sig = headers
                        .get(SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let valid = crate::providers::twilio::verify_signature(
                        &crate::secret::Secret::new(TOKEN),
                        &url,
                        "application/x-www-form-urlencoded",
                        &body,
                        sig,
                    )
                    .is_ok();
                    h.lock()
                        .unwrap()
                        .push((String::from_utf8_lossy(&body).into_owned(), valid));
                    ([(header::CONTENT_TYPE, "text/xml")], "<Response/>")
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (sim, base) = start(TwilioSimConfig {
            inbound_url: Some(format!("{rx}/channels/tw/inbound")),
            auto_receipts: true,
            ..cfg()
        })
        .await;
        let (status, ct, body) = sim
            .push_inbound(&TwilioInbound {
                from: "+14155550100".into(),
                to: "+14155550199".into(),
                body: "look".into(),
                media: vec!["image/png".into()],
                profile_name: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (status, ct.as_str(), body.as_str()),
            (200, "text/xml", "<Response/>")
        );
        let cb = format!("{rx}/channels/tw/status");
        let (s, v) = post(
            &base,
            Some((SID, TOKEN)),
            &[
                ("To", "+14155550100"),
                ("From", "+14155550199"),
                ("Body", "hi"),
                ("StatusCallback", &cb),
            ],
        )
        .await;
        assert_eq!(s, 201);
        let sid = v["sid"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while hits.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let hits = hits.lock().unwrap().clone();
        assert_eq!(hits.len(), 3, "{hits:?}");
        assert!(
            hits.iter().all(|(_, valid)| *valid),
            "every push is signed for its URL"
        );
        let inbound: HashMap<String, String> = url::form_urlencoded::parse(hits[0].0.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(inbound["NumMedia"], "1");
        assert!(
            inbound["MediaUrl0"]
                .starts_with(&format!("{base}/2010-04-01/Accounts/{SID}/Messages/MM"))
        );
        for (hit, status) in hits[1..].iter().zip(["sent", "delivered"]) {
            let f: HashMap<String, String> = url::form_urlencoded::parse(hit.0.as_bytes())
                .into_owned()
                .collect();
            assert_eq!(
                (f["MessageSid"].as_str(), f["MessageStatus"].as_str()),
                (sid.as_str(), status)
            );
        }
        assert!(sim.push_status("SMunknown", "sent", None).await.is_err());
    }

    #[tokio::test]
    async fn control_endpoints_queue_faults_and_list_sends() {
        let (_sim, base) = start(cfg()).await;
        let http = reqwest::Client::new();
        let ctl = json!([{"http5xx": 502}, {"api_error": {"status": 400, "code": 21610}}, "unauthorized"]);
        let v: Value = http
            .post(format!("{base}/_sim/faults"))
            .json(&ctl)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["queued"], 3);
        let bad = http
            .post(format!("{base}/_sim/faults"))
            .body("[\"melt\"]")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        let form = [
            ("To", "+14155550100"),
            ("From", "+14155550199"),
            ("Body", "hi"),
        ];
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(post(&base, Some((SID, TOKEN)), &form).await.0);
        }
        assert_eq!(codes, [502, 400, 401, 201]);
        let sent: Value = http
            .get(format!("{base}/_sim/sent"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let statuses: Vec<u64> = sent
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses, [502, 400, 401, 201]);
        assert!(sent[3]["sid"].as_str().unwrap().starts_with("SM"));
        // Pushes need a target: no inbound_url, no StatusCallback for an unknown sid.
        let r = http
            .post(format!("{base}/_sim/inbound"))
            .json(&json!({"from": "+14155550100", "to": "+14155550199", "body": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let r = http
            .post(format!("{base}/_sim/status"))
            .json(&json!({"sid": "SMnope", "status": "delivered"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let r = http
            .post(format!("{base}/_sim/inbound"))
            .json(&json!({"from": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
}
