//! The generic HTTP provider end to end: the shipped ClickSend mapping
//! (examples/http-clicksend.toml) runs the gateway in-process on a real SQLite file, against
//! the same ClickSend stand-in the built-in provider uses and the respond.io emulator.

mod common;

use std::time::Duration;

use common::{CHANNEL_ID, CS_KEY, CS_USER, OUR_NUMBER, TOKEN, wait_ready, wait_until};
use rio_bridge::app::App;
use rio_bridge::config::Config;
use rio_bridge::respondio::emulator::{
    EmulatedChannel, EmulatedIdType, Emulator, EmulatorConfig, RecordedEvent,
};
use rio_bridge::simulators::clicksend::{ClickSendSim, SimConfig, SimFault};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ALICE: &str = "+61400000001";
const BOB: &str = "+61400000002";
/// The generic provider wants a webhook secret of at least 16 characters.
const HOOK: &str = "http-provider-hook-secret-0123456789";

struct HttpStage {
    emulator: Emulator,
    sim: ClickSendSim,
    port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl HttpStage {
    /// The emulator, the ClickSend stand-in (pushing receipts and inbound to our webhook
    /// URLs), and the gateway running the example mapping with the API host pointed at
    /// the stand-in.
    async fn start() -> HttpStage {
        Self::start_with(true, |_| {}).await
    }

    /// `push_receipts`: whether the stand-in pushes its form receipts to us; `edit` changes
    /// the loaded example (a toml::Value) before the gateway reads it.
    async fn start_with(push_receipts: bool, edit: impl FnOnce(&mut toml::Value)) -> HttpStage {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let emulator = Emulator::new(EmulatorConfig {
            channels: vec![EmulatedChannel {
                channel_id: CHANNEL_ID.into(),
                token: TOKEN.into(),
                id_type: EmulatedIdType::Phone,
                rate_limit: 20,
            }],
            dedupe_by_mid: false,
            max_events_per_call: None,
            retry_after: Default::default(),
        });
        let el = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emu_addr = el.local_addr().unwrap();
        tokio::spawn(emulator.clone().serve(el));
        let sim = ClickSendSim::new(SimConfig {
            username: CS_USER.into(),
            api_key: CS_KEY.into(),
            receipt_url: push_receipts
                .then(|| format!("http://127.0.0.1:{port}/channels/sms/status?secret={HOOK}")),
            receipt_delay_ms: 50,
            inbound_url: Some(format!(
                "http://127.0.0.1:{port}/channels/sms/inbound?secret={HOOK}"
            )),
        });
        let sl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_addr = sl.local_addr().unwrap();
        tokio::spawn(sim.clone().serve(sl));

        let cfg = config(
            port,
            &emu_addr.to_string(),
            &sim_addr.to_string(),
            dir.path(),
            edit,
        );
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let app = App::build(cfg).await.expect("build app");
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(listener, stop.clone()));
        wait_ready(&format!("http://127.0.0.1:{port}")).await;
        HttpStage {
            emulator,
            sim,
            port,
            stop,
            task,
            _dir: dir,
        }
    }

    fn url(&self, path_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_query}", self.port)
    }

    async fn send(&self, contact: &str, message: Value) -> (u16, Value) {
        self.emulator
            .send_to_gateway(
                &self.url("/channels/sms/message"),
                CHANNEL_ID,
                contact,
                message,
            )
            .await
            .expect("gateway reachable")
    }

    fn events_of_type(&self, ty: &str) -> Vec<RecordedEvent> {
        self.emulator
            .events(CHANNEL_ID)
            .into_iter()
            .filter(|e| e.event["type"] == ty)
            .collect()
    }

    async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// examples/http-clicksend.toml, with this run's addresses and store, as the gateway loads it.
fn config(
    port: u16,
    emu: &str,
    sim: &str,
    dir: &std::path::Path,
    edit: impl FnOnce(&mut toml::Value),
) -> Config {
    let path = format!(
        "{}/examples/http-clicksend.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("https://rest.clicksend.com", &format!("http://{sim}"));
    let mut v: toml::Value = toml::from_str(&text).unwrap();
    let set = |t: &mut toml::Value, k: &str, val: toml::Value| {
        t.as_table_mut().unwrap().insert(k.into(), val);
    };
    set(
        &mut v["server"],
        "listen",
        format!("127.0.0.1:{port}").into(),
    );
    set(
        &mut v["server"],
        "public_url",
        format!("http://127.0.0.1:{port}").into(),
    );
    set(&mut v["server"], "shutdown_grace_ms", 3000.into());
    set(
        &mut v["store"],
        "path",
        dir.join("rio-bridge.db").display().to_string().into(),
    );
    let ch = &mut v["channel"][0];
    set(ch, "respondio_channel_id", CHANNEL_ID.into());
    set(
        ch,
        "respondio_webhook_url",
        format!("http://{emu}/custom/channel/webhook/").into(),
    );
    set(ch, "backoff_base_ms", 100.into());
    set(ch, "backoff_max_ms", 2000.into());
    // The stand-in checks the sender the example uses.
    assert!(text.contains(OUR_NUMBER));
    edit(&mut v);
    let env = |k: &str| {
        Some(
            match k {
                "RIO_TOKEN" => TOKEN,
                "SMS_HOOK_SECRET" => HOOK,
                "CLICKSEND_USERNAME" => CS_USER,
                "CLICKSEND_API_KEY" => CS_KEY,
                _ => return None,
            }
            .to_string(),
        )
    };
    Config::from_toml(&toml::to_string(&v).unwrap(), &env).unwrap_or_else(|e| panic!("{e}"))
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/clicksend/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path)
        .unwrap()
        .trim_end()
        .to_string()
}

async fn post_form(url: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn contact_messages_reach_respondio_once() {
    let st = HttpStage::start().await;
    let text = "Hi \"there\" & <you>\nsecond line ✓";
    assert_eq!(
        st.sim.push_inbound(ALICE, OUR_NUMBER, text).await.unwrap(),
        200
    );
    // A redelivered push (same message_id) is answered 200 and forwarded once.
    let redelivered = fixture("inbound.form");
    let inbound = st.url(&format!("/channels/sms/inbound?secret={HOOK}"));
    assert_eq!(post_form(&inbound, &redelivered).await, 200);
    assert_eq!(post_form(&inbound, &redelivered).await, 200);

    let events = wait_until("both messages at respond.io", 20, || async {
        let e = st.events_of_type("message");
        (e.len() >= 2).then_some(e)
    })
    .await;
    let alice = events.iter().find(|e| e.contact_id == ALICE).unwrap();
    assert_eq!(
        alice.event["message"],
        json!({"type": "text", "text": text})
    );
    let bob = events
        .iter()
        .find(|e| e.contact_id == "+61422222222")
        .unwrap();
    assert_eq!(
        bob.event["message"],
        json!({"type": "text", "text": "Thanks!"})
    );
    // ClickSend's Unix seconds, as respond.io's epoch ms.
    assert_eq!(bob.event["timestamp"], 1_736_900_100_000i64);
    // Give a second copy every chance to arrive before counting.
    assert_eq!(
        st.sim.push_inbound(BOB, OUR_NUMBER, "later").await.unwrap(),
        200
    );
    wait_until("a later message", 20, || async {
        st.events_of_type("message")
            .iter()
            .any(|e| e.contact_id == BOB)
            .then_some(())
    })
    .await;
    assert_eq!(st.events_of_type("message").len(), 3);
    st.shutdown().await;
}

#[tokio::test]
async fn replies_are_sent_and_receipts_become_statuses() {
    let st = HttpStage::start().await;
    let text = "Your order \"#42\" shipped\n— thanks";
    let (status, body) = st.send(ALICE, json!({"type": "text", "text": text})).await;
    assert_eq!(status, 200, "{body}");
    let mid = body["mId"].as_str().unwrap().to_string();
    let sent = st.sim.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].status, 200,
        "the stand-in accepted credentials and body"
    );
    let m = &sent[0].body["messages"][0];
    assert_eq!(m["to"], ALICE);
    assert_eq!(m["body"], text);
    assert_eq!(m["from"], OUR_NUMBER);
    assert_eq!(m["custom_string"], mid.as_str());

    // The stand-in pushes a 201 receipt for the id it answered with.
    let delivered = wait_until("delivered at respond.io", 20, || async {
        st.events_of_type("message_status").into_iter().next()
    })
    .await;
    assert_eq!(delivered.event["mId"], mid.as_str());
    assert_eq!(delivered.event["status"]["value"], "delivered");
    assert_eq!(delivered.contact_id, ALICE);

    // A picture goes to the MMS endpoint through the attachment request.
    let (status, body) = st
        .send(
            BOB,
            json!({"type": "attachment", "attachment": {"type": "image", "url": "https://cdn.example.com/a.jpg"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mms = st.sim.sent().into_iter().nth(1).unwrap();
    assert_eq!(mms.status, 200);
    assert_eq!(mms.body["media_file"], "https://cdn.example.com/a.jpg");
    assert_eq!(mms.body["messages"][0]["custom_string"], body["mId"]);

    let statuses = wait_until("the picture's receipt", 20, || async {
        let s = st.events_of_type("message_status");
        (s.len() >= 2).then_some(s)
    })
    .await;
    assert!(
        statuses
            .iter()
            .all(|s| s.event["status"]["value"] == "delivered"),
        "{statuses:?}"
    );
    st.shutdown().await;
}

#[tokio::test]
async fn send_errors_are_typed_from_the_mapping() {
    let st = HttpStage::start().await;
    // HTTP 200 with a per-message INVALID_RECIPIENT: respond.io gets a 400 with the reason.
    st.sim
        .push_fault(SimFault::MessageStatus("INVALID_RECIPIENT".into()));
    let (status, body) = st.send(ALICE, json!({"type": "text", "text": "x"})).await;
    assert_eq!(status, 400, "{body}");
    let reason = body["error"]["message"].as_str().unwrap();
    assert!(reason.contains("INVALID_RECIPIENT"), "{reason}");

    // 429 with Retry-After, then success: the message goes out once the pause ends.
    st.sim.push_fault(SimFault::Throttle {
        retry_after: Some(1),
    });
    let (status, body) = st.send(BOB, json!({"type": "text", "text": "later"})).await;
    assert_eq!(status, 200, "{body}");
    let mid = body["mId"].as_str().unwrap().to_string();
    wait_until("the throttled send went out", 20, || async {
        st.sim
            .sent()
            .iter()
            .any(|a| a.status == 200 && a.body["messages"][0]["custom_string"] == mid.as_str())
            .then_some(())
    })
    .await;
    st.shutdown().await;
}

#[tokio::test]
async fn webhooks_without_the_secret_get_403_and_nothing_is_forwarded() {
    let st = HttpStage::start().await;
    let inbound = fixture("inbound.form");
    let receipt = fixture("receipt_201.form");
    let wrong = format!("{HOOK}x");
    let cases = [
        format!("/channels/sms/inbound?secret={wrong}"),
        "/channels/sms/inbound".to_string(),
        "/channels/sms/inbound?secret=".to_string(),
        format!("/channels/sms/status?secret={wrong}"),
        "/channels/sms/status".to_string(),
    ];
    for path in &cases {
        let body = if path.contains("status") {
            &receipt
        } else {
            &inbound
        };
        assert_eq!(post_form(&st.url(path), body).await, 403, "{path}");
    }
    // A GET with the fields but a wrong secret is refused too.
    let get = reqwest::get(st.url(&format!("/channels/sms/inbound?secret={wrong}&{inbound}")))
        .await
        .unwrap();
    assert_eq!(get.status(), 403);

    // Then a good one: it is the only thing respond.io ever sees.
    assert_eq!(
        st.sim
            .push_inbound(ALICE, OUR_NUMBER, "real")
            .await
            .unwrap(),
        200
    );
    wait_until("the authentic message", 20, || async {
        (!st.events_of_type("message").is_empty()).then_some(())
    })
    .await;
    let all = st.emulator.events(CHANNEL_ID);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].contact_id, ALICE);
    st.shutdown().await;
}

/// HMAC-SHA256 of `{timestamp}.{body}`, hex, as the JSON gateway below signs its webhooks.
fn sign(ts: i64, body: &str) -> String {
    use hmac::Mac;
    let mut m =
        <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(HOOK.as_bytes())
            .unwrap();
    m.update(format!("{ts}.{body}").as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn post_signed(url: &str, body: &str, ts: i64, signature: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-timestamp", ts.to_string())
        .header("x-signature", format!("sha256={signature}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The same send mapping, but webhooks as a JSON gateway with signed bodies would send
/// them: HMAC-SHA256 over `{timestamp}.{raw body}` with a bounded age, fields by JSON
/// Pointer, receipts with a status value table.
#[tokio::test]
async fn signed_json_webhooks_are_checked_and_read() {
    let st = HttpStage::start_with(false, |v| {
        let http = v["channel"][0]["http"].as_table_mut().unwrap();
        let table = |s: &str| -> toml::Value { toml::from_str(s).unwrap() };
        http.insert(
            "auth".into(),
            table(
                r#"kind = "hmac"
header = "X-Signature"
prefix = "sha256="
timestamp_header = "X-Timestamp"
timestamp_separator = "."
max_age_secs = 300"#,
            ),
        );
        http.insert(
            "inbound".into(),
            table(
                r#"format = "json"
contact_id = "/sender/phone"
contact_name = "/sender/name"
message_id = "/id"
text = "/text"
media_url = "/media/url"
media_type = "/media/mime"
timestamp = "/sent_at""#,
            ),
        );
        http.insert(
            "receipt".into(),
            table(
                r#"format = "json"
provider_id = "/ref"
status = "/state"
error_reason = "/error/detail"
[statuses]
DELIVRD = "delivered"
UNDELIV = "failed"
ENROUTE = "ignore""#,
            ),
        );
    })
    .await;
    let inbound = st.url("/channels/sms/inbound");
    let status = st.url("/channels/sms/status");
    let now = now_s();

    let text = json!({"id": "in-1", "sender": {"phone": "61400000001", "name": "Ann Lee"},
        "text": "Hi {\"json\"} ✓", "sent_at": "2025-01-15T00:15:00Z"})
    .to_string();
    let picture = json!({"id": "in-2", "sender": {"phone": "+61400000001"}, "text": "look",
        "media": {"url": "https://cdn.example.com/p.jpg", "mime": "image/jpeg"}})
    .to_string();
    // (what, body, timestamp, signature, expected)
    let refused = [
        ("bad signature", text.clone(), now, sign(now, "{}"), 403),
        (
            "stale",
            text.clone(),
            now - 301,
            sign(now - 301, &text),
            403,
        ),
        (
            "timestamp not signed",
            text.clone(),
            now,
            sign(now - 1, &text),
            403,
        ),
        (
            "body changed",
            text.replace("Hi", "Ho"),
            now,
            sign(now, &text),
            403,
        ),
    ];
    for (what, body, ts, sig, want) in refused {
        assert_eq!(post_signed(&inbound, &body, ts, &sig).await, want, "{what}");
    }
    let unsigned = reqwest::Client::new()
        .post(&inbound)
        .header("content-type", "application/json")
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);

    assert_eq!(
        post_signed(&inbound, &text, now, &sign(now, &text)).await,
        200
    );
    assert_eq!(
        post_signed(&inbound, &picture, now, &sign(now, &picture)).await,
        200
    );
    let events = wait_until("both messages", 20, || async {
        let e = st.events_of_type("message");
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert_eq!(
        st.emulator.events(CHANNEL_ID).len(),
        2,
        "nothing refused got through"
    );
    assert_eq!(events[0].contact_id, ALICE);
    assert_eq!(
        events[0].event["message"],
        json!({"type": "text", "text": "Hi {\"json\"} ✓"})
    );
    assert_eq!(events[0].event["timestamp"], 1_736_900_100_000i64);
    assert_eq!(
        events[1].event["message"],
        json!({"type": "attachment", "attachment": {"type": "image",
            "url": "https://cdn.example.com/p.jpg", "description": "look"}})
    );
    let call = st
        .emulator
        .calls(CHANNEL_ID)
        .into_iter()
        .find(|c| c.status == 200)
        .unwrap();
    assert_eq!(call.contact.unwrap()["firstName"], "Ann Lee");

    // A reply, then its receipts in this gateway's words.
    let (code, body) = st
        .send(ALICE, json!({"type": "text", "text": "hello"}))
        .await;
    assert_eq!(code, 200, "{body}");
    let mid = body["mId"].as_str().unwrap().to_string();
    let provider_id = st.sim.sent()[0].message_ids[0].clone();
    for (state, n) in [("ENROUTE", 0), ("DELIVRD", 1)] {
        let r = json!({"ref": provider_id, "state": state}).to_string();
        assert_eq!(post_signed(&status, &r, now, &sign(now, &r)).await, 200);
        if n > 0 {
            let s = wait_until("the delivered status", 20, || async {
                st.events_of_type("message_status").into_iter().next()
            })
            .await;
            assert_eq!(s.event["mId"], mid.as_str());
            assert_eq!(s.event["status"]["value"], "delivered");
        }
    }
    let forged = json!({"ref": provider_id, "state": "UNDELIV"}).to_string();
    assert_eq!(
        post_signed(&status, &forged, now, &sign(now, "{}")).await,
        403
    );
    assert_eq!(st.events_of_type("message_status").len(), 1);
    st.shutdown().await;
}
