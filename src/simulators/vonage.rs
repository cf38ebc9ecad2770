//! A local Vonage Messages API (shared/spec/providers.md §4) for tests.
//!
//! It enforces what Vonage documents for `POST /v1/messages` (Basic auth with the API key
//! and secret, a JSON body with `channel`, `message_type`, `to`, `from` and the object the
//! message type names, numbers without `+`, message types the channel carries), answers
//! `202 {"message_uuid"}` or RFC 7807 problem documents with the real error codes, records
//! every raw arrival and never dedupes. It pushes inbound messages and status webhooks
//! like Vonage's signed webhooks: JSON with `Authorization: Bearer <JWT>`, HS256 under the
//! signature secret, claims `iat`, `jti`, `iss`, `payload_hash`, `api_key`, `application_id`.
//!
//! Control endpoints (JSON): `GET /_sim/sent` → `[VonageArrival]`; `POST /_sim/faults` one
//! fault or an array, e.g. `[{"http5xx":503},{"throttle":{"retry_after":2}},"unauthorized",
//! {"problem":{"status":422,"code":1050,"title":"Number barred"}},{"delay":500}]`;
//! `POST /_sim/inbound` `{"from","to","body"}` → `{"status"}`; `POST /_sim/status`
//! `{"message_uuid","status"}` → `{"status"}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::twilio::basic_credentials;
use crate::clock::now_ms;
use crate::providers::vonage::sign_hs256;

const ERRORS: &str = "https://developer.vonage.com/api-errors";
/// The application id the simulated webhooks name.
pub const APPLICATION_ID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab";

#[derive(Debug, Clone, Default)]
pub struct VonageSimConfig {
    pub api_key: String,
    pub api_secret: String,
    pub signature_secret: String,
    /// The application's Inbound URL.
    pub inbound_url: Option<String>,
    /// The application's Status URL.
    pub status_url: Option<String>,
    /// After each accepted send, push `submitted` then `delivered` to `status_url`.
    pub auto_receipts: bool,
    pub receipt_delay_ms: u64,
}

/// A queued misbehaviour; each send call consumes one.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VonageFault {
    /// This HTTP status (meant for 5xx) with a problem document.
    Http5xx(u16),
    /// 429 (Messages error 1000), with `Retry-After: <seconds>` if given.
    Throttle {
        retry_after: Option<u64>,
    },
    /// 401 even with the right credentials.
    Unauthorized,
    /// Any documented problem: HTTP status, Messages API error code, title.
    Problem {
        status: u16,
        code: u32,
        title: String,
    },
    Delay(u64),
    DropConnection,
}

/// One send call as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VonageArrival {
    pub arrival_ms: i64,
    /// The body as JSON; a body that is not JSON is kept as a JSON string.
    pub body: Value,
    pub status: u16,
    pub message_uuid: Option<String>,
}

#[derive(Clone)]
pub struct VonageSim {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: VonageSimConfig,
    client: reqwest::Client,
    state: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    sent: Vec<VonageArrival>,
    faults: VecDeque<VonageFault>,
}

fn problem(status: u16, type_: String, title: &str, detail: &str) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({
        "type": type_,
        "title": title,
        "detail": detail,
        "instance": uuid_v4(),
    });
    (
        s,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn messages_error(status: u16, code: u32, title: &str, detail: &str) -> Response {
    problem(status, format!("{ERRORS}/messages#{code}"), title, detail)
}

pub fn uuid_v4() -> String {
    let v: u128 = (rand::random::<u128>() & !(0xFu128 << 76) | (0x4u128 << 76)) & !(0x3u128 << 62)
        | (0x2u128 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The message types each channel carries (Messages API reference, SDK channel types).
fn allowed(channel: &str, message_type: &str) -> Option<bool> {
    let types: &[&str] = match channel {
        "sms" => &["text"],
        "mms" => &["text", "image", "vcard", "audio", "video", "file"],
        "whatsapp" => &[
            "text", "image", "audio", "video", "file", "template", "sticker", "custom",
        ],
        "viber_service" => &["text", "image", "video", "file"],
        "rcs" => &["text", "image", "video", "file", "custom"],
        "messenger" => &["text", "image", "audio", "video", "file"],
        _ => return None,
    };
    Some(types.contains(&message_type))
}

impl VonageSim {
    pub fn new(cfg: VonageSimConfig) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        VonageSim {
            inner: Arc::new(Inner {
                cfg,
                client,
                state: Mutex::new(SimState::default()),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/messages", post(send_message))
            .route("/_sim/sent", axum::routing::get(ctl_sent))
            .route("/_sim/faults", post(ctl_faults))
            .route("/_sim/inbound", post(ctl_inbound))
            .route("/_sim/status", post(ctl_status))
            .with_state(self.clone())
    }

    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sent(&self) -> Vec<VonageArrival> {
        self.state().sent.clone()
    }

    pub fn push_fault(&self, f: VonageFault) {
        self.state().faults.push_back(f);
    }

    /// The bearer token Vonage would put on a webhook with this body, issued `age_secs` ago.
    pub fn token_for(&self, body: &[u8], age_secs: i64, secret: Option<&str>) -> String {
        let claims = json!({
            "iat": now_ms() / 1000 - age_secs,
            "jti": uuid_v4(),
            "iss": "Vonage",
            "payload_hash": hex::encode(Sha256::digest(body)),
            "api_key": self.inner.cfg.api_key,
            "application_id": APPLICATION_ID,
        });
        sign_hs256(&claims, secret.unwrap_or(&self.inner.cfg.signature_secret))
    }

    /// POSTs `body` to `url` with a fresh token (or the given `Authorization` value).
    pub async fn post_signed(
        &self,
        url: &str,
        body: &Value,
        authorization: Option<String>,
    ) -> Result<u16, String> {
        let raw = body.to_string();
        let auth = authorization
            .unwrap_or_else(|| format!("Bearer {}", self.token_for(raw.as_bytes(), 0, None)));
        let resp = self
            .inner
            .client
            .post(url)
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(raw)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    }

    /// An inbound message webhook body (§4.3) of `message_type` with its object, e.g.
    /// `("text", json!("hi"))` or `("image", json!({"url": ...}))`.
    pub fn inbound_body(&self, from: &str, to: &str, message_type: &str, content: Value) -> Value {
        let mut body = json!({
            "channel": "sms",
            "message_uuid": uuid_v4(),
            "to": to,
            "from": from,
            "timestamp": rfc3339_now(),
            "message_type": message_type,
        });
        body[message_type] = content;
        if message_type == "text" {
            body["sms"] = json!({ "num_messages": "1" });
            body["usage"] = json!({ "currency": "EUR", "price": "0.0057" });
        } else {
            body["channel"] = json!("whatsapp");
            body["profile"] = json!({ "name": "Jane Doe" });
        }
        body
    }

    /// POSTs a signed inbound text to the Inbound URL.
    pub async fn push_inbound_text(&self, from: &str, to: &str, text: &str) -> Result<u16, String> {
        let url = self
            .inner
            .cfg
            .inbound_url
            .clone()
            .ok_or("stand-in has no inbound_url")?;
        let body = self.inbound_body(from, to, "text", json!(text));
        self.post_signed(&url, &body, None).await
    }

    /// A status webhook body (§4.4) for a message this stand-in accepted.
    pub fn status_body(&self, uuid: &str, status: &str, error: Option<(u32, &str)>) -> Value {
        let (to, from, channel, client_ref) = self
            .state()
            .sent
            .iter()
            .find(|a| a.message_uuid.as_deref() == Some(uuid))
            .map(|a| {
                let s = |k: &str| a.body[k].as_str().unwrap_or("").to_string();
                (s("to"), s("from"), s("channel"), s("client_ref"))
            })
            .unwrap_or_default();
        let mut body = json!({
            "message_uuid": uuid,
            "to": to,
            "from": from,
            "timestamp": rfc3339_now(),
            "status": status,
            "channel": channel,
            "client_ref": client_ref,
            "usage": { "currency": "EUR", "price": "0.0333" },
        });
        if let Some((code, detail)) = error {
            body["error"] = json!({
                "type": format!("{ERRORS}/messages#{code}"),
                "title": code,
                "detail": detail,
            });
        }
        body
    }

    /// POSTs one signed status webhook to the Status URL.
    pub async fn push_status(
        &self,
        uuid: &str,
        status: &str,
        error: Option<(u32, &str)>,
    ) -> Result<u16, String> {
        let url = self
            .inner
            .cfg
            .status_url
            .clone()
            .ok_or("stand-in has no status_url")?;
        let body = self.status_body(uuid, status, error);
        self.post_signed(&url, &body, None).await
    }

    async fn handle_send(&self, headers: &HeaderMap, raw: &[u8]) -> Response {
        let parsed: Option<Value> = serde_json::from_slice(raw).ok();
        let recorded = parsed
            .clone()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(raw).into_owned()));
        let (index, fault) = {
            let mut st = self.state();
            st.sent.push(VonageArrival {
                arrival_ms: now_ms(),
                body: recorded,
                status: 0,
                message_uuid: None,
            });
            (st.sent.len() - 1, st.faults.pop_front())
        };
        let fault = match fault {
            Some(VonageFault::Delay(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                None
            }
            Some(VonageFault::DropConnection) => {
                std::panic::resume_unwind(Box::new("vonage sim: dropping connection"))
            }
            other => other,
        };
        let (status, uuid, resp) = self.answer(fault, headers, parsed.as_ref());
        if let Some(a) = self.state().sent.get_mut(index) {
            a.status = status;
            a.message_uuid = uuid.clone();
        }
        if let Some(uuid) = uuid
            && self.inner.cfg.auto_receipts
            && self.inner.cfg.status_url.is_some()
        {
            let sim = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(sim.inner.cfg.receipt_delay_ms)).await;
                for status in ["submitted", "delivered"] {
                    if let Err(e) = sim.push_status(&uuid, status, None).await {
                        tracing::debug!(uuid, error = %e, "vonage sim: status webhook failed");
                    }
                }
            });
        }
        resp
    }

    fn answer(
        &self,
        fault: Option<VonageFault>,
        headers: &HeaderMap,
        body: Option<&Value>,
    ) -> (u16, Option<String>, Response) {
        let invalid = |detail: &str| {
            (
                422,
                None,
                messages_error(422, 1020, "Invalid params", detail),
            )
        };
        match fault {
            Some(VonageFault::Http5xx(s)) => {
                return (
                    s,
                    None,
                    messages_error(
                        s,
                        1030,
                        "Internal error",
                        "There was an error processing your request in the Platform.",
                    ),
                );
            }
            Some(VonageFault::Throttle { retry_after }) => {
                let mut r = messages_error(
                    429,
                    1000,
                    "Throttled",
                    "You have exceeded the submission capacity allowed on this account. Please wait and retry",
                );
                if let Some(secs) = retry_after {
                    r.headers_mut().insert(header::RETRY_AFTER, secs.into());
                }
                return (429, None, r);
            }
            Some(VonageFault::Unauthorized) => return (401, None, unauthorized()),
            Some(VonageFault::Problem {
                status,
                code,
                title,
            }) => {
                return (
                    status,
                    None,
                    messages_error(status, code, &title, "Simulated problem."),
                );
            }
            _ => {}
        }
        let want = format!("{}:{}", self.inner.cfg.api_key, self.inner.cfg.api_secret);
        if basic_credentials(headers).is_none_or(|got| got != want) {
            return (401, None, unauthorized());
        }
        let Some(b) = body.and_then(Value::as_object) else {
            return invalid("The request body is not a JSON object.");
        };
        let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("");
        for key in ["channel", "message_type", "to", "from"] {
            if s(key).is_empty() {
                return (
                    422,
                    None,
                    messages_error(
                        422,
                        1010,
                        "Missing params",
                        &format!("The request is missing the mandatory parameter {key}."),
                    ),
                );
            }
        }
        let (channel, ty) = (s("channel"), s("message_type"));
        match allowed(channel, ty) {
            None => return invalid(&format!("channel {channel:?} is not supported.")),
            Some(false) => {
                return invalid(&format!(
                    "message_type {ty:?} is not supported on channel {channel}."
                ));
            }
            Some(true) => {}
        }
        let to = s("to");
        if !(7..=15).contains(&to.len()) || !to.bytes().all(|c| c.is_ascii_digit()) {
            return invalid("to must be an E.164 number without a leading + (e.g. 447700900000).");
        }
        match ty {
            "text" => {
                let text = s("text");
                if text.is_empty() {
                    return invalid("text is required for message_type text.");
                }
                if text.chars().count() > 1000 {
                    return invalid("text must be at most 1000 characters.");
                }
            }
            media => {
                let url = b
                    .get(media)
                    .and_then(|m| m.get("url"))
                    .and_then(Value::as_str);
                if url.and_then(|u| url::Url::parse(u).ok()).is_none() {
                    return invalid(&format!("{media}.url must be a URL."));
                }
            }
        }
        if s("client_ref").len() > 100 {
            return invalid("client_ref must be at most 100 characters.");
        }
        let uuid = uuid_v4();
        let resp = (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "message_uuid": uuid })),
        )
            .into_response();
        (202, Some(uuid), resp)
    }
}

fn unauthorized() -> Response {
    problem(
        401,
        format!("{ERRORS}#unauthorized"),
        "Unauthorized",
        "You did not provide correct credentials.",
    )
}

/// Now as `2025-01-15T10:00:05.000Z`, Vonage's timestamp form.
fn rfc3339_now() -> String {
    let ms = now_ms();
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

async fn send_message(State(sim): State<VonageSim>, headers: HeaderMap, body: Bytes) -> Response {
    sim.handle_send(&headers, &body).await
}

// ---- control endpoints (for tests and tools that only have a URL) ----

use super::control::{InboundReq, bad_request, one_or_many, push_outcome};

async fn ctl_sent(State(sim): State<VonageSim>) -> Response {
    axum::Json(sim.sent()).into_response()
}

async fn ctl_faults(State(sim): State<VonageSim>, body: Bytes) -> Response {
    let faults = match one_or_many::<VonageFault>(&body) {
        Ok(fs) => fs,
        Err(r) => return r,
    };
    let queued = faults.len();
    faults.into_iter().for_each(|f| sim.push_fault(f));
    axum::Json(json!({ "queued": queued })).into_response()
}

async fn ctl_inbound(State(sim): State<VonageSim>, body: Bytes) -> Response {
    match serde_json::from_slice::<InboundReq>(&body) {
        Ok(r) => push_outcome(sim.push_inbound_text(&r.from, &r.to, &r.body).await),
        Err(e) => bad_request(e),
    }
}

#[derive(serde::Deserialize)]
struct StatusReq {
    message_uuid: String,
    status: String,
}

async fn ctl_status(State(sim): State<VonageSim>, body: Bytes) -> Response {
    match serde_json::from_slice::<StatusReq>(&body) {
        Ok(r) => push_outcome(sim.push_status(&r.message_uuid, &r.status, None).await),
        Err(e) => bad_request(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rio_parse::support::rfc3339_ms;

    fn cfg() -> VonageSimConfig {
        VonageSimConfig {
            api_key: "abcd1234".into(),
            api_secret: "secret".into(),
            signature_secret: "sigsecret".into(),
            ..Default::default()
        }
    }

    async fn start(cfg: VonageSimConfig) -> (VonageSim, String) {
        let sim = VonageSim::new(cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener));
        (sim, base)
    }

    async fn post(base: &str, auth: Option<(&str, &str)>, body: Value) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{base}/v1/messages"))
            .json(&body);
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    #[test]
    fn uuids_and_timestamps_have_vonage_shapes() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        let now = rfc3339_now();
        let parsed = rfc3339_ms(&now).unwrap();
        assert!((now_ms() - parsed).abs() < 5_000, "{now}");
    }

    #[tokio::test]
    async fn enforces_documented_rules() {
        let (sim, base) = start(cfg()).await;
        let ok = json!({"channel":"sms","message_type":"text","to":"447700900000","from":"447700900001","text":"hi","client_ref":"m1"});
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        /// (name, Basic credentials, body, HTTP status, problem type suffix)
        type Row<'a> = (&'a str, Option<(&'a str, &'a str)>, Value, u16, &'a str);
        let cases: Vec<Row> = vec![
            ("no auth", None, ok.clone(), 401, "#unauthorized"),
            (
                "wrong secret",
                Some(("abcd1234", "nope")),
                ok.clone(),
                401,
                "#unauthorized",
            ),
            (
                "missing to",
                Some(("abcd1234", "secret")),
                with("to", json!("")),
                422,
                "#1010",
            ),
            (
                "plus in to",
                Some(("abcd1234", "secret")),
                with("to", json!("+447700900000")),
                422,
                "#1020",
            ),
            (
                "image over sms",
                Some(("abcd1234", "secret")),
                with("message_type", json!("image")),
                422,
                "#1020",
            ),
            (
                "unknown channel",
                Some(("abcd1234", "secret")),
                with("channel", json!("pigeon")),
                422,
                "#1020",
            ),
            (
                "empty text",
                Some(("abcd1234", "secret")),
                with("text", json!("")),
                422,
                "#1020",
            ),
        ];
        for (name, auth, body, status, ty) in &cases {
            let (s, v) = post(&base, *auth, body.clone()).await;
            assert_eq!(s, *status, "{name}: {v}");
            assert!(v["type"].as_str().unwrap().ends_with(ty), "{name}: {v}");
            assert!(
                v["title"].is_string() && v["instance"].is_string(),
                "{name}"
            );
        }
        let image = json!({"channel":"mms","message_type":"image","to":"14155550100","from":"14155550101","image":{"url":"https://x/a.jpg"}});
        for body in [ok.clone(), image] {
            let (s, v) = post(&base, Some(("abcd1234", "secret")), body).await;
            assert_eq!(s, 202, "{v}");
            assert_eq!(v["message_uuid"].as_str().unwrap().len(), 36);
        }
        assert_eq!(sim.sent().len(), cases.len() + 2);
    }

    #[tokio::test]
    async fn faults_then_service_resumes() {
        let (sim, base) = start(cfg()).await;
        sim.push_fault(VonageFault::Throttle {
            retry_after: Some(2),
        });
        sim.push_fault(VonageFault::Problem {
            status: 402,
            code: 1070,
            title: "Partner quota exceeded".into(),
        });
        sim.push_fault(VonageFault::Http5xx(500));
        let ok = json!({"channel":"sms","message_type":"text","to":"447700900000","from":"447700900001","text":"hi"});
        let mut got = Vec::new();
        for _ in 0..4 {
            let (s, v) = post(&base, Some(("abcd1234", "secret")), ok.clone()).await;
            got.push((
                s,
                v["type"]
                    .as_str()
                    .map(|t| t.rsplit('#').next().unwrap().to_string()),
            ));
        }
        let want: Vec<(u16, Option<String>)> = vec![
            (429, Some("1000".into())),
            (402, Some("1070".into())),
            (500, Some("1030".into())),
            (202, None),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn pushes_signed_webhooks_with_payload_hash() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rx = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<Vec<(String, Value, Value)>>> = Arc::default();
        let h = hits.clone();
        let app = Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let h = h.clone();
                async move {
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let token = auth.strip_prefix("Bearer ").unwrap_or("");
                    let claims = crate::providers::vonage::verify_hs256(
                        token,
                        &crate::secret::Secret::new("sigsecret"),
                    )
                    .map(Value::Object)
                    .unwrap_or(Value::Null);
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    h.lock()
                        .unwrap()
                        .push((uri.path().to_string(), claims, body));
                    StatusCode::OK
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (sim, base) = start(VonageSimConfig {
            inbound_url: Some(format!("{rx}/inbound")),
            status_url: Some(format!("{rx}/status")),
            auto_receipts: true,
            ..cfg()
        })
        .await;
        assert_eq!(
            sim.push_inbound_text("447700900000", "447700900001", "Thanks!")
                .await,
            Ok(200)
        );
        let (s, v) = post(&base, Some(("abcd1234", "secret")), json!({"channel":"sms","message_type":"text","to":"447700900000","from":"447700900001","text":"hi","client_ref":"mid-1"})).await;
        assert_eq!(s, 202);
        let uuid = v["message_uuid"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while hits.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let hits = hits.lock().unwrap().clone();
        assert_eq!(hits.len(), 3, "{hits:?}");
        for (path, claims, body) in &hits {
            assert!(claims.is_object(), "{path}: token verifies");
            assert_eq!(claims["api_key"], "abcd1234");
            assert_eq!(claims["iss"], "Vonage");
            assert_eq!(claims["application_id"], APPLICATION_ID);
            let hash = hex::encode(Sha256::digest(body.to_string().as_bytes()));
            assert_eq!(claims["payload_hash"], hash.as_str(), "{path}");
        }
        assert_eq!(hits[0].0, "/inbound");
        assert_eq!(hits[0].2["text"], "Thanks!");
        let statuses: Vec<_> = hits[1..]
            .iter()
            .map(|h| {
                (
                    h.0.as_str(),
                    h.2["status"].as_str().unwrap(),
                    h.2["message_uuid"].as_str().unwrap(),
                    h.2["client_ref"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            statuses,
            [
                ("/status", "submitted", uuid.as_str(), "mid-1"),
                ("/status", "delivered", uuid.as_str(), "mid-1")
            ]
        );
    }

    #[tokio::test]
    async fn control_endpoints_queue_faults_and_list_sends() {
        let (_sim, base) = start(cfg()).await;
        let http = reqwest::Client::new();
        let ctl = json!([{"problem": {"status": 422, "code": 1050, "title": "Number barred"}}, {"throttle": {"retry_after": 1}}]);
        let v: Value = http
            .post(format!("{base}/_sim/faults"))
            .json(&ctl)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["queued"], 2);
        let ok = json!({"channel":"sms","message_type":"text","to":"447700900000","from":"447700900001","text":"hi"});
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(
                post(&base, Some(("abcd1234", "secret")), ok.clone())
                    .await
                    .0,
            );
        }
        assert_eq!(codes, [422, 429, 202]);
        let sent: Value = http
            .get(format!("{base}/_sim/sent"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sent.as_array().unwrap().len(), 3);
        assert_eq!(sent[2]["body"]["text"], "hi");
        assert!(sent[2]["message_uuid"].is_string());
        let r = http
            .post(format!("{base}/_sim/inbound"))
            .json(&json!({"from": "447700900000", "to": "447700900001", "body": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "no inbound_url");
        let r = http
            .post(format!("{base}/_sim/faults"))
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
}
