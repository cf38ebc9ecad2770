//! A week in production, in minutes: the real binary on a store that has aged (a week of
//! history, built by `store::aged` and cached), under sustained mixed traffic at the rate
//! the history was written at, while the deployment's ordinary events happen: SIGHUP
//! reloads every few seconds, another process locking the store past its busy timeout, a
//! token rotation at respond.io, a provider outage and its recovery, dead-letter replays and
//! a SIGKILL. Checked from the stand-ins' raw arrivals: nothing acknowledged is lost,
//! repeats carry the same mId and come only from ambiguous attempts, statuses never go
//! backwards, no receiver sees more than its limit in any second; and from the process and
//! the store: RSS, the store's size once retention is reached, and webhook and receipt p99
//! on the aged store against a fresh one.
//!
//! Short form (CI): 60,000 items of history compressed into one hour (retention one hour),
//! 10 s of quiet traffic and 45 s with the events. `RIO_LONG=1`: 10 million items on SQLite and 3 million on
//! PostgreSQL over a week, 12 minutes of traffic each (RELIABILITY.md has the figures).

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rio_bridge::respondio::emulator::EmulatedChannel;
use rio_bridge::simulators::clicksend::SimFaultRates;
use rio_bridge::store::aged::AgeSpec;

const NEXT_TOKEN: &str = "rio-soak-next-token-ccccccccccccccccccccccccccc";
const ADMIN_TOKEN: &str = "soak-admin-token-0123456789";
const BUSY_TIMEOUT_MS: u64 = 1000;
const PROVIDER_RATE: usize = 40;
const RESPONDIO_RATE: usize = 20;
const RSS_LIMIT: u64 = 100 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One soak's size: the history, and the traffic at the history's own rate.
#[derive(Clone, Copy, Debug)]
struct Plan {
    items: u64,
    span_secs: u64,
    run_secs: u64,
    fresh_secs: u64,
    /// Inbound messages per second; sends are half as many (each with two statuses).
    inbound_per_sec: f64,
}

impl Plan {
    fn for_backend(b: Backend) -> Plan {
        match (long_mode(), b) {
            (false, _) => Plan {
                items: 60_000,
                span_secs: 3_600,
                run_secs: 45,
                fresh_secs: 10,
                inbound_per_sec: 6.0,
            },
            // A week at 16.5 items/s: ~6 inbound + 3 sends (+6 statuses) per second.
            (true, Backend::Sqlite) => Plan {
                items: 10_000_000,
                span_secs: 7 * 86_400,
                run_secs: 720,
                fresh_secs: 180,
                inbound_per_sec: 6.0,
            },
            // A week at 5 items/s.
            (true, Backend::Postgres) => Plan {
                items: 3_000_000,
                span_secs: 7 * 86_400,
                run_secs: 720,
                fresh_secs: 180,
                inbound_per_sec: 2.0,
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_in_production_on_sqlite() {
    soak(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_week_in_production_on_postgres() {
    soak(Backend::Postgres).await;
}

/// What a phase of traffic measured.
#[derive(Default, Debug)]
struct Latencies {
    webhook_ms: Vec<f64>,
    receipt_ms: Vec<f64>,
}

fn p99(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 * 0.99) as usize).min(s.len() - 1)]
}

fn spawn(stage: &Stage, run: usize) -> tokio::process::Child {
    spawn_binary(
        &stage.config_path(),
        &stage.dir.path().join(format!("soak-{run}.log")),
    )
}

fn signal(child: &tokio::process::Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling a child process we own.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The stage's config for this soak: retention the history's span, respond.io's next
/// token, an admin token, a short busy timeout, a grace covering the longest request.
fn configure(stage: &Stage, plan: &Plan, store_url: Option<&str>) {
    let path = stage.config_path();
    let mut text = std::fs::read_to_string(&path).unwrap();
    let store_line = format!("path = \"{}\"", stage.db_path().display());
    let store = match store_url {
        Some(url) => format!("url = \"{url}\"\nlease_ttl_ms = 6000\nlease_margin_ms = 2000"),
        None => store_line.clone(),
    };
    text = text
        .replace(
            &store_line,
            &format!(
                "{store}\nbusy_timeout_ms = {BUSY_TIMEOUT_MS}\nretention_secs = {s}\ndedupe_ttl_secs = {s}\nchannel_log_retention_secs = {s}\nparked_receipt_ttl_secs = {p}",
                s = plan.span_secs,
                p = plan.span_secs.min(86_400)
            ),
        )
        .replace("shutdown_grace_ms = 3000", "shutdown_grace_ms = 25000")
        .replace(
            &format!("respondio_token = \"{TOKEN}\""),
            &format!("respondio_token = \"{TOKEN}\"\nrespondio_token_next = \"{NEXT_TOKEN}\""),
        );
    text.push_str(&format!(
        "\n[[admin.token]]\nname = \"soak\"\ntoken = \"{ADMIN_TOKEN}\"\n"
    ));
    std::fs::write(&path, text).unwrap();
}

type Acked = Arc<Mutex<Vec<String>>>;

/// Paced traffic until `stop` (and a latency probe while `probing`): inbound messages from 20 contacts (redelivered with the same
/// message_id until answered 200, as a provider does), respond.io's sends to 10 contacts
/// (retried until 200), and a delivered receipt for every accepted send. Latencies are
/// those of requests answered 200 at the first try. `tag` (a digit) keeps the phases'
/// contacts and texts apart.
#[allow(clippy::too_many_arguments)]
fn traffic(
    stage: &Arc<Stage>,
    plan: &Plan,
    tag: &'static str,
    acked_in: &Acked,
    acked_out: &Acked,
    lat: &Arc<Mutex<Latencies>>,
    stop: &Arc<AtomicBool>,
    probing: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    let inbound_every = Duration::from_secs_f64(20.0 / plan.inbound_per_sec);
    for c in 0..20 {
        let (stage, acked, lat, stop, http) = (
            stage.clone(),
            acked_in.clone(),
            lat.clone(),
            stop.clone(),
            http.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let url = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
            let contact = format!("+614{tag}{c:05}");
            let mut n = 0;
            let mut tick = tokio::time::interval(inbound_every);
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let text = format!("{tag} in {contact} #{n}");
                let form = [
                    ("from", contact.clone()),
                    ("to", OUR_NUMBER.to_string()),
                    ("body", text.clone()),
                    ("message_id", format!("SOAK-{tag}-{c}-{n}")),
                    ("timestamp", "1767225600".to_string()),
                ];
                let mut first = true;
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = http.post(&url).form(&form).send().await;
                    if r.is_ok_and(|r| r.status() == 200) {
                        if first {
                            lat.lock()
                                .unwrap()
                                .webhook_ms
                                .push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        acked.lock().unwrap().push(text.clone());
                        break;
                    }
                    first = false;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                n += 1;
            }
        }));
    }
    let outbound_every = Duration::from_secs_f64(10.0 / (plan.inbound_per_sec / 2.0));
    for c in 0..10 {
        let (stage, acked, stop) = (stage.clone(), acked_out.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let url = format!("{}/channels/sms/message", stage.base());
            let contact = format!("+614{tag}9{c:04}");
            let mut n = 0;
            let mut tick = tokio::time::interval(outbound_every);
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let text = format!("{tag} out {contact} #{n}");
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    let message = serde_json::json!({"type": "text", "text": text});
                    if let Ok((200, body)) = stage
                        .emulator
                        .send_to_gateway(&url, CHANNEL_ID, &contact, message)
                        .await
                    {
                        acked
                            .lock()
                            .unwrap()
                            .push(body["mId"].as_str().unwrap().to_string());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                n += 1;
            }
        }));
    }
    // A latency probe: 10 more webhooks a second from a contact of its own while the
    // quiet stretch lasts, so its p99 stands on enough samples.
    {
        let (stage, acked, lat, stop, http, probing) = (
            stage.clone(),
            acked_in.clone(),
            lat.clone(),
            stop.clone(),
            http.clone(),
            probing.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let url = format!("{}/channels/sms/inbound?secret={SECRET}", stage.base());
            let contact = format!("+614{tag}88888");
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0;
            while !stop.load(Ordering::Acquire) && probing.load(Ordering::Acquire) {
                tick.tick().await;
                let text = format!("{tag} probe #{n}");
                let form = [
                    ("from", contact.clone()),
                    ("to", OUR_NUMBER.to_string()),
                    ("body", text.clone()),
                    ("message_id", format!("SOAK-{tag}-probe-{n}")),
                    ("timestamp", "1767225600".to_string()),
                ];
                let t = Instant::now();
                if http
                    .post(&url)
                    .form(&form)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    lat.lock()
                        .unwrap()
                        .webhook_ms
                        .push(t.elapsed().as_secs_f64() * 1e3);
                    acked.lock().unwrap().push(text);
                }
                n += 1;
            }
        }));
    }
    // Receipts: one "delivered" per accepted send, as ClickSend pushes them.
    let (stage, lat, stop) = (stage.clone(), lat.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        let url = format!("{}/channels/sms/status?secret={SECRET}", stage.base());
        let mut done: HashSet<String> = HashSet::new();
        let mut from = 0;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let arrivals = stage.sim.sent_since(from);
            let settled = arrivals.iter().take_while(|a| a.status != 0).count();
            for a in &arrivals[..settled] {
                for id in &a.message_ids {
                    if !done.insert(id.clone()) {
                        continue;
                    }
                    let form = stage.sim.receipt_form(id, 201, None);
                    let mut first = true;
                    for _ in 0..300 {
                        let t = Instant::now();
                        let r = http.post(&url).form(&form).send().await;
                        if r.is_ok_and(|r| r.status() == 200) {
                            if first {
                                lat.lock()
                                    .unwrap()
                                    .receipt_ms
                                    .push(t.elapsed().as_secs_f64() * 1e3);
                            }
                            break;
                        }
                        first = false;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            from += settled;
            if stopping && settled == arrivals.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    tasks
}

/// Another process holding the store's write lock for `hold`.
async fn lock_store(backend: Backend, stage: &Stage, pg_url: Option<&str>, hold: Duration) {
    match backend {
        Backend::Sqlite => {
            let db = stage.db_path();
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(&db).unwrap();
                conn.busy_timeout(Duration::from_secs(30)).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                std::thread::sleep(hold);
                conn.execute_batch("COMMIT").unwrap();
            })
            .await
            .unwrap();
        }
        Backend::Postgres => {
            let (client, conn) = tokio_postgres::connect(pg_url.unwrap(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute("BEGIN; LOCK TABLE items IN EXCLUSIVE MODE")
                .await
                .unwrap();
            tokio::time::sleep(hold).await;
            client.batch_execute("COMMIT").await.unwrap();
        }
    }
}

/// Bytes the store's tables and indexes use (SQLite: pages in use, free pages excluded;
/// PostgreSQL: the relations' total size).
async fn store_bytes(backend: Backend, stage: &Stage, pg_url: Option<&str>) -> u64 {
    match backend {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
            let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
            ((q("PRAGMA page_count") - q("PRAGMA freelist_count")) * q("PRAGMA page_size")) as u64
        }
        Backend::Postgres => {
            let (client, conn) = tokio_postgres::connect(pg_url.unwrap(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let row = client
                .query_one(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) as u64
        }
    }
}

/// Traffic alone, on a fresh store: the latencies the aged store is compared with.
async fn fresh_phase(backend: Backend, plan: &Plan) -> Latencies {
    let schema = match backend {
        Backend::Postgres => Some(pg::PgSchema::create().await),
        Backend::Sqlite => None,
    };
    let stage = Arc::new(Stage::new(soak_opts()).await);
    configure(&stage, plan, schema.as_ref().map(|s| s.url.as_str()));
    let mut child = spawn(&stage, 100);
    wait_ready(&stage.base()).await;
    let (acked_in, acked_out): (Acked, Acked) = Default::default();
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let probing = Arc::new(AtomicBool::new(true));
    let tasks = traffic(
        &stage, plan, "1", &acked_in, &acked_out, &lat, &stop, &probing,
    );
    tokio::time::sleep(Duration::from_secs(plan.fresh_secs)).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(120), t).await;
    }
    child.start_kill().ok();
    let _ = child.wait().await;
    std::mem::take(&mut *lat.lock().unwrap())
}

fn soak_opts() -> Opts {
    Opts {
        provider_rate: PROVIDER_RATE as u32,
        respondio_rate: RESPONDIO_RATE as u32,
        push_receipts: false,
        ..Opts::default()
    }
}

async fn soak(backend: Backend) {
    let plan = Plan::for_backend(backend);
    let fresh = fresh_phase(backend, &plan).await;

    let stage = Arc::new(Stage::new(soak_opts()).await);
    let spec = AgeSpec {
        span_secs: plan.span_secs,
        dedupe_ttl_secs: plan.span_secs,
        ..AgeSpec::week("sms", plan.items)
    };
    let run_db = format!("rio_soak_{}", std::process::id());
    let build_started = Instant::now();
    let pg_url = match backend {
        Backend::Sqlite => {
            let (spec, dest) = (spec.clone(), stage.db_path());
            let r = tokio::task::spawn_blocking(move || {
                rio_bridge::store::sqlite::aged::aged_copy(
                    &spec,
                    &rio_bridge::store::aged::cache_dir(),
                    &dest,
                )
            })
            .await
            .unwrap()
            .expect("aged SQLite store");
            eprintln!(
                "soak: aged store of {} items ready (cached: {})",
                r.items, r.cached
            );
            None
        }
        Backend::Postgres => {
            let (url, r) =
                rio_bridge::store::postgres::aged::aged_database(&spec, &pg::base_url(), &run_db)
                    .await
                    .expect("aged PostgreSQL store");
            eprintln!(
                "soak: aged database of {} items ready (cached: {})",
                r.items, r.cached
            );
            Some(url)
        }
    };
    let build_secs = build_started.elapsed().as_secs_f64();
    configure(&stage, &plan, pg_url.as_deref());
    let mut run = 0;
    let mut child = spawn(&stage, run);
    wait_ready(&stage.base()).await;
    // Let the first retention cycles catch up with what aged past the boundary while the
    // store sat in the cache.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let size_start = store_bytes(backend, &stage, pg_url.as_deref()).await;

    let (acked_in, acked_out): (Acked, Acked) = Default::default();
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let probing = Arc::new(AtomicBool::new(true));
    let tasks = traffic(
        &stage, &plan, "2", &acked_in, &acked_out, &lat, &stop, &probing,
    );

    // First a quiet stretch (traffic only), measured against the fresh store's; then the
    // run with its events.
    let quiet = Duration::from_secs(plan.fresh_secs);
    let run_for = quiet + Duration::from_secs(plan.run_secs);
    let started = Instant::now();
    let soak_start_ms = rio_bridge::clock::now_ms();
    let at = |f: f64| quiet + Duration::from_secs(plan.run_secs).mul_f64(f);
    let mut quiet_lat: Option<Latencies> = None;
    let (mut rotated, mut outage_on, mut outage_off, mut replayed, mut killed) =
        (false, false, false, false, false);
    let mut next_reload = quiet + Duration::from_secs(5);
    let lock_every = Duration::from_secs(plan.run_secs) / 6;
    let mut next_lock = quiet + lock_every / 2;
    let (mut reloads, mut locks) = (0, 0);
    let mut rss_max = 0u64;
    let mut replay_answer = serde_json::Value::Null;
    while started.elapsed() < run_for {
        let now = started.elapsed();
        if let Some(rss) = child.id().and_then(rss_bytes) {
            rss_max = rss_max.max(rss);
        }
        if now < quiet {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        if quiet_lat.is_none() {
            probing.store(false, Ordering::Release);
            quiet_lat = Some(std::mem::take(&mut *lat.lock().unwrap()));
        }
        if now >= next_reload {
            signal(&child, libc::SIGHUP);
            reloads += 1;
            next_reload += Duration::from_secs(5);
        }
        if now >= next_lock {
            lock_store(
                backend,
                &stage,
                pg_url.as_deref(),
                Duration::from_millis(BUSY_TIMEOUT_MS * 2),
            )
            .await;
            locks += 1;
            next_lock += lock_every;
        }
        if !rotated && now >= at(0.25) {
            // respond.io regenerated the token: only the next one works from now on.
            stage
                .emulator
                .add_channel(EmulatedChannel::new(CHANNEL_ID, NEXT_TOKEN));
            rotated = true;
        }
        if !outage_on && now >= at(0.4) {
            stage.sim.set_fault_rates(SimFaultRates {
                server_error: 1.0,
                ..Default::default()
            });
            outage_on = true;
        }
        if outage_on && !outage_off && now >= at(0.5) {
            stage.sim.set_fault_rates(SimFaultRates::default());
            outage_off = true;
        }
        if !replayed && now >= at(0.6) {
            // The operator's clean-up after the outage: the sends it dead-lettered (their
            // 503s left them ambiguous after `ambiguous_retry_cap` tries, so the replay is
            // forced, and audited), and some of the history's old dead letters.
            let replay = |body: serde_json::Value| {
                let url = format!("{}/admin/dead-letters/replay", stage.base());
                async move {
                    let r = reqwest::Client::new()
                        .post(url)
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.json::<serde_json::Value>().await.unwrap()
                }
            };
            let outage = replay(serde_json::json!({
                "filter": {"channel": "sms", "direction": "to_provider", "since": soak_start_ms},
                "limit": 10_000, "force": true
            }))
            .await;
            let n = |v: &serde_json::Value| v["replayed"].as_array().map_or(0, Vec::len);
            let mut history = 0;
            for direction in ["to_respondio", "to_provider"] {
                let old = replay(serde_json::json!({
                    "filter": {"channel": "sms", "direction": direction, "until": soak_start_ms},
                    "limit": 10
                }))
                .await;
                history += n(&old);
            }
            replay_answer = serde_json::json!({"outage_sends": n(&outage), "history": history});
            replayed = true;
        }
        if !killed && now >= at(0.75) {
            child.start_kill().ok();
            let _ = child.wait().await;
            run += 1;
            child = spawn(&stage, run);
            wait_ready(&stage.base()).await;
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    let acked_in = acked_in.lock().unwrap().clone();
    let acked_out = acked_out.lock().unwrap().clone();
    wait_all_delivered(&stage, &acked_in, &acked_out, 300).await;
    let size_end = store_bytes(backend, &stage, pg_url.as_deref()).await;
    if let Some(rss) = child.id().and_then(rss_bytes) {
        rss_max = rss_max.max(rss);
    }
    child.start_kill().ok();
    let _ = child.wait().await;

    // Repeats only from ambiguous attempts, with the same mId.
    let ambiguous: HashSet<String> = match backend {
        Backend::Sqlite => ambiguous_mids(&stage.db_path()),
        Backend::Postgres => {
            let (client, conn) =
                tokio_postgres::connect(pg_url.as_deref().unwrap(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            pg_ambiguous_mids(&client).await
        }
    };
    let repeats = check_repeats(&stage, &ambiguous);
    // Statuses never go backwards at respond.io.
    let mut last: HashMap<String, i32> = HashMap::new();
    let mut statuses = 0;
    for e in stage.events_of_type("message_status") {
        let mid = e.event["mId"].as_str().unwrap_or_default().to_string();
        let value = e.event["status"]["value"].as_str().unwrap_or_default();
        let rank = match value {
            "sent" => 1,
            "delivered" => 2,
            "read" => 3,
            "failed" => 4,
            _ => 0,
        };
        let prev = last.entry(mid.clone()).or_insert(0);
        assert!(
            rank >= *prev || (*prev == 4 && rank == 4),
            "{mid}: {value} after a later status"
        );
        *prev = rank;
        statuses += 1;
    }
    // No receiver saw more than its limit in any second (raw arrivals, refused calls too).
    let rio_times: Vec<i64> = stage
        .emulator
        .calls(CHANNEL_ID)
        .iter()
        .map(|c| c.arrival_ms)
        .collect();
    let prov_times: Vec<i64> = stage.sim.sent().iter().map(|a| a.arrival_ms).collect();
    let (rio_peak, prov_peak) = (busiest_second(&rio_times), busiest_second(&prov_times));
    assert!(
        rio_peak <= RESPONDIO_RATE,
        "respond.io saw {rio_peak} calls in one second"
    );
    assert!(
        prov_peak <= PROVIDER_RATE,
        "the provider saw {prov_peak} sends in one second"
    );
    let refused = stage
        .emulator
        .calls(CHANNEL_ID)
        .iter()
        .filter(|c| c.status == 401)
        .count();

    let aged = quiet_lat.expect("the quiet stretch was measured");
    let (fw, fr) = (p99(&fresh.webhook_ms), p99(&fresh.receipt_ms));
    let (aw, ar) = (p99(&aged.webhook_ms), p99(&aged.receipt_ms));
    let growth = size_end as f64 / size_start.max(1) as f64;
    eprintln!(
        "soak {backend:?}: {} items of history (ready in {build_secs:.0} s), {} s of traffic: \
         {} inbound and {} sends acknowledged, all delivered; {statuses} statuses, monotonic; \
         {reloads} reloads, {locks} store locks of {} ms, token rotation ({refused} refused calls), \
         provider outage of {:.0} s, replay {replay_answer}, 1 SIGKILL; {} ambiguous, {repeats} repeats; \
         busiest second {rio_peak}/{RESPONDIO_RATE} to respond.io, {prov_peak}/{PROVIDER_RATE} to the provider; \
         RSS max {:.1} MiB; store {:.1} → {:.1} MiB ({growth:.3}×); webhook p99 (quiet) {aw:.1} ms aged vs {fw:.1} fresh \
         ({:.2}×), receipt p99 {ar:.1} vs {fr:.1} ({:.2}×)",
        plan.items,
        plan.run_secs,
        acked_in.len(),
        acked_out.len(),
        BUSY_TIMEOUT_MS * 2,
        plan.run_secs as f64 * 0.1,
        ambiguous.len(),
        rss_max as f64 / 1048576.0,
        size_start as f64 / 1048576.0,
        size_end as f64 / 1048576.0,
        aw / fw.max(0.001),
        ar / fr.max(0.001),
    );
    assert!(rotated && outage_off && replayed && killed);
    assert!(
        replay_answer["history"].as_u64() > Some(0),
        "old dead letters replayed"
    );
    assert!(!acked_in.is_empty() && !acked_out.is_empty());
    assert!(refused >= 1, "the rotation was exercised");
    assert!(
        rss_max <= RSS_LIMIT,
        "RSS reached {:.1} MiB",
        rss_max as f64 / 1048576.0
    );
    if long_mode() {
        // Guards, not speed figures: the aged store may not make the gateway twice as slow,
        // and retention keeps the store from growing once it is reached.
        assert!(
            aw <= 2.0 * fw,
            "webhook p99 {aw:.1} ms aged vs {fw:.1} fresh"
        );
        assert!(
            ar <= 2.0 * fr,
            "receipt p99 {ar:.1} ms aged vs {fr:.1} fresh"
        );
        assert!(
            size_end as f64 <= size_start as f64 * 1.03 + (32 << 20) as f64,
            "the store grew from {size_start} to {size_end} bytes"
        );
    }
    if backend == Backend::Postgres {
        rio_bridge::store::postgres::aged::drop_database(&pg::base_url(), &run_db)
            .await
            .unwrap();
    }
}
