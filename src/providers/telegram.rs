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
use serde_json::{Value, json};

use super::{
    Accepted, InboundEvent, MediaFetch, Provider, Receipt, SendError, SendRequest, WebhookRequest,
    classify_transport_error, clicksend::api_base_problem, parse_retry_after,
};
use crate::respondio::wire::{AttachmentKind, Message};
use crate::secret::Secret;

// The secret-token check, update reading and answer classification are pure code in the
// parser crate (fuzzed there); re-exported for the stand-in and the tests.
use rio_parse::telegram as webhook;
#[cfg(test)]
use rio_parse::telegram::classify;
pub use rio_parse::telegram::{SECRET_HEADER, chat_id_for_contact, contact_id_for_chat};

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
        let request = self.client.post(self.method_url(method)).json(body);
        // `channel_log::send` records the exchange (credentials redacted) for the message.
        let resp = crate::channel_log::send(request, "provider")
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

#[async_trait]
impl Provider for Telegram {
    fn kind(&self) -> &'static str {
        "telegram"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        webhook::authenticate(&self.cfg.secret_token, req)
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        webhook::parse_inbound(req, &self.media_base)
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        webhook::parse_receipts(req)
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let chat_id = chat_id_for_contact(req.contact_id).map_err(SendError::Permanent)?;
        let (method, body) = build_send(chat_id, req.message)?;
        let (status, retry_after, answer) = self.call(method, &body).await?;
        let result = webhook::classify(status, retry_after, answer, chat_id);
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
        let path = webhook::file_path(status, &body?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::InboundKind;
    use crate::respondio::wire::Attachment;
    use crate::simulators::telegram::{TelegramFault, TelegramSim, TelegramSimConfig};
    use axum::http::{HeaderMap, HeaderValue};

    const TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";
    const SECRET: &str = "tg-hook-secret_0123456789abcdefXYZ";
    const MEDIA: &str = "https://gw.test/channels/tg/media";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/telegram/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    fn config(api_base: &str) -> TelegramConfig {
        TelegramConfig {
            bot_token: Secret::new(TOKEN),
            secret_token: Secret::new(SECRET),
            api_base: api_base.into(),
            rate_limit: 25,
        }
    }

    fn provider(api_base: &str) -> Telegram {
        Telegram::new(config(api_base), reqwest::Client::new(), MEDIA.into())
    }

    fn with_req<T>(headers: &HeaderMap, body: &str, f: impl FnOnce(&WebhookRequest<'_>) -> T) -> T {
        let req = WebhookRequest {
            query: "",
            headers,
            body: body.as_bytes(),
            public_url: "https://gw.test/channels/tg/inbound",
        };
        f(&req)
    }

    fn parse(name: &str) -> Result<Vec<InboundEvent>, String> {
        let p = provider("http://x");
        with_req(&HeaderMap::new(), &fixture(name), |r| p.parse_inbound(r))
    }

    #[test]
    fn config_defaults_and_problems() {
        let cfg: TelegramConfig =
            serde_json::from_value(json!({"bot_token": TOKEN, "secret_token": SECRET})).unwrap();
        assert_eq!(cfg.api_base, "https://api.telegram.org");
        assert_eq!(cfg.rate_limit, 25);
        assert!(cfg.problems("channel[0].telegram").is_empty());
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("ABC-DEF") && !dbg.contains(SECRET), "{dbg}");

        let cases: &[(&str, Value)] = &[
            (
                "bot_token",
                json!({"bot_token": "", "secret_token": SECRET}),
            ),
            (
                "bot_token",
                json!({"bot_token": "not-a-token", "secret_token": SECRET}),
            ),
            (
                "bot_token",
                json!({"bot_token": "12:ab cd", "secret_token": SECRET}),
            ),
            (
                "secret_token",
                json!({"bot_token": TOKEN, "secret_token": ""}),
            ),
            (
                "secret_token",
                json!({"bot_token": TOKEN, "secret_token": "has space"}),
            ),
            (
                "secret_token",
                json!({"bot_token": TOKEN, "secret_token": "x".repeat(257)}),
            ),
            (
                "api_base",
                json!({"bot_token": TOKEN, "secret_token": SECRET, "api_base": "ftp://x"}),
            ),
            (
                "rate_limit",
                json!({"bot_token": TOKEN, "secret_token": SECRET, "rate_limit": 0}),
            ),
        ];
        for (key, v) in cases {
            let cfg: TelegramConfig = serde_json::from_value(v.clone()).unwrap();
            let p = cfg.problems("channel[0].telegram");
            assert_eq!(p.len(), 1, "{v}: {p:?}");
            assert_eq!(p[0].0, format!("channel[0].telegram.{key}"), "{v}");
            assert!(
                !p[0].1.contains("not-a-token"),
                "a token is never echoed: {}",
                p[0].1
            );
        }
    }

    #[test]
    fn chat_ids_map_to_custom_ids_and_back() {
        let cases: &[(i64, &str)] = &[
            (3527065, "3527065"),
            (1, "1"),
            (-4567890, "g4567890"),
            (-1001234567890, "g1001234567890"),
            (i64::MAX, "9223372036854775807"),
            (i64::MIN, "g9223372036854775808"),
        ];
        for (chat, contact) in cases {
            assert_eq!(contact_id_for_chat(*chat), *contact);
            assert_eq!(chat_id_for_contact(contact), Ok(*chat), "{contact}");
            crate::respondio::wire::IdType::Custom
                .validate(contact)
                .unwrap_or_else(|e| panic!("{contact}: {e}"));
        }
        for junk in [
            "",
            "g",
            "0",
            "g0",
            "007",
            "g007",
            "-5",
            "+5",
            "G5",
            "abc",
            "12a",
            " 1",
            "1 ",
            "g-5",
            "gg5",
            "9223372036854775808",
            "g9223372036854775809",
            "99999999999999999999999",
        ] {
            let err = chat_id_for_contact(junk).unwrap_err();
            assert!(err.contains("not a Telegram chat"), "{junk}: {err}");
        }
    }

    #[test]
    fn authenticate_table() {
        let p = provider("http://x");
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("right secret", Some(SECRET), true),
            (
                "wrong secret",
                Some("tg-hook-secret_0123456789abcdefXYz"),
                false,
            ),
            ("prefix of the secret", Some("tg-hook-secret"), false),
            ("empty header", Some(""), false),
            ("no header", None, false),
        ];
        for (name, value, ok) in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(
                    "X-Telegram-Bot-Api-Secret-Token",
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let res = with_req(&h, &fixture("update_text_private.json"), |r| {
                p.authenticate(r)
            });
            assert_eq!(res.is_ok(), *ok, "{name}: {res:?}");
            if let Err(reason) = res {
                assert!(!reason.contains(SECRET), "{name}");
            }
        }
        let mut h = HeaderMap::new();
        h.insert(SECRET_HEADER, HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert!(with_req(&h, "{}", |r| p.authenticate(r)).is_err());
    }

    struct Want {
        dedupe: &'static str,
        contact: &'static str,
        kind: InboundKind,
        message: Message,
        media: Option<&'static str>,
        first: Option<&'static str>,
        last: Option<&'static str>,
        language: Option<&'static str>,
        ts: i64,
    }

    fn text(t: &str) -> Message {
        Message::Text { text: t.into() }
    }

    fn attachment(
        kind: AttachmentKind,
        unique: &str,
        name: Option<&str>,
        caption: Option<&str>,
    ) -> Message {
        Message::Attachment {
            attachment: Attachment {
                kind,
                url: format!("{MEDIA}/{unique}"),
                file_name: name.map(str::to_string),
                description: caption.map(str::to_string),
            },
        }
    }

    #[test]
    fn inbound_table() {
        use InboundKind::*;
        let nic = |dedupe, message, media, ts| Want {
            dedupe,
            contact: "3527065",
            kind: Message,
            message,
            media,
            first: Some("Nic"),
            last: None,
            language: None,
            ts,
        };
        let cases: Vec<(&str, Want)> = vec![
            (
                "update_text_private.json",
                Want {
                    dedupe: "900946525:3527065:85",
                    contact: "3527065",
                    kind: Message,
                    message: text("Hello World"),
                    media: None,
                    first: Some("Nic"),
                    last: Some("Pottier"),
                    language: Some("en"),
                    ts: 1_493_843_318_000,
                },
            ),
            (
                "update_photo.json",
                Want {
                    dedupe: "900946526:3527065:86",
                    contact: "3527065",
                    kind: Message,
                    message: attachment(
                        AttachmentKind::Image,
                        "AQADXwbMLwAEincBAAE",
                        None,
                        Some("Photo Caption"),
                    ),
                    media: Some("AgADAQADtKcxG4LRUUQSQVUjfJIiiF8G6C8ABF-Bx8prlhIEincBAAEC"),
                    first: Some("Nic"),
                    last: Some("@nicpottier"),
                    language: Some("pt"),
                    ts: 1_493_843_400_000,
                },
            ),
            (
                "update_group_text.json",
                Want {
                    dedupe: "900946527:-1001234567890:1204",
                    contact: "g1001234567890",
                    kind: Message,
                    message: text("Nic Pottier: Anyone there?"),
                    media: None,
                    first: Some("Support Group"),
                    last: None,
                    language: None,
                    ts: 1_493_843_500_000,
                },
            ),
            (
                "update_small_group_text.json",
                Want {
                    dedupe: "900946535:-4567890:12",
                    contact: "g4567890",
                    kind: Message,
                    message: text("@ana_b: hi all"),
                    media: None,
                    first: Some("Family"),
                    last: None,
                    language: None,
                    ts: 1_493_844_300_000,
                },
            ),
            (
                "update_edited.json",
                Want {
                    dedupe: "900946528:3527065:85",
                    contact: "3527065",
                    kind: Message,
                    message: text("(edited) Hello World!"),
                    media: None,
                    first: Some("Nic"),
                    last: Some("Pottier"),
                    language: Some("en"),
                    ts: 1_493_843_600_000,
                },
            ),
            (
                "update_channel_post.json",
                Want {
                    dedupe: "900946529:-1009876543210:77",
                    contact: "g1009876543210",
                    kind: Echo,
                    message: text("Sale starts Monday"),
                    media: None,
                    first: Some("Shop News"),
                    last: None,
                    language: None,
                    ts: 1_493_843_700_000,
                },
            ),
            (
                "update_location.json",
                nic(
                    "900946530:3527065:87",
                    crate::respondio::wire::Message::Location {
                        latitude: 3.139,
                        longitude: 101.6869,
                        address: None,
                        name: None,
                    },
                    None,
                    1_493_843_800_000,
                ),
            ),
            (
                "update_venue.json",
                nic(
                    "900946531:3527065:88",
                    crate::respondio::wire::Message::Location {
                        latitude: 3.1579,
                        longitude: 101.7116,
                        address: Some("Kuala Lumpur City Centre".into()),
                        name: Some("Petronas Towers".into()),
                    },
                    None,
                    1_493_843_900_000,
                ),
            ),
            (
                "update_document.json",
                nic(
                    "900946532:3527065:89",
                    attachment(
                        AttachmentKind::File,
                        "AgADbwADbQi5RA",
                        Some("invoice.pdf"),
                        Some("my invoice"),
                    ),
                    Some("BQADAQADbwADbQi5RO1PnGKkJkz3Ag"),
                    1_493_844_000_000,
                ),
            ),
            (
                "update_voice.json",
                nic(
                    "900946533:3527065:90",
                    attachment(AttachmentKind::Audio, "AgADbwADbQi5RB", None, None),
                    Some("AwADAQADbwADbQi5RO1PnGKkJkz3Ag"),
                    1_493_844_100_000,
                ),
            ),
            (
                "update_sticker.json",
                nic(
                    "900946534:3527065:91",
                    attachment(AttachmentKind::Image, "AgADRQADGuGxCQ", None, Some("👍")),
                    Some("CAADAQADRQADGuGxCVw"),
                    1_493_844_200_000,
                ),
            ),
            (
                "update_contact.json",
                nic(
                    "900946536:3527065:92",
                    text("Shared contact: Ali Hassan +60177872890"),
                    None,
                    1_493_844_400_000,
                ),
            ),
            (
                "update_poll.json",
                nic(
                    "900946537:3527065:93",
                    text("[Telegram poll: not supported on this channel]"),
                    None,
                    1_493_844_500_000,
                ),
            ),
        ];
        for (name, want) in cases {
            let events = parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(events.len(), 1, "{name}");
            let e = &events[0];
            assert_eq!(e.dedupe_key, want.dedupe, "{name}");
            assert_eq!(e.contact_id, want.contact, "{name}");
            assert_eq!(e.kind, want.kind, "{name}");
            assert_eq!(e.message, want.message, "{name}");
            assert_eq!(
                e.media.as_ref().map(|m| m.source.as_str()),
                want.media,
                "{name}"
            );
            assert_eq!(e.timestamp_ms, want.ts, "{name}");
            let c = e.contact.clone().unwrap_or_default();
            assert_eq!(c.first_name.as_deref(), want.first, "{name}");
            assert_eq!(c.last_name.as_deref(), want.last, "{name}");
            assert_eq!(c.language.as_deref(), want.language, "{name}");
            assert_eq!(
                e.provider_id,
                want.dedupe.split_once(':').unwrap().1,
                "{name}: chat:message"
            );
            if let crate::respondio::wire::Message::Attachment { attachment } = &e.message {
                assert!(!attachment.url.contains(TOKEN), "{name}");
            }
        }
        let doc = parse("update_document.json").unwrap();
        assert_eq!(
            doc[0].media.as_ref().unwrap().content_type.as_deref(),
            Some("application/pdf")
        );
    }

    #[test]
    fn updates_without_a_message_are_taken_and_not_forwarded() {
        for name in [
            "update_my_chat_member.json",
            "update_callback_query.json",
            "update_new_members.json",
            "update_edited_live_location.json",
        ] {
            assert_eq!(parse(name), Ok(Vec::new()), "{name}");
        }
    }

    #[test]
    fn unreadable_updates_are_errors() {
        for (name, want) in [
            ("update_broken.json", "not valid JSON"),
            ("update_no_update_id.json", "no update_id"),
            ("update_no_chat.json", "has no chat"),
        ] {
            let err = parse(name).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
        let p = provider("http://x");
        let err = with_req(&HeaderMap::new(), "MessageSid=1", |r| p.parse_receipts(r)).unwrap_err();
        assert!(err.contains("no delivery receipts"), "{err}");
    }

    #[test]
    fn build_send_table() {
        let img = |desc: Option<&str>, kind| crate::respondio::wire::Message::Attachment {
            attachment: Attachment {
                kind,
                url: "https://cdn.example.com/a.jpg".into(),
                file_name: Some("a.jpg".into()),
                description: desc.map(str::to_string),
            },
        };
        let loc =
            |name: Option<&str>, address: Option<&str>| crate::respondio::wire::Message::Location {
                latitude: 3.139,
                longitude: 101.6869,
                name: name.map(str::to_string),
                address: address.map(str::to_string),
            };
        let cases: Vec<(&str, crate::respondio::wire::Message, &str, Value)> = vec![
            (
                "text",
                text("Hello from respond.io"),
                "sendMessage",
                json!({"chat_id": 3527065, "text": "Hello from respond.io"}),
            ),
            (
                "photo with caption",
                img(Some("Receipt"), AttachmentKind::Image),
                "sendPhoto",
                json!({"chat_id": 3527065, "photo": "https://cdn.example.com/a.jpg", "caption": "Receipt"}),
            ),
            (
                "video, blank caption dropped",
                img(Some(" "), AttachmentKind::Video),
                "sendVideo",
                json!({"chat_id": 3527065, "video": "https://cdn.example.com/a.jpg"}),
            ),
            (
                "audio",
                img(None, AttachmentKind::Audio),
                "sendAudio",
                json!({"chat_id": 3527065, "audio": "https://cdn.example.com/a.jpg"}),
            ),
            (
                "file",
                img(None, AttachmentKind::File),
                "sendDocument",
                json!({"chat_id": 3527065, "document": "https://cdn.example.com/a.jpg"}),
            ),
            (
                "bare location",
                loc(None, None),
                "sendLocation",
                json!({"chat_id": 3527065, "latitude": 3.139, "longitude": 101.6869}),
            ),
            (
                "named place",
                loc(Some("KLCC"), Some("Jalan Ampang")),
                "sendVenue",
                json!({"chat_id": 3527065, "latitude": 3.139, "longitude": 101.6869, "title": "KLCC", "address": "Jalan Ampang"}),
            ),
            (
                "name only",
                loc(Some("KLCC"), None),
                "sendVenue",
                json!({"chat_id": 3527065, "latitude": 3.139, "longitude": 101.6869, "title": "KLCC", "address": "3.139, 101.6869"}),
            ),
            (
                "quick reply",
                crate::respondio::wire::Message::QuickReply {
                    title: Some("Size?".into()),
                    replies: vec!["S".into(), "M".into(), " ".into()],
                },
                "sendMessage",
                json!({"chat_id": 3527065, "text": "Size?", "reply_markup": {
                    "keyboard": [[{"text": "S"}], [{"text": "M"}]], "one_time_keyboard": true, "resize_keyboard": true}}),
            ),
            (
                "quick reply without title",
                crate::respondio::wire::Message::QuickReply {
                    title: None,
                    replies: vec!["Yes".into()],
                },
                "sendMessage",
                json!({"chat_id": 3527065, "text": QUICK_REPLY_PROMPT, "reply_markup": {
                    "keyboard": [[{"text": "Yes"}]], "one_time_keyboard": true, "resize_keyboard": true}}),
            ),
        ];
        for (name, m, method, body) in cases {
            let (got_method, got_body) = build_send(3527065, &m).unwrap();
            assert_eq!(got_method, method, "{name}");
            assert_eq!(got_body, body, "{name}");
        }
    }

    fn kind_of(r: &Result<Accepted, SendError>) -> String {
        match r {
            Ok(a) => format!("ok {}", a.provider_id),
            Err(SendError::Ambiguous(_)) => "ambiguous".into(),
            Err(SendError::Unsent(_)) => "unsent".into(),
            Err(SendError::Rotated(_)) => "rotated".into(),
            Err(SendError::Permanent(r)) => format!("permanent {r}"),
            Err(SendError::ChannelFault(_)) => "channel".into(),
            Err(SendError::Throttled {
                retry_after: Some(d),
                ..
            }) => format!("throttled {}s", d.as_secs()),
            Err(SendError::Throttled {
                retry_after: None, ..
            }) => "throttled".into(),
        }
    }

    #[test]
    fn classify_table() {
        let f = |n: &str| Ok(fixture(n).into_bytes());
        type Body = Result<Vec<u8>, String>;
        let cases: Vec<(&str, u16, Option<u64>, Body, &str)> = vec![
            (
                "sent",
                200,
                None,
                f("send_message_ok.json"),
                "ok 3527065:133",
            ),
            (
                "sent to a supergroup",
                200,
                None,
                f("send_photo_ok.json"),
                "ok -1001234567890:134",
            ),
            (
                "ok without message_id",
                200,
                None,
                f("send_ok_without_message_id.json"),
                "ambiguous",
            ),
            ("not json", 200, None, Ok(b"<html>".to_vec()), "ambiguous"),
            ("body lost", 200, None, Err("reset".into()), "ambiguous"),
            (
                "blocked",
                403,
                None,
                f("error_403_blocked.json"),
                "permanent Telegram refused the message: Forbidden: bot was blocked by the user (HTTP 403)",
            ),
            (
                "deactivated",
                403,
                None,
                f("error_403_deactivated.json"),
                "permanent Telegram refused the message: Forbidden: user is deactivated (HTTP 403)",
            ),
            (
                "chat not found",
                400,
                None,
                f("error_400_chat_not_found.json"),
                "permanent Telegram refused the message: Bad Request: chat not found (HTTP 400)",
            ),
            (
                "migrated",
                400,
                None,
                f("error_400_migrate.json"),
                "permanent the group became a supergroup; its new contactId is g1001987654321 (Bad Request: group chat was upgraded to a supergroup chat)",
            ),
            ("flood", 429, None, f("error_429.json"), "throttled 35s"),
            (
                "flood, header only",
                429,
                Some(3),
                Ok(Vec::new()),
                "throttled 3s",
            ),
            ("revoked token", 401, None, f("error_401.json"), "channel"),
            ("malformed token", 404, None, f("error_404.json"), "channel"),
            (
                "getUpdates conflict",
                409,
                None,
                Ok(br#"{"ok":false,"error_code":409,"description":"Conflict"}"#.to_vec()),
                "channel",
            ),
            ("redirect", 302, None, Ok(Vec::new()), "channel"),
            ("bad gateway", 502, None, f("error_502.json"), "ambiguous"),
        ];
        for (name, status, header, body, want) in cases {
            let got = classify(status, header.map(Duration::from_secs), body, 3527065);
            assert_eq!(kind_of(&got), want, "{name}");
        }
    }

    // ---- against the stand-in, over loopback HTTP ----

    async fn start_sim() -> (TelegramSim, String) {
        let sim = TelegramSim::new(TelegramSimConfig {
            bot_token: TOKEN.into(),
            allow_http_webhook: true,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener));
        (sim, base)
    }

    async fn send(
        p: &Telegram,
        contact: &str,
        m: &crate::respondio::wire::Message,
    ) -> Result<Accepted, SendError> {
        p.send(SendRequest {
            mid: "01HZXMID",
            contact_id: contact,
            message: m,
        })
        .await
    }

    #[tokio::test]
    async fn sends_every_kind_through_the_stand_in() {
        let (sim, base) = start_sim().await;
        let p = provider(&base);
        let msgs = [
            text("hello"),
            attachment(AttachmentKind::Image, "x", None, Some("pic")),
            crate::respondio::wire::Message::Location {
                latitude: 1.5,
                longitude: 2.5,
                name: Some("Here".into()),
                address: None,
            },
            crate::respondio::wire::Message::QuickReply {
                title: Some("Pick".into()),
                replies: vec!["A".into(), "B".into()],
            },
        ];
        let mut ids = Vec::new();
        for m in &msgs {
            ids.push(send(&p, "g1001234567890", m).await.unwrap().provider_id);
        }
        assert_eq!(
            ids,
            [
                "-1001234567890:1",
                "-1001234567890:2",
                "-1001234567890:3",
                "-1001234567890:4"
            ]
        );
        let calls = sim.calls();
        let methods: Vec<_> = calls.iter().map(|c| c.method.as_str()).collect();
        assert_eq!(
            methods,
            ["sendMessage", "sendPhoto", "sendVenue", "sendMessage"]
        );
        assert!(
            calls
                .iter()
                .all(|c| c.status == 200 && c.params["chat_id"] == -1001234567890i64)
        );
        assert_eq!(
            calls[3].params["reply_markup"]["keyboard"][1][0]["text"],
            "B"
        );
    }

    #[tokio::test]
    async fn stand_in_faults_are_typed() {
        let (sim, base) = start_sim().await;
        let p = provider(&base);
        let cases: Vec<(TelegramFault, &str)> = vec![
            (TelegramFault::ServerError(502), "ambiguous"),
            (TelegramFault::Flood { retry_after: 7 }, "throttled 7s"),
            (TelegramFault::Unauthorized, "channel"),
            (
                TelegramFault::Blocked,
                "permanent Telegram refused the message: Forbidden: bot was blocked by the user (HTTP 403)",
            ),
            (TelegramFault::DropConnection, "ambiguous"),
        ];
        for (fault, want) in cases {
            let name = format!("{fault:?}");
            sim.push_fault(fault);
            let got = send(&p, "3527065", &text("hi")).await;
            assert_eq!(kind_of(&got), want, "{name}");
            assert!(!format!("{got:?}").contains(TOKEN), "{name}: token leaked");
        }
        sim.block(42);
        assert!(kind_of(&send(&p, "42", &text("hi")).await).contains("blocked by the user"));
        sim.migrate(-4567890, -1004567890);
        assert!(kind_of(&send(&p, "g4567890", &text("hi")).await).contains("g1004567890"));
        let long = "x".repeat(crate::simulators::telegram::MAX_TEXT_CHARS + 1);
        assert!(kind_of(&send(&p, "3527065", &text(&long)).await).contains("message is too long"));
        // A contact id that is no chat never reaches Telegram.
        let before = sim.calls().len();
        assert!(kind_of(&send(&p, "-5", &text("hi")).await).starts_with("permanent contactId"));
        assert_eq!(sim.calls().len(), before);
        assert!(send(&p, "3527065", &text("hi")).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_token_is_a_channel_fault_and_never_printed() {
        let (sim, base) = start_sim().await;
        let mut cfg = config(&base);
        cfg.bot_token = Secret::new("123456:WRONG-token");
        let p = Telegram::new(cfg, reqwest::Client::new(), MEDIA.into());
        let err = send(&p, "3527065", &text("hi")).await.unwrap_err();
        assert!(matches!(err, SendError::ChannelFault(_)), "{err:?}");
        assert!(!err.reason().contains("WRONG"), "{err:?}");
        assert_eq!(sim.calls()[0].status, 401);
    }

    #[tokio::test]
    async fn transport_errors_do_not_print_the_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let p = provider(&base);
        let err = send(&p, "3527065", &text("hi")).await.unwrap_err();
        assert!(matches!(err, SendError::Unsent(_)), "{err:?}");
        assert!(!err.reason().contains("ABC-DEF"), "{}", err.reason());
        let Err(err) = p.resolve_media("file").await else {
            panic!("resolved without a server")
        };
        assert!(!err.contains("ABC-DEF"), "{err}");
    }

    #[tokio::test]
    async fn resolve_media_gets_a_download_url_from_get_file() {
        let (sim, base) = start_sim().await;
        let p = provider(&base);
        let bytes = b"\xff\xd8\xff\xe0 a jpeg".to_vec();
        let file_id = sim.add_file("photos/file_3.jpg", bytes.clone(), "image/jpeg");
        let fetch = p.resolve_media(&file_id).await.unwrap();
        assert_eq!(
            fetch.url,
            format!("{base}/file/bot{TOKEN}/photos/file_3.jpg")
        );
        assert!(fetch.headers.is_empty());
        let got = reqwest::get(&fetch.url).await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.headers()["content-type"], "image/jpeg");
        assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
        let getfile = sim.calls().pop().unwrap();
        assert_eq!(
            (getfile.method.as_str(), getfile.params["file_id"].as_str()),
            ("getFile", Some(file_id.as_str()))
        );

        let Err(err) = p.resolve_media("AgADnope").await else {
            panic!("an unknown file_id resolved")
        };
        assert!(err.contains("invalid file_id"), "{err}");
        // The download URL needs the token: without it the stand-in, like Telegram, has nothing.
        let wrong = fetch.url.replace(TOKEN, "123456:other");
        assert_eq!(reqwest::get(&wrong).await.unwrap().status(), 404);
    }
}
