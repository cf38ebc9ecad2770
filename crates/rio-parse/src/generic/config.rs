//! `[channel.http]`: the mapping an operator writes to connect a gateway by config alone.
//!
//! These types are only the TOML shape. Everything in them is checked and compiled (templates
//! parsed, pointers validated, placeholders resolved) by `compile` in the server crate (`rio_bridge::providers::generic`), which is also
//! what `check-config` runs, so a mapping that loads is a mapping that works.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::secret::Secret;

fn default_rate_limit() -> u32 {
    10
}

fn default_method() -> String {
    "POST".into()
}

fn default_param() -> String {
    "secret".into()
}

fn default_max_age() -> u64 {
    300
}

/// `[channel.http]`. Unknown keys are errors: a typo in a mapping must not pass silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Sends per second toward the gateway.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Named credentials, usable in send templates as `{secret.NAME}`. Redacted in logs.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    pub send: Option<SendConfig>,
    /// How the gateway's webhooks prove they are its own; default: `?secret=` in the URL.
    #[serde(default)]
    pub auth: AuthConfig,
    pub inbound: Option<InboundConfig>,
    /// Optional: a gateway without delivery reports has none.
    pub receipt: Option<ReceiptConfig>,
}

/// `[channel.http.send]`: one HTTP request per message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendConfig {
    #[serde(default = "default_method")]
    pub method: String,
    /// URL template; substituted values are percent-encoded.
    #[serde(default)]
    pub url: String,
    /// Header templates (`Authorization = "Bearer {secret.token}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HTTP Basic credentials (templates).
    pub basic_auth: Option<BasicAuthConfig>,
    /// JSON body template: a TOML table or array; substitution inside string leaves only.
    pub json: Option<toml::Value>,
    /// Form body template: field name → value template.
    pub form: Option<BTreeMap<String, String>>,
    /// Attachments use this request instead (e.g. an MMS endpoint); without it an attachment
    /// is sent through the main request as text with its URL.
    pub attachment: Option<AttachmentSendConfig>,
    #[serde(default)]
    pub response: ResponseConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    #[serde(default)]
    pub password: String,
}

/// `[channel.http.send.attachment]`: method, headers, auth and response reading are the
/// main request's; only where it goes and what it carries differ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentSendConfig {
    /// Defaults to the main request's URL.
    pub url: Option<String>,
    pub json: Option<toml::Value>,
    pub form: Option<BTreeMap<String, String>>,
    /// Only these attachment types use this request (default: all).
    pub types: Option<Vec<String>>,
}

/// `[channel.http.send.response]`: how to read the gateway's answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// HTTP statuses that may mean accepted (default: any 2xx).
    pub success_status: Option<Vec<u16>>,
    /// A JSON Pointer whose value must equal `success_value` for a send to count as accepted.
    pub success_pointer: Option<String>,
    pub success_value: Option<String>,
    /// Where the gateway's message id is (required): receipts are matched by it.
    pub id_pointer: Option<String>,
    /// Where a human reason is, first non-empty wins.
    #[serde(default)]
    pub error_pointers: Vec<String>,
    /// Where an in-band error code is (checked against the `*_codes` lists).
    pub code_pointer: Option<String>,
    /// Seconds to wait, when the gateway says so in its body rather than in `Retry-After`.
    pub retry_after_pointer: Option<String>,
    /// Defaults: 429 throttled, 401/403 channel faults, other 4xx permanent, 5xx ambiguous.
    pub throttled_status: Option<Vec<u16>>,
    pub channel_fault_status: Option<Vec<u16>>,
    #[serde(default)]
    pub permanent_status: Vec<u16>,
    #[serde(default)]
    pub ambiguous_status: Vec<u16>,
    #[serde(default)]
    pub throttled_codes: Vec<String>,
    #[serde(default)]
    pub channel_fault_codes: Vec<String>,
    #[serde(default)]
    pub permanent_codes: Vec<String>,
    #[serde(default)]
    pub ambiguous_codes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// `?{param}={webhook_secret}` on our webhook URLs.
    #[default]
    QuerySecret,
    /// A header carrying `{prefix}{webhook_secret}`.
    HeaderSecret,
    /// An HMAC of the raw body (optionally with a timestamp) keyed by `webhook_secret`.
    Hmac,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    #[default]
    Sha256,
    Sha1,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// `[channel.http.auth]`. The secret itself is always the channel's `webhook_secret`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub kind: AuthKind,
    /// query_secret: the query parameter's name.
    #[serde(default = "default_param")]
    pub param: String,
    /// header_secret / hmac: the header's name.
    pub header: Option<String>,
    /// header_secret / hmac: text before the value (`Bearer `, `sha256=`).
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// hmac: a header with Unix seconds; the signed bytes become
    /// `{timestamp}{timestamp_separator}{body}` and old timestamps are refused.
    pub timestamp_header: Option<String>,
    #[serde(default)]
    pub timestamp_separator: String,
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            kind: AuthKind::QuerySecret,
            param: default_param(),
            header: None,
            prefix: String::new(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            timestamp_header: None,
            timestamp_separator: String::new(),
            max_age_secs: default_max_age(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `application/x-www-form-urlencoded` body, or the query string of a GET.
    #[default]
    Form,
    /// A JSON object (or an array of them, one message each).
    Json,
}

/// `[channel.http.inbound]`: where a contact's message is in the gateway's webhook.
/// Paths are JSON Pointers for `format = "json"`, field names for `format = "form"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    #[serde(default)]
    pub format: PayloadFormat,
    pub contact_id: Option<String>,
    pub message_id: Option<String>,
    pub text: Option<String>,
    pub media_url: Option<String>,
    pub media_type: Option<String>,
    pub timestamp: Option<String>,
    pub contact_name: Option<String>,
}

/// `[channel.http.receipt]`: where a delivery report's fields are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptConfig {
    #[serde(default)]
    pub format: PayloadFormat,
    pub provider_id: Option<String>,
    pub status: Option<String>,
    pub error_reason: Option<String>,
    pub error_code: Option<String>,
    pub timestamp: Option<String>,
    /// Gateway status value → `sent`, `delivered`, `read`, `failed` or `ignore`.
    #[serde(default)]
    pub statuses: BTreeMap<String, String>,
}
