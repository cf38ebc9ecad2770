//! Plivo SMS/MMS, shared/spec/providers.md §5.
//!
//! - Send: `POST {api_base}/v1/Account/{auth_id}/Message/` (JSON, HTTP Basic
//!   `auth_id:auth_token`), with `url` = our status URL so every message reports back.
//!   Attachments go as MMS (`media_urls`) when `mms` is on (Plivo carries MMS in the US and
//!   Canada only), otherwise their URL rides in the SMS text.
//! - Inbound: the Plivo application's `message_url`, form POST (or GET): `From`, `To`,
//!   `Text`/`Body`, `MessageUUID`, `Media<N>`.
//! - Receipts: form POSTs to the per-message `url`; `Status` queued/sent/delivered/
//!   undelivered/failed/rejected (read only on WhatsApp).
//! - Authenticity: `X-Plivo-Signature-V3` when present (it covers URL, query and form
//!   body), else `X-Plivo-Signature-V2` (URL + nonce only). Because V2 does not cover the
//!   body, a nonce seen before is accepted again only with the same body (see
//!   [`ReplayGuard`]).
//! - Contacts: Plivo numbers are E.164 digits without `+`; `id_type = "phone"` adds it,
//!   `custom` keeps the bare digits.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    Accepted, InboundEvent, MediaFetch, Provider, ProviderEnv, Receipt, SendError, SendRequest,
    WebhookRequest, WebhookRoute, classify_transport_error, clicksend::api_base_problem,
    parse_retry_after,
};
use crate::clock::now_ms;
use crate::respondio::wire::{IdType, Message};
use crate::secret::Secret;

// Signature checks, webhook reading and answer classification are pure code in the parser
// crate (fuzzed there); re-exported for the stand-in and the tests.
use rio_parse::plivo as webhook;
#[cfg(test)]
use rio_parse::plivo::classify;
pub use rio_parse::plivo::{plivo_number, signature_v2, signature_v3};

/// Plivo answers with a small JSON envelope; anything bigger is not Plivo.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Plivo retries a webhook for about a day (§5.3): a nonce is remembered a little longer.
const NONCE_TTL_MS: i64 = 25 * 3600 * 1000;
/// Nonces remembered at most (about 100 bytes each); the oldest go first.
const NONCE_CAPACITY: usize = 100_000;

fn default_api_base() -> String {
    "https://api.plivo.com".to_string()
}

/// REST allows 300 requests per 5 s per account (§5.7); carriers' per-sender throughput
/// is lower and Plivo queues the excess. 10/s leaves room for other API users.
fn default_rate_limit() -> u32 {
    10
}

/// `[channel.plivo]` in the config file.
#[derive(Debug, Clone, Deserialize)]
pub struct PlivoConfig {
    /// The Auth ID (`MA...` for an account, `SA...` for a subaccount).
    pub auth_id: String,
    /// The Auth Token: our Basic-auth password and the webhook signing key.
    pub auth_token: Secret,
    /// The main account's token, when `auth_id` is a subaccount: Plivo also signs with it
    /// (`X-Plivo-Signature-Ma-V2`/`-V3`).
    #[serde(default)]
    pub main_auth_token: Option<Secret>,
    /// The sender: a Plivo number (E.164, with or without `+`) or a sender id.
    #[serde(default)]
    pub src: Option<String>,
    /// A Powerpack (number pool) instead of `src`.
    #[serde(default)]
    pub powerpack_uuid: Option<String>,
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Sends per second toward Plivo.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Send attachments as MMS (`media_urls`; US/Canada only) instead of a link in the text.
    #[serde(default)]
    pub mms: bool,
}

impl PlivoConfig {
    /// Everything wrong with this config, as `(config key, problem)` pairs.
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: &str, problem: String| out.push((format!("{prefix}.{key}"), problem));
        if self.auth_id.trim().is_empty() {
            add(
                "auth_id",
                "is empty (Plivo console → Overview → Auth ID)".into(),
            );
        } else if !self.auth_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            add(
                "auth_id",
                "must be letters and digits only (it is part of the API path)".into(),
            );
        }
        if self.auth_token.is_empty() {
            add(
                "auth_token",
                "is empty (Plivo console → Overview → Auth Token)".into(),
            );
        }
        if self.main_auth_token.as_ref().is_some_and(Secret::is_empty) {
            add(
                "main_auth_token",
                "is empty; remove it or set the main account's token".into(),
            );
        }
        let src = self.src.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let pp = self
            .powerpack_uuid
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match (src, pp) {
            (None, None) => add(
                "src",
                "is required (a Plivo number to send from), unless powerpack_uuid is set".into(),
            ),
            (Some(_), Some(_)) => add(
                "powerpack_uuid",
                "set either src or powerpack_uuid, not both".into(),
            ),
            (Some(s), None) => {
                let digits = s.strip_prefix('+').unwrap_or(s);
                let number = digits.bytes().all(|b| b.is_ascii_digit());
                let alpha =
                    (1..=11).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
                if !(number && (7..=15).contains(&digits.len()) || alpha && !number) {
                    add(
                        "src",
                        format!(
                            "{s:?} is neither an E.164 number (14155550199) nor a sender id of at most 11 letters/digits"
                        ),
                    );
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(p) = api_base_problem(&self.api_base) {
            add("api_base", p);
        }
        if self.rate_limit == 0 {
            add("rate_limit", "must be at least 1 send per second".into());
        }
        out
    }
}

/// The Plivo provider of one channel.
#[derive(Debug)]
pub struct Plivo {
    cfg: PlivoConfig,
    id_type: IdType,
    client: reqwest::Client,
    /// Our `/status` URL, given to Plivo with every message.
    status_url: String,
    replay: ReplayGuard,
}

impl Plivo {
    pub fn new(cfg: PlivoConfig, id_type: IdType, env: ProviderEnv) -> Self {
        Plivo {
            status_url: env.webhook_url(WebhookRoute::Status),
            cfg,
            id_type,
            client: env.client,
            replay: ReplayGuard::default(),
        }
    }

    fn message_endpoint(&self) -> String {
        format!(
            "{}/v1/Account/{}/Message/",
            self.cfg.api_base.trim_end_matches('/'),
            self.cfg.auth_id
        )
    }

    fn build_send(&self, req: &SendRequest<'_>) -> Result<Value, SendError> {
        let dst = plivo_number(req.contact_id).ok_or_else(|| {
            SendError::Permanent(format!(
                "contactId {:?} is not a phone number",
                req.contact_id
            ))
        })?;
        let mut body = json!({
            "dst": dst,
            "url": self.status_url,
            "method": "POST",
        });
        match (&self.cfg.powerpack_uuid, &self.cfg.src) {
            (Some(pp), _) if !pp.trim().is_empty() => body["powerpack_uuid"] = json!(pp.trim()),
            (_, Some(src)) => {
                body["src"] = json!(src.trim().trim_start_matches('+'));
            }
            _ => {}
        }
        if self.cfg.mms
            && let Message::Attachment { attachment } = req.message
        {
            body["type"] = json!("mms");
            body["media_urls"] = json!([attachment.url]);
            if let Some(d) = attachment
                .description
                .as_deref()
                .filter(|d| !d.trim().is_empty())
            {
                body["text"] = json!(d);
            }
            return Ok(body);
        }
        let text = req.message.to_plain_text();
        if text.trim().is_empty() {
            return Err(SendError::Permanent(
                "message has no text to send as SMS".into(),
            ));
        }
        body["type"] = json!("sms");
        body["text"] = json!(text);
        Ok(body)
    }

    /// Basic credentials go only to Plivo's own hosts: a media URL in a webhook is data,
    /// and must not be able to collect our token.
    fn is_plivo_host(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let api_host = url::Url::parse(&self.cfg.api_base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        api_host.as_deref() == Some(host) || host == "plivo.com" || host.ends_with(".plivo.com")
    }

    fn signing_keys(&self) -> Vec<webhook::SigningKey<'_>> {
        let mut keys = vec![(
            "x-plivo-signature-v3",
            "x-plivo-signature-v2",
            &self.cfg.auth_token,
        )];
        if let Some(main) = &self.cfg.main_auth_token {
            keys.push(("x-plivo-signature-ma-v3", "x-plivo-signature-ma-v2", main));
        }
        keys
    }
}

#[async_trait]
impl Provider for Plivo {
    fn kind(&self) -> &'static str {
        "plivo"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        let verified = webhook::authenticate(&self.signing_keys(), req)?;
        self.replay.check(verified.version, &verified.nonce, req)
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        webhook::parse_inbound(req, self.id_type)
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        webhook::parse_receipts(req)
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let body = self.build_send(&req)?;
        let request = self
            .client
            .post(self.message_endpoint())
            .basic_auth(&self.cfg.auth_id, Some(self.cfg.auth_token.expose()))
            .json(&body);
        // `channel_log::send` records the exchange (credentials redacted) for the message.
        let resp = crate::channel_log::send(request, "provider")
            .await
            .map_err(|e| classify_transport_error(&e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let answer = read_capped(resp).await;
        let result = webhook::classify(status, retry_after, answer);
        tracing::debug!(
            provider = "plivo",
            mid = req.mid,
            http_status = status,
            ok = result.is_ok(),
            "send answered"
        );
        result
    }

    /// Inbound MMS media (`Media<N>` URLs): fetched with our Basic credentials when the URL
    /// is Plivo's (whether Plivo requires them is unverified, §5.8; they do no harm there),
    /// without them anywhere else.
    async fn resolve_media(&self, source: &str) -> Result<MediaFetch, String> {
        let url = url::Url::parse(source).map_err(|_| "media source is not a URL".to_string())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("media source is not an http(s) URL".into());
        }
        let mut headers = Vec::new();
        if self.is_plivo_host(&url) {
            let basic = B64.encode(format!(
                "{}:{}",
                self.cfg.auth_id,
                self.cfg.auth_token.expose()
            ));
            headers.push((
                "Authorization".to_string(),
                Secret::new(format!("Basic {basic}")),
            ));
        }
        Ok(MediaFetch {
            url: source.to_string(),
            headers,
        })
    }
}

/// Remembers which body each recent nonce came with. A redelivery of the same webhook
/// (same nonce, same body) passes; the same nonce with another body is a replayed signature
/// carrying a forged payload, which V2 alone cannot detect. In memory: a restart (or another
/// node) starts empty, so this narrows the replay window rather than closing it.
#[derive(Debug, Default)]
struct ReplayGuard {
    inner: Mutex<ReplayState>,
}

#[derive(Debug, Default)]
struct ReplayState {
    seen: HashMap<String, ([u8; 32], i64)>,
    order: VecDeque<(String, i64)>,
}

impl ReplayGuard {
    fn check(&self, version: &str, nonce: &str, req: &WebhookRequest<'_>) -> Result<(), String> {
        let mut h = Sha256::new();
        h.update(req.query.as_bytes());
        h.update([0]);
        h.update(req.body);
        let digest: [u8; 32] = h.finalize().into();
        let key = format!("{version}:{nonce}");
        let now = now_ms();
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((k, at)) = st.order.front().cloned() {
            if now - at < NONCE_TTL_MS && st.order.len() < NONCE_CAPACITY {
                break;
            }
            st.order.pop_front();
            if st.seen.get(&k).is_some_and(|(_, t)| *t == at) {
                st.seen.remove(&k);
            }
        }
        match st.seen.get(&key) {
            Some((d, _)) if *d != digest => Err(format!(
                "{version} nonce reused with a different body (replayed signature)"
            )),
            Some(_) => Ok(()),
            None => {
                st.seen.insert(key.clone(), (digest, now));
                st.order.push_back((key, now));
                Ok(())
            }
        }
    }
}

// ---- send answers ----

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading Plivo's answer failed: {e}"))?
    {
        let room = MAX_RESPONSE_BYTES - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::InboundKind;
    use crate::respondio::wire::{Attachment, AttachmentKind, StatusValue};
    use crate::simulators::plivo::{PlivoFault, PlivoSim, PlivoSimConfig};
    use axum::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
    use std::time::Duration;

    const AUTH_ID: &str = "MAXXXXXXXXXXXXXXXXXX";
    const FORM: &str = "application/x-www-form-urlencoded";

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/plivo/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
            .trim_end()
            .to_string()
    }

    fn vectors() -> Value {
        serde_json::from_str(&fixture("signatures.json")).unwrap()
    }

    fn token() -> String {
        vectors()["auth_token"].as_str().unwrap().to_string()
    }

    fn config(api_base: &str) -> PlivoConfig {
        PlivoConfig {
            auth_id: AUTH_ID.into(),
            auth_token: Secret::new(token()),
            main_auth_token: None,
            src: Some("+14155550199".into()),
            powerpack_uuid: None,
            api_base: api_base.into(),
            rate_limit: 10,
            mms: false,
        }
    }

    fn env(public_url: &str) -> ProviderEnv {
        ProviderEnv {
            channel: "plivo".into(),
            public_url: public_url.into(),
            client: reqwest::Client::new(),
        }
    }

    fn provider_with(cfg: PlivoConfig, id_type: IdType) -> Plivo {
        Plivo::new(cfg, id_type, env("https://gw.example.com"))
    }

    fn provider(api_base: &str) -> Plivo {
        provider_with(config(api_base), IdType::Phone)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(FORM));
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn with_req<T>(
        url: &str,
        h: &HeaderMap,
        body: &str,
        f: impl FnOnce(&WebhookRequest<'_>) -> T,
    ) -> T {
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        let req = WebhookRequest {
            query,
            headers: h,
            body: body.as_bytes(),
            public_url: url,
        };
        f(&req)
    }

    #[test]
    fn config_defaults_and_problems() {
        let cfg: PlivoConfig = serde_json::from_value(
            json!({"auth_id": AUTH_ID, "auth_token": "t", "src": "14155550199"}),
        )
        .unwrap();
        assert_eq!(cfg.api_base, "https://api.plivo.com");
        assert_eq!(cfg.rate_limit, 10);
        assert!(!cfg.mms);
        assert!(cfg.problems("channel[0].plivo").is_empty());
        assert!(!format!("{cfg:?}").contains("\"t\""));
        let base = |extra: Value| {
            let mut v = json!({"auth_id": AUTH_ID, "auth_token": "t", "src": "14155550199"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let cases: Vec<(&str, Value)> = vec![
            ("auth_id", base(json!({"auth_id": ""}))),
            ("auth_id", base(json!({"auth_id": "MA/../x"}))),
            ("auth_token", base(json!({"auth_token": ""}))),
            ("main_auth_token", base(json!({"main_auth_token": ""}))),
            ("src", json!({"auth_id": AUTH_ID, "auth_token": "t"})),
            ("src", base(json!({"src": "+0123"}))),
            ("src", base(json!({"src": "Shop-Alerts!"}))),
            ("powerpack_uuid", base(json!({"powerpack_uuid": "pp-1"}))),
            ("api_base", base(json!({"api_base": "api.plivo.com"}))),
            ("rate_limit", base(json!({"rate_limit": 0}))),
        ];
        for (key, v) in cases {
            let cfg: PlivoConfig = serde_json::from_value(v.clone()).unwrap();
            let p = cfg.problems("channel[0].plivo");
            assert_eq!(p.len(), 1, "{v}: {p:?}");
            assert_eq!(p[0].0, format!("channel[0].plivo.{key}"), "{v}");
        }
        for ok in [
            json!({"auth_id": AUTH_ID, "auth_token": "t", "powerpack_uuid": "d1c5e5"}),
            base(json!({"src": "ShopAlerts"})),
            base(json!({"src": "+14155550199"})),
        ] {
            let cfg: PlivoConfig = serde_json::from_value(ok.clone()).unwrap();
            assert!(cfg.problems("p").is_empty(), "{ok}");
        }
    }

    #[test]
    fn signatures_match_independently_computed_vectors() {
        let v = vectors();
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap().to_string();
        let key = Secret::new(token());
        let url = s("/url");
        let body = s("/body");
        assert_eq!(
            signature_v2(&key, &url, &s("/v2/nonce")),
            s("/v2/signature")
        );
        // V2 ignores the query string.
        assert_eq!(
            signature_v2(&key, &format!("{url}?x=1"), &s("/v2/nonce")),
            s("/v2/signature")
        );
        let h = headers(&[]);
        let v3 = with_req(&url, &h, &body, |r| signature_v3(&key, r, &s("/v3/nonce")));
        assert_eq!(v3, s("/v3/signature"));
        let with_query = format!("{url}?{}", s("/v3_with_query/query"));
        let v3q = with_req(&with_query, &h, &body, |r| {
            signature_v3(&key, r, &s("/v3_with_query/nonce"))
        });
        assert_eq!(v3q, s("/v3_with_query/signature"));
        let get = format!("{url}?{}", s("/v3_get/query"));
        let v3g = with_req(&get, &h, "", |r| signature_v3(&key, r, &s("/v3_get/nonce")));
        assert_eq!(v3g, s("/v3_get/signature"));
    }

    #[test]
    fn authenticate_table() {
        let v = vectors();
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap().to_string();
        let (url, body) = (s("/url"), s("/body"));
        let (v2, v2n) = (s("/v2/signature"), s("/v2/nonce"));
        let (v3, v3n) = (s("/v3/signature"), s("/v3/nonce"));
        let other = Secret::new("another-token");
        let wrong_v2 = signature_v2(&other, &url, &v2n);
        let multi = format!("{wrong_v2}, {v3}");
        let main = Secret::new("main-account-token");
        let ma_v2 = signature_v2(&main, &url, "555");
        type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, bool, bool);
        let cases: Vec<Row> = vec![
            (
                "v2",
                vec![
                    ("X-Plivo-Signature-V2", &v2),
                    ("X-Plivo-Signature-V2-Nonce", &v2n),
                ],
                &url,
                false,
                true,
            ),
            (
                "v3",
                vec![
                    ("X-Plivo-Signature-V3", &v3),
                    ("X-Plivo-Signature-V3-Nonce", &v3n),
                ],
                &url,
                false,
                true,
            ),
            (
                "v3 among several",
                vec![
                    ("X-Plivo-Signature-V3", &multi),
                    ("X-Plivo-Signature-V3-Nonce", &v3n),
                ],
                &url,
                false,
                true,
            ),
            (
                "both",
                vec![
                    ("X-Plivo-Signature-V2", &v2),
                    ("X-Plivo-Signature-V2-Nonce", &v2n),
                    ("X-Plivo-Signature-V3", &v3),
                    ("X-Plivo-Signature-V3-Nonce", &v3n),
                ],
                &url,
                false,
                true,
            ),
            (
                "bad v3 with good v2 is refused",
                vec![
                    ("X-Plivo-Signature-V2", &v2),
                    ("X-Plivo-Signature-V2-Nonce", &v2n),
                    ("X-Plivo-Signature-V3", &wrong_v2),
                    ("X-Plivo-Signature-V3-Nonce", &v3n),
                ],
                &url,
                false,
                false,
            ),
            (
                "v2 signed with another token",
                vec![
                    ("X-Plivo-Signature-V2", &wrong_v2),
                    ("X-Plivo-Signature-V2-Nonce", &v2n),
                ],
                &url,
                false,
                false,
            ),
            (
                "v2 with another nonce",
                vec![
                    ("X-Plivo-Signature-V2", &v2),
                    ("X-Plivo-Signature-V2-Nonce", "1"),
                ],
                &url,
                false,
                false,
            ),
            (
                "v2 without nonce",
                vec![("X-Plivo-Signature-V2", &v2)],
                &url,
                false,
                false,
            ),
            (
                "v2 for another path",
                vec![
                    ("X-Plivo-Signature-V2", &v2),
                    ("X-Plivo-Signature-V2-Nonce", &v2n),
                ],
                "https://gw.example.com/channels/plivo/status",
                false,
                false,
            ),
            (
                "v3 over a changed body",
                vec![
                    ("X-Plivo-Signature-V3", &v3),
                    ("X-Plivo-Signature-V3-Nonce", &v3n),
                ],
                &url,
                true,
                false,
            ),
            ("no signature", vec![], &url, false, false),
            (
                "main-account v2 without main token",
                vec![
                    ("X-Plivo-Signature-Ma-V2", &ma_v2),
                    ("X-Plivo-Signature-V2", "x"),
                    ("X-Plivo-Signature-V2-Nonce", "555"),
                ],
                &url,
                false,
                false,
            ),
        ];
        for (name, hs, url, tamper, ok) in cases {
            // A fresh provider per row: the replay guard is per provider.
            let p = provider("http://x");
            let h = headers(&hs);
            let b = if tamper {
                body.replace("Hello", "Hullo")
            } else {
                body.clone()
            };
            let res = with_req(url, &h, &b, |r| p.authenticate(r));
            assert_eq!(res.is_ok(), ok, "{name}: {res:?}");
            if let Err(reason) = res {
                assert!(!reason.contains(&token()), "{name}");
            }
        }
        // With the main token configured, its signature is accepted.
        let mut cfg = config("http://x");
        cfg.main_auth_token = Some(main);
        let p = provider_with(cfg, IdType::Phone);
        let h = headers(&[
            ("X-Plivo-Signature-Ma-V2", &ma_v2),
            ("X-Plivo-Signature-V2", "x"),
            ("X-Plivo-Signature-V2-Nonce", "555"),
        ]);
        assert!(with_req(&url, &h, &body, |r| p.authenticate(r)).is_ok());
    }

    #[test]
    fn bad_signature_fixtures_are_refused() {
        let v = vectors();
        let url = v["url"].as_str().unwrap();
        let body = v["body"].as_str().unwrap();
        let bad: Value = serde_json::from_str(&fixture("bad_signatures.json")).unwrap();
        let cases = bad["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let pairs: Vec<(&str, &str)> = case["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                .collect();
            let p = provider("http://x");
            let res = with_req(url, &headers(&pairs), body, |r| p.authenticate(r));
            assert!(res.is_err(), "{name} was accepted");
        }
    }

    #[test]
    fn a_v2_nonce_is_accepted_again_only_with_the_same_body() {
        let v = vectors();
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap().to_string();
        let p = provider("http://x");
        let h = headers(&[
            ("X-Plivo-Signature-V2", &s("/v2/signature")),
            ("X-Plivo-Signature-V2-Nonce", &s("/v2/nonce")),
        ]);
        let body = s("/body");
        let url = s("/url");
        assert!(with_req(&url, &h, &body, |r| p.authenticate(r)).is_ok());
        // Plivo's redelivery of the same webhook.
        assert!(with_req(&url, &h, &body, |r| p.authenticate(r)).is_ok());
        // The captured headers on a forged body.
        let forged = body.replace("Hello+there", "send+me+your+code");
        let err = with_req(&url, &h, &forged, |r| p.authenticate(r)).unwrap_err();
        assert!(err.contains("nonce reused"), "{err}");
    }

    #[test]
    fn inbound_table() {
        type Want =
            Result<Vec<(&'static str, &'static str, Message, Option<&'static str>)>, &'static str>;
        let text = |t: &str| Message::Text { text: t.into() };
        let media = |kind, url: &str, desc: Option<&str>| Message::Attachment {
            attachment: Attachment {
                kind,
                url: url.into(),
                file_name: None,
                description: desc.map(str::to_string),
            },
        };
        let m0 = "https://media.plivo.com/Account/MAXXXXXXXXXXXXXXXXXX/Message/0936ec98-7c4c-11e4-9bd8-22000afa12b9/Media/a1";
        let m1 = "https://media.plivo.com/Account/MAXXXXXXXXXXXXXXXXXX/Message/0936ec98-7c4c-11e4-9bd8-22000afa12b9/Media/b2.mp4";
        let c3 = "https://media.plivo.com/Account/MAXXXXXXXXXXXXXXXXXX/Message/5b1c7e2a-7c4c-11e4-9bd8-22000afa12b9/Media/c3";
        let cases: Vec<(&str, Want)> = vec![
            (
                "inbound_sms.form",
                Ok(vec![(
                    "7a242edc-2f57-11e7-98c9-06ab0bf64327",
                    "+4795961111",
                    text("Msg"),
                    None,
                )]),
            ),
            (
                "inbound_optout.form",
                Ok(vec![(
                    "2c5ef7a4-1d0e-11ee-8c1f-0242ac120002",
                    "+14155550100",
                    text("STOP"),
                    None,
                )]),
            ),
            (
                "inbound_mms.form",
                Ok(vec![
                    (
                        "0936ec98-7c4c-11e4-9bd8-22000afa12b9:media0",
                        "+14155550100",
                        media(AttachmentKind::Image, m0, Some("Look at these")),
                        Some(m0),
                    ),
                    (
                        "0936ec98-7c4c-11e4-9bd8-22000afa12b9:media1",
                        "+14155550100",
                        media(AttachmentKind::Video, m1, None),
                        Some(m1),
                    ),
                ]),
            ),
            (
                "inbound_mms_one_based.form",
                Ok(vec![(
                    "5b1c7e2a-7c4c-11e4-9bd8-22000afa12b9:media1",
                    "+14155550100",
                    media(AttachmentKind::Image, c3, None),
                    Some(c3),
                )]),
            ),
            ("inbound_missing_uuid.form", Err("no MessageUUID")),
            ("inbound_bad_from.form", Err("not a phone number")),
            ("inbound_empty_text.form", Err("no Text and no media")),
            ("inbound_json.json", Err("Plivo posts form-encoded")),
        ];
        let p = provider("http://x");
        for (name, want) in cases {
            let h = headers(&[]);
            let got = with_req(
                "https://gw.example.com/channels/plivo/inbound",
                &h,
                &fixture(name),
                |r| p.parse_inbound(r),
            );
            match (got, want) {
                (Ok(events), Ok(want)) => {
                    assert_eq!(events.len(), want.len(), "{name}");
                    for (e, (key, contact, message, source)) in events.iter().zip(want) {
                        assert_eq!(e.dedupe_key, key, "{name}");
                        assert_eq!(e.contact_id, contact, "{name}");
                        assert_eq!(e.kind, InboundKind::Message, "{name}");
                        assert_eq!(e.message, message, "{name}");
                        assert_eq!(
                            e.media.as_ref().map(|m| m.source.as_str()),
                            source,
                            "{name}"
                        );
                        assert_eq!(
                            e.contact.as_ref().and_then(|c| c.phone.as_deref()),
                            Some(contact),
                            "{name}"
                        );
                    }
                }
                (Err(e), Err(want)) => assert!(e.contains(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        // A GET message_url: the fields are the query string.
        let h = headers(&[]);
        let url = format!(
            "https://gw.example.com/channels/plivo/inbound?{}",
            fixture("inbound_sms.form")
        );
        let ev = with_req(&url, &h, "", |r| p.parse_inbound(r)).unwrap();
        assert_eq!(ev[0].dedupe_key, "7a242edc-2f57-11e7-98c9-06ab0bf64327");
        // Custom ids carry Plivo's bare digits and no phone in the profile.
        let custom = provider_with(config("http://x"), IdType::Custom);
        let ev = with_req(
            "https://gw.example.com/x",
            &h,
            &fixture("inbound_sms.form"),
            |r| custom.parse_inbound(r),
        )
        .unwrap();
        assert_eq!(ev[0].contact_id, "4795961111");
        assert_eq!(ev[0].contact, None);
    }

    #[test]
    fn receipt_table() {
        use StatusValue::*;
        type Row = (
            &'static str,
            Result<
                (
                    &'static str,
                    &'static str,
                    Option<StatusValue>,
                    Option<&'static str>,
                ),
                &'static str,
            >,
        );
        let cases: Vec<Row> = vec![
            (
                "status_queued.form",
                Ok((
                    "83876bdb-2033-4876-bfaf-0ff8693705af:queued",
                    "83876bdb-2033-4876-bfaf-0ff8693705af",
                    None,
                    None,
                )),
            ),
            (
                "status_sent.form",
                Ok((
                    "83876bdb-2033-4876-bfaf-0ff8693705af:sent",
                    "83876bdb-2033-4876-bfaf-0ff8693705af",
                    Some(Sent),
                    None,
                )),
            ),
            (
                "status_delivered.form",
                Ok((
                    "83876bdb-2033-4876-bfaf-0ff8693705af:delivered",
                    "83876bdb-2033-4876-bfaf-0ff8693705af",
                    Some(Delivered),
                    None,
                )),
            ),
            (
                "status_undelivered_spam.form",
                Ok((
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b0:undelivered",
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b0",
                    Some(Failed),
                    Some("Spam detected (Plivo undelivered, ErrorCode 30)"),
                )),
            ),
            (
                "status_failed_other_code.form",
                Ok((
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b1:failed",
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b1",
                    Some(Failed),
                    Some("Plivo failed, ErrorCode 900"),
                )),
            ),
            (
                "status_rejected_no_code.form",
                Ok((
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b2:rejected",
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b2",
                    Some(Failed),
                    Some("Plivo rejected"),
                )),
            ),
            (
                "status_read.form",
                Ok((
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b3:read",
                    "4f1a2b3c-2033-4876-bfaf-0ff8693705b3",
                    Some(Read),
                    None,
                )),
            ),
            (
                "status_second_part.form",
                Ok((
                    "9d9d9d9d-2033-4876-bfaf-0ff8693705c2:delivered",
                    "9d9d9d9d-2033-4876-bfaf-0ff8693705c1",
                    Some(Delivered),
                    None,
                )),
            ),
            ("status_missing_uuid.form", Err("no MessageUUID")),
            ("status_missing_status.form", Err("no Status")),
        ];
        let p = provider("http://x");
        for (name, want) in cases {
            let h = headers(&[]);
            let got = with_req(
                "https://gw.example.com/channels/plivo/status",
                &h,
                &fixture(name),
                |r| p.parse_receipts(r),
            );
            match (got, want) {
                (Ok(rs), Ok((key, pid, status, reason))) => {
                    assert_eq!(rs.len(), 1, "{name}");
                    assert_eq!(rs[0].dedupe_key, key, "{name}");
                    assert_eq!(rs[0].provider_id, pid, "{name}");
                    assert_eq!(rs[0].status, status, "{name}");
                    assert_eq!(rs[0].reason.as_deref(), reason, "{name}");
                }
                (Err(e), Err(want)) => assert!(e.contains(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn build_send_table() {
        let image = Message::Attachment {
            attachment: Attachment {
                kind: AttachmentKind::Image,
                url: "https://cdn.example.com/a.jpg".into(),
                file_name: None,
                description: Some("Our shoe".into()),
            },
        };
        let quick = Message::QuickReply {
            title: Some("Pick".into()),
            replies: vec!["A".into(), "B".into()],
        };
        let status = "https://gw.example.com/channels/plivo/status";
        let mut mms = config("http://x");
        mms.mms = true;
        let mut pp = config("http://x");
        pp.powerpack_uuid = Some("d1c5e5-pp".into());
        pp.src = None;
        let cases: Vec<(&str, PlivoConfig, Message, &str, Value)> = vec![
            (
                "sms",
                config("http://x"),
                Message::Text {
                    text: "Hello".into(),
                },
                "+14155550100",
                json!({"src": "14155550199", "dst": "14155550100", "type": "sms", "text": "Hello", "url": status, "method": "POST"}),
            ),
            (
                "attachment as link",
                config("http://x"),
                image.clone(),
                "14155550100",
                json!({"src": "14155550199", "dst": "14155550100", "type": "sms", "text": "Our shoe\nhttps://cdn.example.com/a.jpg", "url": status, "method": "POST"}),
            ),
            (
                "attachment as mms",
                mms,
                image,
                "+14155550100",
                json!({"src": "14155550199", "dst": "14155550100", "type": "mms", "media_urls": ["https://cdn.example.com/a.jpg"], "text": "Our shoe", "url": status, "method": "POST"}),
            ),
            (
                "quick reply as text, powerpack",
                pp,
                quick,
                "+14155550100",
                json!({"powerpack_uuid": "d1c5e5-pp", "dst": "14155550100", "type": "sms", "text": "Pick\n1. A\n2. B", "url": status, "method": "POST"}),
            ),
        ];
        for (name, cfg, m, contact, want) in cases {
            let p = provider_with(cfg, IdType::Phone);
            let got = p
                .build_send(&SendRequest {
                    mid: "m",
                    contact_id: contact,
                    message: &m,
                })
                .unwrap();
            assert_eq!(got, want, "{name}");
        }
        let p = provider("http://x");
        let err = p
            .build_send(&SendRequest {
                mid: "m",
                contact_id: "g123",
                message: &Message::Text { text: "x".into() },
            })
            .unwrap_err();
        assert!(matches!(err, SendError::Permanent(_)), "{err:?}");
    }

    fn kind_of(r: &Result<Accepted, SendError>) -> String {
        match r {
            Ok(a) => format!("ok {}", a.provider_id),
            Err(SendError::Ambiguous(_)) => "ambiguous".into(),
            Err(SendError::Unsent(_)) => "unsent".into(),
            Err(SendError::Rotated(_)) => "rotated".into(),
            Err(SendError::Permanent(r)) => format!("permanent {r}"),
            Err(SendError::ChannelFault(_)) => "channel".into(),
            Err(SendError::Throttled {
                retry_after: Some(d),
                ..
            }) => format!("throttled {}s", d.as_secs()),
            Err(SendError::Throttled {
                retry_after: None, ..
            }) => "throttled".into(),
        }
    }

    #[test]
    fn classify_table() {
        let f = |n: &str| Ok(fixture(n).into_bytes());
        type Body = Result<Vec<u8>, String>;
        let cases: Vec<(&str, u16, Option<u64>, Body, &str)> = vec![
            (
                "queued",
                202,
                None,
                f("send_success.json"),
                "ok db3ce55a-7f1d-11e1-8ea7-1231380bc196",
            ),
            (
                "no uuid",
                202,
                None,
                f("send_success_no_uuid.json"),
                "ambiguous",
            ),
            ("not json", 202, None, Ok(b"<html>".to_vec()), "ambiguous"),
            ("body lost", 202, None, Err("reset".into()), "ambiguous"),
            (
                "invalid dst",
                400,
                None,
                f("send_error_invalid_dst.json"),
                "permanent Plivo refused the message (HTTP 400): invalid dst parameter",
            ),
            (
                "field errors",
                400,
                None,
                f("send_error_field_object.json"),
                "permanent Plivo refused the message (HTTP 400): {\"text\":[\"text exceeds the maximum of 1600 characters\"]}",
            ),
            (
                "no credit",
                400,
                None,
                f("send_error_credit.json"),
                "channel",
            ),
            (
                "unauthorized",
                401,
                None,
                f("send_error_unauthorized.json"),
                "channel",
            ),
            ("wrong auth id path", 404, None, Ok(Vec::new()), "channel"),
            ("throttled", 429, Some(4), Ok(Vec::new()), "throttled 4s"),
            (
                "throttled, no header",
                429,
                None,
                Ok(Vec::new()),
                "throttled",
            ),
            ("redirect", 301, None, Ok(Vec::new()), "channel"),
            ("server error", 500, None, Ok(Vec::new()), "ambiguous"),
        ];
        for (name, status, ra, body, want) in cases {
            let got = classify(status, ra.map(Duration::from_secs), body);
            assert_eq!(kind_of(&got), want, "{name}");
        }
    }

    // ---- against the stand-in ----

    async fn start_sim() -> (PlivoSim, String) {
        let sim = PlivoSim::new(PlivoSimConfig {
            auth_id: AUTH_ID.into(),
            auth_token: token(),
            ..PlivoSimConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener));
        (sim, base)
    }

    async fn send(p: &Plivo, m: &Message) -> Result<Accepted, SendError> {
        p.send(SendRequest {
            mid: "01HZXMID",
            contact_id: "+14155550100",
            message: m,
        })
        .await
    }

    #[tokio::test]
    async fn sends_through_the_stand_in_and_types_its_faults() {
        let (sim, base) = start_sim().await;
        let p = provider(&base);
        let ok = send(
            &p,
            &Message::Text {
                text: "Hello".into(),
            },
        )
        .await
        .unwrap();
        let call = &sim.calls()[0];
        assert_eq!(
            (call.status, call.message_uuid.as_deref()),
            (202, Some(ok.provider_id.as_str()))
        );
        assert_eq!(call.body["dst"], "14155550100");
        assert_eq!(
            call.body["url"],
            "https://gw.example.com/channels/plivo/status"
        );
        let cases: Vec<(PlivoFault, &str)> = vec![
            (PlivoFault::ServerError(503), "ambiguous"),
            (
                PlivoFault::Throttle {
                    retry_after: Some(5),
                },
                "throttled 5s",
            ),
            (PlivoFault::Unauthorized, "channel"),
            (
                PlivoFault::BadRequest("invalid dst parameter".into()),
                "permanent Plivo refused the message (HTTP 400): invalid dst parameter",
            ),
            (PlivoFault::DropConnection, "ambiguous"),
        ];
        for (fault, want) in cases {
            let name = format!("{fault:?}");
            sim.push_fault(fault);
            assert_eq!(
                kind_of(&send(&p, &Message::Text { text: "x".into() }).await),
                want,
                "{name}"
            );
        }
        let long = "x".repeat(crate::simulators::plivo::MAX_TEXT_CHARS + 1);
        assert!(kind_of(&send(&p, &Message::Text { text: long }).await).contains("1600"));
        assert!(
            send(
                &p,
                &Message::Text {
                    text: "again".into()
                }
            )
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn wrong_credentials_are_a_channel_fault() {
        let (_sim, base) = start_sim().await;
        let mut cfg = config(&base);
        cfg.auth_token = Secret::new("rotated-away");
        let p = provider_with(cfg, IdType::Phone);
        let err = send(&p, &Message::Text { text: "x".into() })
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::ChannelFault(_)), "{err:?}");
        assert!(!err.reason().contains("rotated-away"));
    }

    #[tokio::test]
    async fn media_credentials_go_only_to_plivo() {
        let p = provider("https://api.plivo.com");
        let Ok(fetch) = p
            .resolve_media("https://media.plivo.com/Account/MAX/Message/u/Media/a1")
            .await
        else {
            panic!("a Plivo media URL resolves");
        };
        assert_eq!(fetch.headers.len(), 1);
        let (name, value) = &fetch.headers[0];
        assert_eq!(name, "Authorization");
        let want = format!("Basic {}", B64.encode(format!("{AUTH_ID}:{}", token())));
        assert!(value.matches(&want));
        let Ok(fetch) = p
            .resolve_media("https://evil.example.com/plivo.com/a1")
            .await
        else {
            panic!("other URLs resolve too, without credentials");
        };
        assert!(fetch.headers.is_empty());
        assert!(p.resolve_media("file:///etc/passwd").await.is_err());
    }
}
