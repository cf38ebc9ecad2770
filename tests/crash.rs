//! SIGKILL the real gateway binary in the middle of mixed traffic, restart it, and check
//! that every acknowledged message arrived, repeats carry the same mId and come only from
//! attempts the gateway marked ambiguous, statuses never went backwards, and no rate
//! window was exceeded across the restart.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::*;
use rio_bridge::lanes::limiter::max_in_window;
use rio_bridge::simulators::clicksend::SimFault;

/// Retries like a provider or respond.io would, until the gateway acknowledges (it is down
/// for a moment in this test). Gives up after 30 s.
async fn until_acked<F, Fut, T>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

fn spawn_gateway(stage: &Stage, run: usize) -> tokio::process::Child {
    let log = std::fs::File::create(stage.dir.path().join(format!("gateway-{run}.log"))).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_rio-bridge"))
        .args(["serve", "--config"])
        .arg(stage.config_path())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rio-bridge")
}

fn rank(v: &str) -> i32 {
    match v {
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_acknowledged() {
    sigkill_mid_burst(false).await;
}

/// The same with an emulator that dedupes by mId (whether respond.io does is unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_with_respondio_dedupe_by_mid() {
    sigkill_mid_burst(true).await;
}

async fn sigkill_mid_burst(respondio_dedupes: bool) {
    let stage = Arc::new(
        Stage::new(Opts {
            provider_rate: 40,
            ..Opts::default()
        })
        .await,
    );
    stage.emulator.set_dedupe_by_mid(respondio_dedupes);
    // Slow provider answers: some sends are on the wire when the process dies.
    for _ in 0..40 {
        stage.sim.push_fault(SimFault::Delay(150));
    }
    let mut child = spawn_gateway(&stage, 1);
    wait_ready(&stage.base()).await;

    let acked_in: Arc<Mutex<Vec<String>>> = Arc::default();
    let acked_out: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    let http = reqwest::Client::new();
    let inbound_url = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
    for c in 0..10 {
        let (acked, http, url) = (acked_in.clone(), http.clone(), inbound_url.clone());
        tasks.push(tokio::spawn(async move {
            let contact = format!("+6140000050{c}");
            for n in 0..20 {
                let text = format!("in {contact} #{n}");
                // A provider redelivers the same webhook (same message_id) until it gets a 2xx.
                let form = [
                    ("from", contact.clone()),
                    ("to", OUR_NUMBER.to_string()),
                    ("body", text.clone()),
                    ("message_id", format!("CRASH-{c}-{n}")),
                    ("timestamp", "1767225600".to_string()),
                ];
                let ok = until_acked(|| async {
                    let r = http.post(&url).form(&form).send().await;
                    r.ok().filter(|r| r.status() == 200).map(|_| ())
                })
                .await;
                if ok.is_some() {
                    acked.lock().unwrap().push(text);
                }
                tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            }
        }));
    }
    for c in 0..4 {
        let (stage, acked) = (stage.clone(), acked_out.clone());
        tasks.push(tokio::spawn(async move {
            let contact = format!("+6140000060{c}");
            let url = format!("{}/channels/sms/message", stage.base());
            for n in 0..15 {
                let text = format!("out {contact} #{n}");
                let mid = until_acked(|| async {
                    let message = serde_json::json!({"type": "text", "text": text});
                    match stage
                        .emulator
                        .send_to_gateway(&url, CHANNEL_ID, &contact, message)
                        .await
                    {
                        Ok((200, body)) => body["mId"].as_str().map(str::to_string),
                        _ => None,
                    }
                })
                .await;
                if let Some(mid) = mid {
                    acked.lock().unwrap().push(mid);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }));
    }
    // Kill once traffic is well under way and a send is on the wire (the stand-in holds
    // its answer 150 ms): that send must come back as ambiguous and be delivered.
    let in_flight: String = wait_until("traffic under way with a send in flight", 30, || async {
        if acked_in.lock().unwrap().len() < 60 {
            return None;
        }
        stage
            .sim
            .sent()
            .iter()
            .find(|a| a.status == 0)
            .and_then(|a| {
                a.body["messages"][0]["custom_string"]
                    .as_str()
                    .map(str::to_string)
            })
    })
    .await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut child = spawn_gateway(&stage, 2);
    wait_ready(&stage.base()).await;
    for t in tasks {
        t.await.unwrap();
    }

    let acked_in = acked_in.lock().unwrap().clone();
    let acked_out = acked_out.lock().unwrap().clone();
    assert_eq!(
        acked_in.len(),
        200,
        "every inbound push was acknowledged in the end"
    );
    assert_eq!(
        acked_out.len(),
        60,
        "every send was acknowledged in the end"
    );
    wait_until(
        "every acknowledged inbound message at respond.io",
        60,
        || async {
            let seen: std::collections::HashSet<String> =
                stage.events().iter().map(text_of).collect();
            acked_in.iter().all(|t| seen.contains(t)).then_some(())
        },
    )
    .await;
    wait_until("every acknowledged send at the provider", 60, || async {
        let seen: std::collections::HashSet<String> = stage
            .sim
            .sent()
            .iter()
            .filter(|a| a.status == 200)
            .filter_map(|a| {
                a.body["messages"][0]["custom_string"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        acked_out.iter().all(|m| seen.contains(m)).then_some(())
    })
    .await;
    child.start_kill().ok();
    let _ = child.wait().await;

    let ambiguous = ambiguous_mids(&stage.db_path());
    assert!(
        ambiguous.contains(&in_flight),
        "the send in flight at the kill was not marked ambiguous"
    );
    // Inbound repeats: same text → same mId, and only from ambiguous attempts.
    let mut by_text: HashMap<String, Vec<String>> = HashMap::new();
    for e in stage.events_of_type("message") {
        by_text
            .entry(text_of(&e))
            .or_default()
            .push(e.event["mId"].as_str().unwrap().to_string());
    }
    let mut repeats = 0;
    for (text, mids) in &by_text {
        if mids.len() > 1 {
            repeats += mids.len() - 1;
            assert!(
                mids.iter().all(|m| m == &mids[0]),
                "{text}: repeats with different mIds {mids:?}"
            );
            assert!(
                ambiguous.contains(&mids[0]),
                "{text}: repeated but never marked ambiguous"
            );
        }
    }
    // Outbound repeats at the provider, the same way.
    let mut by_mid: HashMap<String, usize> = HashMap::new();
    for a in stage.sim.sent().iter().filter(|a| a.status == 200) {
        if let Some(m) = a.body["messages"][0]["custom_string"].as_str() {
            *by_mid.entry(m.to_string()).or_default() += 1;
        }
    }
    for (mid, n) in &by_mid {
        if *n > 1 {
            repeats += n - 1;
            assert!(
                ambiguous.contains(mid),
                "send {mid} repeated {n}x but never marked ambiguous"
            );
        }
    }
    eprintln!(
        "crash test: {} inbound and {} outbound acknowledged, {repeats} repeat(s)",
        acked_in.len(),
        acked_out.len()
    );
    // Statuses never went backwards.
    let mut last: HashMap<String, i32> = HashMap::new();
    for e in stage.events_of_type("message_status") {
        let mid = e.event["mId"].as_str().unwrap().to_string();
        let r = rank(e.event["status"]["value"].as_str().unwrap());
        let prev = last.insert(mid.clone(), r).unwrap_or(0);
        assert!(r >= prev, "{mid}: status went backwards");
    }
    // No window above the limit, across the restart.
    let log = attempt_times(&stage.db_path(), 0);
    assert!(
        max_in_window(&log, 1000) <= 20,
        "respond.io lane: {}",
        max_in_window(&log, 1000)
    );
    let log = attempt_times(&stage.db_path(), 1);
    assert!(
        max_in_window(&log, 1000) <= 40,
        "provider lane: {}",
        max_in_window(&log, 1000)
    );
}
