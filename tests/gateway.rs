//! End-to-end flows over real loopback HTTP: the gateway (in-process router and lanes on a
//! real SQLite file), the respond.io emulator, and the ClickSend stand-in.

mod common;

use std::collections::HashMap;

use common::*;
use rio_bridge::lanes::limiter::max_in_window;
use rio_bridge::respondio::emulator::{FaultResponse, RetryAfterForm};
use rio_bridge::simulators::clicksend::SimFault;
use serde_json::json;

const ALICE: &str = "+61400000001";

#[tokio::test]
async fn inbound_text_reaches_respondio_as_a_message_event() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    assert_eq!(
        stage
            .sim
            .push_inbound(ALICE, OUR_NUMBER, "Hello there")
            .await
            .unwrap(),
        200
    );
    let ev = wait_until("event at respond.io", 20, || async {
        stage.events().into_iter().next()
    })
    .await;
    assert_eq!(ev.contact_id, ALICE);
    assert_eq!(ev.event["type"], "message");
    assert_eq!(
        ev.event["message"],
        json!({"type": "text", "text": "Hello there"})
    );
    let mid = ev.event["mId"].as_str().unwrap();
    assert!(!mid.is_empty() && mid.len() <= 50);
    assert!(
        ev.event["timestamp"].as_i64().unwrap() > 1_000_000_000_000,
        "epoch ms"
    );
    let call = stage
        .emulator
        .calls(CHANNEL_ID)
        .into_iter()
        .find(|c| c.status == 200)
        .unwrap();
    assert_eq!(call.contact.unwrap()["phone"], ALICE);
    gw.shutdown().await;
}

#[tokio::test]
async fn outbound_text_is_sent_and_its_receipt_becomes_a_message_status() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let (status, body) = stage.send(ALICE, "Your order shipped").await;
    assert_eq!(status, 200, "{body}");
    let mid = body["mId"].as_str().expect("mId").to_string();
    assert!(mid.len() <= 50);
    let sent = stage.sim.sent();
    assert_eq!(
        sent.len(),
        1,
        "the first attempt completed within the budget"
    );
    let msg = &sent[0].body["messages"][0];
    assert_eq!(msg["to"], ALICE);
    assert_eq!(msg["body"], "Your order shipped");
    assert_eq!(msg["from"], OUR_NUMBER);
    assert_eq!(msg["custom_string"], mid.as_str());
    let st = wait_until("delivered status at respond.io", 20, || async {
        stage.events_of_type("message_status").into_iter().next()
    })
    .await;
    assert_eq!(st.event["mId"], mid.as_str());
    assert_eq!(st.event["status"]["value"], "delivered");
    assert_eq!(st.contact_id, ALICE);
    gw.shutdown().await;
}

#[tokio::test]
async fn auth_and_validation_errors_are_clear() {
    // No receipt pushes: the one accepted /message below would otherwise bring a genuine
    // `delivered` status that races the final "nothing reached respond.io" check.
    let stage = Stage::new(Opts {
        push_receipts: false,
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let base = stage.base();
    let good = json!({"channelId": CHANNEL_ID, "contactId": ALICE, "message": {"type": "text", "text": "hi"}});
    // (name, path, Authorization, body, expected status, expected words in error.message)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no token", "/channels/sms/message", None, good.to_string(), 401, "missing bearer"),
        ("wrong token", "/channels/sms/message", Some("Bearer nope"), good.to_string(), 401, "invalid token"),
        ("basic scheme", "/channels/sms/message", Some("Basic abc"), good.to_string(), 401, "missing bearer"),
        ("unknown channel name", "/channels/nope/message", Some("Bearer x"), good.to_string(), 404, "unknown channel"),
        ("bad json", "/channels/sms/message", Some(TOKEN), "{".into(), 400, "not valid JSON"),
        ("no message", "/channels/sms/message", Some(TOKEN), json!({"contactId": ALICE}).to_string(), 400, "message is required"),
        ("bad contact", "/channels/sms/message", Some(TOKEN),
            json!({"contactId": "0412", "message": {"type": "text", "text": "x"}}).to_string(), 400, "E.164"),
        ("unsupported type", "/channels/sms/message", Some(TOKEN),
            json!({"contactId": ALICE, "message": {"type": "custom_payload", "payload": {}}}).to_string(), 400, "not supported"),
        ("root: unknown channelId", "/message", Some(TOKEN),
            json!({"channelId": "NOPE", "contactId": ALICE, "message": {"type": "text", "text": "x"}}).to_string(), 401, "invalid token"),
        ("root: wrong token", "/message", Some("Bearer nope"), good.to_string(), 401, "invalid token"),
    ];
    for (name, path, auth, body, want, needle) in cases {
        let mut req = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header(
                "authorization",
                if a == TOKEN {
                    format!("Bearer {TOKEN}")
                } else {
                    a.to_string()
                },
            );
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{name}");
        let v: serde_json::Value = resp.json().await.unwrap();
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no error.message in {v}"));
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    // /message finds the channel by channelId + token; lower-case scheme accepted.
    let r = http
        .post(format!("{base}/message"))
        .header("authorization", format!("bearer {TOKEN}"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let accepted: serde_json::Value = r.json().await.unwrap();
    let accepted_mid = accepted["mId"].as_str().unwrap().to_string();
    // Provider webhooks: secret wrong or missing → 403, nothing stored.
    for path in [
        "/channels/sms/inbound",
        "/channels/sms/inbound?secret=wrong",
        "/channels/sms/status?secret=x",
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .form(&[("from", ALICE), ("body", "x"), ("message_id", "m")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let r = http
        .post(format!("{base}/channels/nope/inbound?secret={SECRET}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Too big → 413.
    let r = http
        .post(format!("{base}/channels/sms/message"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(vec![b'x'; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    gw.shutdown().await;
    // The accepted send's delivery receipt may come back before the shutdown; nothing else
    // may reach respond.io.
    let others: Vec<_> = stage
        .events()
        .into_iter()
        .filter(|e| e.event["mId"] != accepted_mid.as_str())
        .collect();
    assert!(
        others.is_empty(),
        "nothing from a rejected webhook reached respond.io: {others:?}"
    );
}

#[tokio::test]
async fn redelivered_inbound_webhook_produces_one_event() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let url = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
    let form = [
        ("from", ALICE),
        ("to", OUR_NUMBER),
        ("body", "once"),
        ("message_id", "DUP-1"),
        ("timestamp", "1767225600"),
    ];
    for _ in 0..3 {
        assert_eq!(
            http.post(&url).form(&form).send().await.unwrap().status(),
            200
        );
    }
    wait_until("event", 20, || async { stage.events().into_iter().next() }).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(stage.events().len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn unparseable_authentic_webhook_is_kept_and_answered_2xx() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{}/channels/sms/inbound?secret={SECRET}",
            stage.base()
        ))
        .header("content-type", "application/json")
        .body("{\"not\": \"clicksend\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.shutdown().await;
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let (n, reason): (i64, String) = conn
        .query_row("SELECT COUNT(*), MAX(reason) FROM raw_webhooks", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(n, 1);
    assert!(!reason.is_empty());
}

#[tokio::test]
async fn provider_5xx_then_success_is_delivered_once() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    stage.sim.push_fault(SimFault::Http5xx(503));
    let (status, body) = stage.send(ALICE, "retry me").await;
    assert_eq!(
        status, 200,
        "a transient failure still answers 200 with our mId: {body}"
    );
    let mid = body["mId"].as_str().unwrap().to_string();
    wait_until("second attempt accepted", 20, || async {
        stage
            .sim
            .sent()
            .iter()
            .any(|a| a.status == 200)
            .then_some(())
    })
    .await;
    let st = wait_until("delivered", 20, || async {
        stage.events_of_type("message_status").into_iter().next()
    })
    .await;
    assert_eq!(st.event["mId"], mid.as_str());
    let sent = stage.sim.sent();
    assert_eq!(
        sent.iter().filter(|a| a.status == 200).count(),
        1,
        "delivered once"
    );
    assert_eq!(sent[0].status, 503);
    gw.shutdown().await;
    // The 5xx attempt may have been acted on: the history says so.
    assert!(ambiguous_mids(&stage.db_path()).contains(&mid));
}

#[tokio::test]
async fn provider_permanent_error_is_a_4xx_to_respondio() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    stage
        .sim
        .set_fault_for_recipient("+61400000009", "INVALID_RECIPIENT");
    let (status, body) = stage.send("+61400000009", "to nowhere").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("INVALID_RECIPIENT"),
        "{body}"
    );
    gw.shutdown().await;
    assert!(
        stage.events_of_type("message_status").is_empty(),
        "the 4xx was the answer; no failed status"
    );
}

#[tokio::test]
async fn failure_after_the_200_is_reported_as_failed_status() {
    let stage = Stage::new(Opts {
        budget_ms: 100,
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    stage.sim.push_fault(SimFault::Delay(600));
    stage
        .sim
        .set_fault_for_recipient("+61400000009", "INVALID_RECIPIENT");
    let (status, body) = stage.send("+61400000009", "slow then rejected").await;
    assert_eq!(status, 200, "budget spent: 200 with our mId");
    let mid = body["mId"].as_str().unwrap().to_string();
    let st = wait_until("failed status", 20, || async {
        stage.events_of_type("message_status").into_iter().next()
    })
    .await;
    assert_eq!(st.event["mId"], mid.as_str());
    assert_eq!(st.event["status"]["value"], "failed");
    assert!(
        st.event["status"]["message"]
            .as_str()
            .unwrap()
            .contains("INVALID_RECIPIENT")
    );
    gw.shutdown().await;
}

/// 300 inbound messages from 30 contacts at once, one event per webhook call: all arrive,
/// each contact's in order, and no 1-second window carries more than 20 calls.
async fn burst(opts: Opts) {
    let stage = Stage::new(opts).await;
    let gw = InProcess::start(&stage).await;
    let contacts: Vec<String> = (0..30).map(|i| format!("+614000001{i:02}")).collect();
    push_from_contacts(&stage.sim, &contacts, 10).await;
    wait_until("all 300 at respond.io", 60, || async {
        (stage.events().len() >= 300).then_some(())
    })
    .await;
    let events = stage.events();
    assert_eq!(events.len(), 300, "no doubles");
    let mut per_contact: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        per_contact
            .entry(e.contact_id.clone())
            .or_default()
            .push(text_of(e));
    }
    for c in &contacts {
        let want: Vec<String> = (0..10).map(|n| format!("{c} #{n}")).collect();
        assert_eq!(per_contact[c], want, "order for {c}");
    }
    gw.shutdown().await;
    // The hard limit, from the gateway's own attempt log.
    let log = attempt_times(&stage.db_path(), 0);
    assert!(
        max_in_window(&log, 1000) <= 20,
        "attempt log: {} in a window",
        max_in_window(&log, 1000)
    );
    // Arrival times at the emulator, with a little slack for scheduling between the slot and the wire.
    let arrivals: Vec<i64> = stage
        .emulator
        .calls(CHANNEL_ID)
        .iter()
        .map(|c| c.arrival_ms)
        .collect();
    assert!(
        max_in_window(&arrivals, 950) <= 20,
        "arrivals: {}",
        max_in_window(&arrivals, 950)
    );
}

#[tokio::test]
async fn inbound_burst_one_event_per_call() {
    burst(Opts {
        max_events_per_call: 1,
        ..Opts::default()
    })
    .await;
}

#[tokio::test]
async fn inbound_burst_batched_events() {
    burst(Opts::default()).await;
}

#[tokio::test]
async fn batch_rejected_by_respondio_is_retried_one_event_at_a_time() {
    // respond.io may not take several events per call (unknown): the emulator says 400 to
    // batches; the gateway splits, and everything still arrives once, in order.
    let stage = Stage::new(Opts {
        emulator_max_events: Some(1),
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let url = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
    // Commit five for one contact before the lane can take the first alone.
    let pushes: Vec<_> = (0..5)
        .map(|n| {
            let (http, url) = (http.clone(), url.clone());
            let form = vec![
                ("from".to_string(), ALICE.to_string()),
                ("body".to_string(), format!("split #{n}")),
                ("message_id".to_string(), format!("S{n}")),
                ("timestamp".to_string(), format!("{}", 1767225600 + n)),
            ];
            async move { http.post(&url).form(&form).send().await.unwrap().status() }
        })
        .collect();
    for p in pushes {
        assert_eq!(p.await, 200);
    }
    wait_until("5 events", 30, || async {
        (stage.events().len() >= 5).then_some(())
    })
    .await;
    let events = stage.events();
    assert_eq!(events.len(), 5);
    gw.shutdown().await;
}

/// respond.io's Retry-After form is unknown: seconds, an HTTP-date, or none at all. In each
/// case the lane pauses (at least 1 s), then resumes, and nothing is lost.
async fn throttled_lane_pauses_and_resumes(form: RetryAfterForm, retry_after: Option<u64>) {
    let stage = Stage::new(Opts::default()).await;
    stage.emulator.set_retry_after(form);
    let gw = InProcess::start(&stage).await;
    stage.emulator.inject(
        CHANNEL_ID,
        vec![FaultResponse {
            status: 429,
            retry_after,
            delay_ms: None,
        }],
    );
    for n in 0..5 {
        stage
            .sim
            .push_inbound(&format!("+6140000020{n}"), OUR_NUMBER, &format!("m{n}"))
            .await
            .unwrap();
    }
    wait_until("5 events", 30, || async {
        (stage.events().len() >= 5).then_some(())
    })
    .await;
    let calls = stage.emulator.calls(CHANNEL_ID);
    let throttled = calls
        .iter()
        .find(|c| c.status == 429)
        .expect("a 429 was answered");
    // Attempts already on the wire when the 429 came back may land just after it; after
    // that the lane sends nothing until the pause is over.
    let t = throttled.arrival_ms;
    let during_pause: Vec<i64> = calls
        .iter()
        .map(|c| c.arrival_ms - t)
        .filter(|&d| (100..900).contains(&d))
        .collect();
    assert!(
        during_pause.is_empty(),
        "{form:?}: calls during the pause at +{during_pause:?} ms"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.status == 200 && c.arrival_ms >= t + 900),
        "{form:?}: resumed after the pause"
    );
    assert_eq!(stage.events().len(), 5);
    gw.shutdown().await;
}

#[tokio::test]
async fn respondio_429_with_retry_after_seconds() {
    throttled_lane_pauses_and_resumes(RetryAfterForm::Seconds, Some(1)).await;
}

#[tokio::test]
async fn respondio_429_with_retry_after_http_date() {
    throttled_lane_pauses_and_resumes(RetryAfterForm::HttpDate, Some(2)).await;
}

#[tokio::test]
async fn respondio_429_without_retry_after() {
    throttled_lane_pauses_and_resumes(RetryAfterForm::None, None).await;
}

#[tokio::test]
async fn provider_auth_failure_opens_the_circuit_instead_of_dead_letters() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    stage.sim.push_fault(SimFault::Unauthorized);
    let mut mids = Vec::new();
    for n in 0..3 {
        let (s, b) = stage
            .send(&format!("+6140000030{n}"), "after the fault")
            .await;
        assert_eq!(s, 200, "{b}");
        mids.push(b["mId"].as_str().unwrap().to_string());
    }
    // One attempt hit the 401; the lane then waits for its probe instead of trying the rest.
    let sent = stage.sim.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let metrics = reqwest::get(format!("{}/metrics", stage.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rio_lane_circuit_open")
                && l.contains("to_provider")
                && l.ends_with(" 1")),
        "circuit gauge: {metrics}"
    );
    wait_until("all three sent after the probe", 30, || async {
        (stage.sim.sent().iter().filter(|a| a.status == 200).count() == 3).then_some(())
    })
    .await;
    gw.shutdown().await;
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let dead: i64 = conn
        .query_row("SELECT COUNT(*) FROM items WHERE state = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn a_reply_in_a_live_conversation_overtakes_a_broadcast() {
    let stage = Stage::new(Opts {
        provider_rate: 10,
        budget_ms: 50,
        push_receipts: false,
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    // A broadcast of 60 sends to contacts who never wrote in: 6 s at 10/s.
    for n in 0..60 {
        let (s, _) = stage.send(&format!("+614000040{n:02}"), "broadcast").await;
        assert_eq!(s, 200);
    }
    // Alice writes in, then an agent replies.
    stage
        .sim
        .push_inbound(ALICE, OUR_NUMBER, "help please")
        .await
        .unwrap();
    wait_until("alice's message at respond.io", 20, || async {
        stage.events().into_iter().next()
    })
    .await;
    let before = stage.sim.sent().len();
    let (s, _) = stage.send(ALICE, "agent reply").await;
    assert_eq!(s, 200);
    let pos = wait_until("the reply at the provider", 20, || async {
        stage
            .sim
            .sent()
            .iter()
            .position(|a| a.body["messages"][0]["to"] == ALICE)
    })
    .await;
    assert!(
        pos <= before + 12,
        "reply went out at position {pos}, broadcast had sent {before} when it was accepted"
    );
    assert!(before < 55, "the broadcast was still draining");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_broadcast_burst_is_accepted_without_waiting_behind_the_backlog() {
    // 1 send/s and a 5 s budget: a bulk send with more sends ahead of it than the lane has
    // free rate slots cannot be attempted now, so /message answers at once instead of
    // holding the connection. The stand-in's progress is the clock: an answer that waited would come
    // after about 5 sends.
    let stage = Stage::new(Opts {
        provider_rate: 1,
        budget_ms: 5000,
        push_receipts: false,
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let (emulator, sim) = (stage.emulator.clone(), stage.sim.clone());
            let url = format!("{}/channels/sms/message", stage.base());
            tokio::spawn(async move {
                let msg = json!({"type": "text", "text": "broadcast"});
                let (s, b) = emulator
                    .send_to_gateway(&url, CHANNEL_ID, &format!("+614000070{n:02}"), msg)
                    .await
                    .unwrap();
                assert_eq!(s, 200, "{b}");
                (b["mId"].as_str().unwrap().to_string(), sim.sent().len())
            })
        })
        .collect();
    let mut mids = std::collections::HashSet::new();
    let mut answered_early = 0;
    for c in calls {
        let (mid, sent_when_answered) = c.await.unwrap();
        mids.insert(mid);
        if sent_when_answered <= 2 {
            answered_early += 1;
        }
    }
    assert_eq!(mids.len(), 20);
    assert!(
        answered_early >= 10,
        "only {answered_early} of 20 bulk sends were answered without waiting"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_and_health_endpoints() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    stage
        .sim
        .push_inbound(ALICE, OUR_NUMBER, "hi")
        .await
        .unwrap();
    wait_until("event", 20, || async { stage.events().into_iter().next() }).await;
    assert_eq!(
        reqwest::get(format!("{}/healthz", stage.base()))
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", stage.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let m = reqwest::get(format!("{}/metrics", stage.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "rio_accepted_total",
        "rio_delivered_total",
        "rio_lane_depth",
        "rio_lane_oldest_pending_seconds",
        "rio_dead_letters",
        "rio_lane_paused",
        "rio_lane_circuit_open",
        "rio_http_request_duration_seconds",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(!m.contains(TOKEN) && !m.contains(SECRET) && !m.contains(CS_KEY));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stage = Stage::new(Opts {
        server_extra: "header_read_timeout_ms = 300".into(),
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", stage.port))
        .await
        .unwrap();
    sock.write_all(b"POST /channels/sms/inbound HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must close the connection (generous deadline).
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the slow client was not disconnected");
    // A client that connects and says nothing at all is cut off too.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", stage.port))
        .await
        .unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the silent client was not disconnected");
    // Other clients are served meanwhile and after.
    assert_eq!(
        reqwest::get(format!("{}/healthz", stage.base()))
            .await
            .unwrap()
            .status(),
        200
    );
    gw.shutdown().await;
}

/// Hostile and malformed input: every case gets a clear 4xx (or a closed connection),
/// never a 5xx, a panic or a hang, and nothing reaches respond.io or the provider.
#[tokio::test]
async fn bad_input_matrix_gets_clear_4xx() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let base = stage.base();
    let bearer = format!("Bearer {TOKEN}");
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let long_id = format!("+61{}", "4".repeat(60));
    let inbound = format!("/channels/sms/inbound?secret={SECRET}");
    let status = format!("/channels/sms/status?secret={SECRET}");
    // (what, path, content type, body, auth?, expected status)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, bool, u16);
    let cases: Vec<Case> = vec![
        ("message: not JSON", "/channels/sms/message", "application/json", b"not json".to_vec(), true, 400),
        ("message: invalid UTF-8", "/channels/sms/message", "application/json", vec![b'{', 0xff, 0xfe, b'}'], true, 400),
        ("message: deep nesting", "/channels/sms/message", "application/json", deep.clone().into_bytes(), true, 400),
        ("message: array body", "/channels/sms/message", "application/json", b"[]".to_vec(), true, 400),
        ("message: form body", "/channels/sms/message", "application/x-www-form-urlencoded", b"a=b".to_vec(), true, 400),
        ("message: empty body", "/channels/sms/message", "application/json", Vec::new(), true, 400),
        ("message: overlong contactId", "/channels/sms/message", "application/json",
            format!(r#"{{"contactId":"{long_id}","message":{{"type":"text","text":"x"}}}}"#).into_bytes(), true, 400),
        ("message: contactId number", "/channels/sms/message", "application/json",
            br#"{"contactId":61400000001,"message":{"type":"text","text":"x"}}"#.to_vec(), true, 400),
        ("message: empty text", "/channels/sms/message", "application/json",
            br#"{"contactId":"+61400000001","message":{"type":"text","text":"  "}}"#.to_vec(), true, 400),
        ("message: attachment with a file: URL", "/channels/sms/message", "application/json",
            br#"{"contactId":"+61400000001","message":{"type":"attachment","attachment":{"type":"image","url":"file:///etc/passwd"}}}"#.to_vec(), true, 400),
        ("message: location out of range", "/channels/sms/message", "application/json",
            br#"{"contactId":"+61400000001","message":{"type":"location","latitude":91,"longitude":0}}"#.to_vec(), true, 400),
        // `sm%73` is `sms` (equivalent per RFC 3986): the real route, rejected for its body.
        ("message: encoded name", "/channels/sm%73/message", "application/json", b"{}".to_vec(), true, 400),
        ("message: GET", "/channels/sms/message", "", Vec::new(), true, 405),
        ("inbound: no secret", "/channels/sms/inbound", "application/x-www-form-urlencoded", b"from=x".to_vec(), false, 403),
        ("status: empty secret", "/channels/sms/status?secret=", "application/x-www-form-urlencoded", b"x=1".to_vec(), false, 403),
        ("unknown channel", "/channels/nope/inbound", "application/x-www-form-urlencoded", b"x=1".to_vec(), false, 404),
        ("unknown route", "/admin", "", Vec::new(), false, 404),
    ];
    for (what, path, ct, body, auth, want) in cases {
        let method = if what.ends_with("GET") {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let mut req = http.request(method, format!("{base}{path}")).body(body);
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        if auth {
            req = req.header("authorization", &bearer);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status().as_u16(), want, "{what}");
    }
    // Authentic but unreadable provider payloads: kept raw, answered 2xx (not 4xx: some
    // providers retry a non-2xx for a day), never a 5xx.
    for (what, path, body) in [
        ("inbound: broken JSON", inbound.as_str(), "{\"from\":"),
        ("inbound: deep JSON", inbound.as_str(), deep.as_str()),
        (
            "inbound: overlong from",
            inbound.as_str(),
            "from=%2B614444444444444444444444444444&body=x&message_id=1",
        ),
        ("status: no message_id", status.as_str(), "status_code=201"),
    ] {
        let ct = if body.starts_with('{') || body.starts_with('[') {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        };
        let r = http
            .post(format!("{base}{path}"))
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
    }
    // Over the body limit: 413 before the whole body is buffered.
    let r = http
        .post(format!("{base}{inbound}"))
        .body(vec![b'a'; 3 << 20])
        .send()
        .await;
    assert!(
        matches!(&r, Ok(r) if r.status() == 413) || r.is_err(),
        "oversized body: {r:?}"
    );
    gw.shutdown().await;
    assert!(stage.events().is_empty(), "nothing reached respond.io");
    assert!(stage.sim.sent().is_empty(), "nothing reached the provider");
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let raw: i64 = conn
        .query_row("SELECT COUNT(*) FROM raw_webhooks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(raw, 4, "the four authentic unreadable payloads were kept");
}

/// Media URLs are checked (signature, expiry) before anything is fetched; a valid link for
/// a provider that proxies no media answers 502, never a file.
#[tokio::test]
async fn media_urls_are_checked_before_anything_is_fetched() {
    use rio_bridge::config::MediaConfig;
    use rio_bridge::media::MediaProxy;
    use rio_bridge::providers::MediaRef;

    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    // The gateway made its key at start; a proxy opened on the same directory signs alike.
    let cfg = MediaConfig {
        dir: Some(stage.dir.path().join("media")),
        ..MediaConfig::default()
    };
    let signer = MediaProxy::open(&cfg, &stage.db_path(), &stage.base()).unwrap();
    let m = MediaRef {
        source: "file-1".into(),
        content_type: Some("image/jpeg".into()),
    };
    let now_s = (rio_bridge::clock::now_ms() / 1000) as u64;
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
            (status, body)
        }
    };
    let good = signer.signed_url("sms", &m, now_s);
    let (status, body) = get(good.clone()).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("proxies no media"),
        "{body}"
    );
    let tampered = good.replace("sig=", "sig=AAAA");
    assert_eq!(get(tampered).await.0, 403);
    let unsigned = good.split('?').next().unwrap().to_string();
    assert_eq!(get(unsigned).await.0, 403);
    let expired = signer.signed_url("sms", &m, now_s - 8 * 86_400);
    assert_eq!(get(expired).await.0, 410);
    let other_channel = signer.signed_url("gone", &m, now_s);
    assert_eq!(get(other_channel).await.0, 404);
    gw.shutdown().await;
}

/// A token rotation done in respond.io before the config: the old token gets 401, the
/// gateway tries `respondio_token_next` at once, keeps using it, and nothing is lost or
/// dead-lettered; `/message` accepts both tokens meanwhile.
#[tokio::test]
async fn token_rotation_switches_to_the_next_token_without_losing_anything() {
    use rio_bridge::respondio::emulator::EmulatedChannel;
    const NEXT: &str = "rio-next-token-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let stage = Stage::new(Opts {
        channel_extra: format!("respondio_token_next = \"{NEXT}\""),
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    let push = |text: &'static str| {
        let sim = stage.sim.clone();
        async move {
            assert_eq!(
                sim.push_inbound(ALICE, OUR_NUMBER, text).await.unwrap(),
                200
            )
        }
    };
    push("before rotation").await;
    wait_until("first event", 20, || async {
        (stage.events().len() == 1).then_some(())
    })
    .await;
    // respond.io regenerates the token: only NEXT works from now on.
    stage
        .emulator
        .add_channel(EmulatedChannel::new(CHANNEL_ID, NEXT));
    push("after rotation 1").await;
    wait_until("second event", 20, || async {
        (stage.events().len() == 2).then_some(())
    })
    .await;
    push("after rotation 2").await;
    wait_until("third event", 20, || async {
        (stage.events().len() == 3).then_some(())
    })
    .await;
    let texts: Vec<String> = stage.events().iter().map(text_of).collect();
    assert_eq!(
        texts,
        ["before rotation", "after rotation 1", "after rotation 2"]
    );
    let refused = stage
        .emulator
        .calls(CHANNEL_ID)
        .iter()
        .filter(|c| c.status == 401)
        .count();
    assert_eq!(refused, 1, "one 401, then the next token is kept");
    // respond.io calling us with the new token is accepted as well.
    let r = reqwest::Client::new()
        .post(format!("{}/channels/sms/message", stage.base()))
        .bearer_auth(NEXT)
        .json(&json!({"channelId": CHANNEL_ID, "contactId": ALICE, "message": {"type": "text", "text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.shutdown().await;
}

/// A rotation done in respond.io before the config, under a burst: every request the
/// gateway makes (the refused ones included) takes a rate slot and has its attempt row, so
/// respond.io never sees more than the limit in any second; which token works is kept in
/// the store, so after a restart the first call already uses it.
#[tokio::test]
async fn a_refused_token_costs_a_logged_slot_and_the_working_one_survives_a_restart() {
    use rio_bridge::respondio::emulator::EmulatedChannel;
    const NEXT: &str = "rio-next-token-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let stage = Stage::new(Opts {
        channel_extra: format!("respondio_token_next = \"{NEXT}\""),
        max_events_per_call: 1,
        ..Opts::default()
    })
    .await;
    // respond.io regenerated the token before the gateway started: only NEXT works.
    stage
        .emulator
        .add_channel(EmulatedChannel::new(CHANNEL_ID, NEXT));
    let gw = InProcess::start(&stage).await;
    let contacts: Vec<String> = (0..60).map(|i| format!("+6140010{i:04}")).collect();
    push_from_contacts(&stage.sim, &contacts, 1).await;
    wait_until("60 events at respond.io", 60, || async {
        (stage.events_of_type("message").len() >= 60).then_some(())
    })
    .await;
    let calls = stage.emulator.calls(CHANNEL_ID);
    let refused = calls.iter().filter(|c| c.status == 401).count();
    assert!(refused >= 1, "the old token was tried first");
    let arrivals: Vec<i64> = calls.iter().map(|c| c.arrival_ms).collect();
    assert!(
        busiest_second(&arrivals) <= 20,
        "respond.io counted {} requests in one second (limit 20)",
        busiest_second(&arrivals)
    );
    // Every request is one attempt row: none bypassed the limiter or the log.
    assert_eq!(attempt_times(&stage.db_path(), 0).len(), calls.len());
    let rotated = attempt_rows(&stage.db_path(), 0)
        .iter()
        .filter(|r| r.outcome == "rotated")
        .count();
    assert_eq!(rotated, refused, "each refused call is logged as such");
    let mids: std::collections::HashSet<String> = stage
        .events_of_type("message")
        .iter()
        .map(|e| e.event["mId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(mids.len(), 60, "nothing lost, nothing doubled");
    assert_eq!(stage.events_of_type("message").len(), 60);
    // The store knows which token works, never the token itself.
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let noted: String = conn
        .query_row(
            "SELECT v FROM meta WHERE k = 'respondio_token_in_use/sms'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!noted.contains(NEXT) && !noted.contains(TOKEN));
    drop(conn);
    gw.shutdown().await;

    let gw = InProcess::start(&stage).await;
    push_from_contacts(&stage.sim, &contacts[..5], 1).await;
    wait_until("65 events at respond.io", 60, || async {
        (stage.events_of_type("message").len() >= 65).then_some(())
    })
    .await;
    let refused_after = stage
        .emulator
        .calls(CHANNEL_ID)
        .iter()
        .filter(|c| c.status == 401)
        .count();
    assert_eq!(
        refused_after, refused,
        "after the restart the working token is used at once"
    );
    gw.shutdown().await;
}

/// `backup` while messages keep arriving: the copy passes its integrity check and holds
/// every message acknowledged before it started; an existing backup is never overwritten.
#[tokio::test]
async fn backup_while_running_is_consistent_and_complete() {
    use rio_bridge::store::backup::backup_sqlite;
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    for i in 0..20 {
        let r = stage
            .sim
            .push_inbound(ALICE, OUR_NUMBER, &format!("before {i}"))
            .await
            .unwrap();
        assert_eq!(r, 200);
    }
    let sim = stage.sim.clone();
    let during = tokio::spawn(async move {
        for i in 0..50 {
            let r = sim
                .push_inbound("+61400000002", OUR_NUMBER, &format!("during {i}"))
                .await
                .unwrap();
            assert_eq!(r, 200);
        }
    });
    let db = stage.db_path();
    let out = stage.dir.path().join("backup.db");
    let (db2, out2) = (db.clone(), out.clone());
    let report = tokio::task::spawn_blocking(move || backup_sqlite(&db2, &out2))
        .await
        .unwrap()
        .unwrap();
    assert!(report.items >= 20, "{report:?}");
    let copy = rusqlite::Connection::open(&out).unwrap();
    let before: i64 = copy
        .query_row(
            "SELECT count(*) FROM items WHERE payload LIKE '%before %'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(before, 20);
    let (db3, out3) = (db.clone(), out.clone());
    let again = tokio::task::spawn_blocking(move || backup_sqlite(&db3, &out3))
        .await
        .unwrap();
    assert!(again.unwrap_err().to_string().contains("refusing"));
    during.await.unwrap();
    gw.shutdown().await;
}

/// Config reloads set each channel's secrets for channel-log redaction afresh: the list
/// holds the current config's secrets and the previous one's, however many reloads ran
/// (it used to grow by the whole set on every reload).
#[tokio::test]
async fn reloads_do_not_grow_the_channel_log_secrets() {
    let stage = Stage::new(Opts::default()).await;
    let cfg = rio_bridge::config::Config::load(&stage.config_path()).expect("config");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", stage.port))
        .await
        .unwrap();
    let app = rio_bridge::app::App::build(cfg).await.expect("build app");
    let state = app.state.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let (reload, reloads) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(app.run_with_reloads(listener, stop.clone(), Some(reloads)));
    wait_ready(&stage.base()).await;
    let before = state.channel_log.redacted_values("sms");
    assert!(before >= 2, "token, webhook secret and key: {before}");
    for n in 0..5 {
        let old = state.channels();
        let cfg = rio_bridge::config::Config::load(&stage.config_path()).expect("config");
        reload.send(cfg).await.unwrap();
        wait_until(&format!("reload {n} applied"), 30, || {
            let changed = !std::sync::Arc::ptr_eq(&old, &state.channels());
            async move { changed.then_some(()) }
        })
        .await;
    }
    assert_eq!(
        state.channel_log.redacted_values("sms"),
        before,
        "the same config reloaded 5 times"
    );
    // A rotated webhook secret: the new one is redacted, and the old one still (an
    // exchange that began before the reload may carry it); one more reload drops the old.
    std::fs::write(
        stage.config_path(),
        std::fs::read_to_string(stage.config_path())
            .unwrap()
            .replace(
                &format!("webhook_secret = \"{SECRET}\""),
                "webhook_secret = \"rotated-hook-secret-789\"",
            ),
    )
    .unwrap();
    for (n, want) in [(0, before + 1), (1, before)] {
        let old = state.channels();
        let cfg = rio_bridge::config::Config::load(&stage.config_path()).expect("config");
        reload.send(cfg).await.unwrap();
        wait_until(&format!("rotation reload {n} applied"), 30, || {
            let changed = !std::sync::Arc::ptr_eq(&old, &state.channels());
            async move { changed.then_some(()) }
        })
        .await;
        assert_eq!(
            state.channel_log.redacted_values("sms"),
            want,
            "rotation reload {n}"
        );
    }
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
}

/// On `/channels/{name}/message` the path and the token name the channel: a body whose
/// `channelId` is respond.io's id in another form is taken (and the difference logged).
/// On `/message`, where `channelId` is what names the channel, an unknown one is refused.
#[tokio::test]
async fn the_path_route_takes_a_body_whose_channel_id_differs() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let send = |url: String, channel_id: serde_json::Value, text: &str| {
        http.post(url)
            .bearer_auth(TOKEN)
            .json(&json!({
                "channelId": channel_id,
                "contactId": "+61400000801",
                "message": {"type": "text", "text": text},
            }))
            .send()
    };
    let by_name = format!("{}/channels/sms/message", stage.base());
    for (id, text) in [(json!("ch-CH1"), "other form"), (json!(12345), "a number")] {
        let r = send(by_name.clone(), id, text).await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{text}: {body}");
        assert!(body["mId"].is_string(), "{body}");
    }
    let r = send(
        format!("{}/message", stage.base()),
        json!("ch-CH1"),
        "by id",
    )
    .await
    .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "an unknown channelId names no channel"
    );
    wait_until("both sends at the provider", 30, || async {
        (accepted_mids(&stage.sim).len() == 2).then_some(())
    })
    .await;
    gw.shutdown().await;
}

/// A location whose fields are nested under `location` is taken like one with them at the
/// message's top level.
#[tokio::test]
async fn a_location_nested_under_location_is_taken() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let (status, body) = stage
        .emulator
        .send_to_gateway(
            &format!("{}/channels/sms/message", stage.base()),
            CHANNEL_ID,
            "+61400000802",
            json!({"type": "location", "location": {"latitude": 3.139, "longitude": 101.6869, "address": "Kuala Lumpur"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let sent = wait_until("the location at the provider", 30, || async {
        stage.sim.sent().into_iter().find(|a| a.status == 200)
    })
    .await;
    let text = sent.body.to_string();
    assert!(
        text.contains("3.139") && text.contains("101.6869"),
        "{text}"
    );
    assert!(text.contains("Kuala Lumpur"), "{text}");
    gw.shutdown().await;
}

/// The provider's own words for a failure reach respond.io verbatim in the `failed`
/// status: a delivery receipt's `error_text`, and a rejection after the 200 (the provider
/// named the problem, e.g. INVALID_RECIPIENT).
#[tokio::test]
async fn the_providers_reason_reaches_respondio_verbatim() {
    let stage = Stage::new(Opts {
        push_receipts: false,
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    let (status, body) = stage.send("+61400000901", "will bounce").await;
    assert_eq!(status, 200, "{body}");
    let mid = body["mId"].as_str().unwrap().to_string();
    let id = wait_until("the send at the provider", 30, || async {
        stage
            .sim
            .sent()
            .into_iter()
            .find_map(|a| a.message_ids.first().cloned())
    })
    .await;
    let words = "Absent subscriber: handset switched off (carrier 12/7)";
    let pushed = reqwest::Client::new()
        .post(format!(
            "{}/channels/sms/status?secret={SECRET}",
            stage.base()
        ))
        .form(&[
            ("message_id", id.as_str()),
            ("status_code", "301"),
            ("status_text", "Failed"),
            ("error_code", "12"),
            ("error_text", words),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 200);
    let st = wait_until("failed status", 30, || async {
        stage
            .events_of_type("message_status")
            .into_iter()
            .find(|e| e.event["mId"] == mid.as_str() && e.event["status"]["value"] == "failed")
    })
    .await;
    let got = st.event["status"]["message"].as_str().unwrap_or("");
    assert!(got.contains(words), "{got}");
    gw.shutdown().await;
}
