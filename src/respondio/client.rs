//! The client for a channel's respond.io webhook: posts event envelopes and types the answer.

use std::time::Duration;

use crate::providers::{SendError, classify_transport_error, parse_retry_after};
use crate::respondio::wire::{Contact, Envelope, Event};
use crate::secret::Secret;

pub struct RespondIoClient {
    http: reqwest::Client,
    url: String,
    token: Secret,
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
        channel_id: String,
        timeout: Duration,
    ) -> Self {
        RespondIoClient {
            http,
            url,
            token,
            channel_id,
            timeout,
        }
    }

    /// One webhook call. 2xx → Ok; 429 → Throttled; 401/403 → ChannelFault (token or
    /// channel misconfigured: retrying each message would only fill the dead letters);
    /// other 4xx → Permanent with respond.io's reason; 5xx/408 and transport errors →
    /// retryable (the same mId is sent again).
    pub async fn post(
        &self,
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
            .bearer_auth(self.token.expose())
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
