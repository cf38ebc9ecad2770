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

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::support::{read_capped, retry_after};
use super::{
    Accepted, InboundEvent, Provider, Receipt, SendError, SendRequest, WebhookRequest,
    classify_transport_error,
};
use crate::respondio::wire::{AttachmentKind, Message};
use crate::secret::Secret;

// The JWT check, webhook reading and answer classification are pure code in the parser
// crate (fuzzed there); re-exported for the stand-in and the tests.
use rio_parse::vonage as webhook;
#[cfg(test)]
use rio_parse::vonage::{check_claims, classify};
pub use rio_parse::vonage::{sign_hs256, verify_hs256};

const MAX_RESPONSE_BYTES: usize = 256 * 1024;
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
        webhook::authenticate(
            &self.cfg.signature_secret,
            &self.cfg.api_key,
            self.cfg.max_token_age_secs,
            req,
        )
    }

    /// Vonage notes that a rare internal error can send a callback unsigned, and that a
    /// 5xx makes it retry, signed (spec: providers.md, Vonage §4.6).
    fn retry_unsigned(&self, req: &WebhookRequest<'_>) -> bool {
        req.headers.get(axum::http::header::AUTHORIZATION).is_none()
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        webhook::parse_inbound(req)
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        webhook::parse_receipts(req)
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let body = self.build_body(&req)?;
        let request = self
            .client
            .post(format!(
                "{}/v1/messages",
                self.cfg.api_base.trim_end_matches('/')
            ))
            .basic_auth(&self.cfg.api_key, Some(self.cfg.api_secret.expose()))
            .json(&body);
        // `channel_log::send` records the exchange (credentials redacted) for the message.
        let resp = crate::channel_log::send(request, "provider")
            .await
            .map_err(|e| classify_transport_error(&e))?;
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await;
        let result = webhook::classify(status, after, body);
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

#[cfg(test)]
mod tests;
