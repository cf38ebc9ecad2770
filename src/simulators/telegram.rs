//! A local Telegram Bot API (shared/spec/providers.md §3) for tests.
//!
//! It enforces what the Bot API documents for the methods the gateway uses: the bot token
//! in the path (`/bot<token>/<method>`; a wrong token is 401 `Unauthorized`, a path that is
//! not a bot path 404), parameters as JSON, form or query string, the required fields of
//! each method, text ≤ 4096 and caption ≤ 1024 characters, reply keyboards that parse, and
//! answers in Telegram's envelope (`{"ok":true,"result":...}` or
//! `{"ok":false,"error_code":N,"description":"...","parameters":{...}}`). It records every
//! call, valid or not, and never dedupes. Faults can be queued, chats can block the bot or
//! be migrated to a supergroup, and files can be stored for `getFile` and downloads from
//! `/file/bot<token>/<path>`.
//!
//! Like Telegram, it pushes updates to the URL given to `setWebhook`, with the
//! `secret_token` in `X-Telegram-Bot-Api-Secret-Token`. `setWebhook` requires HTTPS, as
//! Telegram does, unless the stand-in was built with `allow_http_webhook` (loopback tests).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::clock::now_ms;

/// Bot API limits (python-telegram-bot constants, §3.2).
pub const MAX_TEXT_CHARS: usize = 4096;
pub const MAX_CAPTION_CHARS: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct TelegramSimConfig {
    /// The bot token the stand-in answers to (`<bot id>:<secret>`).
    pub bot_token: String,
    /// Accept `http://` webhook URLs (Telegram requires HTTPS; loopback tests cannot).
    pub allow_http_webhook: bool,
}

/// A queued misbehaviour; each Bot API call consumes one, whatever the method.
#[derive(Debug, Clone, PartialEq)]
pub enum TelegramFault {
    /// Answer with this HTTP status (meant for 5xx) in Telegram's error envelope.
    ServerError(u16),
    /// 429 `Too Many Requests: retry after N` with `parameters.retry_after`.
    Flood { retry_after: u64 },
    /// 401 `Unauthorized`, as for a revoked token.
    Unauthorized,
    /// 403 `Forbidden: bot was blocked by the user`, for this one call.
    Blocked,
    /// Wait this many ms, then answer normally.
    Delay(u64),
    /// Close the connection without answering.
    DropConnection,
}

/// One Bot API call as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelegramCall {
    pub arrival_ms: i64,
    pub method: String,
    /// All parameters (query, then body) as one JSON object.
    pub params: Value,
    /// The HTTP status answered; 0 while answering or when the connection was dropped.
    pub status: u16,
    /// The `result.message_id` of an accepted send.
    pub message_id: Option<i64>,
}

#[derive(Clone)]
pub struct TelegramSim {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TelegramSimConfig,
    client: reqwest::Client,
    state: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    calls: Vec<TelegramCall>,
    faults: VecDeque<TelegramFault>,
    blocked: HashSet<i64>,
    migrated: HashMap<i64, i64>,
    next_message_id: HashMap<i64, i64>,
    files: HashMap<String, SimFile>,
    webhook: Option<Webhook>,
    next_update_id: i64,
}

#[derive(Clone)]
struct SimFile {
    unique_id: String,
    path: String,
    bytes: Vec<u8>,
    mime: String,
}

#[derive(Clone)]
struct Webhook {
    url: String,
    secret_token: Option<String>,
}

/// An answer in Telegram's envelope.
struct Answer {
    status: StatusCode,
    body: Value,
    message_id: Option<i64>,
}

impl Answer {
    fn ok(result: Value) -> Answer {
        let message_id = result.get("message_id").and_then(Value::as_i64);
        Answer {
            status: StatusCode::OK,
            body: json!({"ok": true, "result": result}),
            message_id,
        }
    }

    fn error(code: u16, description: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: json!({"ok": false, "error_code": code, "description": description}),
            message_id: None,
        }
    }

    fn bad_request(what: &str) -> Answer {
        Answer::error(400, &format!("Bad Request: {what}"))
    }

    fn with_parameters(mut self, p: Value) -> Answer {
        self.body["parameters"] = p;
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

impl TelegramSim {
    pub fn new(cfg: TelegramSimConfig) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        TelegramSim {
            inner: Arc::new(Inner {
                cfg,
                client,
                state: Mutex::new(SimState {
                    next_update_id: 900_000_000,
                    ..SimState::default()
                }),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/file/{bot}/{*path}", get(download))
            .route("/{bot}/{method}", any(api_call))
            .with_state(self.clone())
    }

    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every Bot API call so far, in arrival order.
    pub fn calls(&self) -> Vec<TelegramCall> {
        self.state().calls.clone()
    }

    /// The calls of one method that were answered `ok`.
    pub fn accepted(&self, method: &str) -> Vec<TelegramCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.status == 200)
            .collect()
    }

    pub fn push_fault(&self, f: TelegramFault) {
        self.state().faults.push_back(f);
    }

    /// From now on, sends to `chat_id` get 403 `Forbidden: bot was blocked by the user`.
    pub fn block(&self, chat_id: i64) {
        self.state().blocked.insert(chat_id);
    }

    /// From now on, sends to the group `from` get 400 with `migrate_to_chat_id = to`.
    pub fn migrate(&self, from: i64, to: i64) {
        self.state().migrated.insert(from, to);
    }

    /// Stores a file for `getFile` and download; returns its `file_id`.
    pub fn add_file(&self, path: &str, bytes: Vec<u8>, mime: &str) -> String {
        let n: u64 = rand::random();
        let file_id = format!("AgACAgIAAxkBAAI{n:016x}");
        let file = SimFile {
            unique_id: format!("AQAD{n:08x}"),
            path: path.to_string(),
            bytes,
            mime: mime.to_string(),
        };
        self.state().files.insert(file_id.clone(), file);
        file_id
    }

    /// The `file_unique_id` of a stored file.
    pub fn file_unique_id(&self, file_id: &str) -> Option<String> {
        self.state().files.get(file_id).map(|f| f.unique_id.clone())
    }

    /// Sets the webhook directly, as a successful `setWebhook` would.
    pub fn set_webhook(&self, url: &str, secret_token: Option<&str>) {
        self.state().webhook = Some(Webhook {
            url: url.to_string(),
            secret_token: secret_token.map(str::to_string),
        });
    }

    /// Delivers an update (without `update_id`: a fresh one is assigned) to the webhook,
    /// as Telegram does. Returns the update as sent and the gateway's HTTP status.
    pub async fn push_update(&self, mut update: Value) -> Result<(Value, u16), String> {
        {
            let mut st = self.state();
            st.next_update_id += 1;
            update["update_id"] = json!(st.next_update_id);
        }
        let status = self.deliver(&update).await?;
        Ok((update, status))
    }

    /// Delivers an update exactly as given (a redelivery keeps its `update_id`).
    pub async fn deliver(&self, update: &Value) -> Result<u16, String> {
        let hook = self
            .state()
            .webhook
            .clone()
            .ok_or("no webhook set (setWebhook)")?;
        let mut req = self.inner.client.post(&hook.url).json(update);
        if let Some(secret) = &hook.secret_token {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", secret);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    }

    fn token_ok(&self, bot: &str) -> Option<bool> {
        let token = bot.strip_prefix("bot")?;
        Some(token == self.inner.cfg.bot_token)
    }

    async fn handle(
        &self,
        bot: &str,
        method: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let params = params(query, headers, body);
        let index = {
            let mut st = self.state();
            st.calls.push(TelegramCall {
                arrival_ms: now_ms(),
                method: method.to_string(),
                params: params.clone().map(Value::Object).unwrap_or(Value::Null),
                status: 0,
                message_id: None,
            });
            st.calls.len() - 1
        };
        let answer = match self.token_ok(bot) {
            None => Answer::error(404, "Not Found"),
            Some(false) => Answer::error(401, "Unauthorized"),
            Some(true) => {
                let fault = self.state().faults.pop_front();
                match fault {
                    Some(TelegramFault::DropConnection) => drop_connection(),
                    Some(TelegramFault::Delay(ms)) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        self.dispatch(method, params)
                    }
                    Some(f) => fault_answer(f),
                    None => self.dispatch(method, params),
                }
            }
        };
        if let Some(c) = self.state().calls.get_mut(index) {
            c.status = answer.status.as_u16();
            c.message_id = answer.message_id;
        }
        answer.into_response()
    }

    fn dispatch(&self, method: &str, params: Result<Map<String, Value>, String>) -> Answer {
        let p = match params {
            Ok(p) => p,
            Err(e) => return Answer::bad_request(&e),
        };
        match method {
            "getMe" => Answer::ok(self.bot_user()),
            "setWebhook" => self.set_webhook_call(&p),
            "deleteWebhook" => {
                self.state().webhook = None;
                Answer::ok(json!(true))
            }
            "getWebhookInfo" => {
                let url = self.state().webhook.as_ref().map(|w| w.url.clone());
                Answer::ok(
                    json!({"url": url.unwrap_or_default(), "has_custom_certificate": false, "pending_update_count": 0}),
                )
            }
            "getFile" => self.get_file(&p),
            "sendMessage" | "sendPhoto" | "sendVideo" | "sendAudio" | "sendDocument"
            | "sendVoice" | "sendLocation" | "sendVenue" => self.send(method, &p),
            _ => Answer::error(404, "Not Found: method not found"),
        }
    }

    fn bot_user(&self) -> Value {
        let id: i64 = self
            .inner
            .cfg
            .bot_token
            .split(':')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        json!({"id": id, "is_bot": true, "first_name": "Stand-in Bot", "username": "standin_bot"})
    }

    fn set_webhook_call(&self, p: &Map<String, Value>) -> Answer {
        let url = text_param(p, "url").unwrap_or_default();
        if url.is_empty() {
            // An empty url removes the webhook.
            self.state().webhook = None;
            return Answer::ok(json!(true));
        }
        let allowed = url.starts_with("https://")
            || (self.inner.cfg.allow_http_webhook && url.starts_with("http://"));
        if !allowed {
            return Answer::bad_request("bad webhook: An HTTPS URL must be provided for webhook");
        }
        let secret = text_param(p, "secret_token");
        if let Some(s) = &secret
            && (s.is_empty()
                || s.len() > 256
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Answer::bad_request("secret token contains unallowed characters");
        }
        self.set_webhook(&url, secret.as_deref());
        Answer::ok(json!(true))
    }

    fn get_file(&self, p: &Map<String, Value>) -> Answer {
        let Some(id) = text_param(p, "file_id").filter(|s| !s.is_empty()) else {
            return Answer::bad_request("file_id is empty");
        };
        match self.state().files.get(&id) {
            Some(f) => Answer::ok(json!({
                "file_id": id,
                "file_unique_id": f.unique_id,
                "file_size": f.bytes.len(),
                "file_path": f.path,
            })),
            None => Answer::bad_request("invalid file_id"),
        }
    }

    fn send(&self, method: &str, p: &Map<String, Value>) -> Answer {
        let chat_id = match chat_param(p) {
            Ok(c) => c,
            Err(a) => return a,
        };
        {
            let st = self.state();
            if st.blocked.contains(&chat_id) {
                return Answer::error(403, "Forbidden: bot was blocked by the user");
            }
            if let Some(to) = st.migrated.get(&chat_id) {
                return Answer::bad_request("group chat was upgraded to a supergroup chat")
                    .with_parameters(json!({"migrate_to_chat_id": to}));
            }
        }
        let mut content = match self.content(method, p) {
            Ok(c) => c,
            Err(a) => return a,
        };
        if let Some(markup) = p.get("reply_markup")
            && let Err(a) = check_reply_markup(markup)
        {
            return a;
        }
        let message_id = {
            let mut st = self.state();
            let n = st.next_message_id.entry(chat_id).or_insert(0);
            *n += 1;
            *n
        };
        let chat_type = if chat_id > 0 {
            "private"
        } else if chat_id.to_string().starts_with("-100") {
            "supergroup"
        } else {
            "group"
        };
        content.insert("message_id".into(), json!(message_id));
        content.insert("from".into(), self.bot_user());
        content.insert("chat".into(), json!({"id": chat_id, "type": chat_type}));
        content.insert("date".into(), json!(now_ms() / 1000));
        Answer::ok(Value::Object(content))
    }

    /// The method's content fields, checked as Telegram checks them.
    fn content(&self, method: &str, p: &Map<String, Value>) -> Result<Map<String, Value>, Answer> {
        let mut out = Map::new();
        match method {
            "sendMessage" => {
                let text = text_param(p, "text").unwrap_or_default();
                if text.trim().is_empty() {
                    return Err(Answer::bad_request("message text is empty"));
                }
                if text.chars().count() > MAX_TEXT_CHARS {
                    return Err(Answer::bad_request("message is too long"));
                }
                out.insert("text".into(), json!(text));
            }
            "sendLocation" | "sendVenue" => {
                let lat = num_param(p, "latitude").filter(|v| (-90.0..=90.0).contains(v));
                let lon = num_param(p, "longitude").filter(|v| (-180.0..=180.0).contains(v));
                let (Some(lat), Some(lon)) = (lat, lon) else {
                    return Err(Answer::bad_request("wrong latitude or longitude specified"));
                };
                let location = json!({"latitude": lat, "longitude": lon});
                if method == "sendVenue" {
                    let title = text_param(p, "title").filter(|s| !s.is_empty());
                    let address = text_param(p, "address").filter(|s| !s.is_empty());
                    let (Some(title), Some(address)) = (title, address) else {
                        return Err(Answer::bad_request("title and address must be non-empty"));
                    };
                    out.insert(
                        "venue".into(),
                        json!({"location": location, "title": title, "address": address}),
                    );
                }
                out.insert("location".into(), location);
            }
            _ => {
                let field = &method["send".len()..].to_ascii_lowercase();
                let Some(file) = text_param(p, field).filter(|s| !s.is_empty()) else {
                    return Err(Answer::bad_request(&format!(
                        "there is no {field} in the request"
                    )));
                };
                let known = self.state().files.contains_key(&file);
                let is_url =
                    url::Url::parse(&file).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                if !known && !is_url {
                    return Err(Answer::bad_request(
                        "wrong file identifier/HTTP URL specified",
                    ));
                }
                if let Some(c) = text_param(p, "caption") {
                    if c.chars().count() > MAX_CAPTION_CHARS {
                        return Err(Answer::bad_request("message caption is too long"));
                    }
                    out.insert("caption".into(), json!(c));
                }
                let n: u64 = rand::random();
                let f = json!({"file_id": format!("BQACAgIAAxkBAAI{n:016x}"), "file_unique_id": format!("AgAD{n:08x}")});
                out.insert(field.clone(), if field == "photo" { json!([f]) } else { f });
            }
        }
        Ok(out)
    }

    fn file_for_download(&self, bot: &str, path: &str) -> Option<SimFile> {
        if self.token_ok(bot) != Some(true) {
            return None;
        }
        self.state()
            .files
            .values()
            .find(|f| f.path == path)
            .cloned()
    }
}

fn fault_answer(f: TelegramFault) -> Answer {
    match f {
        TelegramFault::ServerError(code) => {
            let reason = StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Internal Server Error");
            Answer::error(code, reason)
        }
        TelegramFault::Flood { retry_after } => Answer::error(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
        )
        .with_parameters(json!({"retry_after": retry_after})),
        TelegramFault::Unauthorized => Answer::error(401, "Unauthorized"),
        TelegramFault::Blocked => Answer::error(403, "Forbidden: bot was blocked by the user"),
        TelegramFault::Delay(_) | TelegramFault::DropConnection => {
            Answer::error(500, "Internal Server Error")
        }
    }
}

/// Ends the connection without an answer (see the ClickSend stand-in for how).
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("telegram sim: dropping connection"))
}

/// Query parameters, then the body's (JSON object or form), as one object. Form and query
/// values stay strings, as Telegram receives them; `reply_markup` in a form is JSON text.
fn params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        out.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = body.trim_ascii();
    if body.is_empty() {
        return Ok(out);
    }
    if ct.contains("json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => out.extend(o),
            _ => return Err("can't parse JSON object".into()),
        }
    } else if ct.contains("x-www-form-urlencoded") {
        for (k, v) in url::form_urlencoded::parse(body) {
            out.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    } else if ct.contains("multipart") {
        return Err("multipart uploads are not supported by the stand-in".into());
    } else {
        return Err("unsupported Content-Type".into());
    }
    Ok(out)
}

fn text_param(p: &Map<String, Value>, k: &str) -> Option<String> {
    match p.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn num_param(p: &Map<String, Value>, k: &str) -> Option<f64> {
    match p.get(k)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `chat_id`: an integer (or its text). `@channelusername` names a chat the stand-in does
/// not know.
fn chat_param(p: &Map<String, Value>) -> Result<i64, Answer> {
    let Some(raw) = text_param(p, "chat_id").filter(|s| !s.is_empty()) else {
        return Err(Answer::bad_request("chat_id is empty"));
    };
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| Answer::bad_request("chat not found"))
}

fn check_reply_markup(markup: &Value) -> Result<(), Answer> {
    let parsed;
    let m = match markup {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
            &parsed
        }
        other => other,
    };
    let bad = || Answer::bad_request("can't parse reply keyboard markup JSON object");
    let obj = m.as_object().ok_or_else(bad)?;
    if obj.get("remove_keyboard").is_some() || obj.get("force_reply").is_some() {
        return Ok(());
    }
    let rows = obj
        .get("keyboard")
        .or_else(|| obj.get("inline_keyboard"))
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let button_ok = |b: &Value| match b {
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => o
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty()),
        _ => false,
    };
    let ok = rows
        .iter()
        .all(|r| r.as_array().is_some_and(|bs| bs.iter().all(button_ok)));
    if ok { Ok(()) } else { Err(bad()) }
}

// ---- update builders (what Telegram pushes) ----

/// A Telegram user, as in `message.from`.
pub fn user(id: i64, first_name: &str, last_name: Option<&str>, username: Option<&str>) -> Value {
    let mut u = json!({"id": id, "is_bot": false, "first_name": first_name, "language_code": "en"});
    if let Some(l) = last_name {
        u["last_name"] = json!(l);
    }
    if let Some(n) = username {
        u["username"] = json!(n);
    }
    u
}

/// A private chat with `user` (its id is the user's).
pub fn private_chat(user: &Value) -> Value {
    let mut c = json!({"id": user["id"], "type": "private", "first_name": user["first_name"]});
    if let Some(n) = user.get("username") {
        c["username"] = n.clone();
    }
    c
}

/// A group (`-<n>`) or supergroup (`-100<n>`) chat.
pub fn group_chat(id: i64, title: &str) -> Value {
    let kind = if id.to_string().starts_with("-100") {
        "supergroup"
    } else {
        "group"
    };
    json!({"id": id, "type": kind, "title": title})
}

/// A `message` update (without `update_id`): `content` holds the message's payload keys
/// (`text`, `photo`, `location`, ...). Message ids count per chat, like Telegram's.
pub fn message_update(message_id: i64, chat: Value, from: Option<Value>, content: Value) -> Value {
    let mut m = json!({"message_id": message_id, "chat": chat, "date": now_ms() / 1000});
    if let Some(f) = from {
        m["from"] = f;
    }
    if let Value::Object(c) = content {
        for (k, v) in c {
            m[k] = v;
        }
    }
    json!({"message": m})
}

// ---- axum handlers ----

async fn api_call(
    State(sim): State<TelegramSim>,
    Path((bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(&bot, &method, query.as_deref(), &headers, &body)
        .await
}

async fn download(
    State(sim): State<TelegramSim>,
    Path((bot, path)): Path<(String, String)>,
) -> Response {
    match sim.file_for_download(&bot, &path) {
        Some(f) => ([(header::CONTENT_TYPE, f.mime)], f.bytes).into_response(),
        None => Answer::error(404, "Not Found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "42:stand-in_TOKEN";

    async fn start(allow_http_webhook: bool) -> (TelegramSim, String) {
        let sim = TelegramSim::new(TelegramSimConfig {
            bot_token: TOKEN.into(),
            allow_http_webhook,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener));
        (sim, base)
    }

    async fn call(base: &str, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn enforces_the_token_and_the_documented_fields() {
        let (sim, base) = start(false).await;
        let m = format!("/bot{TOKEN}/sendMessage");
        let cases: Vec<(String, Value, u16, &str)> = vec![
            (
                "/bot42:wrong/sendMessage".to_string(),
                json!({"chat_id": 1, "text": "x"}),
                401,
                "Unauthorized",
            ),
            (
                "/notabot/sendMessage".into(),
                json!({"chat_id": 1, "text": "x"}),
                404,
                "Not Found",
            ),
            (
                format!("/bot{TOKEN}/sendTelepathy"),
                json!({}),
                404,
                "Not Found: method not found",
            ),
            (
                m.clone(),
                json!({"text": "x"}),
                400,
                "Bad Request: chat_id is empty",
            ),
            (
                m.clone(),
                json!({"chat_id": 1}),
                400,
                "Bad Request: message text is empty",
            ),
            (
                m.clone(),
                json!({"chat_id": "@nobody", "text": "x"}),
                400,
                "Bad Request: chat not found",
            ),
            (
                m.clone(),
                json!({"chat_id": 1, "text": "x".repeat(MAX_TEXT_CHARS + 1)}),
                400,
                "Bad Request: message is too long",
            ),
            (
                m.clone(),
                json!({"chat_id": 1, "text": "x", "reply_markup": {"keyboard": "S"}}),
                400,
                "Bad Request: can't parse reply keyboard markup JSON object",
            ),
            (
                format!("/bot{TOKEN}/sendPhoto"),
                json!({"chat_id": 1}),
                400,
                "Bad Request: there is no photo in the request",
            ),
            (
                format!("/bot{TOKEN}/sendPhoto"),
                json!({"chat_id": 1, "photo": "not a url"}),
                400,
                "Bad Request: wrong file identifier/HTTP URL specified",
            ),
            (
                format!("/bot{TOKEN}/sendDocument"),
                json!({"chat_id": 1, "document": "https://x/a.pdf", "caption": "c".repeat(MAX_CAPTION_CHARS + 1)}),
                400,
                "Bad Request: message caption is too long",
            ),
            (
                format!("/bot{TOKEN}/sendLocation"),
                json!({"chat_id": 1, "latitude": 91, "longitude": 0}),
                400,
                "Bad Request: wrong latitude or longitude specified",
            ),
            (
                format!("/bot{TOKEN}/sendVenue"),
                json!({"chat_id": 1, "latitude": 1, "longitude": 1, "title": "t"}),
                400,
                "Bad Request: title and address must be non-empty",
            ),
            (
                format!("/bot{TOKEN}/setWebhook"),
                json!({"url": "http://insecure.example/hook"}),
                400,
                "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
            ),
            (
                format!("/bot{TOKEN}/setWebhook"),
                json!({"url": "https://gw.example/hook", "secret_token": "no spaces"}),
                400,
                "Bad Request: secret token contains unallowed characters",
            ),
            (
                format!("/bot{TOKEN}/getFile"),
                json!({"file_id": "nope"}),
                400,
                "Bad Request: invalid file_id",
            ),
        ];
        for (path, body, status, description) in cases {
            let (got, answer) = call(&base, &path, body).await;
            assert_eq!(got, status, "{path}: {answer}");
            assert_eq!(answer["ok"], false, "{path}");
            assert_eq!(answer["error_code"], status, "{path}");
            assert_eq!(answer["description"], description, "{path}");
        }
        assert!(sim.accepted("sendMessage").is_empty());
        assert_eq!(
            sim.calls().len(),
            16,
            "every call is recorded, valid or not"
        );
    }

    #[tokio::test]
    async fn answers_in_telegram_shape_over_json_form_and_query() {
        let (sim, base) = start(false).await;
        let (status, a) = call(
            &base,
            &format!("/bot{TOKEN}/sendMessage"),
            json!({"chat_id": -1001234567890i64, "text": "hi"}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(a["ok"], true);
        assert_eq!(a["result"]["message_id"], 1);
        assert_eq!(
            a["result"]["chat"],
            json!({"id": -1001234567890i64, "type": "supergroup"})
        );
        assert_eq!(a["result"]["text"], "hi");
        let form = reqwest::Client::new()
            .post(format!("{base}/bot{TOKEN}/sendMessage"))
            .form(&[
                ("chat_id", "-1001234567890"),
                ("text", "again"),
                ("reply_markup", r#"{"keyboard":[["A"]]}"#),
            ])
            .send()
            .await
            .unwrap();
        let a: Value = form.json().await.unwrap();
        assert_eq!(a["result"]["message_id"], 2, "message ids count per chat");
        let q = reqwest::get(format!("{base}/bot{TOKEN}/getMe?x=1"))
            .await
            .unwrap();
        let a: Value = q.json().await.unwrap();
        assert_eq!(a["result"]["id"], 42);
        assert_eq!(sim.accepted("sendMessage").len(), 2);
    }

    #[tokio::test]
    async fn pushes_updates_with_the_secret_to_the_registered_webhook() {
        let (sim, base) = start(true).await;
        type Seen = Vec<(Option<String>, Value)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let record = seen.clone();
        let app = Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
                let record = record.clone();
                async move {
                    let secret = headers
                        .get("x-telegram-bot-api-secret-token")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    record.lock().unwrap().push((secret, body.0));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(
            sim.push_update(json!({"message": {}})).await.is_err(),
            "no webhook yet"
        );
        let (status, _) = call(
            &base,
            &format!("/bot{TOKEN}/setWebhook"),
            json!({"url": hook, "secret_token": "abc_DEF-123"}),
        )
        .await;
        assert_eq!(status, 200);
        let u = user(7, "Ann", None, None);
        let (first, status) = sim
            .push_update(message_update(
                1,
                private_chat(&u),
                Some(u.clone()),
                json!({"text": "one"}),
            ))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let (second, _) = sim
            .push_update(message_update(
                2,
                private_chat(&u),
                Some(u),
                json!({"text": "two"}),
            ))
            .await
            .unwrap();
        assert_eq!(
            second["update_id"].as_i64(),
            first["update_id"].as_i64().map(|n| n + 1)
        );
        assert_eq!(sim.deliver(&first).await.unwrap(), 200);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|(s, _)| s.as_deref() == Some("abc_DEF-123"))
        );
        assert_eq!(seen[2].1, first, "a redelivery is the same update");
        assert_eq!(seen[0].1["message"]["text"], "one");
    }
}
