//! Plivo SMS/MMS, shared/spec/providers.md §5: the half that reads outside input.
//!
//! - Authenticity: `X-Plivo-Signature-V3` when present (it covers URL, query and form
//!   body), else `X-Plivo-Signature-V2` (URL + nonce only): [`authenticate`]. V2 does not
//!   cover the body, so the server also remembers nonces (its replay guard, which holds
//!   state and so is not here).
//! - Inbound: form POST (or GET) with `From`, `To`, `Text`/`Body`, `MessageUUID`,
//!   `Media<N>`: [`parse_inbound`]. Receipts: `Status` form POSTs: [`parse_receipts`].
//! - [`classify`] types the Message API's answer.
//!
//! The provider itself (config, sending over HTTP) is `rio_bridge::providers::plivo`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::clock::now_ms;
use crate::provider::{
    Accepted, InboundEvent, InboundKind, MediaRef, Receipt, SendError, WebhookRequest,
};
use crate::secret::Secret;
use crate::wire::{Attachment, AttachmentKind, Contact, IdType, Message, StatusValue};

type HmacSha256 = Hmac<sha2::Sha256>;

/// A key Plivo may sign with: its V3 and V2 signature headers and the auth token. The
/// account's own token signs `X-Plivo-Signature-V3`/`-V2`; a main account's signs the
/// `-MA-` headers of a subaccount's webhooks.
pub type SigningKey<'a> = (&'static str, &'static str, &'a Secret);

/// Which signature matched and its nonce, for the replay guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `"V3"` or `"V2"`.
    pub version: &'static str,
    pub nonce: String,
}

/// Checks the webhook's Plivo signature under any of `keys`. V3 present decides alone.
pub fn authenticate(keys: &[SigningKey<'_>], req: &WebhookRequest<'_>) -> Result<Verified, String> {
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let v3 = header("x-plivo-signature-v3").is_some();
    let (nonce_header, version) = if v3 {
        ("x-plivo-signature-v3-nonce", "V3")
    } else {
        ("x-plivo-signature-v2-nonce", "V2")
    };
    if !v3 && header("x-plivo-signature-v2").is_none() {
        return Err("no X-Plivo-Signature-V3 or X-Plivo-Signature-V2 header".into());
    }
    let nonce = header(nonce_header).ok_or_else(|| format!("no {version} nonce header"))?;
    // V3 present decides alone: falling back to V2 would let a replayed V2 header set
    // carry a forged body past a failing V3.
    // Every value of a key in rotation is tried (`Secret::accepted`).
    let valid = keys.iter().any(|&(h3, h2, key)| {
        key.accepted().any(|value| {
            let key = &Secret::new(value);
            if v3 {
                header(h3).is_some_and(|sig| {
                    let expected = signature_v3(key, req, nonce);
                    sig.split(',').any(|s| ct_eq(s.trim(), &expected))
                })
            } else {
                header(h2).is_some_and(|sig| ct_eq(sig, &signature_v2(key, req.public_url, nonce)))
            }
        })
    });
    if !valid {
        return Err(format!("X-Plivo-Signature-{version} does not match"));
    }
    Ok(Verified {
        version,
        nonce: nonce.to_string(),
    })
}

/// Reads an inbound message; the sender becomes a contact id of `id_type`.
pub fn parse_inbound(
    req: &WebhookRequest<'_>,
    id_type: IdType,
) -> Result<Vec<InboundEvent>, String> {
    inbound_events(&fields(req)?, id_type)
}

/// Reads a delivery report (one receipt).
pub fn parse_receipts(req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
    receipt(&fields(req)?).map(|r| vec![r])
}

/// `+14155550100` / `14155550100` → `14155550100` (Plivo's form, §0.2).
pub fn plivo_number(contact_id: &str) -> Option<String> {
    let digits = contact_id.strip_prefix('+').unwrap_or(contact_id);
    ((7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.to_string())
}

// ---- signatures ----

fn hmac_b64(key: &Secret, msg: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = HmacSha256::new_from_slice(key.expose().as_bytes()) else {
        return String::new();
    };
    mac.update(msg);
    B64.encode(mac.finalize().into_bytes())
}

fn ct_eq(presented: &str, expected: &str) -> bool {
    !expected.is_empty()
        && presented.len() == expected.len()
        && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// `scheme://host[:port]/path` of the URL Plivo called: no query, no fragment.
fn base_url(public_url: &str) -> String {
    let end = public_url.find(['?', '#']).unwrap_or(public_url.len());
    public_url[..end].to_string()
}

/// V2: `Base64(HMAC-SHA256(auth_token, base_url + nonce))` (§5.5; plivo-python
/// `validate_signature`). Neither the query nor the body is covered.
pub fn signature_v2(key: &Secret, public_url: &str, nonce: &str) -> String {
    hmac_b64(key, format!("{}{nonce}", base_url(public_url)).as_bytes())
}

/// V3 (appendix; plivo-python `signature_v3.py`): the base URL, then `?` and the query
/// sorted by key (`k=v` joined by `&`, values percent-decoded, repeated values sorted, not
/// de-duplicated); for a POST with form parameters, a `.` after a non-empty query and then
/// every parameter as `key` + `value`, sorted the same way. The HMAC covers that string,
/// `.`, and the nonce.
pub fn signature_v3(key: &Secret, req: &WebhookRequest<'_>, nonce: &str) -> String {
    let public = req.public_url;
    let query = public
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    let query_params = sorted_params(query.as_bytes());
    let q = query_params
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join("&");
    let post_params = if req.body.trim_ascii().is_empty() || req.content_type().contains("json") {
        BTreeMap::new()
    } else {
        sorted_params(req.body)
    };
    let mut s = base_url(public);
    if post_params.is_empty() {
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q);
        }
    } else {
        s.push('?');
        s.push_str(&q);
        if !q.is_empty() {
            s.push('.');
        }
        for (k, vs) in &post_params {
            for v in vs {
                s.push_str(k);
                s.push_str(v);
            }
        }
    }
    s.push('.');
    s.push_str(nonce);
    hmac_b64(key, s.as_bytes())
}

/// Form parameters by key (byte order = Python's code-point order), each key's values sorted.
fn sorted_params(raw: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    for vs in out.values_mut() {
        vs.sort();
    }
    out
}

// ---- send answers ----

/// Plivo's `error` from an error body (a string, or an object of field errors), else a short
/// excerpt of whatever came.
fn error_text(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return match v.get("error") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        };
    }
    String::from_utf8_lossy(body)
        .chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Turns Plivo's answer into our outcome (§5.6).
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: Result<Vec<u8>, String>,
) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        let body = body.map_err(|e| SendError::Ambiguous(format!("HTTP {status} but {e}")))?;
        let v: Value = serde_json::from_slice(&body).map_err(|_| {
            SendError::Ambiguous("Plivo answered 2xx with a body that is not JSON".into())
        })?;
        // One uuid per destination; we send to one.
        return match v
            .pointer("/message_uuid/0")
            .and_then(Value::as_str)
            .map(str::trim)
        {
            Some(id) if !id.is_empty() => Ok(Accepted {
                provider_id: id.to_string(),
            }),
            _ => Err(SendError::Ambiguous(
                "Plivo answered 2xx without message_uuid".into(),
            )),
        };
    }
    let detail = body.as_deref().map(error_text).unwrap_or_default();
    let reason = |what: &str| {
        if detail.is_empty() {
            format!("{what} (HTTP {status})")
        } else {
            format!("{what} (HTTP {status}): {detail}")
        }
    };
    let lower = detail.to_ascii_lowercase();
    Err(match status {
        300..=399 => SendError::ChannelFault(reason(
            "Plivo answered with a redirect, which is not followed; check api_base",
        )),
        429 => SendError::Throttled {
            retry_after,
            reason: reason("Plivo rate-limited the send"),
        },
        // 401: wrong auth_id/auth_token; 403/404/405: the account or the API path is wrong
        // (a mistyped auth_id is a 404). No credit is the account's problem too.
        401 | 403 | 404 | 405 => SendError::ChannelFault(reason("Plivo rejected the account")),
        402 => SendError::ChannelFault(reason("Plivo account has insufficient credit")),
        400..=499 if lower.contains("insufficient") && lower.contains("credit") => {
            SendError::ChannelFault(reason("Plivo account has insufficient credit"))
        }
        400..=499 => SendError::Permanent(reason("Plivo refused the message")),
        _ => SendError::Ambiguous(reason("Plivo server error")),
    })
}

// ---- webhooks ----

/// One webhook's fields (first value of each key): the form body, or the query string of
/// a GET (`message_url` method GET).
pub fn fields(req: &WebhookRequest<'_>) -> Result<HashMap<String, String>, String> {
    let body = req.body.trim_ascii();
    let raw = if body.is_empty() {
        req.query.as_bytes()
    } else {
        body
    };
    if raw.is_empty() {
        return Err("webhook has neither a body nor query fields".into());
    }
    if matches!(raw.first(), Some(b'{' | b'[')) {
        return Err("body is JSON; Plivo posts form-encoded fields".into());
    }
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    Ok(out)
}

pub fn get<'a>(f: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// Plivo's `From` (`14155550100`) in the channel's id form.
pub fn contact_id(from: &str, id_type: IdType) -> Result<String, String> {
    let compact: String = from
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let digits =
        plivo_number(&compact).ok_or_else(|| format!("From {from:?} is not a phone number"))?;
    let id = match id_type {
        IdType::Phone => format!("+{digits}"),
        IdType::Custom => digits,
    };
    id_type
        .validate(&id)
        .map(|_| id)
        .map_err(|_| format!("From {from:?} is not a phone number"))
}

fn attachment_kind(content_type: Option<&str>, url: &str) -> AttachmentKind {
    if let Some(ct) = content_type {
        let ct = ct.to_ascii_lowercase();
        for (prefix, kind) in [
            ("image/", AttachmentKind::Image),
            ("video/", AttachmentKind::Video),
            ("audio/", AttachmentKind::Audio),
        ] {
            if ct.starts_with(prefix) {
                return kind;
            }
        }
        return AttachmentKind::File;
    }
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match path.rsplit('.').next().unwrap_or("") {
        "jpg" | "jpeg" | "png" | "gif" | "bmp" | "webp" => AttachmentKind::Image,
        "mp4" | "3gp" | "mov" => AttachmentKind::Video,
        "mp3" | "amr" | "wav" | "ogg" | "m4a" => AttachmentKind::Audio,
        // Plivo's media URLs have no extension: most MMS are pictures.
        "" => AttachmentKind::Image,
        _ if !path.rsplit('/').next().unwrap_or("").contains('.') => AttachmentKind::Image,
        _ => AttachmentKind::File,
    }
}

/// An inbound SMS is one event; an MMS one event per `Media<N>` (the text rides as the
/// first one's caption), each with its own dedupe key.
fn inbound_events(
    f: &HashMap<String, String>,
    id_type: IdType,
) -> Result<Vec<InboundEvent>, String> {
    let uuid = get(f, "MessageUUID").ok_or("inbound message has no MessageUUID")?;
    let from = get(f, "From").ok_or("inbound message has no From")?;
    let contact_id = contact_id(from, id_type)?;
    let text = get(f, "Text")
        .or_else(|| get(f, "Body"))
        .map(str::to_string);
    // The media index base is documented both as 0 and as 1 (§5.3): take any Media<N>.
    let mut media: Vec<(u32, &str)> = f
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix("Media")?.parse::<u32>().ok()?;
            let url = v.trim();
            url::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .map(|_| (n, url))
        })
        .collect();
    media.sort();
    let contact = Some(Contact {
        phone: (id_type == IdType::Phone).then(|| contact_id.clone()),
        ..Contact::default()
    })
    .filter(|c| !c.is_empty());
    let event = |key: String, message: Message, media: Option<MediaRef>| InboundEvent {
        dedupe_key: key,
        contact_id: contact_id.clone(),
        kind: InboundKind::Message,
        provider_id: uuid.to_string(),
        timestamp_ms: now_ms(),
        message,
        contact: contact.clone(),
        media,
    };
    if media.is_empty() {
        let text =
            text.ok_or_else(|| format!("inbound message {uuid} has no Text and no media"))?;
        return Ok(vec![event(uuid.to_string(), Message::Text { text }, None)]);
    }
    Ok(media
        .iter()
        .enumerate()
        .map(|(i, (n, url))| {
            let ct = get(f, &format!("MediaContentType{n}"));
            let message = Message::Attachment {
                attachment: Attachment {
                    kind: attachment_kind(ct, url),
                    url: url.to_string(),
                    file_name: None,
                    description: if i == 0 { text.clone() } else { None },
                },
            };
            let mref = MediaRef {
                source: url.to_string(),
                content_type: ct.map(str::to_string),
            };
            event(format!("{uuid}:media{n}"), message, Some(mref))
        })
        .collect())
}

/// Plivo's delivery error codes (§5.6, Plivo's error-code page). Codes missing here are
/// reported by number.
fn error_code_reason(code: &str) -> Option<&'static str> {
    Some(match code {
        "10" => "Invalid message",
        "20" => "Network error (temporary)",
        "30" => "Spam detected",
        "40" => "Invalid source number",
        "50" => "Invalid destination number",
        _ => return None,
    })
}

fn receipt(f: &HashMap<String, String>) -> Result<Receipt, String> {
    let uuid = get(f, "MessageUUID").ok_or("status callback has no MessageUUID")?;
    let status_raw =
        get(f, "Status").ok_or_else(|| format!("status callback for {uuid} has no Status"))?;
    let st = status_raw.to_ascii_lowercase();
    let status = match st.as_str() {
        // Queued adds nothing to the 200 respond.io already has.
        "queued" => None,
        "sent" => Some(StatusValue::Sent),
        "delivered" => Some(StatusValue::Delivered),
        "read" => Some(StatusValue::Read),
        // Courier maps undelivered to sent; for respond.io it is a failure with a reason.
        "failed" | "undelivered" | "rejected" => Some(StatusValue::Failed),
        _ => None,
    };
    let reason = (status == Some(StatusValue::Failed)).then(|| match get(f, "ErrorCode") {
        Some(code) => match error_code_reason(code) {
            Some(r) => format!("{r} (Plivo {st}, ErrorCode {code})"),
            None => format!("Plivo {st}, ErrorCode {code}"),
        },
        None => format!("Plivo {st}"),
    });
    // A long SMS goes out in parts, each with its own MessageUUID and callbacks; the parent
    // is the uuid the send API returned.
    let provider_id = get(f, "ParentMessageUUID").unwrap_or(uuid);
    Ok(Receipt {
        dedupe_key: format!("{uuid}:{st}"),
        provider_id: provider_id.to_string(),
        status,
        reason,
        timestamp_ms: now_ms(),
    })
}
