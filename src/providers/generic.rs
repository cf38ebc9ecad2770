//! The generic HTTP provider (`provider = "http"`): a long-tail SMS gateway connected by a
//! mapping in `[channel.http]`, without code.
//!
//! - Send: one HTTP request per message built from templates (`template`), its answer read by
//!   JSON Pointers and status/code lists (`response`).
//! - Webhooks: authenticated by a shared secret or an HMAC before anything is parsed
//!   (`auth`), then read by field paths (`fields`, `webhook`).
//!
//! Everything is compiled once by [`compile`]; `check-config` reports what it finds, each
//! problem with its config key, and [`build`] refuses a mapping with problems.

// The mapping's readers (templates, fields, auth, webhook, response) live in the parser
// crate (crates/rio-parse, fuzzed); re-exported at their historical paths.
pub use rio_parse::generic::{auth, config, fields, response, template, webhook};

use std::collections::BTreeMap;

use async_trait::async_trait;
use axum::http::{HeaderName, HeaderValue};

use self::auth::WebhookAuth;
use self::config::{AttachmentSendConfig, HttpConfig, SendConfig};
use self::fields::payloads;
use self::response::ResponseMapping;
use self::template::{JsonTemplate, Scope, Template, Vars};
use self::webhook::{InboundMapping, ReceiptMapping};
use super::{
    Accepted, InboundEvent, Provider, ProviderEnv, Receipt, SendError, SendRequest, WebhookRequest,
    WebhookRoute, classify_transport_error,
};
use crate::clock::now_ms;
use crate::config::ChannelConfig;
use crate::respondio::wire::{AttachmentKind, Message};
use crate::secret::Secret;

/// We never need more of an answer than a JSON envelope.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

type Problems = Vec<(String, String)>;

/// A request body template.
#[derive(Debug, Clone)]
enum BodyTemplate {
    None,
    Json(JsonTemplate),
    Form(Vec<(String, Template)>),
}

#[derive(Debug, Clone)]
struct RequestTemplate {
    url: Template,
    body: BodyTemplate,
}

#[derive(Debug, Clone)]
struct AttachmentRequest {
    request: RequestTemplate,
    /// `None`: every attachment type.
    types: Option<Vec<AttachmentKind>>,
}

/// `[channel.http.send]`, compiled.
#[derive(Debug, Clone)]
struct SendMapping {
    method: reqwest::Method,
    headers: Vec<(HeaderName, Template)>,
    basic_auth: Option<(Template, Template)>,
    main: RequestTemplate,
    attachment: Option<AttachmentRequest>,
    response: ResponseMapping,
}

/// A checked mapping, ready to run once the provider's environment is known.
#[derive(Debug, Clone)]
pub struct Compiled {
    rate_limit: u32,
    secrets: BTreeMap<String, Secret>,
    send: SendMapping,
    auth: WebhookAuth,
    inbound: InboundMapping,
    receipt: Option<ReceiptMapping>,
}

/// Checks and compiles a channel's `[channel.http]`. `k` makes a key from a channel field.
pub fn compile(ch: &ChannelConfig, k: &dyn Fn(&str) -> String) -> Result<Compiled, Problems> {
    let key = k("http");
    let Some(c) = &ch.http else {
        return Err(vec![(key, "section [channel.http] is required".into())]);
    };
    let mut problems = Vec::new();
    if c.rate_limit == 0 {
        problems.push((
            format!("{key}.rate_limit"),
            "must be at least 1 send per second".into(),
        ));
    }
    for (name, value) in &c.secrets {
        if value.is_empty() {
            problems.push((format!("{key}.secrets.{name}"), "is empty".into()));
        }
    }
    let send = match &c.send {
        None => {
            problems.push((
                format!("{key}.send"),
                "section [channel.http.send] is required".into(),
            ));
            None
        }
        Some(s) => keep(compile_send(s, c, &format!("{key}.send")), &mut problems),
    };
    let auth = keep(
        WebhookAuth::compile(
            &c.auth,
            &ch.webhook_secret,
            &format!("{key}.auth"),
            &k("webhook_secret"),
        ),
        &mut problems,
    );
    let inbound = match &c.inbound {
        None => {
            problems.push((
                format!("{key}.inbound"),
                "section [channel.http.inbound] is required".into(),
            ));
            None
        }
        Some(i) => keep(
            InboundMapping::compile(i, &format!("{key}.inbound"), ch.id_type),
            &mut problems,
        ),
    };
    let receipt = match &c.receipt {
        None => Some(None),
        Some(r) => keep(
            ReceiptMapping::compile(r, &format!("{key}.receipt")),
            &mut problems,
        )
        .map(Some),
    };
    match (send, auth, inbound, receipt) {
        (Some(send), Some(auth), Some(inbound), Some(receipt)) if problems.is_empty() => {
            Ok(Compiled {
                rate_limit: c.rate_limit,
                secrets: c.secrets.clone(),
                send,
                auth,
                inbound,
                receipt,
            })
        }
        _ => Err(problems),
    }
}

fn keep<T>(r: Result<T, Problems>, problems: &mut Problems) -> Option<T> {
    r.map_err(|p| problems.extend(p)).ok()
}

fn compile_send(s: &SendConfig, c: &HttpConfig, key: &str) -> Result<SendMapping, Problems> {
    let mut p = Vec::new();
    let scope = Scope {
        secrets: &c.secrets,
        attachment: false,
    };
    let method = match s.method.to_ascii_uppercase().as_str() {
        "POST" => reqwest::Method::POST,
        "PUT" => reqwest::Method::PUT,
        "PATCH" => reqwest::Method::PATCH,
        "GET" => reqwest::Method::GET,
        other => {
            p.push((
                format!("{key}.method"),
                format!("{other:?} is not one of POST, PUT, PATCH, GET"),
            ));
            reqwest::Method::POST
        }
    };
    let mut headers = Vec::new();
    for (name, value) in &s.headers {
        let hk = format!("{key}.headers.{name}");
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => {
                if let Some(t) = parse_into(value, &scope, &hk, &mut p) {
                    headers.push((h, t));
                }
            }
            Err(_) => p.push((hk, format!("{name:?} is not a valid header name"))),
        }
    }
    let basic_auth = s.basic_auth.as_ref().and_then(|b| {
        let u = parse_into(
            &b.username,
            &scope,
            &format!("{key}.basic_auth.username"),
            &mut p,
        );
        let pw = parse_into(
            &b.password,
            &scope,
            &format!("{key}.basic_auth.password"),
            &mut p,
        );
        u.zip(pw)
    });
    let main = compile_request(
        &s.url,
        s.json.as_ref(),
        s.form.as_ref(),
        &method,
        &scope,
        key,
        &mut p,
    );
    if let Some(main) = &main
        && !matches!(main.body, BodyTemplate::None)
        && !main_uses_text(main)
    {
        p.push((
            format!("{key}.{}", body_key(&main.body)),
            "never uses {text}: the message would not be sent".into(),
        ));
    }
    let attachment = s
        .attachment
        .as_ref()
        .and_then(|a| compile_attachment(a, s, &method, c, key, &mut p));
    let response = keep(
        ResponseMapping::compile(&s.response, &format!("{key}.response")),
        &mut p,
    );
    // A gateway that takes sends from anyone is not one we connect to: the credentials
    // must be used somewhere in the request.
    let mut uses_secret = headers.iter().any(|(_, t)| t.uses_secret())
        || basic_auth
            .as_ref()
            .is_some_and(|(u, pw)| u.uses_secret() || pw.uses_secret());
    if let Some(m) = &main {
        uses_secret |= request_uses_secret(m);
    }
    if !uses_secret && main.is_some() {
        p.push((
            key.to_string(),
            "uses no {secret.NAME}: put the gateway's credentials in [channel.http.secrets] and use them in basic_auth, headers, url or body"
                .into(),
        ));
    }
    match (main, response) {
        (Some(main), Some(response)) if p.is_empty() => Ok(SendMapping {
            method,
            headers,
            basic_auth,
            main,
            attachment,
            response,
        }),
        _ => Err(p),
    }
}

fn body_key(b: &BodyTemplate) -> &'static str {
    match b {
        BodyTemplate::Form(_) => "form",
        _ => "json",
    }
}

fn templates_of(r: &RequestTemplate) -> Vec<&Template> {
    let mut all = vec![&r.url];
    match &r.body {
        BodyTemplate::None => {}
        BodyTemplate::Form(f) => all.extend(f.iter().map(|(_, t)| t)),
        BodyTemplate::Json(j) => j.visit_templates(&mut |t| all.push(t)),
    }
    all
}

fn main_uses_text(r: &RequestTemplate) -> bool {
    templates_of(r)
        .iter()
        .any(|t| t.placeholders().any(|p| *p == template::Placeholder::Text))
}

fn request_uses_secret(r: &RequestTemplate) -> bool {
    templates_of(r).iter().any(|t| t.uses_secret())
}

fn parse_into(s: &str, scope: &Scope<'_>, key: &str, p: &mut Problems) -> Option<Template> {
    Template::parse(s, scope)
        .map_err(|e| p.push((key.to_string(), e)))
        .ok()
}

fn compile_request(
    url: &str,
    json: Option<&toml::Value>,
    form: Option<&BTreeMap<String, String>>,
    method: &reqwest::Method,
    scope: &Scope<'_>,
    key: &str,
    p: &mut Problems,
) -> Option<RequestTemplate> {
    let url_key = format!("{key}.url");
    let url = if url.trim().is_empty() {
        p.push((url_key, "is required (where to send)".into()));
        None
    } else {
        parse_into(url, scope, &url_key, p).filter(|t| match url_problem(t, scope) {
            Some(e) => {
                p.push((url_key.clone(), e));
                false
            }
            None => true,
        })
    };
    let body = match (json, form) {
        (Some(_), Some(_)) => {
            p.push((
                format!("{key}.form"),
                "json and form are exclusive: a request has one body".into(),
            ));
            None
        }
        (Some(j), None) => {
            if !matches!(j, toml::Value::Table(_) | toml::Value::Array(_)) {
                p.push((
                    format!("{key}.json"),
                    "must be a table or an array (the body's structure)".into(),
                ));
            }
            let before = p.len();
            let t = JsonTemplate::compile(j, &format!("{key}.json"), scope, p);
            (p.len() == before).then_some(BodyTemplate::Json(t))
        }
        (None, Some(f)) => {
            let before = p.len();
            let fields: Vec<(String, Template)> = f
                .iter()
                .filter_map(|(name, v)| {
                    parse_into(v, scope, &format!("{key}.form.{name}"), p)
                        .map(|t| (name.clone(), t))
                })
                .collect();
            (p.len() == before).then_some(BodyTemplate::Form(fields))
        }
        (None, None) => Some(BodyTemplate::None),
    };
    if *method == reqwest::Method::GET && !matches!(body, Some(BodyTemplate::None) | None) {
        p.push((
            format!("{key}.method"),
            "GET carries no body: put the fields in the url, or use POST".into(),
        ));
    }
    Some(RequestTemplate {
        url: url?,
        body: body?,
    })
}

/// Renders the URL with sample values to check that it is an http(s) URL without
/// credentials in it (those go in headers or basic_auth, not in logs).
fn url_problem(t: &Template, scope: &Scope<'_>) -> Option<String> {
    let sample = crate::respondio::wire::Attachment {
        kind: AttachmentKind::Image,
        url: "https://cdn.example.com/a.jpg".into(),
        file_name: Some("a.jpg".into()),
        description: Some("caption".into()),
    };
    let vars = Vars {
        mid: "01SAMPLE",
        contact_id: "+61422222222",
        text: "sample text".into(),
        status_url: "https://gw.example.com/channels/x/status",
        attachment: Some(&sample),
        secrets: scope.secrets,
        now_ms: 0,
    };
    let rendered = t.render(&vars, true);
    let Ok(u) = url::Url::parse(&rendered) else {
        return Some("is not a URL (it must start with https:// or http://)".into());
    };
    if !matches!(u.scheme(), "http" | "https") {
        return Some("must be an http(s) URL".into());
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Some("has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Some("must not contain user:password@; use basic_auth".into());
    }
    None
}

fn compile_attachment(
    a: &AttachmentSendConfig,
    s: &SendConfig,
    method: &reqwest::Method,
    c: &HttpConfig,
    key: &str,
    p: &mut Problems,
) -> Option<AttachmentRequest> {
    let key = format!("{key}.attachment");
    let scope = Scope {
        secrets: &c.secrets,
        attachment: true,
    };
    let types = match &a.types {
        None => None,
        Some(list) => {
            let mut kinds = Vec::new();
            for (i, t) in list.iter().enumerate() {
                match AttachmentKind::parse(t) {
                    Some(k) => kinds.push(k),
                    None => p.push((
                        format!("{key}.types[{i}]"),
                        format!("{t:?} is not one of image, video, audio, file"),
                    )),
                }
            }
            Some(kinds)
        }
    };
    let url = a.url.as_deref().unwrap_or(&s.url);
    let request = compile_request(
        url,
        a.json.as_ref(),
        a.form.as_ref(),
        method,
        &scope,
        &key,
        p,
    )?;
    let uses_url = templates_of(&request).iter().any(|t| {
        t.placeholders()
            .any(|p| *p == template::Placeholder::AttachmentUrl)
    });
    if !uses_url {
        p.push((
            key,
            "never uses {attachment_url}: the attachment would not be sent".into(),
        ));
        return None;
    }
    Some(AttachmentRequest { request, types })
}

/// Problems in a channel's `[channel.http]`, for `check-config`.
pub fn problems(ch: &ChannelConfig, k: &dyn Fn(&str) -> String) -> Problems {
    compile(ch, k).err().unwrap_or_default()
}

/// The generic provider of one channel.
pub struct HttpProvider {
    cfg: Compiled,
    client: reqwest::Client,
    /// Our receipt URL (with the secret when that is how webhooks authenticate).
    status_url: String,
}

impl HttpProvider {
    /// `client` should not follow redirects (see [`response`]); it carries the timeout.
    pub fn new(cfg: Compiled, env: ProviderEnv) -> HttpProvider {
        let status_url = format!(
            "{}{}",
            env.webhook_url(WebhookRoute::Status),
            cfg.auth.url_suffix()
        );
        HttpProvider {
            cfg,
            client: env.client,
            status_url,
        }
    }

    /// Picks the request for this message and fills it in.
    fn build_request(&self, req: &SendRequest<'_>) -> Result<reqwest::RequestBuilder, SendError> {
        let send = &self.cfg.send;
        let attachment = match req.message {
            Message::Attachment { attachment } => Some(attachment),
            _ => None,
        };
        let (template, attachment) = match (&send.attachment, attachment) {
            (Some(a), Some(att)) if a.types.as_ref().is_none_or(|t| t.contains(&att.kind)) => {
                (&a.request, Some(att))
            }
            // Everything else goes as text (attachments with their URL in it).
            _ => (&send.main, None),
        };
        let text = req.message.to_plain_text();
        if attachment.is_none() && text.trim().is_empty() {
            return Err(SendError::Permanent("message has no text to send".into()));
        }
        let vars = Vars {
            mid: req.mid,
            contact_id: req.contact_id,
            text,
            status_url: &self.status_url,
            attachment,
            secrets: &self.cfg.secrets,
            now_ms: now_ms(),
        };
        let url = template.url.render(&vars, true);
        let url = url::Url::parse(&url).map_err(|_| {
            SendError::Permanent("send.url did not render to a valid URL for this message".into())
        })?;
        let mut rb = self.client.request(send.method.clone(), url);
        let mut has_content_type = false;
        for (name, t) in &send.headers {
            let mut value = HeaderValue::from_str(&t.render(&vars, false)).map_err(|_| {
                SendError::Permanent(format!(
                    "header {name} would carry characters HTTP headers cannot (a line break?)"
                ))
            })?;
            if t.uses_secret() {
                value.set_sensitive(true);
            }
            has_content_type |= name == reqwest::header::CONTENT_TYPE;
            rb = rb.header(name.clone(), value);
        }
        if let Some((u, pw)) = &send.basic_auth {
            // reqwest marks the Authorization header sensitive.
            rb = rb.basic_auth(u.render(&vars, false), Some(pw.render(&vars, false)));
        }
        let (content_type, body) = match &template.body {
            BodyTemplate::None => return Ok(rb),
            BodyTemplate::Json(j) => (
                "application/json",
                serde_json::to_vec(&j.render(&vars)).map_err(|e| {
                    SendError::Permanent(format!("could not encode the JSON body: {e}"))
                })?,
            ),
            BodyTemplate::Form(fields) => {
                let mut ser = url::form_urlencoded::Serializer::new(String::new());
                for (name, t) in fields {
                    if let Some(v) = t.render_field(&vars) {
                        ser.append_pair(name, &v);
                    }
                }
                (
                    "application/x-www-form-urlencoded",
                    ser.finish().into_bytes(),
                )
            }
        };
        if !has_content_type {
            rb = rb.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        Ok(rb.body(body))
    }
}

#[async_trait]
impl Provider for HttpProvider {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        self.cfg.auth.check(req, now_ms() / 1000)
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        let m = &self.cfg.inbound;
        payloads(req, m.format, self.cfg.auth.query_param())?
            .iter()
            .map(|p| m.read(p))
            .collect()
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        let m = self
            .cfg
            .receipt
            .as_ref()
            .ok_or("this channel has no [channel.http.receipt] mapping")?;
        payloads(req, m.format, self.cfg.auth.query_param())?
            .iter()
            .map(|p| m.read(p))
            .collect()
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let rb = self.build_request(&req)?;
        // without_url: a URL template may carry a credential (`/bot{secret.token}/`), and
        // reasons end up in logs and in respond.io.
        // `channel_log::send` records the exchange (credentials redacted) for the message.
        let resp = crate::channel_log::send(rb, "provider")
            .await
            .map_err(|e| classify_transport_error(&e.without_url()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_retry_after);
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await;
        let result = self.cfg.send.response.classify(
            status,
            retry_after,
            body.as_deref().map_err(Clone::clone),
        );
        tracing::debug!(
            provider = "http",
            mid = req.mid,
            http_status = status,
            ok = result.is_ok(),
            "send answered"
        );
        result
    }
}

/// Reads at most `cap` bytes of an answer, so a misbehaving gateway cannot make us buffer
/// without bound; a truncated body fails to parse and reads as ambiguous.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the gateway's answer failed: {}", e.without_url()))?
    {
        let room = cap - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;
