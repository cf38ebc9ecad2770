//! Providers: one file per messaging provider behind the [`Provider`] trait.
//!
//! A provider knows three things: how to check that a webhook really came from it, how to
//! read its inbound messages and delivery receipts into canonical events, and how to send a
//! message. Everything else (durability, lanes, rate limits, retries, the status machine)
//! is the core's job, so a provider file stays small and table-testable.

pub mod clicksend;
pub mod generic;
pub(crate) mod support;
pub mod twilio;
pub mod vonage;

pub mod plivo;
pub mod telegram;

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;

use crate::config::ChannelConfig;
use crate::respondio::wire::{IdType, Message};
use crate::secret::Secret;

// The pure half of the provider interface lives in the parser crate (fuzzed, see
// crates/rio-parse); re-exported here so `crate::providers::X` keeps working.
pub use rio_parse::provider::{
    Accepted, InboundEvent, InboundKind, MediaRef, Receipt, SendError, WebhookRequest,
    parse_retry_after,
};

/// What a provider is built from besides its own config section.
#[derive(Clone)]
pub struct ProviderEnv {
    /// The channel's name (part of our webhook URLs).
    pub channel: String,
    /// `server.public_url` without a trailing `/`: providers that take a callback URL per
    /// message (Twilio `StatusCallback`, Plivo `url`) build it from this.
    pub public_url: String,
    /// The HTTP client for the provider's API (timeouts from the channel, no redirects).
    pub client: reqwest::Client,
}

impl ProviderEnv {
    /// `{public_url}/channels/{channel}/{route}`.
    pub fn webhook_url(&self, route: WebhookRoute) -> String {
        format!(
            "{}/channels/{}/{}",
            self.public_url,
            self.channel,
            route.path()
        )
    }
}

/// Builds the channel's provider from its config section. Config problems are reported by
/// [`config_problems`] first, so an error here is a bug or a missing section.
pub fn build(ch: &ChannelConfig, env: ProviderEnv) -> anyhow::Result<Arc<dyn Provider>> {
    let missing =
        |section: &str| anyhow::anyhow!("channel {}: [channel.{section}] missing", ch.name);
    match ch.provider.as_str() {
        "clicksend" => {
            let cs = ch.clicksend.clone().ok_or_else(|| missing("clicksend"))?;
            Ok(Arc::new(clicksend::ClickSend::new(
                cs,
                ch.webhook_secret.clone(),
                env.client,
            )))
        }
        "http" => {
            let compiled =
                generic::compile(ch, &|f| format!("channel {}: {f}", ch.name)).map_err(|p| {
                    let lines: Vec<String> = p.iter().map(|(k, m)| format!("{k}: {m}")).collect();
                    anyhow::anyhow!("{}", lines.join("; "))
                })?;
            Ok(Arc::new(generic::HttpProvider::new(compiled, env)))
        }
        "telegram" => {
            let tg = ch.telegram.clone().ok_or_else(|| missing("telegram"))?;
            let media_base = format!("{}/channels/{}/media", env.public_url, env.channel);
            Ok(Arc::new(telegram::Telegram::new(
                tg, env.client, media_base,
            )))
        }
        "plivo" => {
            let pl = ch.plivo.clone().ok_or_else(|| missing("plivo"))?;
            Ok(Arc::new(plivo::Plivo::new(pl, ch.id_type, env)))
        }
        "twilio" => {
            let tw = ch.twilio.clone().ok_or_else(|| missing("twilio"))?;
            let status_url = env.webhook_url(WebhookRoute::Status);
            Ok(Arc::new(twilio::Twilio::new(tw, status_url, env.client)))
        }
        "vonage" => {
            let vo = ch.vonage.clone().ok_or_else(|| missing("vonage"))?;
            Ok(Arc::new(vonage::Vonage::new(vo, env.client)))
        }
        other => anyhow::bail!("channel {}: unknown provider {other}", ch.name),
    }
}

/// The providers `provider = "..."` accepts.
pub const KNOWN: &[&str] = &["clicksend", "twilio", "telegram", "vonage", "plivo", "http"];

/// Problems in a channel's provider settings, as (config key, message). `k` makes a key
/// from a field name (`channel[0].{field}`).
pub fn config_problems(ch: &ChannelConfig, k: &dyn Fn(&str) -> String) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let section_required = |name: &str| (k(name), format!("section [channel.{name}] is required"));
    match ch.provider.as_str() {
        "clicksend" => {
            if ch.webhook_secret.is_empty() {
                out.push((
                    k("webhook_secret"),
                    "is required: ClickSend signs nothing, so its webhooks must carry ?secret="
                        .into(),
                ));
            }
            match &ch.clicksend {
                None => out.push(section_required("clicksend")),
                Some(c) => out.extend(c.problems(&k("clicksend"))),
            }
        }
        "http" => out.extend(generic::problems(ch, k)),
        "telegram" => {
            // Chat ids are not phone numbers; groups need the g-prefixed custom form.
            if ch.id_type != IdType::Custom {
                out.push((
                    k("id_type"),
                    "must be \"custom\" for Telegram (contacts are chat ids, not phone numbers)"
                        .into(),
                ));
            }
            match &ch.telegram {
                None => out.push(section_required("telegram")),
                Some(c) => out.extend(c.problems(&k("telegram"))),
            }
        }
        "plivo" => match &ch.plivo {
            None => out.push(section_required("plivo")),
            Some(c) => out.extend(c.problems(&k("plivo"))),
        },
        // Twilio and Vonage sign their webhooks: no URL secret is needed.
        "twilio" => match &ch.twilio {
            None => out.push(section_required("twilio")),
            Some(c) => out.extend(c.problems(&k("twilio"))),
        },
        "vonage" => match &ch.vonage {
            None => out.push(section_required("vonage")),
            Some(c) => out.extend(c.problems(&k("vonage"))),
        },
        other => out.push((
            k("provider"),
            format!("unknown provider {other:?} (known: {})", KNOWN.join(", ")),
        )),
    }
    out
}

/// Which of our webhook routes a provider called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRoute {
    /// `/channels/{name}/inbound`: contacts' messages (and echoes).
    Inbound,
    /// `/channels/{name}/status`: delivery receipts.
    Status,
}

impl WebhookRoute {
    pub fn path(self) -> &'static str {
        match self {
            WebhookRoute::Inbound => "inbound",
            WebhookRoute::Status => "status",
        }
    }
}

/// What we answer a provider once its webhook is committed (or known as a duplicate, or
/// kept raw). Most providers want any 2xx; Twilio wants TwiML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: &'static str,
}

impl WebhookReply {
    pub const OK: WebhookReply = WebhookReply {
        status: StatusCode::OK,
        content_type: "text/plain; charset=utf-8",
        body: "OK",
    };
}

/// Where to fetch a proxied attachment from, with the credentials to send.
pub struct MediaFetch {
    pub url: String,
    /// Extra request headers (e.g. `Authorization`); values are secrets.
    pub headers: Vec<(String, Secret)>,
}

/// What we ask a provider to send.
#[derive(Debug, Clone)]
pub struct SendRequest<'a> {
    /// Our mId (≤ 50 chars); providers that echo a reference back get this one.
    pub mid: &'a str,
    pub contact_id: &'a str,
    pub message: &'a Message,
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The config name of this provider (`provider = "clicksend"`).
    fn kind(&self) -> &'static str;

    /// Sends per second toward the provider.
    fn rate_limit(&self) -> u32;

    /// Checks that a webhook is authentic, before anything is parsed. `Err(reason)` → 403
    /// (or 5xx, see [`Provider::retry_unsigned`]), nothing stored.
    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String>;

    /// A webhook that failed [`Provider::authenticate`] because it carries no signature at
    /// all, where the provider may send such a callback by mistake and signs it when asked
    /// again: it is answered 5xx (the provider retries) instead of 403, and nothing is
    /// stored either way.
    fn retry_unsigned(&self, _req: &WebhookRequest<'_>) -> bool {
        false
    }

    /// Reads an inbound-message webhook. `Err(reason)` for an authentic payload we cannot
    /// read: it is stored raw, answered 2xx and dead-lettered with that reason.
    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String>;

    /// Reads a delivery-receipt webhook; errors as for `parse_inbound`.
    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String>;

    /// Sends one message.
    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError>;

    /// The answer to a webhook we took (committed, duplicate, or kept raw).
    fn webhook_reply(&self, _route: WebhookRoute) -> WebhookReply {
        WebhookReply::OK
    }

    /// Where to fetch a proxied attachment (see [`MediaRef`]); may call the provider's API
    /// (Telegram `getFile`). `Err` → the media URL answers 502 and respond.io may retry.
    async fn resolve_media(&self, _source: &str) -> Result<MediaFetch, String> {
        Err(format!("provider {} proxies no media", self.kind()))
    }
}

/// Classifies a reqwest error: a failure before the request was written cannot have been
/// acted on; anything later might have been.
pub fn classify_transport_error(e: &reqwest::Error) -> SendError {
    let shown = transport_error_text(e);
    if e.is_connect() || e.is_builder() {
        SendError::Unsent(format!("could not reach provider: {shown}"))
    } else {
        SendError::Ambiguous(format!("no answer from provider: {shown}"))
    }
}

/// A transport error's text without its URL's path and query: some APIs carry a
/// credential there (Telegram's `/bot<token>/`), and this text reaches logs, dead letters
/// and respond.io.
pub fn transport_error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        let shown = format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("?"));
        text = text.replace(url.as_str(), &shown);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transport_errors_never_show_the_url_path() {
        // Nothing listens on port 9 of loopback: a connect error carrying the URL.
        let e = reqwest::Client::new()
            .post("http://127.0.0.1:9/bot123456:SECRET-TOKEN/sendMessage?key=also-secret")
            .send()
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("SECRET-TOKEN"),
            "reqwest shows the URL: {e}"
        );
        let reason = classify_transport_error(&e).reason().to_string();
        assert!(
            !reason.contains("SECRET-TOKEN") && !reason.contains("also-secret"),
            "{reason}"
        );
        assert!(reason.contains("127.0.0.1"), "{reason}");
    }

    /// One channel of `provider` with `extra` lines (id_type, the provider's section).
    fn channel_problems(provider: &str, extra: &str) -> Vec<String> {
        let text = format!(
            "[[channel]]\nname = \"c\"\nrespondio_channel_id = \"CH\"\nrespondio_token = \"t\"\nprovider = \"{provider}\"\n{extra}"
        );
        match crate::config::Config::from_toml(&text, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn registry_checks_telegram_and_plivo_sections() {
        let tg = "[channel.telegram]\nbot_token = \"1:abc\"\nsecret_token = \"s\"\n";
        assert!(channel_problems("telegram", &format!("id_type = \"custom\"\n{tg}")).is_empty());
        let p = channel_problems("telegram", tg);
        assert!(
            p.iter()
                .any(|m| m.starts_with("channel[0].id_type: must be \"custom\"")),
            "{p:?}"
        );
        let p = channel_problems("telegram", "id_type = \"custom\"\n");
        assert!(
            p.iter()
                .any(|m| m.starts_with("channel[0].telegram: section")),
            "{p:?}"
        );
        let pl = "[channel.plivo]\nauth_id = \"MA1\"\nauth_token = \"t\"\nsrc = \"14155550199\"\n";
        assert!(channel_problems("plivo", pl).is_empty());
        let p = channel_problems("plivo", "");
        assert!(
            p.iter().any(|m| m.starts_with("channel[0].plivo: section")),
            "{p:?}"
        );
        let p = channel_problems(
            "plivo",
            &pl.replace("auth_token = \"t\"", "auth_token = \"\""),
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("channel[0].plivo.auth_token")),
            "{p:?}"
        );
        let p = channel_problems("nope", "");
        assert!(
            p.iter().any(|m| KNOWN.iter().all(|k| m.contains(k))),
            "{p:?}"
        );
    }
}
