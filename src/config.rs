//! Configuration: TOML with `${VAR}` replaced from the environment, validated up front so
//! `check-config` can list every problem with its key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rio_parse::config_text;
use serde::Deserialize;

use crate::providers::clicksend::ClickSendConfig;
use crate::providers::plivo::PlivoConfig;
use crate::providers::telegram::TelegramConfig;

use crate::providers::twilio::TwilioConfig;
use crate::providers::vonage::VonageConfig;
use crate::respondio::wire::IdType;
use crate::secret::Secret;

pub const DEFAULT_WEBHOOK_URL: &str = "https://webhook.respond.io/custom/channel/webhook/";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The admin API (`/admin`): off unless at least one token is configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default, rename = "token")]
    pub tokens: Vec<AdminToken>,
}

/// A named admin token; the name is what the audit log records as "who".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub name: String,
    pub token: Secret,
}

/// The media proxy (see `crate::media`): attachments respond.io cannot fetch as the
/// provider gives them are served from `{public_url}/media/...`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Signs media URLs. Empty: a key is made once and kept in `dir/.key`. Several nodes
    /// sharing one database must share one configured key.
    pub key: Secret,
    /// How long a media URL handed to respond.io stays valid (and its file cached).
    pub ttl_secs: u64,
    /// Largest file fetched.
    pub max_bytes: u64,
    /// Longest a fetch (all redirects and the body) may take.
    pub fetch_timeout_ms: u64,
    /// Allow fetching from loopback and private addresses (local stand-ins in tests only:
    /// otherwise a forged media URL could read the operator's internal network).
    pub allow_private: bool,
    /// Where fetched files are cached; default `media/` beside the store file.
    pub dir: Option<PathBuf>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            key: Secret::default(),
            ttl_secs: 7 * 86_400,
            max_bytes: 25 << 20,
            fetch_timeout_ms: 30_000,
            allow_private: false,
            dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How providers and respond.io reach us; the base of the URLs we hand out.
    pub public_url: String,
    /// How long `/message` waits for the lane's first outcome before answering 200.
    pub message_budget_ms: u64,
    /// Largest request body accepted on any route (413 above it).
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for in-flight work: requests, and attempts until their
    /// outcome is recorded. Shorter than the longest request timeout, an attempt cut by
    /// the stop is ambiguous at the next start (warned about at start-up).
    pub shutdown_grace_ms: u64,
    /// A client must send its request headers within this (slow-header clients are cut off).
    pub header_read_timeout_ms: u64,
    /// A client must send its whole request body within this after the headers (408 and
    /// the connection closed otherwise).
    pub body_read_timeout_ms: u64,
    /// Requests handled at once on the public listener (health checks aside); beyond it a
    /// request is answered 503 with `Retry-After` at once, without reading its body.
    pub max_concurrent_requests: usize,
    /// Of those, provider webhooks at most: they are refused first (providers retry), so
    /// respond.io's `/message` keeps the rest.
    pub max_concurrent_webhooks: usize,

    /// When set, `/admin` and `/metrics` are served only on this (internal) address.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:3030".parse().expect("static address"),
            public_url: "http://127.0.0.1:3030".into(),
            message_budget_ms: 2000,
            max_body_bytes: 1 << 20,
            // Covers the longest default request (15 s toward the provider, plus 5 s).
            shutdown_grace_ms: 25_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_concurrent_requests: 1024,
            max_concurrent_webhooks: 768,

            admin_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: a 2xx survives a power cut.
    Full,
    /// WAL + NORMAL: survives a process crash, may lose the last commits on power loss.
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// How long a provider webhook's dedupe key is remembered.
    pub dedupe_ttl_secs: u64,
    /// How long a receipt for a provider id we do not know yet waits for its send.
    pub parked_receipt_ttl_secs: u64,
    /// How many requests one transaction (one fsync) may carry.
    pub group_commit_max: usize,
    /// Delivered items, attempts and history older than this are pruned.
    pub retention_secs: u64,
    /// How long a write waits for a lock another process holds on the database before the
    /// request is answered 503.
    pub busy_timeout_ms: u64,
    /// Requests (webhooks and `/message`) that may wait for the store at once: the SQLite
    /// writer's queue, or PostgreSQL requests holding or waiting for a connection. Beyond
    /// it `/message` is answered 503 with `Retry-After`.
    pub queue_max: usize,
    /// Webhooks are refused (503 with `Retry-After`, the provider retries) once this many
    /// requests wait, so `/message` keeps the rest of `queue_max`.
    pub webhook_queue_max: usize,

    /// Channel logs (the HTTP exchanges of each message) older than this are pruned.
    pub channel_log_retention_secs: u64,
    /// Record channel logs at all (off: a little more ingest, no exchanges to look at).
    pub channel_logs: bool,
    /// `postgres://user:pass@host/db` selects the PostgreSQL store (several nodes may share
    /// it); unset means the SQLite file at `path`. A secret: it may carry a password.
    pub url: Option<crate::secret::Secret>,
    /// PostgreSQL connections per node.
    pub pool_size: usize,
    /// PostgreSQL: how long a node owns a lane after its last renewal. A node that dies
    /// loses its lanes within this time.
    pub lease_ttl_ms: u64,
    /// PostgreSQL: a node stops sending on a lane this long before its lease would expire
    /// unrenewed, so a paused node cannot send after another took the lane over. At least
    /// the 1 s rate window, so the new owner never shares a window with the old one.
    pub lease_margin_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("data/rio-bridge.db"),
            synchronous: Synchronous::Full,
            dedupe_ttl_secs: 7 * 86_400,
            parked_receipt_ttl_secs: 86_400,
            group_commit_max: 256,
            retention_secs: 7 * 86_400,
            busy_timeout_ms: 5000,
            queue_max: 1024,
            webhook_queue_max: 512,

            channel_log_retention_secs: 7 * 86_400,
            channel_logs: true,
            url: None,
            pool_size: 16,
            lease_ttl_ms: 10_000,
            lease_margin_ms: 3_000,
        }
    }
}

/// What to do with an item whose send was in flight when the process died.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnCrash {
    /// Send again (at least once; the repeat carries the same mId).
    #[default]
    Resend,
    /// Dead-letter it and report `failed` (at most once).
    Fail,
}

/// `deny_unknown_fields` does not work together with `flatten`, so unknown channel keys
/// are caught by [`unknown_channel_keys`] instead.
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelConfig {
    pub name: String,
    pub respondio_channel_id: String,
    pub respondio_token: Secret,
    /// A second valid token during a rotation.
    #[serde(default)]
    pub respondio_token_next: Option<Secret>,
    #[serde(default = "default_webhook_url")]
    pub respondio_webhook_url: String,
    #[serde(default = "default_respondio_rate")]
    pub respondio_rate_limit: u32,
    #[serde(default)]
    pub id_type: IdType,
    pub provider: String,
    #[serde(default)]
    pub webhook_secret: Secret,
    #[serde(default)]
    pub clicksend: Option<ClickSendConfig>,
    /// The generic provider's mapping (`provider = "http"`).
    #[serde(default)]
    pub http: Option<crate::providers::generic::config::HttpConfig>,

    #[serde(default)]
    pub telegram: Option<TelegramConfig>,
    #[serde(default)]
    pub plivo: Option<PlivoConfig>,

    #[serde(default)]
    pub twilio: Option<TwilioConfig>,
    #[serde(default)]
    pub vonage: Option<VonageConfig>,
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
}

/// Retry, ordering and batching policy of a channel's lanes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    pub max_attempts: u32,
    pub max_age_secs: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Sends that may have gone out (timeout, 5xx) are retried at most this often.
    pub ambiguous_retry_cap: u32,
    pub on_crash: OnCrash,
    /// A contact who wrote in this recently is in a live conversation: their outbound
    /// queue goes ahead of bulk sends.
    pub conversation_window_secs: u64,
    /// The share of sends bulk keeps while conversations are promoted.
    pub bulk_min_share: f64,
    /// Events of one contact that may share one webhook call to respond.io.
    pub max_events_per_call: usize,
    pub respondio_timeout_ms: u64,
    pub provider_timeout_ms: u64,
    /// Attempts in flight at once per lane (across contacts; one per contact).
    pub max_inflight: usize,
    /// The rate window is 1 s plus this: it covers the time between taking a slot and the
    /// request reaching the receiver, who times arrivals. Larger is safer, smaller faster.
    pub rate_guard_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 10,
            max_age_secs: 86_400,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            ambiguous_retry_cap: 3,
            on_crash: OnCrash::Resend,
            conversation_window_secs: 3_600,
            bulk_min_share: 0.1,
            max_events_per_call: 10,
            respondio_timeout_ms: 10_000,
            provider_timeout_ms: 15_000,
            max_inflight: 32,
            rate_guard_ms: 10,
        }
    }
}

fn default_webhook_url() -> String {
    DEFAULT_WEBHOOK_URL.into()
}
fn default_respondio_rate() -> u32 {
    20
}

/// One problem found while loading or validating: the config key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug)]
pub struct ConfigError(pub Vec<Problem>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigError {}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![problem(
                path.display().to_string(),
                format!("cannot read: {e}"),
            )])
        })?;
        Config::from_toml(&text, &|k| std::env::var(k).ok())
    }

    /// Parses and validates; `env` resolves `${VAR}`.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // Reading the text (TOML, `${VAR}`) is the parser crate's, fuzzed there.
        let mut value = config_text::parse(text)
            .map_err(|message| ConfigError(vec![problem("(file)", message)]))?;
        let mut problems = unknown_channel_keys(&value);
        problems.extend(
            config_text::interpolate(&mut value, env)
                .into_iter()
                .map(|(key, message)| problem(key, message)),
        );
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError(vec![problem(
                if key == "." { "(file)".into() } else { key },
                e.inner().to_string(),
            )])
        })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(problems))
        }
    }

    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match url::Url::parse(&self.server.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => out.push(problem("server.public_url", "must be an http(s) URL")),
        }
        // Well under the 30 s request timeout, so /message never times out with a
        // committed message behind it.
        if self.server.message_budget_ms == 0 || self.server.message_budget_ms > 20_000 {
            out.push(problem("server.message_budget_ms", "must be 1..=20000"));
        }
        // Attempts inside the rate window and done sends that receipts still need must
        // outlive pruning.
        let min_retention = self.store.parked_receipt_ttl_secs.max(3600);
        if self.store.retention_secs < min_retention {
            out.push(problem(
                "store.retention_secs",
                format!("must be at least {min_retention} (1 h, and parked_receipt_ttl_secs)"),
            ));
        }
        if !(100..=60_000).contains(&self.server.header_read_timeout_ms) {
            out.push(problem(
                "server.header_read_timeout_ms",
                "must be 100..=60000",
            ));
        }
        if self.server.max_body_bytes < 1024 {
            out.push(problem("server.max_body_bytes", "must be at least 1024"));
        }
        if self.media.ttl_secs < 3600 {
            out.push(problem(
                "media.ttl_secs",
                "must be at least 3600 (respond.io may fetch media late)",
            ));
        }
        if !self.media.key.is_empty() && self.media.key.expose().len() < 32 {
            out.push(problem("media.key", "must be at least 32 characters"));
        }
        if self.media.max_bytes == 0 {
            out.push(problem("media.max_bytes", "must be at least 1"));
        }
        if !(1000..=600_000).contains(&self.media.fetch_timeout_ms) {
            out.push(problem("media.fetch_timeout_ms", "must be 1000..=600000"));
        }
        // Well under the 30 s request timeout, so a slow body gets its own clear answer and
        // the handler still has time after it.
        if !(100..=20_000).contains(&self.server.body_read_timeout_ms) {
            out.push(problem(
                "server.body_read_timeout_ms",
                "must be 100..=20000",
            ));
        }
        // Under the 30 s request timeout, so a lock shows up as 503, not 408.
        if !(10..=20_000).contains(&self.store.busy_timeout_ms) {
            out.push(problem("store.busy_timeout_ms", "must be 10..=20000"));
        }
        if let Some(url) = &self.store.url {
            let u = url.expose();
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
                || u.parse::<tokio_postgres::Config>().is_err()
            {
                out.push(problem("store.url", "must be a postgres:// URL"));
            }
        }
        if !(1..=1000).contains(&self.store.pool_size) {
            out.push(problem("store.pool_size", "must be 1..=1000"));
        }
        if self.store.lease_margin_ms < 1_000
            || self.store.lease_margin_ms * 2 > self.store.lease_ttl_ms
        {
            out.push(problem(
                "store.lease_margin_ms",
                "must be at least 1000 and at most half of store.lease_ttl_ms",
            ));
        }
        if self.server.max_concurrent_requests == 0 {
            out.push(problem(
                "server.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.server.max_concurrent_webhooks == 0
            || self.server.max_concurrent_webhooks > self.server.max_concurrent_requests
        {
            out.push(problem(
                "server.max_concurrent_webhooks",
                "must be 1..=server.max_concurrent_requests",
            ));
        }
        if self.store.queue_max == 0 {
            out.push(problem("store.queue_max", "must be at least 1"));
        }
        if self.store.webhook_queue_max == 0 || self.store.webhook_queue_max > self.store.queue_max
        {
            out.push(problem(
                "store.webhook_queue_max",
                "must be 1..=store.queue_max",
            ));
        }
        if self.store.group_commit_max == 0 {
            out.push(problem("store.group_commit_max", "must be at least 1"));
        }
        out.extend(self.admin_problems());
        if self.channels.is_empty() {
            out.push(problem("channel", "at least one [[channel]] is required"));
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let k = |f: &str| format!("channel[{i}].{f}");
            let name_ok = !ch.name.is_empty()
                && ch.name.len() <= 64
                && ch
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                out.push(problem(
                    k("name"),
                    "must be 1-64 characters of A-Z a-z 0-9 - _ (it is part of our URLs)",
                ));
            }
            if !names.insert(ch.name.clone()) {
                out.push(problem(
                    k("name"),
                    format!("duplicate channel name {:?}", ch.name),
                ));
            }
            if ch.respondio_channel_id.is_empty() {
                out.push(problem(k("respondio_channel_id"), "is required"));
            } else if !ids.insert(ch.respondio_channel_id.clone()) {
                out.push(problem(
                    k("respondio_channel_id"),
                    "is used by another channel",
                ));
            }
            if ch.respondio_token.is_empty() {
                out.push(problem(
                    k("respondio_token"),
                    "is required (the channel's API Token from respond.io)",
                ));
            }
            match url::Url::parse(&ch.respondio_webhook_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => out.push(problem(
                    k("respondio_webhook_url"),
                    "must be an http(s) URL",
                )),
            }
            if ch.respondio_rate_limit == 0 {
                out.push(problem(k("respondio_rate_limit"), "must be at least 1"));
            }
            let d = &ch.delivery;
            if d.max_attempts == 0 {
                out.push(problem(k("max_attempts"), "must be at least 1"));
            }
            if d.backoff_base_ms == 0 || d.backoff_max_ms < d.backoff_base_ms {
                out.push(problem(
                    k("backoff_base_ms"),
                    "must be > 0 and <= backoff_max_ms",
                ));
            }
            if !(0.0..=1.0).contains(&d.bulk_min_share) {
                out.push(problem(k("bulk_min_share"), "must be between 0 and 1"));
            }
            if d.max_events_per_call == 0 {
                out.push(problem(k("max_events_per_call"), "must be at least 1"));
            }
            if d.rate_guard_ms > crate::lanes::limiter::MAX_GUARD_MS as u64 {
                out.push(problem(k("rate_guard_ms"), "must be at most 250"));
            }
            if d.max_inflight == 0 {
                out.push(problem(k("max_inflight"), "must be at least 1"));
            }
            out.extend(
                crate::providers::config_problems(ch, &k)
                    .into_iter()
                    .map(|(key, m)| problem(key, m)),
            );
        }
        out
    }

    fn admin_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for (i, t) in self.admin.tokens.iter().enumerate() {
            let k = |f: &str| format!("admin.token[{i}].{f}");
            if t.name.trim().is_empty() || t.name.len() > 64 {
                out.push(problem(
                    k("name"),
                    "must be 1-64 characters (the audit log's \"who\")",
                ));
            }
            if !names.insert(t.name.clone()) {
                out.push(problem(
                    k("name"),
                    format!("duplicate admin token name {:?}", t.name),
                ));
            }
            // Admin tokens open replays and purges: a short one is a guessable one.
            if t.token.expose().len() < 16 {
                out.push(problem(k("token"), "must be at least 16 characters"));
            }
        }
        if self
            .server
            .admin_listen
            .is_some_and(|a| a == self.server.listen)
        {
            out.push(problem(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        if self.store.channel_log_retention_secs < 60 {
            out.push(problem(
                "store.channel_log_retention_secs",
                "must be at least 60",
            ));
        }
        out
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}

const CHANNEL_KEYS: &[&str] = &[
    "name",
    "respondio_channel_id",
    "respondio_token",
    "respondio_token_next",
    "respondio_webhook_url",
    "respondio_rate_limit",
    "id_type",
    "provider",
    "webhook_secret",
    "clicksend",
    "http",
    "telegram",
    "plivo",
    "twilio",
    "vonage",
    "max_attempts",
    "max_age_secs",
    "backoff_base_ms",
    "backoff_max_ms",
    "ambiguous_retry_cap",
    "on_crash",
    "conversation_window_secs",
    "bulk_min_share",
    "max_events_per_call",
    "respondio_timeout_ms",
    "provider_timeout_ms",
    "max_inflight",
    "rate_guard_ms",
];

fn unknown_channel_keys(v: &toml::Value) -> Vec<Problem> {
    let Some(chans) = v.get("channel").and_then(|c| c.as_array()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, ch) in chans.iter().enumerate() {
        for key in ch.as_table().into_iter().flat_map(|t| t.keys()) {
            if !CHANNEL_KEYS.contains(&key.as_str()) {
                out.push(problem(format!("channel[{i}].{key}"), "unknown key"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[server]
listen = "127.0.0.1:3030"
public_url = "https://gw.example.com"
[store]
path = "data/rio-bridge.db"
[[channel]]
name = "sms"
respondio_channel_id = "CH1"
respondio_token = "${RIO_TOKEN}"
id_type = "phone"
provider = "clicksend"
webhook_secret = "${SMS_HOOK_SECRET}"
[channel.clicksend]
username = "user"
api_key = "${CLICKSEND_KEY}"
from = "+61411111111"
api_base = "https://rest.clicksend.com"
rate_limit = 10
"#;

    fn env(k: &str) -> Option<String> {
        match k {
            "RIO_TOKEN" => Some("tok".into()),
            "SMS_HOOK_SECRET" => Some("hook".into()),
            "CLICKSEND_KEY" => Some("key".into()),
            _ => None,
        }
    }

    #[test]
    fn loads_the_documented_sample() {
        let cfg = Config::from_toml(SAMPLE, &env).unwrap();
        let ch = &cfg.channels[0];
        assert!(ch.respondio_token.matches("tok"));
        assert_eq!(ch.respondio_rate_limit, 20);
        assert_eq!(ch.respondio_webhook_url, DEFAULT_WEBHOOK_URL);
        assert_eq!(ch.delivery.ambiguous_retry_cap, 3);
        assert_eq!(cfg.server.message_budget_ms, 2000);
    }

    #[test]
    fn missing_env_var_names_key_and_variable() {
        let err = Config::from_toml(SAMPLE, &|k| if k == "RIO_TOKEN" { None } else { env(k) })
            .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].key, "channel[0].respondio_token");
        assert!(err.0[0].message.contains("RIO_TOKEN"));
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let text = SAMPLE
            .replace("name = \"sms\"", "name = \"s m s\"")
            .replace(
                "public_url = \"https://gw.example.com\"",
                "public_url = \"nope\"",
            )
            .replace("webhook_secret = \"${SMS_HOOK_SECRET}\"", "");
        let err = Config::from_toml(&text, &env).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.public_url"), "{keys:?}");
        assert!(keys.contains(&"channel[0].name"), "{keys:?}");
        assert!(keys.contains(&"channel[0].webhook_secret"), "{keys:?}");
    }

    #[test]
    fn body_and_lock_timeouts_have_defaults_and_bounds() {
        let cfg = Config::from_toml(SAMPLE, &env).unwrap();
        assert_eq!(cfg.server.body_read_timeout_ms, 10_000);
        assert_eq!(cfg.store.busy_timeout_ms, 5000);
        let text = SAMPLE
            .replace("[server]", "[server]\nbody_read_timeout_ms = 50")
            .replace("[store]", "[store]\nbusy_timeout_ms = 60000");
        let err = Config::from_toml(&text, &env).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.body_read_timeout_ms"), "{keys:?}");
        assert!(keys.contains(&"store.busy_timeout_ms"), "{keys:?}");
    }

    #[test]
    fn postgres_store_keys_are_checked() {
        let with = |extra: &str| SAMPLE.replace("[store]", &format!("[store]\n{extra}"));
        let cfg = Config::from_toml(
            &with("url = \"postgres://rio:${RIO_TOKEN}@db:5432/rio\"\npool_size = 4"),
            &env,
        )
        .unwrap();
        assert_eq!(
            cfg.store.url.unwrap().expose(),
            "postgres://rio:tok@db:5432/rio"
        );
        assert_eq!(cfg.store.pool_size, 4);
        let err = Config::from_toml(
            &with("url = \"mysql://db/rio\"\nlease_ttl_ms = 4000\nlease_margin_ms = 3000"),
            &env,
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"store.url"), "{keys:?}");
        assert!(keys.contains(&"store.lease_margin_ms"), "{keys:?}");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_path() {
        let err =
            Config::from_toml(&SAMPLE.replace("[store]", "[store]\npaht = 1"), &env).unwrap_err();
        assert!(err.0[0].key.starts_with("store"), "{:?}", err.0);
        assert!(err.0[0].message.contains("paht"));
    }

    #[test]
    fn unknown_channel_key_is_reported() {
        let err = Config::from_toml(
            &SAMPLE.replace("id_type = \"phone\"", "id_typo = \"phone\""),
            &env,
        )
        .unwrap_err();
        assert_eq!(err.0[0].key, "channel[0].id_typo");
    }
}
