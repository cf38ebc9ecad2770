//! Telegram end to end over loopback HTTP: the Telegram stand-in pushes updates the way
//! Telegram does (to the URL given to setWebhook, with the secret-token header), the
//! gateway forwards them to the respond.io emulator, and agents' replies come back out
//! through the Bot API.

mod common;
#[path = "common/providers.rs"]
mod providers;

use providers::*;
use rio_bridge::respondio::emulator::EmulatedIdType;
use rio_bridge::simulators::telegram::{
    TelegramSim, TelegramSimConfig, group_chat, message_update, private_chat, user,
};
use serde_json::{Value, json};

const BOT_TOKEN: &str = "7000001:AAH-stand-in-token_0123456789abcdef";
const SECRET: &str = "tg-secret_0123456789-abcdefghij";
const GROUP: i64 = -1001234567890;

async fn start_sim() -> (TelegramSim, String) {
    let sim = TelegramSim::new(TelegramSimConfig {
        bot_token: BOT_TOKEN.into(),
        allow_http_webhook: true,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(listener));
    (sim, base)
}

fn channel(sim_base: &str) -> String {
    format!(
        r#"id_type = "custom"
provider = "telegram"
[channel.telegram]
bot_token = "{BOT_TOKEN}"
secret_token = "{SECRET}"
api_base = "{sim_base}"
"#
    )
}

async fn post_update(url: &str, secret: Option<&str>, update: &Value) -> u16 {
    let mut req = reqwest::Client::new().post(url).json(update);
    if let Some(s) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn telegram_private_and_group_chats_round_trip() {
    let stage = ProviderStage::new("tg", EmulatedIdType::Custom).await;
    let (sim, sim_base) = start_sim().await;
    let gw = stage.start(&channel(&sim_base)).await;

    // The operator registers the webhook, as the README says.
    let answer: Value = reqwest::Client::new()
        .post(format!("{sim_base}/bot{BOT_TOKEN}/setWebhook"))
        .json(&json!({"url": stage.url("inbound"), "secret_token": SECRET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["ok"], true, "{answer}");

    // A contact writes in a private chat: a message event with their profile.
    let nic = user(3527065, "Nic", Some("Pottier"), Some("nicpottier"));
    let (first, status) = sim
        .push_update(message_update(
            1,
            private_chat(&nic),
            Some(nic.clone()),
            json!({"text": "Hello bot"}),
        ))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = stage.wait_events("message", 1).await;
    assert_eq!(ev[0].contact_id, "3527065");
    assert_eq!(
        ev[0].event["message"],
        json!({"type": "text", "text": "Hello bot"})
    );
    let call = stage
        .emulator
        .calls(CHANNEL_ID)
        .into_iter()
        .find(|c| c.status == 200)
        .unwrap();
    let contact = call.contact.unwrap();
    assert_eq!(
        (&contact["firstName"], &contact["lastName"]),
        (&json!("Nic"), &json!("Pottier"))
    );

    // Telegram redelivers the same update: taken, not forwarded twice.
    assert_eq!(sim.deliver(&first).await.unwrap(), 200);

    // A group member writes: the group is the contact, under its g-prefixed id.
    let group = group_chat(GROUP, "Support Group");
    let (_, status) = sim
        .push_update(message_update(
            7,
            group,
            Some(nic.clone()),
            json!({"text": "Anyone there?"}),
        ))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = stage.wait_events("message", 2).await;
    assert_eq!(ev.len(), 2, "the redelivery was not forwarded: {ev:?}");
    assert_eq!(ev[1].contact_id, "g1001234567890");
    assert_eq!(text_of(&ev[1]), "Nic Pottier: Anyone there?");

    // A photo: the event points at our media URL, never at Telegram's (which has the token).
    let file_id = sim.add_file("photos/file_9.jpg", b"jpeg".to_vec(), "image/jpeg");
    let (_, status) = sim
        .push_update(message_update(
            2,
            private_chat(&nic),
            Some(nic.clone()),
            json!({"photo": [{"file_id": file_id, "file_unique_id": "AQADphoto9", "width": 90, "height": 90, "file_size": 4}], "caption": "my receipt"}),
        ))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = stage.wait_events("message", 3).await;
    let att = &ev[2].event["message"]["attachment"];
    assert_eq!(att["type"], "image");
    assert_eq!(att["description"], "my receipt");
    let url = att["url"].as_str().unwrap();
    assert!(
        url.starts_with(&stage.base()) && !url.contains(BOT_TOKEN),
        "{url}"
    );
    // respond.io fetches it: the gateway resolves the file with getFile and serves it.
    let got = reqwest::get(url).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"jpeg");
    let tampered = url.replace("sig=", "sig=x");
    assert_eq!(reqwest::get(tampered).await.unwrap().status(), 403);

    // Agents answer the group and the private chat through the Bot API.
    let (status, body) = stage
        .send(
            "g1001234567890",
            json!({"type": "text", "text": "Hi group, how can we help?"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["mId"].as_str().is_some_and(|m| m.len() <= 50));
    let (status, body) = stage
        .send(
            "3527065",
            json!({"type": "quick_reply", "title": "Which size?", "replies": ["S", "M"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = sim.accepted("sendMessage");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].params["chat_id"], GROUP);
    assert_eq!(sent[0].params["text"], "Hi group, how can we help?");
    assert_eq!(sent[1].params["chat_id"], 3527065);
    assert_eq!(
        sent[1].params["reply_markup"]["keyboard"][0][0]["text"],
        "S"
    );

    // A contact who blocked the bot: respond.io hears Telegram's reason as a 4xx.
    sim.block(3527065);
    let (status, body) = stage
        .send("3527065", json!({"type": "text", "text": "still there?"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let reason = body["error"]["message"].as_str().unwrap();
    assert!(reason.contains("bot was blocked by the user"), "{reason}");
    // Telegram has no receipts: nothing but messages reached respond.io.
    assert!(stage.events_of_type("message_status").is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn telegram_webhooks_without_the_secret_are_refused_and_other_updates_ignored() {
    let stage = ProviderStage::new("tg", EmulatedIdType::Custom).await;
    let (sim, sim_base) = start_sim().await;
    let gw = stage.start(&channel(&sim_base)).await;
    sim.set_webhook(&stage.url("inbound"), Some(SECRET));
    let nic = user(3527065, "Nic", None, None);
    let forged = json!({"update_id": 1, "message": {"message_id": 1, "date": 1736900000,
        "chat": {"id": 3527065, "type": "private"}, "text": "forged"}});
    let inbound = stage.url("inbound");
    assert_eq!(post_update(&inbound, None, &forged).await, 403);
    assert_eq!(
        post_update(&inbound, Some("tg-secret_wrong"), &forged).await,
        403
    );
    assert_eq!(
        post_update(&inbound, Some(&SECRET[..SECRET.len() - 1]), &forged).await,
        403
    );
    assert_eq!(stage.count_rows("items"), 0, "nothing stored");
    assert_eq!(stage.count_rows("raw_webhooks"), 0, "nothing kept raw");

    // The user blocked the bot: Telegram says so in my_chat_member. Taken and logged only.
    let (_, status) = sim
        .push_update(json!({"my_chat_member": {"chat": {"id": 3527065, "type": "private"},
            "from": nic, "date": 1736900001,
            "old_chat_member": {"user": {"id": 7000001, "is_bot": true, "first_name": "Bot"}, "status": "member"},
            "new_chat_member": {"user": {"id": 7000001, "is_bot": true, "first_name": "Bot"}, "status": "kicked", "until_date": 0}}}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(stage.count_rows("raw_webhooks"), 0, "not dead-lettered");

    // The genuine article still goes through, and is the only thing that did.
    let (_, status) = sim
        .push_update(message_update(
            2,
            private_chat(&nic),
            Some(nic.clone()),
            json!({"text": "real"}),
        ))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ev = stage.wait_events("message", 1).await;
    assert_eq!(text_of(&ev[0]), "real");
    assert_eq!(stage.events().len(), 1);
    gw.shutdown().await;
}

/// Every URL, header, body and error of the channel's stored channel logs, one row per line.
fn channel_log_text(stage: &ProviderStage) -> String {
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT url || ' ' || COALESCE(request_headers,'') || ' ' || COALESCE(request_body,'')
             || ' ' || COALESCE(response_body,'') || ' ' || COALESCE(error,'') FROM channel_logs",
        )
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn telegram_sends_are_channel_logged_without_the_bot_token() {
    let stage = ProviderStage::new("tg", EmulatedIdType::Custom).await;
    let (sim, sim_base) = start_sim().await;
    let gw = stage.start(&channel(&sim_base)).await;

    // One send Telegram takes and one it refuses (its error body is logged too).
    let (status, body) = stage
        .send(
            "3527065",
            json!({"type": "text", "text": "Hello from an agent"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sim.block(3527065);
    let (status, body) = stage
        .send("3527065", json!({"type": "text", "text": "still there?"}))
        .await;
    assert_eq!(status, 400, "{body}");

    let text = common::wait_until("both sends in the channel logs", 20, || async {
        let text = channel_log_text(&stage);
        (text.matches("/sendMessage").count() >= 2).then_some(text)
    })
    .await;
    assert!(text.contains("Hello from an agent"), "{text}");
    assert!(text.contains("bot was blocked by the user"), "{text}");
    // Neither the whole token nor its secret half (after the bot id) is stored anywhere.
    let (_, token_secret) = BOT_TOKEN.split_once(':').unwrap();
    assert!(
        !text.contains(token_secret),
        "bot token in channel logs: {text}"
    );
    assert!(text.contains("/bot[redacted]/sendMessage"), "{text}");
    gw.shutdown().await;
}
