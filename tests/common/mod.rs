//! Test harness: a gateway on real loopback HTTP with the respond.io emulator and the
//! ClickSend stand-in, in-process or as the real binary.

#![allow(dead_code)]

pub mod take;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rio_bridge::app::App;
use rio_bridge::config::Config;
use rio_bridge::respondio::emulator::{
    EmulatedChannel, EmulatedIdType, Emulator, EmulatorConfig, RecordedEvent,
};
use rio_bridge::simulators::clicksend::{ClickSendSim, SimConfig};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const CHANNEL_ID: &str = "CH1";
pub const TOKEN: &str = "rio-test-token-aaaaxczsadzxcasdacxzcasdaaaxcz";
pub const SECRET: &str = "hook-secret-123";
pub const CS_USER: &str = "csuser";
pub const CS_KEY: &str = "cs-api-key-456";
pub const OUR_NUMBER: &str = "+61411111111";

#[derive(Clone)]
pub struct Opts {
    pub max_events_per_call: usize,
    pub budget_ms: u64,
    pub provider_rate: u32,
    pub respondio_rate: u32,
    pub push_receipts: bool,
    pub backoff_base_ms: u64,
    /// Extra `key = value` lines for the channel.
    pub channel_extra: String,
    pub emulator_max_events: Option<usize>,
    /// Extra `key = value` lines for `[server]`.
    pub server_extra: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            max_events_per_call: 10,
            budget_ms: 2000,
            provider_rate: 50,
            respondio_rate: 20,
            push_receipts: true,
            backoff_base_ms: 100,
            channel_extra: String::new(),
            emulator_max_events: None,
            server_extra: String::new(),
        }
    }
}

pub struct Stage {
    pub emulator: Emulator,
    pub sim: ClickSendSim,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub opts: Opts,
    /// Where the ClickSend stand-in listens.
    pub sim_addr: std::net::SocketAddr,
}

impl Stage {
    /// Starts the emulator and the stand-in, and picks the gateway's port.
    pub async fn new(opts: Opts) -> Stage {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
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
            max_events_per_call: opts.emulator_max_events,
            retry_after: Default::default(),
        });
        let el = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emu_addr = el.local_addr().unwrap();
        tokio::spawn(emulator.clone().serve(el));
        let sim = ClickSendSim::new(SimConfig {
            username: CS_USER.into(),
            api_key: CS_KEY.into(),
            receipt_url: opts
                .push_receipts
                .then(|| format!("http://127.0.0.1:{port}/channels/sms/status?secret={SECRET}")),
            receipt_delay_ms: 50,
            inbound_url: Some(format!(
                "http://127.0.0.1:{port}/channels/sms/inbound?secret={SECRET}"
            )),
        });
        let sl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_addr = sl.local_addr().unwrap();
        tokio::spawn(sim.clone().serve(sl));
        let stage = Stage {
            emulator,
            sim,
            dir,
            port,
            opts,
            sim_addr,
        };
        std::fs::write(
            stage.config_path(),
            stage.config_toml(&emu_addr.to_string(), &sim_addr.to_string()),
        )
        .unwrap();
        stage
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("rio-bridge.toml")
    }

    /// Points the gateway's ClickSend calls at `addr` (a proxy in front of the stand-in,
    /// or another stand-in) instead of where they go now; before the gateway starts.
    pub fn route_provider_via(&self, addr: std::net::SocketAddr) {
        let cfg = std::fs::read_to_string(self.config_path()).unwrap();
        let lines: Vec<String> = cfg
            .lines()
            .map(|l| {
                if l.starts_with("api_base = \"http://") {
                    format!("api_base = \"http://{addr}\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert!(
            cfg.contains("api_base = \"http://"),
            "the stand-in's address is in the config"
        );
        std::fs::write(self.config_path(), lines.join("\n")).unwrap();
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("rio-bridge.db")
    }

    fn config_toml(&self, emu: &str, sim: &str) -> String {
        let o = &self.opts;
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
message_budget_ms = {budget}
shutdown_grace_ms = 3000
{server_extra}
[store]
path = "{db}"
[[channel]]
name = "sms"
respondio_channel_id = "{CHANNEL_ID}"
respondio_token = "{TOKEN}"
respondio_webhook_url = "http://{emu}/custom/channel/webhook/"
respondio_rate_limit = {rrate}
id_type = "phone"
provider = "clicksend"
webhook_secret = "{SECRET}"
max_events_per_call = {mepc}
backoff_base_ms = {backoff}
backoff_max_ms = 2000
{extra}
[channel.clicksend]
username = "{CS_USER}"
api_key = "{CS_KEY}"
from = "{OUR_NUMBER}"
api_base = "http://{sim}"
rate_limit = {prate}
"#,
            port = self.port,
            budget = o.budget_ms,
            db = self.db_path().display(),
            rrate = o.respondio_rate,
            mepc = o.max_events_per_call,
            backoff = o.backoff_base_ms,
            extra = o.channel_extra,
            prate = o.provider_rate,
            server_extra = o.server_extra,
        )
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// respond.io's side: POST /message through the emulator.
    pub async fn send(&self, contact: &str, text: &str) -> (u16, Value) {
        self.emulator
            .send_to_gateway(
                &format!("{}/channels/sms/message", self.base()),
                CHANNEL_ID,
                contact,
                serde_json::json!({"type": "text", "text": text}),
            )
            .await
            .expect("gateway reachable")
    }

    pub fn events(&self) -> Vec<RecordedEvent> {
        self.emulator.events(CHANNEL_ID)
    }

    pub fn events_of_type(&self, ty: &str) -> Vec<RecordedEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.event["type"] == ty)
            .collect()
    }
}

/// A gateway running in this process.
pub struct InProcess {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn start(stage: &Stage) -> InProcess {
        if std::env::var_os("RUST_LOG").is_some() {
            rio_bridge::telemetry::init(Default::default());
        }
        let cfg = Config::load(&stage.config_path()).expect("config");
        // The port was picked free when the stage was made; a client connection may hold it
        // as its ephemeral source port for a moment since (a loaded machine): retry briefly.
        let listener = wait_until("gateway port free", 15, || async {
            TcpListener::bind(("127.0.0.1", stage.port)).await.ok()
        })
        .await;
        let app = App::build(cfg).await.expect("build app");
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(listener, stop.clone()));
        wait_ready(&stage.base()).await;
        InProcess { stop, task }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub async fn wait_ready(base: &str) {
    let client = reqwest::Client::new();
    let url = format!("{base}/readyz");
    wait_until("gateway ready", 30, || {
        let c = client.clone();
        let u = url.clone();
        async move {
            c.get(&u)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        }
    })
    .await;
}

/// Polls `f` every 20 ms until it yields, or panics after `secs` seconds (stretched on a
/// loaded machine, see [`deadline_scale`]).
pub async fn wait_until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let limit = scaled_deadline(secs);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {} s waiting for: {what}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How much longer than its nominal length a deadline may run here: `RIO_TEST_DEADLINE_SCALE`
/// if set, else the machine's load per core (the 1-minute load average over the cores this
/// process may use), between 1 and 5. Deadlines only stop a hang, so stretching them on a
/// loaded machine (CI beside other builds) costs nothing when all is well, and a busy
/// machine no longer fails a wait that was merely slow.
pub fn deadline_scale() -> f64 {
    if let Some(s) = std::env::var("RIO_TEST_DEADLINE_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        return s.max(1.0);
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (load / cores).clamp(1.0, 5.0)
}

/// `secs` stretched by [`deadline_scale`].
pub fn scaled_deadline(secs: u64) -> Duration {
    Duration::from_secs_f64(secs as f64 * deadline_scale())
}

/// The gateway's own attempt log: request times per lane (one row per request).
pub fn attempt_times(db: &std::path::Path, lane: i64) -> Vec<i64> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn
        .prepare("SELECT at_ms FROM attempts WHERE lane = ?1 AND call_first = 1 ORDER BY at_ms")
        .unwrap();
    stmt.query_map([lane], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// mIds the gateway marked ambiguous at least once (a repeat is allowed only for these).
pub fn ambiguous_mids(db: &std::path::Path) -> std::collections::HashSet<String> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn
        .prepare("SELECT mid FROM items WHERE ambiguous > 0")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The mIds of the sends the provider stand-in accepted (one entry per accepted call).
pub fn accepted_mids(sim: &ClickSendSim) -> Vec<String> {
    sim.sent()
        .iter()
        .filter(|a| a.status == 200)
        .filter_map(|a| {
            a.body["messages"][0]["custom_string"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Each contact sends `per_contact` messages ("{contact} #{n}") in order, all contacts at
/// once, through the ClickSend stand-in's inbound push; every push must be answered 200.
pub async fn push_from_contacts(sim: &ClickSendSim, contacts: &[String], per_contact: usize) {
    let pushes: Vec<_> = contacts
        .iter()
        .map(|c| {
            let (sim, c) = (sim.clone(), c.clone());
            tokio::spawn(async move {
                for n in 0..per_contact {
                    let status = sim
                        .push_inbound(&c, OUR_NUMBER, &format!("{c} #{n}"))
                        .await
                        .unwrap();
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for p in pushes {
        p.await.unwrap();
    }
}

pub fn text_of(e: &RecordedEvent) -> String {
    e.event["message"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `RIO_LONG=1` runs every fault suite in its long form (more messages, longer fault runs,
/// more kills); CI runs the short form.
pub fn long_mode() -> bool {
    std::env::var("RIO_LONG").is_ok_and(|v| v == "1")
}

/// `short` normally, `long` under `RIO_LONG=1`.
pub fn scaled<T>(short: T, long: T) -> T {
    if long_mode() { long } else { short }
}

/// One attempt from the gateway's attempt log.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub item_id: i64,
    pub at_ms: i64,
    pub outcome: String,
    pub duration_ms: i64,
}

/// Every finished attempt of `lane`, in start order.
pub fn attempt_rows(db: &std::path::Path, lane: i64) -> Vec<AttemptRow> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn
        .prepare(
            "SELECT item_id, at_ms, outcome, COALESCE(duration_ms, 0) FROM attempts
             WHERE lane = ?1 AND outcome != 'attempting' ORDER BY at_ms, id",
        )
        .unwrap();
    stmt.query_map([lane], |r| {
        Ok(AttemptRow {
            item_id: r.get(0)?,
            at_ms: r.get(1)?,
            outcome: r.get(2)?,
            duration_ms: r.get(3)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// What [`check_retry_schedule`] looked at.
#[derive(Debug, Default)]
pub struct ScheduleReport {
    /// Gaps after a counted failure (retry/ambiguous) that were checked against the backoff.
    pub backoff_gaps: usize,
    /// Gaps after a 429 checked against the pause.
    pub throttle_gaps: usize,
    /// The largest gap beyond the schedule's upper bound explained by scheduling alone
    /// (rate slots, wake-ups), in ms.
    pub max_slack_ms: i64,
}

/// Checks the lane's retries against the schedule of `src/lanes/retry.rs`, from the
/// gateway's attempt log:
/// - after the k-th counted failure of an item (a retry or an ambiguous attempt), its next
///   attempt starts no sooner than base·2^(k−1)/2 (capped at `max_ms`) after the failure
///   was known, and no later than the full delay plus lane pauses plus `slack_ms`;
/// - after a 429 answered with `Retry-After: 1` or none (both mean a 1 s pause), no attempt
///   of the lane starts until the pause is over.
///
/// An attempt's end is `at_ms + duration_ms` (the slot time plus the request's duration).
pub fn check_retry_schedule(
    db: &std::path::Path,
    lane: i64,
    base_ms: i64,
    max_ms: i64,
    slack_ms: i64,
) -> ScheduleReport {
    const PAUSE_MS: i64 = 1000;
    let rows = attempt_rows(db, lane);
    let pauses: Vec<(i64, i64)> = rows
        .iter()
        .filter(|r| r.outcome == "throttled")
        .map(|r| (r.at_ms + r.duration_ms, r.at_ms + r.duration_ms + PAUSE_MS))
        .collect();
    let mut report = ScheduleReport::default();
    // Lane-wide: nothing starts inside a pause (1 ms either side for rounding to ms).
    for &(from, until) in &pauses {
        if let Some(r) = rows
            .iter()
            .find(|r| r.at_ms > from + 1 && r.at_ms < until - 1)
        {
            panic!(
                "attempt of item {} started at {} inside the 429 pause {from}..{until}",
                r.item_id, r.at_ms
            );
        }
    }
    let paused_within = |from: i64, to: i64| -> i64 {
        pauses
            .iter()
            .map(|&(a, b)| (b.min(to) - a.max(from)).max(0))
            .sum()
    };
    let mut by_item: std::collections::BTreeMap<i64, Vec<&AttemptRow>> = Default::default();
    for r in &rows {
        by_item.entry(r.item_id).or_default().push(r);
    }
    for attempts in by_item.values() {
        let mut counted = 0u32;
        for pair in attempts.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let end = a.at_ms + a.duration_ms;
            let gap = b.at_ms - end;
            match a.outcome.as_str() {
                "retry" | "ambiguous" => {
                    counted += 1;
                    let full = (base_ms << (counted - 1).min(30)).min(max_ms);
                    assert!(
                        gap >= full / 2 - 1,
                        "item {}: retry {counted} came {gap} ms after the failure, before the \
                         backoff's lower bound {} ms",
                        a.item_id,
                        full / 2
                    );
                    let excess = gap - full - paused_within(end, b.at_ms);
                    report.max_slack_ms = report.max_slack_ms.max(excess);
                    assert!(
                        excess <= slack_ms,
                        "item {}: retry {counted} came {gap} ms after the failure, {excess} ms \
                         past the backoff's upper bound {full} ms and any pauses",
                        a.item_id
                    );
                    report.backoff_gaps += 1;
                }
                "throttled" => {
                    assert!(
                        gap >= PAUSE_MS - 1,
                        "item {}: retried {gap} ms after a 429 (Retry-After 1 s)",
                        a.item_id
                    );
                    report.throttle_gaps += 1;
                }
                _ => {}
            }
        }
    }
    report
}

/// Requests per sliding second at most, from arrival times in ms.
pub fn busiest_second(times: &[i64]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    rio_bridge::respondio::emulator::max_in_window(&sorted, 1000)
}

/// Every repeat a run produced is legitimate: a contact message seen twice at respond.io
/// kept its mId, and it or a send the provider stand-in took twice was marked ambiguous.
/// Returns how many repeats there were.
pub fn check_repeats(stage: &Stage, ambiguous: &std::collections::HashSet<String>) -> usize {
    use std::collections::HashMap;
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
    let mut by_mid: HashMap<String, usize> = HashMap::new();
    for m in accepted_mids(&stage.sim) {
        *by_mid.entry(m).or_default() += 1;
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
    repeats
}

/// Waits until every acknowledged inbound text is at respond.io and every acknowledged send
/// (by mId) was accepted by the provider stand-in: nothing acknowledged was lost.
pub async fn wait_all_delivered(
    stage: &Stage,
    texts_in: &[String],
    mids_out: &[String],
    secs: u64,
) {
    wait_until("every acknowledged message at respond.io", secs, || async {
        let seen: std::collections::HashSet<String> = stage.events().iter().map(text_of).collect();
        texts_in.iter().all(|t| seen.contains(t)).then_some(())
    })
    .await;
    wait_until("every acknowledged send at the provider", secs, || async {
        let seen: std::collections::HashSet<String> =
            accepted_mids(&stage.sim).into_iter().collect();
        mids_out.iter().all(|m| seen.contains(m)).then_some(())
    })
    .await;
}

/// The real binary serving `config`, its log (stderr) in `log`.
pub fn spawn_binary(config: &std::path::Path, log: &std::path::Path) -> tokio::process::Child {
    let log = std::fs::File::create(log).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_rio-bridge"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rio-bridge")
}

/// mIds the gateway marked ambiguous at least once, from a PostgreSQL store.
pub async fn pg_ambiguous_mids(db: &tokio_postgres::Client) -> std::collections::HashSet<String> {
    db.query("SELECT mid FROM items WHERE ambiguous > 0", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
