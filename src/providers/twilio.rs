//! Twilio Programmable Messaging (SMS/MMS, and WhatsApp through the same API),
//! shared/spec/providers.md §2.
//!
//! - Send: `POST {api_base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded,
//!   HTTP Basic `AccountSid:AuthToken` (or an API key `SK…:secret`). Attachments go as
//!   `MediaUrl`; each send names our `/status` URL as its `StatusCallback`.
//! - Inbound and status callbacks: form POSTs signed with `X-Twilio-Signature`
//!   (HMAC-SHA1 with the Auth Token over the URL and the sorted POST parameters, §2.5).
//! - Twilio wants TwiML back: an empty `<Response/>` means "no auto-reply".
//! - WhatsApp: a `from` of `whatsapp:+…` makes every `To` a `whatsapp:` address; inbound
//!   `whatsapp:+…` senders become plain `+…` contact ids (`:` is not a valid id character).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;

use super::support::{excerpt, read_capped, retry_after, with_plus};
use super::{
    Accepted, InboundEvent, InboundKind, MediaFetch, MediaRef, Provider, Receipt, SendError,
    SendRequest, WebhookReply, WebhookRequest, WebhookRoute, classify_transport_error,
};
use crate::clock::now_ms;
use crate::respondio::wire::{Attachment, AttachmentKind, Contact, IdType, Message, StatusValue};
use crate::secret::Secret;

/// A Twilio answer is a small JSON object; anything bigger is not Twilio.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Twilio takes at most 10 `MediaUrl`s per message (§2.8); it also reports at most 10.
const MAX_MEDIA: usize = 10;
/// The header Twilio signs its webhooks with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// Empty TwiML: take the message, send no auto-reply.
pub const TWIML_EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;
const WHATSAPP: &str = "whatsapp:";

fn default_api_base() -> String {
    "https://api.twilio.com".to_string()
}

fn default_rate_limit() -> u32 {
    // Twilio queues above a sender's MPS itself (§2.7); 10/s keeps the account's REST
    // concurrency limit far away.
    10
}

fn default_true() -> bool {
    true
}

/// `[channel.twilio]` in the config file. Unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct TwilioConfig {
    /// `AC…` (34 characters).
    pub account_sid: String,
    /// Signs every webhook Twilio sends us, and authenticates our calls unless an API key
    /// is configured.
    pub auth_token: Secret,
    /// Optional API key (`SK…`) for our calls to Twilio; webhooks are still signed with
    /// the Auth Token.
    #[serde(default)]
    pub api_key_sid: Option<String>,
    #[serde(default)]
    pub api_key_secret: Option<Secret>,
    /// Sender: a Twilio number (`+E.164`), `whatsapp:+E.164`, or an alphanumeric id.
    #[serde(default)]
    pub from: Option<String>,
    /// Or a Messaging Service (`MG…`) that picks the sender.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    #[serde(default = "default_api_base")]
    pub api_base: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// The account enforces HTTP auth on media: inbound attachments are served through
    /// the gateway's `/media` proxy, which fetches them with the account's credentials.
    #[serde(default)]
    pub proxy_media: bool,
    /// Pass our `/status` URL as each message's `StatusCallback` (off if the Messaging
    /// Service already has a status callback pointing at us).
    #[serde(default = "default_true")]
    pub status_callback: bool,
    /// Twilio connection overrides (`rc=3&rp=5xx,ct,rt`), the URL fragment that turns on
    /// Twilio's retries. Appended to the `StatusCallback` we pass; put the same fragment on
    /// the inbound URL in the Twilio Console. Signatures are accepted with and without it.
    #[serde(default)]
    pub connection_overrides: Option<String>,
}

impl TwilioConfig {
    /// Everything wrong with this config, as `(config key, problem)` pairs.
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: &str, problem: String| out.push((format!("{prefix}.{key}"), problem));
        if !sid_ok(&self.account_sid, "AC") {
            add(
                "account_sid",
                "must be your Account SID (AC followed by 32 hex characters, Twilio Console → Account Info)"
                    .into(),
            );
        }
        if self.auth_token.is_empty() {
            add(
                "auth_token",
                "is empty (Twilio Console → Account Info); it also verifies Twilio's webhook signatures"
                    .into(),
            );
        }
        match (&self.api_key_sid, &self.api_key_secret) {
            (None, None) => {}
            (Some(sid), Some(secret)) => {
                if !sid_ok(sid, "SK") {
                    add(
                        "api_key_sid",
                        "must be an API key SID (SK followed by 32 hex characters)".into(),
                    );
                }
                if secret.is_empty() {
                    add("api_key_secret", "is empty".into());
                }
            }
            (Some(_), None) => add(
                "api_key_secret",
                "is required when api_key_sid is set".into(),
            ),
            (None, Some(_)) => add(
                "api_key_sid",
                "is required when api_key_secret is set".into(),
            ),
        }
        match (&self.from, &self.messaging_service_sid) {
            (None, None) => add(
                "from",
                "set from (a Twilio number) or messaging_service_sid".into(),
            ),
            (from, mg) => {
                if let Some(p) = from.as_deref().and_then(sender_problem) {
                    add("from", p);
                }
                if let Some(mg) = mg
                    && !sid_ok(mg, "MG")
                {
                    add(
                        "messaging_service_sid",
                        "must be a Messaging Service SID (MG followed by 32 hex characters)".into(),
                    );
                }
            }
        }
        if let Some(p) = super::clicksend::api_base_problem(&self.api_base) {
            add("api_base", p);
        }
        if self.rate_limit == 0 {
            add("rate_limit", "must be at least 1 send per second".into());
        }
        if let Some(p) = self
            .connection_overrides
            .as_deref()
            .and_then(overrides_problem)
        {
            add("connection_overrides", p);
        }
        out
    }

    /// The overrides fragment without its `#`, if any.
    fn overrides(&self) -> Option<&str> {
        self.connection_overrides
            .as_deref()
            .map(|o| o.trim().trim_start_matches('#'))
            .filter(|o| !o.is_empty())
    }

    /// The sender is a WhatsApp address: recipients are too.
    fn is_whatsapp(&self) -> bool {
        self.from
            .as_deref()
            .is_some_and(|f| f.starts_with(WHATSAPP))
    }
}

/// `AC`/`SK`/`MG` + 32 hex characters.
fn sid_ok(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Twilio's override keys (webhooks-connection-overrides): connect/read/total timeouts,
/// retry count and policy, SNI, edge.
const OVERRIDE_KEYS: &[&str] = &["ct", "rt", "tt", "rc", "rp", "sni", "e"];

fn overrides_problem(ov: &str) -> Option<String> {
    let ov = ov.trim().trim_start_matches('#');
    let bad = ov.split('&').find(|pair| {
        !pair
            .split_once('=')
            .is_some_and(|(k, v)| OVERRIDE_KEYS.contains(&k) && !v.is_empty())
    });
    bad.map(|b| {
        format!(
            "{b:?} is not a Twilio connection override (key=value with key one of {}), e.g. rc=3&rp=5xx,ct,rt",
            OVERRIDE_KEYS.join(", ")
        )
    })
}

fn sender_problem(from: &str) -> Option<String> {
    let number = from.strip_prefix(WHATSAPP).unwrap_or(from);
    if number.starts_with('+') {
        return IdType::Phone
            .validate(number)
            .err()
            .map(|_| format!("{from:?} is not an E.164 number (+ then 7-15 digits)"));
    }
    let n = number.chars().count();
    if number == from && (1..=11).contains(&n) && number.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    Some(format!(
        "{from:?} is neither +E.164, whatsapp:+E.164 nor an alphanumeric sender id of at most 11 characters"
    ))
}

/// The Twilio provider of one channel.
#[derive(Debug)]
pub struct Twilio {
    cfg: TwilioConfig,
    client: reqwest::Client,
    /// Our `/status` URL, given to Twilio per message.
    status_url: String,
}

impl Twilio {
    /// `client` should not follow redirects (see `ClickSend::new`).
    pub fn new(cfg: TwilioConfig, status_url: String, client: reqwest::Client) -> Self {
        let status_url = match cfg.overrides() {
            Some(ov) => format!("{status_url}#{ov}"),
            None => status_url,
        };
        Twilio {
            cfg,
            client,
            status_url,
        }
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.cfg.api_base.trim_end_matches('/'),
            self.cfg.account_sid
        )
    }

    /// Who we are to Twilio's REST API: the API key if configured, else the account.
    fn credentials(&self) -> (&str, &Secret) {
        match (&self.cfg.api_key_sid, &self.cfg.api_key_secret) {
            (Some(sid), Some(secret)) => (sid, secret),
            _ => (&self.cfg.account_sid, &self.cfg.auth_token),
        }
    }

    /// The form Twilio's Messages resource takes (§2.2).
    fn build_form(&self, req: &SendRequest<'_>) -> Result<Vec<(&'static str, String)>, SendError> {
        let to = if self.cfg.is_whatsapp() {
            format!("{WHATSAPP}{}", req.contact_id)
        } else {
            req.contact_id.to_string()
        };
        let mut form = vec![("To", to)];
        if let Some(mg) = &self.cfg.messaging_service_sid {
            form.push(("MessagingServiceSid", mg.clone()));
        }
        if let Some(from) = &self.cfg.from {
            form.push(("From", from.clone()));
        }
        match req.message {
            Message::Attachment { attachment } => {
                // Twilio fetches the URL itself and carries any type it accepts (§2.8);
                // the caption rides as the body.
                form.push(("MediaUrl", attachment.url.clone()));
                if let Some(d) = attachment
                    .description
                    .as_deref()
                    .filter(|d| !d.trim().is_empty())
                {
                    form.push(("Body", d.to_string()));
                }
            }
            // Text, and quick replies / locations as text (SMS has no buttons or pins).
            other => {
                let text = other.to_plain_text();
                if text.trim().is_empty() {
                    return Err(SendError::Permanent("message has no text to send".into()));
                }
                form.push(("Body", text));
            }
        }
        if self.cfg.status_callback {
            form.push(("StatusCallback", self.status_url.clone()));
        }
        Ok(form)
    }

    /// Twilio media URLs of this account only: the credentials must never go elsewhere.
    fn media_url_ok(&self, source: &str) -> bool {
        let (Ok(src), Ok(base)) = (url::Url::parse(source), url::Url::parse(&self.cfg.api_base))
        else {
            return false;
        };
        let prefix = format!("/2010-04-01/Accounts/{}/Messages/", self.cfg.account_sid);
        src.scheme() == base.scheme()
            && src.host_str() == base.host_str()
            && src.port_or_known_default() == base.port_or_known_default()
            && src.path().starts_with(&prefix)
            && src.path().contains("/Media/")
    }
}

#[async_trait]
impl Provider for Twilio {
    fn kind(&self) -> &'static str {
        "twilio"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        let presented = req
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or("no X-Twilio-Signature header")?;
        let check = |url: &str| {
            verify_signature(
                &self.cfg.auth_token,
                url,
                req.content_type(),
                req.body,
                presented,
            )
        };
        // The fragment never reaches us; whether Twilio signs it is not documented, so a
        // configured one is tried as well.
        check(req.public_url).or_else(|e| match self.cfg.overrides() {
            Some(ov) => check(&format!("{}#{ov}", req.public_url)).map_err(|_| e),
            None => Err(e),
        })
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        inbound_events(&Form::parse(req.body), self.cfg.proxy_media)
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        receipt(&Form::parse(req.body)).map(|r| vec![r])
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let form = self.build_form(&req)?;
        let (user, secret) = self.credentials();
        let resp = self
            .client
            .post(self.messages_url())
            .basic_auth(user, Some(secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| classify_transport_error(&e))?;
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await;
        let result = classify(status, after, body);
        tracing::debug!(
            provider = "twilio",
            mid = req.mid,
            http_status = status,
            ok = result.is_ok(),
            "send answered"
        );
        result
    }

    fn webhook_reply(&self, _route: WebhookRoute) -> WebhookReply {
        // Status callbacks ignore the body; inbound messages would reply with any TwiML
        // we gave, so both get the empty document.
        WebhookReply {
            status: axum::http::StatusCode::OK,
            content_type: "text/xml; charset=utf-8",
            body: TWIML_EMPTY,
        }
    }

    async fn resolve_media(&self, source: &str) -> Result<MediaFetch, String> {
        if !self.media_url_ok(source) {
            return Err("not a media URL of this Twilio account".into());
        }
        // Twilio's media auth takes the account (or API key) credentials (§2.8). The URL
        // redirects to a storage host; clients must not carry Authorization across it.
        let (user, secret) = self.credentials();
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", secret.expose()));
        Ok(MediaFetch {
            url: source.to_string(),
            headers: vec![(
                "Authorization".to_string(),
                Secret::new(format!("Basic {token}")),
            )],
        })
    }
}

// ---- signatures (§2.5 and the SDK appendix) ----

type HmacSha1 = Hmac<sha1::Sha1>;

/// The string Twilio signs: the URL, then every POST parameter sorted by name, each as
/// `name` + `value` with no separators. Repeated names are de-duplicated and their values
/// sorted, as the official libraries do.
pub fn signing_string(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (k, v) in params {
        sorted.entry(k).or_default().insert(v);
    }
    let mut s = url.to_string();
    for (k, values) in sorted {
        for v in values {
            s.push_str(k);
            s.push_str(v);
        }
    }
    s
}

/// Base64 HMAC-SHA1 of [`signing_string`] under the Auth Token: what Twilio puts in
/// `X-Twilio-Signature`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(signing_string(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL as given and, per the official libraries, without its port (any port), or with
/// the scheme's default port when it has none: Twilio's signing is inconsistent about it.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some(scheme_end) = url.find("://") else {
        return out;
    };
    let scheme = &url[..scheme_end];
    let auth_start = scheme_end + 3;
    let auth_end = url[auth_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| auth_start + i);
    let authority = &url[auth_start..auth_end];
    let rest = &url[auth_end..];
    // A port is the digits after the last ':' that is not inside an IPv6 literal.
    let port_colon = authority
        .rfind(':')
        .filter(|&i| authority[i..].find(']').is_none() && i + 1 < authority.len())
        .filter(|&i| authority[i + 1..].bytes().all(|b| b.is_ascii_digit()));
    match port_colon {
        Some(i) => out.push(format!("{scheme}://{}{rest}", &authority[..i])),
        None => {
            let default = match scheme.to_ascii_lowercase().as_str() {
                "https" => Some(443),
                "http" => Some(80),
                _ => None,
            };
            if let Some(p) = default {
                out.push(format!("{scheme}://{authority}:{p}{rest}"));
            }
        }
    }
    out
}

/// Checks `X-Twilio-Signature` against the public URL Twilio called and the raw body.
/// Form bodies: the parameters are signed. JSON bodies: only the URL is signed, and its
/// `bodySHA256` query parameter must be the SHA-256 of the raw body.
pub fn verify_signature(
    auth_token: &Secret,
    public_url: &str,
    content_type: &str,
    body: &[u8],
    presented: &str,
) -> Result<(), String> {
    if auth_token.is_empty() {
        return Err("no auth_token is configured for this channel".into());
    }
    let tag = base64::engine::general_purpose::STANDARD
        .decode(presented.trim())
        .map_err(|_| "X-Twilio-Signature is not base64")?;
    let params: Vec<(String, String)> = if content_type.contains("json") {
        let query = public_url.split_once('?').map_or("", |(_, q)| q);
        let query = query.split('#').next().unwrap_or("");
        let claimed = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "bodySHA256")
            .map(|(_, v)| v.to_ascii_lowercase())
            .ok_or("a JSON webhook without bodySHA256 in its URL")?;
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            claimed.as_bytes(),
            actual.as_bytes(),
        )) {
            return Err("bodySHA256 does not match the body".into());
        }
        Vec::new()
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    };
    for url in url_variants(public_url) {
        let mut mac = HmacSha1::new_from_slice(auth_token.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(signing_string(&url, &params).as_bytes());
        // verify_slice compares in constant time.
        if mac.verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err("X-Twilio-Signature does not match (check server.public_url against the URL configured at Twilio)".into())
}

// ---- webhook payloads ----

/// A form body: first value per name (Twilio never repeats the fields we read).
#[derive(Debug, Default)]
struct Form(BTreeMap<String, String>);

impl Form {
    fn parse(raw: &[u8]) -> Form {
        let mut f = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(raw) {
            f.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Form(f)
    }

    /// A non-blank value.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// `whatsapp:+1…` or `+1…` → `+1…`.
fn contact_from_address(addr: &str) -> Result<String, String> {
    let number = addr.strip_prefix(WHATSAPP).unwrap_or(addr);
    let id = with_plus(number);
    IdType::Phone
        .validate(&id)
        .map(|_| id)
        .map_err(|_| format!("From {addr:?} is not a phone number"))
}

fn kind_of(content_type: &str) -> AttachmentKind {
    let ct = content_type.to_ascii_lowercase();
    if ct.starts_with("image/") {
        AttachmentKind::Image
    } else if ct.starts_with("video/") {
        AttachmentKind::Video
    } else if ct.starts_with("audio/") {
        AttachmentKind::Audio
    } else {
        AttachmentKind::File
    }
}

/// A WhatsApp location pin, when the message is one.
fn location(f: &Form) -> Option<Message> {
    let lat: f64 = f.get("Latitude")?.parse().ok()?;
    let lon: f64 = f.get("Longitude")?.parse().ok()?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return None;
    }
    Some(Message::Location {
        latitude: lat,
        longitude: lon,
        address: f.get("Address").map(str::to_string),
        name: f.get("Label").map(str::to_string),
    })
}

/// One event per message; an MMS with several pictures becomes one event per picture
/// (respond.io messages carry one attachment), the text riding on the first.
fn inbound_events(f: &Form, proxy_media: bool) -> Result<Vec<InboundEvent>, String> {
    let sid = f
        .get("MessageSid")
        .or_else(|| f.get("SmsMessageSid"))
        .ok_or("inbound message has no MessageSid")?
        .to_string();
    let from = f.get("From").ok_or("inbound message has no From")?;
    let contact_id = contact_from_address(from)?;
    let contact = Contact {
        phone: Some(contact_id.clone()),
        first_name: f.get("ProfileName").map(str::to_string),
        country_code: f.get("FromCountry").map(str::to_string),
        ..Contact::default()
    };
    let body = f.get("Body").map(str::to_string);
    let num_media: usize = f
        .get("NumMedia")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
        .min(MAX_MEDIA);

    let mut messages: Vec<(Message, Option<MediaRef>)> = Vec::new();
    if let Some(loc) = location(f) {
        messages.push((loc, None));
    } else {
        for i in 0..num_media {
            let Some(url) = f.get(&format!("MediaUrl{i}")) else {
                continue;
            };
            let ct = f.get(&format!("MediaContentType{i}")).map(str::to_string);
            let attachment = Attachment {
                kind: kind_of(ct.as_deref().unwrap_or("")),
                url: url.to_string(),
                file_name: None,
                description: if messages.is_empty() {
                    body.clone()
                } else {
                    None
                },
            };
            let media = proxy_media.then(|| MediaRef {
                source: url.to_string(),
                content_type: ct,
            });
            messages.push((Message::Attachment { attachment }, media));
        }
        if messages.is_empty() {
            let text =
                body.ok_or_else(|| format!("inbound message {sid} has no body and no media"))?;
            messages.push((Message::Text { text }, None));
        }
    }
    let now = now_ms();
    Ok(messages
        .into_iter()
        .enumerate()
        .map(|(i, (message, media))| InboundEvent {
            // The MessageSid identifies the webhook; later pictures of one MMS get a suffix.
            dedupe_key: if i == 0 {
                sid.clone()
            } else {
                format!("{sid}#{i}")
            },
            contact_id: contact_id.clone(),
            kind: InboundKind::Message,
            provider_id: sid.clone(),
            // Twilio's inbound webhook carries no timestamp: it arrives as it happens.
            timestamp_ms: now,
            message,
            contact: Some(contact.clone()),
            media,
        })
        .collect())
}

fn receipt(f: &Form) -> Result<Receipt, String> {
    let sid = f
        .get("MessageSid")
        .or_else(|| f.get("SmsSid"))
        .ok_or("status callback has no MessageSid")?;
    let raw = f
        .get("MessageStatus")
        .or_else(|| f.get("SmsStatus"))
        .ok_or_else(|| format!("status callback for {sid} has no MessageStatus"))?;
    let status = match raw.to_ascii_lowercase().as_str() {
        "sent" => Some(StatusValue::Sent),
        "delivered" => Some(StatusValue::Delivered),
        // Group/multi-recipient (§2.4, UNVERIFIED): at least someone got it.
        "partially_delivered" => Some(StatusValue::Delivered),
        "read" => Some(StatusValue::Read),
        "undelivered" | "failed" | "canceled" => Some(StatusValue::Failed),
        // queued, sending, accepted, scheduled: the API's 2xx already made it `sent`.
        _ => None,
    };
    let reason = (status == Some(StatusValue::Failed)).then(|| {
        let code = f.get("ErrorCode");
        let text = f.get("ErrorMessage").map(str::to_string).or_else(|| {
            code.and_then(|c| c.parse().ok())
                .and_then(code_info)
                .map(|i| i.1.to_string())
        });
        match (code, text) {
            (Some(c), Some(t)) => format!("{t} (Twilio error {c})"),
            (Some(c), None) => format!("Twilio error {c}"),
            (None, Some(t)) => t,
            (None, None) => format!("Twilio reported {raw}"),
        }
    });
    Ok(Receipt {
        // Each status is reported once per message; a redelivery repeats the pair.
        dedupe_key: format!("{sid}:{}", raw.to_ascii_lowercase()),
        provider_id: sid.to_string(),
        status,
        reason,
        timestamp_ms: now_ms(),
    })
}

// ---- send outcomes (§2.6) ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeClass {
    /// Never processed: retry after a while.
    Throttle,
    /// This message cannot go.
    Permanent,
    /// The account or sender is misconfigured: every message would fail.
    Channel,
}

/// Twilio error codes we act on, with their meaning (courier `errors.json`, §2.6).
const CODES: &[(u32, &str, CodeClass)] = &[
    (20003, "Authentication failed", CodeClass::Channel),
    (20005, "Account not active", CodeClass::Channel),
    (20429, "Too many requests", CodeClass::Throttle),
    (14107, "SMS send rate limit exceeded", CodeClass::Throttle),
    (
        63018,
        "Rate limit exceeded for channel",
        CodeClass::Throttle,
    ),
    (30001, "Queue overflow", CodeClass::Throttle),
    (
        30022,
        "US A2P 10DLC rate limit exceeded",
        CodeClass::Throttle,
    ),
    (30023, "US A2P 10DLC daily cap reached", CodeClass::Throttle),
    (
        30027,
        "US A2P 10DLC T-Mobile daily limit reached",
        CodeClass::Throttle,
    ),
    (21211, "Invalid 'To' phone number", CodeClass::Permanent),
    (
        21614,
        "'To' number is not a valid mobile number",
        CodeClass::Permanent,
    ),
    (
        21612,
        "'To' number cannot be reached by this sender",
        CodeClass::Permanent,
    ),
    (
        21610,
        "Recipient has opted out (replied STOP)",
        CodeClass::Permanent,
    ),
    (21617, "Body exceeds 1600 characters", CodeClass::Permanent),
    (
        30019,
        "Content size exceeds carrier limit",
        CodeClass::Permanent,
    ),
    (21620, "Invalid media URL", CodeClass::Permanent),
    (21623, "Too many media URLs", CodeClass::Permanent),
    (
        21408,
        "Sending to this region is not enabled",
        CodeClass::Permanent,
    ),
    (
        63016,
        "Outside the WhatsApp 24-hour window (a template is required)",
        CodeClass::Permanent,
    ),
    (
        30003,
        "Unreachable destination handset",
        CodeClass::Permanent,
    ),
    (30004, "Message blocked", CodeClass::Permanent),
    (30005, "Unknown destination handset", CodeClass::Permanent),
    (
        30006,
        "Landline or unreachable carrier",
        CodeClass::Permanent,
    ),
    (
        30007,
        "Message filtered by the carrier",
        CodeClass::Permanent,
    ),
    (30008, "Unknown error", CodeClass::Permanent),
    (
        21606,
        "'From' is not a message-capable number of this account",
        CodeClass::Channel,
    ),
    (
        21603,
        "A 'From' number or Messaging Service is required",
        CodeClass::Channel,
    ),
    (21212, "Invalid 'From' number", CodeClass::Channel),
    (
        21703,
        "The Messaging Service has no sender able to send",
        CodeClass::Channel,
    ),
    (
        30032,
        "Toll-free number is not verified",
        CodeClass::Channel,
    ),
    (
        30024,
        "Sender is not provisioned by the carrier",
        CodeClass::Channel,
    ),
    (30002, "Account suspended", CodeClass::Channel),
];

fn code_info(code: u32) -> Option<(CodeClass, &'static str)> {
    CODES
        .iter()
        .find(|(c, ..)| *c == code)
        .map(|(_, text, class)| (*class, *text))
}

/// Turns Twilio's answer into our outcome. `body` is `Err` when reading it failed.
fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: Result<Vec<u8>, String>,
) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        let body = body.map_err(|e| SendError::Ambiguous(format!("HTTP {status} but {e}")))?;
        let v: Value = serde_json::from_slice(&body).map_err(|_| {
            SendError::Ambiguous(format!(
                "Twilio answered {status} with a body that is not JSON"
            ))
        })?;
        return match v.get("sid").and_then(Value::as_str).map(str::trim) {
            Some(sid) if !sid.is_empty() => Ok(Accepted {
                provider_id: sid.to_string(),
            }),
            _ => Err(SendError::Ambiguous(format!(
                "Twilio answered {status} without a message sid"
            ))),
        };
    }
    let (code, message) = body
        .as_deref()
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .map(|v| {
            (
                v.get("code").and_then(Value::as_u64).map(|c| c as u32),
                v.get("message").and_then(Value::as_str).map(str::to_string),
            )
        })
        .unwrap_or_else(|| {
            (
                None,
                body.as_deref().ok().map(excerpt).filter(|s| !s.is_empty()),
            )
        });
    let reason = |what: &str| {
        let mut r = format!("{what} (HTTP {status}");
        if let Some(c) = code {
            r.push_str(&format!(", Twilio error {c}"));
        }
        r.push(')');
        if let Some(m) = &message {
            r.push_str(": ");
            r.push_str(m);
        } else if let Some((_, text)) = code.and_then(code_info) {
            r.push_str(": ");
            r.push_str(text);
        }
        r
    };
    let class = code.and_then(code_info).map(|(c, _)| c);
    Err(match (status, class) {
        (300..=399, _) => SendError::ChannelFault(reason(
            "Twilio answered with a redirect, which is not followed; check api_base",
        )),
        (429, _) | (_, Some(CodeClass::Throttle)) => SendError::Throttled {
            retry_after,
            reason: reason("Twilio throttled the send"),
        },
        (401 | 403, _) | (_, Some(CodeClass::Channel)) => {
            SendError::ChannelFault(reason("Twilio refused the account or sender"))
        }
        (400..=499, _) => SendError::Permanent(reason("Twilio rejected the message")),
        // 5xx and anything unexpected: the message may or may not have been queued.
        _ => SendError::Ambiguous(reason("Twilio server error")),
    })
}

#[cfg(test)]
mod tests;
