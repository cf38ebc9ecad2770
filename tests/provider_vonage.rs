//! Vonage (Messages API) end to end over real loopback HTTP: the gateway (in-process, real
//! SQLite file), the respond.io emulator, and the Vonage stand-in signing its webhooks with
//! HS256 JWTs like Vonage.

mod common;
#[path = "common/provider_stage.rs"]
mod provider_stage;

use common::{CHANNEL_ID, wait_until};
use provider_stage::{ProviderStage, free_port, start_emulator};
use rio_bridge::simulators::vonage::{VonageSim, VonageSimConfig};
use serde_json::json;

const API_KEY: &str = "abcd1234";
const API_SECRET: &str = "vonage-api-secret";
const SIG_SECRET: &str = "vonage-signature-secret-0123456789";
const OUR_NUMBER: &str = "447700900001";
const ALICE: &str = "+447700900000";

async fn stage() -> (ProviderStage, VonageSim) {
    let (emulator, emulator_url) = start_emulator().await;
    let port = free_port();
    let sim = VonageSim::new(VonageSimConfig {
        api_key: API_KEY.into(),
        api_secret: API_SECRET.into(),
        signature_secret: SIG_SECRET.into(),
        inbound_url: Some(format!("http://127.0.0.1:{port}/channels/vo/inbound")),
        status_url: Some(format!("http://127.0.0.1:{port}/channels/vo/status")),
        auto_receipts: false,
        receipt_delay_ms: 0,
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(l));
    let section = format!(
        r#"api_key = "{API_KEY}"
api_secret = "{API_SECRET}"
signature_secret = "{SIG_SECRET}"
from = "{OUR_NUMBER}"
channel = "sms"
api_base = "{sim_base}""#
    );
    let stage = ProviderStage::start(emulator, &emulator_url, port, "vo", "vonage", &section).await;
    (stage, sim)
}

#[tokio::test]
async fn vonage_inbound_reply_receipts_and_forged_webhooks() {
    let (stage, sim) = stage().await;

    // A contact texts in: the signed webhook becomes a message event, `+` added.
    assert_eq!(
        sim.push_inbound_text(&ALICE[1..], OUR_NUMBER, "Where is my order?")
            .await,
        Ok(200)
    );
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

    // A WhatsApp picture with the contact's profile name.
    let inbound = stage.url("inbound");
    let pic = sim.inbound_body(
        &ALICE[1..],
        OUR_NUMBER,
        "image",
        json!({"url": "https://api-us.nexmo.com/v3/media/abc", "caption": "the box"}),
    );
    assert_eq!(sim.post_signed(&inbound, &pic, None).await, Ok(200));
    let ev = stage
        .wait_event("inbound picture", "message", |e| {
            e.event["message"]["type"] == "attachment"
        })
        .await;
    assert_eq!(
        ev.event["message"]["attachment"],
        json!({"type": "image", "url": "https://api-us.nexmo.com/v3/media/abc", "description": "the box"})
    );

    // An agent replies: the send reaches Vonage without the `+`, our mId as client_ref.
    let (status, answer) = stage
        .send(ALICE, json!({"type": "text", "text": "It ships today"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let mid = answer["mId"].as_str().unwrap().to_string();
    let sent = wait_until("send at Vonage", 20, || async {
        sim.sent().into_iter().find(|a| a.status == 202)
    })
    .await;
    assert_eq!(
        sent.body,
        json!({"channel": "sms", "message_type": "text", "to": &ALICE[1..], "from": OUR_NUMBER,
               "client_ref": mid, "text": "It ships today"})
    );
    let uuid = sent.message_uuid.clone().unwrap();

    // Status webhooks become message_status; a redelivered one changes nothing.
    let delivered = sim.status_body(&uuid, "delivered", None);
    for body in [
        sim.status_body(&uuid, "submitted", None),
        delivered.clone(),
        delivered,
    ] {
        assert_eq!(
            sim.post_signed(&stage.url("status"), &body, None).await,
            Ok(200)
        );
    }
    stage
        .wait_event("delivered at respond.io", "message_status", |e| {
            e.event["mId"] == mid.as_str() && e.event["status"]["value"] == "delivered"
        })
        .await;

    // A second reply Vonage rejects downstream: failed, with Vonage's reason.
    let (status, answer) = stage
        .send(ALICE, json!({"type": "text", "text": "Are you there?"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let mid2 = answer["mId"].as_str().unwrap().to_string();
    let uuid2 = wait_until("second send at Vonage", 20, || async {
        sim.sent()
            .into_iter()
            .filter(|a| a.status == 202)
            .nth(1)
            .and_then(|a| a.message_uuid)
    })
    .await;
    assert_eq!(
        sim.push_status(
            &uuid2,
            "rejected",
            Some((1260, "The destination is unreachable"))
        )
        .await,
        Ok(200)
    );
    let failed = stage
        .wait_event("failed at respond.io", "message_status", |e| {
            e.event["mId"] == mid2.as_str() && e.event["status"]["value"] == "failed"
        })
        .await;
    let reason = failed.event["status"]["message"].as_str().unwrap_or("");
    assert!(
        reason.contains("unreachable") && reason.contains("1260"),
        "{reason}"
    );

    // Forged webhooks → 403: wrong secret, body changed after signing, stale token;
    // an unsigned one → 503; and a forged receipt.
    let forged = sim.inbound_body(&ALICE[1..], OUR_NUMBER, "text", json!("FORGED"));
    let raw = forged.to_string();
    let wrong_key = format!("Bearer {}", sim.token_for(raw.as_bytes(), 0, Some("guess")));
    let other_body = format!("Bearer {}", sim.token_for(b"{}", 0, None));
    let stale = format!("Bearer {}", sim.token_for(raw.as_bytes(), 3600, None));
    for (what, auth) in [
        ("wrong key", wrong_key),
        ("token for another body", other_body),
        ("stale token", stale),
    ] {
        assert_eq!(
            sim.post_signed(&inbound, &forged, Some(auth)).await,
            Ok(403),
            "{what}"
        );
    }
    let unsigned = reqwest::Client::new()
        .post(&inbound)
        .json(&forged)
        .send()
        .await
        .unwrap();
    // Vonage may send a callback unsigned by mistake and signs it when retried: 5xx, so
    // it retries (spec: Vonage §4.6), and nothing is stored or forwarded.
    assert_eq!(unsigned.status(), 503, "no token");
    let unsigned_receipt = reqwest::Client::new()
        .post(stage.url("status"))
        .json(&sim.status_body(&uuid2, "delivered", None))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned_receipt.status(), 503, "unsigned receipt");
    let forged_receipt = sim.status_body(&uuid2, "delivered", None);
    let raw = forged_receipt.to_string();
    let auth = format!("Bearer {}", sim.token_for(raw.as_bytes(), 0, Some("guess")));
    assert_eq!(
        sim.post_signed(&stage.url("status"), &forged_receipt, Some(auth))
            .await,
        Ok(403),
        "forged receipt"
    );

    // Nothing of them was stored or forwarded: a genuine message from the same contact
    // (whose queue is FIFO) arrives, and no forged text or status came before it.
    assert_eq!(
        sim.push_inbound_text(&ALICE[1..], OUR_NUMBER, "genuine")
            .await,
        Ok(200)
    );
    stage
        .wait_event("genuine message", "message", |e| {
            e.event["message"]["text"] == "genuine"
        })
        .await;
    assert!(
        stage
            .events()
            .iter()
            .all(|e| e.event["message"]["text"] != "FORGED"),
        "a forged message reached respond.io"
    );
    assert_eq!(
        stage.statuses_of(&mid2),
        ["failed"],
        "the forged receipt changed nothing"
    );
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
