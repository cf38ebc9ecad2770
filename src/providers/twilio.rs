//! Twilio Programmable Messaging (SMS/MMS, and WhatsApp through the same API),
//! shared/spec/providers.md §2.
//!
//! - Send: `POST {api_base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded,
//!   HTTP Basic `AccountSid:AuthToken` (or an API key `SK…:secret`). Attachments go as
//!   `MediaUrl`; each send names our `/status` URL as its `StatusCallback`.
//! - Inbound and status callbacks: form POSTs signed with `X-Twilio-Signature`
//!   (HMAC-SHA1 with the Auth Token over the URL and the sorted POST parameters, §2.5).
//! - Twilio wants TwiML back: an empty `<Response/>` means "no auto-reply".
//! - WhatsApp: a `from` of `whatsapp:+…` makes every `To` a `whatsapp:` address; inbound
//!   `whatsapp:+…` senders become plain `+…` contact ids (`:` is not a valid id character).

use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;

use super::support::{read_capped, retry_after};
use super::{
    Accepted, InboundEvent, MediaFetch, Provider, Receipt, SendError, SendRequest, WebhookReply,
    WebhookRequest, WebhookRoute, classify_transport_error,
};
use crate::respondio::wire::{IdType, Message};
use crate::secret::Secret;

// Signature checks, webhook reading and answer classification are pure code in the parser
// crate (fuzzed there); re-exported for the stand-in and the tests.
use rio_parse::twilio as webhook;
pub use rio_parse::twilio::{SIGNATURE_HEADER, WHATSAPP, sign, signing_string, verify_signature};
#[cfg(test)]
use rio_parse::twilio::{classify, url_variants};

/// A Twilio answer is a small JSON object; anything bigger is not Twilio.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Empty TwiML: take the message, send no auto-reply.
pub const TWIML_EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

fn default_api_base() -> String {
    "https://api.twilio.com".to_string()
}

fn default_rate_limit() -> u32 {
    // Twilio queues above a sender's MPS itself (§2.7); 10/s keeps the account's REST
    // concurrency limit far away.
    10
}

fn default_true() -> bool {
    true
}

/// `[channel.twilio]` in the config file. Unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct TwilioConfig {
    /// `AC…` (34 characters).
    pub account_sid: String,
    /// Signs every webhook Twilio sends us, and authenticates our calls unless an API key
    /// is configured.
    pub auth_token: Secret,
    /// Optional API key (`SK…`) for our calls to Twilio; webhooks are still signed with
    /// the Auth Token.
    #[serde(default)]
    pub api_key_sid: Option<String>,
    #[serde(default)]
    pub api_key_secret: Option<Secret>,
    /// Sender: a Twilio number (`+E.164`), `whatsapp:+E.164`, or an alphanumeric id.
    #[serde(default)]
    pub from: Option<String>,
    /// Or a Messaging Service (`MG…`) that picks the sender.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    #[serde(default = "default_api_base")]
    pub api_base: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// The account enforces HTTP auth on media: inbound attachments are served through
    /// the gateway's `/media` proxy, which fetches them with the account's credentials.
    #[serde(default)]
    pub proxy_media: bool,
    /// Pass our `/status` URL as each message's `StatusCallback` (off if the Messaging
    /// Service already has a status callback pointing at us).
    #[serde(default = "default_true")]
    pub status_callback: bool,
    /// Twilio connection overrides (`rc=3&rp=5xx,ct,rt`), the URL fragment that turns on
    /// Twilio's retries. Appended to the `StatusCallback` we pass; put the same fragment on
    /// the inbound URL in the Twilio Console. Signatures are accepted with and without it.
    #[serde(default)]
    pub connection_overrides: Option<String>,
}

impl TwilioConfig {
    /// Everything wrong with this config, as `(config key, problem)` pairs.
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: &str, problem: String| out.push((format!("{prefix}.{key}"), problem));
        if !sid_ok(&self.account_sid, "AC") {
            add(
                "account_sid",
                "must be your Account SID (AC followed by 32 hex characters, Twilio Console → Account Info)"
                    .into(),
            );
        }
        if self.auth_token.is_empty() {
            add(
                "auth_token",
                "is empty (Twilio Console → Account Info); it also verifies Twilio's webhook signatures"
                    .into(),
            );
        }
        match (&self.api_key_sid, &self.api_key_secret) {
            (None, None) => {}
            (Some(sid), Some(secret)) => {
                if !sid_ok(sid, "SK") {
                    add(
                        "api_key_sid",
                        "must be an API key SID (SK followed by 32 hex characters)".into(),
                    );
                }
                if secret.is_empty() {
                    add("api_key_secret", "is empty".into());
                }
            }
            (Some(_), None) => add(
                "api_key_secret",
                "is required when api_key_sid is set".into(),
            ),
            (None, Some(_)) => add(
                "api_key_sid",
                "is required when api_key_secret is set".into(),
            ),
        }
        match (&self.from, &self.messaging_service_sid) {
            (None, None) => add(
                "from",
                "set from (a Twilio number) or messaging_service_sid".into(),
            ),
            (from, mg) => {
                if let Some(p) = from.as_deref().and_then(sender_problem) {
                    add("from", p);
                }
                if let Some(mg) = mg
                    && !sid_ok(mg, "MG")
                {
                    add(
                        "messaging_service_sid",
                        "must be a Messaging Service SID (MG followed by 32 hex characters)".into(),
                    );
                }
            }
        }
        if let Some(p) = super::clicksend::api_base_problem(&self.api_base) {
            add("api_base", p);
        }
        if self.rate_limit == 0 {
            add("rate_limit", "must be at least 1 send per second".into());
        }
        if let Some(p) = self
            .connection_overrides
            .as_deref()
            .and_then(overrides_problem)
        {
            add("connection_overrides", p);
        }
        out
    }

    /// The overrides fragment without its `#`, if any.
    fn overrides(&self) -> Option<&str> {
        self.connection_overrides
            .as_deref()
            .map(|o| o.trim().trim_start_matches('#'))
            .filter(|o| !o.is_empty())
    }

    /// The sender is a WhatsApp address: recipients are too.
    fn is_whatsapp(&self) -> bool {
        self.from
            .as_deref()
            .is_some_and(|f| f.starts_with(WHATSAPP))
    }
}

/// `AC`/`SK`/`MG` + 32 hex characters.
fn sid_ok(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Twilio's override keys (webhooks-connection-overrides): connect/read/total timeouts,
/// retry count and policy, SNI, edge.
const OVERRIDE_KEYS: &[&str] = &["ct", "rt", "tt", "rc", "rp", "sni", "e"];

fn overrides_problem(ov: &str) -> Option<String> {
    let ov = ov.trim().trim_start_matches('#');
    let bad = ov.split('&').find(|pair| {
        !pair
            .split_once('=')
            .is_some_and(|(k, v)| OVERRIDE_KEYS.contains(&k) && !v.is_empty())
    });
    bad.map(|b| {
        format!(
            "{b:?} is not a Twilio connection override (key=value with key one of {}), e.g. rc=3&rp=5xx,ct,rt",
            OVERRIDE_KEYS.join(", ")
        )
    })
}

fn sender_problem(from: &str) -> Option<String> {
    let number = from.strip_prefix(WHATSAPP).unwrap_or(from);
    if number.starts_with('+') {
        return IdType::Phone
            .validate(number)
            .err()
            .map(|_| format!("{from:?} is not an E.164 number (+ then 7-15 digits)"));
    }
    let n = number.chars().count();
    if number == from && (1..=11).contains(&n) && number.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    Some(format!(
        "{from:?} is neither +E.164, whatsapp:+E.164 nor an alphanumeric sender id of at most 11 characters"
    ))
}

/// The Twilio provider of one channel.
#[derive(Debug)]
pub struct Twilio {
    cfg: TwilioConfig,
    client: reqwest::Client,
    /// Our `/status` URL, given to Twilio per message.
    status_url: String,
}

impl Twilio {
    /// `client` should not follow redirects (see `ClickSend::new`).
    pub fn new(cfg: TwilioConfig, status_url: String, client: reqwest::Client) -> Self {
        let status_url = match cfg.overrides() {
            Some(ov) => format!("{status_url}#{ov}"),
            None => status_url,
        };
        Twilio {
            cfg,
            client,
            status_url,
        }
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.cfg.api_base.trim_end_matches('/'),
            self.cfg.account_sid
        )
    }

    /// Who we are to Twilio's REST API: the API key if configured, else the account.
    fn credentials(&self) -> (&str, &Secret) {
        match (&self.cfg.api_key_sid, &self.cfg.api_key_secret) {
            (Some(sid), Some(secret)) => (sid, secret),
            _ => (&self.cfg.account_sid, &self.cfg.auth_token),
        }
    }

    /// The form Twilio's Messages resource takes (§2.2).
    fn build_form(&self, req: &SendRequest<'_>) -> Result<Vec<(&'static str, String)>, SendError> {
        let to = if self.cfg.is_whatsapp() {
            format!("{WHATSAPP}{}", req.contact_id)
        } else {
            req.contact_id.to_string()
        };
        let mut form = vec![("To", to)];
        if let Some(mg) = &self.cfg.messaging_service_sid {
            form.push(("MessagingServiceSid", mg.clone()));
        }
        if let Some(from) = &self.cfg.from {
            form.push(("From", from.clone()));
        }
        match req.message {
            Message::Attachment { attachment } => {
                // Twilio fetches the URL itself and carries any type it accepts (§2.8);
                // the caption rides as the body.
                form.push(("MediaUrl", attachment.url.clone()));
                if let Some(d) = attachment
                    .description
                    .as_deref()
                    .filter(|d| !d.trim().is_empty())
                {
                    form.push(("Body", d.to_string()));
                }
            }
            // Text, and quick replies / locations as text (SMS has no buttons or pins).
            other => {
                let text = other.to_plain_text();
                if text.trim().is_empty() {
                    return Err(SendError::Permanent("message has no text to send".into()));
                }
                form.push(("Body", text));
            }
        }
        if self.cfg.status_callback {
            form.push(("StatusCallback", self.status_url.clone()));
        }
        Ok(form)
    }

    /// Twilio media URLs of this account only: the credentials must never go elsewhere.
    fn media_url_ok(&self, source: &str) -> bool {
        let (Ok(src), Ok(base)) = (url::Url::parse(source), url::Url::parse(&self.cfg.api_base))
        else {
            return false;
        };
        let prefix = format!("/2010-04-01/Accounts/{}/Messages/", self.cfg.account_sid);
        src.scheme() == base.scheme()
            && src.host_str() == base.host_str()
            && src.port_or_known_default() == base.port_or_known_default()
            && src.path().starts_with(&prefix)
            && src.path().contains("/Media/")
    }
}

#[async_trait]
impl Provider for Twilio {
    fn kind(&self) -> &'static str {
        "twilio"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        webhook::authenticate(&self.cfg.auth_token, self.cfg.overrides(), req)
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        webhook::parse_inbound(req, self.cfg.proxy_media)
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        webhook::parse_receipts(req)
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let form = self.build_form(&req)?;
        let (user, secret) = self.credentials();
        let request = self
            .client
            .post(self.messages_url())
            .basic_auth(user, Some(secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form);
        // `channel_log::send` records the exchange (credentials redacted) for the message.
        let resp = crate::channel_log::send(request, "provider")
            .await
            .map_err(|e| classify_transport_error(&e))?;
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await;
        let result = webhook::classify(status, after, body);
        tracing::debug!(
            provider = "twilio",
            mid = req.mid,
            http_status = status,
            ok = result.is_ok(),
            "send answered"
        );
        result
    }

    fn webhook_reply(&self, _route: WebhookRoute) -> WebhookReply {
        // Status callbacks ignore the body; inbound messages would reply with any TwiML
        // we gave, so both get the empty document.
        WebhookReply {
            status: axum::http::StatusCode::OK,
            content_type: "text/xml; charset=utf-8",
            body: TWIML_EMPTY,
        }
    }

    async fn resolve_media(&self, source: &str) -> Result<MediaFetch, String> {
        if !self.media_url_ok(source) {
            return Err("not a media URL of this Twilio account".into());
        }
        // Twilio's media auth takes the account (or API key) credentials (§2.8). The URL
        // redirects to a storage host; clients must not carry Authorization across it.
        let (user, secret) = self.credentials();
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", secret.expose()));
        Ok(MediaFetch {
            url: source.to_string(),
            headers: vec![(
                "Authorization".to_string(),
                Secret::new(format!("Basic {token}")),
            )],
        })
    }
}

#[cfg(test)]
mod tests;
