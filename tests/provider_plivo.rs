//! Plivo end to end over loopback HTTP: the Plivo stand-in pushes signed inbound messages
//! and status callbacks the way Plivo does, the gateway forwards them to the respond.io
//! emulator, and agents' replies go out through Plivo's Message API.

mod common;
#[path = "common/providers.rs"]
mod providers;

use providers::*;
use rio_bridge::respondio::emulator::EmulatedIdType;
use rio_bridge::simulators::plivo::{PlivoSim, PlivoSimConfig, Signing};
use serde_json::json;

const AUTH_ID: &str = "MAZDQ1ZJIYMDZKMJQ2MZ";
const AUTH_TOKEN: &str = "NzVlNDM3YzBhNmFkYmE1NDBkMzdjYTM4OWRhYjZh";
const OUR_NUMBER: &str = "14155550199";
const ALICE: &str = "+14155550100";

async fn start_sim(
    stage: &ProviderStage,
    signing: Signing,
    final_status: &str,
) -> (PlivoSim, String) {
    let sim = PlivoSim::new(PlivoSimConfig {
        auth_id: AUTH_ID.into(),
        auth_token: AUTH_TOKEN.into(),
        message_url: Some(stage.url("inbound")),
        status_callbacks: true,
        final_status: Some(final_status.into()),
        signing,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(listener));
    (sim, base)
}

fn channel(sim_base: &str) -> String {
    format!(
        r#"id_type = "phone"
provider = "plivo"
[channel.plivo]
auth_id = "{AUTH_ID}"
auth_token = "{AUTH_TOKEN}"
src = "{OUR_NUMBER}"
api_base = "{sim_base}"
"#
    )
}

#[tokio::test]
async fn plivo_message_in_reply_out_and_receipts_back() {
    let stage = ProviderStage::new("plivo", EmulatedIdType::Phone).await;
    let (sim, sim_base) = start_sim(&stage, Signing::Both, "delivered").await;
    let gw = stage.start(&channel(&sim_base)).await;

    // A contact texts in (signed V2 + V3, as Plivo does).
    let (fields, status) = sim
        .push_inbound("14155550100", OUR_NUMBER, "Is my order on its way?")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = stage.wait_events("message", 1).await;
    assert_eq!(ev[0].contact_id, ALICE);
    assert_eq!(text_of(&ev[0]), "Is my order on its way?");
    // Plivo retries a webhook it thinks failed: the same message is not forwarded twice.
    assert_eq!(sim.push_fields(&fields).await.unwrap(), 200);

    // The agent answers: Plivo gets the SMS with our status URL, and its callbacks
    // (sent, then delivered) become one message_status `delivered` for our mId.
    let (status, body) = stage
        .send(ALICE, json!({"type": "text", "text": "Yes, tomorrow."}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mid = body["mId"].as_str().unwrap().to_string();
    let sent = sim.accepted();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["dst"], "14155550100");
    assert_eq!(sent[0].body["src"], OUR_NUMBER);
    assert_eq!(sent[0].body["text"], "Yes, tomorrow.");
    assert_eq!(sent[0].body["url"], stage.url("status"));
    let st = stage.wait_events("message_status", 1).await;
    assert_eq!(st[0].event["mId"], mid.as_str());
    assert_eq!(st[0].event["status"]["value"], "delivered");
    assert_eq!(st[0].contact_id, ALICE);

    // A later message the carrier refuses: `failed` with Plivo's reason.
    sim.set_final_status("undelivered", Some("30"));
    let (status, body) = stage
        .send(ALICE, json!({"type": "text", "text": "Promo!"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mid2 = body["mId"].as_str().unwrap().to_string();
    let st = stage.wait_events("message_status", 2).await;
    let failed = st
        .iter()
        .find(|e| e.event["mId"] == mid2.as_str() && e.event["status"]["value"] == "failed");
    let failed = failed.unwrap_or_else(|| panic!("no failed status for {mid2}: {st:?}"));
    let reason = failed.event["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("Spam detected"), "{reason}");
    assert_eq!(
        stage.events_of_type("message").len(),
        1,
        "the retried inbound was deduped"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn plivo_webhooks_with_bad_signatures_are_refused_and_v2_alone_is_enough() {
    let stage = ProviderStage::new("plivo", EmulatedIdType::Phone).await;
    let (_sim, sim_base) = start_sim(&stage, Signing::Both, "delivered").await;
    let gw = stage.start(&channel(&sim_base)).await;
    let body = "From=14155550100&To=14155550199&Type=sms&Text=forged&MessageUUID=0f0f0f0f-0000-4000-8000-000000000001";
    let client = reqwest::Client::new();
    let post = |headers: Vec<(&'static str, &'static str)>, route: &'static str| {
        let mut req = client
            .post(stage.url(route))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(vec![], "inbound").await, 403, "unsigned");
    assert_eq!(
        post(
            vec![
                ("X-Plivo-Signature-V2", "bm90IGEgc2lnbmF0dXJl"),
                ("X-Plivo-Signature-V2-Nonce", "1234")
            ],
            "inbound"
        )
        .await,
        403,
        "wrong V2"
    );
    assert_eq!(
        post(
            vec![
                ("X-Plivo-Signature-V3", "bm90IGEgc2lnbmF0dXJl"),
                ("X-Plivo-Signature-V3-Nonce", "1234")
            ],
            "inbound"
        )
        .await,
        403,
        "wrong V3"
    );
    assert_eq!(post(vec![], "status").await, 403, "unsigned receipt");
    assert_eq!(stage.count_rows("items"), 0, "nothing stored");
    assert_eq!(stage.count_rows("raw_webhooks"), 0);

    // A Plivo that signs only V2 (V3 is newer) is still let in.
    let (v2_only, _) = start_sim(&stage, Signing::V2Only, "delivered").await;
    let (_, status) = v2_only
        .push_inbound("14155550100", OUR_NUMBER, "signed V2 only")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = stage.wait_events("message", 1).await;
    assert_eq!(text_of(&ev[0]), "signed V2 only");
    assert_eq!(stage.events().len(), 1);
    gw.shutdown().await;
}
