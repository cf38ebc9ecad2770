//! What every provider reads and returns: the webhook as it reached us, the canonical
//! events read from it, and the typed outcome of a send. The `Provider` trait itself (and
//! everything that talks to the network) lives in the server crate (`rio_bridge::providers`),
//! which re-exports these types at their old paths.

use std::time::Duration;

use http::HeaderMap;

use crate::wire::{Contact, Message, StatusValue};

/// An inbound attachment respond.io cannot fetch as the provider gives it (the URL carries
/// a credential, or needs one): the gateway fetches it through
/// `Provider::resolve_media` (in the server) and serves it from `{public_url}/media/...` under a signed,
/// expiring URL. The attachment's `url` in the event is replaced by that URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    /// What the provider needs to find the file again (Telegram: its `file_id`; Twilio:
    /// the media URL). Never a URL with a credential in it: this is stored.
    pub source: String,
    /// The provider's content type, where it gave one.
    pub content_type: Option<String>,
}

/// A provider webhook as it reached us, before anything is parsed.
pub struct WebhookRequest<'a> {
    /// The raw query string (without `?`), e.g. `secret=...`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The public URL the provider called (`{public_url}{path}?{query}`), for signature
    /// schemes that sign the URL.
    pub public_url: &'a str,
}

impl WebhookRequest<'_> {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Whether an inbound event is the contact's message or the business's own (an echo of a
/// message sent outside respond.io).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundKind {
    Message,
    Echo,
}

/// A contact's message (or an echo) read from a provider webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// What identifies this webhook for this provider (ClickSend: its inbound `message_id`);
    /// a redelivery carries the same key and is dropped as a duplicate.
    pub dedupe_key: String,
    /// The contact, already in the channel's id_type form (e.g. `+6142...`).
    pub contact_id: String,
    pub kind: InboundKind,
    /// The provider's id of this message (kept for the message's history).
    pub provider_id: String,
    /// Epoch milliseconds.
    pub timestamp_ms: i64,
    pub message: Message,
    pub contact: Option<Contact>,
    /// Set when `message` is an attachment that must be proxied (see [`MediaRef`]).
    pub media: Option<MediaRef>,
}

/// A delivery receipt read from a provider webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// What identifies this receipt webhook (e.g. provider id + status code + timestamp).
    pub dedupe_key: String,
    /// The provider's id of the message we sent (the id its send API returned).
    pub provider_id: String,
    /// `None` for informational receipts that change nothing (ClickSend 300: will retry).
    pub status: Option<StatusValue>,
    /// The provider's reason, for failures.
    pub reason: Option<String>,
    pub timestamp_ms: i64,
}

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub provider_id: String,
}

/// Why a send did not succeed, typed by what the lane should do about it.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// The request never reached the provider (connect refused, DNS failure): retrying
    /// cannot double the message.
    Unsent(String),
    /// The request may have been acted on (timeout after it went out, 5xx): a retry may
    /// double the message, so these retries are capped and marked ambiguous.
    Ambiguous(String),
    /// The provider asked us to slow down; `retry_after` if it said how long.
    Throttled {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// This message will never go through (invalid recipient, content the provider cannot
    /// carry). Reported to respond.io as an error.
    Permanent(String),
    /// The channel itself is broken (credentials rejected, no credit): the lane pauses
    /// and probes instead of burning every queued message into dead letters.
    ChannelFault(String),
    /// Refused (401) with one credential of a rotation that has another not yet tried: the
    /// request was not acted on, and the next attempt (its own rate slot, its own log row)
    /// uses the other credential.
    Rotated(String),
}

impl SendError {
    pub fn reason(&self) -> &str {
        match self {
            SendError::Unsent(r)
            | SendError::Ambiguous(r)
            | SendError::Permanent(r)
            | SendError::ChannelFault(r)
            | SendError::Rotated(r) => r,
            SendError::Throttled { reason, .. } => reason,
        }
    }
}

/// Parses a `Retry-After` header value: delta-seconds or an HTTP-date. Never panics.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        // try_from: a huge value (1e20) must not panic; it is clamped by the lane anyway.
        return Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64: "a very long time".
        return Some(Duration::MAX);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 1.5 "),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("1e20"), Some(Duration::MAX));
        assert_eq!(
            parse_retry_after("18446744073709551616"),
            Some(Duration::MAX)
        );
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
    }
}
