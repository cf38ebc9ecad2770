//! Table-driven tests over fixture payloads shaped like Vonage's (tests/fixtures/vonage/),
//! and sends over loopback HTTP against the Vonage stand-in.

use super::*;
use crate::clock::now_ms;
use crate::providers::InboundKind;
use crate::respondio::wire::{Attachment, AttachmentKind, StatusValue};
use crate::simulators::vonage::{VonageFault, VonageSim, VonageSimConfig};
use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION, header::CONTENT_TYPE};
use sha2::{Digest, Sha256};
use std::time::Duration;

const SIG_SECRET: &str = "vonage-signature-secret-0123456789";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/vonage/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
        .trim_end()
        .to_string()
}

fn config(api_base: &str) -> VonageConfig {
    VonageConfig {
        api_key: "abcd1234".into(),
        api_secret: Secret::new("api-secret"),
        signature_secret: Secret::new(SIG_SECRET),
        from: "447700900001".into(),
        channel: "sms".into(),
        api_base: api_base.into(),
        rate_limit: 30,
        max_token_age_secs: 300,
    }
}

fn provider_with(cfg: VonageConfig) -> Vonage {
    Vonage::new(cfg, reqwest::Client::new())
}

fn provider(api_base: &str) -> Vonage {
    provider_with(config(api_base))
}

fn with_req<T>(
    authorization: Option<&str>,
    body: &str,
    f: impl FnOnce(&WebhookRequest<'_>) -> T,
) -> T {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(a) = authorization {
        h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
    }
    let req = WebhookRequest {
        query: "",
        headers: &h,
        body: body.as_bytes(),
        public_url: "https://gw.example.com/channels/vo/inbound",
    };
    f(&req)
}

#[test]
fn config_defaults_and_problems() {
    let base = json!({ "api_key": "abcd1234", "api_secret": "s", "signature_secret": "g", "from": "447700900001" });
    let cfg: VonageConfig = serde_json::from_value(base.clone()).unwrap();
    assert_eq!(cfg.api_base, "https://api.nexmo.com");
    assert_eq!(
        (cfg.channel.as_str(), cfg.rate_limit, cfg.max_token_age_secs),
        ("sms", 30, 300)
    );
    assert!(cfg.problems("channel[0].vonage").is_empty());
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("\"s\"") && !shown.contains("\"g\""),
        "{shown}"
    );

    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, Value)> = vec![
        ("api_key", with("api_key", json!(" "))),
        ("api_secret", with("api_secret", json!(""))),
        ("signature_secret", with("signature_secret", json!(""))),
        ("from", with("from", json!("12"))),
        ("from", with("from", json!("Way-Too-Long"))),
        ("channel", with("channel", json!("messenger"))),
        ("api_base", with("api_base", json!("api.nexmo.com"))),
        ("rate_limit", with("rate_limit", json!(0))),
        ("max_token_age_secs", with("max_token_age_secs", json!(5))),
    ];
    for (key, v) in &cases {
        let cfg: VonageConfig = serde_json::from_value(v.clone()).unwrap();
        let p = cfg.problems("channel[0].vonage");
        assert_eq!(p.len(), 1, "{v}: {p:?}");
        assert_eq!(p[0].0, format!("channel[0].vonage.{key}"), "{v}");
    }
    // An alphanumeric sender is fine for SMS only.
    let alpha = with("from", json!("ACMEShop"));
    let cfg: VonageConfig = serde_json::from_value(alpha.clone()).unwrap();
    assert!(cfg.problems("p").is_empty());
    let mut wa = alpha;
    wa["channel"] = json!("whatsapp");
    let cfg: VonageConfig = serde_json::from_value(wa).unwrap();
    assert_eq!(cfg.problems("p")[0].0, "p.from");
    // A missing credential is a deserialisation error naming the field.
    let mut no_secret = base.clone();
    no_secret
        .as_object_mut()
        .unwrap()
        .remove("signature_secret");
    let err = serde_json::from_value::<VonageConfig>(no_secret).unwrap_err();
    assert!(err.to_string().contains("signature_secret"), "{err}");
}

#[test]
fn token_table() {
    let t: Value = serde_json::from_str(&fixture("tokens.json")).unwrap();
    let secret = Secret::new(t["secret"].as_str().unwrap());
    let body = fixture(t["body_fixture"].as_str().unwrap());
    let iat = t["iat"].as_i64().unwrap();
    let max_age = t["max_age_secs"].as_u64().unwrap();
    let cases = t["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let now = iat + c["now_offset"].as_i64().unwrap();
        let got = verify_hs256(c["token"].as_str().unwrap(), &secret)
            .and_then(|claims| check_claims(&claims, body.as_bytes(), "abcd1234", max_age, now));
        assert_eq!(
            got.is_ok(),
            c["valid"].as_bool().unwrap(),
            "{name}: {got:?}"
        );
        if let Err(reason) = got {
            let words = c["words"].as_str().unwrap();
            assert!(reason.contains(words), "{name}: {reason}");
            assert!(!reason.contains(secret.expose()), "{name}");
        }
    }
}

#[test]
fn authenticate_reads_the_bearer_token() {
    let p = provider("http://x");
    let body = fixture("inbound_sms.json");
    let claims = json!({
        "iat": now_ms() / 1000,
        "jti": "x",
        "payload_hash": hex::encode(Sha256::digest(body.as_bytes())),
        "api_key": "abcd1234",
    });
    let token = sign_hs256(&claims, SIG_SECRET);
    assert!(
        with_req(Some(&format!("Bearer {token}")), &body, |r| p
            .authenticate(r))
        .is_ok()
    );
    assert!(
        with_req(Some(&format!("bearer {token}")), &body, |r| p
            .authenticate(r))
        .is_ok()
    );
    let cases = [
        (None, "no Authorization"),
        (Some(format!("Basic {token}")), "not a Bearer"),
        (Some("Bearer".to_string()), "not a Bearer"),
    ];
    for (auth, words) in cases {
        let err = with_req(auth.as_deref(), &body, |r| p.authenticate(r)).unwrap_err();
        assert!(err.contains(words), "{auth:?}: {err}");
    }
    // The body is what the hash covers: one changed byte fails.
    let changed = body.replace("Thanks!", "Thanks?");
    let err = with_req(Some(&format!("Bearer {token}")), &changed, |r| {
        p.authenticate(r)
    })
    .unwrap_err();
    assert!(err.contains("payload_hash"), "{err}");
    // No secret configured: nothing is authentic.
    let mut cfg = config("http://x");
    cfg.signature_secret = Secret::new("");
    let token = sign_hs256(&claims, "");
    let p = provider_with(cfg);
    assert!(
        with_req(Some(&format!("Bearer {token}")), &body, |r| p
            .authenticate(r))
        .is_err()
    );
}

#[test]
fn inbound_table() {
    let att = |kind, url: &str, name: Option<&str>, desc: Option<&str>| Message::Attachment {
        attachment: Attachment {
            kind,
            url: url.into(),
            file_name: name.map(str::to_string),
            description: desc.map(str::to_string),
        },
    };
    type Want = Result<
        (
            &'static str,
            &'static str,
            Message,
            Option<&'static str>,
            i64,
        ),
        &'static str,
    >;
    let cases: Vec<(&str, Want)> = vec![
        (
            "inbound_sms.json",
            Ok((
                "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab",
                "+447700900000",
                Message::Text {
                    text: "Thanks!".into(),
                },
                None,
                1_736_935_260_000,
            )),
        ),
        (
            "inbound_whatsapp_image.json",
            Ok((
                "bbbbbbbb-cccc-4ddd-8eee-0123456789ab",
                "+447700900000",
                att(
                    AttachmentKind::Image,
                    "https://api-us.nexmo.com/v3/media/3a3b3c3d-0000-4000-8000-000000000001",
                    None,
                    Some("My receipt"),
                ),
                Some("Jane Doe"),
                1_736_935_320_123,
            )),
        ),
        (
            "inbound_whatsapp_file.json",
            Ok((
                "cccccccc-dddd-4eee-8fff-0123456789ab",
                "+447700900000",
                att(
                    AttachmentKind::File,
                    "https://api-us.nexmo.com/v3/media/3a3b3c3d-0000-4000-8000-000000000002",
                    Some("invoice.pdf"),
                    None,
                ),
                Some("Jane Doe"),
                1_736_935_380_000,
            )),
        ),
        (
            "inbound_whatsapp_location.json",
            Ok((
                "dddddddd-eeee-4fff-8aaa-0123456789ab",
                "+447700900000",
                Message::Location {
                    latitude: 51.5072,
                    longitude: -0.1276,
                    address: Some("London WC2N 5DN".into()),
                    name: Some("Trafalgar Square".into()),
                },
                Some("Jane Doe"),
                1_736_935_440_000,
            )),
        ),
        (
            "inbound_whatsapp_reply.json",
            Ok((
                "eeeeeeee-ffff-4aaa-8bbb-0123456789ab",
                "+447700900000",
                Message::Text {
                    text: "Track my order".into(),
                },
                Some("Jane Doe"),
                1_736_935_500_000,
            )),
        ),
        (
            "inbound_mms_audio.json",
            Ok((
                "ffffffff-aaaa-4bbb-8ccc-0123456789ab",
                "+14155550100",
                att(
                    AttachmentKind::Audio,
                    "https://api-us.nexmo.com/v3/media/3a3b3c3d-0000-4000-8000-000000000003",
                    None,
                    None,
                ),
                None,
                1_736_935_560_000,
            )),
        ),
        (
            "inbound_unsupported.json",
            Err("\"unsupported\" is not supported"),
        ),
        ("inbound_missing_uuid.json", Err("message_uuid")),
        ("inbound_broken.json", Err("not valid JSON")),
    ];
    let p = provider("http://x");
    for (name, want) in cases {
        let got = with_req(None, &fixture(name), |r| p.parse_inbound(r));
        match (got, want) {
            (Ok(ev), Ok((uuid, contact, message, first_name, ts))) => {
                assert_eq!(ev.len(), 1, "{name}");
                let e = &ev[0];
                assert_eq!(
                    (e.dedupe_key.as_str(), e.provider_id.as_str()),
                    (uuid, uuid),
                    "{name}"
                );
                assert_eq!(e.contact_id, contact, "{name}");
                assert_eq!(e.kind, InboundKind::Message);
                assert_eq!(e.message, message, "{name}");
                assert_eq!(e.timestamp_ms, ts, "{name}");
                let c = e.contact.as_ref().unwrap();
                assert_eq!(c.phone.as_deref(), Some(contact));
                assert_eq!(c.first_name.as_deref(), first_name, "{name}");
                assert!(e.media.is_none());
            }
            (Err(e), Err(words)) => assert!(e.contains(words), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn receipt_table() {
    use StatusValue::*;
    let uuid = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab";
    /// (fixture, status, reason words, dedupe key suffix, timestamp)
    type Row = (
        &'static str,
        Option<StatusValue>,
        Option<&'static str>,
        &'static str,
        i64,
    );
    let cases: &[Row] = &[
        (
            "status_submitted.json",
            Some(Sent),
            None,
            "submitted:2025-01-15T10:00:01.000Z",
            1_736_935_201_000,
        ),
        (
            "status_delivered.json",
            Some(Delivered),
            None,
            "delivered:2025-01-15T10:00:05.000Z",
            1_736_935_205_000,
        ),
        (
            "status_read.json",
            Some(Read),
            None,
            "read:2025-01-15T10:00:09.000Z",
            1_736_935_209_000,
        ),
        (
            "status_rejected.json",
            Some(Failed),
            Some("The destination is unreachable (Vonage error 1260)"),
            "rejected:2025-01-15T10:00:05.000Z",
            1_736_935_205_000,
        ),
        (
            "status_undeliverable.json",
            Some(Failed),
            Some("1250"),
            "undeliverable:2025-01-15T10:00:06.000Z",
            1_736_935_206_000,
        ),
        (
            "status_accepted.json",
            None,
            None,
            "accepted:2025-01-15T10:00:00.500Z",
            1_736_935_200_500,
        ),
    ];
    let p = provider("http://x");
    for (name, status, reason, key, ts) in cases {
        let got = with_req(None, &fixture(name), |r| p.parse_receipts(r))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = &got[0];
        assert_eq!(r.provider_id, uuid, "{name}");
        assert_eq!(r.status, *status, "{name}");
        assert_eq!(r.dedupe_key, format!("{uuid}:{key}"), "{name}");
        assert_eq!(r.timestamp_ms, *ts, "{name}");
        match reason {
            Some(words) => assert!(
                r.reason.as_deref().unwrap_or("").contains(words),
                "{name}: {:?}",
                r.reason
            ),
            None => assert_eq!(r.reason, None, "{name}"),
        }
    }
    let err = with_req(None, &fixture("status_missing_status.json"), |r| {
        p.parse_receipts(r)
    })
    .unwrap_err();
    assert!(err.contains("no status"), "{err}");
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
            "accepted",
            202,
            None,
            f("send_accepted.json"),
            "ok aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab",
            "",
        ),
        (
            "accepted without uuid",
            202,
            None,
            f("send_accepted_no_uuid.json"),
            "ambiguous",
            "",
        ),
        (
            "accepted, body lost",
            202,
            None,
            Err("reset".into()),
            "ambiguous",
            "",
        ),
        (
            "unauthorized",
            401,
            None,
            f("error_401.json"),
            "channel",
            "correct credentials",
        ),
        (
            "low balance",
            402,
            None,
            f("error_402.json"),
            "channel",
            "low-balance",
        ),
        (
            "invalid params",
            422,
            None,
            f("error_422_invalid.json"),
            "permanent",
            "1150",
        ),
        (
            "illegal sender",
            422,
            None,
            f("error_422_sender.json"),
            "channel",
            "1120",
        ),
        (
            "throttled",
            429,
            Some(2),
            f("error_429.json"),
            "throttled 2s",
            "1000",
        ),
        (
            "server error",
            500,
            None,
            f("error_500.json"),
            "ambiguous",
            "1030",
        ),
        ("redirect", 301, None, Ok(Vec::new()), "channel", "redirect"),
        (
            "html 400",
            400,
            None,
            Ok(b"<html>bad</html>".to_vec()),
            "permanent",
            "<html>",
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

async fn start_sim() -> (VonageSim, String) {
    let sim = VonageSim::new(VonageSimConfig {
        api_key: "abcd1234".into(),
        api_secret: "api-secret".into(),
        signature_secret: SIG_SECRET.into(),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(listener));
    (sim, base)
}

async fn send(p: &Vonage, m: &Message) -> Result<Accepted, SendError> {
    p.send(SendRequest {
        mid: "01HZXMID",
        contact_id: "+447700900000",
        message: m,
    })
    .await
}

fn image() -> Message {
    Message::Attachment {
        attachment: Attachment {
            kind: AttachmentKind::Image,
            url: "https://cdn.example.com/p/shoe.jpg".into(),
            file_name: None,
            description: Some("Our new shoe".into()),
        },
    }
}

#[tokio::test]
async fn sends_text_and_media_per_channel() {
    let (sim, base) = start_sim().await;
    let text = Message::Text {
        text: "Your order shipped".into(),
    };
    let quick = Message::QuickReply {
        title: Some("Pick".into()),
        replies: vec!["A".into(), "B".into()],
    };
    let audio = Message::Attachment {
        attachment: Attachment {
            kind: AttachmentKind::Audio,
            url: "https://cdn.example.com/a.mp3".into(),
            file_name: None,
            description: Some("Listen".into()),
        },
    };
    let sms = provider(&base);
    for m in [&text, &quick, &image()] {
        send(&sms, m).await.unwrap();
    }
    let mut wa = config(&base);
    wa.channel = "whatsapp".into();
    let wa = provider_with(wa);
    send(&wa, &image()).await.unwrap();
    send(&wa, &audio).await.unwrap();
    let mut viber = config(&base);
    viber.channel = "viber_service".into();
    send(&provider_with(viber), &audio).await.unwrap();

    let sent = sim.sent();
    assert!(sent.iter().all(|a| a.status == 202), "{sent:?}");
    for a in &sent {
        assert_eq!(a.body["to"], "447700900000");
        assert_eq!(a.body["from"], "447700900001");
        assert_eq!(a.body["client_ref"], "01HZXMID");
    }
    assert_eq!(
        sent[0].body,
        json!({"channel":"sms","message_type":"text","to":"447700900000","from":"447700900001","client_ref":"01HZXMID","text":"Your order shipped"})
    );
    assert_eq!(sent[1].body["text"], "Pick\n1. A\n2. B");
    // SMS carries no media: the link goes in the text.
    assert_eq!(sent[2].body["message_type"], "text");
    assert_eq!(
        sent[2].body["text"],
        "Our new shoe\nhttps://cdn.example.com/p/shoe.jpg"
    );
    // WhatsApp carries images (with caption) and audio (without).
    assert_eq!(sent[3].body["message_type"], "image");
    assert_eq!(
        sent[3].body["image"],
        json!({"url":"https://cdn.example.com/p/shoe.jpg","caption":"Our new shoe"})
    );
    assert_eq!(
        sent[4].body["audio"],
        json!({"url":"https://cdn.example.com/a.mp3"})
    );
    // Viber has no audio: a link.
    assert_eq!(sent[5].body["message_type"], "text");
    assert_eq!(
        sent[5].body["text"],
        "Listen\nhttps://cdn.example.com/a.mp3"
    );
}

#[tokio::test]
async fn send_errors_are_typed_from_the_stand_in() {
    let (sim, base) = start_sim().await;
    let p = provider(&base);
    let cases = vec![
        (VonageFault::Http5xx(503), "ambiguous"),
        (
            VonageFault::Throttle {
                retry_after: Some(9),
            },
            "throttled 9s",
        ),
        (VonageFault::Unauthorized, "channel"),
        (
            VonageFault::Problem {
                status: 402,
                code: 1070,
                title: "Partner quota exceeded".into(),
            },
            "channel",
        ),
        (
            VonageFault::Problem {
                status: 422,
                code: 1050,
                title: "Number barred".into(),
            },
            "permanent",
        ),
        (VonageFault::DropConnection, "ambiguous"),
    ];
    let text = Message::Text { text: "hi".into() };
    for (fault, want) in cases {
        let name = format!("{fault:?}");
        sim.push_fault(fault);
        let got = send(&p, &text).await;
        assert_eq!(kind(&got), want, "{name}: {got:?}");
    }
    assert!(send(&p, &text).await.is_ok(), "service resumes");
    // Wrong credentials: a channel fault that does not leak the secret.
    let mut cfg = config(&base);
    cfg.api_secret = Secret::new("wrong-secret");
    let err = send(&provider_with(cfg), &text).await.unwrap_err();
    assert!(
        matches!(&err, SendError::ChannelFault(r) if r.contains("unauthorized")),
        "{err:?}"
    );
    assert!(!err.reason().contains("wrong-secret"));
    // The stand-in's own rules come back as permanent errors with the code.
    let long = Message::Text {
        text: "x".repeat(1001),
    };
    let err = send(&p, &long).await.unwrap_err();
    assert!(
        matches!(&err, SendError::Permanent(r) if r.contains("1020")),
        "{err:?}"
    );
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

#[test]
fn signed_by_the_stand_in_is_authentic_here() {
    let sim = VonageSim::new(VonageSimConfig {
        api_key: "abcd1234".into(),
        signature_secret: SIG_SECRET.into(),
        ..Default::default()
    });
    let p = provider("http://x");
    let body = sim
        .inbound_body("447700900000", "447700900001", "text", json!("hi"))
        .to_string();
    let fresh = format!("Bearer {}", sim.token_for(body.as_bytes(), 0, None));
    assert!(with_req(Some(&fresh), &body, |r| p.authenticate(r)).is_ok());
    let stale = format!("Bearer {}", sim.token_for(body.as_bytes(), 3600, None));
    assert!(
        with_req(Some(&stale), &body, |r| p.authenticate(r))
            .unwrap_err()
            .contains("too old")
    );
    let forged = format!(
        "Bearer {}",
        sim.token_for(body.as_bytes(), 0, Some("guess"))
    );
    assert!(with_req(Some(&forged), &body, |r| p.authenticate(r)).is_err());
}

/// What `rio-bridge check-config` prints comes from `Config::from_toml`'s problems.
#[test]
fn check_config_reports_missing_credentials() {
    let toml = |section: &str| {
        format!(
            r#"
[[channel]]
name = "vo"
respondio_channel_id = "CH1"
respondio_token = "tok"
provider = "vonage"
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
    let ok = "[channel.vonage]\napi_key = \"abcd1234\"\napi_secret = \"s\"\nsignature_secret = \"g\"\nfrom = \"447700900001\"";
    assert!(keys(&toml(ok)).is_empty(), "{:?}", keys(&toml(ok)));
    assert_eq!(keys(&toml("")), ["channel[0].vonage"]);
    for (field, key) in [
        ("api_secret = \"s\"", "channel[0].vonage.api_secret"),
        (
            "signature_secret = \"g\"",
            "channel[0].vonage.signature_secret",
        ),
    ] {
        let empty = ok.replace(
            field,
            &format!("{} = \"\"", field.split(' ').next().unwrap()),
        );
        assert_eq!(keys(&toml(&empty)), [key]);
    }
    let absent = keys(&toml(&ok.replace("signature_secret = \"g\"\n", "")));
    assert_eq!(absent.len(), 1);
    assert!(absent[0].starts_with("channel[0].vonage"), "{absent:?}");
}

#[test]
fn the_example_config_passes_check_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vonage.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let cfg = crate::config::Config::from_toml(&text, &|k| Some(format!("value-of-{k}")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.channels[0].vonage.as_ref().unwrap().channel, "sms");
}
