//! Emulator tests over real loopback HTTP.

use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};

use super::validate::{is_custom_id, is_e164};
use super::*;
use crate::clock;

const TOK1: &str = "aaaxczsadzxcasdacxzcasdaaaxczsadzxcasdacxzcasd";
const TOK2: &str = "token-two";
const PHONE: &str = "+60123456789";
const TS: i64 = 1_767_225_600_000;

struct Harness {
    emu: Emulator,
    base: String,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Reply {
    fn reason(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

fn channel(id: &str, token: &str, id_type: EmulatedIdType, rate_limit: u32) -> EmulatedChannel {
    EmulatedChannel {
        channel_id: id.to_owned(),
        token: token.to_owned(),
        id_type,
        rate_limit,
    }
}

/// CH1 (phone, TOK1) and CH2 (custom, TOK2), both unlimited so that long test sequences are not
/// rate limited.
fn unlimited_cfg() -> EmulatorConfig {
    EmulatorConfig {
        channels: vec![
            channel("CH1", TOK1, EmulatedIdType::Phone, 0),
            channel("CH2", TOK2, EmulatedIdType::Custom, 0),
        ],
        ..EmulatorConfig::default()
    }
}

async fn start(cfg: EmulatorConfig) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let emu = Emulator::new(cfg);
    tokio::spawn(emu.clone().serve(listener));
    Harness {
        emu,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
    }
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        retry_after,
        body,
    }
}

impl Harness {
    async fn post_raw(
        &self,
        path: &str,
        auth: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        reply(request.send().await.expect("send")).await
    }

    /// POSTs `body` to the webhook with `Bearer <token>`.
    async fn webhook(&self, token: &str, body: &Value) -> Reply {
        self.post_raw(
            WEBHOOK_PATH,
            Some(&format!("Bearer {token}")),
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn control(&self, path: &str, body: &Value) -> Reply {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("send");
        reply(response).await
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("json")
    }
}

fn text_event(mid: &str) -> Value {
    json!({"type": "message", "mId": mid, "timestamp": TS, "message": {"type": "text", "text": "Hi there"}})
}

fn envelope(channel: &str, contact: &str, events: Vec<Value>) -> Value {
    json!({"channelId": channel, "contactId": contact, "events": events})
}

/// The spec's §7 "inbound text with contact" example.
fn spec_example() -> Value {
    json!({
        "channelId": "CH1", "contactId": PHONE,
        "events": [{"type": "message", "mId": "m-001", "timestamp": TS,
                    "message": {"type": "text", "text": "Hi there"}}],
        "contact": {"firstName": "Leo", "lastName": "Wong", "countryCode": "MY",
                    "phone": PHONE, "language": "en"}
    })
}

// ---------------------------------------------------------------------------------------------
// Accepted calls

#[tokio::test]
async fn valid_text_envelope_is_accepted_recorded_and_listed() {
    let h = start(unlimited_cfg()).await;
    let before = clock::now_ms();
    let r = h.webhook(TOK1, &spec_example()).await;
    let after = clock::now_ms();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!({}));

    let events = h.emu.events("CH1");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.channel_id.as_str(), e.contact_id.as_str()),
        ("CH1", PHONE)
    );
    assert_eq!(e.event, spec_example()["events"][0]);
    assert!(!e.duplicate);
    assert!((before..=after).contains(&e.arrival_ms));

    let calls = h.emu.calls("CH1");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].status, calls[0].events, calls[0].call),
        (200, 1, e.call)
    );
    assert_eq!(calls[0].contact.as_ref(), Some(&spec_example()["contact"]));
    assert_eq!(calls[0].contact_id.as_deref(), Some(PHONE));

    // The HTTP listing is flattened with the envelope fields.
    let listed = h.get("/_emulator/events?channel=CH1").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["channelId"], "CH1");
    assert_eq!(listed[0]["contactId"], PHONE);
    assert_eq!(listed[0]["call"], e.call);
    assert_eq!(listed[0]["arrival_ms"], e.arrival_ms);
    assert_eq!(listed[0]["event"]["mId"], "m-001");
    let by_contact = h
        .get("/_emulator/events?channel=CH1&contact=%2B60123456789")
        .await;
    assert_eq!(by_contact.as_array().map(Vec::len), Some(1));
    let other_contact = h
        .get("/_emulator/events?channel=CH1&contact=%2B60999999999")
        .await;
    assert_eq!(other_contact, json!([]));
    assert_eq!(h.get("/_emulator/events?channel=CH2").await, json!([]));
    let calls = h.get("/_emulator/calls?channel=CH1").await;
    assert_eq!(calls[0]["status"], 200);

    // DELETE clears.
    let deleted = h
        .http
        .delete(format!("{}/_emulator/events", h.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    assert!(h.emu.events("CH1").is_empty());
    assert!(h.emu.calls("CH1").is_empty());
}

#[tokio::test]
async fn webhook_path_without_trailing_slash_and_lowercase_scheme_are_accepted() {
    let h = start(unlimited_cfg()).await;
    let body = envelope("CH1", PHONE, vec![text_event("m-1")]);
    let r = h
        .post_raw(
            "/custom/channel/webhook",
            Some(&format!("bearer {TOK1}")),
            "application/json; charset=utf-8",
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(h.emu.events("CH1").len(), 1);
}

#[tokio::test]
async fn every_event_and_message_kind_is_accepted_and_unknown_fields_ignored() {
    let h = start(unlimited_cfg()).await;
    let mid50 = "m".repeat(50);
    let events = vec![
        json!({"type": "message", "mId": mid50, "timestamp": TS, "extra": 1,
               "message": {"type": "text", "text": "hello", "extra": true}}),
        json!({"type": "message_echo", "mId": "e-1", "timestamp": TS,
               "message": {"type": "attachment",
                           "attachment": {"type": "image", "url": "https://cdn.example.com/p.jpg", "fileName": "p.jpg"}}}),
        json!({"type": "message", "mId": "l-1", "timestamp": TS,
               "message": {"type": "location", "latitude": 3.139, "longitude": 101.6869, "address": "KL"}}),
        json!({"type": "message", "mId": "q-1", "timestamp": TS,
               "message": {"type": "quick_reply", "title": "Pick one", "replies": ["Yes", {"title": "No"}]}}),
        json!({"type": "message_status", "mId": "out-17", "timestamp": TS,
               "status": {"value": "failed", "message": "Number not reachable"}}),
        json!({"type": "message_status", "mId": "out-18", "timestamp": TS, "status": {"value": "sent"}}),
    ];
    let mut body = envelope("CH1", PHONE, events);
    body["unknownTopLevel"] = json!({"x": 1});
    body["contact"] =
        json!({"firstName": "Ana", "timezone": 8, "locale": "en_US", "customThing": [1]});
    let r = h.webhook(TOK1, &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(h.emu.events("CH1").len(), 6);

    // A custom-id channel accepts its whole alphabet.
    let r = h
        .webhook(
            TOK2,
            &envelope("CH2", "user_1=a+b/c@d", vec![text_event("c-1")]),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(h.emu.events("CH2")[0].contact_id, "user_1=a+b/c@d");
}

// ---------------------------------------------------------------------------------------------
// Rejected calls

/// Asserts a rejection with `status` whose reason contains `needle`.
fn assert_rejected(r: &Reply, status: u16, needle: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {:?}", r.body);
    assert!(
        r.reason().contains(needle),
        "{case}: reason {:?} does not contain {needle:?}",
        r.reason()
    );
}

#[tokio::test]
async fn authentication_and_channel_failures_are_401_with_reasons() {
    let h = start(unlimited_cfg()).await;
    let body = envelope("CH1", PHONE, vec![text_event("m-1")])
        .to_string()
        .into_bytes();
    let json_ct = "application/json";

    let r = h.post_raw(WEBHOOK_PATH, None, json_ct, body.clone()).await;
    assert_rejected(&r, 401, "Authorization: missing", "no header");
    let r = h
        .post_raw(
            WEBHOOK_PATH,
            Some(&format!("Basic {TOK1}")),
            json_ct,
            body.clone(),
        )
        .await;
    assert_rejected(&r, 401, "Authorization", "basic scheme");
    let r = h
        .post_raw(WEBHOOK_PATH, Some("Bearer "), json_ct, body.clone())
        .await;
    assert_rejected(&r, 401, "Authorization", "empty token");
    let r = h
        .webhook(
            "wrong-token",
            &envelope("CH1", PHONE, vec![text_event("m-1")]),
        )
        .await;
    assert_rejected(&r, 401, "invalid API token", "wrong token");
    // A prefix of the right token is still wrong.
    let r = h
        .webhook(
            &TOK1[..10],
            &envelope("CH1", PHONE, vec![text_event("m-1")]),
        )
        .await;
    assert_rejected(&r, 401, "invalid API token", "token prefix");

    let r = h
        .webhook(TOK1, &envelope("NOPE", PHONE, vec![text_event("m-1")]))
        .await;
    assert_rejected(
        &r,
        401,
        "channelId: unknown channel \"NOPE\"",
        "unknown channel",
    );
    let r = h
        .webhook(TOK1, &envelope("CH2", "user1", vec![text_event("m-1")]))
        .await;
    assert_rejected(
        &r,
        401,
        "does not match the channel of the API token",
        "mismatch",
    );

    assert!(h.emu.events("CH1").is_empty() && h.emu.events("CH2").is_empty());
    // Failed authentication is attributed to the claimed channel (CH1); once the token is
    // known, to the token's channel (CH1 for "NOPE" and for the CH2 mismatch too).
    let statuses: Vec<u16> = h.emu.calls("CH1").iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![401; 7]);
    assert_eq!(h.emu.calls("NOPE").len(), 0);
    assert_eq!(h.emu.all_calls().len(), 7);
}

type Mutation = fn(&mut Value);

fn set(v: &mut Value, pointer: &str, new: Value) {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}")) = new;
}

fn remove(v: &mut Value, parent: &str, key: &str) {
    v.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|o| o.remove(key))
        .unwrap_or_else(|| panic!("no {parent}/{key}"));
}

/// Each case mutates a valid CH1 envelope; expected status and a piece of the reason.
fn bad_envelopes() -> Vec<(&'static str, Mutation, u16, &'static str)> {
    vec![
        (
            "channelId missing",
            |v| remove(v, "", "channelId"),
            400,
            "channelId: required",
        ),
        (
            "channelId number",
            |v| set(v, "/channelId", json!(123)),
            400,
            "channelId: must be a string",
        ),
        (
            "contactId missing",
            |v| remove(v, "", "contactId"),
            400,
            "contactId: required",
        ),
        (
            "phone without +",
            |v| set(v, "/contactId", json!("60123456789")),
            400,
            "contactId",
        ),
        (
            "phone leading 0",
            |v| set(v, "/contactId", json!("+0123456789")),
            400,
            "contactId",
        ),
        (
            "phone too short",
            |v| set(v, "/contactId", json!("+123456")),
            400,
            "contactId",
        ),
        (
            "phone custom id",
            |v| set(v, "/contactId", json!("user_1")),
            400,
            "E.164",
        ),
        (
            "contactId 51",
            |v| set(v, "/contactId", json!("9".repeat(51))),
            400,
            "contactId: longer than 50",
        ),
        (
            "events missing",
            |v| remove(v, "", "events"),
            400,
            "events: required",
        ),
        (
            "events object",
            |v| set(v, "/events", json!({})),
            400,
            "events: must be an array",
        ),
        (
            "events empty",
            |v| set(v, "/events", json!([])),
            400,
            "events: must contain at least one",
        ),
        (
            "event not object",
            |v| set(v, "/events/0", json!("x")),
            400,
            "events[0]: must be an object",
        ),
        (
            "unknown event type",
            |v| set(v, "/events/0/type", json!("reaction")),
            400,
            "events[0].type: unknown event type",
        ),
        (
            "type missing",
            |v| remove(v, "/events/0", "type"),
            400,
            "events[0].type: required",
        ),
        (
            "mId 51 chars",
            |v| set(v, "/events/0/mId", json!("x".repeat(51))),
            400,
            "events[0].mId: 51 characters",
        ),
        (
            "mId empty",
            |v| set(v, "/events/0/mId", json!("")),
            400,
            "events[0].mId: must not be empty",
        ),
        (
            "mId number",
            |v| set(v, "/events/0/mId", json!(7)),
            400,
            "events[0].mId: must be a string",
        ),
        (
            "mId missing",
            |v| remove(v, "/events/0", "mId"),
            400,
            "events[0].mId: required",
        ),
        (
            "seconds timestamp",
            |v| set(v, "/events/0/timestamp", json!(1_767_225_600)),
            400,
            "events[0].timestamp: 1767225600 looks like seconds",
        ),
        (
            "microseconds",
            |v| set(v, "/events/0/timestamp", json!(1_767_225_600_000_000i64)),
            400,
            "microseconds",
        ),
        (
            "float timestamp",
            |v| set(v, "/events/0/timestamp", json!(1_767_225_600_000.0)),
            400,
            "events[0].timestamp: must be an integer",
        ),
        (
            "string timestamp",
            |v| set(v, "/events/0/timestamp", json!("1767225600000")),
            400,
            "events[0].timestamp: must be an integer",
        ),
        (
            "negative timestamp",
            |v| set(v, "/events/0/timestamp", json!(-5)),
            400,
            "events[0].timestamp",
        ),
        (
            "timestamp missing",
            |v| remove(v, "/events/0", "timestamp"),
            400,
            "events[0].timestamp: required",
        ),
        (
            "message missing",
            |v| remove(v, "/events/0", "message"),
            400,
            "events[0].message: required",
        ),
        (
            "echo message missing",
            |v| {
                set(v, "/events/0/type", json!("message_echo"));
                remove(v, "/events/0", "message");
            },
            400,
            "events[0].message: required",
        ),
        (
            "message not object",
            |v| set(v, "/events/0/message", json!("hi")),
            400,
            "events[0].message: must be an object",
        ),
        (
            "message type unknown",
            |v| set(v, "/events/0/message/type", json!("sticker")),
            400,
            "events[0].message.type: unsupported",
        ),
        (
            "text empty",
            |v| set(v, "/events/0/message/text", json!("")),
            400,
            "events[0].message.text: must not be empty",
        ),
        (
            "text missing",
            |v| remove(v, "/events/0/message", "text"),
            400,
            "events[0].message.text: required",
        ),
        (
            "attachment missing",
            |v| set(v, "/events/0/message", json!({"type": "attachment"})),
            400,
            "events[0].message.attachment: required",
        ),
        (
            "attachment type",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "attachment", "attachment": {"type": "sticker", "url": "https://x.example/a"}}),
                )
            },
            400,
            "events[0].message.attachment.type",
        ),
        (
            "attachment ftp url",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "attachment", "attachment": {"type": "file", "url": "ftp://x.example/a"}}),
                )
            },
            400,
            "events[0].message.attachment.url",
        ),
        (
            "attachment relative url",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "attachment", "attachment": {"type": "image", "url": "/a.jpg"}}),
                )
            },
            400,
            "events[0].message.attachment.url",
        ),
        (
            "attachment url missing",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "attachment", "attachment": {"type": "image"}}),
                )
            },
            400,
            "events[0].message.attachment.url: required",
        ),
        (
            "payload.url nesting",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "attachment", "attachment": {"type": "image", "payload": {"url": "https://x.example/a"}}}),
                )
            },
            400,
            "events[0].message.attachment.url: required",
        ),
        (
            "location string lat",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "location", "latitude": "3.1", "longitude": 101.0}),
                )
            },
            400,
            "events[0].message.latitude: must be a number",
        ),
        (
            "location lat range",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "location", "latitude": 91, "longitude": 101.0}),
                )
            },
            400,
            "events[0].message.latitude",
        ),
        (
            "location lng missing",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "location", "latitude": 3.1}),
                )
            },
            400,
            "events[0].message.longitude: required",
        ),
        (
            "quick_reply empty",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "quick_reply", "replies": []}),
                )
            },
            400,
            "events[0].message: quick_reply needs",
        ),
        (
            "quick_reply replies type",
            |v| {
                set(
                    v,
                    "/events/0/message",
                    json!({"type": "quick_reply", "replies": "Yes"}),
                )
            },
            400,
            "events[0].message.replies: must be an array",
        ),
        (
            "status missing",
            |v| {
                set(
                    v,
                    "/events/0",
                    json!({"type": "message_status", "mId": "o-1", "timestamp": TS}),
                )
            },
            400,
            "events[0].status: required",
        ),
        (
            "status value",
            |v| {
                set(
                    v,
                    "/events/0",
                    json!({"type": "message_status", "mId": "o-1", "timestamp": TS, "status": {"value": "seen"}}),
                )
            },
            400,
            "events[0].status.value: unknown status",
        ),
        (
            "status uppercase",
            |v| {
                set(
                    v,
                    "/events/0",
                    json!({"type": "message_status", "mId": "o-1", "timestamp": TS, "status": {"value": "READ"}}),
                )
            },
            400,
            "events[0].status.value",
        ),
        (
            "status message type",
            |v| {
                set(
                    v,
                    "/events/0",
                    json!({"type": "message_status", "mId": "o-1", "timestamp": TS, "status": {"value": "failed", "message": 5}}),
                )
            },
            400,
            "events[0].status.message: must be a string",
        ),
        (
            "second event bad",
            |v| {
                let events = v["events"].as_array_mut().expect("events");
                events.push(json!({"type": "message", "mId": "m-2", "timestamp": 1_767_225_600}));
            },
            400,
            "events[1].timestamp",
        ),
        (
            "contact string",
            |v| set(v, "/contact", json!("Leo")),
            400,
            "contact: must be an object",
        ),
        (
            "contact null",
            |v| set(v, "/contact", Value::Null),
            400,
            "contact: must be an object",
        ),
        (
            "contact timezone",
            |v| set(v, "/contact/timezone", json!("8")),
            400,
            "contact.timezone: must be a number",
        ),
        (
            "contact field null",
            |v| set(v, "/contact/firstName", Value::Null),
            400,
            "contact.firstName: must be a string",
        ),
        (
            "top-level array",
            |v| *v = json!([1, 2]),
            400,
            "body: must be a JSON object",
        ),
    ]
}

#[tokio::test]
async fn every_malformed_envelope_is_400_naming_the_field() {
    let h = start(unlimited_cfg()).await;
    let mut base = spec_example();
    base["contact"]["timezone"] = json!(8);
    for (case, mutate, status, needle) in bad_envelopes() {
        let mut body = base.clone();
        mutate(&mut body);
        let r = h.webhook(TOK1, &body).await;
        assert_rejected(&r, status, needle, case);
    }
    assert!(h.emu.events("CH1").is_empty());
    let calls = h.emu.calls("CH1");
    assert_eq!(calls.len(), bad_envelopes().len());
    assert!(calls.iter().all(|c| c.status == 400 && c.reason.is_some()));
    // Control: the base envelope itself is valid.
    assert_eq!(h.webhook(TOK1, &base).await.status, 200);
}

#[tokio::test]
async fn custom_id_channel_applies_its_own_contact_rules() {
    let h = start(unlimited_cfg()).await;
    for (contact, needle) in [
        ("user-1", "not a valid custom id"),
        ("user 1", "not a valid custom id"),
        ("", "not a valid custom id"),
        (&"a".repeat(51) as &str, "longer than 50"),
    ] {
        let r = h
            .webhook(TOK2, &envelope("CH2", contact, vec![text_event("m")]))
            .await;
        assert_rejected(&r, 400, needle, contact);
        assert!(r.reason().starts_with("contactId:"), "{}", r.reason());
    }
    let r = h
        .webhook(
            TOK2,
            &envelope("CH2", &"a".repeat(50), vec![text_event("m")]),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn transport_level_rejections() {
    let h = start(unlimited_cfg()).await;
    let auth = format!("Bearer {TOK1}");
    let r = h
        .post_raw(
            WEBHOOK_PATH,
            Some(&auth),
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_rejected(&r, 400, "body: invalid JSON", "invalid json");
    let valid = spec_example().to_string().into_bytes();
    let r = h
        .post_raw(WEBHOOK_PATH, Some(&auth), "text/plain", valid)
        .await;
    assert_rejected(&r, 400, "Content-Type", "content type");

    // Just over 1 MiB: a valid envelope padded with an ignored field.
    let mut big = spec_example();
    big["padding"] = json!("x".repeat(MAX_BODY_BYTES));
    let r = h.webhook(TOK1, &big).await;
    assert_rejected(&r, 413, "body: larger than", "too large");
    // Just under 1 MiB is fine.
    big["padding"] = json!("x".repeat(MAX_BODY_BYTES - 1024));
    assert_eq!(h.webhook(TOK1, &big).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Rate limiting

#[tokio::test]
async fn default_limit_admits_20_then_429_with_seconds_retry_after() {
    let h = start(EmulatorConfig {
        channels: vec![EmulatedChannel::new("CH1", TOK1)],
        ..EmulatorConfig::default()
    })
    .await;
    let started = Instant::now();
    let mut replies = Vec::new();
    for i in 0..21 {
        let body = envelope("CH1", PHONE, vec![text_event(&format!("m-{i}"))]);
        replies.push(h.webhook(TOK1, &body).await);
    }
    let elapsed = started.elapsed();
    // The limiter's window is the emulator's own clock, so the precondition is checked on the
    // recorded arrivals: all 21 must have landed inside one second for "exactly one 429" to hold.
    let arrivals: Vec<i64> = h.emu.calls("CH1").iter().map(|c| c.arrival_ms).collect();
    assert_eq!(
        max_in_window(&arrivals, 1000),
        21,
        "21 loopback calls took {elapsed:?}; the machine is too slow for this test"
    );
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..20], &[200; 20]);
    assert_eq!(statuses[20], 429);
    let last = &replies[20];
    assert!(last.reason().contains("rate limit"), "{}", last.reason());
    let secs: u64 = last
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("delta-seconds");
    assert_eq!(secs, 1);
    assert_eq!(h.emu.events("CH1").len(), 20);
    let limited = h.get("/_emulator/calls?channel=CH1&status=429").await;
    assert_eq!(limited.as_array().map(Vec::len), Some(1));
}

fn limited_cfg(rate_limit: u32, retry_after: RetryAfterForm) -> EmulatorConfig {
    EmulatorConfig {
        channels: vec![
            channel("CH1", TOK1, EmulatedIdType::Phone, rate_limit),
            channel("CH2", TOK2, EmulatedIdType::Custom, rate_limit),
        ],
        retry_after,
        ..EmulatorConfig::default()
    }
}

#[tokio::test]
async fn retry_after_http_date_form() {
    let h = start(limited_cfg(2, RetryAfterForm::HttpDate)).await;
    let body = envelope("CH1", PHONE, vec![text_event("m")]);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);
    let r = h.webhook(TOK1, &body).await;
    assert_eq!(r.status, 429);
    let date = httpdate::parse_http_date(r.retry_after.as_deref().expect("Retry-After"))
        .expect("an HTTP-date");
    let now = SystemTime::now();
    assert!(date > now, "the date must be in the future");
    assert!(date <= now + Duration::from_secs(3), "at most ~2 s ahead");
}

#[tokio::test]
async fn retry_after_none_form_sends_no_header_and_switch_is_live() {
    let h = start(limited_cfg(1, RetryAfterForm::Seconds)).await;
    let body = envelope("CH1", PHONE, vec![text_event("m")]);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);

    let r = h
        .control("/_emulator/config", &json!({"retry_after": "none"}))
        .await;
    assert_eq!((r.status, &r.body["retry_after"]), (200, &json!("none")));
    let r = h.webhook(TOK1, &body).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.retry_after, None);

    h.emu.set_retry_after(RetryAfterForm::Seconds);
    let r = h.webhook(TOK1, &body).await;
    assert_eq!(r.status, 429);
    assert!(r.retry_after.is_some());
}

#[tokio::test]
async fn limiter_counts_authenticated_rejections_only_and_is_per_channel() {
    let h = start(limited_cfg(2, RetryAfterForm::Seconds)).await;
    let good = envelope("CH1", PHONE, vec![text_event("m")]);
    let bad = envelope("CH1", "not-a-phone", vec![text_event("m")]);
    // Unauthenticated calls do not count.
    for _ in 0..5 {
        assert_eq!(h.webhook("wrong", &good).await.status, 401);
    }
    assert_eq!(h.webhook(TOK1, &bad).await.status, 400); // counts
    assert_eq!(h.webhook(TOK1, &good).await.status, 200); // counts: 2 of 2
    assert_eq!(h.webhook(TOK1, &good).await.status, 429);
    // CH2 has its own window.
    let ch2 = envelope("CH2", "user1", vec![text_event("m")]);
    assert_eq!(h.webhook(TOK2, &ch2).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Switches

#[tokio::test]
async fn dedupe_off_records_repeats_as_new_events() {
    let h = start(unlimited_cfg()).await;
    let body = envelope("CH1", PHONE, vec![text_event("m-dup")]);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);
    let events = h.emu.events("CH1");
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| !e.duplicate));
    assert_ne!(events[0].call, events[1].call);
}

#[tokio::test]
async fn dedupe_on_acknowledges_repeats_and_flags_them() {
    let h = start(unlimited_cfg()).await;
    let r = h
        .control("/_emulator/config", &json!({"dedupe_by_mid": true}))
        .await;
    assert_eq!(r.body["dedupe_by_mid"], true);

    let body = envelope("CH1", PHONE, vec![text_event("m-dup")]);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);
    assert_eq!(
        h.webhook(TOK1, &body).await.status,
        200,
        "a duplicate is still acknowledged"
    );
    // Same mId, different type (a receipt for it): not a duplicate.
    let receipt = json!({"type": "message_status", "mId": "m-dup", "timestamp": TS, "status": {"value": "read"}});
    assert_eq!(
        h.webhook(TOK1, &envelope("CH1", PHONE, vec![receipt]))
            .await
            .status,
        200
    );
    // Same mId and type on another channel: not a duplicate.
    assert_eq!(
        h.webhook(TOK2, &envelope("CH2", "u1", vec![text_event("m-dup")]))
            .await
            .status,
        200
    );

    let flags: Vec<bool> = h.emu.events("CH1").iter().map(|e| e.duplicate).collect();
    assert_eq!(flags, vec![false, true, false]);
    assert!(!h.emu.events("CH2")[0].duplicate);
    let listed = h.get("/_emulator/events?channel=CH1").await;
    assert_eq!(listed[1]["duplicate"], true);
}

#[tokio::test]
async fn max_events_per_call_switch() {
    let h = start(unlimited_cfg()).await;
    let events = |n: usize| {
        (0..n)
            .map(|i| text_event(&format!("m-{i}")))
            .collect::<Vec<_>>()
    };

    // Default: unlimited.
    assert_eq!(
        h.webhook(TOK1, &envelope("CH1", PHONE, events(30)))
            .await
            .status,
        200
    );

    h.emu.set_max_events_per_call(Some(2));
    let r = h.webhook(TOK1, &envelope("CH1", PHONE, events(3))).await;
    assert_rejected(
        &r,
        400,
        "events: 3 events exceed max_events_per_call (2)",
        "over max",
    );
    assert_eq!(
        h.webhook(TOK1, &envelope("CH1", PHONE, events(2)))
            .await
            .status,
        200
    );

    let r = h
        .control("/_emulator/config", &json!({"max_events_per_call": null}))
        .await;
    assert_eq!(r.body["max_events_per_call"], Value::Null);
    assert_eq!(
        h.webhook(TOK1, &envelope("CH1", PHONE, events(3)))
            .await
            .status,
        200
    );
    assert_eq!(h.emu.events("CH1").len(), 30 + 2 + 3);

    let r = h
        .control("/_emulator/config", &json!({"max_events_per_cal": 1}))
        .await;
    assert_rejected(&r, 400, "unknown setting", "typo in control API");
}

// ---------------------------------------------------------------------------------------------
// Fault injection

#[tokio::test]
async fn injected_faults_answer_the_next_authenticated_calls_in_order() {
    let h = start(unlimited_cfg()).await;
    let r = h
        .control(
            "/_emulator/faults",
            &json!({"channel": "CH1", "responses": [{"status": 429, "retry_after": 2}, {"status": 500}, {"status": 401}]}),
        )
        .await;
    assert_eq!((r.status, &r.body["pending"]), (200, &json!(3)));

    let body = envelope("CH1", PHONE, vec![text_event("m-1")]);
    // A call that fails authentication does not consume a fault.
    assert_rejected(
        &h.webhook("wrong", &body).await,
        401,
        "invalid API token",
        "wrong token",
    );

    let r = h.webhook(TOK1, &body).await;
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("2")));
    assert!(r.reason().contains("injected"), "{}", r.reason());
    let r = h.webhook(TOK1, &body).await;
    assert_eq!((r.status, r.retry_after.as_deref()), (500, None));
    let r = h.webhook(TOK1, &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200, "queue exhausted");

    assert_eq!(
        h.emu.events("CH1").len(),
        1,
        "faulted calls are not accepted"
    );
    let statuses: Vec<u16> = h.emu.calls("CH1").iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![401, 429, 500, 401, 200]);
}

#[tokio::test]
async fn fault_queue_can_be_cleared_and_faults_can_be_delayed() {
    let h = start(unlimited_cfg()).await;
    let body = envelope("CH1", PHONE, vec![text_event("m-1")]);
    h.emu.inject(
        "CH1",
        vec![FaultResponse {
            status: 500,
            retry_after: None,
            delay_ms: None,
        }],
    );
    let r = h
        .control(
            "/_emulator/faults",
            &json!({"channel": "CH1", "clear": true}),
        )
        .await;
    assert_eq!(r.body["pending"], 0);
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);

    // Faults are per channel.
    h.emu.inject(
        "CH2",
        vec![FaultResponse {
            status: 503,
            retry_after: None,
            delay_ms: Some(150),
        }],
    );
    assert_eq!(h.webhook(TOK1, &body).await.status, 200);
    let started = Instant::now();
    assert_eq!(
        h.webhook(TOK2, &envelope("CH2", "u1", vec![text_event("m")]))
            .await
            .status,
        503
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    // An explicit retry_after follows the configured form.
    h.emu.set_retry_after(RetryAfterForm::HttpDate);
    h.emu.inject(
        "CH1",
        vec![FaultResponse {
            status: 429,
            retry_after: Some(5),
            delay_ms: None,
        }],
    );
    let r = h.webhook(TOK1, &body).await;
    assert_eq!(r.status, 429);
    assert!(httpdate::parse_http_date(r.retry_after.as_deref().expect("header")).is_ok());

    let r = h
        .control(
            "/_emulator/faults",
            &json!({"channel": "CH1", "responses": [{"status": 42}]}),
        )
        .await;
    assert_rejected(&r, 400, "responses[0].status", "invalid status");
}

// ---------------------------------------------------------------------------------------------
// Channel registry

#[tokio::test]
async fn channels_can_be_registered_and_replaced_at_runtime() {
    let h = start(EmulatorConfig::default()).await;
    let body = envelope("CH9", "abc@def", vec![text_event("m")]);
    assert_eq!(h.webhook("t9", &body).await.status, 401);

    let r = h
        .control(
            "/_emulator/channels",
            &json!({"channelId": "CH9", "token": "t9", "id_type": "custom", "rate_limit": 5}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(h.webhook("t9", &body).await.status, 200);
    let listed = h.get("/_emulator/channels").await;
    assert_eq!(
        listed,
        json!([{"channelId": "CH9", "id_type": "custom", "rate_limit": 5}])
    );

    // Re-registering replaces the token.
    h.emu
        .add_channel(channel("CH9", "t9-new", EmulatedIdType::Custom, 5));
    assert_eq!(h.webhook("t9", &body).await.status, 401);
    assert_eq!(h.webhook("t9-new", &body).await.status, 200);
    assert_eq!(h.emu.channels().len(), 1);

    let r = h
        .control(
            "/_emulator/channels",
            &json!({"channelId": "CH8", "token": "x", "id_type": "email"}),
        )
        .await;
    assert_eq!(r.status, 400);
}

// ---------------------------------------------------------------------------------------------
// respond.io → gateway

/// A stand-in for the gateway's `/message` endpoint: checks the bearer token and echoes the body.
async fn fake_gateway() -> String {
    async fn message(
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (axum::http::StatusCode, axum::Json<Value>) {
        let authorized = headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOK1}").as_bytes());
        if !authorized {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "Unauthorized"}})),
            );
        }
        let received: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (
            axum::http::StatusCode::OK,
            axum::Json(json!({"mId": "out-1", "received": received})),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/channels/sms/message", post(message))
        .route("/plain/message", post(|| async { "not json" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn send_to_gateway_posts_the_outbound_payload_with_the_channel_token() {
    let gateway = fake_gateway().await;
    let h = start(unlimited_cfg()).await;
    let url = format!("{gateway}/channels/sms/message");
    let message = json!({"type": "text", "text": "Hello"});

    let (status, body) = h
        .emu
        .send_to_gateway(&url, "CH1", PHONE, message.clone())
        .await
        .expect("sent");
    assert_eq!(status, 200);
    assert_eq!(body["mId"], "out-1");
    assert_eq!(
        body["received"],
        json!({"channelId": "CH1", "contactId": PHONE, "message": message})
    );

    // CH2's token is not the one the gateway expects: its 401 comes back as-is.
    let (status, body) = h
        .emu
        .send_to_gateway(&url, "CH2", "u1", message.clone())
        .await
        .expect("sent");
    assert_eq!(
        (status, &body["error"]["message"]),
        (401, &json!("Unauthorized"))
    );

    let (status, body) = h
        .emu
        .send_to_gateway(
            &format!("{gateway}/plain/message"),
            "CH1",
            PHONE,
            message.clone(),
        )
        .await
        .expect("sent");
    assert_eq!((status, body), (200, json!("not json")));

    let err = h.emu.send_to_gateway(&url, "NOPE", PHONE, message).await;
    assert!(err.is_err_and(|e| e.contains("unknown channel")));
}

#[tokio::test]
async fn send_control_route_reports_gateway_answer() {
    let gateway = fake_gateway().await;
    let h = start(unlimited_cfg()).await;
    let url = format!("{gateway}/channels/sms/message");
    let message = json!({"type": "text", "text": "Hi"});

    let r = h
        .control(
            "/_emulator/send",
            &json!({"channelId": "CH1", "contactId": PHONE, "message": message, "url": url}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], 200);
    assert_eq!(r.body["body"]["mId"], "out-1");
    assert_eq!(r.body["body"]["received"]["message"], message);

    let r = h
        .control(
            "/_emulator/send",
            &json!({"channelId": "NOPE", "contactId": PHONE, "message": message, "url": url}),
        )
        .await;
    assert_rejected(&r, 404, "unknown channel", "unknown channel");

    // Nothing listens on a port that was just released.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let r = h
        .control(
            "/_emulator/send",
            &json!({"channelId": "CH1", "contactId": PHONE, "message": message, "url": format!("http://{closed}/message")}),
        )
        .await;
    assert_eq!(r.status, 502, "{:?}", r.body);
}

// ---------------------------------------------------------------------------------------------
// Pure functions

#[test]
fn phone_and_custom_id_patterns() {
    for ok in ["+60123456789", "+1234567", "+123456789012345"] {
        assert!(is_e164(ok), "{ok}");
    }
    for bad in [
        "60123456789",
        "+0123456789",
        "+123456",
        "+1234567890123456",
        "+6012345678a",
        "+",
        "",
    ] {
        assert!(!is_e164(bad), "{bad}");
    }
    for ok in ["a", "A_z=0+9/@", &"x".repeat(50)] {
        assert!(is_custom_id(ok), "{ok}");
    }
    for bad in ["", "a-b", "a b", "ä", &"x".repeat(51)] {
        assert!(!is_custom_id(bad), "{bad}");
    }
}

#[test]
fn parse_channel_arg_forms() {
    assert_eq!(
        parse_channel_arg("CH1=TOKEN"),
        Ok(EmulatedChannel::new("CH1", "TOKEN"))
    );
    assert_eq!(
        parse_channel_arg("CH1=TOKEN:custom"),
        Ok(channel(
            "CH1",
            "TOKEN",
            EmulatedIdType::Custom,
            DEFAULT_RATE_LIMIT
        ))
    );
    assert_eq!(
        parse_channel_arg("CH1=TOKEN:phone:5"),
        Ok(channel("CH1", "TOKEN", EmulatedIdType::Phone, 5))
    );
    assert_eq!(
        parse_channel_arg("CH1=a:b:custom:0"),
        Ok(channel("CH1", "a:b", EmulatedIdType::Custom, 0))
    );
    assert_eq!(
        parse_channel_arg("CH1=a:b"),
        Ok(EmulatedChannel::new("CH1", "a:b"))
    );
    for bad in [
        "CH1",
        "=TOKEN",
        "CH1=",
        "CH1=:phone",
        "CH1=TOKEN:phone:fast",
        "CH1=TOKEN:custom:-1",
    ] {
        assert!(parse_channel_arg(bad).is_err(), "{bad}");
    }
}

#[test]
fn recorded_types_serialize_with_spec_field_names() {
    let event = RecordedEvent {
        arrival_ms: 1,
        channel_id: "CH1".into(),
        contact_id: PHONE.into(),
        call: 3,
        event: json!({"mId": "m"}),
        duplicate: false,
    };
    let v = serde_json::to_value(&event).expect("serialize");
    assert_eq!(
        v,
        json!({"arrival_ms": 1, "channelId": "CH1", "contactId": PHONE, "call": 3, "event": {"mId": "m"}, "duplicate": false})
    );
    let back: RecordedEvent = serde_json::from_value(v).expect("deserialize");
    assert_eq!(back, event);
}

#[tokio::test]
async fn random_faults_cover_every_kind_and_store_only_where_documented() {
    let h = start(unlimited_cfg()).await;
    let post = |mid: &'static str| {
        let h = &h;
        async move {
            let started = Instant::now();
            let resp = h
                .http
                .post(format!("{}{WEBHOOK_PATH}", h.base))
                .bearer_auth(TOK1)
                .timeout(Duration::from_secs(2))
                .json(&envelope("CH1", PHONE, vec![text_event(mid)]))
                .send()
                .await;
            match resp {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r.headers().get("retry-after").cloned();
                    let body = r.text().await.ok();
                    (Some(status), retry_after, body, started.elapsed())
                }
                Err(_) => (None, None, None, started.elapsed()),
            }
        }
    };
    let set = |f: fn(&mut FaultRates)| {
        let mut rates = FaultRates {
            slow_ms: 300,
            ..FaultRates::default()
        };
        f(&mut rates);
        h.emu.set_fault_rates("CH1", rates);
    };
    set(|r| r.server_error = 1.0);
    assert_eq!(post("m-500").await.0, Some(500));
    set(|r| r.throttle = 1.0);
    let (status, retry_after, ..) = post("m-429").await;
    assert_eq!(
        (status, retry_after),
        (Some(429), Some("1".parse().unwrap()))
    );
    set(|r| r.throttle_bare = 1.0);
    let (status, retry_after, ..) = post("m-429-bare").await;
    assert_eq!((status, retry_after), (Some(429), None));
    set(|r| r.reset = 1.0);
    assert_eq!(post("m-reset").await.0, None);
    set(|r| r.hang = 1.0);
    assert_eq!(
        post("m-hang").await.0,
        None,
        "no answer within the client's 2 s"
    );
    set(|r| r.slow = 1.0);
    let (status, _, _, took) = post("m-late").await;
    assert_eq!(status, Some(200));
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );
    set(|r| r.slow_body = 1.0);
    let (status, _, body, took) = post("m-slow-body").await;
    assert_eq!(status, Some(200));
    assert_eq!(body.as_deref().map(str::trim), Some("{}"));
    assert!(took >= Duration::from_millis(200), "trickled over {took:?}");
    set(|_| {});
    assert_eq!(post("m-ok").await.0, Some(200));
    // The control API sets the same switches, and refuses impossible rates.
    let bad = h
        .control(
            "/_emulator/fault-rates",
            &json!({"channel": "CH1", "rates": {"server_error": 0.7, "reset": 0.7}}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.reason());
    let ok = h
        .control(
            "/_emulator/fault-rates",
            &json!({"channel": "CH1", "rates": {"server_error": 1.0}}),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(post("m-after-control").await.0, Some(500));
    let stored: Vec<String> = h
        .emu
        .events("CH1")
        .iter()
        .map(|e| e.event["mId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, ["m-late", "m-slow-body", "m-ok"]);
}
