//! Twilio Programmable Messaging, shared/spec/providers.md §2: the half that reads outside
//! input.
//!
//! - Inbound and status callbacks are form POSTs signed with `X-Twilio-Signature`
//!   (HMAC-SHA1 with the Auth Token over the URL and the sorted POST parameters, §2.5):
//!   [`authenticate`], [`verify_signature`], [`sign`].
//! - [`parse_inbound`] reads an inbound message (SMS, MMS media, WhatsApp locations);
//!   [`parse_receipts`] a status callback.
//! - [`classify`] types the Messages API's answer (status + body) for the lane.
//!
//! The provider itself (config, sending over HTTP) is `rio_bridge::providers::twilio`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;

use crate::clock::now_ms;
use crate::provider::{
    Accepted, InboundEvent, InboundKind, MediaRef, Receipt, SendError, WebhookRequest,
};
use crate::secret::Secret;
use crate::support::{excerpt, with_plus};
use crate::wire::{Attachment, AttachmentKind, Contact, IdType, Message, StatusValue};

/// Most media items one inbound message may carry (Twilio's own limit).
const MAX_MEDIA: usize = 10;
/// The header Twilio signs webhooks in.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// The address prefix of WhatsApp senders and recipients.
pub const WHATSAPP: &str = "whatsapp:";

/// Checks `X-Twilio-Signature` against the URL Twilio called and, when the channel sets
/// connection overrides, that URL with the overrides' fragment as well.
pub fn authenticate(
    auth_token: &Secret,
    overrides: Option<&str>,
    req: &WebhookRequest<'_>,
) -> Result<(), String> {
    let presented = req
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or("no X-Twilio-Signature header")?;
    let check =
        |url: &str| verify_signature(auth_token, url, req.content_type(), req.body, presented);
    // The fragment never reaches us; whether Twilio signs it is not documented, so a
    // configured one is tried as well.
    check(req.public_url).or_else(|e| match overrides {
        Some(ov) => check(&format!("{}#{ov}", req.public_url)).map_err(|_| e),
        None => Err(e),
    })
}

/// Reads an inbound message. With `proxy_media`, media URLs are marked for fetching through
/// us (they need the account's credentials).
pub fn parse_inbound(
    req: &WebhookRequest<'_>,
    proxy_media: bool,
) -> Result<Vec<InboundEvent>, String> {
    inbound_events(&Form::parse(req.body), proxy_media)
}

/// Reads a status callback (one receipt).
pub fn parse_receipts(req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
    receipt(&Form::parse(req.body)).map(|r| vec![r])
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
pub fn url_variants(url: &str) -> Vec<String> {
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
    // Every value of an auth token in rotation is tried (`Secret::accepted`).
    for key in auth_token.accepted() {
        for url in url_variants(public_url) {
            let mut mac =
                HmacSha1::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
            mac.update(signing_string(&url, &params).as_bytes());
            // verify_slice compares in constant time.
            if mac.verify_slice(&tag).is_ok() {
                return Ok(());
            }
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
pub fn classify(
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
