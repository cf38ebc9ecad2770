//! The client for a channel's respond.io webhook: posts event envelopes and types the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};

use crate::providers::{SendError, classify_transport_error, parse_retry_after};
use crate::respondio::wire::{Contact, Envelope, Event};
use crate::secret::Secret;
use crate::store::Store;

pub struct RespondIoClient {
    http: reqwest::Client,
    url: String,
    /// The channel's token, then `respondio_token_next` during a rotation.
    tokens: Vec<Secret>,
    /// Which of `tokens` the next call uses: the one respond.io accepted last. A rotation
    /// done in respond.io before the config was updated costs one refused call, not a lane
    /// stuck on a channel fault.
    preferred: AtomicUsize,
    /// Bit per token respond.io refused (401) since one was last accepted.
    refused: AtomicUsize,
    /// Which token the store remembers as accepted (`usize::MAX`: none yet).
    remembered: Arc<AtomicUsize>,
    /// Where the accepted token's fingerprint is kept, so a restart or reload starts with
    /// the token that works.
    memory: Option<(Arc<dyn Store>, String)>,
    channel_id: String,
    timeout: Duration,
}

/// Longest slice of an error body we keep (for the reason shown in dead letters).
const ERROR_BODY_MAX: usize = 512;

const NOT_REMEMBERED: usize = usize::MAX;

/// A fingerprint that tells which configured token respond.io accepted, without the token:
/// HMAC-SHA256 under a fixed label and the channel id, cut to 64 bits. The store never holds
/// a token; the fingerprint only picks among the configured ones (tokens are long random
/// strings, so it gives nothing to guess from).
pub fn token_fingerprint(channel_id: &str, token: &Secret) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"rio-bridge respond.io token in use")
        .expect("HMAC takes a key of any length");
    mac.update(channel_id.as_bytes());
    mac.update(&[0]);
    mac.update(token.expose().as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..8])
}

fn token_name(which: usize) -> &'static str {
    if which == 0 {
        "respondio_token"
    } else {
        "respondio_token_next"
    }
}

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
            refused: AtomicUsize::new(0),
            remembered: Arc::new(AtomicUsize::new(NOT_REMEMBERED)),
            memory: None,
            channel_id,
            timeout,
        }
    }

    /// Keeps which token works in `store` under `key`, and starts with the one it already
    /// names, if it is still configured.
    pub async fn remember_in(mut self, store: Arc<dyn Store>, key: String) -> Self {
        match store.note(&key).await {
            Ok(Some(fp)) => {
                if let Some(i) = self
                    .tokens
                    .iter()
                    .position(|t| token_fingerprint(&self.channel_id, t) == fp)
                {
                    self.preferred.store(i, Ordering::Relaxed);
                    self.remembered.store(i, Ordering::Relaxed);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(channel_id = %self.channel_id, error = %e,
                "cannot read which respond.io token was accepted last; starting with respondio_token"),
        }
        self.memory = Some((store, key));
        self
    }

    /// Which token the next call uses (`respondio_token` or `respondio_token_next`).
    pub fn token_in_use(&self) -> &'static str {
        token_name(self.preferred.load(Ordering::Relaxed))
    }

    /// One webhook call with the preferred token. A 401 while the rotation's other token
    /// has not been refused yet switches to it and answers `Rotated`: the lane retries at
    /// once, in its own rate slot and attempt row (a 401 means respond.io did not take the
    /// call, so this cannot double anything). Both refused: a channel fault, and the
    /// circuit's probe starts the round again.
    pub async fn post(
        &self,
        contact_id: &str,
        events: &[Event],
        contact: Option<&Contact>,
    ) -> Result<(), SendError> {
        let which = self.preferred.load(Ordering::Relaxed);
        let result = self.post_with(which, contact_id, events, contact).await;
        match &result {
            Ok(()) => {
                self.refused.store(0, Ordering::Relaxed);
                self.remember(which);
            }
            Err(SendError::ChannelFault(reason))
                if reason.contains(" 401:") && self.tokens.len() > 1 =>
            {
                let refused = self.refused.fetch_or(1 << which, Ordering::Relaxed) | (1 << which);
                let other = (which + 1) % self.tokens.len();
                if refused & (1 << other) == 0 {
                    if self
                        .preferred
                        .compare_exchange(which, other, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        tracing::warn!(channel_id = %self.channel_id, refused = token_name(which), now_using = token_name(other),
                            "respond.io refused one token of the rotation; trying the other");
                    }
                    return Err(SendError::Rotated(format!(
                        "{reason} (with {}; the next attempt uses {})",
                        token_name(which),
                        token_name(other)
                    )));
                }
                self.refused.store(0, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }

    /// Stores the fingerprint of the token that just worked, when it is not the one stored
    /// (once per switch). Written beside the delivery, not in its path: a stalled store must
    /// not turn a delivered call into an ambiguous one, and a lost write costs only one
    /// refused call after a restart.
    fn remember(&self, which: usize) {
        let Some((store, key)) = &self.memory else {
            return;
        };
        if self.remembered.swap(which, Ordering::Relaxed) == which {
            return;
        }
        if self.tokens.len() > 1 {
            tracing::info!(channel_id = %self.channel_id, token = token_name(which),
                "respond.io accepts this token; remembered across restarts (finish the rotation in the config when done)");
        }
        let fp = token_fingerprint(&self.channel_id, &self.tokens[which]);
        let (store, key, channel_id) = (store.clone(), key.clone(), self.channel_id.clone());
        let remembered = self.remembered.clone();
        tokio::spawn(async move {
            if let Err(e) = store.set_note(&key, &fp).await {
                // Tried again on the next accepted call.
                let _ = remembered.compare_exchange(
                    which,
                    NOT_REMEMBERED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                tracing::warn!(channel_id = %channel_id, error = %e,
                    "cannot remember which respond.io token works; a restart may cost one refused call");
            }
        });
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
