//! The admin API over real loopback HTTP, on a real SQLite file: auth, listing and
//! filters, message timelines with channel logs, replay, discard, pause/resume, purge,
//! audit, the internal listener, migration from the first release's schema, and the CLI.

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use rio_bridge::admin_cli::{AdminArgs, run as run_cli};
use rio_bridge::simulators::clicksend::SimFault;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-ops-0123456789abcdef";
const ONCALL_TOKEN: &str = "admin-token-oncall-fedcba9876543210";
const ALICE: &str = "+61400000001";
const BOB: &str = "+61400000002";
const CAROL: &str = "+61400000003";

fn admin_opts(server_extra: &str) -> Opts {
    Opts {
        server_extra: format!(
            "{server_extra}\n[[admin.token]]\nname = \"ops\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             [[admin.token]]\nname = \"oncall\"\ntoken = \"{ONCALL_TOKEN}\"\n"
        ),
        ..Opts::default()
    }
}

struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(base: &str) -> Admin {
        Admin {
            base: base.to_string(),
            token: ADMIN_TOKEN.into(),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, path: &str) -> Value {
        let (s, v) = self.get(path).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    async fn ok_post(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.post(path, body).await;
        assert_eq!(s, 200, "POST {path}: {v}");
        v
    }

    async fn mids(&self, query: &str) -> Vec<String> {
        self.ok(&format!("/admin/messages?{query}")).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mid"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn push(stage: &Stage, from: &str, text: &str) {
    assert_eq!(
        stage
            .sim
            .push_inbound(from, OUR_NUMBER, text)
            .await
            .unwrap(),
        200
    );
}

/// Sends through respond.io's side and returns the mId.
async fn send(stage: &Stage, to: &str, text: &str) -> String {
    let (status, body) = stage.send(to, text).await;
    assert_eq!(status, 200, "{body}");
    body["mId"].as_str().unwrap().to_string()
}

/// A send the provider stand-in rejects for good (INVALID_RECIPIENT): dead at once.
async fn dead_send(stage: &Stage, admin: &Admin, to: &str) -> (i64, String) {
    stage
        .sim
        .push_fault(SimFault::MessageStatus("INVALID_RECIPIENT".into()));
    let (status, body) = stage.send(to, "will be rejected").await;
    assert_eq!(status, 400, "{body}");
    let m = wait_until("the rejected send is dead", 20, || async {
        let v = admin
            .ok(&format!("/admin/dead-letters?contact={}", enc(to)))
            .await;
        v["items"].as_array().unwrap().first().cloned()
    })
    .await;
    (m["id"].as_i64().unwrap(), m["mid"].as_str().unwrap().into())
}

/// A stage whose gateway keeps its data in this PostgreSQL schema (`None`: the SQLite file).
async fn admin_stage(opts: Opts, pg: Option<&pg::PgSchema>) -> Stage {
    let stage = Stage::new(opts).await;
    if let Some(pg) = pg {
        let path = stage.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let with_url = text.replacen("[store]\n", &format!("[store]\nurl = \"{}\"\n", pg.url), 1);
        assert_ne!(text, with_url, "the stage's config has a [store] table");
        std::fs::write(&path, with_url).unwrap();
    }
    stage
}

/// Rows of `table` whose `expr` contains `needle`, read from whichever store the stage uses.
async fn count_containing(
    stage: &Stage,
    pg: Option<&pg::PgSchema>,
    table: &str,
    expr: &str,
    needle: &str,
) -> i64 {
    match pg {
        None => {
            let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
            conn.query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE instr({expr}, ?1) > 0"),
                [needle],
                |r| r.get(0),
            )
            .unwrap()
        }
        Some(pg) => {
            let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .query_one(
                    &format!("SELECT COUNT(*) FROM {table} WHERE strpos({expr}, $1) > 0"),
                    &[&needle],
                )
                .await
                .unwrap()
                .get(0)
        }
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn accepted_for(stage: &Stage, mid: &str) -> usize {
    accepted_mids(&stage.sim)
        .iter()
        .filter(|m| *m == mid)
        .count()
}

/// Send calls that reached the provider stand-in for this mId, whatever it answered.
fn calls_for(stage: &Stage, mid: &str) -> usize {
    stage
        .sim
        .sent()
        .iter()
        .filter(|a| a.body["messages"][0]["custom_string"] == mid)
        .count()
}

/// Every text column of every channel log row, for secret checks.
fn all_channel_log_text(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT url || ' ' || COALESCE(request_headers,'') || ' ' || COALESCE(request_body,'') || ' '
             || COALESCE(response_body,'') || ' ' || COALESCE(error,'') FROM channel_logs",
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
async fn admin_auth_missing_wrong_and_right_tokens() {
    let stage = Stage::new(admin_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let url = format!("{}/admin/lanes", stage.base());

    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "missing bearer token");

    // Wrong, a prefix of a right one, a right one with a byte appended, another scheme.
    let prefix = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    let longer = format!("{ADMIN_TOKEN}x");
    for bad in ["nope", prefix, longer.as_str(), TOKEN] {
        let r = http.get(&url).bearer_auth(bad).send().await.unwrap();
        assert_eq!(r.status(), 401, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"].is_string());
    }
    let r = http
        .get(&url)
        .basic_auth("ops", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    for token in [ADMIN_TOKEN, ONCALL_TOKEN] {
        let r = http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // The document is served to token holders only.
    let r = http
        .get(format!("{}/admin/openapi.json", stage.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/admin/openapi.json", stage.base()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["paths"]["/admin/messages"]["get"].is_object());
    // Bad input is a 4xx with the error shape, never a 500.
    let admin = Admin::new(&stage.base());
    for path in [
        "/admin/messages?state=lost",
        "/admin/messages?direction=sideways",
        "/admin/messages?limit=0",
        "/admin/messages?cursor=abc",
        "/admin/messages?since=yesterday",
        "/admin/messages?colour=red",
    ] {
        let (s, v) = admin.get(path).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert!(v["error"]["message"].is_string(), "{path}: {v}");
    }
    let (s, _) = admin.post("/admin/dead-letters/replay", json!({})).await;
    assert_eq!(s, 400);
    let (s, _) = admin.get("/admin/messages/NOSUCHMID").await;
    assert_eq!(s, 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_is_absent_without_tokens() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    for path in ["/admin/lanes", "/admin/messages", "/admin/openapi.json"] {
        let r = http
            .get(format!("{}{path}", stage.base()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let stage = Stage::new(admin_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let doc = admin.ok("/admin/openapi.json").await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{mid}", "NOSUCH")
            .replace("{id}", "999999")
            .replace("{channel}", "sms")
            .replace("{direction}", "to_provider");
        for method in item.as_object().unwrap().keys() {
            let (status, body) = match method.as_str() {
                "get" => admin.get(&concrete).await,
                // Pause then resume (paths sort that way): both really run.
                _ if concrete.ends_with("/pause") || concrete.ends_with("/resume") => {
                    admin.post(&concrete, json!({})).await
                }
                // Anything else gets a body it must refuse as a bad request (400), or an
                // id that does not exist (404): routed either way.
                _ => admin.post(&concrete, json!({"bogus": true})).await,
            };
            assert_ne!(
                body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
            assert!(status < 500, "{method} {path}: {status} {body}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn filters_and_stable_cursor_pagination() {
    filters_and_stable_cursor_pagination_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn filters_and_stable_cursor_pagination_on_postgres() {
    let pg = pg::PgSchema::create().await;
    filters_and_stable_cursor_pagination_on(Some(&pg)).await;
}

async fn filters_and_stable_cursor_pagination_on(pg: Option<&pg::PgSchema>) {
    let stage = admin_stage(admin_opts(""), pg).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let t0 = rio_bridge::clock::now_ms();
    for (who, text) in [(ALICE, "a1"), (BOB, "b1"), (ALICE, "a2")] {
        push(&stage, who, text).await;
    }
    let out_bob = send(&stage, BOB, "to bob").await;
    wait_until("4 messages delivered", 20, || async {
        let v = admin.ok("/admin/messages?state=done").await;
        (v["items"].as_array().unwrap().len() == 4).then_some(())
    })
    .await;
    let t1 = rio_bridge::clock::now_ms() + 1;

    assert_eq!(admin.mids("channel=sms").await.len(), 4);
    assert_eq!(admin.mids("channel=other").await.len(), 0);
    assert_eq!(admin.mids("direction=to_respondio").await.len(), 3);
    assert_eq!(
        admin.mids("direction=to_provider").await,
        vec![out_bob.clone()]
    );
    assert_eq!(
        admin.mids(&format!("contact={}", enc(ALICE))).await.len(),
        2
    );
    assert_eq!(admin.mids(&format!("contact={}", enc(BOB))).await.len(), 2);
    assert_eq!(admin.mids("kind=send").await, vec![out_bob.clone()]);
    assert_eq!(admin.mids("kind=message").await.len(), 3);
    assert_eq!(
        admin.mids(&format!("mid={out_bob}")).await,
        vec![out_bob.clone()]
    );
    assert_eq!(admin.mids("state=pending").await.len(), 0);
    assert_eq!(admin.mids("state=dead").await.len(), 0);
    assert_eq!(admin.mids(&format!("since={t0}&until={t1}")).await.len(), 4);
    assert_eq!(admin.mids(&format!("since={t1}")).await.len(), 0);
    assert_eq!(admin.mids(&format!("until={t0}")).await.len(), 0);
    // Receipts' status events toward respond.io are listed only when asked for.
    wait_until("delivered status queued", 20, || async {
        (!admin.mids("kind=status").await.is_empty()).then_some(())
    })
    .await;
    let newest_first = admin.mids("kind=message").await;
    let v = admin.ok("/admin/messages?kind=message").await;
    let texts: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"]["message"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["a2", "b1", "a1"]);

    // Pages of 2; new messages arriving between pages neither repeat nor hide old ones.
    let page1 = admin.ok("/admin/messages?kind=message&limit=2").await;
    let cursor = page1["next_cursor"].as_str().unwrap().to_string();
    push(&stage, CAROL, "c1").await;
    push(&stage, CAROL, "c2").await;
    let page2 = admin
        .ok(&format!(
            "/admin/messages?kind=message&limit=2&cursor={cursor}"
        ))
        .await;
    let mut seen: Vec<String> = Vec::new();
    for p in [&page1, &page2] {
        for m in p["items"].as_array().unwrap() {
            seen.push(m["mid"].as_str().unwrap().into());
        }
    }
    assert_eq!(seen, newest_first);
    assert!(page2["next_cursor"].is_null(), "{page2}");
    gw.shutdown().await;
}

#[tokio::test]
async fn message_detail_has_history_timeline_and_redacted_channel_logs() {
    let stage = Stage::new(admin_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());

    let mid = send(&stage, ALICE, "hello alice").await;
    // The stand-in pushes a delivery receipt; the delivered status goes on to respond.io.
    let detail = wait_until("send, receipt and status logged", 30, || async {
        let d = admin.ok(&format!("/admin/messages/{mid}")).await;
        let kinds: Vec<String> = d["channel_logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["kind"].as_str().unwrap().to_string())
            .collect();
        ["message", "provider", "webhook_status", "respondio"]
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
            .then_some(d)
    })
    .await;
    let m = &detail["message"];
    assert_eq!(m["state"], "done");
    assert_eq!(m["status"], "delivered");
    assert_eq!(m["direction"], "to_provider");
    assert!(m["provider_id"].is_string());
    let history: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert!(
        history.contains(&"accepted") && history.contains(&"status delivered"),
        "{history:?}"
    );
    assert_eq!(detail["attempts"][0]["outcome"], "ok");
    assert_eq!(detail["status_events"][0]["kind"], "status");
    let timeline = detail["timeline"].as_array().unwrap();
    let times: Vec<i64> = timeline
        .iter()
        .map(|e| e["at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "timeline in time order"
    );
    assert!(timeline.len() >= 6, "{timeline:?}");

    let logs = detail["channel_logs"].as_array().unwrap();
    let provider = logs.iter().find(|l| l["kind"] == "provider").unwrap();
    assert_eq!(provider["direction"], "out");
    assert_eq!(provider["method"], "POST");
    assert_eq!(provider["status"], 200);
    assert!(provider["url"].as_str().unwrap().ends_with("/v3/sms/send"));
    assert!(
        provider["request_body"]
            .as_str()
            .unwrap()
            .contains("hello alice")
    );
    assert!(
        provider["request_headers"]
            .as_str()
            .unwrap()
            .contains("authorization: Basic [redacted]")
    );
    let inbound_msg = logs.iter().find(|l| l["kind"] == "message").unwrap();
    assert_eq!(inbound_msg["direction"], "in");
    assert!(
        inbound_msg["response_body"]
            .as_str()
            .unwrap()
            .contains(&mid)
    );
    let receipt = logs.iter().find(|l| l["kind"] == "webhook_status").unwrap();
    assert!(!receipt["url"].as_str().unwrap().contains(SECRET));

    // Inbound: the webhook in and the call to respond.io, under the event's mId.
    push(&stage, BOB, "hi from bob").await;
    let in_mid = wait_until("inbound delivered", 20, || async {
        let v = admin
            .ok(&format!("/admin/messages?contact={}&state=done", enc(BOB)))
            .await;
        v["items"][0]["mid"].as_str().map(str::to_string)
    })
    .await;
    let d = wait_until("inbound logs", 20, || async {
        let d = admin.ok(&format!("/admin/messages/{in_mid}")).await;
        (d["channel_logs"].as_array().unwrap().len() >= 2).then_some(d)
    })
    .await;
    let kinds: Vec<&str> = d["channel_logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"webhook_inbound") && kinds.contains(&"respondio"),
        "{kinds:?}"
    );
    let rio = d["channel_logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "respondio")
        .unwrap();
    assert!(
        rio["request_headers"]
            .as_str()
            .unwrap()
            .contains("authorization: Bearer [redacted]")
    );
    assert!(
        rio["request_body"]
            .as_str()
            .unwrap()
            .contains("hi from bob")
    );

    // No secret anywhere in what was stored: the channel token, the webhook secret, the
    // provider key, and the Basic credentials they make.
    let text = all_channel_log_text(&stage.db_path());
    assert!(!text.is_empty());
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CS_USER}:{CS_KEY}"));
    for secret in [TOKEN, SECRET, CS_KEY, basic.as_str()] {
        assert!(!text.contains(secret), "a secret reached the channel log");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn replay_is_idempotent_even_when_concurrent() {
    replay_is_idempotent_even_when_concurrent_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn replay_is_idempotent_even_when_concurrent_on_postgres() {
    let pg = pg::PgSchema::create().await;
    replay_is_idempotent_even_when_concurrent_on(Some(&pg)).await;
}

async fn replay_is_idempotent_even_when_concurrent_on(pg: Option<&pg::PgSchema>) {
    let stage = admin_stage(admin_opts(""), pg).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let (id, mid) = dead_send(&stage, &admin, ALICE).await;
    assert_eq!(calls_for(&stage, &mid), 1, "the rejected first call");

    // Two replays at once, then a third: one moves it, the others find it not dead.
    let (a, b) = tokio::join!(
        admin.ok_post("/admin/dead-letters/replay", json!({"ids": [id]})),
        admin.ok_post("/admin/dead-letters/replay", json!({"ids": [id]})),
    );
    let replayed = [&a, &b]
        .iter()
        .filter(|v| v["replayed"] == json!([id]))
        .count();
    let refused = [&a, &b]
        .iter()
        .filter(|v| v["not_dead"] == json!([id]))
        .count();
    assert_eq!((replayed, refused), (1, 1), "{a} {b}");
    wait_until("the replayed send reaches the provider", 20, || async {
        (calls_for(&stage, &mid) == 2).then_some(())
    })
    .await;
    let again = admin
        .ok_post("/admin/dead-letters/replay", json!({"ids": [id, 987654]}))
        .await;
    assert_eq!(again["replayed"], json!([]));
    assert_eq!(again["not_dead"], json!([id]));
    assert_eq!(again["not_found"], json!([987654]));
    let d = wait_until("done", 20, || async {
        let d = admin.ok(&format!("/admin/messages/{mid}")).await;
        (d["message"]["state"] == "done").then_some(d)
    })
    .await;
    assert_eq!(d["message"]["attempts"], 1, "the attempt count restarted");
    assert!(
        d["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"] == "replayed" && h["detail"] == "by ops")
    );
    // Settled: nothing can send it again. Two calls: the rejected one and one replay.
    assert_eq!(calls_for(&stage, &mid), 2);
    let audit = admin.ok("/admin/audit?actor=ops").await;
    let replays = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "replay")
        .count();
    assert_eq!(replays, 1, "one audit row per item actually replayed");
    gw.shutdown().await;
}

#[tokio::test]
async fn replay_by_filter_and_discard() {
    let stage = Stage::new(admin_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let (a1, a1_mid) = dead_send(&stage, &admin, ALICE).await;
    stage
        .sim
        .push_fault(SimFault::MessageStatus("INVALID_RECIPIENT".into()));
    let (s, _) = stage.send(ALICE, "second").await;
    assert_eq!(s, 400);
    let (b1, b1_mid) = dead_send(&stage, &admin, BOB).await;
    let dead = admin.ok("/admin/dead-letters").await;
    assert_eq!(dead["items"].as_array().unwrap().len(), 3);

    let v = admin
        .ok_post(
            "/admin/dead-letters/replay",
            json!({"filter": {"channel": "sms", "contact": ALICE}}),
        )
        .await;
    let replayed = v["replayed"].as_array().unwrap();
    assert_eq!(replayed.len(), 2, "{v}");
    assert!(replayed.contains(&json!(a1)));
    // Three rejected calls, then Alice's two replays.
    wait_until("Alice's two sends sent again", 20, || async {
        (stage.sim.sent_count() == 5).then_some(())
    })
    .await;
    assert_eq!(calls_for(&stage, &a1_mid), 2);

    let v = admin
        .ok_post("/admin/dead-letters/discard", json!({"ids": [b1, a1]}))
        .await;
    assert_eq!(v["discarded"], json!([b1]));
    assert_eq!(v["not_dead"], json!([a1]));
    let dead = admin.ok("/admin/dead-letters").await;
    assert_eq!(dead["items"], json!([]));
    let d = admin.ok(&format!("/admin/messages/{b1_mid}")).await;
    assert_eq!(d["message"]["discarded"], true);
    assert!(
        d["message"]["last_error"]
            .as_str()
            .unwrap()
            .contains("discarded by ops")
    );
    // A discarded item is not dead any more: replaying it does nothing.
    let v = admin
        .ok_post("/admin/dead-letters/replay", json!({"ids": [b1]}))
        .await;
    assert_eq!(v["not_dead"], json!([b1]));
    assert_eq!(calls_for(&stage, &b1_mid), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn unparseable_webhooks_are_listed_replayed_and_discarded() {
    let stage = Stage::new(admin_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let body = std::fs::read_to_string("tests/fixtures/clicksend/inbound_missing_message_id.form")
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/channels/sms/inbound?secret={SECRET}",
            stage.base()
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.trim().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = admin.ok("/admin/raw-webhooks").await;
    let item = &raw["items"][0];
    assert_eq!(item["route"], "inbound");
    let id = item["id"].as_i64().unwrap();
    // Still unreadable by this build: kept, with the reason.
    let v = admin
        .ok_post(&format!("/admin/raw-webhooks/{id}/replay"), json!({}))
        .await;
    assert_eq!(v["outcome"], "still_unparseable");
    assert_eq!(
        admin.ok("/admin/raw-webhooks").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The exchange is in the channel log without a message, its secret redacted.
    let logs = admin.ok("/admin/channel-logs?channel=sms").await;
    let l = &logs["items"][0];
    assert_eq!(l["kind"], "webhook_inbound");
    assert!(l["mid"].is_null());
    assert!(!l["url"].as_str().unwrap().contains(SECRET));
    let v = admin
        .ok_post(&format!("/admin/raw-webhooks/{id}/discard"), json!({}))
        .await;
    assert_eq!(v["discarded"], json!([id]));
    let (s, _) = admin
        .post(&format!("/admin/raw-webhooks/{id}/discard"), json!({}))
        .await;
    assert_eq!(s, 404);
    let audit = admin.ok("/admin/audit").await;
    assert_eq!(audit["items"][0]["action"], "discard");
    assert!(
        audit["items"][0]["target"]
            .as_str()
            .unwrap()
            .contains("raw webhook")
    );
    gw.shutdown().await;
}

/// Watches `cond` for `window`: true if it held the whole time. Used to show that nothing
/// happens while a lane is paused (a negative can only be observed over a window).
async fn holds_for(window: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if !cond() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn pause_holds_sends_across_a_restart_and_resume_wakes_the_lane() {
    pause_holds_sends_across_a_restart_and_resume_wakes_the_lane_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn pause_holds_sends_across_a_restart_and_resume_wakes_the_lane_on_postgres() {
    let pg = pg::PgSchema::create().await;
    pause_holds_sends_across_a_restart_and_resume_wakes_the_lane_on(Some(&pg)).await;
}

async fn pause_holds_sends_across_a_restart_and_resume_wakes_the_lane_on(
    pg: Option<&pg::PgSchema>,
) {
    let stage = admin_stage(admin_opts(""), pg).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let v = admin
        .ok_post("/admin/lanes/sms/to_provider/pause", json!({}))
        .await;
    assert!(v["paused_until_ms"].as_i64().unwrap() > rio_bridge::clock::now_ms() + 86_400_000);
    let mid = send(&stage, ALICE, "held back").await;
    assert!(
        holds_for(Duration::from_millis(1500), || stage.sim.sent_count() == 0).await,
        "a paused lane sent"
    );
    let lanes = admin.ok("/admin/lanes").await;
    let lane = lanes["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["direction"] == "to_provider")
        .unwrap()
        .clone();
    assert_eq!(lane["paused"], true);
    assert_eq!(lane["paused_indefinitely"], true);
    assert_eq!(lane["depth"], 1);
    assert!(lane["requests_per_sec"].is_number());
    assert!(lane["oldest_pending_age_ms"].is_number());

    // The pause is persisted: a restart keeps it.
    gw.shutdown().await;
    let gw = InProcess::start(&stage).await;
    assert!(
        holds_for(Duration::from_millis(1000), || stage.sim.sent_count() == 0).await,
        "the pause did not survive a restart"
    );
    let lanes = admin.ok("/admin/lanes").await;
    assert!(
        lanes["lanes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["direction"] == "to_provider" && l["paused"] == true)
    );

    admin
        .ok_post("/admin/lanes/sms/to_provider/resume", json!({}))
        .await;
    wait_until("the held send goes out after resume", 10, || async {
        (accepted_for(&stage, &mid) == 1).then_some(())
    })
    .await;
    // A timed pause, and bad input.
    let v = admin
        .ok_post(
            "/admin/lanes/sms/to_respondio/pause",
            json!({"for_secs": 60}),
        )
        .await;
    let until = v["paused_until_ms"].as_i64().unwrap();
    assert!(until > rio_bridge::clock::now_ms() && until < rio_bridge::clock::now_ms() + 61_000);
    admin
        .ok_post("/admin/lanes/sms/to_respondio/resume", json!({}))
        .await;
    let (s, _) = admin
        .post("/admin/lanes/sms/sideways/pause", json!({}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = admin
        .post("/admin/lanes/nosuch/to_provider/pause", json!({}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = admin
        .post("/admin/lanes/sms/to_provider/pause", json!({"for_secs": 0}))
        .await;
    assert_eq!(s, 400);

    let audit = admin.ok("/admin/audit").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["resume", "pause", "resume", "pause"]);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "ops")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn purge_deletes_one_contact_and_keeps_the_others() {
    purge_deletes_one_contact_and_keeps_the_others_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn purge_deletes_one_contact_and_keeps_the_others_on_postgres() {
    let pg = pg::PgSchema::create().await;
    purge_deletes_one_contact_and_keeps_the_others_on(Some(&pg)).await;
}

async fn purge_deletes_one_contact_and_keeps_the_others_on(pg: Option<&pg::PgSchema>) {
    let stage = admin_stage(admin_opts(""), pg).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    push(&stage, ALICE, "alice writes").await;
    push(&stage, BOB, "bob writes").await;
    let alice_out = send(&stage, ALICE, "to alice").await;
    send(&stage, BOB, "to bob").await;
    wait_until("everything delivered and logged", 30, || async {
        let d = admin.ok(&format!("/admin/messages/{alice_out}")).await;
        let logs = d["channel_logs"].as_array().unwrap().len();
        let done = admin.ok("/admin/messages?state=done").await["items"]
            .as_array()
            .unwrap()
            .len();
        // The receipt, and its status toward respond.io, too: a purge refuses (409) while
        // one of the contact's items is being sent.
        let idle = admin.ok("/admin/lanes").await["lanes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["depth"] == 0);
        let receipt = d["message"]["status"] == "delivered";
        (logs >= 3 && done == 4 && receipt && idle).then_some(())
    })
    .await;

    let v = admin
        .ok_post(
            "/admin/contacts/purge",
            json!({"channel": "sms", "contact": ALICE}),
        )
        .await;
    let p = &v["purged"];
    assert!(p["items"].as_u64().unwrap() >= 2, "{p}");
    assert!(p["history"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["attempts"].as_u64().unwrap() >= 2, "{p}");
    assert!(p["channel_logs"].as_u64().unwrap() >= 3, "{p}");
    assert!(p["dedupe_keys"].as_u64().unwrap() >= 1, "{p}");
    assert_eq!(p["contact_profiles"], 1, "{p}");

    assert!(
        admin
            .mids(&format!("contact={}", enc(ALICE)))
            .await
            .is_empty()
    );
    let (s, _) = admin.get(&format!("/admin/messages/{alice_out}")).await;
    assert_eq!(s, 404);
    assert_eq!(admin.mids(&format!("contact={}", enc(BOB))).await.len(), 2);
    // Nothing of Alice's number is left in the store's tables.
    let bare = ALICE.trim_start_matches('+');
    for (table, col) in [
        ("items", "contact || payload || COALESCE(contact_json,'')"),
        ("contacts", "contact"),
        (
            "channel_logs",
            "url || COALESCE(request_body,'') || COALESCE(response_body,'')",
        ),
    ] {
        let n = count_containing(&stage, pg, table, col, bare).await;
        assert_eq!(n, 0, "{table} still mentions the purged contact");
    }
    let bobs = count_containing(
        &stage,
        pg,
        "channel_logs",
        "COALESCE(request_body,'')",
        "bob writes",
    )
    .await;
    assert!(bobs >= 1, "other contacts' logs stay");
    let audit = admin.ok("/admin/audit").await;
    let e = &audit["items"][0];
    assert_eq!(e["action"], "purge");
    assert_eq!(e["actor"], "ops");
    assert!(
        !e["target"].as_str().unwrap().contains(bare),
        "the audit keeps no contact id"
    );
    let (s, _) = admin
        .post(
            "/admin/contacts/purge",
            json!({"channel": "nosuch", "contact": ALICE}),
        )
        .await;
    assert_eq!(s, 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn internal_listener_serves_admin_and_metrics_only_there() {
    let internal = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stage = Stage::new(admin_opts(&format!("admin_listen = \"{internal}\""))).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    for path in ["/admin/lanes", "/metrics"] {
        let r = http
            .get(format!("{}{path}", stage.base()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "public {path}");
        let r = http
            .get(format!("http://{internal}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "internal {path}");
    }
    // The public side still takes traffic; the internal side serves nothing else.
    send(&stage, ALICE, "still works").await;
    let r = http
        .post(format!("http://{internal}/channels/sms/message"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("http://{internal}/admin/lanes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the internal listener still wants a token");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_first_release_database_is_migrated_and_its_data_survives() {
    let stage = Stage::new(admin_opts("")).await;
    // The first release's schema, with data as it wrote it: a delivered inbound message,
    // a send still pending, a dead send, a dedupe key, history and attempts.
    {
        let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
        conn.execute_batch(include_str!("fixtures/schema/v1.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let now = rio_bridge::clock::now_ms();
        conn.execute_batch(&format!(
            "INSERT INTO items(id, channel, lane, qkey, contact, kind, mid, payload, state, attempts,
                               created_ms, next_ms, updated_ms, provider_id)
             VALUES (1, 'sms', 0, 'c:{ALICE}', '{ALICE}', 0, 'OLDIN', '{{\"type\":\"message\",\"mId\":\"OLDIN\",\"timestamp\":{now},\"message\":{{\"type\":\"text\",\"text\":\"old hello\"}}}}', 2, 1, {now}, {now}, {now}, 'P1');
             INSERT INTO items(id, channel, lane, qkey, contact, kind, mid, payload, state, created_ms, next_ms, updated_ms)
             VALUES (2, 'sms', 1, '{BOB}', '{BOB}', 3, 'OLDOUT', '{{\"type\":\"text\",\"text\":\"queued before the upgrade\"}}', 0, {now}, {now}, {now});
             INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES ('sms', 1, '{BOB}', 0, {now}, 0);
             INSERT INTO items(id, channel, lane, qkey, contact, kind, mid, payload, state, attempts, created_ms, next_ms, updated_ms, last_error)
             VALUES (3, 'sms', 1, '{CAROL}', '{CAROL}', 3, 'OLDDEAD', '{{\"type\":\"text\",\"text\":\"died before\"}}', 3, 10, {now}, {now}, {now}, 'gave up');
             INSERT INTO history(item_id, at_ms, event, detail) VALUES (2, {now}, 'accepted', 'conversation');
             INSERT INTO attempts(item_id, channel, lane, at_ms, outcome) VALUES (1, 'sms', 0, {now}, 'ok');
             INSERT INTO dedupe(channel, key, expires_ms) VALUES ('sms', 'P1', {far});",
            far = now + 86_400_000
        ))
        .unwrap();
    }
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, rio_bridge::store::sqlite::migrate::latest());

    // Old data through the new API.
    let d = admin.ok("/admin/messages/OLDIN").await;
    assert_eq!(d["message"]["payload"]["message"]["text"], "old hello");
    assert_eq!(d["attempts"][0]["outcome"], "ok");
    // The send queued before the upgrade goes out, with its exchange in the new table.
    wait_until("the old pending send is delivered", 20, || async {
        (accepted_for(&stage, "OLDOUT") == 1).then_some(())
    })
    .await;
    wait_until("its exchange is logged", 20, || async {
        let d = admin.ok("/admin/messages/OLDOUT").await;
        (d["message"]["state"] == "done" && !d["channel_logs"].as_array().unwrap().is_empty())
            .then_some(())
    })
    .await;
    // The old dead letter replays; the old dedupe key still stops a redelivery.
    let v = admin
        .ok_post("/admin/dead-letters/replay", json!({"ids": [3]}))
        .await;
    assert_eq!(v["replayed"], json!([3]));
    wait_until("the old dead letter is sent", 20, || async {
        (accepted_for(&stage, "OLDDEAD") == 1).then_some(())
    })
    .await;
    let dup: i64 = conn
        .query_row("SELECT COUNT(*) FROM dedupe WHERE key = 'P1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dup, 1);
    assert_eq!(
        admin.ok("/admin/audit").await["items"][0]["action"],
        "replay"
    );
    gw.shutdown().await;
}

async fn cli(stage: &Stage, args: &[&str]) -> String {
    let base = stage.base();
    let mut full = vec!["admin", "--url", base.as_str(), "--token", ADMIN_TOKEN];
    full.extend_from_slice(args);
    let parsed = AdminArgs::try_parse_from(full).expect("CLI arguments");
    let mut out = Vec::new();
    run_cli(parsed, &mut out).await.expect("CLI command");
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn cli_against_a_running_server() {
    let stage = Stage::new(admin_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let (id, mid) = dead_send(&stage, &admin, ALICE).await;

    let table = cli(&stage, &["dead"]).await;
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&mid) && table.contains("dead"), "{table}");
    let json_out: Value = serde_json::from_str(&cli(&stage, &["--json", "dead"]).await).unwrap();
    assert_eq!(json_out["items"][0]["id"], id);

    let out = cli(&stage, &["replay", "--id", &id.to_string()]).await;
    assert!(
        out.contains("replayed") && out.contains(&id.to_string()),
        "{out}"
    );
    wait_until("replayed send sent", 20, || async {
        (calls_for(&stage, &mid) == 2).then_some(())
    })
    .await;
    let show = cli(&stage, &["show", &mid]).await;
    assert!(
        show.contains("replayed") && show.contains("SOURCE"),
        "{show}"
    );
    let msgs = cli(&stage, &["messages", "--contact", ALICE, "--limit", "5"]).await;
    assert!(msgs.contains(&mid), "{msgs}");

    let out = cli(
        &stage,
        &["pause", "sms", "to_provider", "--for-secs", "300"],
    )
    .await;
    assert!(out.contains("paused_until_ms"), "{out}");
    let lanes = cli(&stage, &["lanes"]).await;
    assert!(
        lanes.contains("to_provider") && lanes.contains("until 2"),
        "{lanes}"
    );
    cli(&stage, &["resume", "sms", "to_provider"]).await;
    let lanes: Value = serde_json::from_str(&cli(&stage, &["--json", "lanes"]).await).unwrap();
    assert!(
        lanes["lanes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["paused"] == false)
    );

    let out = cli(&stage, &["purge", "sms", BOB]).await;
    assert!(out.contains("items"), "{out}");
    let audit = cli(&stage, &["audit"]).await;
    for action in ["replay", "pause", "resume", "purge"] {
        assert!(audit.contains(action), "{audit}");
    }
    let logs = cli(&stage, &["logs", "--mid", &mid]).await;
    assert!(logs.contains("provider"), "{logs}");

    // Errors come back as the server's message.
    let parsed = AdminArgs::try_parse_from([
        "admin",
        "--url",
        &stage.base(),
        "--token",
        "wrong-token",
        "lanes",
    ])
    .unwrap();
    let err = run_cli(parsed, &mut Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("401") && err.contains("invalid admin token"),
        "{err}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn channel_logs_are_pruned_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = rio_bridge::config::StoreConfig {
        path: dir.path().join("s.db"),
        ..Default::default()
    };
    let store = rio_bridge::store::sqlite::SqliteStore::open(&cfg).unwrap();
    channel_logs_are_pruned_on(&store).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn channel_logs_are_pruned_after_their_retention_on_postgres() {
    let pg = pg::PgSchema::create().await;
    let cfg = rio_bridge::config::StoreConfig {
        url: Some(rio_bridge::secret::Secret::new(pg.url.clone())),
        ..Default::default()
    };
    let store = rio_bridge::store::postgres::PgStore::connect(&cfg, &pg.url)
        .await
        .unwrap();
    channel_logs_are_pruned_on(&store).await;
}

async fn channel_logs_are_pruned_on(store: &dyn rio_bridge::store::admin::AdminStore) {
    use rio_bridge::store::admin::ChannelLogRow;
    let row = |at_ms: i64| ChannelLogRow {
        channel: "sms".into(),
        // No message: a row for a message that is not in the store is dropped as purged.
        mid: None,
        at_ms,
        direction: "out".into(),
        kind: "provider".into(),
        method: "POST".into(),
        url: "http://x".into(),
        ..Default::default()
    };
    store
        .insert_channel_logs((0..5).map(|i| row(1000 + i)).chain([row(10_000)]).collect())
        .await
        .unwrap();
    // Small batches: two rounds take 4 of the 5 old rows, a third the last; the new stays.
    assert_eq!(store.prune_channel_logs(5000, 2).await.unwrap(), 2);
    assert_eq!(store.prune_channel_logs(5000, 2).await.unwrap(), 2);
    assert_eq!(store.prune_channel_logs(5000, 2).await.unwrap(), 1);
    assert_eq!(store.prune_channel_logs(5000, 2).await.unwrap(), 0);
    let left = store
        .list_channel_logs(Some("sms".into()), None, None, 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].at_ms, 10_000);
}

// ---- Age limits against throttles and faults; what a replay may send ----

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// 20 sends at 1/s toward a provider that answers the first five and then 429s (or 401s)
/// every call; items wait longer than `max_age_secs` (3 s) before their turn.
async fn old_items_stage(pg: Option<&pg::PgSchema>, fault: SimFault) -> (Stage, InProcess) {
    let mut opts = admin_opts("");
    opts.provider_rate = 1;
    opts.budget_ms = 50;
    opts.push_receipts = false;
    opts.channel_extra = "max_age_secs = 3".into();
    let stage = admin_stage(opts, pg).await;
    for _ in 0..5 {
        stage.sim.push_fault(SimFault::Delay(0));
    }
    for _ in 0..15 {
        stage.sim.push_fault(fault.clone());
    }
    let gw = InProcess::start(&stage).await;
    for n in 0..20 {
        let (s, b) = stage
            .send(&format!("+614000070{n:02}"), "waits its turn")
            .await;
        assert_eq!(s, 200, "{b}");
    }
    (stage, gw)
}

/// The 15 sends the provider refused, once the age limit expired them; each reported
/// `failed` to respond.io.
async fn expired_while_blocked(stage: &Stage, admin: &Admin) -> Vec<Value> {
    let dead = wait_until("15 sends dead-lettered", 60, || async {
        let v = admin.ok("/admin/dead-letters?limit=100").await;
        let items = v["items"].as_array().unwrap().clone();
        (items.len() >= 15).then_some(items)
    })
    .await;
    wait_until("a failed status for each at respond.io", 30, || async {
        let failed = stage
            .events_of_type("message_status")
            .iter()
            .filter(|e| e.event["status"]["value"] == "failed")
            .count();
        (failed >= 15).then_some(())
    })
    .await;
    dead
}

/// Issue 11 §3: a 429 on items older than `max_age_secs` pauses the lane (Retry-After 30)
/// instead of dead-lettering item after item into the pause; the pause holds, and the age
/// limit still expires the waiting items (a sweep), each reported `failed`.
async fn a_429_on_old_items_pauses_the_lane_on(pg: Option<&pg::PgSchema>) {
    let (stage, gw) = old_items_stage(
        pg,
        SimFault::Throttle {
            retry_after: Some(30),
        },
    )
    .await;
    let admin = Admin::new(&stage.base());
    let dead = expired_while_blocked(&stage, &admin).await;
    let sent = stage.sim.sent();
    let throttled = sent.iter().filter(|a| a.status == 429).count();
    assert_eq!(
        throttled,
        1,
        "one 429, then nothing inside the pause: {:?}",
        sent.iter()
            .map(|a| (a.arrival_ms, a.status))
            .collect::<Vec<_>>()
    );
    for d in &dead {
        let why = d["last_error"].as_str().unwrap_or_default();
        assert!(
            why.contains("expired") && why.contains("paused"),
            "expired by the age limit while paused, not by the 429: {d}"
        );
    }
    let lanes = admin.ok("/admin/lanes").await;
    let provider = lanes["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["direction"] == "to_provider")
        .unwrap()
        .clone();
    assert_eq!(provider["paused"], true, "{provider}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_429_on_old_items_pauses_the_lane() {
    a_429_on_old_items_pauses_the_lane_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_429_on_old_items_pauses_the_lane_on_postgres() {
    let pg = pg::PgSchema::create().await;
    a_429_on_old_items_pauses_the_lane_on(Some(&pg)).await;
}

/// Issue 11 §3: 401s on items older than `max_age_secs` open the circuit instead of
/// dead-lettering every item in turn; the age limit still expires the waiting items.
async fn a_401_on_old_items_opens_the_circuit_on(pg: Option<&pg::PgSchema>) {
    let (stage, gw) = old_items_stage(pg, SimFault::Unauthorized).await;
    let admin = Admin::new(&stage.base());
    let dead = expired_while_blocked(&stage, &admin).await;
    let lanes = admin.ok("/admin/lanes").await;
    let provider = lanes["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["direction"] == "to_provider")
        .unwrap()
        .clone();
    assert_eq!(provider["circuit_open"], true, "{provider}");
    let refused = stage.sim.sent().iter().filter(|a| a.status == 401).count();
    // The first 401 opens the circuit; at most a probe follows before all have expired.
    assert!(
        refused <= 2,
        "{refused} calls refused: the circuit did not hold"
    );
    for d in &dead {
        let why = d["last_error"].as_str().unwrap_or_default();
        assert!(
            why.contains("expired") && why.contains("circuit"),
            "expired by the age limit while the circuit was open, not by the 401: {d}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_401_on_old_items_opens_the_circuit() {
    a_401_on_old_items_opens_the_circuit_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_401_on_old_items_opens_the_circuit_on_postgres() {
    let pg = pg::PgSchema::create().await;
    a_401_on_old_items_opens_the_circuit_on(Some(&pg)).await;
}

/// Issue 11 §3: a replay restarts the item's age. A dead letter older than `max_age_secs`
/// by its creation, replayed into a 429 (Retry-After 1), waits out the pause and is sent.
async fn a_replayed_old_dead_letter_is_sent_on(pg: Option<&pg::PgSchema>) {
    let mut opts = admin_opts("");
    opts.channel_extra = "max_age_secs = 3".into();
    let stage = admin_stage(opts, pg).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let (id, mid) = dead_send(&stage, &admin, ALICE).await;
    let created = admin.ok(&format!("/admin/messages/{mid}")).await["message"]["created_ms"]
        .as_i64()
        .unwrap();
    wait_until("the dead letter is older than max_age_secs", 30, || async {
        (now_ms() > created + 3_500).then_some(())
    })
    .await;
    stage.sim.push_fault(SimFault::Throttle {
        retry_after: Some(1),
    });
    let v = admin
        .ok_post("/admin/dead-letters/replay", json!({"ids": [id]}))
        .await;
    assert_eq!(v["replayed"], json!([id]), "{v}");
    let d = wait_until("the replayed send is delivered", 30, || async {
        let d = admin.ok(&format!("/admin/messages/{mid}")).await;
        (d["message"]["state"] != "pending" && d["message"]["state"] != "attempting").then_some(d)
    })
    .await;
    assert_eq!(d["message"]["state"], "done", "{d}");
    assert_eq!(calls_for(&stage, &mid), 3, "rejected, throttled, sent");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_replayed_old_dead_letter_is_sent() {
    a_replayed_old_dead_letter_is_sent_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_replayed_old_dead_letter_is_sent_on_postgres() {
    let pg = pg::PgSchema::create().await;
    a_replayed_old_dead_letter_is_sent_on(Some(&pg)).await;
}

/// Issue 11 §5: a send whose attempt may already have reached the contact (the connection
/// dropped without an answer, and `ambiguous_retry_cap = 0` dead-lettered it) is replayed
/// only with `force`, and the audit log says it was forced.
async fn an_ambiguous_dead_send_needs_force_on(pg: Option<&pg::PgSchema>) {
    let mut opts = admin_opts("");
    opts.channel_extra = "ambiguous_retry_cap = 0".into();
    opts.push_receipts = false;
    let stage = admin_stage(opts, pg).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    stage.sim.push_fault(SimFault::DropConnection);
    let (s, b) = stage.send(ALICE, "maybe sent").await;
    assert_eq!(s, 200, "{b}");
    let mid = b["mId"].as_str().unwrap().to_string();
    let m = wait_until("the ambiguous send is dead", 20, || async {
        let v = admin.ok("/admin/dead-letters").await;
        v["items"].as_array().unwrap().first().cloned()
    })
    .await;
    let id = m["id"].as_i64().unwrap();
    let v = admin
        .ok_post("/admin/dead-letters/replay", json!({"ids": [id]}))
        .await;
    assert_eq!(v["replayed"], json!([]), "not without force: {v}");
    assert_eq!(v["needs_force"], json!([id]), "{v}");
    let d = admin.ok(&format!("/admin/messages/{mid}")).await;
    assert_eq!(d["message"]["state"], "dead");
    assert_eq!(calls_for(&stage, &mid), 1);
    let v = admin
        .ok_post(
            "/admin/dead-letters/replay",
            json!({"ids": [id], "force": true}),
        )
        .await;
    assert_eq!(v["replayed"], json!([id]), "{v}");
    wait_until("the forced replay reaches the provider", 20, || async {
        (calls_for(&stage, &mid) == 2).then_some(())
    })
    .await;
    let audit = admin.ok("/admin/audit?actor=ops").await;
    let forced: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "replay")
        .collect();
    assert_eq!(forced.len(), 1, "{audit}");
    assert!(
        forced[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("forced")),
        "{}",
        forced[0]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_ambiguous_dead_send_needs_force() {
    an_ambiguous_dead_send_needs_force_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn an_ambiguous_dead_send_needs_force_on_postgres() {
    let pg = pg::PgSchema::create().await;
    an_ambiguous_dead_send_needs_force_on(Some(&pg)).await;
}

/// Issue 11 §5: a replayed failed send keeps its `failed` at respond.io (terminal in the
/// status machine): the replay is delivered, and its receipt is recorded in the history
/// but not forwarded, so respond.io never sees the message move on from `failed`.
async fn a_replayed_failed_send_stays_failed_on(pg: Option<&pg::PgSchema>) {
    let stage = admin_stage(admin_opts(""), pg).await;
    let gw = InProcess::start(&stage).await;
    let admin = Admin::new(&stage.base());
    let (id, mid) = dead_send(&stage, &admin, ALICE).await;
    let v = admin
        .ok_post("/admin/dead-letters/replay", json!({"ids": [id]}))
        .await;
    assert_eq!(v["replayed"], json!([id]), "{v}");
    // The stand-in pushes a `delivered` receipt for the replayed send.
    let d = wait_until("the replay's receipt is applied", 30, || async {
        let d = admin.ok(&format!("/admin/messages/{mid}")).await;
        d["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| {
                let e = h["event"].as_str().unwrap_or_default();
                e.starts_with("receipt delivered") || e == "status delivered"
            })
            .then_some(d)
    })
    .await;
    assert_eq!(d["message"]["state"], "done", "{d}");
    assert_eq!(d["message"]["status"], "failed", "{d}");
    let forwarded = stage
        .events_of_type("message_status")
        .iter()
        .filter(|e| e.event["mId"] == mid.as_str())
        .count();
    assert_eq!(
        forwarded, 0,
        "respond.io heard the failure as our 4xx, and nothing after"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_replayed_failed_send_stays_failed() {
    a_replayed_failed_send_stays_failed_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_replayed_failed_send_stays_failed_on_postgres() {
    let pg = pg::PgSchema::create().await;
    a_replayed_failed_send_stays_failed_on(Some(&pg)).await;
}

// ---- A reload that removes a channel with queued items ----

/// Issue 11 §10c: a reload that removes a channel keeps its queued items parked and
/// visible (`/admin/lanes` lists its lanes with `configured: false` and their depth, and
/// `rio_unconfigured_items` counts them); when the channel comes back, they are sent.
async fn a_removed_channel_keeps_its_items_parked_and_visible_on(pg: Option<&pg::PgSchema>) {
    let mut opts = admin_opts("");
    opts.budget_ms = 50;
    opts.push_receipts = false;
    let stage = admin_stage(opts, pg).await;
    let with_sms = rio_bridge::config::Config::load(&stage.config_path()).unwrap();
    let text = std::fs::read_to_string(stage.config_path()).unwrap();
    let without_path = stage.dir.path().join("without-sms.toml");
    std::fs::write(
        &without_path,
        text.replacen("name = \"sms\"", "name = \"spare\"", 1),
    )
    .unwrap();
    let without_sms = rio_bridge::config::Config::load(&without_path).unwrap();

    let listener = wait_until("gateway port free", 15, || async {
        tokio::net::TcpListener::bind(("127.0.0.1", stage.port))
            .await
            .ok()
    })
    .await;
    let app = rio_bridge::app::App::build(with_sms.clone()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (reload, reloads) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(app.run_with_reloads(listener, stop.clone(), Some(reloads)));
    wait_ready(&stage.base()).await;
    let admin = Admin::new(&stage.base());

    // Three sends wait behind an operator's pause.
    admin
        .ok_post("/admin/lanes/sms/to_provider/pause", json!({}))
        .await;
    for n in 0..3 {
        let (s, b) = stage.send(&format!("+614000080{n:02}"), "parked").await;
        assert_eq!(s, 200, "{b}");
    }
    reload.send(without_sms).await.unwrap();
    let parked = wait_until("the removed channel's lane listed", 30, || async {
        let lanes = admin.ok("/admin/lanes").await;
        lanes["lanes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["channel"] == "sms" && l["direction"] == "to_provider")
            .filter(|l| l["configured"] == false)
            .cloned()
    })
    .await;
    assert_eq!(parked["depth"], 3, "{parked}");
    let metrics = reqwest::get(format!("{}/metrics", stage.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rio_unconfigured_items")
                && l.contains("channel=\"sms\"")
                && l.contains("to_provider")
                && l.ends_with(" 3")),
        "{metrics}"
    );
    assert_eq!(stage.sim.sent_count(), 0, "nothing sent while removed");

    // The channel comes back: its items are there, and go once the lane is resumed.
    reload.send(with_sms).await.unwrap();
    wait_until("the channel configured again", 30, || async {
        let lanes = admin.ok("/admin/lanes").await;
        lanes["lanes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["channel"] == "sms" && l["configured"] == true && l["running"] == true)
            .then_some(())
    })
    .await;
    admin
        .ok_post("/admin/lanes/sms/to_provider/resume", json!({}))
        .await;
    wait_until("the parked sends delivered", 30, || async {
        (stage.sim.sent().iter().filter(|a| a.status == 200).count() == 3).then_some(())
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[tokio::test]
async fn a_removed_channel_keeps_its_items_parked_and_visible() {
    a_removed_channel_keeps_its_items_parked_and_visible_on(None).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_removed_channel_keeps_its_items_parked_and_visible_on_postgres() {
    let pg = pg::PgSchema::create().await;
    a_removed_channel_keeps_its_items_parked_and_visible_on(Some(&pg)).await;
}

// ---- The store's side of replays and purges, with two PostgreSQL nodes ----

mod store_level {
    use std::sync::Arc;

    use rio_bridge::config::StoreConfig;
    use rio_bridge::respondio::wire::StatusValue;
    use rio_bridge::store::admin::{AdminStore, MessageFilter, ReplayOutcome};
    use rio_bridge::store::postgres::PgStore;
    use rio_bridge::store::sqlite::SqliteStore;
    use rio_bridge::store::*;

    use super::pg;
    use crate::common::take::TakeHeadExt;

    const DEAD: i64 = 3;
    const ATTEMPTING: i64 = 1;

    async fn pg_node(schema: &pg::PgSchema) -> Arc<PgStore> {
        let cfg = StoreConfig {
            url: Some(rio_bridge::secret::Secret::new(schema.url.clone())),
            pool_size: 8,
            ..StoreConfig::default()
        };
        Arc::new(PgStore::connect(&cfg, &schema.url).await.unwrap())
    }

    /// Accepts one send per contact and takes each into an attempt (state attempting).
    async fn attempting_sends(store: &dyn Store, contacts: &[String]) -> Vec<(String, i64)> {
        for c in contacts {
            store
                .accept_outbound(
                    "ch",
                    NewOutbound {
                        mid: format!("mid-{c}"),
                        contact: c.clone(),
                        message_json: r#"{"type":"text","text":"hi"}"#.into(),
                    },
                    0,
                )
                .await
                .unwrap();
        }
        store
            .claim("ch", Lane::Provider, i64::MAX / 2, [100, 100])
            .await
            .unwrap();
        let mut out = Vec::new();
        for c in contacts {
            let it = store
                .take_items("ch", Lane::Provider, c, 1, 1)
                .await
                .unwrap()
                .remove(0);
            out.push((c.clone(), it.id));
        }
        out
    }

    /// Dead sends, one per contact: what an operator replays.
    async fn dead_sends(store: &dyn Store, contacts: &[String]) -> Vec<i64> {
        let mut ids = Vec::new();
        for (qkey, id) in attempting_sends(store, contacts).await {
            let fin = Finish::Dead {
                reason: "INVALID_RECIPIENT".into(),
                report_failed: false,
                ambiguous: false,
            };
            store
                .finish("ch", Lane::Provider, &qkey, &[id], fin, 1, 1)
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn concurrent_replays_from_two_postgres_nodes_move_each_item_once() {
        let schema = pg::PgSchema::create().await;
        let (a, b) = (pg_node(&schema).await, pg_node(&schema).await);
        assert!(
            a.acquire_lane("ch", Lane::Provider)
                .await
                .unwrap()
                .is_some()
        );
        let contacts: Vec<String> = (0..20).map(|i| format!("+614000001{i:02}")).collect();
        let ids = dead_sends(a.as_ref(), &contacts).await;

        // Every item replayed by both nodes at the same moment.
        let mut races = Vec::new();
        for &id in &ids {
            let (a, b) = (a.clone(), b.clone());
            races.push(tokio::spawn(async move {
                let (ra, rb) = tokio::join!(
                    a.replay_items(vec![id], "ops", false),
                    b.replay_items(vec![id], "oncall", false)
                );
                [ra.unwrap().remove(0).outcome, rb.unwrap().remove(0).outcome]
            }));
        }
        for r in races {
            let mut outcomes = r.await.unwrap().to_vec();
            outcomes.sort_by_key(|o| *o != ReplayOutcome::Replayed);
            assert_eq!(
                outcomes,
                [ReplayOutcome::Replayed, ReplayOutcome::NotDead],
                "exactly one of two concurrent replays moves the item"
            );
        }
        let audit = a.list_audit(None, None, 1000).await.unwrap();
        assert_eq!(
            audit.iter().filter(|e| e.action == "replay").count(),
            ids.len(),
            "one audit row per item actually replayed"
        );
        for c in &contacts {
            let d = b
                .message_detail(&format!("mid-{c}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((d.item.state, d.item.attempts), (0, 0), "{c}");
            let replays = d.history.iter().filter(|h| h.event == "replayed").count();
            assert_eq!(replays, 1, "{c}: one history row per replay that happened");
        }
        // Each item is back in its queue, once: a claim hands out every contact.
        let batch = a
            .claim("ch", Lane::Provider, i64::MAX / 2, [100, 100])
            .await
            .unwrap();
        assert_eq!(batch.claimed.len(), contacts.len());
        // A later replay from either node finds nothing dead.
        let again = b.replay_items(ids.clone(), "oncall", false).await.unwrap();
        assert!(again.iter().all(|r| r.outcome == ReplayOutcome::NotDead));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn a_pause_on_one_postgres_node_reaches_the_others() {
        let schema = pg::PgSchema::create().await;
        let (a, b) = (pg_node(&schema).await, pg_node(&schema).await);
        let mut on_b = b
            .pause_signals()
            .expect("a cluster store tells about pauses");
        // The listener connects in the background: pause until the notice gets through.
        let until = rio_bridge::clock::now_ms() + 3_600_000;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let got = loop {
            a.pause_lane("ch", Lane::Provider, until, "ops")
                .await
                .unwrap();
            let heard =
                tokio::time::timeout(std::time::Duration::from_millis(500), on_b.recv()).await;
            if let Ok(r) = heard {
                break r.unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node b never heard of the pause"
            );
        };
        assert_eq!(got, ("ch".to_string(), Lane::Provider));
        assert_eq!(b.paused_until("ch", Lane::Provider).await.unwrap(), until);
        while on_b.try_recv().is_ok() {}
        a.resume_lane("ch", Lane::Provider, rio_bridge::clock::now_ms(), "ops")
            .await
            .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(20), on_b.recv())
            .await
            .expect("the resume is announced")
            .unwrap();
        assert_eq!(got, ("ch".to_string(), Lane::Provider));
        assert_eq!(b.paused_until("ch", Lane::Provider).await.unwrap(), 0);
    }

    /// A purge refuses while one of the contact's messages is being attempted, and goes
    /// through once that attempt has finished.
    async fn purge_waits_for_the_attempt_in_flight(
        store: Arc<dyn Store>,
        admin: Arc<dyn AdminStore>,
    ) {
        let (alice, bob) = ("+61400000201".to_string(), "+61400000202".to_string());
        let taken = attempting_sends(store.as_ref(), &[alice.clone(), bob.clone()]).await;
        let refused = admin.purge_contact("ch", &alice, "ops").await.unwrap();
        assert_eq!(refused.in_flight, 1);
        assert_eq!(
            refused.items, 0,
            "nothing is purged while a send is in flight"
        );
        let listed = |contact: String| MessageFilter {
            contact: Some(contact),
            limit: 10,
            ..MessageFilter::default()
        };
        let left = admin.list_messages(listed(alice.clone())).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].state, ATTEMPTING);
        assert!(admin.list_audit(None, None, 10).await.unwrap().is_empty());

        let (qkey, id) = &taken[0];
        let fin = Finish::Dead {
            reason: "INVALID_RECIPIENT".into(),
            report_failed: false,
            ambiguous: false,
        };
        store
            .finish("ch", Lane::Provider, qkey, &[*id], fin, 1, 1)
            .await
            .unwrap();
        let dead = admin.list_messages(listed(alice.clone())).await.unwrap();
        assert_eq!(dead[0].state, DEAD);
        let done = admin.purge_contact("ch", &alice, "ops").await.unwrap();
        assert_eq!((done.in_flight, done.items), (0, 1));
        assert!(admin.list_messages(listed(alice)).await.unwrap().is_empty());
        assert_eq!(admin.list_messages(listed(bob)).await.unwrap().len(), 1);
        let audit = admin.list_audit(None, None, 10).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].action, "purge");
    }

    #[tokio::test]
    async fn purge_waits_for_the_attempt_in_flight_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().join("s.db"),
            ..StoreConfig::default()
        };
        let store = Arc::new(SqliteStore::open(&cfg).unwrap());
        purge_waits_for_the_attempt_in_flight(store.clone(), store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn purge_waits_for_the_attempt_in_flight_on_postgres() {
        let schema = pg::PgSchema::create().await;
        let store = pg_node(&schema).await;
        assert!(
            store
                .acquire_lane("ch", Lane::Provider)
                .await
                .unwrap()
                .is_some()
        );
        purge_waits_for_the_attempt_in_flight(store.clone(), store).await;
    }

    /// Issue 11 §5: `delivered` died on its way to respond.io, then `read` went out; a
    /// replay of the dead `delivered` would move the message backwards at respond.io, so it
    /// is settled as superseded (visibly: the result, a note, the history and the audit
    /// log) and nothing is queued.
    async fn a_replayed_status_never_moves_a_message_backwards(
        store: Arc<dyn Store>,
        admin: Arc<dyn AdminStore>,
    ) {
        let alice = "+61400000301".to_string();
        let mid = format!("mid-{alice}");
        let (qkey, id) = attempting_sends(store.as_ref(), std::slice::from_ref(&alice))
            .await
            .remove(0);
        let fin = Finish::Done {
            provider_id: Some("P-301".into()),
        };
        store
            .finish("ch", Lane::Provider, &qkey, &[id], fin, 1, 1)
            .await
            .unwrap();
        let status_q = status_qkey(&mid);
        let receipt = |key: &str, v| ReceiptIn {
            dedupe_key: key.into(),
            provider_id: "P-301".into(),
            status: Some(v),
            reason: None,
        };
        // `delivered` is queued, attempted, and refused for good by respond.io.
        store
            .apply_receipts("ch", vec![receipt("r1", StatusValue::Delivered)])
            .await
            .unwrap();
        let settle = |fin: Finish| {
            let (store, status_q) = (store.clone(), status_q.clone());
            async move {
                store
                    .claim("ch", Lane::RespondIo, i64::MAX / 2, [100, 100])
                    .await
                    .unwrap();
                let it = store
                    .take_items("ch", Lane::RespondIo, &status_q, 1, 1)
                    .await
                    .unwrap()
                    .remove(0);
                store
                    .finish("ch", Lane::RespondIo, &status_q, &[it.id], fin, 1, 1)
                    .await
                    .unwrap();
                it
            }
        };
        let delivered = settle(Finish::Dead {
            reason: "respond.io answered 400".into(),
            report_failed: false,
            ambiguous: false,
        })
        .await;
        assert!(delivered.payload.contains(r#""value":"delivered""#));
        // `read` follows and goes out.
        store
            .apply_receipts("ch", vec![receipt("r2", StatusValue::Read)])
            .await
            .unwrap();
        let read = settle(Finish::Done { provider_id: None }).await;
        assert!(read.payload.contains(r#""value":"read""#));

        let r = admin
            .replay_items(vec![delivered.id], "ops", false)
            .await
            .unwrap();
        assert_eq!(r[0].outcome, ReplayOutcome::Superseded, "{r:?}");
        assert!(
            store
                .head_items("ch", Lane::RespondIo, &status_q, 10)
                .await
                .unwrap()
                .is_empty(),
            "nothing queued for respond.io"
        );
        let rows = admin
            .list_messages(MessageFilter {
                kind: Some(ItemKind::Status),
                limit: 10,
                ..MessageFilter::default()
            })
            .await
            .unwrap();
        let row = rows.iter().find(|m| m.id == delivered.id).unwrap();
        assert_eq!(row.state, 2, "settled, not dead");
        assert!(
            row.last_error
                .as_deref()
                .unwrap_or("")
                .contains("superseded"),
            "{:?}",
            row.last_error
        );
        let audit = admin.list_audit(None, None, 10).await.unwrap();
        assert_eq!(audit[0].action, "replay");
        assert!(
            audit[0]
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("superseded")
        );
        // Asked again: it is not dead any more.
        let again = admin
            .replay_items(vec![delivered.id], "ops", false)
            .await
            .unwrap();
        assert_eq!(again[0].outcome, ReplayOutcome::NotDead);
    }

    #[tokio::test]
    async fn a_replayed_status_never_moves_a_message_backwards_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().join("s.db"),
            ..StoreConfig::default()
        };
        let store = Arc::new(SqliteStore::open(&cfg).unwrap());
        a_replayed_status_never_moves_a_message_backwards(store.clone(), store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn a_replayed_status_never_moves_a_message_backwards_on_postgres() {
        let schema = pg::PgSchema::create().await;
        let store = pg_node(&schema).await;
        for lane in [Lane::Provider, Lane::RespondIo] {
            assert!(store.acquire_lane("ch", lane).await.unwrap().is_some());
        }
        a_replayed_status_never_moves_a_message_backwards(store.clone(), store).await;
    }
}
