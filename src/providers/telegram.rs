//! Telegram Bot API, shared/spec/providers.md §3.
//!
//! - Send: `POST {api_base}/bot<token>/<method>` (JSON). Text → `sendMessage`; attachments
//!   by URL → `sendPhoto` / `sendVideo` / `sendAudio` / `sendDocument` with the caption;
//!   locations → `sendLocation` (or `sendVenue` when the location has a name or address);
//!   quick replies → `sendMessage` with a one-time reply keyboard, whose buttons come back
//!   as the contact's text message.
//! - Inbound: one JSON `Update` per POST. `message` and `edited_message` are the contact's;
//!   `channel_post` / `edited_channel_post` (the bot is admin of a Telegram channel) were
//!   written by the channel's admins, i.e. the business outside respond.io: echoes. Other
//!   updates (`my_chat_member`, `callback_query`, ...) are answered 200 and logged.
//! - Receipts: none exist (§3.5). A send Telegram accepted is `sent`; nothing follows.
//! - Authenticity: the static `X-Telegram-Bot-Api-Secret-Token` given to `setWebhook`.
//! - Contacts: chat ids. Groups, supergroups and channels have negative ids, and `-` is not
//!   in respond.io's custom-id alphabet, so a negative id travels as `g<digits>` (see
//!   [`contact_id_for_chat`]).
//! - Media in: Telegram's file URLs carry the bot token, so inbound attachments are proxied:
//!   the event carries a [`MediaRef`] with the `file_id`, and [`Provider::resolve_media`]
//!   asks `getFile` for the download URL when the media is fetched.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Accepted, InboundEvent, InboundKind, MediaFetch, MediaRef, Provider, Receipt, SendError,
    SendRequest, WebhookRequest, classify_transport_error, clicksend::api_base_problem,
    parse_retry_after,
};
use crate::clock::now_ms;
use crate::respondio::wire::{Attachment, AttachmentKind, Contact, Message};
use crate::secret::Secret;

/// The header Telegram sends the `secret_token` of `setWebhook` in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// Telegram answers with a small JSON envelope; anything bigger is not Telegram.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// `setWebhook`'s `secret_token`: 1-256 characters of `A-Z a-z 0-9 _ -` (§3.6).
const SECRET_TOKEN_MAX: usize = 256;
/// What a quick reply without a title says above its buttons (Telegram refuses empty text).
const QUICK_REPLY_PROMPT: &str = "Please choose:";

fn default_api_base() -> String {
    "https://api.telegram.org".to_string()
}

/// Telegram's bulk guidance is ~30 messages/s per bot (§3.8); stay a little under it.
fn default_rate_limit() -> u32 {
    25
}

/// `[channel.telegram]` in the config file.
#[derive(Debug, Clone, Deserialize)]
pub struct TelegramConfig {
    /// The bot token from @BotFather (`123456:ABC-...`). It is part of every API URL.
    pub bot_token: Secret,
    /// The `secret_token` given to `setWebhook`; Telegram sends it back on every update.
    pub secret_token: Secret,
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Sends per second toward Telegram.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
}

impl TelegramConfig {
    /// Everything wrong with this config, as `(config key, problem)` pairs.
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: &str, problem: String| out.push((format!("{prefix}.{key}"), problem));
        let token = self.bot_token.expose();
        if token.is_empty() {
            add(
                "bot_token",
                "is empty (the token @BotFather gave the bot)".into(),
            );
        } else if !bot_token_shaped(token) {
            // The value itself is never echoed: it is a credential.
            add(
                "bot_token",
                "does not look like a bot token (<bot id>:<secret>, e.g. 123456:ABC-DEF...)".into(),
            );
        }
        let secret = self.secret_token.expose();
        if secret.is_empty() {
            add(
                "secret_token",
                "is required: Telegram's updates are authenticated only by this value (pass it to setWebhook)"
                    .into(),
            );
        } else if secret.len() > SECRET_TOKEN_MAX
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            add(
                "secret_token",
                "must be 1-256 characters of A-Z a-z 0-9 _ - (what setWebhook accepts)".into(),
            );
        }
        if let Some(p) = api_base_problem(&self.api_base) {
            add("api_base", p);
        }
        if self.rate_limit == 0 {
            add("rate_limit", "must be at least 1 send per second".into());
        }
        out
    }
}

fn bot_token_shaped(t: &str) -> bool {
    let Some((id, rest)) = t.split_once(':') else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

// ---- the provider ----

/// The Telegram provider of one channel.
#[derive(Debug)]
pub struct Telegram {
    cfg: TelegramConfig,
    client: reqwest::Client,
    /// `{public_url}/channels/{name}/media`: the stand-in URL of proxied attachments until
    /// the gateway replaces it with its signed media URL (never a URL with the token).
    media_base: String,
}

impl Telegram {
    /// `client` should not follow redirects (see `app::http_client`): a redirected POST
    /// would lose the message, and any 3xx is reported as a channel fault.
    pub fn new(cfg: TelegramConfig, client: reqwest::Client, media_base: String) -> Self {
        Telegram {
            cfg,
            client,
            media_base: media_base.trim_end_matches('/').to_string(),
        }
    }

    /// `{api_base}/bot<token>/<method>`. The result carries the token: never log it.
    fn method_url(&self, method: &str) -> String {
        format!(
            "{}/bot{}/{method}",
            self.cfg.api_base.trim_end_matches('/'),
            self.cfg.bot_token.expose()
        )
    }

    /// Calls one Bot API method; the answer's status and (capped) body. Transport errors
    /// are stripped of their URL, which would otherwise print the token.
    async fn call(
        &self,
        method: &str,
        body: &Value,
    ) -> Result<(u16, Option<Duration>, Result<Vec<u8>, String>), SendError> {
        let resp = self
            .client
            .post(self.method_url(method))
            .json(body)
            .send()
            .await
            .map_err(|e| classify_transport_error(&e.without_url()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Ok((status, retry_after, read_capped(resp).await))
    }
}

/// Picks the Bot API method for a message and builds its JSON body.
fn build_send(chat_id: i64, message: &Message) -> Result<(&'static str, Value), SendError> {
    Ok(match message {
        Message::Text { text } => ("sendMessage", json!({"chat_id": chat_id, "text": text})),
        Message::Attachment { attachment: a } => {
            let (method, field) = match a.kind {
                AttachmentKind::Image => ("sendPhoto", "photo"),
                AttachmentKind::Video => ("sendVideo", "video"),
                AttachmentKind::Audio => ("sendAudio", "audio"),
                AttachmentKind::File => ("sendDocument", "document"),
            };
            let mut body = json!({"chat_id": chat_id, field: a.url});
            if let Some(caption) = a.description.as_deref().filter(|d| !d.trim().is_empty()) {
                body["caption"] = json!(caption);
            }
            (method, body)
        }
        Message::Location {
            latitude,
            longitude,
            address,
            name,
        } => {
            let name = name.as_deref().filter(|s| !s.trim().is_empty());
            let address = address.as_deref().filter(|s| !s.trim().is_empty());
            if name.is_none() && address.is_none() {
                (
                    "sendLocation",
                    json!({"chat_id": chat_id, "latitude": latitude, "longitude": longitude}),
                )
            } else {
                // A venue needs both a title and an address; the coordinates stand in for
                // the one missing.
                let coords = format!("{latitude}, {longitude}");
                (
                    "sendVenue",
                    json!({
                        "chat_id": chat_id,
                        "latitude": latitude,
                        "longitude": longitude,
                        "title": name.or(address).unwrap_or(&coords),
                        "address": address.unwrap_or(&coords),
                    }),
                )
            }
        }
        Message::QuickReply { title, replies } => {
            let text = title
                .as_deref()
                .filter(|t| !t.trim().is_empty())
                .unwrap_or(QUICK_REPLY_PROMPT);
            let buttons: Vec<Value> = replies
                .iter()
                .filter(|r| !r.trim().is_empty())
                .map(|r| json!([{ "text": r }]))
                .collect();
            let mut body = json!({"chat_id": chat_id, "text": text});
            if !buttons.is_empty() {
                // A reply keyboard: a pressed button comes back as the contact's text, which
                // is exactly what respond.io expects of a quick reply. One-time: it folds
                // away after use.
                body["reply_markup"] = json!({
                    "keyboard": buttons,
                    "one_time_keyboard": true,
                    "resize_keyboard": true,
                });
            }
            ("sendMessage", body)
        }
    })
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of an answer.
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading Telegram's answer failed: {}", e.without_url()))?
    {
        let room = MAX_RESPONSE_BYTES - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(buf)
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
fn classify(
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

#[async_trait]
impl Provider for Telegram {
    fn kind(&self) -> &'static str {
        "telegram"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        let presented = req
            .headers
            .get(SECRET_HEADER)
            .ok_or("no X-Telegram-Bot-Api-Secret-Token header")?
            .to_str()
            .map_err(|_| "X-Telegram-Bot-Api-Secret-Token is not text")?;
        if self.cfg.secret_token.matches(presented) {
            Ok(())
        } else {
            Err("X-Telegram-Bot-Api-Secret-Token does not match".into())
        }
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        let update: Value = serde_json::from_slice(req.body)
            .map_err(|e| format!("update is not valid JSON: {e}"))?;
        parse_update(&update, &self.media_base)
    }

    /// Telegram has no receipts; nothing should call our status URL. Anything that does
    /// is kept raw for a person to look at.
    fn parse_receipts(&self, _req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        Err("Telegram sends no delivery receipts; nothing should post to /status".into())
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let chat_id = chat_id_for_contact(req.contact_id).map_err(SendError::Permanent)?;
        let (method, body) = build_send(chat_id, req.message)?;
        let (status, retry_after, answer) = self.call(method, &body).await?;
        let result = classify(status, retry_after, answer, chat_id);
        tracing::debug!(
            provider = "telegram",
            mid = req.mid,
            method,
            http_status = status,
            ok = result.is_ok(),
            "send answered"
        );
        result
    }

    /// `getFile` → `{api_base}/file/bot<token>/<file_path>`. The URL carries the bot token:
    /// whoever fetches it must not log it (the link stays valid for at least an hour).
    async fn resolve_media(&self, source: &str) -> Result<MediaFetch, String> {
        let (status, _, body) = self
            .call("getFile", &json!({ "file_id": source }))
            .await
            .map_err(|e| e.reason().to_string())?;
        let body = body?;
        let env: Envelope = serde_json::from_slice(&body)
            .map_err(|_| format!("getFile answered HTTP {status} with a body that is not JSON"))?;
        if !env.ok {
            return Err(format!(
                "getFile failed: {} (HTTP {status})",
                env.description.unwrap_or_default()
            ));
        }
        let path = env
            .result
            .as_ref()
            .and_then(|r| r.get("file_path"))
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty() && !p.contains(".."))
            .ok_or("getFile answered without a usable file_path")?;
        Ok(MediaFetch {
            url: format!(
                "{}/file/bot{}/{path}",
                self.cfg.api_base.trim_end_matches('/'),
                self.cfg.bot_token.expose()
            ),
            headers: Vec::new(),
        })
    }
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

fn parse_update(update: &Value, media_base: &str) -> Result<Vec<InboundEvent>, String> {
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
        .filter(|s| *s > 0)
        .map(|s| s * 1000)
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
