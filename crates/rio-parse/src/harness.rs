//! The entry points of the fuzz targets (`fuzz/fuzz_targets/`), one function per target.
//!
//! They live here, not in the fuzz crate, so the stable test `tests/corpora.rs` replays the
//! committed corpora and every past crash through exactly the code the fuzzer ran. Each takes
//! arbitrary bytes, drives a reader the way the server does, and checks what must hold for
//! any input beyond "does not panic" (a parsed message survives the store's round trip, an
//! accepted send has an id, ...): a broken invariant panics, which is what the fuzzer finds.
//!
//! Webhook inputs are written like an HTTP request without its request line, so a corpus
//! file reads like what a provider sends (see [`webhook_parts`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::clock::plausible_ms;
use crate::generic::auth::WebhookAuth;
use crate::generic::config::{AuthConfig, HttpConfig};
use crate::generic::fields::payloads;
use crate::generic::response::ResponseMapping;
use crate::generic::template::{JsonTemplate, Scope, Template, Vars};
use crate::generic::webhook::{InboundMapping, ReceiptMapping};
use crate::provider::{Accepted, InboundEvent, Receipt, SendError, WebhookRequest};
use crate::secret::Secret;
use crate::wire::{Attachment, AttachmentKind, IdType, Message, OutboundRequest};

/// A fixed "now" for signature timestamps, so a replay behaves as the fuzz run did.
pub const NOW_S: i64 = 1_700_000_000;

/// The webhook secret of the fixed mappings; corpus files carry it as `?secret=`.
pub const WEBHOOK_SECRET: &str = "fuzz-webhook-secret-0123456789abcdef";

/// A webhook as written in a corpus file, owned.
pub struct WebhookParts {
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl WebhookParts {
    pub fn request(&self) -> WebhookRequest<'_> {
        WebhookRequest {
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
            public_url: "https://gw.example.com/channels/sms/inbound",
        }
    }
}

/// Splits a corpus file into a webhook: the first line is the query string (without `?`),
/// then `Name: value` header lines up to an empty line, then the body as raw bytes. Header
/// lines that are not valid HTTP headers are skipped (a server would never see them).
pub fn webhook_parts(data: &[u8]) -> WebhookParts {
    let (query, rest) = split_line(data);
    let mut headers = HeaderMap::new();
    let mut rest = rest.unwrap_or_default();
    loop {
        let (line, tail) = split_line(rest);
        rest = tail.unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && let Ok(name) = HeaderName::from_bytes(&line[..colon])
            && let Ok(value) = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
        {
            headers.append(name, value);
        }
        if tail.is_none() {
            break;
        }
    }
    WebhookParts {
        query: String::from_utf8_lossy(query).into_owned(),
        headers,
        body: rest.to_vec(),
    }
}

fn split_line(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// A send answer as written in a corpus file: the first line is the HTTP status (digits),
/// an optional second line `Retry-After: ...`, then the body.
pub fn answer_parts(data: &[u8]) -> (u16, Option<Duration>, &[u8]) {
    let (first, rest) = split_line(data);
    let status = std::str::from_utf8(first)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(200);
    let mut body = rest.unwrap_or_default();
    let mut retry_after = None;
    let (second, tail) = split_line(body);
    if let Some(v) = second.strip_prefix(b"Retry-After:") {
        retry_after = std::str::from_utf8(v)
            .ok()
            .and_then(crate::provider::parse_retry_after);
        body = tail.unwrap_or_default();
    }
    (status, retry_after, body)
}

/// respond.io's `/message` body: parse, then the store's round trip (serde to JSON text
/// and back) must give the same message, and a valid contactId must stay valid.
pub fn message_body(data: &[u8]) {
    let Ok(req) = OutboundRequest::parse(data) else {
        return;
    };
    let stored = serde_json::to_string(&req.message).expect("a parsed message serialises");
    let back: Message = serde_json::from_str(&stored).expect("a stored message reads back");
    assert_eq!(back, req.message, "store round trip changed the message");
    let again = Message::from_value(&serde_json::to_value(&req.message).unwrap())
        .expect("a parsed message parses again");
    assert_eq!(again, req.message);
    for id_type in [IdType::Phone, IdType::Custom] {
        let _ = id_type.validate(&req.contact_id);
    }
    let _ = req.message.to_plain_text();
}

fn check_inbound(events: &[InboundEvent]) {
    check_inbound_as(events, IdType::Phone);
}

/// [`check_inbound`] for a provider whose contact ids are of `id_type`.
fn check_inbound_as(events: &[InboundEvent], id_type: IdType) {
    for e in events {
        assert!(
            !e.dedupe_key.is_empty(),
            "inbound event without a dedupe key"
        );
        // "Absent or unreadable means now": never 1970 or before, never past year 9999.
        assert!(
            plausible_ms(e.timestamp_ms),
            "inbound timestamp {} ms",
            e.timestamp_ms
        );
        assert!(
            id_type.validate(&e.contact_id).is_ok(),
            "inbound contact {:?} is not a valid {id_type:?} id",
            e.contact_id
        );
        let stored = serde_json::to_string(&e.message).unwrap();
        let back: Message = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, e.message);
    }
}

fn check_receipts(receipts: &[Receipt]) {
    for r in receipts {
        assert!(!r.dedupe_key.is_empty(), "receipt without a dedupe key");
        assert!(!r.provider_id.is_empty(), "receipt without a provider id");
        assert!(
            plausible_ms(r.timestamp_ms),
            "receipt timestamp {} ms",
            r.timestamp_ms
        );
    }
}

fn check_accepted(r: &Result<Accepted, SendError>) {
    match r {
        Ok(a) => assert!(
            !a.provider_id.is_empty() && a.provider_id.trim() == a.provider_id,
            "accepted with an unusable id {:?}",
            a.provider_id
        ),
        Err(e) => assert!(!e.reason().is_empty(), "a send error without a reason"),
    }
}

/// ClickSend's inbound push (form, JSON or GET query), after its secret check.
pub fn clicksend_inbound(data: &[u8]) {
    let parts = webhook_parts(data);
    let req = parts.request();
    let _ = crate::clicksend::authenticate(&Secret::new(WEBHOOK_SECRET), &req);
    if let Ok(events) = crate::clicksend::parse_inbound(&req) {
        check_inbound(&events);
    }
}

/// ClickSend's delivery-receipt push.
pub fn clicksend_receipts(data: &[u8]) {
    let parts = webhook_parts(data);
    if let Ok(receipts) = crate::clicksend::parse_receipts(&parts.request()) {
        check_receipts(&receipts);
    }
}

/// ClickSend's answer to a send (status, body).
pub fn clicksend_send_response(data: &[u8]) {
    let (status, retry_after, body) = answer_parts(data);
    check_accepted(&crate::clicksend::classify(
        status,
        retry_after,
        Ok(body.to_vec()),
    ));
}

/// Twilio's webhooks (inbound and status callbacks): the signature check (with a
/// connection-override fragment configured), then both readers, media proxied.
pub fn twilio_webhook(data: &[u8]) {
    let parts = webhook_parts(data);
    let req = parts.request();
    let _ = crate::twilio::authenticate(&Secret::new(WEBHOOK_SECRET), Some("rc=2"), &req);
    if let Ok(events) = crate::twilio::parse_inbound(&req, true) {
        check_inbound(&events);
    }
    if let Ok(receipts) = crate::twilio::parse_receipts(&req) {
        check_receipts(&receipts);
    }
}

/// Twilio's answer to a send.
pub fn twilio_send_response(data: &[u8]) {
    let (status, retry_after, body) = answer_parts(data);
    check_accepted(&crate::twilio::classify(
        status,
        retry_after,
        Ok(body.to_vec()),
    ));
}

/// Vonage's webhooks: the Bearer JWT check (signature, claims, payload_hash), then both
/// readers.
pub fn vonage_webhook(data: &[u8]) {
    let parts = webhook_parts(data);
    let req = parts.request();
    let _ = crate::vonage::authenticate(&Secret::new(WEBHOOK_SECRET), "abcd1234", 3600, &req);
    if let Ok(events) = crate::vonage::parse_inbound(&req) {
        check_inbound(&events);
    }
    if let Ok(receipts) = crate::vonage::parse_receipts(&req) {
        check_receipts(&receipts);
    }
}

/// Vonage's answer to a send (202 or an RFC 7807 problem).
pub fn vonage_send_response(data: &[u8]) {
    let (status, retry_after, body) = answer_parts(data);
    check_accepted(&crate::vonage::classify(
        status,
        retry_after,
        Ok(body.to_vec()),
    ));
}

/// Telegram's webhook: the secret-token check, then the update reader. Contact ids are chat
/// ids in respond.io's custom alphabet, and each must map back to a chat.
pub fn telegram_webhook(data: &[u8]) {
    let parts = webhook_parts(data);
    let req = parts.request();
    let _ = crate::telegram::authenticate(&Secret::new(WEBHOOK_SECRET), &req);
    if let Ok(events) =
        crate::telegram::parse_inbound(&req, "https://gw.example.com/channels/tg/media")
    {
        check_inbound_as(&events, IdType::Custom);
        for e in &events {
            let chat = crate::telegram::chat_id_for_contact(&e.contact_id)
                .expect("an inbound contact id maps back to a chat");
            assert_eq!(crate::telegram::contact_id_for_chat(chat), e.contact_id);
        }
    }
    assert!(crate::telegram::parse_receipts(&req).is_err());
}

/// Telegram's answer to a send, and the same bytes as a `getFile` answer: a file path never
/// climbs out of the bot's file directory.
pub fn telegram_send_response(data: &[u8]) {
    let (status, retry_after, body) = answer_parts(data);
    check_accepted(&crate::telegram::classify(
        status,
        retry_after,
        Ok(body.to_vec()),
        -1_001_234_567_890,
    ));
    if let Ok(path) = crate::telegram::file_path(status, body) {
        assert!(
            !path.is_empty() && !path.contains(".."),
            "file path {path:?}"
        );
    }
}

/// Plivo's webhooks: the V3/V2 signature check (account and main-account keys), then both
/// readers.
pub fn plivo_webhook(data: &[u8]) {
    let parts = webhook_parts(data);
    let req = parts.request();
    let key = Secret::new(WEBHOOK_SECRET);
    let main = Secret::new("fuzz-main-account-token");
    let keys = [
        ("x-plivo-signature-v3", "x-plivo-signature-v2", &key),
        ("x-plivo-signature-ma-v3", "x-plivo-signature-ma-v2", &main),
    ];
    if let Ok(v) = crate::plivo::authenticate(&keys, &req) {
        assert!(matches!(v.version, "V2" | "V3") && !v.nonce.is_empty());
    }
    if let Ok(events) = crate::plivo::parse_inbound(&req, IdType::Phone) {
        check_inbound(&events);
    }
    if let Ok(receipts) = crate::plivo::parse_receipts(&req) {
        check_receipts(&receipts);
    }
}

/// Plivo's answer to a send.
pub fn plivo_send_response(data: &[u8]) {
    let (status, retry_after, body) = answer_parts(data);
    check_accepted(&crate::plivo::classify(
        status,
        retry_after,
        Ok(body.to_vec()),
    ));
}

/// The example mappings the generic-provider targets run: ClickSend written as a mapping
/// (examples/http-clicksend.toml, form webhooks, `?secret=`) and a JSON gateway that signs
/// its webhooks with a timestamped HMAC.
struct Mappings {
    query_auth: WebhookAuth,
    hmac_auth: WebhookAuth,
    form_inbound: InboundMapping,
    form_receipt: ReceiptMapping,
    json_inbound: InboundMapping,
    json_receipt: ReceiptMapping,
    response: ResponseMapping,
}

const EXAMPLE_CLICKSEND: &str = include_str!("../../../examples/http-clicksend.toml");

const JSON_GATEWAY: &str = r#"
[auth]
kind = "hmac"
header = "X-Signature"
prefix = "sha256="
timestamp_header = "X-Timestamp"
timestamp_separator = "."

[inbound]
format = "json"
contact_id = "/from"
message_id = "/id"
text = "/text"
media_url = "/media/url"
media_type = "/media/type"
timestamp = "/received_at"
contact_name = "/profile/name"

[receipt]
format = "json"
provider_id = "/message_id"
status = "/status"
error_reason = "/error/message"
error_code = "/error/code"
timestamp = "/ts"

[receipt.statuses]
queued = "sent"
delivered = "delivered"
read = "read"
undelivered = "failed"
"#;

fn mappings() -> &'static Mappings {
    static M: OnceLock<Mappings> = OnceLock::new();
    M.get_or_init(|| {
        let value: toml::Value = toml::from_str(EXAMPLE_CLICKSEND).expect("example parses");
        let http: HttpConfig = value["channel"][0]["http"]
            .clone()
            .try_into()
            .expect("example mapping deserialises");
        let json: toml::Value = toml::from_str(JSON_GATEWAY).expect("JSON mapping parses");
        let secret = Secret::new(WEBHOOK_SECRET);
        let hmac: AuthConfig = json["auth"].clone().try_into().unwrap();
        Mappings {
            query_auth: WebhookAuth::compile(&http.auth, &secret, "auth", "webhook_secret")
                .unwrap(),
            hmac_auth: WebhookAuth::compile(&hmac, &secret, "auth", "webhook_secret").unwrap(),
            form_inbound: InboundMapping::compile(
                http.inbound.as_ref().unwrap(),
                "inbound",
                IdType::Phone,
            )
            .unwrap(),
            form_receipt: ReceiptMapping::compile(http.receipt.as_ref().unwrap(), "receipt")
                .unwrap(),
            json_inbound: InboundMapping::compile(
                &json["inbound"].clone().try_into().unwrap(),
                "inbound",
                IdType::Phone,
            )
            .unwrap(),
            json_receipt: ReceiptMapping::compile(
                &json["receipt"].clone().try_into().unwrap(),
                "receipt",
            )
            .unwrap(),
            response: ResponseMapping::compile(&http.send.as_ref().unwrap().response, "response")
                .unwrap(),
        }
    })
}

/// What the generic provider's example mappings read from one webhook.
#[derive(Debug)]
pub struct GenericRead {
    /// The `?secret=` check of the form mapping, and the HMAC check of the JSON one.
    pub query_auth: Result<(), String>,
    pub hmac_auth: Result<(), String>,
    /// Events and receipts of the form mapping (examples/http-clicksend.toml).
    pub form_inbound: Result<Vec<InboundEvent>, String>,
    pub form_receipts: Result<Vec<Receipt>, String>,
    /// Events and receipts of the JSON mapping (HMAC-signed gateway).
    pub json_inbound: Result<Vec<InboundEvent>, String>,
    pub json_receipts: Result<Vec<Receipt>, String>,
}

/// Reads a webhook as the server does for a channel with each example mapping (the server
/// reads only after a passed check; here both always run, a fuzzer forges no signature).
pub fn generic_read(data: &[u8]) -> GenericRead {
    let m = mappings();
    let parts = webhook_parts(data);
    let req = parts.request();
    let inbound = |mapping: &InboundMapping, auth: &WebhookAuth| {
        payloads(&req, mapping.format, auth.query_param())?
            .iter()
            .map(|p| mapping.read(p))
            .collect::<Result<Vec<_>, _>>()
    };
    let receipts = |mapping: &ReceiptMapping, auth: &WebhookAuth| {
        payloads(&req, mapping.format, auth.query_param())?
            .iter()
            .map(|p| mapping.read(p))
            .collect::<Result<Vec<_>, _>>()
    };
    GenericRead {
        query_auth: m.query_auth.check(&req, NOW_S),
        hmac_auth: m.hmac_auth.check(&req, NOW_S),
        form_inbound: inbound(&m.form_inbound, &m.query_auth),
        form_receipts: receipts(&m.form_receipt, &m.query_auth),
        json_inbound: inbound(&m.json_inbound, &m.hmac_auth),
        json_receipts: receipts(&m.json_receipt, &m.hmac_auth),
    }
}

/// A webhook to the generic provider: both auth checks, then inbound and receipt reading by
/// both example mappings; whatever is read must be usable.
pub fn generic_webhook(data: &[u8]) {
    let read = generic_read(data);
    for events in [&read.form_inbound, &read.json_inbound]
        .into_iter()
        .flatten()
    {
        check_inbound(events);
    }
    for receipts in [&read.form_receipts, &read.json_receipts]
        .into_iter()
        .flatten()
    {
        check_receipts(receipts);
    }
}

/// The send API's answer typed by the example's `[channel.http.send.response]`.
pub fn generic_response(data: &[u8]) {
    let (status, retry_after, body) = answer_parts(data);
    check_accepted(&mappings().response.classify(status, retry_after, Ok(body)));
}

/// A send template (first line) parsed as the config would, then rendered for a message
/// (the rest of the input) as a URL, a header and a form field.
pub fn generic_template(data: &[u8]) {
    let (first, rest) = split_line(data);
    let Ok(template_text) = std::str::from_utf8(first) else {
        return;
    };
    let text = String::from_utf8_lossy(rest.unwrap_or_default()).into_owned();
    let secrets: BTreeMap<String, Secret> = [("token".to_string(), Secret::new("s3cr3t"))].into();
    let scope = Scope {
        secrets: &secrets,
        attachment: true,
    };
    let Ok(t) = Template::parse(template_text, &scope) else {
        return;
    };
    let attachment = Attachment {
        kind: AttachmentKind::Image,
        url: text.clone(),
        file_name: Some(text.clone()),
        description: None,
    };
    let vars = Vars {
        mid: "01JABCDEFGHJKMNPQRSTVWXYZ0",
        contact_id: "+61411111111",
        text: text.clone(),
        status_url: "https://gw.example.com/channels/sms/status?secret=x",
        attachment: Some(&attachment),
        secrets: &secrets,
        now_ms: NOW_S * 1000,
    };
    let _ = t.render(&vars, true);
    let _ = t.render(&vars, false);
    let _ = t.render_field(&vars);
    // Message text in a URL template is percent-encoded: it reads back exactly and cannot
    // change the host, add a query parameter or a fragment.
    let fixed = Template::parse(
        "https://api.example.com/send?to={contact_id}&body={text}",
        &scope,
    )
    .expect("fixed template parses");
    let url = url::Url::parse(&fixed.render(&vars, true)).expect("rendered URL parses");
    assert_eq!(url.host_str(), Some("api.example.com"));
    assert_eq!(url.fragment(), None);
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        vec![
            ("to".to_string(), "+61411111111".to_string()),
            ("body".to_string(), text.clone())
        ]
    );
    let mut problems = Vec::new();
    let json = JsonTemplate::compile(
        &toml::Value::String(template_text.to_string()),
        "json",
        &scope,
        &mut problems,
    );
    let _ = serde_json::to_vec(&json.render(&vars)).expect("a rendered JSON body encodes");
}

/// `Retry-After` in any form.
pub fn retry_after(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::provider::parse_retry_after(s);
    }
}

/// The config file's text: TOML, `${VAR}` interpolation, then every `[channel.http]` table
/// deserialised and its webhook, receipt and response mappings compiled as `check-config`
/// does (the rest of validation needs the server crate).
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut value) = crate::config_text::parse(text) else {
        return;
    };
    // Even-length names are set, odd ones are not: both paths of interpolation run.
    let env = |name: &str| {
        name.len()
            .is_multiple_of(2)
            .then(|| format!("value-of-{name}"))
    };
    let _ = crate::config_text::interpolate(&mut value, &env);
    let Some(channels) = value.get("channel").and_then(|c| c.as_array()) else {
        return;
    };
    for ch in channels {
        let Some(http) = ch.get("http") else { continue };
        let Ok(http) = HttpConfig::deserialize(http.clone()) else {
            continue;
        };
        let secret = Secret::new(WEBHOOK_SECRET);
        let _ = WebhookAuth::compile(&http.auth, &secret, "auth", "webhook_secret");
        if let Some(i) = &http.inbound {
            let _ = InboundMapping::compile(i, "inbound", IdType::Phone);
        }
        if let Some(r) = &http.receipt {
            let _ = ReceiptMapping::compile(r, "receipt");
        }
        if let Some(s) = &http.send {
            let _ = ResponseMapping::compile(&s.response, "response");
            let scope = Scope {
                secrets: &http.secrets,
                attachment: false,
            };
            let _ = Template::parse(&s.url, &scope);
            if let Some(j) = &s.json {
                let mut problems = Vec::new();
                let _ = JsonTemplate::compile(j, "json", &scope, &mut problems);
            }
        }
    }
}
