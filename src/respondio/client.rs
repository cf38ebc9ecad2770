//! The client for a channel's respond.io webhook: posts event envelopes and types the answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::providers::{SendError, classify_transport_error, parse_retry_after};
use crate::respondio::wire::{Contact, Envelope, Event};
use crate::secret::Secret;

pub struct RespondIoClient {
    http: reqwest::Client,
    url: String,
    /// The channel's token, then `respondio_token_next` during a rotation.
    tokens: Vec<Secret>,
    /// Which of `tokens` respond.io accepted last: a rotation that happened in respond.io
    /// before the config was updated costs one 401, not a lane stuck on a channel fault.
    preferred: AtomicUsize,
    channel_id: String,
    timeout: Duration,
}

/// Longest slice of an error body we keep (for the reason shown in dead letters).
const ERROR_BODY_MAX: usize = 512;

impl RespondIoClient {
    pub fn new(
        http: reqwest::Client,
        url: String,
        token: Secret,
        token_next: Option<Secret>,
        channel_id: String,
        timeout: Duration,
    ) -> Self {
        let mut tokens = vec![token];
        tokens.extend(token_next.filter(|t| !t.is_empty()));
        RespondIoClient {
            http,
            url,
            tokens,
            preferred: AtomicUsize::new(0),
            channel_id,
            timeout,
        }
    }

    /// One webhook call with the preferred token; on 401, once more with the other token
    /// of a rotation (a 401 means respond.io did not take the call, so this cannot double
    /// anything). The token that worked becomes the preferred one.
    pub async fn post(
        &self,
        contact_id: &str,
        events: &[Event],
        contact: Option<&Contact>,
    ) -> Result<(), SendError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let result = self.post_with(first, contact_id, events, contact).await;
        let unauthorized =
            matches!(&result, Err(SendError::ChannelFault(r)) if r.contains(" 401:"));
        if !unauthorized || self.tokens.len() < 2 {
            return result;
        }
        let other = (first + 1) % self.tokens.len();
        let retried = self.post_with(other, contact_id, events, contact).await;
        if retried.is_ok() {
            self.preferred.store(other, Ordering::Relaxed);
            tracing::warn!(
                channel_id = %self.channel_id,
                now_using = if other == 0 { "respondio_token" } else { "respondio_token_next" },
                "respond.io refused one token of the rotation and accepted the other: finish the rotation in the config"
            );
        }
        retried
    }

    /// One webhook call with `tokens[which]`. 2xx → Ok; 429 → Throttled; 401/403 →
    /// ChannelFault (token or channel misconfigured: retrying each message would only fill
    /// the dead letters); other 4xx → Permanent with respond.io's reason; 5xx/408 and
    /// transport errors → retryable (the same mId is sent again).
    async fn post_with(
        &self,
        which: usize,
        contact_id: &str,
        events: &[Event],
        contact: Option<&Contact>,
    ) -> Result<(), SendError> {
        let envelope = Envelope {
            channel_id: &self.channel_id,
            contact_id,
            events,
            contact,
        };
        let req = self
            .http
            .post(&self.url)
            .bearer_auth(self.tokens[which].expose())
            .header("Cache-Control", "no-cache")
            .timeout(self.timeout)
            .json(&envelope);
        // Recorded in the channel log under the events' mIds (the lane's scope).
        let resp = crate::channel_log::send(req, "respondio")
            .await
            .map_err(|e| classify_transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_capped(resp).await;
        let reason = format!("respond.io answered {}: {}", status.as_u16(), body);
        Err(match status.as_u16() {
            429 => SendError::Throttled {
                retry_after,
                reason,
            },
            401 | 403 => SendError::ChannelFault(reason),
            408 => SendError::Ambiguous(reason),
            400..=499 => SendError::Permanent(reason),
            _ => SendError::Ambiguous(reason),
        })
    }
}

async fn read_capped(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() >= ERROR_BODY_MAX {
            buf.truncate(ERROR_BODY_MAX);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}
