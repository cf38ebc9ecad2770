//! Vonage Messages API, shared/spec/providers.md §4: the half that reads outside input.
//!
//! - Inbound and status webhooks are JSON, signed with `Authorization: Bearer <JWT>`, HS256
//!   under the account's signature secret; the JWT's `payload_hash` is the SHA-256 of the raw
//!   body and `iat` bounds the token's age (§4.6, SDK appendix): [`authenticate`],
//!   [`verify_hs256`], [`sign_hs256`].
//! - [`parse_inbound`] reads an inbound message, [`parse_receipts`] a status webhook.
//! - [`classify`] types the Messages API's answer (202 or an RFC 7807 problem).
//!
//! The provider itself (config, sending over HTTP) is `rio_bridge::providers::vonage`.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::{now_ms, plausible_ms};
use crate::provider::{Accepted, InboundEvent, InboundKind, Receipt, SendError, WebhookRequest};
use crate::secret::Secret;
use crate::support::{excerpt, rfc3339_ms, with_plus};
use crate::wire::{Attachment, AttachmentKind, Contact, IdType, Message, StatusValue};

/// Clock skew tolerated on `iat` in both directions.
const IAT_SKEW_SECS: i64 = 60;

/// Checks the webhook's Bearer JWT: HS256 under `signature_secret`, recent (`iat` within
/// `max_token_age_secs`), for this body (`payload_hash`) and, when it names one, for
/// `api_key`'s account.
pub fn authenticate(
    signature_secret: &Secret,
    api_key: &str,
    max_token_age_secs: u64,
    req: &WebhookRequest<'_>,
) -> Result<(), String> {
    let header = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header (is webhook signing on?)")?;
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or("Authorization is not a Bearer token")?;
    let claims = verify_hs256(token, signature_secret)?;
    check_claims(
        &claims,
        req.body,
        api_key,
        max_token_age_secs,
        now_ms() / 1000,
    )
}

/// Reads an inbound message (one per webhook).
pub fn parse_inbound(req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
    inbound_event(&json_object(req.body)?).map(|e| vec![e])
}

/// Reads a status webhook (one receipt per webhook).
pub fn parse_receipts(req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
    receipt(&json_object(req.body)?).map(|r| vec![r])
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
    // Every value of a signature secret in rotation is tried (`Secret::accepted`).
    let signed = secret.accepted().any(|key| {
        let mut mac =
            HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
        mac.update(format!("{h}.{p}").as_bytes());
        mac.verify_slice(&sig).is_ok()
    });
    if !signed {
        return Err("JWT signature does not match the signature secret".to_string());
    }
    match serde_json::from_slice(&decode(p, "payload")?) {
        Ok(Value::Object(claims)) => Ok(claims),
        _ => Err("JWT payload is not a JSON object".into()),
    }
}

/// What vonage-jwt leaves to us: the token is recent, it is for this body, and (when it
/// names one) for our account.
pub fn check_claims(
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

/// The webhook's `timestamp`; absent, unreadable or implausible (before 1970, after year
/// 9999: it would misplace the message in respond.io's conversation) means now.
fn timestamp_of(o: &Map<String, Value>) -> i64 {
    str_at(o, "timestamp")
        .and_then(rfc3339_ms)
        .filter(|&ms| plausible_ms(ms))
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
    // The channels we take (CHANNELS) all address contacts by phone number; anything
    // else would be refused by respond.io later, after the webhook was acknowledged.
    let contact_id = with_plus(from);
    IdType::Phone
        .validate(&contact_id)
        .map_err(|_| format!("from {from:?} is not a phone number"))?;
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

pub fn classify(
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
