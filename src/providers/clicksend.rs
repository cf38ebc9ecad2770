//! ClickSend SMS (REST v3), shared/spec/providers.md §1.
//!
//! - Send: `POST {api_base}/v3/sms/send` (JSON, HTTP Basic `username:api_key`); attachments
//!   go through `POST /v3/mms/send` when `mms` is on, otherwise their URL rides in the text.
//! - Inbound: ClickSend pushes form-urlencoded (default), JSON, or a GET query string.
//! - Receipts: pushed like inbound; `status_code` is the field to trust (§1.5).
//! - Webhooks are unsigned (§1.6), so the URL we give ClickSend carries `?secret=...`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Accepted, InboundEvent, Provider, Receipt, SendError, SendRequest, WebhookRequest,
    classify_transport_error, parse_retry_after,
};
use crate::respondio::wire::{Attachment, AttachmentKind, IdType, Message};
use crate::secret::Secret;
// Webhook auth, webhook reading and send-answer classification: pure, in the parser crate.
use rio_parse::clicksend as webhook;

/// We never need more of an answer than its JSON envelope; a bigger body is not ClickSend.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// ClickSend's MMS `subject` limit (SDK `MmsMessage`: "max 20 characters").
const MMS_SUBJECT_MAX: usize = 20;
/// Longest alphanumeric sender id carriers accept.
const ALPHA_SENDER_MAX: usize = 11;
/// Our name in ClickSend's `source` field (shows in their dashboard per message).
const SOURCE: &str = "rio-bridge";

fn default_api_base() -> String {
    "https://rest.clicksend.com".to_string()
}

fn default_rate_limit() -> u32 {
    10
}

/// `[channel.clicksend]` in the config file. Unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClickSendConfig {
    pub username: String,
    pub api_key: Secret,
    /// Sender: a dedicated number (E.164) or an alphanumeric id; `None` = ClickSend's default.
    pub from: Option<String>,
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Sends per second. ClickSend publishes no number (§1.8); 10/s is a polite default.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Send attachments as MMS (`/v3/mms/send`) instead of a link in the SMS text.
    #[serde(default)]
    pub mms: bool,
}

impl ClickSendConfig {
    /// Everything wrong with this config, as `(config key, problem)` pairs; `prefix` is where
    /// this table sits, e.g. `channel[0].clicksend`.
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |key: &str, problem: String| out.push((format!("{prefix}.{key}"), problem));
        if self.username.trim().is_empty() {
            add(
                "username",
                "is empty (your ClickSend account username)".into(),
            );
        }
        if self.api_key.is_empty() {
            add(
                "api_key",
                "is empty (Dashboard → Developers → API Credentials)".into(),
            );
        }
        if let Some(p) = api_base_problem(&self.api_base) {
            add("api_base", p);
        }
        if self.rate_limit == 0 {
            add("rate_limit", "must be at least 1 send per second".into());
        }
        if let Some(p) = self.from.as_deref().and_then(sender_problem) {
            add("from", p);
        }
        out
    }
}

pub(crate) fn api_base_problem(base: &str) -> Option<String> {
    let Ok(url) = url::Url::parse(base) else {
        return Some(format!("{base:?} is not a URL"));
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Some(format!("{base:?} must be an http(s) URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some(format!("{base:?} has no host"));
    }
    // Credentials go in the Authorization header; in the URL they would end up in logs.
    if !url.username().is_empty() || url.password().is_some() {
        return Some("must not contain credentials; use username and api_key".into());
    }
    None
}

fn sender_problem(from: &str) -> Option<String> {
    if from.starts_with('+') {
        return IdType::Phone
            .validate(from)
            .err()
            .map(|_| format!("{from:?} is not an E.164 number (+ then 7-15 digits)"));
    }
    let n = from.chars().count();
    if (1..=ALPHA_SENDER_MAX).contains(&n) && from.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(format!(
        "{from:?} is neither an E.164 number (+61411111111) nor an alphanumeric sender id of at most {ALPHA_SENDER_MAX} letters/digits"
    ))
}

/// The ClickSend provider of one channel.
#[derive(Debug)]
pub struct ClickSend {
    cfg: ClickSendConfig,
    client: reqwest::Client,
    webhook_secret: Secret,
}

impl ClickSend {
    /// `client` is the caller's: it carries the per-request timeout, and it should be built
    /// with `redirect::Policy::none()` — a redirected POST turns into a GET and would lose the
    /// message. Any 3xx that reaches us is reported as a channel fault (see `classify`).
    pub fn new(cfg: ClickSendConfig, webhook_secret: Secret, client: reqwest::Client) -> Self {
        ClickSend {
            cfg,
            client,
            webhook_secret,
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.api_base.trim_end_matches('/'))
    }

    /// Picks the endpoint and builds its JSON body.
    fn build_send(&self, req: &SendRequest<'_>) -> Result<(&'static str, Value), SendError> {
        // MMS carries pictures; video/audio/files fall back to a link in an SMS.
        if self.cfg.mms
            && let Message::Attachment { attachment } = req.message
            && attachment.kind == AttachmentKind::Image
        {
            return Ok(("/v3/mms/send", self.mms_body(req, attachment)));
        }
        let text = req.message.to_plain_text();
        if text.trim().is_empty() {
            return Err(SendError::Permanent(
                "message has no text to send as SMS".into(),
            ));
        }
        let mut msg = json!({
            "source": SOURCE,
            "to": req.contact_id,
            "body": text,
            "custom_string": req.mid,
        });
        if let Some(from) = &self.cfg.from {
            msg["from"] = json!(from);
        }
        Ok(("/v3/sms/send", json!({ "messages": [msg] })))
    }

    /// `/v3/mms/send`: the media URL is top-level; each message needs `body` and a `subject`
    /// of at most 20 characters (SDK `MmsMessage` marks both required). The spec (§1.9) says
    /// png/jpeg/bmp must first be converted via `/v3/uploads?convert=mms`; we send the URL
    /// as-is and let ClickSend's per-message status report a format it refuses.
    fn mms_body(&self, req: &SendRequest<'_>, a: &Attachment) -> Value {
        let subject: String = a
            .file_name
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or("Picture")
            .chars()
            .take(MMS_SUBJECT_MAX)
            .collect();
        let body = a
            .description
            .clone()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| subject.clone());
        let mut msg = json!({
            "source": SOURCE,
            "to": req.contact_id,
            "body": body,
            "subject": subject,
            "custom_string": req.mid,
        });
        if let Some(from) = &self.cfg.from {
            msg["from"] = json!(from);
        }
        json!({ "media_file": a.url, "messages": [msg] })
    }
}

#[async_trait]
impl Provider for ClickSend {
    fn kind(&self) -> &'static str {
        "clicksend"
    }

    fn rate_limit(&self) -> u32 {
        self.cfg.rate_limit
    }

    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), String> {
        webhook::authenticate(&self.webhook_secret, req)
    }

    fn parse_inbound(&self, req: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        webhook::parse_inbound(req)
    }

    fn parse_receipts(&self, req: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        webhook::parse_receipts(req)
    }

    async fn send(&self, req: SendRequest<'_>) -> Result<Accepted, SendError> {
        let (path, body) = self.build_send(&req)?;
        // Basic auth via reqwest marks the header sensitive; neither it nor the key is logged.
        let request = self
            .client
            .post(self.endpoint(path))
            .basic_auth(&self.cfg.username, Some(self.cfg.api_key.expose()))
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
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await;
        let result = webhook::classify(status, retry_after, body);
        tracing::debug!(
            provider = "clicksend",
            mid = req.mid,
            http_status = status,
            ok = result.is_ok(),
            "send answered"
        );
        result
    }
}

/// Reads at most `cap` bytes of a response body, chunk by chunk, so a misbehaving upstream
/// cannot make us buffer without bound. A truncated body simply fails to parse later.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading ClickSend's answer failed: {e}"))?
    {
        let room = cap - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::providers::InboundKind;
    use crate::respondio::wire::StatusValue;
    use crate::simulators::clicksend::{ClickSendSim, SimConfig, SimFault};
    use axum::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};

    const SECRET: &str = "s3cret-webhook-token";
    const FORM: &str = "application/x-www-form-urlencoded";
    const JSON: &str = "application/json";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/clicksend/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
            .trim_end()
            .to_string()
    }

    fn config(api_base: &str) -> ClickSendConfig {
        ClickSendConfig {
            username: "user".into(),
            api_key: Secret::new("key"),
            from: Some("+61411111111".into()),
            api_base: api_base.into(),
            rate_limit: 10,
            mms: false,
        }
    }

    fn provider(api_base: &str) -> ClickSend {
        ClickSend::new(
            config(api_base),
            Secret::new(SECRET),
            reqwest::Client::new(),
        )
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !content_type.is_empty() {
            h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        }
        h
    }

    /// Runs `f` against a webhook built from a query, content type and body.
    fn with_req<T>(
        query: &str,
        content_type: &str,
        body: &str,
        f: impl FnOnce(&WebhookRequest<'_>) -> T,
    ) -> T {
        let h = headers(content_type);
        let req = WebhookRequest {
            query,
            headers: &h,
            body: body.as_bytes(),
            public_url: "https://gw.test/inbound",
        };
        f(&req)
    }

    #[test]
    fn config_defaults_and_problems() {
        let cfg: ClickSendConfig =
            serde_json::from_value(json!({"username":"u","api_key":"k","unknown":1})).unwrap();
        assert_eq!(cfg.api_base, "https://rest.clicksend.com");
        assert_eq!(cfg.rate_limit, 10);
        assert!(!cfg.mms && cfg.from.is_none());
        assert!(cfg.problems("channel[0].clicksend").is_empty());
        assert!(
            !format!("{cfg:?}").contains("\"k\""),
            "api_key must not show in Debug"
        );

        let cases: &[(&str, Value)] = &[
            ("username", json!({"username":"","api_key":"k"})),
            ("api_key", json!({"username":"u","api_key":""})),
            (
                "api_base",
                json!({"username":"u","api_key":"k","api_base":"not a url"}),
            ),
            (
                "api_base",
                json!({"username":"u","api_key":"k","api_base":"ftp://x"}),
            ),
            (
                "api_base",
                json!({"username":"u","api_key":"k","api_base":"https://u:p@x"}),
            ),
            (
                "rate_limit",
                json!({"username":"u","api_key":"k","rate_limit":0}),
            ),
            ("from", json!({"username":"u","api_key":"k","from":"+0123"})),
            (
                "from",
                json!({"username":"u","api_key":"k","from":"TwelveChars1"}),
            ),
            (
                "from",
                json!({"username":"u","api_key":"k","from":"My-Shop"}),
            ),
            ("from", json!({"username":"u","api_key":"k","from":""})),
        ];
        for (key, v) in cases {
            let cfg: ClickSendConfig = serde_json::from_value(v.clone()).unwrap();
            let p = cfg.problems("channel[0].clicksend");
            assert_eq!(p.len(), 1, "{v}: {p:?}");
            assert_eq!(p[0].0, format!("channel[0].clicksend.{key}"), "{v}");
        }
        for ok in ["+61411111111", "MyShop", "ACME2024", "12345"] {
            assert!(sender_problem(ok).is_none(), "{ok}");
        }
    }

    #[test]
    fn authenticate_table() {
        let good = format!("secret={SECRET}");
        let cases: &[(&str, &str, &str, bool)] = &[
            ("ok", SECRET, &good, true),
            (
                "ok among other params",
                SECRET,
                &format!("a=1&secret={SECRET}&b=2"),
                true,
            ),
            ("wrong", SECRET, "secret=nope", false),
            ("prefix of the secret", SECRET, "secret=s3cret", false),
            ("missing", SECRET, "a=1", false),
            ("empty presented", SECRET, "secret=", false),
            ("empty config rejects", "", "secret=", false),
            ("empty config rejects anything", "", &good, false),
        ];
        for (name, configured, query, ok) in cases {
            let p = ClickSend::new(
                config("http://x"),
                Secret::new(*configured),
                reqwest::Client::new(),
            );
            let res = with_req(query, FORM, "", |r| p.authenticate(r));
            assert_eq!(res.is_ok(), *ok, "{name}: {res:?}");
            if let Err(reason) = res {
                assert!(!reason.is_empty() && !reason.contains(SECRET), "{name}");
            }
        }
    }

    struct InboundCase {
        name: &'static str,
        fixture: &'static str,
        content_type: &'static str,
        /// `true`: the fixture is the query string of a GET push (no body).
        as_query: bool,
        want: Result<(&'static str, &'static str, Message, i64), &'static str>,
    }

    #[test]
    fn inbound_table() {
        let text = |t: &str| Message::Text { text: t.into() };
        let cases = [
            InboundCase {
                name: "form push",
                fixture: "inbound.form",
                content_type: FORM,
                as_query: false,
                want: Ok((
                    "4C2E8D1A-7A3B-4F0E-9D55-2B8C1E0F7A11",
                    "+61422222222",
                    text("Thanks!"),
                    1_736_900_100_000,
                )),
            },
            InboundCase {
                name: "json push",
                fixture: "inbound.json",
                content_type: JSON,
                as_query: false,
                want: Ok((
                    "7D1E2F3A-0B4C-4D5E-8F60-718293A4B5C6",
                    "+61422222222",
                    text("Yes please, 2 boxes"),
                    1_736_900_200_000,
                )),
            },
            InboundCase {
                name: "json without content type",
                fixture: "inbound.json",
                content_type: "",
                as_query: false,
                want: Ok((
                    "7D1E2F3A-0B4C-4D5E-8F60-718293A4B5C6",
                    "+61422222222",
                    text("Yes please, 2 boxes"),
                    1_736_900_200_000,
                )),
            },
            InboundCase {
                name: "GET push (query string)",
                fixture: "inbound_get.txt",
                content_type: "",
                as_query: true,
                want: Ok((
                    "A1B2C3D4-0000-4000-8000-000000000001",
                    "+61422222222",
                    text("Call me back"),
                    1_736_900_300_000,
                )),
            },
            InboundCase {
                name: "legacy names only",
                fixture: "inbound_legacy.form",
                content_type: FORM,
                as_query: false,
                want: Ok((
                    "B2C3D4E5-0000-4000-8000-000000000002",
                    "+14155550100",
                    text("STOP"),
                    1_736_900_400_000,
                )),
            },
            InboundCase {
                name: "from without plus",
                fixture: "inbound_no_plus.form",
                content_type: FORM,
                as_query: false,
                want: Ok((
                    "C3D4E5F6-0000-4000-8000-000000000003",
                    "+639171234567",
                    text("hello world"),
                    1_736_900_500_000,
                )),
            },
            InboundCase {
                name: "mms (undocumented media field)",
                fixture: "inbound_mms.form",
                content_type: FORM,
                as_query: false,
                want: Ok((
                    "D4E5F6A7-0000-4000-8000-000000000004",
                    "+61422222222",
                    Message::Attachment {
                        attachment: Attachment {
                            kind: AttachmentKind::Image,
                            url: "https://mms.example.com/m/abc.jpg".into(),
                            file_name: None,
                            description: Some("Look at this".into()),
                        },
                    },
                    1_736_900_600_000,
                )),
            },
            InboundCase {
                name: "missing message_id",
                fixture: "inbound_missing_message_id.form",
                content_type: FORM,
                as_query: false,
                want: Err("message_id"),
            },
            InboundCase {
                name: "empty body",
                fixture: "inbound_empty_body.form",
                content_type: FORM,
                as_query: false,
                want: Err("empty body"),
            },
            InboundCase {
                name: "from is not a phone",
                fixture: "inbound_bad_from.form",
                content_type: FORM,
                as_query: false,
                want: Err("not a phone number"),
            },
            InboundCase {
                name: "broken json",
                fixture: "inbound_broken.json",
                content_type: JSON,
                as_query: false,
                want: Err("not valid JSON"),
            },
        ];
        let p = provider("http://x");
        for c in cases {
            let raw = fixture(c.fixture);
            let (query, body) = if c.as_query {
                (format!("secret={SECRET}&{raw}"), String::new())
            } else {
                (format!("secret={SECRET}"), raw)
            };
            let got = with_req(&query, c.content_type, &body, |r| p.parse_inbound(r));
            match (got, c.want) {
                (Ok(events), Ok((id, contact, message, ts))) => {
                    assert_eq!(events.len(), 1, "{}", c.name);
                    let e = &events[0];
                    assert_eq!(e.dedupe_key, id, "{}", c.name);
                    assert_eq!(e.provider_id, id, "{}", c.name);
                    assert_eq!(e.contact_id, contact, "{}", c.name);
                    assert_eq!(e.kind, InboundKind::Message, "{}", c.name);
                    assert_eq!(e.message, message, "{}", c.name);
                    assert_eq!(e.timestamp_ms, ts, "{}", c.name);
                    assert_eq!(
                        e.contact.as_ref().and_then(|c| c.phone.as_deref()),
                        Some(contact),
                        "{}",
                        c.name
                    );
                }
                (Err(e), Err(want)) => assert!(e.contains(want), "{}: {e}", c.name),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.name),
            }
        }
    }

    #[test]
    fn inbound_without_timestamp_is_now_and_empty_webhook_is_an_error() {
        let p = provider("http://x");
        let before = now_ms();
        let ev = with_req(
            "secret=x",
            FORM,
            "message_id=X1&from=%2B61422222222&body=hi",
            |r| p.parse_inbound(r),
        )
        .unwrap();
        assert!(ev[0].timestamp_ms >= before);
        let err = with_req("secret=x", FORM, "", |r| p.parse_inbound(r)).unwrap_err();
        assert!(err.contains("neither a body"), "{err}");
    }

    #[test]
    fn receipt_table() {
        use StatusValue::*;
        /// (fixture, content type, status, reason contains, dedupe key)
        type Row = (
            &'static str,
            &'static str,
            Option<StatusValue>,
            Option<&'static str>,
            &'static str,
        );
        let cases: &[Row] = &[
            (
                "receipt_200.form",
                FORM,
                Some(Sent),
                None,
                "BF7AD270-0DE2-418B-B606-71D527D9C1AE:200:1736900010",
            ),
            (
                "receipt_201.form",
                FORM,
                Some(Delivered),
                None,
                "BF7AD270-0DE2-418B-B606-71D527D9C1AE:201:1736900031",
            ),
            (
                "receipt_300.form",
                FORM,
                None,
                None,
                "BF7AD270-0DE2-418B-B606-71D527D9C1AE:300:1736900020",
            ),
            (
                "receipt_301.form",
                FORM,
                Some(Failed),
                Some("Unknown subscriber (error_code 8)"),
                "BF7AD270-0DE2-418B-B606-71D527D9C1AE:301:1736900040",
            ),
            (
                "receipt_200.json",
                JSON,
                Some(Sent),
                None,
                "E5F6A7B8-0000-4000-8000-000000000005:200:1736900050",
            ),
            (
                "receipt_201.json",
                JSON,
                Some(Delivered),
                None,
                "E5F6A7B8-0000-4000-8000-000000000005:201:1736900060",
            ),
            (
                "receipt_300.json",
                JSON,
                None,
                None,
                "E5F6A7B8-0000-4000-8000-000000000005:300:1736900055",
            ),
            (
                "receipt_301.json",
                JSON,
                Some(Failed),
                Some("Anti-spam rejection (error_code 19)"),
                "E5F6A7B8-0000-4000-8000-000000000005:301:1736900070",
            ),
            (
                "receipt_301_no_text.form",
                FORM,
                Some(Failed),
                Some("Failed"),
                "F6A7B8C9-0000-4000-8000-000000000006:301:1736900080",
            ),
            (
                "receipt_unknown_delivered.form",
                FORM,
                Some(Delivered),
                None,
                "F6A7B8C9-0000-4000-8000-000000000006:202:1736900090",
            ),
            (
                "receipt_unknown_other.form",
                FORM,
                None,
                None,
                "F6A7B8C9-0000-4000-8000-000000000006:250:1736900095",
            ),
        ];
        let p = provider("http://x");
        for (name, ct, status, reason, key) in cases {
            let body = fixture(name);
            let got = with_req("secret=x", ct, &body, |r| p.parse_receipts(r))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.len(), 1, "{name}");
            let r = &got[0];
            assert_eq!(r.status, *status, "{name}");
            assert_eq!(r.dedupe_key, *key, "{name}");
            assert_eq!(r.provider_id, key.split(':').next().unwrap(), "{name}");
            match reason {
                Some(want) => assert!(
                    r.reason.as_deref().unwrap_or("").contains(want),
                    "{name}: {:?}",
                    r.reason
                ),
                None => assert_eq!(r.reason, None, "{name}"),
            }
            let ts: i64 = key.rsplit(':').next().unwrap().parse().unwrap();
            assert_eq!(r.timestamp_ms, ts * 1000, "{name}");
        }
        let err = with_req(
            "secret=x",
            FORM,
            &fixture("receipt_missing_message_id.form"),
            |r| p.parse_receipts(r),
        )
        .unwrap_err();
        assert!(err.contains("message_id"), "{err}");
    }

    #[test]
    fn classify_table() {
        let ok = |b: &str| Ok(b.as_bytes().to_vec());
        let success = fixture("send_success.json");
        type Body = Result<Vec<u8>, String>;
        let cases: Vec<(&str, u16, Body, &str)> = vec![
            ("success", 200, ok(&success), "ok"),
            (
                "no id",
                200,
                ok(&fixture("send_success_no_id.json")),
                "ambiguous",
            ),
            ("not json", 200, ok("<html>"), "ambiguous"),
            ("body read failed", 200, Err("reset".into()), "ambiguous"),
            (
                "invalid recipient",
                200,
                ok(&fixture("send_invalid_recipient.json")),
                "permanent",
            ),
            (
                "insufficient credit",
                200,
                ok(&success.replace("\"SUCCESS\"}", "\"INSUFFICIENT_CREDIT\"}")),
                "channel",
            ),
            (
                "unknown status",
                200,
                ok(&success.replace("\"SUCCESS\"}", "\"COUNTRY_NOT_ENABLED\"}")),
                "permanent",
            ),
            ("redirect", 302, ok(""), "channel"),
            (
                "bad request",
                400,
                ok(
                    r#"{"http_code":400,"response_code":"BAD_REQUEST","response_msg":"to is invalid"}"#,
                ),
                "permanent",
            ),
            ("unauthorized", 401, ok(""), "channel"),
            ("forbidden", 403, ok(""), "channel"),
            ("throttled", 429, ok(""), "throttled"),
            ("server error", 500, ok(""), "ambiguous"),
            ("bad gateway", 502, Err("reset".into()), "ambiguous"),
        ];
        for (name, status, body, want) in cases {
            let got = webhook::classify(status, None, body);
            let kind = match &got {
                Ok(_) => "ok",
                Err(SendError::Ambiguous(_)) => "ambiguous",
                Err(SendError::Permanent(_)) => "permanent",
                Err(SendError::ChannelFault(_)) => "channel",
                Err(SendError::Throttled { .. }) => "throttled",
                Err(SendError::Unsent(_)) => "unsent",
                Err(SendError::Rotated(_)) => "rotated",
            };
            assert_eq!(kind, want, "{name}: {got:?}");
        }
    }

    // ---- send over loopback HTTP, against the stand-in and tiny one-answer servers ----

    async fn start_sim() -> (ClickSendSim, String) {
        let sim = ClickSendSim::new(SimConfig {
            username: "user".into(),
            api_key: "key".into(),
            receipt_url: None,
            receipt_delay_ms: 0,
            inbound_url: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener));
        (sim, base)
    }

    /// A server that answers every request with one fixed response.
    async fn fixed_server(status: u16, body: String) -> String {
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move {
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [(CONTENT_TYPE, JSON)],
                    body,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    fn text_msg(t: &str) -> Message {
        Message::Text { text: t.into() }
    }

    async fn send_text(p: &ClickSend) -> Result<Accepted, SendError> {
        let m = text_msg("Hi, your order shipped");
        p.send(SendRequest {
            mid: "01HZXMID",
            contact_id: "+61422222222",
            message: &m,
        })
        .await
    }

    #[tokio::test]
    async fn send_success_posts_documented_body() {
        let (sim, base) = start_sim().await;
        let got = send_text(&provider(&base)).await.unwrap();
        let sent = sim.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, 200);
        assert_eq!(sent[0].message_ids, vec![got.provider_id.clone()]);
        let m = &sent[0].body["messages"][0];
        assert_eq!(m["to"], "+61422222222");
        assert_eq!(m["body"], "Hi, your order shipped");
        assert_eq!(m["from"], "+61411111111");
        assert_eq!(m["custom_string"], "01HZXMID");
        assert_eq!(m["source"], "rio-bridge");
    }

    #[tokio::test]
    async fn send_classification_against_the_stand_in() {
        let (sim, base) = start_sim().await;
        let p = provider(&base);
        let cases: Vec<(SimFault, &str)> = vec![
            (SimFault::Http5xx(503), "ambiguous"),
            (
                SimFault::Throttle {
                    retry_after: Some(7),
                },
                "throttled 7s",
            ),
            (SimFault::Throttle { retry_after: None }, "throttled"),
            (SimFault::Unauthorized, "channel"),
            (
                SimFault::MessageStatus("INVALID_RECIPIENT".into()),
                "permanent INVALID_RECIPIENT",
            ),
            (
                SimFault::MessageStatus("INSUFFICIENT_CREDIT".into()),
                "channel",
            ),
            (SimFault::DropConnection, "ambiguous"),
        ];
        for (fault, want) in cases {
            let name = format!("{fault:?}");
            sim.push_fault(fault);
            let got = send_text(&p).await;
            let kind = match &got {
                Ok(_) => "ok".to_string(),
                Err(SendError::Ambiguous(_)) => "ambiguous".into(),
                Err(SendError::Permanent(r)) => {
                    format!("permanent {}", r.rsplit(' ').next().unwrap_or(""))
                }
                Err(SendError::ChannelFault(_)) => "channel".into(),
                Err(SendError::Throttled {
                    retry_after: Some(d),
                    ..
                }) => format!("throttled {}s", d.as_secs()),
                Err(SendError::Throttled {
                    retry_after: None, ..
                }) => "throttled".into(),
                Err(SendError::Unsent(_)) => "unsent".into(),
                Err(SendError::Rotated(_)) => "rotated".into(),
            };
            assert_eq!(kind, want, "{name}: {got:?}");
        }
        // The queue is drained: the next send goes through.
        assert!(send_text(&p).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_credentials_are_a_channel_fault() {
        let (_sim, base) = start_sim().await;
        let mut cfg = config(&base);
        cfg.api_key = Secret::new("wrong");
        let p = ClickSend::new(cfg, Secret::new(SECRET), reqwest::Client::new());
        let err = send_text(&p).await.unwrap_err();
        assert!(
            matches!(&err, SendError::ChannelFault(r) if r.contains("rejected credentials")),
            "{err:?}"
        );
        assert!(!err.reason().contains("wrong"));
    }

    #[tokio::test]
    async fn send_200_without_id_is_ambiguous() {
        let base = fixed_server(200, fixture("send_success_no_id.json")).await;
        let err = send_text(&provider(&base)).await.unwrap_err();
        assert!(matches!(err, SendError::Ambiguous(_)), "{err:?}");
    }

    #[tokio::test]
    async fn send_400_carries_response_msg() {
        let body = r#"{"http_code":400,"response_code":"BAD_REQUEST","response_msg":"Invalid to number."}"#;
        let base = fixed_server(400, body.into()).await;
        let err = send_text(&provider(&base)).await.unwrap_err();
        assert!(
            matches!(&err, SendError::Permanent(r) if r.contains("Invalid to number.")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn oversized_answer_is_capped_and_ambiguous() {
        // A valid success answer, but padded past the cap: reading stops, so it cannot parse.
        let padded = format!(
            r#"{{"data":{{"messages":[{{"status":"SUCCESS","message_id":"X1"}}]}},"pad":"{}"}}"#,
            "x".repeat(MAX_RESPONSE_BYTES * 2)
        );
        let base = fixed_server(200, padded).await;
        let err = send_text(&provider(&base)).await.unwrap_err();
        assert!(matches!(err, SendError::Ambiguous(_)), "{err:?}");
    }

    #[tokio::test]
    async fn connection_refused_is_unsent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = send_text(&provider(&base)).await.unwrap_err();
        assert!(matches!(err, SendError::Unsent(_)), "{err:?}");
    }

    #[tokio::test]
    async fn rich_messages_degrade_to_text_and_mms_when_enabled() {
        let (sim, base) = start_sim().await;
        let image = Message::Attachment {
            attachment: Attachment {
                kind: AttachmentKind::Image,
                url: "https://cdn.example.com/p/shoe.jpg".into(),
                file_name: Some("a-very-long-file-name-for-mms.jpg".into()),
                description: Some("Our new shoe".into()),
            },
        };
        let quick = Message::QuickReply {
            title: Some("Pick".into()),
            replies: vec!["A".into(), "B".into()],
        };

        // mms off: the attachment URL rides in the SMS text.
        let p = provider(&base);
        for m in [&image, &quick] {
            p.send(SendRequest {
                mid: "m1",
                contact_id: "+61422222222",
                message: m,
            })
            .await
            .unwrap();
        }
        // mms on: pictures go to /v3/mms/send with a media_file and a ≤20-char subject.
        let mut cfg = config(&base);
        cfg.mms = true;
        let p = ClickSend::new(cfg, Secret::new(SECRET), reqwest::Client::new());
        p.send(SendRequest {
            mid: "m2",
            contact_id: "+61422222222",
            message: &image,
        })
        .await
        .unwrap();

        let sent = sim.sent();
        assert_eq!(
            sent[0].body["messages"][0]["body"],
            "Our new shoe\nhttps://cdn.example.com/p/shoe.jpg"
        );
        assert_eq!(sent[1].body["messages"][0]["body"], "Pick\n1. A\n2. B");
        assert_eq!(
            sent[2].body["media_file"],
            "https://cdn.example.com/p/shoe.jpg"
        );
        assert_eq!(sent[2].body["messages"][0]["body"], "Our new shoe");
        assert_eq!(
            sent[2].body["messages"][0]["subject"],
            "a-very-long-file-nam"
        );
        assert!(sent.iter().all(|a| a.status == 200));
    }
}
