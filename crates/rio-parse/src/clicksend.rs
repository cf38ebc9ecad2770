//! ClickSend SMS (REST v3), shared/spec/providers.md §1: the half that reads outside input.
//!
//! - Webhooks are unsigned (§1.6): [`authenticate`] checks the `?secret=` our URL carries.
//! - Inbound and receipts are pushed form-urlencoded (default), JSON, or as a GET query
//!   string: [`parse_inbound`], [`parse_receipts`]. `status_code` is the field to trust (§1.5).
//! - [`classify`] types the send API's answer (status + body) for the lane (§1.7).
//!
//! The provider itself (config, sending over HTTP) is `rio_bridge::providers::clicksend`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::clock::{now_ms, plausible_ms};
use crate::provider::{Accepted, InboundEvent, InboundKind, Receipt, SendError, WebhookRequest};
use crate::secret::Secret;
use crate::wire::{Attachment, AttachmentKind, Contact, IdType, Message, StatusValue};

/// Checks the shared secret in the webhook URL's query. ClickSend signs nothing (§1.6): the
/// secret in our webhook URL is all there is.
pub fn authenticate(webhook_secret: &Secret, req: &WebhookRequest<'_>) -> Result<(), String> {
    if webhook_secret.is_empty() {
        return Err("no webhook secret is configured for this channel".into());
    }
    let presented = req
        .query_param("secret")
        .ok_or("webhook URL has no secret query parameter")?;
    if webhook_secret.matches(&presented) {
        Ok(())
    } else {
        Err("webhook secret does not match".into())
    }
}

/// Reads an inbound-SMS push (one or more messages).
pub fn parse_inbound(req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
    payloads(req)?.iter().map(inbound_event).collect()
}

/// Reads a delivery-receipt push (one or more receipts).
pub fn parse_receipts(req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
    payloads(req)?.iter().map(receipt).collect()
}

/// Turns ClickSend's answer into our outcome (§1.7). `body` is `Err` when reading it failed.
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: Result<Vec<u8>, String>,
) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        // The request was taken; if we cannot read what happened, it may have been sent.
        let body = body.map_err(|e| SendError::Ambiguous(format!("HTTP {status} but {e}")))?;
        return classify_accepted(&body);
    }
    let detail = body.as_deref().map(response_msg).unwrap_or_default();
    let reason = |what: &str| {
        if detail.is_empty() {
            format!("{what} (HTTP {status})")
        } else {
            format!("{what} (HTTP {status}): {detail}")
        }
    };
    Err(match status {
        300..=399 => SendError::ChannelFault(reason(
            "ClickSend answered with a redirect, which is not followed; check api_base",
        )),
        429 => SendError::Throttled {
            retry_after,
            reason: reason("ClickSend throttled the send"),
        },
        401 | 403 => SendError::ChannelFault(reason("ClickSend rejected credentials")),
        400..=499 => SendError::Permanent(reason("ClickSend rejected the message")),
        // 5xx and anything unexpected: the message may or may not have been queued.
        _ => SendError::Ambiguous(reason("ClickSend server error")),
    })
}

/// A 2xx answer: HTTP 200 does not mean sent (§1.3); the per-message status decides.
fn classify_accepted(body: &[u8]) -> Result<Accepted, SendError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        SendError::Ambiguous("ClickSend answered 2xx with a body that is not JSON".into())
    })?;
    let msg = v.pointer("/data/messages/0").ok_or_else(|| {
        SendError::Ambiguous("ClickSend answered 2xx without data.messages[0]".into())
    })?;
    let status = msg.get("status").and_then(Value::as_str).unwrap_or("");
    let id = msg
        .get("message_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    match status {
        "SUCCESS" if !id.is_empty() => Ok(Accepted {
            provider_id: id.to_string(),
        }),
        "SUCCESS" | "" => Err(SendError::Ambiguous(format!(
            "ClickSend answered 2xx with status {status:?} and no usable message_id"
        ))),
        // The account, not the message, is the problem: pause the lane until credit returns.
        "INSUFFICIENT_CREDIT" => Err(SendError::ChannelFault(
            "ClickSend account has insufficient credit (INSUFFICIENT_CREDIT)".into(),
        )),
        // INVALID_RECIPIENT, MISSING_REQUIRED_FIELDS, INVALID_RETURN_ADDRESS and any status
        // the docs do not list: §1.3 says treat unknown values as failed.
        other => Err(SendError::Permanent(format!(
            "ClickSend did not queue the message: {other}"
        ))),
    }
}

/// ClickSend's human explanation from an error body, or a short excerpt of whatever came.
fn response_msg(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let code = v.get("response_code").and_then(Value::as_str);
        let msg = v.get("response_msg").and_then(Value::as_str);
        return match (code, msg) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (c, m) => m.or(c).unwrap_or_default().to_string(),
        };
    }
    String::from_utf8_lossy(body)
        .chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

/// One webhook's fields, by name. Empty values count as absent (form pushes send `error_code=`).
#[derive(Debug, Default)]
struct Fields(HashMap<String, String>);

impl Fields {
    fn insert(&mut self, k: &str, v: String) {
        // First occurrence wins, as with a form parser reading left to right.
        self.0.entry(k.to_string()).or_insert(v);
    }

    /// The first of `names` with a non-blank value, as sent.
    fn get(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .filter_map(|n| self.0.get(*n))
            .map(String::as_str)
            .find(|v| !v.trim().is_empty())
    }

    fn from_form(raw: &[u8]) -> Fields {
        let mut f = Fields::default();
        for (k, v) in url::form_urlencoded::parse(raw) {
            f.insert(&k, v.into_owned());
        }
        f
    }

    /// A flat JSON object; scalars become their text, `null` is absent. ClickSend's "custom
    /// JSON format" is undocumented (§1.4), so a `data` object is looked into as well.
    fn from_json(obj: &serde_json::Map<String, Value>) -> Fields {
        let mut f = Fields::default();
        for (k, v) in obj {
            match v {
                Value::String(s) => f.insert(k, s.clone()),
                Value::Number(n) => f.insert(k, n.to_string()),
                Value::Bool(b) => f.insert(k, b.to_string()),
                _ => {}
            }
        }
        if let Some(Value::Object(data)) = obj.get("data") {
            for (k, v) in Fields::from_json(data).0 {
                f.insert(&k, v);
            }
        }
        f
    }
}

/// The payload(s) of a ClickSend push: JSON (object or array of objects), form body, or —
/// for `webhook_type: get` — the query string when there is no body.
fn payloads(req: &WebhookRequest<'_>) -> Result<Vec<Fields>, String> {
    let body = req.body.trim_ascii();
    if body.is_empty() {
        let f = Fields::from_form(req.query.as_bytes());
        // Our own `secret` is always in the query; anything else means a GET push.
        if f.0.keys().all(|k| k == "secret") {
            return Err("webhook has neither a body nor query fields".into());
        }
        return Ok(vec![f]);
    }
    let looks_json =
        req.content_type().contains("json") || matches!(body.first(), Some(b'{' | b'['));
    if !looks_json {
        return Ok(vec![Fields::from_form(body)]);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    match v {
        Value::Object(o) => Ok(vec![Fields::from_json(&o)]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_object()
                    .map(Fields::from_json)
                    .ok_or("JSON array items must be objects".to_string())
            })
            .collect(),
        _ => Err("JSON body must be an object (or a non-empty array of objects)".into()),
    }
}

/// `from` as `+E.164`: ClickSend usually sends the `+`, but not always (courier's fixtures
/// carry `639171234567`), and people paste numbers with spaces or dashes.
fn normalise_phone(raw: &str) -> Result<String, String> {
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let e164 = if compact.starts_with('+') {
        compact
    } else {
        format!("+{compact}")
    };
    IdType::Phone
        .validate(&e164)
        .map(|_| e164)
        .map_err(|_| format!("from {raw:?} is not a phone number"))
}

/// Unix seconds (ClickSend's unit) to epoch ms; absent or unreadable means "now". A value
/// already in milliseconds (> year 5000 in seconds) is taken as such, defensively.
fn timestamp_ms(f: &Fields) -> i64 {
    let Some(secs) = f
        .get(&["timestamp"])
        .and_then(|t| t.trim().parse::<f64>().ok())
    else {
        return now_ms();
    };
    if !secs.is_finite() || secs <= 0.0 {
        return now_ms();
    }
    let ms = if secs > 1e11 {
        secs as i64
    } else {
        (secs * 1000.0) as i64
    };
    // `0.0001` (0 ms) or `1e300` (saturates) are no real time either.
    if plausible_ms(ms) { ms } else { now_ms() }
}

/// Inbound MMS is undocumented (§1.9): ClickSend's MMS objects name their media
/// `media_file` / `_media_file_url`, so we accept those names if a push ever carries one.
fn inbound_media(f: &Fields) -> Option<String> {
    let url = f
        .get(&["media_file", "_media_file_url", "media_file_url"])?
        .trim();
    let parsed = url::Url::parse(url).ok()?;
    matches!(parsed.scheme(), "http" | "https").then(|| url.to_string())
}

fn attachment_kind(url: &str) -> AttachmentKind {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let ext = path.rsplit('.').next().unwrap_or("");
    match ext {
        "mp4" | "3gp" | "mov" => AttachmentKind::Video,
        "mp3" | "amr" | "wav" | "ogg" | "m4a" => AttachmentKind::Audio,
        "pdf" | "vcf" | "txt" => AttachmentKind::File,
        _ => AttachmentKind::Image,
    }
}

fn inbound_event(f: &Fields) -> Result<InboundEvent, String> {
    let id = f
        .get(&["message_id"])
        .ok_or("inbound SMS has no message_id")?
        .trim()
        .to_string();
    // `sms` is the sender in legacy pushes (obrienware/transport uses it as the phone).
    let from = f.get(&["from", "sms"]).ok_or("inbound SMS has no from")?;
    let contact_id = normalise_phone(from)?;
    let text = f.get(&["body", "message"]).map(str::to_string);
    let message = match (inbound_media(f), text) {
        (Some(url), caption) => Message::Attachment {
            attachment: Attachment {
                kind: attachment_kind(&url),
                url,
                file_name: None,
                description: caption,
            },
        },
        (None, Some(text)) => Message::Text { text },
        (None, None) => return Err(format!("inbound SMS {id} has an empty body")),
    };
    Ok(InboundEvent {
        dedupe_key: id.clone(),
        contact_id: contact_id.clone(),
        kind: InboundKind::Message,
        provider_id: id,
        timestamp_ms: timestamp_ms(f),
        message,
        contact: Some(Contact {
            phone: Some(contact_id),
            ..Contact::default()
        }),
        media: None,
    })
}

fn receipt(f: &Fields) -> Result<Receipt, String> {
    let id = f
        .get(&["message_id"])
        .ok_or("receipt has no message_id")?
        .trim();
    let code = f.get(&["status_code"]).map(str::trim);
    let text = f.get(&["status_text"]).map(str::trim);
    if code.is_none() && text.is_none() {
        return Err(format!(
            "receipt for {id} has neither status_code nor status_text"
        ));
    }
    let status = match code.and_then(|c| c.parse::<u16>().ok()) {
        Some(200) => Some(StatusValue::Sent),
        Some(201) => Some(StatusValue::Delivered),
        // Temporary network error: ClickSend retries, and a later receipt settles it.
        Some(300) => None,
        Some(301) => Some(StatusValue::Failed),
        _ => text.and_then(status_from_text),
    };
    let reason = (status == Some(StatusValue::Failed)).then(|| failure_reason(f, code));
    let ts = f.get(&["timestamp"]).map(str::trim).unwrap_or("");
    Ok(Receipt {
        dedupe_key: format!("{id}:{}:{ts}", code.unwrap_or("")),
        provider_id: id.to_string(),
        status,
        reason,
        timestamp_ms: timestamp_ms(f),
    })
}

/// For codes outside the documented four: believe only an explicit word.
fn status_from_text(text: &str) -> Option<StatusValue> {
    let t = text.to_ascii_lowercase();
    if t.contains("undeliver") || t.contains("fail") || t.contains("cancel") {
        Some(StatusValue::Failed)
    } else if t.contains("deliver") {
        Some(StatusValue::Delivered)
    } else {
        None
    }
}

/// `error_text` (else `status_text`), with `error_code` appended since only it is stable.
fn failure_reason(f: &Fields, code: Option<&str>) -> String {
    let text = f.get(&["error_text", "status_text"]).map(str::trim);
    let err_code = f.get(&["error_code"]).map(str::trim);
    match (text, err_code) {
        (Some(t), Some(c)) => format!("{t} (error_code {c})"),
        (Some(t), None) => t.to_string(),
        (None, Some(c)) => format!("ClickSend error_code {c}"),
        (None, None) => format!("ClickSend reported status {}", code.unwrap_or("unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reading paths are tested end to end with the provider in the server crate; this
    /// pins the one rule that has no fixture: a timestamp that is no real time reads as now.
    #[test]
    fn implausible_timestamps_read_as_now() {
        for raw in ["0.0001", "1e300", "-5", "NaN", "soon"] {
            let f = Fields::from_form(format!("timestamp={raw}").as_bytes());
            let before = now_ms();
            let got = timestamp_ms(&f);
            assert!((before..=now_ms()).contains(&got), "{raw}: {got}");
        }
        let f = Fields::from_form(b"timestamp=1736900100");
        assert_eq!(timestamp_ms(&f), 1_736_900_100_000);
        let f = Fields::from_form(b"timestamp=1736900100123");
        assert_eq!(timestamp_ms(&f), 1_736_900_100_123);
    }
}
