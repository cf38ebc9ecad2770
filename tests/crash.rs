//! SIGKILL the real gateway binary in the middle of mixed traffic (inbound messages,
//! outbound sends, delivery receipts), restart it, and check that every acknowledged
//! message arrived, repeats carry the same mId and come only from attempts the gateway
//! marked ambiguous, statuses never went backwards, and no rate window was exceeded
//! across the restarts. `RIO_CRASH_KILLS` sets how many kills the loop test makes
//! (default 3, or 20 under `RIO_LONG=1`; RELIABILITY.md has the long runs).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    spawn_binary(
        &stage.config_path(),
        &stage.dir.path().join(format!("gateway-{run}.log")),
    )
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
    crash_run(1, false).await;
}

/// The same with an emulator that dedupes by mId (whether respond.io does is unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_with_respondio_dedupe_by_mid() {
    crash_run(1, true).await;
}

/// Killed again and again at random moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_loses_nothing_acknowledged() {
    let kills = std::env::var("RIO_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(scaled(3, 20));
    crash_run(kills, false).await;
}

type Acked = Arc<Mutex<Vec<String>>>;

/// Inbound pushes from `contacts` contacts until `stop`, each redelivered (same
/// message_id) until acknowledged, as a provider does.
fn inbound_traffic(
    stage: &Arc<Stage>,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::new();
    let url = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
    (0..10)
        .map(|c| {
            let (acked, http, url, stop) = (acked.clone(), http.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let contact = format!("+6140000050{c}");
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    let text = format!("in {contact} #{n}");
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
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        })
        .collect()
}

/// respond.io's sends until `stop`, retried until acknowledged; records the mIds.
fn outbound_traffic(
    stage: &Arc<Stage>,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|c| {
            let (stage, acked, stop) = (stage.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let contact = format!("+6140000060{c}");
                let url = format!("{}/channels/sms/message", stage.base());
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
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
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

/// The mId of a send the stand-in is still answering (it holds some answers 150 ms).
fn send_in_flight(stage: &Stage) -> Option<String> {
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
}

async fn crash_run(kills: usize, respondio_dedupes: bool) {
    let stage = Arc::new(
        Stage::new(Opts {
            provider_rate: 40,
            ..Opts::default()
        })
        .await,
    );
    stage.emulator.set_dedupe_by_mid(respondio_dedupes);
    // Slow provider answers: some sends are on the wire when the process dies.
    let slow_answers = || {
        for _ in 0..40 {
            stage.sim.push_fault(SimFault::Delay(150));
        }
    };
    slow_answers();
    let mut child = spawn_gateway(&stage, 0);
    wait_ready(&stage.base()).await;

    let (acked_in, acked_out): (Acked, Acked) = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = inbound_traffic(&stage, &acked_in, &stop);
    tasks.extend(outbound_traffic(&stage, &acked_out, &stop));

    // The first kill lands on a send in flight, which must come back ambiguous; the
    // others at random moments.
    let in_flight: String = wait_until("traffic under way with a send in flight", 30, || async {
        if acked_in.lock().unwrap().len() < 60 {
            return None;
        }
        send_in_flight(&stage)
    })
    .await;
    for k in 0..kills {
        if k > 0 {
            let pause = rand::random_range(300..1500);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        child = spawn_gateway(&stage, k + 1);
        wait_ready(&stage.base()).await;
        slow_answers();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }

    let acked_in = acked_in.lock().unwrap().clone();
    let acked_out = acked_out.lock().unwrap().clone();
    assert!(acked_in.len() >= 60 && !acked_out.is_empty());
    wait_all_delivered(&stage, &acked_in, &acked_out, 120).await;
    child.start_kill().ok();
    let _ = child.wait().await;

    let ambiguous = ambiguous_mids(&stage.db_path());
    assert!(
        ambiguous.contains(&in_flight),
        "the send in flight at the first kill was not marked ambiguous"
    );
    let repeats = check_repeats(&stage, &ambiguous);
    // Statuses never went backwards.
    let mut last: HashMap<String, i32> = HashMap::new();
    let mut statuses = 0;
    for e in stage.events_of_type("message_status") {
        statuses += 1;
        let mid = e.event["mId"].as_str().unwrap().to_string();
        let r = rank(e.event["status"]["value"].as_str().unwrap());
        let prev = last.insert(mid.clone(), r).unwrap_or(0);
        assert!(r >= prev, "{mid}: status went backwards");
    }
    // No window above the limit, across the restarts.
    let to_respondio = max_in_window(&attempt_times(&stage.db_path(), 0), 1000);
    let to_provider = max_in_window(&attempt_times(&stage.db_path(), 1), 1000);
    assert!(
        to_respondio <= 20,
        "respond.io lane: {to_respondio} in a window"
    );
    assert!(
        to_provider <= 40,
        "provider lane: {to_provider} in a window"
    );
    eprintln!(
        "crash run: {kills} kill(s); {} inbound and {} sends acknowledged, all delivered; {} statuses; \
         {} ambiguous item(s); {repeats} repeat(s); busiest second: {to_respondio} to respond.io, {to_provider} to the provider",
        acked_in.len(),
        acked_out.len(),
        statuses,
        ambiguous.len()
    );
}
