//! The respond.io Custom Channel wire format, as the gateway speaks it
//! (shared/spec/respondio-custom-channel.md §4–§5).
//!
//! Parsing is lenient where the spec is unsure (unknown fields ignored, `channelId` may be a
//! string or a number, quick-reply options may be strings or `{title}` objects); emission is
//! minimal (no `null`s, only the documented keys).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a channel identifies contacts (§3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdType {
    /// E.164 with the leading `+` (the spec's sample `+60177872890`).
    #[default]
    Phone,
    /// 1–50 characters of `A-Za-z0-9_=+/@`.
    Custom,
}

impl IdType {
    /// Checks a contactId against this id type; the error says what is wrong.
    pub fn validate(self, id: &str) -> Result<(), String> {
        match self {
            IdType::Phone => {
                let digits = id.strip_prefix('+').ok_or_else(|| {
                    format!("contactId {id:?} is not an E.164 phone number (must start with +)")
                })?;
                let ok = (7..=15).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !digits.starts_with('0');
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "contactId {id:?} is not an E.164 phone number (+ then 7-15 digits, no leading 0)"
                    ))
                }
            }
            IdType::Custom => {
                let ok = (1..=50).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_=+/@".contains(&b));
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "contactId {id:?} is not a custom id (1-50 characters of A-Z a-z 0-9 _ = + / @)"
                    ))
                }
            }
        }
    }
}

/// The largest mId respond.io accepts (§4.3).
pub const MAX_MID_LEN: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentKind {
    Image,
    Video,
    Audio,
    File,
}

impl AttachmentKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "image" => Self::Image,
            "video" => Self::Video,
            "audio" => Self::Audio,
            "file" => Self::File,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "type")]
    pub kind: AttachmentKind,
    pub url: String,
    #[serde(rename = "fileName", skip_serializing_if = "Option::is_none", default)]
    pub file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
}

/// One message, in respond.io's vocabulary. Serialises to the `message` object of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Text {
        text: String,
    },
    Attachment {
        attachment: Attachment,
    },
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        address: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        name: Option<String>,
    },
    QuickReply {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        title: Option<String>,
        replies: Vec<String>,
    },
}

impl Message {
    /// Parses respond.io's `message` object with errors a person can act on.
    pub fn from_value(v: &Value) -> Result<Message, String> {
        let obj = v.as_object().ok_or("message must be a JSON object")?;
        let ty = str_field(obj, "type").ok_or("message.type is required")?;
        match ty {
            "text" => {
                let text =
                    str_field(obj, "text").ok_or("message.text is required for type text")?;
                if text.trim().is_empty() {
                    return Err("message.text is empty".into());
                }
                Ok(Message::Text {
                    text: text.to_string(),
                })
            }
            "attachment" => {
                let a = obj
                    .get("attachment")
                    .and_then(Value::as_object)
                    .ok_or("message.attachment is required for type attachment")?;
                let kind_s = str_field(a, "type").ok_or("message.attachment.type is required")?;
                let kind = AttachmentKind::parse(kind_s).ok_or_else(|| {
                    format!(
                        "message.attachment.type {kind_s:?} is not one of image, video, audio, file"
                    )
                })?;
                let url = str_field(a, "url").ok_or("message.attachment.url is required")?;
                let parsed = url::Url::parse(url)
                    .map_err(|_| format!("message.attachment.url {url:?} is not a URL"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err("message.attachment.url must be http or https".into());
                }
                Ok(Message::Attachment {
                    attachment: Attachment {
                        kind,
                        url: url.to_string(),
                        file_name: str_field(a, "fileName").map(str::to_string),
                        description: str_field(a, "description")
                            .or_else(|| str_field(a, "caption"))
                            .map(str::to_string),
                    },
                })
            }
            "location" => {
                // Field names and nesting are unconfirmed for custom channels (spec §4.4):
                // the fields at the message's top level, or in a `location` object.
                let nested = obj.get("location").and_then(Value::as_object);
                let field = |name: &str| {
                    num_field(obj, name).or_else(|| nested.and_then(|n| num_field(n, name)))
                };
                let text = |name: &str| {
                    str_field(obj, name)
                        .or_else(|| nested.and_then(|n| str_field(n, name)))
                        .map(str::to_string)
                };
                let lat =
                    field("latitude").ok_or("message.latitude is required for type location")?;
                let lon =
                    field("longitude").ok_or("message.longitude is required for type location")?;
                if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                    return Err("message latitude/longitude out of range".into());
                }
                Ok(Message::Location {
                    latitude: lat,
                    longitude: lon,
                    address: text("address"),
                    name: text("name"),
                })
            }
            "quick_reply" => {
                // respond.io's SDK types show `replies: string[]`; accept `{title}`/`{text}`
                // objects too, since the custom-channel page that would settle it is unreadable.
                let replies = obj
                    .get("replies")
                    .and_then(Value::as_array)
                    .ok_or("message.replies is required for type quick_reply")?
                    .iter()
                    .filter_map(|r| match r {
                        Value::String(s) => Some(s.clone()),
                        Value::Object(o) => str_field(o, "title")
                            .or_else(|| str_field(o, "text"))
                            .map(str::to_string),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                let title = str_field(obj, "title")
                    .or_else(|| str_field(obj, "text"))
                    .map(str::to_string);
                if replies.is_empty() && title.is_none() {
                    return Err("quick_reply has neither title nor replies".into());
                }
                Ok(Message::QuickReply { title, replies })
            }
            other => Err(format!(
                "message type {other:?} is not supported on this channel (text, attachment, location, quick_reply)"
            )),
        }
    }

    /// A plain-text rendering for providers that carry only text: quick replies become a
    /// numbered list, locations a maps link, attachments their URL after the caption.
    pub fn to_plain_text(&self) -> String {
        match self {
            Message::Text { text } => text.clone(),
            Message::Attachment { attachment } => match &attachment.description {
                Some(d) if !d.is_empty() => format!("{d}\n{}", attachment.url),
                _ => attachment.url.clone(),
            },
            Message::Location {
                latitude,
                longitude,
                address,
                name,
            } => {
                let mut s = String::new();
                for part in [name, address].into_iter().flatten() {
                    s.push_str(part);
                    s.push('\n');
                }
                s.push_str(&format!(
                    "https://maps.google.com/?q={latitude},{longitude}"
                ));
                s
            }
            Message::QuickReply { title, replies } => {
                let mut s = title.clone().unwrap_or_default();
                for (i, r) in replies.iter().enumerate() {
                    if !s.is_empty() {
                        s.push('\n');
                    }
                    s.push_str(&format!("{}. {r}", i + 1));
                }
                s
            }
        }
    }
}

fn str_field<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

fn num_field(o: &Map<String, Value>, k: &str) -> Option<f64> {
    match o.get(k)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// respond.io's optional `contact` profile (§4.6). Empty fields are omitted, never `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub profile_pic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub country_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timezone: Option<f64>,
}

impl Contact {
    pub fn is_empty(&self) -> bool {
        *self == Contact::default()
    }
}

/// Delivery status values (§4.5), ranked so statuses only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StatusValue {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl StatusValue {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusValue::Sent => "sent",
            StatusValue::Delivered => "delivered",
            StatusValue::Read => "read",
            StatusValue::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub value: StatusValue,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Message,
    MessageEcho,
    MessageStatus,
}

/// One element of `events[]` (§4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(rename = "mId")]
    pub mid: String,
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<Message>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
}

/// The body POSTed to the channel's respond.io webhook URL (§4.2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<'a> {
    #[serde(rename = "channelId")]
    pub channel_id: &'a str,
    #[serde(rename = "contactId")]
    pub contact_id: &'a str,
    pub events: &'a [Event],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<&'a Contact>,
}

/// respond.io's call to `<API Base URL>/message` (§5.3), parsed leniently.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRequest {
    pub channel_id: Option<String>,
    pub contact_id: String,
    pub message: Message,
}

impl OutboundRequest {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or("body must be a JSON object")?;
        // channelId may be a string or a number (§3.2): keep its text either way.
        let channel_id = match obj.get("channelId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err("channelId must be a string or a number".into()),
        };
        let contact_id = obj
            .get("contactId")
            .and_then(Value::as_str)
            .ok_or("contactId is required (a string)")?
            .to_string();
        let message = Message::from_value(obj.get("message").ok_or("message is required")?)?;
        Ok(OutboundRequest {
            channel_id,
            contact_id,
            message,
        })
    }
}

/// The error body respond.io expects on 4xx: `{"error":{"message":"..."}}`.
pub fn error_body(message: &str) -> Value {
    serde_json::json!({ "error": { "message": message } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_ids() {
        assert!(IdType::Phone.validate("+60177872890").is_ok());
        for bad in [
            "60177872890",
            "+0123456789",
            "+12",
            "+1234567890123456",
            "+6017787289a",
            "",
        ] {
            assert!(IdType::Phone.validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn custom_ids() {
        assert!(IdType::Custom.validate("abc_=+/@XYZ09").is_ok());
        assert!(IdType::Custom.validate(&"a".repeat(50)).is_ok());
        for bad in ["", "has space", "dash-id", "ünï", &"a".repeat(51)] {
            assert!(IdType::Custom.validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_outbound_variants() {
        let r = OutboundRequest::parse(
            br#"{"channelId":123,"contactId":"+60123456789","message":{"type":"text","text":"hi"},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.channel_id.as_deref(), Some("123"));
        assert_eq!(r.message, Message::Text { text: "hi".into() });

        let q = Message::from_value(
            &serde_json::json!({"type":"quick_reply","title":"Pick","replies":["A",{"title":"B"}]}),
        )
        .unwrap();
        assert_eq!(q.to_plain_text(), "Pick\n1. A\n2. B");

        let e = Message::from_value(&serde_json::json!({"type":"custom_payload","payload":{}}))
            .unwrap_err();
        assert!(e.contains("custom_payload"));
        assert!(OutboundRequest::parse(b"{").is_err());
        assert!(
            OutboundRequest::parse(br#"{"contactId":"x"}"#)
                .unwrap_err()
                .contains("message")
        );
    }

    #[test]
    fn envelope_has_no_nulls() {
        let ev = Event {
            kind: EventType::MessageStatus,
            mid: "m1".into(),
            timestamp: 1,
            message: None,
            status: Some(Status {
                value: StatusValue::Delivered,
                message: None,
            }),
        };
        let env = Envelope {
            channel_id: "CH1",
            contact_id: "+601",
            events: &[ev],
            contact: None,
        };
        let s = serde_json::to_string(&env).unwrap();
        assert_eq!(
            s,
            r#"{"channelId":"CH1","contactId":"+601","events":[{"type":"message_status","mId":"m1","timestamp":1,"status":{"value":"delivered"}}]}"#
        );
    }
}
