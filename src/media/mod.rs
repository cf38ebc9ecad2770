//! The media proxy: attachments respond.io cannot fetch as the provider gives them.
//!
//! Telegram's file URLs carry the bot token; Twilio's may need the account's credentials.
//! Handing either to respond.io would leak a credential or fail. So the inbound event
//! carries our own URL instead, `{public_url}/media/{channel}/{src}?exp=..&sig=..`:
//!
//! - `src` is the provider's locator (a Telegram `file_id`, a Twilio media URL), never a
//!   credential; the URL is signed (HMAC-SHA256 with the media key) over channel, locator,
//!   content type and expiry, so nobody can make us fetch anything else or fetch after the
//!   expiry. The URL is stateless: any node that has the key can serve it, and nothing has
//!   to be committed beside the inbound event.
//! - The file is fetched through [`crate::providers::Provider::resolve_media`] (which adds
//!   credentials) with an SSRF-safe client (public addresses only, pinned resolution,
//!   redirects re-checked and stripped of credentials when they leave the host), capped in
//!   size and time, and cached on disk; a prefetch right after the webhook commit captures
//!   it while the provider's URL is fresh. Cached files are pruned after the URL lifetime.
//!
//! respond.io may fetch late (its queue, retries), hence the long default lifetime (7 d).

pub mod ssrf;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::MediaConfig;
use crate::providers::{MediaRef, Provider};
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Redirect hops followed when fetching (Twilio's media URL redirects to its storage).
const MAX_REDIRECTS: usize = 3;

/// Content types served as they are; anything else is served as an opaque download, so a
/// provider file can never run as a page on our origin (where the admin console lives).
const SAFE_TYPE_PREFIXES: &[&str] = &["image/", "video/", "audio/"];
const SAFE_TYPES: &[&str] = &["application/pdf", "application/octet-stream"];

/// Why a media URL cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("bad media signature")]
    BadSignature,
    #[error("media link expired")]
    Expired,
    #[error("media unavailable: {0}")]
    Upstream(String),
    #[error("media too large (over {0} bytes)")]
    TooLarge(u64),
}

/// A verified media URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaTarget {
    pub source: String,
    pub content_type: Option<String>,
}

/// A file in the cache, ready to serve.
#[derive(Debug, Clone)]
pub struct Cached {
    pub path: PathBuf,
    pub content_type: String,
    pub len: u64,
}

pub struct MediaProxy {
    key: Secret,
    ttl: Duration,
    max_bytes: u64,
    fetch_timeout: Duration,
    allow_private: bool,
    dir: PathBuf,
    public_url: String,
    prefetching: Arc<tokio::sync::Semaphore>,
}

impl MediaProxy {
    /// `store_path` places the default cache directory beside the SQLite file.
    pub fn open(cfg: &MediaConfig, store_path: &Path, public_url: &str) -> anyhow::Result<Self> {
        let dir = cfg.dir.clone().unwrap_or_else(|| {
            store_path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("media")
        });
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("media.dir {}: {e}", dir.display()))?;
        let key = if cfg.key.is_empty() {
            load_or_create_key(&dir)?
        } else {
            cfg.key.clone()
        };
        Ok(MediaProxy {
            key,
            ttl: Duration::from_secs(cfg.ttl_secs),
            max_bytes: cfg.max_bytes,
            fetch_timeout: Duration::from_millis(cfg.fetch_timeout_ms),
            allow_private: cfg.allow_private,
            dir,
            public_url: public_url.trim_end_matches('/').to_string(),
            prefetching: Arc::new(tokio::sync::Semaphore::new(4)),
        })
    }

    fn mac(&self, channel: &str, src: &str, ct: &str, exp: u64) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(self.key.expose().as_bytes()).expect("HMAC takes any key");
        // Length-free fields joined by a byte none of them can contain (channel names,
        // base64url and exp are restricted; ct is percent-decoded text without newlines).
        mac.update(format!("rio-media-v1\n{channel}\n{src}\n{ct}\n{exp}").as_bytes());
        mac
    }

    /// Our URL for a provider's attachment, valid for the media lifetime from `now_s`.
    pub fn signed_url(&self, channel: &str, media: &MediaRef, now_s: u64) -> String {
        let src = URL_SAFE_NO_PAD.encode(media.source.as_bytes());
        let ct: String = media
            .content_type
            .as_deref()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        let exp = now_s + self.ttl.as_secs();
        let sig = URL_SAFE_NO_PAD.encode(self.mac(channel, &src, &ct, exp).finalize().into_bytes());
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("exp", &exp.to_string());
        if !ct.is_empty() {
            q.append_pair("ct", &ct);
        }
        q.append_pair("sig", &sig);
        format!("{}/media/{channel}/{src}?{}", self.public_url, q.finish())
    }

    /// Checks a media URL's signature (constant time) and expiry.
    pub fn verify(
        &self,
        channel: &str,
        src: &str,
        query: &str,
        now_s: u64,
    ) -> Result<MediaTarget, MediaError> {
        let mut exp = None;
        let mut ct = String::new();
        let mut sig = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "exp" => exp = v.parse::<u64>().ok(),
                "ct" => ct = v.into_owned(),
                "sig" => sig = URL_SAFE_NO_PAD.decode(v.as_bytes()).ok(),
                _ => {}
            }
        }
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(MediaError::BadSignature);
        };
        self.mac(channel, src, &ct, exp)
            .verify_slice(&sig)
            .map_err(|_| MediaError::BadSignature)?;
        if now_s > exp {
            return Err(MediaError::Expired);
        }
        let source = URL_SAFE_NO_PAD
            .decode(src.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(MediaError::BadSignature)?;
        Ok(MediaTarget {
            source,
            content_type: (!ct.is_empty()).then_some(ct),
        })
    }

    fn cache_path(&self, channel: &str, source: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(channel.as_bytes());
        h.update([0u8]);
        h.update(source.as_bytes());
        let name: String = h
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(name)
    }

    fn cached(&self, path: &Path) -> Option<Cached> {
        let len = std::fs::metadata(path).ok()?.len();
        let content_type = std::fs::read_to_string(path.with_extension("type")).ok()?;
        Some(Cached {
            path: path.to_path_buf(),
            content_type,
            len,
        })
    }

    /// The file for a verified target: from the cache, else fetched from the provider.
    pub async fn get(
        &self,
        channel: &str,
        provider: &dyn Provider,
        target: &MediaTarget,
    ) -> Result<Cached, MediaError> {
        let path = self.cache_path(channel, &target.source);
        if let Some(c) = self.cached(&path) {
            return Ok(c);
        }
        let fetch = provider
            .resolve_media(&target.source)
            .await
            .map_err(MediaError::Upstream)?;
        // A download of its own: two requests for one file never write the same file.
        let tmp = path.with_extension(format!("{:016x}.part", rand::random::<u64>()));
        let fetched = tokio::time::timeout(
            self.fetch_timeout,
            self.fetch_to(&fetch.url, &fetch.headers, &tmp),
        )
        .await
        .unwrap_or_else(|_| {
            Err(MediaError::Upstream(format!(
                "fetch took longer than {} ms",
                self.fetch_timeout.as_millis()
            )))
        });
        let (body_type, len) = match fetched {
            Ok(f) => f,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let content_type = safe_content_type(
            target
                .content_type
                .as_deref()
                .filter(|c| !c.is_empty())
                .or(body_type.as_deref()),
        );
        // The type file is written before the data is renamed into place, so a file that
        // exists always has its type.
        let placed = std::fs::write(path.with_extension("type"), &content_type)
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(MediaError::Upstream(format!("cannot cache media: {e}")));
        }
        Ok(Cached {
            path,
            content_type,
            len,
        })
    }

    /// Fetches into `tmp`, following redirects safely; returns the response's content type
    /// and the length. The caller removes `tmp` on failure.
    async fn fetch_to(
        &self,
        url: &str,
        headers: &[(String, Secret)],
        tmp: &Path,
    ) -> Result<(Option<String>, u64), MediaError> {
        let up = |m: String| MediaError::Upstream(m);
        let mut url = url::Url::parse(url).map_err(|e| up(format!("bad media URL: {e}")))?;
        let first_host = url.host_str().map(str::to_string);
        for _ in 0..=MAX_REDIRECTS {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(up(format!("media URL scheme {} refused", url.scheme())));
            }
            let host = url
                .host_str()
                .ok_or_else(|| up("media URL has no host".into()))?
                .trim_matches(|c| c == '[' || c == ']')
                .to_string();
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs = ssrf::resolve_public(&host, port, self.allow_private)
                .await
                .map_err(up)?;
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5))
                .resolve_to_addrs(&host, &addrs)
                .build()
                .map_err(|e| up(e.to_string()))?;
            let mut req = client.get(url.clone());
            // Credentials go only to the host the provider named, never along a redirect
            // to another host (Twilio redirects to a pre-signed storage URL).
            if url.host_str().map(str::to_string) == first_host {
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.expose());
                }
            }
            let mut resp = req
                .send()
                .await
                .map_err(|e| up(format!("media fetch failed: {}", e.without_url())))?;
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| up(format!("media redirect {status} without Location")))?;
                url = url
                    .join(loc)
                    .map_err(|e| up(format!("bad media redirect: {e}")))?;
                continue;
            }
            if !status.is_success() {
                return Err(up(format!("provider answered {status} for the media")));
            }
            if resp.content_length().is_some_and(|l| l > self.max_bytes) {
                return Err(MediaError::TooLarge(self.max_bytes));
            }
            let body_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut file = tokio::fs::File::create(tmp)
                .await
                .map_err(|e| up(format!("cannot cache media: {e}")))?;
            let mut len = 0u64;
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(up(format!("media body broke off: {}", e.without_url())));
                    }
                };
                len += chunk.len() as u64;
                if len > self.max_bytes {
                    return Err(MediaError::TooLarge(self.max_bytes));
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| up(format!("cannot cache media: {e}")))?;
            }
            file.flush()
                .await
                .map_err(|e| up(format!("cannot cache media: {e}")))?;
            return Ok((body_type, len));
        }
        Err(up(format!("more than {MAX_REDIRECTS} media redirects")))
    }

    /// Fetches an attachment in the background right after its webhook committed, so the
    /// file is ours while the provider's URL is fresh. Best effort: when several fetches
    /// already run, the file is fetched when respond.io asks for it instead.
    pub fn prefetch(
        self: &Arc<Self>,
        channel: String,
        provider: Arc<dyn Provider>,
        media: MediaRef,
    ) {
        let Ok(permit) = self.prefetching.clone().try_acquire_owned() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let target = MediaTarget {
                source: media.source,
                content_type: media.content_type,
            };
            if let Err(e) = me.get(&channel, provider.as_ref(), &target).await {
                tracing::warn!(channel, error = %e, "media prefetch failed; it is fetched again when respond.io asks");
            }
        });
    }

    /// Deletes cached files older than the URL lifetime (plus a day, for clocks and late
    /// fetches of URLs signed just before the file was cached).
    pub fn prune(&self) -> usize {
        let horizon = self.ttl + Duration::from_secs(86_400);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > horizon);
            let name = e.file_name();
            if old && name.to_string_lossy() != ".key" && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// The type we serve a file as (see [`SAFE_TYPE_PREFIXES`]).
fn safe_content_type(ct: Option<&str>) -> String {
    let ct = ct.unwrap_or("").trim();
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // SVG is an image that can carry script.
    let media =
        SAFE_TYPE_PREFIXES.iter().any(|p| essence.starts_with(p)) && !essence.contains("svg");
    if media || SAFE_TYPES.contains(&essence.as_str()) {
        essence
    } else {
        "application/octet-stream".into()
    }
}

/// The signing key when none is configured: made once, kept beside the cache (0600), so
/// URLs respond.io holds stay valid across restarts. Several nodes must share a configured
/// `media.key` instead.
fn load_or_create_key(dir: &Path) -> anyhow::Result<Secret> {
    let path = dir.join(".key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        let k = k.trim();
        if k.len() >= 32 {
            return Ok(Secret::new(k));
        }
    }
    let bytes: [u8; 32] = rand::random();
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(".key.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(Secret::new(key))
}

#[cfg(test)]
mod tests;
