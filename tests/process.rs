//! The real binary: SIGTERM drains gracefully and loses nothing acknowledged; secrets never
//! appear in logs, metrics or error bodies.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn spawn(stage: &Stage, log_name: &str, json: bool) -> tokio::process::Child {
    let log = std::fs::File::create(stage.dir.path().join(log_name)).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rio-bridge"));
    if json {
        cmd.args(["--log-format", "json"]);
    }
    cmd.args(["serve", "--config"])
        .arg(stage.config_path())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rio-bridge")
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to a child process we own.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_loses_nothing() {
    let stage = Stage::new(Opts {
        provider_rate: 20,
        ..Opts::default()
    })
    .await;
    let mut child = spawn(&stage, "run1.log", false);
    wait_ready(&stage.base()).await;
    let mut acked = Vec::new();
    for n in 0..scaled(40, 400) {
        let text = format!("before term #{n}");
        if stage
            .sim
            .push_inbound(&format!("+6140000080{}", n % 5), OUR_NUMBER, &text)
            .await
            == Ok(200)
        {
            acked.push(text);
        }
    }
    let mut mids = Vec::new();
    for n in 0..scaled(20, 200) {
        let (s, b) = stage
            .send(&format!("+6140000090{}", n % 4), &format!("send #{n}"))
            .await;
        assert_eq!(s, 200);
        mids.push(b["mId"].as_str().unwrap().to_string());
    }
    sigterm(&child);
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // shutdown_grace_ms is 3 s for requests and 3 s for lanes; generous bound.
    assert!(started.elapsed() < Duration::from_secs(20));
    // Not listening any more.
    assert!(
        reqwest::get(format!("{}/healthz", stage.base()))
            .await
            .is_err()
    );
    // Restart: everything acknowledged arrives.
    let _child = spawn(&stage, "run2.log", false);
    wait_ready(&stage.base()).await;
    wait_until(
        "every acknowledged message at respond.io",
        scaled(60, 300),
        || async {
            let seen: std::collections::HashSet<String> =
                stage.events().iter().map(text_of).collect();
            acked.iter().all(|t| seen.contains(t)).then_some(())
        },
    )
    .await;
    wait_until(
        "every acknowledged send at the provider",
        scaled(60, 300),
        || async {
            let seen: std::collections::HashSet<String> =
                accepted_mids(&stage.sim).into_iter().collect();
            mids.iter().all(|m| seen.contains(m)).then_some(())
        },
    )
    .await;
    let log = std::fs::read_to_string(stage.dir.path().join("run1.log")).unwrap();
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_metrics_or_error_bodies() {
    // The harness's token, webhook secret and ClickSend key are distinctive strings.
    let stage = Stage::new(Opts::default()).await;
    let mut child = spawn(&stage, "secrets.log", true);
    wait_ready(&stage.base()).await;
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    // Every flow, including failures that log reasons.
    stage
        .sim
        .push_inbound("+61400000101", OUR_NUMBER, "hello")
        .await
        .unwrap();
    let (_, b) = stage.send("+61400000101", "reply").await;
    bodies.push(b.to_string());
    stage
        .sim
        .push_fault(rio_bridge::simulators::clicksend::SimFault::Unauthorized);
    let (_, b) = stage.send("+61400000102", "provider rejects our key").await;
    bodies.push(b.to_string());
    for (url, auth) in [
        (
            format!("{}/channels/sms/message", stage.base()),
            "Bearer wrong-token",
        ),
        (format!("{}/message", stage.base()), "Bearer wrong-token"),
    ] {
        let r = http
            .post(&url)
            .header("authorization", auth)
            .body("{}")
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
    }
    for url in [
        format!("{}/channels/sms/inbound?secret=wrong", stage.base()),
        format!("{}/channels/sms/status?secret={SECRET}", stage.base()),
    ] {
        let r = http.post(&url).body("garbage").send().await.unwrap();
        bodies.push(r.text().await.unwrap());
    }
    wait_until("the inbound message at respond.io", 20, || async {
        stage.events().into_iter().next()
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", stage.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let log = std::fs::read_to_string(stage.dir.path().join("secrets.log")).unwrap();
    assert!(log.lines().count() > 10, "debug logs were written");
    let basic = base64_basic(CS_USER, CS_KEY);
    for secret in [TOKEN, SECRET, CS_KEY, basic.as_str()] {
        assert!(!log.contains(secret), "a secret appears in the logs");
        assert!(!metrics.contains(secret), "a secret appears in /metrics");
        for b in &bodies {
            assert!(
                !b.contains(secret),
                "a secret appears in an error body: {b}"
            );
        }
    }
}

fn base64_basic(user: &str, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
}

/// Sets (or lifts, with `None`) the file-size limit of a running process.
fn set_fsize_limit(child: &tokio::process::Child, bytes: Option<u64>) {
    let pid = child.id().expect("running") as libc::pid_t;
    let v = bytes.unwrap_or(libc::RLIM_INFINITY);
    let lim = libc::rlimit {
        rlim_cur: v,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on a child we own, with a valid rlimit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Disk full: every file write of the gateway fails. Webhooks get 503 (never a 2xx that
/// was not committed), readiness goes red; when space is back the gateway recovers by
/// itself and everything acknowledged arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_answers_503_and_recovers_by_itself() {
    let stage = Stage::new(Opts::default()).await;
    let mut child = spawn(&stage, "diskfull.log", false);
    wait_ready(&stage.base()).await;
    let http = reqwest::Client::new();
    let inbound = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
    let push = |n: usize| {
        let (http, url) = (http.clone(), inbound.clone());
        async move {
            let form = [
                ("from", format!("+6140000070{}", n % 3)),
                ("body", format!("disk #{n}")),
                ("message_id", format!("DF-{n}")),
                ("timestamp", "1767225600".to_string()),
            ];
            http.post(&url)
                .form(&form)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    // Each round: a few messages go through, the disk fills up, everything is refused,
    // space comes back and the refused messages are redelivered. One round in CI; more
    // under RIO_LONG=1.
    let rounds = scaled(1, 5);
    let mut n = 0;
    for round in 0..rounds {
        for _ in 0..5 {
            assert_eq!(push(n).await, 200, "round {round}: disk #{n}");
            n += 1;
        }
        let want = n;
        wait_until("the first messages at respond.io", 20, || async {
            (stage.events().len() >= want).then_some(())
        })
        .await;

        // The disk is full: no file may grow by a byte.
        set_fsize_limit(&child, Some(1));
        let mut refused = Vec::new();
        for _ in 0..10 {
            let status = push(n).await;
            assert_ne!(
                status, 200,
                "message {n} was acknowledged while nothing could be written"
            );
            refused.push((n, status));
            n += 1;
        }
        if !refused.iter().all(|&(_, s)| s == 503) {
            let log =
                std::fs::read_to_string(stage.dir.path().join("diskfull.log")).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("DEBUG"))
                .rev()
                .take(15)
                .collect();
            panic!("{refused:?}\n{}", tail.join("\n"));
        }
        let ready = reqwest::get(format!("{}/readyz", stage.base()))
            .await
            .unwrap();
        assert_eq!(ready.status(), 503, "readiness stays green on a full disk");
        let (s, b) = stage.send("+61400000075", "during the outage").await;
        assert_eq!(s, 503, "{b}");

        // Space is back: the gateway recovers without a restart.
        set_fsize_limit(&child, None);
        wait_until("readiness back", 30, || async {
            let r = reqwest::get(format!("{}/readyz", stage.base()))
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        // The provider redelivers what was refused.
        for (m, _) in &refused {
            assert_eq!(push(*m).await, 200);
        }
        let want = n;
        wait_until("every message so far at respond.io", 30, || async {
            (stage.events().len() >= want).then_some(())
        })
        .await;
    }
    let texts: std::collections::HashSet<String> = stage.events().iter().map(text_of).collect();
    for m in 0..n {
        assert!(texts.contains(&format!("disk #{m}")), "disk #{m} missing");
    }
    assert_eq!(stage.events().len(), n, "no doubles");
    eprintln!("disk full: {rounds} rounds, {n} messages, each refused one redelivered");
    child.start_kill().ok();
}

fn sighup(child: &tokio::process::Child) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to a child process we own.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
}

/// SIGHUP reloads channel settings (here a rotated webhook secret) while respond.io keeps
/// sending: no request fails, every send is delivered, the new secret works and the old one
/// is refused; a broken config on the next SIGHUP changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_channel_settings_without_dropping_requests() {
    const NEW_SECRET: &str = "rotated-hook-secret-789";
    let stage = Stage::new(Opts::default()).await;
    let mut child = spawn(&stage, "reload.log", false);
    wait_ready(&stage.base()).await;
    let inbound = |secret: &str| format!("{}/channels/sms/inbound?secret={secret}", stage.base());
    assert_eq!(
        stage
            .sim
            .push_inbound_to(&inbound(SECRET), "+61400000701", OUR_NUMBER, "old secret")
            .await,
        Ok(200)
    );

    // respond.io sends throughout the reload.
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = {
        let (stop, base) = (stop.clone(), stage.base());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.is_cancelled() {
                let r = http
                    .post(format!("{base}/channels/sms/message"))
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({
                        "channelId": CHANNEL_ID,
                        "contactId": format!("+6140000080{}", n % 7),
                        "message": {"type": "text", "text": format!("during reload #{n}")}
                    }))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(r);
                n += 1;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(stage.config_path()).unwrap();
    let rotated = text.replace(
        &format!("webhook_secret = \"{SECRET}\""),
        &format!("webhook_secret = \"{NEW_SECRET}\""),
    );
    assert_ne!(rotated, text);
    std::fs::write(stage.config_path(), &rotated).unwrap();
    sighup(&child);
    wait_until("new secret accepted", 20, || async {
        let s = stage
            .sim
            .push_inbound_to(
                &inbound(NEW_SECRET),
                "+61400000702",
                OUR_NUMBER,
                "new secret",
            )
            .await;
        (s == Ok(200)).then_some(())
    })
    .await;
    assert_eq!(
        stage
            .sim
            .push_inbound_to(
                &inbound(SECRET),
                "+61400000703",
                OUR_NUMBER,
                "old secret again"
            )
            .await,
        Ok(403)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let statuses = sender.await.unwrap();
    assert!(statuses.len() > 5, "{} sends", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every send during the reload answered 200: {statuses:?}"
    );
    let sent = statuses.len();
    wait_until("every send delivered", 30, || async {
        (stage.sim.sent_count() >= sent).then_some(())
    })
    .await;

    // A broken config is refused and the running one stays.
    std::fs::write(stage.config_path(), "this is [not toml").unwrap();
    sighup(&child);
    wait_until("refusal logged", 20, || async {
        std::fs::read_to_string(stage.dir.path().join("reload.log"))
            .unwrap()
            .contains("config reload refused")
            .then_some(())
    })
    .await;
    assert_eq!(
        stage
            .sim
            .push_inbound_to(
                &inbound(NEW_SECRET),
                "+61400000704",
                OUR_NUMBER,
                "still new"
            )
            .await,
        Ok(200)
    );
    let contacts: Vec<String> = stage.events().iter().map(text_of).collect();
    for t in ["old secret", "new secret", "still new"] {
        wait_until(&format!("{t} delivered"), 20, || async {
            stage.events().iter().any(|e| text_of(e) == t).then_some(())
        })
        .await;
    }
    assert!(!contacts.iter().any(|t| t == "old secret again"));
    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
}

/// Overwrites page `page` (1-based) of the SQLite file with garbage, as a failing disk or a
/// stray write would.
fn corrupt_page(db: &std::path::Path, page: u64) {
    use std::io::{Seek, SeekFrom, Write};
    const PAGE_SIZE: u64 = 4096;
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start((page - 1) * PAGE_SIZE)).unwrap();
    let garbage: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 + 13) as u8).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
}

/// Stops the gateway gracefully, moves every page into the main file (or the WAL's page
/// images would mask the damage) and returns the root page of `table`.
async fn stop_and_checkpoint(stage: &Stage, mut child: tokio::process::Child, table: &str) -> u64 {
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert!(status.success());
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    conn.query_row(
        "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
        [table],
        |r| r.get(0),
    )
    .unwrap()
}

/// A corrupted database file: the gateway never acknowledges a message it cannot store.
/// Damage on the first page (header and schema): it refuses to start and says why. Damage
/// in the table of messages: every webhook and `/message` is answered 503, and readiness
/// turns red with the reason and stays red (corruption does not heal by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_database_never_acknowledges_and_says_so() {
    for table in [None, Some("items")] {
        let what = table.unwrap_or("the first page");
        let stage = Stage::new(Opts::default()).await;
        let child = spawn(&stage, "before.log", false);
        wait_ready(&stage.base()).await;
        for n in 0..30 {
            let status = stage
                .sim
                .push_inbound("+61400000601", OUR_NUMBER, &format!("before #{n}"))
                .await;
            assert_eq!(status, Ok(200));
        }
        wait_until("the messages at respond.io", 30, || async {
            (stage.events().len() >= 30).then_some(())
        })
        .await;
        let root = stop_and_checkpoint(&stage, child, "items").await;
        corrupt_page(&stage.db_path(), if table.is_some() { root } else { 1 });

        let mut after = spawn(&stage, "after.log", false);
        let log = || std::fs::read_to_string(stage.dir.path().join("after.log")).unwrap();
        if table.is_none() {
            let status = tokio::time::timeout(Duration::from_secs(30), after.wait())
                .await
                .expect("refused to start")
                .unwrap();
            assert!(!status.success(), "{what}: exit status {status:?}");
            let log = log();
            assert!(
                log.contains("store unavailable"),
                "{what}: says why:\n{log}"
            );
            eprintln!("{what} damaged: {}", log.lines().last().unwrap_or(""));
            continue;
        }
        wait_until("the gateway answering", 30, || async {
            reqwest::get(format!("{}/healthz", stage.base())).await.ok()
        })
        .await;
        for n in 0..3 {
            let status = stage
                .sim
                .push_inbound("+61400000601", OUR_NUMBER, &format!("after #{n}"))
                .await;
            assert_eq!(status, Ok(503), "{what}: webhook on a damaged file");
        }
        let (status, body) = stage.send("+61400000601", "reply on a damaged file").await;
        assert_eq!(status, 503, "{what}: /message on a damaged file: {body}");
        for _ in 0..2 {
            let ready = reqwest::get(format!("{}/readyz", stage.base()))
                .await
                .unwrap();
            assert_eq!(ready.status(), 503, "{what}: readiness");
            let body: serde_json::Value = ready.json().await.unwrap();
            let why = body["store"].as_str().unwrap_or_default().to_string();
            assert!(
                why.contains("damaged"),
                "{what}: readiness says why: {body}"
            );
            eprintln!("{what} damaged: readyz 503, store: {why}");
        }
        after.start_kill().ok();
    }
}

// ---- an attempt in flight across the events of a deployment's life ----
//
// One rule under all of these: an attempt that went out is never sent again unless a crash
// left it ambiguous. A store stall, a reload, a planned stop and a 429's pause must keep it.

/// Rewrites the stage's config file (before the gateway reads it).
fn edit_config(stage: &Stage, edit: impl FnOnce(String) -> String) {
    let path = stage.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
}

/// Another process's write lock on the store, as a backup tool or a stuck sqlite3 shell
/// holds it: taken before this returns, released after `hold`.
async fn hold_write_lock(db: std::path::PathBuf, hold: Duration) -> tokio::task::JoinHandle<()> {
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let task = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let _ = locked_tx.send(());
        std::thread::sleep(hold);
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.await.expect("write lock taken");
    task
}

/// Send calls for `mid` that reached the provider stand-in, whatever they were answered.
fn calls_for(stage: &Stage, mid: &str) -> Vec<rio_bridge::simulators::clicksend::SimArrival> {
    stage
        .sim
        .sent()
        .into_iter()
        .filter(|a| a.body["messages"][0]["custom_string"] == mid)
        .collect()
}

async fn send_mid(stage: &Stage, contact: &str, text: &str) -> String {
    let (s, b) = stage.send(contact, text).await;
    assert_eq!(s, 200, "{b}");
    b["mId"].as_str().unwrap().to_string()
}

async fn wait_in_flight(stage: &Stage, mid: &str) {
    wait_until("the send in flight at the provider", 30, || async {
        (!calls_for(stage, mid).is_empty()).then_some(())
    })
    .await;
}

async fn wait_accepted(stage: &Stage, mid: &str, secs: u64) {
    wait_until(&format!("{mid} accepted by the provider"), secs, || async {
        calls_for(stage, mid)
            .iter()
            .any(|a| a.status == 200)
            .then_some(())
    })
    .await;
}

fn item_state(db: &std::path::Path, mid: &str) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT state, ambiguous FROM items WHERE mid = ?1 AND lane = 1",
        [mid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Another process holds the store's write lock for longer than the lane ever waited for a
/// write (over a minute) while a send is in flight: the outcome is kept and recorded when
/// the lock goes, the send is not repeated, and the contact's next message follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_stall_during_a_send_never_repeats_it() {
    use rio_bridge::simulators::clicksend::SimFault;
    let stage = Stage::new(Opts::default()).await;
    edit_config(&stage, |t| {
        t.replace("[store]\n", "[store]\nbusy_timeout_ms = 1000\n")
    });
    let mut child = spawn(&stage, "stall.log", false);
    wait_ready(&stage.base()).await;
    const BOB: &str = "+61400000801";
    stage.sim.push_fault(SimFault::Delay(3000));
    let first = send_mid(&stage, BOB, "sent during the stall").await;
    wait_in_flight(&stage, &first).await;
    let lock = hold_write_lock(stage.db_path(), Duration::from_secs(70)).await;
    lock.await.unwrap();
    wait_until("the outcome recorded", 60, || async {
        (item_state(&stage.db_path(), &first).0 == 2).then_some(())
    })
    .await;
    let second = send_mid(&stage, BOB, "after the stall").await;
    wait_accepted(&stage, &second, 30).await;
    assert_eq!(
        calls_for(&stage, &first).len(),
        1,
        "the stalled send was repeated"
    );
    assert_eq!(calls_for(&stage, &second).len(), 1);
    let log = std::fs::read_to_string(stage.dir.path().join("stall.log")).unwrap();
    assert!(
        log.contains("cannot record an attempt's outcome"),
        "the stall is logged"
    );
    child.start_kill().ok();
}

/// SIGHUP while a send takes 8 s: the reload neither re-sends it nor strands the contact's
/// queue; the outcome is recorded by the attempt that started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_slow_send_never_repeats_it() {
    use rio_bridge::simulators::clicksend::SimFault;
    let stage = Stage::new(Opts::default()).await;
    let mut child = spawn(&stage, "slow-reload.log", false);
    wait_ready(&stage.base()).await;
    const CAROL: &str = "+61400000802";
    stage.sim.push_fault(SimFault::Delay(8000));
    let first = send_mid(&stage, CAROL, "slow across the reload").await;
    wait_in_flight(&stage, &first).await;
    sighup(&child);
    wait_accepted(&stage, &first, 30).await;
    let second = send_mid(&stage, CAROL, "after the reload").await;
    wait_accepted(&stage, &second, 30).await;
    wait_until("the slow send recorded", 30, || async {
        (item_state(&stage.db_path(), &first).0 == 2).then_some(())
    })
    .await;
    assert_eq!(
        calls_for(&stage, &first).len(),
        1,
        "the reload re-sent the slow send"
    );
    assert_eq!(calls_for(&stage, &second).len(), 1);
    assert_eq!(
        item_state(&stage.db_path(), &first).1,
        0,
        "never marked ambiguous"
    );
    child.start_kill().ok();
}

/// SIGTERM (a systemd restart, a deploy) while a send takes 8 s: the stop waits for its
/// outcome within `shutdown_grace_ms`, so the next start does not send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_stop_during_a_slow_send_never_repeats_it() {
    use rio_bridge::simulators::clicksend::SimFault;
    let stage = Stage::new(Opts::default()).await;
    edit_config(&stage, |t| {
        t.replace("shutdown_grace_ms = 3000", "shutdown_grace_ms = 25000")
    });
    let mut child = spawn(&stage, "slow-stop.log", false);
    wait_ready(&stage.base()).await;
    const DAVE: &str = "+61400000803";
    stage.sim.push_fault(SimFault::Delay(8000));
    let first = send_mid(&stage, DAVE, "slow across the stop").await;
    wait_in_flight(&stage, &first).await;
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        item_state(&stage.db_path(), &first),
        (2, 0),
        "recorded before the exit"
    );
    let mut child = spawn(&stage, "slow-stop-2.log", false);
    wait_ready(&stage.base()).await;
    let second = send_mid(&stage, DAVE, "after the restart").await;
    wait_accepted(&stage, &second, 30).await;
    assert_eq!(
        calls_for(&stage, &first).len(),
        1,
        "the restart re-sent the slow send"
    );
    child.start_kill().ok();
}

/// A 429 with Retry-After 30 while the store is briefly locked, then SIGKILL: the pause was
/// committed with the attempt's outcome, so the next start keeps the lane quiet until it
/// ends instead of sending the next contact's message at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pause_survives_a_locked_store_and_a_kill() {
    use rio_bridge::simulators::clicksend::SimFault;
    let stage = Stage::new(Opts::default()).await;
    edit_config(&stage, |t| {
        t.replace("[store]\n", "[store]\nbusy_timeout_ms = 1000\n")
    });
    let mut child = spawn(&stage, "pause.log", false);
    wait_ready(&stage.base()).await;
    stage.sim.push_fault(SimFault::Delayed(
        1500,
        Box::new(SimFault::Throttle {
            retry_after: Some(30),
        }),
    ));
    let first = send_mid(&stage, "+61400000804", "throttled").await;
    wait_in_flight(&stage, &first).await;
    // Held across the 429's arrival and past the store's busy timeout.
    let lock = hold_write_lock(stage.db_path(), Duration::from_secs(4)).await;
    lock.await.unwrap();
    wait_until("the 429's outcome recorded", 30, || async {
        attempt_rows(&stage.db_path(), 1)
            .iter()
            .any(|r| r.outcome == "throttled")
            .then_some(())
    })
    .await;
    child.kill().await.unwrap();
    let throttled_at = calls_for(&stage, &first)[0].arrival_ms;
    let mut child = spawn(&stage, "pause-2.log", false);
    wait_ready(&stage.base()).await;
    let before = stage.sim.sent_count();
    let second = send_mid(&stage, "+61400000805", "must wait for the pause").await;
    // Watch the lane for a while well inside the 30 s pause: nothing may go out.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let early: Vec<_> = stage.sim.sent_since(before);
    assert!(
        early.iter().all(|a| a.arrival_ms >= throttled_at + 29_000),
        "sent inside the pause after the restart: {} calls",
        early.len()
    );
    assert!(calls_for(&stage, &second).is_empty());
    child.start_kill().ok();
}
