//! Fault suites: respond.io and the provider misbehaving at random, a provider outage longer
//! than the max age, a locked database, slow request bodies. Everything over real loopback
//! HTTP on a real SQLite file; `RIO_LONG=1` runs the long forms (see RELIABILITY.md).

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use rio_bridge::respondio::emulator::FaultRates;
use rio_bridge::simulators::clicksend::SimFaultRates;

/// The backoff every suite here configures (Stage's defaults).
const BACKOFF_BASE_MS: i64 = 100;
const BACKOFF_MAX_MS: i64 = 2000;
/// How far past the schedule's upper bound a retry may start for scheduling reasons alone
/// (waiting for a rate slot, the lane waking up): generous, so a loaded machine does not
/// fail the suite, while a retry that ignored its backoff would still be caught.
const SCHEDULE_SLACK_MS: i64 = 1500;

fn contacts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|c| format!("{prefix}{c:02}")).collect()
}

fn dead_items(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM items WHERE state = 3", [], |r| {
        r.get(0)
    })
    .unwrap()
}

/// respond.io misbehaving at random in every way the emulator knows (500s, 429s with and
/// without Retry-After, resets, answers that never come, answers too late for our timeout,
/// trickled bodies) while contacts write in: everything arrives once it recovers, each
/// contact's messages in order, repeats only as same-mId retries of attempts marked
/// ambiguous, the channel's limit is never exceeded at respond.io, and retries follow the
/// backoff schedule and the 429 pauses.
#[tokio::test]
async fn respondio_misbehaving_at_random_loses_nothing() {
    // One event per call, so that every message makes calls to misbehave on.
    let stage = Stage::new(Opts {
        channel_extra: "respondio_timeout_ms = 300".into(),
        max_events_per_call: 1,
        ..Opts::default()
    })
    .await;
    let rates = FaultRates {
        server_error: 0.08,
        throttle: 0.04,
        throttle_bare: 0.04,
        reset: 0.04,
        slow: 0.04,
        hang: 0.03,
        slow_body: 0.05,
        slow_ms: 800,
    };
    stage.emulator.set_fault_rates(CHANNEL_ID, rates);
    let gw = InProcess::start(&stage).await;
    let per_contact = scaled(10, 60);
    let who = contacts("+614000001", 10);
    let total = who.len() * per_contact;
    push_from_contacts(&stage.sim, &who, per_contact).await;
    wait_until("every message at respond.io", scaled(90, 600), || async {
        let seen: HashSet<String> = stage.events().iter().map(text_of).collect();
        (seen.len() >= total).then_some(())
    })
    .await;
    gw.shutdown().await;

    let calls = stage.emulator.calls(CHANNEL_ID);
    let failed = calls.iter().filter(|c| c.status != 200).count();
    assert!(failed > 0, "the emulator misbehaved at least once");
    let over_limit = calls
        .iter()
        .filter(|c| {
            c.reason
                .as_deref()
                .is_some_and(|r| r.contains("rate limit"))
        })
        .count();
    assert_eq!(over_limit, 0, "the emulator's own limiter never fired");
    let arrivals: Vec<i64> = calls.iter().map(|c| c.arrival_ms).collect();
    let busiest = busiest_second(&arrivals);
    assert!(busiest <= 20, "{busiest} calls arrived in one second");

    let ambiguous = ambiguous_mids(&stage.db_path());
    let mut first_seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut mid_of: HashMap<String, String> = HashMap::new();
    let mut repeats = 0;
    for e in stage.events() {
        let (text, mid) = (text_of(&e), e.event["mId"].as_str().unwrap().to_string());
        match mid_of.get(&text) {
            Some(m) => {
                assert_eq!(m, &mid, "{text}: repeated with another mId");
                assert!(
                    ambiguous.contains(&mid),
                    "{text}: repeated, never ambiguous"
                );
                repeats += 1;
            }
            None => {
                mid_of.insert(text.clone(), mid);
                first_seen
                    .entry(e.contact_id.clone())
                    .or_default()
                    .push(text);
            }
        }
    }
    for (contact, texts) in &first_seen {
        let want: Vec<String> = (0..per_contact)
            .map(|n| format!("{contact} #{n}"))
            .collect();
        assert_eq!(texts, &want, "order for {contact}");
    }
    assert_eq!(dead_items(&stage.db_path()), 0, "nothing dead-lettered");
    let log = attempt_times(&stage.db_path(), 0);
    assert!(busiest_second(&log) <= 20, "attempt log over the limit");
    let schedule = check_retry_schedule(
        &stage.db_path(),
        0,
        BACKOFF_BASE_MS,
        BACKOFF_MAX_MS,
        SCHEDULE_SLACK_MS,
    );
    assert!(schedule.backoff_gaps > 0, "some retries were checked");
    eprintln!(
        "respond.io misbehaved on {failed} of {} calls; {total} messages, {repeats} repeats \
         ({} ambiguous items); busiest second {busiest}; {} backoff gaps and {} 429 gaps in \
         schedule, largest scheduling slack {} ms",
        calls.len(),
        ambiguous.len(),
        schedule.backoff_gaps,
        schedule.throttle_gaps,
        schedule.max_slack_ms
    );
}

/// The provider misbehaving at random (503s, 429s with and without Retry-After, resets,
/// hangs, answers too late for our timeout, trickled bodies) while agents reply to
/// contacts: every send reaches the provider once it recovers, in order per contact,
/// repeats only with the same mId and only for attempts marked ambiguous, within the
/// provider's rate, and retries follow the schedule.
#[tokio::test]
async fn provider_misbehaving_at_random_loses_nothing() {
    // A late answer or a trickled body takes longer than our 300 ms timeout, so the send
    // went out but we could not know: ambiguous. The cap on ambiguous retries is raised so
    // that a run of bad luck on one message does not dead-letter it (the cap is tested
    // elsewhere); the point here is that nothing is lost and nothing doubles silently.
    let stage = Stage::new(Opts {
        channel_extra: "provider_timeout_ms = 300\nambiguous_retry_cap = 10".into(),
        ..Opts::default()
    })
    .await;
    stage.sim.set_fault_rates(SimFaultRates {
        server_error: 0.06,
        throttle: 0.04,
        throttle_bare: 0.03,
        reset: 0.04,
        hang: 0.03,
        late: 0.04,
        slow_body: 0.04,
        late_ms: 800,
    });
    let gw = InProcess::start(&stage).await;
    let per_contact = scaled(6, 40);
    let who = contacts("+614000002", 10);
    // Each contact's replies go one after another (respond.io waits for our answer).
    let senders: Vec<_> = who
        .iter()
        .map(|c| {
            let (c, stage_base) = (c.clone(), stage.base());
            let emulator = stage.emulator.clone();
            tokio::spawn(async move {
                let mut mids = Vec::new();
                for n in 0..per_contact {
                    let (status, body) = emulator
                        .send_to_gateway(
                            &format!("{stage_base}/channels/sms/message"),
                            CHANNEL_ID,
                            &c,
                            serde_json::json!({"type": "text", "text": format!("{c} #{n}")}),
                        )
                        .await
                        .expect("gateway reachable");
                    assert_eq!(status, 200, "{c} #{n}: {body}");
                    mids.push(body["mId"].as_str().unwrap().to_string());
                }
                (c, mids)
            })
        })
        .collect();
    let mut sent: Vec<(String, Vec<String>)> = Vec::new();
    for s in senders {
        sent.push(s.await.unwrap());
    }
    let want: HashSet<String> = sent.iter().flat_map(|(_, m)| m.clone()).collect();
    wait_until("every send at the provider", scaled(90, 600), || async {
        let got: HashSet<String> = accepted_mids(&stage.sim).into_iter().collect();
        want.is_subset(&got).then_some(())
    })
    .await;
    gw.shutdown().await;

    let arrivals = stage.sim.sent();
    let failed = arrivals.iter().filter(|a| a.status != 200).count();
    assert!(failed > 0, "the provider misbehaved at least once");
    let busiest = busiest_second(&arrivals.iter().map(|a| a.arrival_ms).collect::<Vec<_>>());
    assert!(
        busiest <= stage.opts.provider_rate as usize,
        "{busiest} sends arrived in one second"
    );
    let ambiguous = ambiguous_mids(&stage.db_path());
    let accepted = accepted_mids(&stage.sim);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in &accepted {
        *count.entry(m.as_str()).or_default() += 1;
    }
    let repeats: usize = count.values().map(|n| n - 1).sum();
    for (mid, n) in &count {
        assert!(want.contains(*mid), "{mid}: sent but never asked for");
        if *n > 1 {
            assert!(
                ambiguous.contains(*mid),
                "{mid}: sent {n} times, never ambiguous"
            );
        }
    }
    // Order: each contact's first acceptances in the order respond.io sent them.
    for (contact, mids) in &sent {
        let mut seen = HashSet::new();
        let order: Vec<&String> = accepted
            .iter()
            .filter(|m| mids.contains(m) && seen.insert(m.as_str()))
            .collect();
        let want: Vec<&String> = mids.iter().collect();
        assert_eq!(order, want, "order for {contact}");
    }
    assert_eq!(dead_items(&stage.db_path()), 0, "nothing dead-lettered");
    let schedule = check_retry_schedule(
        &stage.db_path(),
        1,
        BACKOFF_BASE_MS,
        BACKOFF_MAX_MS,
        SCHEDULE_SLACK_MS,
    );
    eprintln!(
        "provider misbehaved on {failed} of {} calls; {} sends, {repeats} repeats ({} ambiguous \
         items); busiest second {busiest}; {} backoff gaps and {} 429 gaps in schedule, largest \
         scheduling slack {} ms",
        arrivals.len(),
        want.len(),
        ambiguous.len(),
        schedule.backoff_gaps,
        schedule.throttle_gaps,
        schedule.max_slack_ms
    );
}

/// A provider outage longer than `max_age_secs`: every send is dead-lettered with its reason
/// and respond.io gets a `failed` status for each, with that reason; nothing is silent.
/// Sends after the outage go through.
#[tokio::test]
async fn provider_outage_longer_than_max_age_fails_loudly() {
    // Attempts and ambiguous retries are not what ends these messages: the age is.
    let stage = Stage::new(Opts {
        budget_ms: 500,
        channel_extra: "provider_timeout_ms = 300\nmax_age_secs = 3\n\
                        max_attempts = 1000\nambiguous_retry_cap = 1000"
            .into(),
        ..Opts::default()
    })
    .await;
    stage.sim.set_fault_rates(SimFaultRates {
        server_error: 0.4,
        throttle: 0.2,
        reset: 0.2,
        hang: 0.2,
        ..SimFaultRates::default()
    });
    let gw = InProcess::start(&stage).await;
    let who = contacts("+614000003", scaled(5, 20));
    let mut mids = Vec::new();
    for round in 0..2 {
        for c in &who {
            let (status, body) = stage.send(c, &format!("{c} #{round}")).await;
            assert_eq!(status, 200, "accepted while the provider is down: {body}");
            mids.push(body["mId"].as_str().unwrap().to_string());
        }
    }
    let failed = wait_until(
        "a failed status for every send",
        scaled(60, 180),
        || async {
            let failed: HashMap<String, String> = stage
                .events_of_type("message_status")
                .into_iter()
                .filter(|e| e.event["status"]["value"] == "failed")
                .map(|e| {
                    let mid = e.event["mId"].as_str().unwrap_or_default().to_string();
                    let why = e.event["status"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    (mid, why)
                })
                .collect();
            mids.iter()
                .all(|m| failed.contains_key(m))
                .then_some(failed)
        },
    )
    .await;
    for mid in &mids {
        let why = &failed[mid];
        // Gave up after its last attempt, or (while a 429 paused the lane) expired by the
        // lane's age sweep: either way past `max_age_secs`, and said so.
        assert!(
            why.contains("gave up after") || why.contains("expired: waited over 3 s"),
            "{mid}: reason {why:?}"
        );
    }
    assert_eq!(dead_items(&stage.db_path()), mids.len() as i64);
    assert!(
        accepted_mids(&stage.sim).is_empty(),
        "nothing reached a handset during the outage"
    );
    // The outage ends: the next send goes through.
    stage.sim.set_fault_rates(SimFaultRates::default());
    let (status, body) = stage.send(&who[0], "after the outage").await;
    assert_eq!(status, 200, "{body}");
    let mid = body["mId"].as_str().unwrap().to_string();
    wait_until("the send after the outage", 30, || async {
        accepted_mids(&stage.sim).contains(&mid).then_some(())
    })
    .await;
    gw.shutdown().await;
    let statuses = stage.events_of_type("message_status");
    for m in &mids {
        let n = statuses
            .iter()
            .filter(|e| e.event["mId"] == m.as_str() && e.event["status"]["value"] == "failed")
            .count();
        assert_eq!(n, 1, "{m}: one failed status, got {n}");
    }
    eprintln!(
        "outage: {} sends dead-lettered after max_age_secs = 3, each reported failed",
        mids.len()
    );
}

/// Holds SQLite's write lock on `db` from another connection (as a backup tool or an
/// operator's shell would) until `release` fires; `locked` fires once it is held.
fn hold_write_lock(
    db: std::path::PathBuf,
    locked: tokio::sync::oneshot::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let _ = locked.send(());
        let _ = release.recv();
        conn.execute_batch("COMMIT").unwrap();
    })
}

async fn status_of(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Another process holds the database's write lock. Shorter than `busy_timeout_ms`: the
/// gateway waits it out and answers 200. Longer: every webhook and `/message` is answered
/// 503 (never 2xx), `/readyz` is red, and once the lock is released the gateway recovers
/// by itself; everything refused and redelivered arrives.
#[tokio::test]
async fn a_locked_database_answers_503_and_recovers_by_itself() {
    let stage = Stage::new(Opts {
        server_extra: String::new(),
        ..Opts::default()
    })
    .await;
    std::fs::write(
        stage.config_path(),
        std::fs::read_to_string(stage.config_path())
            .unwrap()
            .replace("[store]\n", "[store]\nbusy_timeout_ms = 1500\n"),
    )
    .unwrap();
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let readyz = format!("{}/readyz", stage.base());
    let alice = "+61400000401";
    assert_eq!(
        stage.sim.push_inbound(alice, OUR_NUMBER, "before").await,
        Ok(200)
    );

    // One round in CI, more under RIO_LONG=1.
    let mut want: Vec<String> = vec!["before".into()];
    for round in 0..scaled(1, 4) {
        // A short lock (well under busy_timeout_ms) is ridden out: answered 200, not 503.
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let holder = hold_write_lock(stage.db_path(), locked_tx, release_rx);
        locked.await.unwrap();
        let push = tokio::spawn({
            let sim = stage.sim.clone();
            async move {
                sim.push_inbound(
                    alice,
                    OUR_NUMBER,
                    &format!("during a short lock, round {round}"),
                )
                .await
            }
        });
        // Hold the lock for a while (the push waits on it meanwhile), well within 1.5 s.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(!push.is_finished(), "the push waited for the lock");
        release.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(push.await.unwrap(), Ok(200), "a short lock is waited out");

        // A long lock: 503 everywhere, red readiness, nothing accepted.
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let holder = hold_write_lock(stage.db_path(), locked_tx, release_rx);
        locked.await.unwrap();
        let mut refused = Vec::new();
        for n in 0..3 {
            let text = format!("during a long lock #{n}, round {round}");
            let status = stage.sim.push_inbound(alice, OUR_NUMBER, &text).await;
            assert_eq!(status, Ok(503), "{text}");
            refused.push(text);
        }
        let (status, body) = stage
            .send(alice, &format!("reply during a long lock, round {round}"))
            .await;
        assert_eq!(status, 503, "/message while locked: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(status_of(http.get(&readyz)).await, 503, "readyz is red");
        assert_eq!(
            status_of(http.get(format!("{}/healthz", stage.base()))).await,
            200,
            "the process itself is fine"
        );

        // The lock goes away: readiness comes back without a restart, redeliveries go through.
        release.send(()).unwrap();
        holder.join().unwrap();
        wait_until("readyz green again", 30, || async {
            (status_of(http.get(&readyz)).await == 200).then_some(())
        })
        .await;
        for text in &refused {
            assert_eq!(
                stage.sim.push_inbound(alice, OUR_NUMBER, text).await,
                Ok(200)
            );
        }
        let (status, body) = stage
            .send(alice, &format!("reply after the lock, round {round}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let mid = body["mId"].as_str().unwrap().to_string();
        want.push(format!("during a short lock, round {round}"));
        want.extend(refused);
        wait_until("everything at respond.io and the provider", 30, || async {
            let got: Vec<String> = stage
                .events_of_type("message")
                .iter()
                .map(text_of)
                .collect();
            let sent = accepted_mids(&stage.sim).contains(&mid);
            (got == want && sent).then_some(())
        })
        .await;
    }
    gw.shutdown().await;
}

/// Clients that send their headers and then trickle the body are answered 408 and
/// disconnected within `body_read_timeout_ms`, while others are served meanwhile.
#[tokio::test]
async fn a_client_that_trickles_its_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stage = Stage::new(Opts {
        server_extra: "body_read_timeout_ms = 500".into(),
        ..Opts::default()
    })
    .await;
    let gw = InProcess::start(&stage).await;
    let paths = [
        format!("/channels/sms/inbound?secret={SECRET}"),
        "/channels/sms/message".to_string(),
    ];
    let slow_clients: Vec<_> = (0..scaled(8, 64))
        .map(|i| {
            let path = paths[i % 2].clone();
            let port = stage.port;
            tokio::spawn(async move {
                let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n"
                );
                sock.write_all(head.as_bytes()).await.unwrap();
                let (mut rd, mut wr) = sock.into_split();
                // One byte every 100 ms: it would take 100 s to finish.
                let trickle = tokio::spawn(async move {
                    for _ in 0..1000 {
                        if wr.write_all(b" ").await.is_err() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                });
                let mut answer = Vec::new();
                let mut buf = [0u8; 1024];
                let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                trickle.abort();
                (
                    closed.is_ok(),
                    String::from_utf8_lossy(&answer).into_owned(),
                )
            })
        })
        .collect();
    // Others are served while the slow clients hold their connections.
    for n in 0..5 {
        let status = stage
            .sim
            .push_inbound("+61400000501", OUR_NUMBER, &format!("meanwhile #{n}"))
            .await;
        assert_eq!(status, Ok(200));
    }
    for c in slow_clients {
        let (closed, answer) = c.await.unwrap();
        assert!(closed, "the slow client was not disconnected");
        assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
        assert!(
            answer.contains("did not arrive within 500 ms"),
            "{answer:?}"
        );
    }
    wait_until("the messages sent meanwhile arrive", 20, || async {
        (stage.events_of_type("message").len() == 5).then_some(())
    })
    .await;
    gw.shutdown().await;
}

/// The database is locked by another process for longer than `busy_timeout_ms` while
/// traffic flows and attempts are in flight: webhooks refused meanwhile get 503 and are
/// redelivered, attempts whose outcome cannot be recorded yet are recorded once the lock
/// goes, and afterwards everything acknowledged has arrived, in order, repeats only for
/// ambiguous attempts.
#[tokio::test]
async fn a_lock_during_traffic_loses_nothing() {
    let stage = Stage::new(Opts {
        max_events_per_call: 1,
        ..Opts::default()
    })
    .await;
    std::fs::write(
        stage.config_path(),
        std::fs::read_to_string(stage.config_path())
            .unwrap()
            .replace("[store]\n", "[store]\nbusy_timeout_ms = 500\n"),
    )
    .unwrap();
    // Slow answers keep attempts in flight when the lock comes.
    stage.emulator.set_fault_rates(
        CHANNEL_ID,
        FaultRates {
            slow: 0.5,
            slow_ms: 300,
            ..FaultRates::default()
        },
    );
    let gw = InProcess::start(&stage).await;
    let per_contact = scaled(20, 150);
    let who = contacts("+614000006", 5);
    let refusals = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Each contact's messages in order, one every 50 ms so that the locks fall amid them,
    // each redelivered until it is acknowledged, as a provider does.
    let traffic: Vec<_> = who
        .iter()
        .map(|c| {
            let (sim, c) = (stage.sim.clone(), c.clone());
            let (refusals, acked) = (refusals.clone(), acked.clone());
            tokio::spawn(async move {
                for n in 0..per_contact {
                    let text = format!("{c} #{n}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    loop {
                        match sim.push_inbound(&c, OUR_NUMBER, &text).await {
                            Ok(200) => {
                                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                            Ok(503) | Err(_) => {
                                refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                            Ok(other) => panic!("{text}: answered {other}"),
                        }
                    }
                }
            })
        })
        .collect();
    let rounds = scaled(2, 6);
    let total = who.len() * per_contact;
    for round in 0..rounds {
        let want = (round + 1) * total / (rounds + 2);
        wait_until("traffic under way", 60, || async {
            (acked.load(std::sync::atomic::Ordering::Relaxed) >= want).then_some(())
        })
        .await;
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let holder = hold_write_lock(stage.db_path(), locked_tx, release_rx);
        locked.await.unwrap();
        // Held for three busy timeouts: writes fail meanwhile.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        release.send(()).unwrap();
        holder.join().unwrap();
    }
    for t in traffic {
        t.await.unwrap();
    }
    wait_until("every message at respond.io", scaled(60, 300), || async {
        let seen: HashSet<String> = stage.events().iter().map(text_of).collect();
        (seen.len() >= total).then_some(())
    })
    .await;
    gw.shutdown().await;
    let refused = refusals.load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused > 0, "some webhooks met the lock");
    let ambiguous = ambiguous_mids(&stage.db_path());
    let mut first_seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut repeats = 0;
    for e in stage.events() {
        let text = text_of(&e);
        if seen.insert(text.clone()) {
            first_seen
                .entry(e.contact_id.clone())
                .or_default()
                .push(text);
        } else {
            let mid = e.event["mId"].as_str().unwrap();
            assert!(ambiguous.contains(mid), "{text}: repeated, never ambiguous");
            repeats += 1;
        }
    }
    for (contact, texts) in &first_seen {
        let want: Vec<String> = (0..per_contact)
            .map(|n| format!("{contact} #{n}"))
            .collect();
        assert_eq!(texts, &want, "order for {contact}");
    }
    assert_eq!(dead_items(&stage.db_path()), 0, "nothing dead-lettered");
    eprintln!(
        "lock during traffic: {rounds} locks of 1.5 s (busy_timeout 0.5 s); {total} messages, \
         {refused} refusals redelivered, {repeats} repeats"
    );
}

/// A chunked body (no Content-Length to refuse up front) that grows past `max_body_bytes`
/// is answered 413 as soon as the limit is passed, not buffered to its end.
#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", stage.port))
        .await
        .unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let head = format!(
        "POST /channels/sms/inbound?secret={SECRET} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // 64 chunks of 64 KiB: 4 MiB against the 1 MiB default limit.
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..64 {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was closed");
    let _ = writer.await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "answer: {answer:?}");
    assert!(answer.contains("larger than 1048576 bytes"), "{answer:?}");
    gw.shutdown().await;
    assert!(stage.events().is_empty());
}
