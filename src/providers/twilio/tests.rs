//! Table-driven tests over fixture payloads shaped like Twilio's (tests/fixtures/twilio/),
//! and sends over loopback HTTP against the Twilio stand-in.

use super::*;
use crate::providers::InboundKind;
use crate::respondio::wire::{Attachment, AttachmentKind, StatusValue};
use crate::simulators::twilio::{MEDIA_BYTES, TwilioFault, TwilioSim, TwilioSimConfig};
use axum::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use std::time::Duration;

const AC: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "12345";
const FORM: &str = "application/x-www-form-urlencoded";
const STATUS_URL: &str = "https://gw.example.com/channels/tw/status";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/twilio/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
        .trim_end()
        .to_string()
}

fn config(api_base: &str) -> TwilioConfig {
    TwilioConfig {
        account_sid: AC.into(),
        auth_token: Secret::new(TOKEN),
        api_key_sid: None,
        api_key_secret: None,
        from: Some("+14155550199".into()),
        messaging_service_sid: None,
        api_base: api_base.into(),
        rate_limit: 10,
        proxy_media: false,
        status_callback: true,
        connection_overrides: None,
    }
}

fn provider_with(cfg: TwilioConfig) -> Twilio {
    Twilio::new(cfg, STATUS_URL.into(), reqwest::Client::new())
}

fn provider(api_base: &str) -> Twilio {
    provider_with(config(api_base))
}

fn with_req<T>(
    url: &str,
    content_type: &str,
    signature: Option<&str>,
    body: &str,
    f: impl FnOnce(&WebhookRequest<'_>) -> T,
) -> T {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
    if let Some(s) = signature {
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(s).unwrap());
    }
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let req = WebhookRequest {
        query,
        headers: &h,
        body: body.as_bytes(),
        public_url: url,
    };
    f(&req)
}

#[test]
fn config_defaults_and_problems() {
    let cfg: TwilioConfig = serde_json::from_value(serde_json::json!({
        "account_sid": AC, "auth_token": "t", "from": "+14155550199"
    }))
    .unwrap();
    assert_eq!(cfg.api_base, "https://api.twilio.com");
    assert_eq!(cfg.rate_limit, 10);
    assert!(cfg.status_callback && !cfg.proxy_media);
    assert!(cfg.problems("channel[0].twilio").is_empty());
    assert!(
        !format!("{cfg:?}").contains("\"t\""),
        "auth_token must not show"
    );

    let sk = "SK0123456789abcdef0123456789abcdef";
    let mg = "MG0123456789abcdef0123456789abcdef";
    let base = serde_json::json!({ "account_sid": AC, "auth_token": "t", "from": "+14155550199" });
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v;
        }
        b
    };
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("account_sid", with("account_sid", "AC123".into())),
        ("account_sid", with("account_sid", sk.into())),
        ("auth_token", with("auth_token", "".into())),
        ("from", with("from", serde_json::Value::Null)),
        ("from", with("from", "+0123".into())),
        ("from", with("from", "whatsapp:14155550199".into())),
        ("from", with("from", "Way-Too-Long-Sender".into())),
        ("api_key_secret", with("api_key_sid", sk.into())),
        ("api_key_sid", with("api_key_secret", "s".into())),
        (
            "messaging_service_sid",
            with("messaging_service_sid", "MG1".into()),
        ),
        (
            "api_base",
            with("api_base", "https://u:p@api.twilio.com".into()),
        ),
        ("rate_limit", with("rate_limit", 0.into())),
        (
            "connection_overrides",
            with("connection_overrides", "retries=3".into()),
        ),
        (
            "connection_overrides",
            with("connection_overrides", "rc=3&rp".into()),
        ),
    ];
    for (key, v) in &cases {
        let cfg: TwilioConfig = serde_json::from_value(v.clone()).unwrap();
        let p = cfg.problems("channel[0].twilio");
        assert_eq!(p.len(), 1, "{v}: {p:?}");
        assert_eq!(p[0].0, format!("channel[0].twilio.{key}"), "{v}");
    }
    // Senders that are fine: a number, a WhatsApp number, an alphanumeric id, or only a
    // Messaging Service; an API key pair.
    for ok in [
        with("from", "whatsapp:+14155238886".into()),
        with("from", "ACMEShop".into()),
        with("from", serde_json::Value::Null)
            .as_object()
            .cloned()
            .map(|mut o| {
                o.insert("messaging_service_sid".into(), mg.into());
                serde_json::Value::Object(o)
            })
            .unwrap(),
        with("api_key_sid", sk.into())
            .as_object()
            .cloned()
            .map(|mut o| {
                o.insert("api_key_secret".into(), "s".into());
                serde_json::Value::Object(o)
            })
            .unwrap(),
    ] {
        let cfg: TwilioConfig = serde_json::from_value(ok.clone()).unwrap();
        assert!(
            cfg.problems("p").is_empty(),
            "{ok}: {:?}",
            cfg.problems("p")
        );
    }
}

#[test]
fn signature_table() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(&fixture("signatures.json")).unwrap();
    assert!(cases.len() >= 10);
    let token = Secret::new(TOKEN);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let got = verify_signature(
            &token,
            c["url"].as_str().unwrap(),
            c["content_type"].as_str().unwrap(),
            c["body"].as_str().unwrap().as_bytes(),
            c["signature"].as_str().unwrap(),
        );
        assert_eq!(
            got.is_ok(),
            c["valid"].as_bool().unwrap(),
            "{name}: {got:?}"
        );
        if let Err(reason) = got {
            assert!(!reason.contains(TOKEN), "{name}: reason leaks the token");
        }
    }
    // Our signer agrees with the published example (the stand-in signs with it).
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(cases[0]["body"].as_str().unwrap().as_bytes())
            .into_owned()
            .collect();
    assert_eq!(
        sign(TOKEN, cases[0]["url"].as_str().unwrap(), &params),
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    );
}

#[test]
fn url_variants_follow_the_sdk() {
    assert_eq!(
        url_variants("https://gw.example.com/a?b=1"),
        [
            "https://gw.example.com/a?b=1",
            "https://gw.example.com:443/a?b=1"
        ]
    );
    assert_eq!(
        url_variants("http://127.0.0.1:3030/a"),
        ["http://127.0.0.1:3030/a", "http://127.0.0.1/a"]
    );
    assert_eq!(
        url_variants("http://[::1]/a"),
        ["http://[::1]/a", "http://[::1]:80/a"]
    );
    assert_eq!(
        url_variants("http://[::1]:8080"),
        ["http://[::1]:8080", "http://[::1]"]
    );
    assert_eq!(url_variants("nonsense"), ["nonsense"]);
}

#[test]
fn authenticate_needs_the_header_and_a_token() {
    let p = provider("http://x");
    let url = "https://gw.example.com/channels/tw/inbound";
    let body = fixture("inbound_sms.form");
    let err = with_req(url, FORM, None, &body, |r| p.authenticate(r)).unwrap_err();
    assert!(err.contains("X-Twilio-Signature"), "{err}");
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let good = sign(TOKEN, url, &params);
    assert!(with_req(url, FORM, Some(&good), &body, |r| p.authenticate(r)).is_ok());
    let mut cfg = config("http://x");
    cfg.auth_token = Secret::new("");
    let p = provider_with(cfg);
    assert!(
        with_req(url, FORM, Some(&sign("", url, &params)), &body, |r| p
            .authenticate(r))
        .is_err()
    );
}

/// (dedupe key, contact, message, media source) of one expected event.
type WantEvent = (&'static str, &'static str, Message, Option<&'static str>);

struct InboundCase {
    fixture: &'static str,
    /// (dedupe key, contact, message, media source) per event, or the error's words.
    want: Result<Vec<WantEvent>, &'static str>,
    first_name: Option<&'static str>,
}

#[test]
fn inbound_table() {
    let text = |t: &str| Message::Text { text: t.into() };
    let m0 = "https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/MM5f4e3d2c1b0a99887766554433221100/Media/ME0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    let m1 = "https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/MM5f4e3d2c1b0a99887766554433221100/Media/ME1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b";
    let att = |kind, url: &str, desc: Option<&str>| Message::Attachment {
        attachment: Attachment {
            kind,
            url: url.into(),
            file_name: None,
            description: desc.map(str::to_string),
        },
    };
    let cases = vec![
        InboundCase {
            fixture: "inbound_sms.form",
            want: Ok(vec![(
                "SMe287a8b6c5d4e3f2a1b0c9d8e7f6a5b4",
                "+14133881111",
                text("Is my order on its way?"),
                None,
            )]),
            first_name: None,
        },
        InboundCase {
            fixture: "inbound_mms.form",
            want: Ok(vec![
                (
                    "MM5f4e3d2c1b0a99887766554433221100",
                    "+14133881111",
                    att(
                        AttachmentKind::Image,
                        m0,
                        Some("Two pictures of the damage"),
                    ),
                    Some(m0),
                ),
                (
                    "MM5f4e3d2c1b0a99887766554433221100#1",
                    "+14133881111",
                    att(AttachmentKind::Video, m1, None),
                    Some(m1),
                ),
            ]),
            first_name: None,
        },
        InboundCase {
            fixture: "inbound_whatsapp.form",
            want: Ok(vec![(
                "SM11112222333344445555666677778888",
                "+5511987654321",
                text("Olá! Can I change my delivery address?"),
                None,
            )]),
            first_name: Some("Ana Souza"),
        },
        InboundCase {
            fixture: "inbound_whatsapp_location.form",
            want: Ok(vec![(
                "SM99998888777766665555444433332222",
                "+5511987654321",
                Message::Location {
                    latitude: -23.5613,
                    longitude: -46.6565,
                    address: Some("Av. Paulista, 1578".into()),
                    name: Some("MASP".into()),
                },
                None,
            )]),
            first_name: Some("Ana Souza"),
        },
        InboundCase {
            fixture: "inbound_missing_sid.form",
            want: Err("MessageSid"),
            first_name: None,
        },
        InboundCase {
            fixture: "inbound_empty.form",
            want: Err("no body and no media"),
            first_name: None,
        },
        InboundCase {
            fixture: "inbound_bad_from.form",
            want: Err("not a phone number"),
            first_name: None,
        },
    ];
    // With proxy_media the attachments name their source for the gateway's /media proxy.
    let mut cfg = config("https://api.twilio.com");
    cfg.proxy_media = true;
    let proxied = provider_with(cfg);
    let plain = provider("https://api.twilio.com");
    for c in cases {
        let body = fixture(c.fixture);
        for (p, proxy) in [(&proxied, true), (&plain, false)] {
            let got = with_req("https://x/in", FORM, None, &body, |r| p.parse_inbound(r));
            match (&got, &c.want) {
                (Ok(events), Ok(want)) => {
                    assert_eq!(events.len(), want.len(), "{}", c.fixture);
                    for (e, (key, contact, msg, media)) in events.iter().zip(want) {
                        assert_eq!(e.dedupe_key, *key, "{}", c.fixture);
                        assert_eq!(e.provider_id, key.split('#').next().unwrap());
                        assert_eq!(e.contact_id, *contact, "{}", c.fixture);
                        assert_eq!(e.kind, InboundKind::Message);
                        assert_eq!(&e.message, msg, "{}", c.fixture);
                        let contact_rec = e.contact.as_ref().unwrap();
                        assert_eq!(contact_rec.phone.as_deref(), Some(*contact));
                        assert_eq!(
                            contact_rec.first_name.as_deref(),
                            c.first_name,
                            "{}",
                            c.fixture
                        );
                        let want_media = media.filter(|_| proxy);
                        assert_eq!(
                            e.media.as_ref().map(|m| m.source.as_str()),
                            want_media,
                            "{} proxy={proxy}",
                            c.fixture
                        );
                        assert!(e.timestamp_ms > 1_700_000_000_000);
                    }
                }
                (Err(e), Err(words)) => assert!(e.contains(words), "{}: {e}", c.fixture),
                _ => panic!("{}: got {got:?}, want {:?}", c.fixture, c.want),
            }
        }
    }
    let ev = with_req(
        "https://x/in",
        FORM,
        None,
        &fixture("inbound_mms.form"),
        |r| proxied.parse_inbound(r),
    )
    .unwrap();
    assert_eq!(
        ev[0].media.as_ref().unwrap().content_type.as_deref(),
        Some("image/jpeg")
    );
}

#[test]
fn receipt_table() {
    use StatusValue::*;
    let sid = "SM1f0e8ae6ade23cb3c0ce4524424e406f";
    let cases: &[(&str, Option<StatusValue>, Option<&str>, &str)] = &[
        ("status_sent.form", Some(Sent), None, "sent"),
        ("status_delivered.form", Some(Delivered), None, "delivered"),
        (
            "status_undelivered.form",
            Some(Failed),
            Some("Unreachable destination handset (Twilio error 30003)"),
            "undelivered",
        ),
        (
            "status_failed_message.form",
            Some(Failed),
            Some("Carrier violation (Twilio error 30007)"),
            "failed",
        ),
        ("status_read.form", Some(Read), None, "read"),
        ("status_queued.form", None, None, "queued"),
        (
            "status_canceled.form",
            Some(Failed),
            Some("Twilio reported canceled"),
            "canceled",
        ),
    ];
    let p = provider("http://x");
    for (name, status, reason, raw) in cases {
        let got = with_req("https://x/st", FORM, None, &fixture(name), |r| {
            p.parse_receipts(r)
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r.provider_id, sid, "{name}");
        assert_eq!(r.status, *status, "{name}");
        assert_eq!(r.reason.as_deref(), *reason, "{name}");
        assert_eq!(r.dedupe_key, format!("{sid}:{raw}"), "{name}");
    }
    let err = with_req(
        "https://x/st",
        FORM,
        None,
        &fixture("status_missing_status.form"),
        |r| p.parse_receipts(r),
    )
    .unwrap_err();
    assert!(err.contains("MessageStatus"), "{err}");
}

fn kind(r: &Result<Accepted, SendError>) -> String {
    match r {
        Ok(a) => format!("ok {}", a.provider_id),
        Err(SendError::Ambiguous(_)) => "ambiguous".into(),
        Err(SendError::Permanent(_)) => "permanent".into(),
        Err(SendError::ChannelFault(_)) => "channel".into(),
        Err(SendError::Throttled {
            retry_after: Some(d),
            ..
        }) => format!("throttled {}s", d.as_secs()),
        Err(SendError::Throttled { .. }) => "throttled".into(),
        Err(SendError::Unsent(_)) => "unsent".into(),
        Err(SendError::Rotated(_)) => "rotated".into(),
    }
}

#[test]
fn classify_table() {
    let f = |n: &str| Ok(fixture(n).into_bytes());
    type Body = Result<Vec<u8>, String>;
    /// (name, HTTP status, Retry-After, body, outcome, words in the reason)
    type Row = (
        &'static str,
        u16,
        Option<u64>,
        Body,
        &'static str,
        &'static str,
    );
    let cases: Vec<Row> = vec![
        (
            "created",
            201,
            None,
            f("send_created.json"),
            "ok SM1f0e8ae6ade23cb3c0ce4524424e406f",
            "",
        ),
        (
            "created without sid",
            201,
            None,
            f("send_created_no_sid.json"),
            "ambiguous",
            "",
        ),
        (
            "created, not json",
            201,
            None,
            Ok(b"<html>".to_vec()),
            "ambiguous",
            "",
        ),
        (
            "created, body lost",
            201,
            None,
            Err("reset".into()),
            "ambiguous",
            "",
        ),
        (
            "invalid To",
            400,
            None,
            f("error_21211.json"),
            "permanent",
            "21211",
        ),
        (
            "opted out",
            400,
            None,
            f("error_21610.json"),
            "permanent",
            "unsubscribed",
        ),
        (
            "bad credentials",
            401,
            None,
            f("error_20003.json"),
            "channel",
            "20003",
        ),
        (
            "too many requests",
            429,
            Some(3),
            f("error_20429.json"),
            "throttled 3s",
            "20429",
        ),
        (
            "queue overflow code on a 400",
            400,
            None,
            f("error_30001.json"),
            "throttled",
            "30001",
        ),
        (
            "From not ours",
            400,
            None,
            f("error_21606.json"),
            "channel",
            "21606",
        ),
        (
            "server error",
            500,
            None,
            f("error_20500.json"),
            "ambiguous",
            "20500",
        ),
        ("redirect", 302, None, Ok(Vec::new()), "channel", "redirect"),
        (
            "unknown 4xx",
            404,
            None,
            Ok(b"not found".to_vec()),
            "permanent",
            "not found",
        ),
    ];
    for (name, status, after, body, want, words) in cases {
        let got = classify(status, after.map(Duration::from_secs), body);
        assert_eq!(kind(&got), want, "{name}: {got:?}");
        if let Err(e) = &got {
            assert!(e.reason().contains(words), "{name}: {}", e.reason());
        }
    }
}

// ---- over loopback HTTP, against the stand-in ----

async fn start_sim(media_auth: bool) -> (TwilioSim, String) {
    let sim = TwilioSim::new(TwilioSimConfig {
        account_sid: AC.into(),
        auth_token: TOKEN.into(),
        media_auth,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(listener));
    (sim, base)
}

async fn send(p: &Twilio, m: &Message) -> Result<Accepted, SendError> {
    p.send(SendRequest {
        mid: "01HZXMID",
        contact_id: "+14155550100",
        message: m,
    })
    .await
}

#[tokio::test]
async fn sends_text_media_and_degraded_messages() {
    let (sim, base) = start_sim(false).await;
    let p = provider(&base);
    let messages = [
        Message::Text {
            text: "Your order shipped".into(),
        },
        Message::Attachment {
            attachment: Attachment {
                kind: AttachmentKind::Image,
                url: "https://cdn.example.com/p/shoe.jpg".into(),
                file_name: None,
                description: Some("Our new shoe".into()),
            },
        },
        Message::QuickReply {
            title: Some("Pick".into()),
            replies: vec!["A".into(), "B".into()],
        },
        Message::Location {
            latitude: 1.5,
            longitude: 103.8,
            address: None,
            name: Some("Shop".into()),
        },
    ];
    for m in &messages {
        let got = send(&p, m).await.unwrap();
        assert!(got.provider_id.len() == 34, "{got:?}");
    }
    let sent = sim.sent();
    assert!(sent.iter().all(|a| a.status == 201));
    for a in &sent {
        assert_eq!(a.param("To"), Some("+14155550100"));
        assert_eq!(a.param("From"), Some("+14155550199"));
        assert_eq!(a.param("StatusCallback"), Some(STATUS_URL));
    }
    assert_eq!(sent[0].param("Body"), Some("Your order shipped"));
    assert_eq!(
        sent[1].params_named("MediaUrl"),
        ["https://cdn.example.com/p/shoe.jpg"]
    );
    assert_eq!(sent[1].param("Body"), Some("Our new shoe"));
    assert!(sent[1].sid.as_deref().unwrap().starts_with("MM"));
    assert_eq!(sent[2].param("Body"), Some("Pick\n1. A\n2. B"));
    assert_eq!(
        sent[3].param("Body"),
        Some("Shop\nhttps://maps.google.com/?q=1.5,103.8")
    );
}

#[tokio::test]
async fn whatsapp_and_messaging_service_addressing() {
    let (sim, base) = start_sim(false).await;
    let mut cfg = config(&base);
    cfg.from = Some("whatsapp:+14155238886".into());
    cfg.status_callback = false;
    send(
        &provider_with(cfg),
        &Message::Text {
            text: "Olá".into()
        },
    )
    .await
    .unwrap();
    let mut cfg = config(&base);
    cfg.from = None;
    cfg.messaging_service_sid = Some("MG0123456789abcdef0123456789abcdef".into());
    send(&provider_with(cfg), &Message::Text { text: "hi".into() })
        .await
        .unwrap();
    let sent = sim.sent();
    assert_eq!(sent[0].param("To"), Some("whatsapp:+14155550100"));
    assert_eq!(sent[0].param("From"), Some("whatsapp:+14155238886"));
    assert_eq!(sent[0].param("StatusCallback"), None);
    assert_eq!(sent[1].param("From"), None);
    assert_eq!(
        sent[1].param("MessagingServiceSid"),
        Some("MG0123456789abcdef0123456789abcdef")
    );
}

#[tokio::test]
async fn send_errors_are_typed_from_the_stand_in() {
    let (sim, base) = start_sim(false).await;
    let p = provider(&base);
    let cases = vec![
        (TwilioFault::Http5xx(503), "ambiguous"),
        (
            TwilioFault::Throttle {
                retry_after: Some(7),
            },
            "throttled 7s",
        ),
        (TwilioFault::Unauthorized, "channel"),
        (
            TwilioFault::ApiError {
                status: 400,
                code: 21211,
            },
            "permanent",
        ),
        (
            TwilioFault::ApiError {
                status: 400,
                code: 21606,
            },
            "channel",
        ),
        (
            TwilioFault::ApiError {
                status: 400,
                code: 63018,
            },
            "throttled",
        ),
        (TwilioFault::DropConnection, "ambiguous"),
    ];
    let text = Message::Text { text: "hi".into() };
    for (fault, want) in cases {
        let name = format!("{fault:?}");
        sim.push_fault(fault);
        let got = send(&p, &text).await;
        assert_eq!(kind(&got), want, "{name}: {got:?}");
    }
    assert!(send(&p, &text).await.is_ok(), "service resumes");
    // The stand-in's own rules come back as permanent errors with Twilio's reason.
    let long = Message::Text {
        text: "x".repeat(1601),
    };
    let err = send(&p, &long).await.unwrap_err();
    assert!(
        matches!(&err, SendError::Permanent(r) if r.contains("21617") && r.contains("1600")),
        "{err:?}"
    );
    // Wrong credentials: a channel fault that does not leak the secret.
    let mut cfg = config(&base);
    cfg.auth_token = Secret::new("wrong-token");
    let err = send(&provider_with(cfg), &text).await.unwrap_err();
    assert!(
        matches!(&err, SendError::ChannelFault(r) if r.contains("20003")),
        "{err:?}"
    );
    assert!(!err.reason().contains("wrong-token"));
}

#[tokio::test]
async fn connection_refused_is_unsent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = send(&provider(&base), &Message::Text { text: "hi".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Unsent(_)), "{err:?}");
}

#[tokio::test]
async fn resolve_media_gives_basic_auth_for_this_accounts_media_only() {
    let (_sim, base) = start_sim(true).await;
    let mut cfg = config(&base);
    cfg.proxy_media = true;
    let p = provider_with(cfg);
    let url = format!("{base}/2010-04-01/Accounts/{AC}/Messages/MM1/Media/ME1");
    let fetch = p.resolve_media(&url).await.unwrap();
    assert_eq!(fetch.url, url);
    assert_eq!(fetch.headers.len(), 1);
    assert_eq!(fetch.headers[0].0, "Authorization");
    assert!(!format!("{:?}", fetch.headers[0].1).contains(TOKEN));
    // The header opens the media at the stand-in, which refuses it without.
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let resp = http
        .get(&fetch.url)
        .header("authorization", fetch.headers[0].1.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), MEDIA_BYTES);
    // Never toward another host, another account, or a non-media path.
    for bad in [
        format!("https://evil.example.com/2010-04-01/Accounts/{AC}/Messages/MM1/Media/ME1"),
        format!(
            "{base}/2010-04-01/Accounts/AC99999999999999999999999999999999/Messages/MM1/Media/ME1"
        ),
        format!("{base}/2010-04-01/Accounts/{AC}/Messages.json"),
        "not a url".to_string(),
    ] {
        assert!(p.resolve_media(&bad).await.is_err(), "{bad}");
    }
}

#[test]
fn webhook_reply_is_empty_twiml() {
    let p = provider("http://x");
    for route in [WebhookRoute::Inbound, WebhookRoute::Status] {
        let r = p.webhook_reply(route);
        assert_eq!(r.status, axum::http::StatusCode::OK);
        assert!(r.content_type.starts_with("text/xml"));
        assert_eq!(r.body, TWIML_EMPTY);
    }
}

/// What `rio-bridge check-config` prints comes from `Config::from_toml`'s problems.
#[test]
fn check_config_reports_missing_credentials() {
    let toml = |section: &str| {
        format!(
            r#"
[[channel]]
name = "tw"
respondio_channel_id = "CH1"
respondio_token = "tok"
provider = "twilio"
{section}
"#
        )
    };
    let keys = |text: &str| -> Vec<String> {
        match crate::config::Config::from_toml(text, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|p| p.key).collect(),
        }
    };
    let ok = format!(
        "[channel.twilio]\naccount_sid = \"{AC}\"\nauth_token = \"t\"\nfrom = \"+14155550199\""
    );
    assert!(keys(&toml(&ok)).is_empty(), "{:?}", keys(&toml(&ok)));
    assert_eq!(keys(&toml("")), ["channel[0].twilio"]);
    assert_eq!(
        keys(&toml(
            &ok.replace("auth_token = \"t\"", "auth_token = \"\"")
        )),
        ["channel[0].twilio.auth_token"]
    );
    // An absent key is a deserialisation problem at the section's path.
    let absent = keys(&toml(&ok.replace("auth_token = \"t\"\n", "")));
    assert_eq!(absent.len(), 1);
    assert!(absent[0].starts_with("channel[0].twilio"), "{absent:?}");
    // Twilio signs its webhooks: no webhook_secret is needed.
    assert!(
        !keys(&toml(&ok))
            .iter()
            .any(|k| k.contains("webhook_secret"))
    );
}

#[tokio::test]
async fn connection_overrides_ride_on_the_status_callback_and_verify_either_way() {
    let (sim, base) = start_sim(false).await;
    let mut cfg = config(&base);
    cfg.connection_overrides = Some("#rc=3&rp=5xx,ct,rt".into());
    assert!(cfg.problems("p").is_empty(), "{:?}", cfg.problems("p"));
    let p = provider_with(cfg);
    send(&p, &Message::Text { text: "hi".into() })
        .await
        .unwrap();
    assert_eq!(
        sim.sent()[0].param("StatusCallback"),
        Some(format!("{STATUS_URL}#rc=3&rp=5xx,ct,rt").as_str())
    );
    let body = fixture("status_delivered.form");
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    for signed_url in [
        STATUS_URL.to_string(),
        format!("{STATUS_URL}#rc=3&rp=5xx,ct,rt"),
    ] {
        let sig = sign(TOKEN, &signed_url, &params);
        let got = with_req(STATUS_URL, FORM, Some(&sig), &body, |r| p.authenticate(r));
        assert!(got.is_ok(), "{signed_url}: {got:?}");
    }
    let sig = sign(TOKEN, &format!("{STATUS_URL}#rc=1"), &params);
    assert!(with_req(STATUS_URL, FORM, Some(&sig), &body, |r| p.authenticate(r)).is_err());
}

#[test]
fn the_example_config_passes_check_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/twilio.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let cfg = crate::config::Config::from_toml(&text, &|k| Some(format!("value-of-{k}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let tw = cfg.channels[0].twilio.as_ref().unwrap();
    assert_eq!(tw.overrides(), Some("rc=3&rp=5xx,ct,rt"));
}
