//! Vonage Messages API (SMS, MMS, WhatsApp, Viber, RCS), shared/spec/providers.md §4.
//!
//! - Send: `POST {api_base}/v1/messages`, JSON, HTTP Basic `api_key:api_secret` (the
//!   Messages API takes Basic as well as an application JWT; Basic needs no private key on
//!   disk). Success is `202 {"message_uuid"}`; errors are RFC 7807 problem documents.
//! - Inbound and status webhooks: JSON, signed with `Authorization: Bearer <JWT>`, HS256
//!   under the account's signature secret. The JWT's `payload_hash` is the SHA-256 of the
//!   raw body (we compare it) and `iat` bounds the token's age (§4.6, SDK appendix).
//! - Numbers are E.164 without `+` on the wire; contact ids carry the `+`.
//! - The legacy SMS API (§4.5) is not supported: inbound SMS must be routed to the
//!   Messages API (Dashboard → API settings → "Messages API").

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::support::{excerpt, read_capped, retry_after, rfc3339_ms, with_plus};
use super::{
    Accepted, InboundEvent, InboundKind, Provider, Receipt, SendError, SendRequest, WebhookRequest,
    classify_transport_error,
};
use crate::clock::now_ms;
use crate::respondio::wire::{Attachment, AttachmentKind, Contact, Message, StatusValue};
use crate::secret::Secret;

const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Clock skew tolerated on `iat` in both directions.
const IAT_SKEW_SECS: i64 = 60;
/// The channels whose contacts are phone numbers (Messenger ids are not).
pub const CHANNELS: &[&str] = &["sms", "mms", "whatsapp", "viber_service", "rcs"];

fn default_api_base() -> String {
    "https://api.nexmo.com".to_string()
}

fn default_rate_limit() -> u32 {
    // Vonage's commonly cited account default is 30 requests/s (§4.7, UNVERIFIED).
    30
}

fn default_channel() -> String {
    "sms".to_string()
}

fn default_max_token_age() -> u64 {
    300
}

/// `[channel.vonage]` in the config file. Unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct VonageConfig {
    pub api_key: String,
    pub api_secret: Secret,
    /// Dashboard → API settings → "Signature secret": verifies the signed webhooks.
    pub signature_secret: Secret,
    /// Our number (with or without `+`), or an alphanumeric sender id for SMS.
    pub from: String,
    /// The Messages API channel: sms, mms, whatsapp, viber_service or rcs.
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default = "default_api_base")]
    pub api_base: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// A signed webhook whose token was issued longer ago than this is refused.
    #[serde(default = "default_max_token_age")]
    pub max_token_age_secs: u64,
}

impl VonageConfig {
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: &str, problem: String| out.push((format!("{prefix}.{key}"), problem));
        if self.api_key.trim().is_empty() {
            add("api_key", "is empty (Dashboard → API settings)".into());
        }
        if self.api_secret.is_empty() {
            add("api_secret", "is empty (Dashboard → API settings)".into());
        }
        if self.signature_secret.is_empty() {
            add(
                "signature_secret",
                "is empty: it verifies Vonage's signed webhooks (Dashboard → API settings → Signature secret)"
                    .into(),
            );
        }
        let from = self.from.trim().trim_start_matches('+');
        let digits = from.bytes().all(|b| b.is_ascii_digit());
        let from_ok = if digits {
            (7..=15).contains(&from.len())
        } else {
            self.channel == "sms"
                && (1..=11).contains(&from.len())
                && from.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        if !from_ok {
            add(
                "from",
                format!(
                    "{:?} is not a number (7-15 digits) or, for sms, an alphanumeric sender id of at most 11 characters",
                    self.from
                ),
            );
        }
        if !CHANNELS.contains(&self.channel.as_str()) {
            add(
                "channel",
                format!("{:?} is not one of {}", self.channel, CHANNELS.join(", ")),
            );
        }
        if let Some(p) = super::clicksend::api_base_problem(&self.api_base) {
            add("api_base", p);
        }
        if self.rate_limit == 0 {
            add("rate_limit", "must be at least 1 send per second".into());
        }
        if !(30..=86_400).contains(&self.max_token_age_secs) {
            add("max_token_age_secs", "must be 30..=86400".into());
        }
        out
    }

    /// Which attachment kinds the channel carries natively (§4.8 and the SDK's channel
    /// types); the rest go as a link in the text.
    fn carries(&self, kind: AttachmentKind) -> bool {
        use AttachmentKind::*;
        match self.channel.as_str() {
            "mms" | "whatsapp" => true,
            "viber_service" | "rcs" => matches!(kind, Image | Video | File),
            _ => false,
        }
    }
}

/// The Vonage provider of one channel.
#[derive(Debug)]
pub struct Vonage {
    cfg: VonageConfig,
    client: reqwest::Client,
}

impl Vonage {
    /// `client` should not follow redirects (see `ClickSend::new`).
    pub fn new(cfg: VonageConfig, client: reqwest::Client) -> Self {
        Vonage { cfg, client }
    }

    /// The `/v1/messages` body (§4.2).
    fn build_body(&self, req: &SendRequest<'_>) -> Result<Value, SendError> {
        let mut body = json!({
            "channel": self.cfg.channel,
            "to": req.contact_id.trim_start_matches('+'),
            "from": self.cfg.from.trim().trim_start_matches('+'),
            // Echoed in status webhooks; our mId is at most 50 characters (Vonage: 100).
            "client_ref": req.mid,
        });
        match req.message {
            Message::Attachment { attachment: a } if self.cfg.carries(a.kind) => {
                let kind = match a.kind {
                    AttachmentKind::Image => "image",
                    AttachmentKind::Video => "video",
                    AttachmentKind::Audio => "audio",
                    AttachmentKind::File => "file",
                };
                let mut media = json!({ "url": a.url });
                // Audio carries no caption on the OTT channels; the caption is dropped there.
                if let Some(d) = a.description.as_deref().filter(|d| !d.trim().is_empty())
                    && a.kind != AttachmentKind::Audio
                {
                    media["caption"] = json!(d);
                }
                if a.kind == AttachmentKind::File
                    && let Some(name) = &a.file_name
                {
                    media["name"] = json!(name);
                }
                body["message_type"] = json!(kind);
                body[kind] = media;
            }
            other => {
                let text = other.to_plain_text();
                if text.trim().is_empty() {
                    return Err(SendError::Permanent("message has no text to send".into()));
                }
                body["message_type"] = json!("text");
                body["text"] = json!(text);
            }
        }
        Ok(body)
    }
}

#[async_trait]
impl Provider for Vonage {
    fn kind(&self) -> &'static str {
        "vonage"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        let header = req
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("no Authorization header (is webhook signing on?)")?;
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or("Authorization is not a Bearer token")?;
        let claims = verify_hs256(token, &self.cfg.signature_secret)?;
        check_claims(
            &claims,
            req.body,
            &self.cfg.api_key,
            self.cfg.max_token_age_secs,
            now_ms() / 1000,
        )
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        inbound_event(&json_object(req.body)?).map(|e| vec![e])
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        receipt(&json_object(req.body)?).map(|r| vec![r])
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let body = self.build_body(&req)?;
        let resp = self
            .client
            .post(format!(
                "{}/v1/messages",
                self.cfg.api_base.trim_end_matches('/')
            ))
            .basic_auth(&self.cfg.api_key, Some(self.cfg.api_secret.expose()))
            .json(&body)
            .send()
            .await
            .map_err(|e| classify_transport_error(&e))?;
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await;
        let result = classify(status, after, body);
        tracing::debug!(
            provider = "vonage",
            mid = req.mid,
            http_status = status,
            ok = result.is_ok(),
            "send answered"
        );
        result
    }
}

// ---- signed webhooks (§4.6, SDK appendix) ----

type HmacSha256 = Hmac<Sha256>;

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Signs `claims` as an HS256 JWT, as Vonage does for its webhooks.
pub fn sign_hs256(claims: &Value, secret: &str) -> String {
    let header = b64url().encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64url().encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(signing_input.as_bytes());
    let sig = b64url().encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Verifies an HS256 JWT and returns its claims. Only HS256 is accepted (never `none`, never
/// an algorithm the token picks); the signature is compared in constant time.
pub fn verify_hs256(token: &str, secret: &Secret) -> Result<Map<String, Value>, String> {
    if secret.is_empty() {
        return Err("no signature_secret is configured for this channel".into());
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("token is not a JWT (three dot-separated parts)".into());
    };
    let decode = |part: &str, what: &str| {
        b64url()
            .decode(part.trim_end_matches('='))
            .map_err(|_| format!("JWT {what} is not base64url"))
    };
    let header: Value = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|_| "JWT header is not JSON".to_string())?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err("JWT algorithm is not HS256".into());
    }
    let sig = decode(s, "signature")?;
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{h}.{p}").as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| "JWT signature does not match the signature secret".to_string())?;
    match serde_json::from_slice(&decode(p, "payload")?) {
        Ok(Value::Object(claims)) => Ok(claims),
        _ => Err("JWT payload is not a JSON object".into()),
    }
}

/// What vonage-jwt leaves to us: the token is recent, it is for this body, and (when it
/// names one) for our account.
fn check_claims(
    claims: &Map<String, Value>,
    body: &[u8],
    api_key: &str,
    max_age_secs: u64,
    now_s: i64,
) -> Result<(), String> {
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or("JWT has no iat")? as i64;
    if now_s - iat > max_age_secs as i64 + IAT_SKEW_SECS {
        return Err(format!("JWT was issued {} s ago (too old)", now_s - iat));
    }
    if iat - now_s > IAT_SKEW_SECS {
        return Err("JWT is issued in the future".into());
    }
    // Vonage sets no `exp`, but a token that carries one is held to it.
    if let Some(exp) = claims.get("exp").and_then(Value::as_f64)
        && now_s - exp as i64 > IAT_SKEW_SECS
    {
        return Err("JWT has expired (exp)".into());
    }
    let claimed = claims
        .get("payload_hash")
        .and_then(Value::as_str)
        .ok_or("JWT has no payload_hash")?
        .to_ascii_lowercase();
    let actual = hex::encode(Sha256::digest(body));
    if !bool::from(claimed.as_bytes().ct_eq(actual.as_bytes())) {
        return Err("payload_hash does not match the body".into());
    }
    if let Some(key) = claims.get("api_key").and_then(Value::as_str)
        && key != api_key
    {
        return Err("JWT is for another Vonage account (api_key)".into());
    }
    Ok(())
}

// ---- webhook payloads ----

fn json_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("webhook body is not a JSON object".into()),
        Err(e) => Err(format!("webhook body is not valid JSON: {e}")),
    }
}

fn str_at<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn timestamp_of(o: &Map<String, Value>) -> i64 {
    str_at(o, "timestamp")
        .and_then(rfc3339_ms)
        .unwrap_or_else(now_ms)
}

/// One media object (`{"url","caption"?,"name"?}`) as an attachment.
fn media(o: &Map<String, Value>, key: &str, kind: AttachmentKind) -> Result<Message, String> {
    let m = o
        .get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{key} message has no {key} object"))?;
    let url = str_at(m, "url").ok_or_else(|| format!("{key} has no url"))?;
    Ok(Message::Attachment {
        attachment: Attachment {
            kind,
            url: url.to_string(),
            file_name: str_at(m, "name").map(str::to_string),
            description: str_at(m, "caption").map(str::to_string),
        },
    })
}

fn inbound_message(o: &Map<String, Value>) -> Result<Message, String> {
    let ty = str_at(o, "message_type").ok_or("inbound message has no message_type")?;
    match ty {
        "text" => {
            let text = str_at(o, "text").ok_or("text message has no text")?;
            Ok(Message::Text {
                text: text.to_string(),
            })
        }
        "image" => media(o, "image", AttachmentKind::Image),
        "sticker" => media(o, "sticker", AttachmentKind::Image),
        "video" => media(o, "video", AttachmentKind::Video),
        "audio" => media(o, "audio", AttachmentKind::Audio),
        "file" => media(o, "file", AttachmentKind::File),
        "vcard" => media(o, "vcard", AttachmentKind::File),
        "location" => {
            let l = o
                .get("location")
                .and_then(Value::as_object)
                .ok_or("location message has no location object")?;
            let num = |k: &str| l.get(k).and_then(Value::as_f64);
            let (Some(lat), Some(lon)) = (num("lat"), num("long")) else {
                return Err("location has no lat/long".into());
            };
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return Err("location lat/long out of range".into());
            }
            Ok(Message::Location {
                latitude: lat,
                longitude: lon,
                address: str_at(l, "address").map(str::to_string),
                name: str_at(l, "name").map(str::to_string),
            })
        }
        // A tapped WhatsApp button or list row: what the contact chose is its title.
        "reply" => {
            let r = o.get("reply").and_then(Value::as_object);
            let text = r
                .and_then(|r| str_at(r, "title").or_else(|| str_at(r, "id")))
                .ok_or("reply message has no title")?;
            Ok(Message::Text {
                text: text.to_string(),
            })
        }
        "button" => {
            let b = o.get("button").and_then(Value::as_object);
            let text = b
                .and_then(|b| str_at(b, "text").or_else(|| str_at(b, "payload")))
                .ok_or("button message has no text")?;
            Ok(Message::Text {
                text: text.to_string(),
            })
        }
        other => Err(format!("inbound message_type {other:?} is not supported")),
    }
}

fn inbound_event(o: &Map<String, Value>) -> Result<InboundEvent, String> {
    let uuid = str_at(o, "message_uuid").ok_or("inbound message has no message_uuid")?;
    let from = str_at(o, "from").ok_or("inbound message has no from")?;
    let contact_id = with_plus(from);
    let name = o
        .get("profile")
        .and_then(Value::as_object)
        .and_then(|p| str_at(p, "name"))
        .map(str::to_string);
    Ok(InboundEvent {
        dedupe_key: uuid.to_string(),
        contact_id: contact_id.clone(),
        kind: InboundKind::Message,
        provider_id: uuid.to_string(),
        timestamp_ms: timestamp_of(o),
        message: inbound_message(o)?,
        contact: Some(Contact {
            phone: Some(contact_id),
            first_name: name,
            ..Contact::default()
        }),
        media: None,
    })
}

/// `"https://developer.vonage.com/api-errors/messages#1260"` → `"1260"`; `title` may be
/// the code as a number, too.
fn error_code(err: &Map<String, Value>) -> Option<String> {
    str_at(err, "type")
        .and_then(|t| t.rsplit_once('#').map(|(_, c)| c.to_string()))
        .filter(|c| !c.is_empty())
        .or_else(|| {
            err.get("title")
                .and_then(Value::as_u64)
                .map(|c| c.to_string())
        })
}

fn receipt(o: &Map<String, Value>) -> Result<Receipt, String> {
    let uuid = str_at(o, "message_uuid").ok_or("status webhook has no message_uuid")?;
    let raw =
        str_at(o, "status").ok_or_else(|| format!("status webhook for {uuid} has no status"))?;
    let status = match raw {
        "submitted" => Some(StatusValue::Sent),
        "delivered" => Some(StatusValue::Delivered),
        "read" => Some(StatusValue::Read),
        "rejected" | "undeliverable" => Some(StatusValue::Failed),
        _ => None,
    };
    let reason = (status == Some(StatusValue::Failed)).then(|| {
        let err = o.get("error").and_then(Value::as_object);
        let code = err.and_then(error_code);
        let detail = err.and_then(|e| {
            str_at(e, "detail")
                .or_else(|| str_at(e, "title"))
                .map(str::to_string)
        });
        match (detail, code) {
            (Some(d), Some(c)) => format!("{d} (Vonage error {c})"),
            (Some(d), None) => d,
            (None, Some(c)) => format!("Vonage error {c}"),
            (None, None) => format!("Vonage reported {raw}"),
        }
    });
    let ts = str_at(o, "timestamp").unwrap_or("");
    Ok(Receipt {
        dedupe_key: format!("{uuid}:{raw}:{ts}"),
        provider_id: uuid.to_string(),
        status,
        reason,
        timestamp_ms: timestamp_of(o),
    })
}

// ---- send outcomes (§4.2; https://developer.vonage.com/api-errors/messages) ----

/// Messages API codes that say the account, not the message, is the problem.
const ACCOUNT_CODES: &[&str] = &[
    "1060", // partner account barred
    "1070", // partner quota exceeded (no credit)
    "1080", // account not enabled for REST
    "1120", // illegal sender address
    "unauthorized",
    "low-balance",
];
/// Codes that mean "slow down" or "our side failed, try again".
const THROTTLE_CODES: &[&str] = &["1000"];
const SERVER_CODES: &[&str] = &["1030", "1100"];

fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: Result<Vec<u8>, String>,
) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        let body = body.map_err(|e| SendError::Ambiguous(format!("HTTP {status} but {e}")))?;
        let uuid = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message_uuid")?
                    .as_str()
                    .map(str::trim)
                    .map(str::to_string)
            })
            .filter(|u| !u.is_empty());
        return uuid
            .map(|provider_id| Accepted { provider_id })
            .ok_or_else(|| {
                SendError::Ambiguous(format!("Vonage answered {status} without a message_uuid"))
            });
    }
    let problem = body
        .as_deref()
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.as_object().cloned());
    let code = problem.as_ref().and_then(error_code);
    let detail = match &problem {
        Some(p) => {
            let title = p.get("title").map(|t| match t {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            let detail = str_at(p, "detail").map(str::to_string);
            match (title, detail) {
                (Some(t), Some(d)) => format!("{t}: {d}"),
                (t, d) => d.or(t).unwrap_or_default(),
            }
        }
        None => body.as_deref().map(excerpt).unwrap_or_default(),
    };
    let reason = |what: &str| {
        let mut r = format!("{what} (HTTP {status}");
        if let Some(c) = &code {
            r.push_str(&format!(", Vonage error {c}"));
        }
        r.push(')');
        if !detail.is_empty() {
            r.push_str(": ");
            r.push_str(&detail);
        }
        r
    };
    let is = |set: &[&str]| code.as_deref().is_some_and(|c| set.contains(&c));
    Err(match status {
        300..=399 => SendError::ChannelFault(reason(
            "Vonage answered with a redirect, which is not followed; check api_base",
        )),
        429 => SendError::Throttled {
            retry_after,
            reason: reason("Vonage throttled the send"),
        },
        _ if is(THROTTLE_CODES) => SendError::Throttled {
            retry_after,
            reason: reason("Vonage throttled the send"),
        },
        // 402: low balance; 401/403: credentials or an account not enabled for the channel.
        401..=403 => SendError::ChannelFault(reason("Vonage refused the account")),
        _ if is(ACCOUNT_CODES) => SendError::ChannelFault(reason("Vonage refused the account")),
        _ if is(SERVER_CODES) => SendError::Ambiguous(reason("Vonage failed to submit")),
        400..=499 => SendError::Permanent(reason("Vonage rejected the message")),
        _ => SendError::Ambiguous(reason("Vonage server error")),
    })
}

#[cfg(test)]
mod tests;
