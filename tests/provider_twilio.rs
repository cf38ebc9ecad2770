//! Twilio end to end over real loopback HTTP: the gateway (in-process, real SQLite file),
//! the respond.io emulator, and the Twilio stand-in signing its webhooks like Twilio.

mod common;
#[path = "common/provider_stage.rs"]
mod provider_stage;

use common::{CHANNEL_ID, wait_until};
use provider_stage::{ProviderStage, free_port, start_emulator};
use rio_bridge::simulators::twilio::{MEDIA_BYTES, TwilioInbound, TwilioSim, TwilioSimConfig};
use serde_json::json;

const AC: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-0123456789";
const OUR_NUMBER: &str = "+14155550199";
const ALICE: &str = "+14155550100";

/// `proxy_media`: the account enforces HTTP auth on media (the stand-in too), and the
/// gateway's media proxy may fetch from loopback (the stand-in's address).
async fn stage(proxy_media: bool) -> (ProviderStage, TwilioSim) {
    let (emulator, emulator_url) = start_emulator().await;
    let port = free_port();
    let sim = TwilioSim::new(TwilioSimConfig {
        account_sid: AC.into(),
        auth_token: AUTH_TOKEN.into(),
        inbound_url: Some(format!("http://127.0.0.1:{port}/channels/tw/inbound")),
        auto_receipts: false,
        receipt_delay_ms: 0,
        media_auth: proxy_media,
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(l));
    let section = format!(
        r#"account_sid = "{AC}"
auth_token = "{AUTH_TOKEN}"
from = "{OUR_NUMBER}"
api_base = "{sim_base}"
rate_limit = 50
proxy_media = {proxy_media}
[media]
allow_private = {proxy_media}"#
    );
    let stage = ProviderStage::start(emulator, &emulator_url, port, "tw", "twilio", &section).await;
    (stage, sim)
}

#[tokio::test]
async fn twilio_inbound_reply_receipts_and_forged_webhooks() {
    let (stage, sim) = stage(false).await;

    // A contact texts in: Twilio's signed webhook is answered with empty TwiML and becomes
    // a message event with the contact's phone.
    let (status, ct, body) = sim
        .push_inbound(&TwilioInbound {
            from: ALICE.into(),
            to: OUR_NUMBER.into(),
            body: "Where is my order?".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/xml"), "{ct}");
    assert!(body.contains("<Response/>"), "{body}");
    let ev = stage
        .wait_event("inbound text at respond.io", "message", |_| true)
        .await;
    assert_eq!(ev.contact_id, ALICE);
    assert_eq!(
        ev.event["message"],
        json!({"type": "text", "text": "Where is my order?"})
    );
    let call = stage
        .emulator
        .calls(CHANNEL_ID)
        .into_iter()
        .find(|c| c.status == 200)
        .unwrap();
    assert_eq!(call.contact.unwrap()["phone"], ALICE);

    // A picture message: one attachment event carrying Twilio's media URL and the caption.
    sim.push_inbound(&TwilioInbound {
        from: ALICE.into(),
        to: OUR_NUMBER.into(),
        body: "the box".into(),
        media: vec!["image/jpeg".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let pic = stage
        .wait_event("inbound picture", "message", |e| {
            e.event["message"]["type"] == "attachment"
        })
        .await;
    assert_eq!(pic.event["message"]["attachment"]["type"], "image");
    assert_eq!(pic.event["message"]["attachment"]["description"], "the box");
    assert!(
        pic.event["message"]["attachment"]["url"]
            .as_str()
            .unwrap()
            .contains(&format!("/Accounts/{AC}/Messages/MM"))
    );

    // An agent replies: the send reaches Twilio with our StatusCallback.
    let (status, answer) = stage
        .send(ALICE, json!({"type": "text", "text": "It ships today"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let mid = answer["mId"].as_str().unwrap().to_string();
    let sent = wait_until("send at Twilio", 20, || async {
        sim.sent().into_iter().find(|a| a.status == 201)
    })
    .await;
    assert_eq!(sent.param("To"), Some(ALICE));
    assert_eq!(sent.param("From"), Some(OUR_NUMBER));
    assert_eq!(sent.param("Body"), Some("It ships today"));
    assert_eq!(
        sent.param("StatusCallback"),
        Some(stage.url("status").as_str())
    );
    let sid = sent.sid.clone().unwrap();

    // Twilio's status callbacks (signed for the StatusCallback URL) become message_status;
    // a redelivered callback changes nothing.
    for s in ["sent", "delivered", "delivered"] {
        assert_eq!(sim.push_status(&sid, s, None).await, Ok(200));
    }
    stage
        .wait_event("delivered at respond.io", "message_status", |e| {
            e.event["mId"] == mid.as_str() && e.event["status"]["value"] == "delivered"
        })
        .await;

    // A second reply that the carrier cannot deliver: failed, with Twilio's reason.
    let (status, answer) = stage
        .send(ALICE, json!({"type": "text", "text": "Are you there?"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let mid2 = answer["mId"].as_str().unwrap().to_string();
    let sid2 = wait_until("second send at Twilio", 20, || async {
        sim.sent()
            .into_iter()
            .filter(|a| a.status == 201)
            .nth(1)
            .and_then(|a| a.sid)
    })
    .await;
    assert_eq!(
        sim.push_status(&sid2, "undelivered", Some(30003)).await,
        Ok(200)
    );
    let failed = stage
        .wait_event("failed at respond.io", "message_status", |e| {
            e.event["mId"] == mid2.as_str() && e.event["status"]["value"] == "failed"
        })
        .await;
    let reason = failed.event["status"]["message"].as_str().unwrap_or("");
    assert!(reason.contains("30003"), "{reason}");

    // Forged webhooks: wrong signing key, no signature, signed for another URL → 403.
    let forged = sim.inbound_form(&TwilioInbound {
        from: ALICE.into(),
        to: OUR_NUMBER.into(),
        body: "FORGED".into(),
        ..Default::default()
    });
    let inbound = stage.url("inbound");
    let (s, _, _) = sim
        .post_signed(&inbound, &forged, Some("not-the-token"))
        .await
        .unwrap();
    assert_eq!(s, 403, "wrong key");
    let unsigned = reqwest::Client::new()
        .post(&inbound)
        .form(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403, "no signature");
    let other_url = stage.url("status");
    let signed_for_status = rio_bridge::providers::twilio::sign(AUTH_TOKEN, &other_url, &forged);
    let replayed = reqwest::Client::new()
        .post(&inbound)
        .header("x-twilio-signature", signed_for_status)
        .form(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 403, "signature for another URL");
    let forged_status = [
        ("MessageSid".to_string(), sid2.clone()),
        ("MessageStatus".to_string(), "delivered".to_string()),
    ];
    let (s, _, _) = sim
        .post_signed(&stage.url("status"), &forged_status, Some("guess"))
        .await
        .unwrap();
    assert_eq!(s, 403, "forged receipt");

    // Nothing of them was stored or forwarded: a genuine message from the same contact
    // (whose queue is FIFO) arrives, and no forged text or status came before it.
    sim.push_inbound(&TwilioInbound {
        from: ALICE.into(),
        to: OUR_NUMBER.into(),
        body: "genuine".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    stage
        .wait_event("genuine message", "message", |e| {
            e.event["message"]["text"] == "genuine"
        })
        .await;
    let events = stage.events();
    assert!(
        events
            .iter()
            .all(|e| e.event["message"]["text"] != "FORGED"),
        "a forged message reached respond.io"
    );
    assert_eq!(
        stage.statuses_of(&mid2),
        ["failed"],
        "the forged receipt changed nothing"
    );
    // `sent` may collapse into `delivered` if both were pending at once; never a repeat.
    let first = stage.statuses_of(&mid);
    assert_eq!(
        first.last().map(String::as_str),
        Some("delivered"),
        "{first:?}"
    );
    assert_eq!(
        first.iter().filter(|s| *s == "delivered").count(),
        1,
        "{first:?}"
    );
    stage.shutdown().await;
}

#[tokio::test]
async fn twilio_media_behind_http_auth_reaches_respondio_through_the_media_proxy() {
    let (stage, sim) = stage(true).await;
    sim.push_inbound(&TwilioInbound {
        from: ALICE.into(),
        to: OUR_NUMBER.into(),
        body: "the box".into(),
        media: vec!["image/png".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let ev = stage
        .wait_event("inbound picture", "message", |_| true)
        .await;
    let att = &ev.event["message"]["attachment"];
    assert_eq!(
        (att["type"].as_str(), att["description"].as_str()),
        (Some("image"), Some("the box"))
    );
    let url = att["url"].as_str().unwrap();
    // respond.io gets our signed media URL, never Twilio's (which needs the account's
    // credentials: the stand-in refuses it without them).
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/media/tw/", stage.port)),
        "{url}"
    );
    assert!(!url.contains(AUTH_TOKEN));
    let http = reqwest::Client::new();
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), MEDIA_BYTES);
    let twilio_url = sim
        .inbound_form(&TwilioInbound {
            from: ALICE.into(),
            media: vec!["image/png".into()],
            ..Default::default()
        })
        .into_iter()
        .find(|(k, _)| k == "MediaUrl0")
        .unwrap()
        .1;
    assert_eq!(http.get(&twilio_url).send().await.unwrap().status(), 401);
    stage.shutdown().await;
}

/// An auth token rotation: with `auth_token = ["new", "old"]` the gateway sends with the new
/// token and accepts webhooks signed with either, so nothing Twilio signed before the switch
/// is refused; a token in neither place is still refused.
#[tokio::test]
async fn an_auth_token_in_rotation_accepts_webhooks_signed_with_the_old_one() {
    const NEW_TOKEN: &str = "twilio-auth-token-rotated-987654";
    let (emulator, emulator_url) = start_emulator().await;
    let port = free_port();
    let sim = TwilioSim::new(TwilioSimConfig {
        account_sid: AC.into(),
        auth_token: NEW_TOKEN.into(),
        inbound_url: Some(format!("http://127.0.0.1:{port}/channels/tw/inbound")),
        auto_receipts: false,
        receipt_delay_ms: 0,
        media_auth: false,
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(l));
    let section = format!(
        r#"account_sid = "{AC}"
auth_token = ["{NEW_TOKEN}", "{AUTH_TOKEN}"]
from = "{OUR_NUMBER}"
api_base = "{sim_base}"
rate_limit = 50"#
    );
    let stage = ProviderStage::start(emulator, &emulator_url, port, "tw", "twilio", &section).await;
    let inbound = stage.url("inbound");
    let form = |text: &str| {
        sim.inbound_form(&TwilioInbound {
            from: ALICE.into(),
            to: OUR_NUMBER.into(),
            body: text.into(),
            ..Default::default()
        })
    };
    for (key, text) in [
        (NEW_TOKEN, "signed with the new token"),
        (AUTH_TOKEN, "signed with the old token"),
    ] {
        let (s, _, _) = sim
            .post_signed(&inbound, &form(text), Some(key))
            .await
            .unwrap();
        assert_eq!(s, 200, "{text}");
        stage
            .wait_event(text, "message", |e| e.event["message"]["text"] == text)
            .await;
    }
    let (s, _, _) = sim
        .post_signed(
            &inbound,
            &form("forged"),
            Some("twilio-auth-token-never-configured"),
        )
        .await
        .unwrap();
    assert_eq!(s, 403);
    // Sends use the new token (the stand-in accepts only it).
    let (status, answer) = stage
        .send(ALICE, json!({"type": "text", "text": "reply"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    wait_until("send accepted at Twilio", 20, || async {
        sim.sent().into_iter().find(|a| a.status == 201)
    })
    .await;
    stage.shutdown().await;
}
