//! Reading inbound messages and delivery receipts out of a gateway's webhooks by the mapped
//! field paths.

use std::collections::BTreeMap;

use super::config::{InboundConfig, PayloadFormat, ReceiptConfig};
use super::fields::{FieldPath, Payload};
use crate::clock::{now_ms, plausible_ms};
use crate::provider::{InboundEvent, InboundKind, Receipt};
use crate::wire::{Attachment, AttachmentKind, Contact, IdType, Message, StatusValue};

type Problems = Vec<(String, String)>;

/// Compiles an optional path; a bad one is recorded with its key.
fn path(
    format: PayloadFormat,
    value: &Option<String>,
    key: &str,
    required: Option<&str>,
    problems: &mut Problems,
) -> Option<FieldPath> {
    match value {
        Some(p) => match FieldPath::new(format, p) {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push((key.to_string(), e));
                None
            }
        },
        None => {
            if let Some(why) = required {
                problems.push((key.to_string(), format!("is required: {why}")));
            }
            None
        }
    }
}

/// `[channel.http.inbound]`, checked.
#[derive(Debug, Clone)]
pub struct InboundMapping {
    pub format: PayloadFormat,
    contact_id: FieldPath,
    message_id: FieldPath,
    text: Option<FieldPath>,
    media_url: Option<FieldPath>,
    media_type: Option<FieldPath>,
    timestamp: Option<FieldPath>,
    contact_name: Option<FieldPath>,
    id_type: IdType,
}

impl InboundMapping {
    pub fn compile(c: &InboundConfig, key: &str, id_type: IdType) -> Result<Self, Problems> {
        let mut p = Vec::new();
        let f = c.format;
        let k = |n: &str| format!("{key}.{n}");
        let contact_id = path(
            f,
            &c.contact_id,
            &k("contact_id"),
            Some("where the sender is"),
            &mut p,
        );
        let message_id = path(
            f,
            &c.message_id,
            &k("message_id"),
            Some("the gateway's id of the message (redeliveries are recognised by it)"),
            &mut p,
        );
        let text = path(f, &c.text, &k("text"), None, &mut p);
        let media_url = path(f, &c.media_url, &k("media_url"), None, &mut p);
        let media_type = path(f, &c.media_type, &k("media_type"), None, &mut p);
        let timestamp = path(f, &c.timestamp, &k("timestamp"), None, &mut p);
        let contact_name = path(f, &c.contact_name, &k("contact_name"), None, &mut p);
        if c.text.is_none() && c.media_url.is_none() {
            p.push((
                k("text"),
                "is required (or media_url): where the message is".into(),
            ));
        }
        if c.media_type.is_some() && c.media_url.is_none() {
            p.push((k("media_url"), "is required with media_type".into()));
        }
        match (contact_id, message_id) {
            (Some(contact_id), Some(message_id)) if p.is_empty() => Ok(InboundMapping {
                format: f,
                contact_id,
                message_id,
                text,
                media_url,
                media_type,
                timestamp,
                contact_name,
                id_type,
            }),
            _ => Err(p),
        }
    }

    pub fn read(&self, p: &Payload) -> Result<InboundEvent, String> {
        let id = self
            .message_id
            .get(p)
            .ok_or_else(|| format!("inbound message has no {}", self.message_id.as_str()))?
            .trim()
            .to_string();
        let raw_contact = self
            .contact_id
            .get(p)
            .ok_or_else(|| format!("inbound message {id} has no {}", self.contact_id.as_str()))?;
        let contact_id = contact_id(&raw_contact, self.id_type)?;
        let text = self.text.as_ref().and_then(|f| f.get(p));
        let media = self.media_url.as_ref().and_then(|f| f.get(p));
        let media_type = self.media_type.as_ref().and_then(|f| f.get(p));
        let message = match (media, text) {
            (Some(url), caption) => media_message(url.trim(), media_type.as_deref(), caption),
            (None, Some(text)) => Message::Text { text },
            (None, None) => return Err(format!("inbound message {id} has neither text nor media")),
        };
        let name = self.contact_name.as_ref().and_then(|f| f.get(p));
        let contact = Contact {
            phone: (self.id_type == IdType::Phone).then(|| contact_id.clone()),
            // One field for the whole name: splitting names into first/last guesses wrong
            // for too many of them.
            first_name: name.map(|n| n.trim().to_string()),
            ..Contact::default()
        };
        Ok(InboundEvent {
            dedupe_key: id.clone(),
            contact_id,
            kind: InboundKind::Message,
            provider_id: id,
            timestamp_ms: timestamp_ms(self.timestamp.as_ref().and_then(|f| f.get(p))),
            message,
            contact: (!contact.is_empty()).then_some(contact),
            media: None,
        })
    }
}

/// A media URL as an attachment when respond.io can carry it; otherwise (not an http(s) URL,
/// or a type that is none of image/video/audio/file, like a vCard or a sticker) as text with
/// the URL, so nothing the contact sent is lost.
fn media_message(url: &str, media_type: Option<&str>, caption: Option<String>) -> Message {
    let fetchable = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    let kind = match media_type {
        Some(t) => kind_from_type(t),
        None => Some(kind_from_extension(url)),
    };
    match kind {
        Some(kind) if fetchable => Message::Attachment {
            attachment: Attachment {
                kind,
                url: url.to_string(),
                file_name: None,
                description: caption,
            },
        },
        _ => Message::Text {
            text: match caption {
                Some(c) => format!("{c}\n{url}"),
                None => url.to_string(),
            },
        },
    }
}

/// `image`, `image/jpeg`, `IMAGE` → image; `application/pdf`, `document`, `file` → file.
fn kind_from_type(t: &str) -> Option<AttachmentKind> {
    let t = t.trim().to_ascii_lowercase();
    let major = t.split('/').next().unwrap_or("");
    match major {
        "image" | "photo" | "picture" => Some(AttachmentKind::Image),
        "video" => Some(AttachmentKind::Video),
        "audio" | "voice" => Some(AttachmentKind::Audio),
        "file" | "document" => Some(AttachmentKind::File),
        // vCards and calendar entries are text/… types: a file respond.io can offer.
        "application" | "text" if t.contains('/') => Some(AttachmentKind::File),
        _ => None,
    }
}

fn kind_from_extension(url: &str) -> AttachmentKind {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match path.rsplit('.').next().unwrap_or("") {
        "jpg" | "jpeg" | "png" | "gif" | "webp" | "bmp" => AttachmentKind::Image,
        "mp4" | "3gp" | "mov" | "webm" => AttachmentKind::Video,
        "mp3" | "amr" | "wav" | "ogg" | "m4a" | "opus" => AttachmentKind::Audio,
        _ => AttachmentKind::File,
    }
}

/// The sender as the channel's id type: phone numbers get their `+` (Vonage and Plivo send
/// E.164 without it) and lose spacing; custom ids are taken as they are, if valid.
pub fn contact_id(raw: &str, id_type: IdType) -> Result<String, String> {
    let raw = raw.trim();
    let id = match id_type {
        IdType::Phone => {
            let compact: String = raw
                .chars()
                .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
                .collect();
            if compact.starts_with('+') {
                compact
            } else {
                format!("+{compact}")
            }
        }
        IdType::Custom => raw.to_string(),
    };
    id_type
        .validate(&id)
        .map(|_| id)
        .map_err(|e| format!("sender {raw:?}: {e}"))
}

/// Epoch ms from what gateways send: Unix seconds or ms (number or digits; a value past the
/// year 5000 in seconds is taken as ms), or a date-time `YYYY-MM-DD[T ]HH:MM:SS[.frac]`
/// with `Z`, an offset, or none (UTC). Absent or unreadable means now.
pub fn timestamp_ms(raw: Option<String>) -> i64 {
    let Some(raw) = raw else { return now_ms() };
    let raw = raw.trim();
    let ms = match raw.parse::<f64>() {
        Ok(n) if !n.is_finite() || n <= 0.0 => None,
        Ok(n) if n > 1e11 => Some(n as i64),
        Ok(n) => Some((n * 1000.0) as i64),
        Err(_) => parse_datetime_ms(raw),
    };
    // A date before 1970 (`1012-01-15T...`) or a number past year 9999 is no real time.
    ms.filter(|&ms| plausible_ms(ms)).unwrap_or_else(now_ms)
}

fn parse_datetime_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = first3.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = rest[1..].replace(':', "");
            if hm.len() != 4 || !hm.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let oh: i64 = hm[..2].parse().ok()?;
            let om: i64 = hm[2..].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_s) * 1000) + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What a receipt's status value means; `None` changes nothing (informational).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapped {
    Status(StatusValue),
    Ignore,
}

/// `[channel.http.receipt]`, checked.
#[derive(Debug, Clone)]
pub struct ReceiptMapping {
    pub format: PayloadFormat,
    provider_id: FieldPath,
    status: FieldPath,
    error_reason: Option<FieldPath>,
    error_code: Option<FieldPath>,
    timestamp: Option<FieldPath>,
    statuses: BTreeMap<String, Mapped>,
}

impl ReceiptMapping {
    pub fn compile(c: &ReceiptConfig, key: &str) -> Result<Self, Problems> {
        let mut p = Vec::new();
        let f = c.format;
        let k = |n: &str| format!("{key}.{n}");
        let provider_id = path(
            f,
            &c.provider_id,
            &k("provider_id"),
            Some("the id the send answer gave (receipts are matched by it)"),
            &mut p,
        );
        let status = path(
            f,
            &c.status,
            &k("status"),
            Some("where the delivery status is"),
            &mut p,
        );
        let error_reason = path(f, &c.error_reason, &k("error_reason"), None, &mut p);
        let error_code = path(f, &c.error_code, &k("error_code"), None, &mut p);
        let timestamp = path(f, &c.timestamp, &k("timestamp"), None, &mut p);
        if c.statuses.is_empty() {
            p.push((
                k("statuses"),
                "is required: map the gateway's status values to sent, delivered, read, failed or ignore"
                    .into(),
            ));
        }
        let mut statuses = BTreeMap::new();
        for (value, meaning) in &c.statuses {
            let m = match meaning.as_str() {
                "sent" => Mapped::Status(StatusValue::Sent),
                "delivered" => Mapped::Status(StatusValue::Delivered),
                "read" => Mapped::Status(StatusValue::Read),
                "failed" => Mapped::Status(StatusValue::Failed),
                "ignore" => Mapped::Ignore,
                other => {
                    p.push((
                        format!("{key}.statuses.{value}"),
                        format!("{other:?} is not one of sent, delivered, read, failed, ignore"),
                    ));
                    continue;
                }
            };
            statuses.insert(value.clone(), m);
        }
        match (provider_id, status) {
            (Some(provider_id), Some(status)) if p.is_empty() => Ok(ReceiptMapping {
                format: f,
                provider_id,
                status,
                error_reason,
                error_code,
                timestamp,
                statuses,
            }),
            _ => Err(p),
        }
    }

    pub fn read(&self, p: &Payload) -> Result<Receipt, String> {
        let id = self
            .provider_id
            .get(p)
            .ok_or_else(|| format!("receipt has no {}", self.provider_id.as_str()))?
            .trim()
            .to_string();
        let value = self
            .status
            .get(p)
            .ok_or_else(|| format!("receipt for {id} has no {}", self.status.as_str()))?
            .trim()
            .to_string();
        // A value the mapping does not name changes nothing: believe only what is mapped.
        let status = match self.statuses.get(&value) {
            Some(Mapped::Status(s)) => Some(*s),
            Some(Mapped::Ignore) | None => None,
        };
        let code = self.error_code.as_ref().and_then(|f| f.get(p));
        let reason = (status == Some(StatusValue::Failed)).then(|| {
            let text = self.error_reason.as_ref().and_then(|f| f.get(p));
            match (text, &code) {
                (Some(t), Some(c)) => format!("{} (error code {})", t.trim(), c.trim()),
                (Some(t), None) => t.trim().to_string(),
                (None, Some(c)) => format!("the gateway reported {value}, error code {}", c.trim()),
                (None, None) => format!("the gateway reported {value}"),
            }
        });
        let ts_raw = self.timestamp.as_ref().and_then(|f| f.get(p));
        Ok(Receipt {
            dedupe_key: format!(
                "{id}:{value}:{}:{}",
                ts_raw.as_deref().unwrap_or(""),
                code.as_deref().unwrap_or("")
            ),
            provider_id: id,
            status,
            reason,
            timestamp_ms: timestamp_ms(ts_raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(s: &str) -> Payload {
        Payload::Form(
            url::form_urlencoded::parse(s.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    #[test]
    fn timestamps() {
        let cases: &[(&str, i64)] = &[
            ("1736900100", 1_736_900_100_000),
            ("1736900100.5", 1_736_900_100_500),
            ("1736900100123", 1_736_900_100_123),
            ("2025-01-15T00:15:00Z", 1_736_900_100_000),
            ("2025-01-15T00:15:00.250Z", 1_736_900_100_250),
            ("2025-01-15 00:15:00", 1_736_900_100_000),
            ("2025-01-15 00:15:00.123456", 1_736_900_100_123),
            ("2025-01-15T10:15:00+10:00", 1_736_900_100_000),
            ("2025-01-14T23:15:00-0100", 1_736_900_100_000),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
        ];
        for (raw, want) in cases {
            assert_eq!(timestamp_ms(Some(raw.to_string())), *want, "{raw}");
        }
        let before = now_ms();
        for bad in [
            "",
            "soon",
            "2025-13-01T00:00:00Z",
            "2025-01-15T00:15",
            "-5",
            "NaN",
            "2025-01-15T00:15:00+1",
            // No real time (found by fuzzing: the year 1012 read as a negative epoch).
            "1970-01-01T00:00:00Z",
            "1012-01-15T10:02:00Z",
            "1e300",
        ] {
            assert!(timestamp_ms(Some(bad.to_string())) >= before, "{bad}");
        }
        assert!(timestamp_ms(None) >= before);
    }

    #[test]
    fn contact_ids() {
        let cases: &[(&str, IdType, Option<&str>)] = &[
            ("+61422222222", IdType::Phone, Some("+61422222222")),
            ("61422222222", IdType::Phone, Some("+61422222222")),
            (" +61 (422) 222-222 ", IdType::Phone, Some("+61422222222")),
            ("abc", IdType::Phone, None),
            ("123", IdType::Phone, None),
            ("user_42@x", IdType::Custom, Some("user_42@x")),
            ("has space", IdType::Custom, None),
        ];
        for (raw, t, want) in cases {
            assert_eq!(contact_id(raw, *t).ok().as_deref(), *want, "{raw}");
        }
    }

    fn inbound(toml_text: &str) -> InboundMapping {
        let c: InboundConfig = toml::from_str(toml_text).unwrap();
        InboundMapping::compile(&c, "in", IdType::Phone).unwrap()
    }

    #[test]
    fn inbound_table() {
        let m = inbound(
            r#"format = "json"
contact_id = "/from"
message_id = "/id"
text = "/message/text"
media_url = "/message/media/0/url"
media_type = "/message/media/0/type"
timestamp = "/ts"
contact_name = "/profile/name""#,
        );
        let text = |t: &str| Message::Text { text: t.into() };
        let attach = |k: AttachmentKind, url: &str, cap: Option<&str>| Message::Attachment {
            attachment: Attachment {
                kind: k,
                url: url.into(),
                file_name: None,
                description: cap.map(str::to_string),
            },
        };
        let cases: Vec<(&str, serde_json::Value, Result<Message, &str>)> = vec![
            (
                "text",
                json!({"from":"61422222222","id":"m1","message":{"text":"Hi \"there\""}}),
                Ok(text("Hi \"there\"")),
            ),
            (
                "numeric id",
                json!({"from":"+61422222222","id":12345,"message":{"text":"x"}}),
                Ok(text("x")),
            ),
            (
                "image",
                json!({"from":"+61422222222","id":"m2","message":{"media":[{"url":"https://cdn.test/a","type":"image/jpeg"}]}}),
                Ok(attach(AttachmentKind::Image, "https://cdn.test/a", None)),
            ),
            (
                "captioned pdf",
                json!({"from":"+61422222222","id":"m3","message":{"text":"see","media":[{"url":"https://cdn.test/f","type":"application/pdf"}]}}),
                Ok(attach(
                    AttachmentKind::File,
                    "https://cdn.test/f",
                    Some("see"),
                )),
            ),
            (
                "sticker → text with url",
                json!({"from":"+61422222222","id":"m4","message":{"text":"lol","media":[{"url":"https://cdn.test/s","type":"sticker"}]}}),
                Ok(text("lol\nhttps://cdn.test/s")),
            ),
            (
                "not http → text",
                json!({"from":"+61422222222","id":"m5","message":{"media":[{"url":"s3://bucket/key","type":"image"}]}}),
                Ok(text("s3://bucket/key")),
            ),
            (
                "no id",
                json!({"from":"+61422222222","message":{"text":"x"}}),
                Err("has no /id"),
            ),
            (
                "no sender",
                json!({"id":"m6","message":{"text":"x"}}),
                Err("has no /from"),
            ),
            (
                "bad sender",
                json!({"from":"hello","id":"m7","message":{"text":"x"}}),
                Err("sender \"hello\""),
            ),
            (
                "empty",
                json!({"from":"+61422222222","id":"m8","message":{"text":" "}}),
                Err("neither text nor media"),
            ),
        ];
        for (name, payload, want) in cases {
            let got = m.read(&Payload::Json(payload));
            match (want, got) {
                (Ok(msg), Ok(ev)) => {
                    assert_eq!(ev.message, msg, "{name}");
                    assert_eq!(ev.contact_id, "+61422222222", "{name}");
                    assert_eq!(ev.dedupe_key, ev.provider_id, "{name}");
                }
                (Err(w), Err(e)) => assert!(e.contains(w), "{name}: {e}"),
                (w, g) => panic!("{name}: wanted {w:?}, got {g:?}"),
            }
        }
        let ev = m
            .read(&Payload::Json(
                json!({"from":"+61422222222","id":"m9","ts":"2025-01-15T00:15:00Z",
                "message":{"text":"x"},"profile":{"name":" Ann Lee "}}),
            ))
            .unwrap();
        assert_eq!(ev.timestamp_ms, 1_736_900_100_000);
        let c = ev.contact.unwrap();
        assert_eq!(c.first_name.as_deref(), Some("Ann Lee"));
        assert_eq!(c.phone.as_deref(), Some("+61422222222"));
    }

    #[test]
    fn inbound_media_kind_from_extension_without_a_type_field() {
        let m = inbound(
            "contact_id = \"From\"\nmessage_id = \"Id\"\ntext = \"Text\"\nmedia_url = \"Media0\"",
        );
        let ev = m
            .read(&form(
                "From=14155550100&Id=x&Media0=https%3A%2F%2Fcdn.test%2Fclip.MP4%3Fsig%3D1",
            ))
            .unwrap();
        assert!(
            matches!(ev.message, Message::Attachment { attachment } if attachment.kind == AttachmentKind::Video)
        );
        assert_eq!(ev.contact_id, "+14155550100");
    }

    #[test]
    fn inbound_compile_problems() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["in.contact_id", "in.message_id", "in.text"]),
            (
                "contact_id = \"a\"\nmessage_id = \"b\"\nmedia_type = \"t\"",
                &["in.text", "in.media_url"],
            ),
            (
                "format = \"json\"\ncontact_id = \"from\"\nmessage_id = \"/id\"\ntext = \"/t~\"",
                &["in.contact_id", "in.text"],
            ),
            (
                "contact_id = \"/from\"\nmessage_id = \"id\"\ntext = \"t\"",
                &["in.contact_id"],
            ),
        ];
        for (text, keys) in cases {
            let c: InboundConfig = toml::from_str(text).unwrap();
            let got: Vec<String> = InboundMapping::compile(&c, "in", IdType::Phone)
                .unwrap_err()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(got, *keys, "{text}");
        }
    }

    fn receipts(toml_text: &str) -> ReceiptMapping {
        let c: ReceiptConfig = toml::from_str(toml_text).unwrap();
        ReceiptMapping::compile(&c, "r").unwrap()
    }

    #[test]
    fn receipt_table() {
        use StatusValue::*;
        let m = receipts(
            r#"provider_id = "MessageUUID"
status = "Status"
error_code = "ErrorCode"
timestamp = "MessageTime"
[statuses]
queued = "ignore"
sent = "sent"
delivered = "delivered"
read = "read"
failed = "failed"
undelivered = "failed""#,
        );
        /// (form body, Ok((status, reason)) or Err(words in the error))
        type Case<'a> = (
            &'a str,
            Result<(Option<StatusValue>, Option<&'a str>), &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "MessageUUID=u1&Status=delivered&ErrorCode=",
                Ok((Some(Delivered), None)),
            ),
            ("MessageUUID=u1&Status=sent", Ok((Some(Sent), None))),
            ("MessageUUID=u1&Status=read", Ok((Some(Read), None))),
            ("MessageUUID=u1&Status=queued", Ok((None, None))),
            ("MessageUUID=u1&Status=mystery", Ok((None, None))),
            (
                "MessageUUID=u1&Status=undelivered&ErrorCode=50",
                Ok((
                    Some(Failed),
                    Some("the gateway reported undelivered, error code 50"),
                )),
            ),
            (
                "MessageUUID=u1&Status=failed",
                Ok((Some(Failed), Some("the gateway reported failed"))),
            ),
            ("Status=sent", Err("has no MessageUUID")),
            ("MessageUUID=u1", Err("has no Status")),
        ];
        for (body, want) in cases {
            let got = m.read(&form(body));
            match (want, got) {
                (Ok((status, reason)), Ok(r)) => {
                    assert_eq!(r.provider_id, "u1", "{body}");
                    assert_eq!(r.status, status, "{body}");
                    assert_eq!(r.reason.as_deref(), reason, "{body}");
                }
                (Err(w), Err(e)) => assert!(e.contains(w), "{body}: {e}"),
                (w, g) => panic!("{body}: wanted {w:?}, got {g:?}"),
            }
        }
        // The same status twice is one key; a later status (or time) is another.
        let key = |b: &str| m.read(&form(b)).unwrap().dedupe_key;
        assert_eq!(
            key("MessageUUID=u1&Status=sent"),
            key("MessageUUID=u1&Status=sent")
        );
        assert_ne!(
            key("MessageUUID=u1&Status=sent"),
            key("MessageUUID=u1&Status=delivered")
        );
        assert_ne!(
            key("MessageUUID=u1&Status=sent&MessageTime=2025-01-15+00%3A15%3A00"),
            key("MessageUUID=u1&Status=sent&MessageTime=2025-01-15+00%3A16%3A00")
        );

        let with_reason = receipts(
            "format = \"json\"\nprovider_id = \"/id\"\nstatus = \"/s\"\nerror_reason = \"/err/text\"\nerror_code = \"/err/code\"\n[statuses]\n\"301\" = \"failed\"",
        );
        let r = with_reason
            .read(&Payload::Json(
                json!({"id":"x","s":301,"err":{"text":"Unknown subscriber","code":8}}),
            ))
            .unwrap();
        assert_eq!(r.status, Some(Failed));
        assert_eq!(
            r.reason.as_deref(),
            Some("Unknown subscriber (error code 8)")
        );
    }

    #[test]
    fn receipt_compile_problems() {
        let c: ReceiptConfig = toml::from_str("[statuses]\nDELIVRD = \"deliverd\"").unwrap();
        let keys: Vec<String> = ReceiptMapping::compile(&c, "r")
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            vec!["r.provider_id", "r.status", "r.statuses.DELIVRD"]
        );
        let c: ReceiptConfig = toml::from_str("provider_id = \"id\"\nstatus = \"s\"").unwrap();
        let keys: Vec<String> = ReceiptMapping::compile(&c, "r")
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["r.statuses"]);
    }
}
