//! Telegram Bot API, shared/spec/providers.md §3: the half that reads outside input.
//!
//! - Authenticity: the static `X-Telegram-Bot-Api-Secret-Token` given to `setWebhook`
//!   ([`authenticate`]).
//! - Inbound: one JSON `Update` per POST ([`parse_inbound`]). `message` / `edited_message`
//!   are the contact's; `channel_post` / `edited_channel_post` are echoes; other updates
//!   read as nothing to deliver. Receipts do not exist (§3.5): [`parse_receipts`] refuses.
//! - Contacts: chat ids; a negative id travels as `g<digits>` ([`contact_id_for_chat`]).
//! - [`classify`] types a send's answer; [`file_path`] reads `getFile`'s.
//!
//! The provider itself (config, sending over HTTP) is `rio_bridge::providers::telegram`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::clock::{now_ms, plausible_ms};
use crate::provider::{
    Accepted, InboundEvent, InboundKind, MediaRef, Receipt, SendError, WebhookRequest,
};
use crate::secret::Secret;
use crate::wire::{Attachment, AttachmentKind, Contact, Message};

/// The header carrying the secret token given to `setWebhook`.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Checks `X-Telegram-Bot-Api-Secret-Token` against the channel's secret token.
pub fn authenticate(secret_token: &Secret, req: &WebhookRequest<'_>) -> Result<(), String> {
    let presented = req
        .headers
        .get(SECRET_HEADER)
        .ok_or("no X-Telegram-Bot-Api-Secret-Token header")?
        .to_str()
        .map_err(|_| "X-Telegram-Bot-Api-Secret-Token is not text")?;
    if secret_token.matches(presented) {
        Ok(())
    } else {
        Err("X-Telegram-Bot-Api-Secret-Token does not match".into())
    }
}

/// Reads one `Update`. Proxied attachments get `{media_base}/...` stand-in URLs.
pub fn parse_inbound(
    req: &WebhookRequest<'_>,
    media_base: &str,
) -> Result<Vec<InboundEvent>, String> {
    let update: Value =
        serde_json::from_slice(req.body).map_err(|e| format!("update is not valid JSON: {e}"))?;
    parse_update(&update, media_base)
}

/// Telegram has no receipts; nothing should call our status URL. Anything that does is
/// kept raw for a person to look at.
pub fn parse_receipts(_req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
    Err("Telegram sends no delivery receipts; nothing should post to /status".into())
}

/// The `file_path` of a `getFile` answer (never one that climbs out with `..`).
pub fn file_path(status: u16, body: &[u8]) -> Result<String, String> {
    let env: Envelope = serde_json::from_slice(body)
        .map_err(|_| format!("getFile answered HTTP {status} with a body that is not JSON"))?;
    if !env.ok {
        return Err(format!(
            "getFile failed: {} (HTTP {status})",
            env.description.unwrap_or_default()
        ));
    }
    env.result
        .as_ref()
        .and_then(|r| r.get("file_path"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty() && !p.contains(".."))
        .map(str::to_string)
        .ok_or_else(|| "getFile answered without a usable file_path".to_string())
}

// ---- contact ids ----

/// The respond.io contact id of a Telegram chat. Private chats (positive ids) keep their
/// digits; groups, supergroups and channels (negative ids, e.g. `-1001234567890`) become
/// `g` + the digits (`g1001234567890`), because `-` is not in the custom-id alphabet
/// `A-Za-z0-9_=+/@`. Every chat id has exactly one contact id and back.
pub fn contact_id_for_chat(chat_id: i64) -> String {
    if chat_id < 0 {
        format!("g{}", chat_id.unsigned_abs())
    } else {
        chat_id.to_string()
    }
}

/// The inverse of [`contact_id_for_chat`]. Only the canonical form is accepted (no sign,
/// no leading zeros, no chat 0), so two contact ids never name the same chat.
pub fn chat_id_for_contact(contact_id: &str) -> Result<i64, String> {
    let junk = || {
        format!(
            "contactId {contact_id:?} is not a Telegram chat (digits for a private chat, g + digits for a group or channel)"
        )
    };
    let (negative, digits) = match contact_id.strip_prefix('g') {
        Some(d) => (true, d),
        None => (false, contact_id),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return Err(junk());
    }
    let magnitude: u64 = digits.parse().map_err(|_| junk())?;
    if negative {
        // i64::MIN's magnitude is one more than i64::MAX.
        0i64.checked_sub_unsigned(magnitude).ok_or_else(junk)
    } else {
        i64::try_from(magnitude).map_err(|_| junk())
    }
}

/// Telegram's answer envelope: `{"ok":true,"result":...}` or
/// `{"ok":false,"error_code":N,"description":"...","parameters":{...}}` (§3.2).
#[derive(Debug, Default, Deserialize)]
struct Envelope {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<ResponseParameters>,
}

#[derive(Debug, Default, Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

/// Turns Telegram's answer to a send into our outcome (§3.7). The provider id is
/// `chat_id:message_id`: a message_id is unique only within its chat.
pub fn classify(
    status: u16,
    retry_after_header: Option<Duration>,
    body: Result<Vec<u8>, String>,
    chat_id: i64,
) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        let body = body.map_err(|e| SendError::Ambiguous(format!("HTTP {status} but {e}")))?;
        let env: Envelope = serde_json::from_slice(&body).map_err(|_| {
            SendError::Ambiguous("Telegram answered 2xx with a body that is not JSON".into())
        })?;
        let result = env.result.filter(|_| env.ok).ok_or_else(|| {
            SendError::Ambiguous("Telegram answered 2xx without ok:true and a result".into())
        })?;
        let message_id = result.get("message_id").and_then(Value::as_i64);
        let chat = result
            .pointer("/chat/id")
            .and_then(Value::as_i64)
            .unwrap_or(chat_id);
        return match message_id {
            Some(id) => Ok(Accepted {
                provider_id: format!("{chat}:{id}"),
            }),
            None => Err(SendError::Ambiguous(
                "Telegram answered ok:true without result.message_id".into(),
            )),
        };
    }
    let env: Envelope = body
        .as_deref()
        .ok()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let params = env.parameters.unwrap_or_default();
    let description = env
        .description
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| format!("HTTP {status}"));
    let reason = |what: &str| format!("{what}: {description} (HTTP {status})");
    Err(match status {
        300..=399 => SendError::ChannelFault(reason(
            "Telegram answered with a redirect, which is not followed; check api_base",
        )),
        429 => SendError::Throttled {
            retry_after: params
                .retry_after
                .map(Duration::from_secs)
                .or(retry_after_header),
            reason: reason("Telegram throttled the bot"),
        },
        // 401: the token was revoked or is wrong. 404: Telegram's answer to a malformed
        // token in the path. 409: another consumer (getUpdates) holds the bot. All are the
        // channel's problem, not this message's.
        401 | 404 | 409 => SendError::ChannelFault(reason("Telegram rejected the bot")),
        400 if params.migrate_to_chat_id.is_some() => {
            let new_id = params.migrate_to_chat_id.unwrap_or_default();
            SendError::Permanent(format!(
                "the group became a supergroup; its new contactId is {} ({description})",
                contact_id_for_chat(new_id)
            ))
        }
        // 403 "Forbidden: bot was blocked by the user", "user is deactivated", "bot was
        // kicked from the group chat"; 400 "chat not found", "message is too long", "wrong
        // file identifier/HTTP URL specified", "failed to get HTTP URL content". Telegram's
        // description is the reason respond.io shows.
        400..=499 => SendError::Permanent(reason("Telegram refused the message")),
        _ => SendError::Ambiguous(reason("Telegram server error")),
    })
}

// ---- reading updates ----

/// The update kinds that carry a message, and whether it is the contact's or an echo.
const MESSAGE_UPDATES: &[(&str, InboundKind, bool)] = &[
    ("message", InboundKind::Message, false),
    ("edited_message", InboundKind::Message, true),
    ("channel_post", InboundKind::Echo, false),
    ("edited_channel_post", InboundKind::Echo, true),
];

/// Message content Telegram has that respond.io cannot show: the agent sees a note.
const UNSUPPORTED_CONTENT: &[&str] = &[
    "poll",
    "dice",
    "game",
    "story",
    "invoice",
    "giveaway",
    "paid_media",
    "checklist",
];

pub fn parse_update(update: &Value, media_base: &str) -> Result<Vec<InboundEvent>, String> {
    let obj = update.as_object().ok_or("update is not a JSON object")?;
    let update_id = obj
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or("update has no update_id")?;
    let Some((key, msg, kind, edited)) = MESSAGE_UPDATES
        .iter()
        .find_map(|(k, kind, edited)| obj.get(*k).map(|m| (*k, m, *kind, *edited)))
    else {
        let what = obj
            .keys()
            .find(|k| *k != "update_id")
            .map(String::as_str)
            .unwrap_or("empty");
        tracing::info!(
            provider = "telegram",
            update_id,
            update = what,
            "update carries no message; answered 200 and not forwarded"
        );
        return Ok(Vec::new());
    };
    let msg = msg
        .as_object()
        .ok_or_else(|| format!("update {update_id}: {key} is not an object"))?;
    let chat = msg
        .get("chat")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("update {update_id}: {key} has no chat"))?;
    let chat_id = chat
        .get("id")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("update {update_id}: {key}.chat has no id"))?;
    let message_id = msg
        .get("message_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("update {update_id}: {key} has no message_id"))?;
    let contact_id = contact_id_for_chat(chat_id);

    let (message, media) = match content(msg, media_base) {
        Content::Message(m, media) => (m, media),
        Content::Note(what) => (
            Message::Text {
                text: format!("[Telegram {what}: not supported on this channel]"),
            },
            None,
        ),
        Content::Nothing(what) => {
            tracing::info!(
                provider = "telegram",
                update_id,
                contact = %contact_id,
                content = what,
                "service message; answered 200 and not forwarded"
            );
            return Ok(Vec::new());
        }
    };
    // A live location is a stream of edited_message updates with the new position: not
    // messages a person wrote.
    if edited && matches!(message, Message::Location { .. }) {
        tracing::debug!(provider = "telegram", update_id, contact = %contact_id, "live location update not forwarded");
        return Ok(Vec::new());
    }
    let group = matches!(
        chat.get("type").and_then(Value::as_str),
        Some("group" | "supergroup")
    );
    let sender = group
        .then(|| msg.get("from").and_then(display_name))
        .flatten();
    let mut prefix = String::new();
    if edited {
        prefix.push_str("(edited) ");
    }
    if let Some(s) = sender {
        prefix.push_str(&s);
        prefix.push_str(": ");
    }
    let message = with_prefix(message, &prefix);

    let date_key = if edited { "edit_date" } else { "date" };
    let timestamp_ms = msg
        .get(date_key)
        .or_else(|| msg.get("date"))
        .and_then(Value::as_i64)
        .and_then(|s| s.checked_mul(1000))
        // Before 1970 or past year 9999 is no real time (and a huge `date` would overflow).
        .filter(|&ms| plausible_ms(ms))
        .unwrap_or_else(now_ms);
    let contact = profile(chat, msg.get("from"), group || kind == InboundKind::Echo);
    Ok(vec![InboundEvent {
        // update_id is what identifies a delivery; chat and message ids guard against the
        // random restart of update_ids after a week of silence (Bot API getUpdates notes).
        dedupe_key: format!("{update_id}:{chat_id}:{message_id}"),
        contact_id,
        kind,
        provider_id: format!("{chat_id}:{message_id}"),
        timestamp_ms,
        message,
        contact,
        media,
    }])
}

enum Content {
    Message(Message, Option<MediaRef>),
    /// Content respond.io cannot show; the agent gets a note naming it.
    Note(&'static str),
    /// A service message (member joined, title changed, pinned ...): not forwarded.
    Nothing(&'static str),
}

fn content(msg: &Map<String, Value>, media_base: &str) -> Content {
    let caption = str_of(msg, "caption");
    if let Some(text) = str_of(msg, "text").filter(|t| !t.is_empty()) {
        return Content::Message(
            Message::Text {
                text: text.to_string(),
            },
            None,
        );
    }
    if let Some(photo) = msg.get("photo").and_then(Value::as_array) {
        // Several sizes of one picture: the largest is what a person wants to see.
        let largest = photo.iter().filter_map(Value::as_object).max_by_key(|p| {
            let area = p.get("width").and_then(Value::as_i64).unwrap_or(0)
                * p.get("height").and_then(Value::as_i64).unwrap_or(0);
            (
                p.get("file_size").and_then(Value::as_i64).unwrap_or(0),
                area,
            )
        });
        if let Some(c) = largest.and_then(|p| media(p, AttachmentKind::Image, caption, media_base))
        {
            return c;
        }
    }
    // `animation` messages also carry `document`: look at the specific kinds first.
    let kinds: [(&str, AttachmentKind); 6] = [
        ("animation", AttachmentKind::Video),
        ("video", AttachmentKind::Video),
        ("video_note", AttachmentKind::Video),
        ("voice", AttachmentKind::Audio),
        ("audio", AttachmentKind::Audio),
        ("document", AttachmentKind::File),
    ];
    for (key, kind) in kinds {
        if let Some(c) = msg
            .get(key)
            .and_then(Value::as_object)
            .and_then(|f| media(f, kind, caption, media_base))
        {
            return c;
        }
    }
    if let Some(s) = msg.get("sticker").and_then(Value::as_object) {
        let flag = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
        // Animated stickers are Lottie (.tgs) files, video stickers WebM; static ones WebP.
        let kind = if flag("is_video") {
            AttachmentKind::Video
        } else if flag("is_animated") {
            AttachmentKind::File
        } else {
            AttachmentKind::Image
        };
        let emoji = str_of(s, "emoji");
        if let Some(c) = media(s, kind, emoji, media_base) {
            return c;
        }
    }
    if let Some(v) = msg.get("venue").and_then(Value::as_object)
        && let Some((lat, lon)) = v.get("location").and_then(coordinates)
    {
        return Content::Message(
            Message::Location {
                latitude: lat,
                longitude: lon,
                address: str_of(v, "address").map(str::to_string),
                name: str_of(v, "title").map(str::to_string),
            },
            None,
        );
    }
    if let Some((lat, lon)) = msg.get("location").and_then(coordinates) {
        return Content::Message(
            Message::Location {
                latitude: lat,
                longitude: lon,
                address: None,
                name: None,
            },
            None,
        );
    }
    if let Some(c) = msg.get("contact").and_then(Value::as_object) {
        let name = [str_of(c, "first_name"), str_of(c, "last_name")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let phone = str_of(c, "phone_number").unwrap_or("");
        let text = format!("Shared contact: {name} {phone}").trim().to_string();
        return Content::Message(Message::Text { text }, None);
    }
    if let Some(what) = UNSUPPORTED_CONTENT.iter().find(|k| msg.contains_key(**k)) {
        return Content::Note(what);
    }
    if let Some(c) = caption {
        return Content::Message(
            Message::Text {
                text: c.to_string(),
            },
            None,
        );
    }
    Content::Nothing(service_kind(msg))
}

/// Names a service message for the log (Telegram has dozens; these are the usual ones).
fn service_kind(msg: &Map<String, Value>) -> &'static str {
    const SERVICE: &[&str] = &[
        "new_chat_members",
        "left_chat_member",
        "new_chat_title",
        "new_chat_photo",
        "delete_chat_photo",
        "group_chat_created",
        "supergroup_chat_created",
        "channel_chat_created",
        "migrate_to_chat_id",
        "migrate_from_chat_id",
        "pinned_message",
        "message_auto_delete_timer_changed",
        "forum_topic_created",
        "video_chat_started",
        "video_chat_ended",
    ];
    SERVICE
        .iter()
        .find(|k| msg.contains_key(**k))
        .copied()
        .unwrap_or("unknown content")
}

/// An attachment to proxy: the `file_id` is what `getFile` needs later; the URL in the
/// event is a placeholder under our public URL, never Telegram's (it would carry the token).
fn media(
    file: &Map<String, Value>,
    kind: AttachmentKind,
    caption: Option<&str>,
    media_base: &str,
) -> Option<Content> {
    let file_id = str_of(file, "file_id").filter(|s| !s.is_empty())?;
    let unique = str_of(file, "file_unique_id")
        .filter(|s| !s.is_empty())
        .unwrap_or(file_id);
    let safe: String = unique
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    Some(Content::Message(
        Message::Attachment {
            attachment: Attachment {
                kind,
                url: format!("{media_base}/{safe}"),
                file_name: str_of(file, "file_name").map(str::to_string),
                description: caption.filter(|c| !c.is_empty()).map(str::to_string),
            },
        },
        Some(MediaRef {
            source: file_id.to_string(),
            content_type: str_of(file, "mime_type").map(str::to_string),
        }),
    ))
}

fn coordinates(v: &Value) -> Option<(f64, f64)> {
    let lat = v.get("latitude")?.as_f64()?;
    let lon = v.get("longitude")?.as_f64()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

fn str_of<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

/// "First Last" of a Telegram user, else "@username".
fn display_name(user: &Value) -> Option<String> {
    let u = user.as_object()?;
    let name = [str_of(u, "first_name"), str_of(u, "last_name")]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !name.is_empty() {
        return Some(name);
    }
    str_of(u, "username").map(|n| format!("@{n}"))
}

/// Prefixes the text (or the caption) of a message; other kinds are left as they are.
fn with_prefix(message: Message, prefix: &str) -> Message {
    if prefix.is_empty() {
        return message;
    }
    match message {
        Message::Text { text } => Message::Text {
            text: format!("{prefix}{text}"),
        },
        Message::Attachment { mut attachment } => {
            let d = attachment.description.take().unwrap_or_default();
            attachment.description = Some(format!("{prefix}{d}").trim_end().to_string());
            Message::Attachment { attachment }
        }
        other => other,
    }
}

/// The respond.io contact profile: the person for a private chat (first and last name,
/// language; the @username stands in for a missing last name, as respond.io's contact has
/// no username field), the chat's title for a group or channel.
fn profile(chat: &Map<String, Value>, from: Option<&Value>, shared_chat: bool) -> Option<Contact> {
    let mut c = Contact::default();
    if shared_chat {
        c.first_name = str_of(chat, "title").map(str::to_string);
    } else {
        let user = from.and_then(Value::as_object).unwrap_or(chat);
        c.first_name = str_of(user, "first_name").map(str::to_string);
        c.last_name = str_of(user, "last_name")
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .or_else(|| str_of(user, "username").map(|u| format!("@{u}")));
        // IETF tag (`en`, `pt-br`): respond.io takes the ISO 639-1 part.
        c.language = str_of(user, "language_code")
            .and_then(|l| l.split(['-', '_']).next())
            .filter(|l| l.len() == 2)
            .map(str::to_ascii_lowercase);
    }
    (!c.is_empty()).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `date` that is no real time (zero, negative, past year 9999, or so large that
    /// seconds → ms overflows) reads as "now", like an absent one.
    #[test]
    fn implausible_dates_read_as_now() {
        for date in [0, -5, 300_000_000_000, i64::MAX / 10] {
            let update = serde_json::json!({
                "update_id": 1,
                "message": {"message_id": 2, "chat": {"id": 5, "type": "private"},
                            "date": date, "text": "hi"}
            });
            let before = now_ms();
            let events = parse_update(&update, "https://gw.test/media").unwrap();
            let after = now_ms();
            assert_eq!(events.len(), 1, "{date}");
            assert!(
                (before..=after).contains(&events[0].timestamp_ms),
                "{date} read as {}",
                events[0].timestamp_ms
            );
        }
        let update = serde_json::json!({
            "update_id": 1,
            "message": {"message_id": 2, "chat": {"id": 5, "type": "private"},
                        "date": 1_736_935_260, "text": "hi"}
        });
        let events = parse_update(&update, "https://gw.test/media").unwrap();
        assert_eq!(events[0].timestamp_ms, 1_736_935_260_000);
    }
}
