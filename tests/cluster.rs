//! Three rio-bridge nodes (the real binary) on one PostgreSQL database, traffic sent to all
//! of them at random, and the node that owns the provider lane SIGKILLed mid-flow. Checks:
//! every acknowledged message is delivered; repeats carry the same mId and come only from
//! attempts marked ambiguous; no channel goes above its rate limit in any 1-second window
//! (from the stand-ins' arrival times, across all nodes); the dead node's lanes are taken
//! over within the lease time.
//!
//! Needs PostgreSQL (ignored by default; `.ci/run` runs it). Deadlines stretch with the
//! machine's load (`common::deadline_scale`); when the test fails, the last lines of each
//! node's log are printed.

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rio_bridge::lanes::limiter::max_in_window;
use rio_bridge::simulators::clicksend::SimFault;

const NODES: usize = 3;
const LEASE_TTL_MS: u64 = 3_000;
const LEASE_MARGIN_MS: u64 = 1_000;
/// How often a standing-by node tries to take a lane (the keeper's `ttl / 5`).
const LEASE_RETRY_MS: u64 = LEASE_TTL_MS / 5;
const PROVIDER_RATE: usize = 40;
const RESPONDIO_RATE: usize = 20;

struct Node {
    port: u16,
    child: Option<tokio::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The stage's config with this node's port and the shared PostgreSQL store.
fn node_config(stage: &Stage, port: u16, url: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(stage.config_path()).unwrap();
    let store = format!("path = \"{}\"", stage.db_path().display());
    assert!(base.contains(&store));
    let cfg = base
        .replace(
            &format!("127.0.0.1:{}\"", stage.port),
            &format!("127.0.0.1:{port}\""),
        )
        .replace(
            &store,
            &format!(
                "url = \"{url}\"\nlease_ttl_ms = {LEASE_TTL_MS}\nlease_margin_ms = {LEASE_MARGIN_MS}\npool_size = 8"
            ),
        );
    let path = stage.dir.path().join(format!("node-{port}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

fn node_log(stage: &Stage, port: u16) -> std::path::PathBuf {
    stage.dir.path().join(format!("node-{port}.log"))
}

fn spawn_node(stage: &Stage, config: &std::path::Path, port: u16) -> tokio::process::Child {
    spawn_binary(config, &node_log(stage, port))
}

/// Which process owns each lane now: (lane code → pid), from the lease rows.
async fn lane_owners(db: &tokio_postgres::Client) -> HashMap<i64, u32> {
    db.query(
        "SELECT lane, node FROM lane_leases WHERE channel = 'sms' AND expires_ms > rio_now_ms()",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .filter_map(|r| {
        // Node names are host/pid/unique.
        let node: String = r.get(1);
        let pid = node.split('/').nth(1)?.parse().ok()?;
        Some((r.get::<_, i64>(0), pid))
    })
    .collect()
}

/// Retries on random live nodes until one acknowledges (a provider or respond.io retries).
async fn until_acked<F, Fut, T>(ports: &[u16], mut f: F) -> Option<T>
where
    F: FnMut(u16) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + scaled_deadline(30);
    while Instant::now() < deadline {
        let port = ports[rand::random_range(0..ports.len())];
        if let Some(v) = f(port).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

type Acked = Arc<Mutex<Vec<String>>>;

/// The nodes' log files; if the test fails, the end of each is printed (before the stage's
/// directory, where they are, is deleted).
#[derive(Default)]
struct NodeLogs(Mutex<Vec<std::path::PathBuf>>);

impl NodeLogs {
    fn add(&self, path: std::path::PathBuf) {
        self.0.lock().unwrap().push(path);
    }
}

impl Drop for NodeLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        const TAIL: usize = 150;
        for path in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL);
            eprintln!(
                "\n===== {} (last {} of {} lines) =====",
                path.display(),
                lines.len() - from,
                lines.len()
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Starts a node and waits for its `/readyz`. A node that exits first fails the test at
/// once (its log is printed), except when it lost its port to another process between
/// `free_port` and its bind: then it is started again on another port.
async fn start_node(stage: &Stage, url: &str, first_port: u16, logs: &NodeLogs) -> Node {
    let client = reqwest::Client::new();
    let mut port = first_port;
    for _ in 0..5 {
        let config = node_config(stage, port, url);
        let mut child = spawn_node(stage, &config, port);
        logs.add(node_log(stage, port));
        let ready = format!("http://127.0.0.1:{port}/readyz");
        let limit = scaled_deadline(60);
        let deadline = Instant::now() + limit;
        let exited = loop {
            if let Some(status) = child.try_wait().expect("node status") {
                break Some(status);
            }
            if let Ok(r) = client.get(&ready).send().await
                && r.status() == 200
            {
                break None;
            }
            assert!(
                Instant::now() < deadline,
                "node on port {port} not ready (GET /readyz) after {} s",
                limit.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match exited {
            None => {
                return Node {
                    port,
                    child: Some(child),
                };
            }
            Some(status) => {
                let log = std::fs::read_to_string(node_log(stage, port)).unwrap_or_default();
                assert!(
                    log.contains("cannot listen on"),
                    "node on port {port} exited ({status}) before it was ready"
                );
                port = free_port();
            }
        }
    }
    panic!("no free port for a node after 5 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn three_nodes_one_sigkilled_lose_nothing_and_keep_the_rate() {
    let schema = pg::PgSchema::create().await;
    let stage = Arc::new(
        Stage::new(Opts {
            provider_rate: PROVIDER_RATE as u32,
            respondio_rate: RESPONDIO_RATE as u32,
            // Receipts are pushed to one node; it may be the one killed, so none here.
            push_receipts: false,
            ..Opts::default()
        })
        .await,
    );
    // Slow provider answers: sends are on the wire when the owner dies.
    for _ in 0..60 {
        stage.sim.push_fault(SimFault::Delay(150));
    }
    // Dropped before `stage` (declared after it): prints the logs while they still exist.
    let logs = NodeLogs::default();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..NODES {
        let port = if i == 0 { stage.port } else { free_port() };
        nodes.push(start_node(&stage, &schema.url, port, &logs).await);
    }
    let (db, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);

    let ports: Arc<Mutex<Vec<u16>>> = Arc::new(Mutex::new(nodes.iter().map(|n| n.port).collect()));
    let live = |ports: &Arc<Mutex<Vec<u16>>>| ports.lock().unwrap().clone();
    let (acked_in, acked_out): (Acked, Acked) = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..6 {
        let (acked, http, stop, ports) =
            (acked_in.clone(), http.clone(), stop.clone(), ports.clone());
        tasks.push(tokio::spawn(async move {
            let contact = format!("+6140000070{c}");
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let text = format!("in {contact} #{n}");
                let form = [
                    ("from", contact.clone()),
                    ("to", OUR_NUMBER.to_string()),
                    ("body", text.clone()),
                    ("message_id", format!("CLUSTER-{c}-{n}")),
                    ("timestamp", "1767225600".to_string()),
                ];
                let ok = until_acked(&live(&ports), |port| {
                    let (http, form) = (http.clone(), form.clone());
                    async move {
                        let url =
                            format!("http://127.0.0.1:{port}/channels/sms/inbound?secret={SECRET}");
                        let r = http.post(&url).form(&form).send().await;
                        r.ok().filter(|r| r.status() == 200).map(|_| ())
                    }
                })
                .await;
                if ok.is_some() {
                    acked.lock().unwrap().push(text);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for c in 0..4 {
        let (stage, acked, stop, ports) = (
            stage.clone(),
            acked_out.clone(),
            stop.clone(),
            ports.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let contact = format!("+6140000080{c}");
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let text = format!("out {contact} #{n}");
                let mid = until_acked(&live(&ports), |port| {
                    let (stage, contact, text) = (stage.clone(), contact.clone(), text.clone());
                    async move {
                        let url = format!("http://127.0.0.1:{port}/channels/sms/message");
                        let message = serde_json::json!({"type": "text", "text": text});
                        match stage
                            .emulator
                            .send_to_gateway(&url, CHANNEL_ID, &contact, message)
                            .await
                        {
                            Ok((200, body)) => body["mId"].as_str().map(str::to_string),
                            _ => None,
                        }
                    }
                })
                .await;
                if let Some(mid) = mid {
                    acked.lock().unwrap().push(mid);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
    }

    // Kill the provider lane's owner once traffic flows and sends are being answered.
    let (victim, owners_before) = wait_until("traffic under way on all lanes", 60, || async {
        if acked_in.lock().unwrap().len() < 40 || stage.sim.sent_count() < 10 {
            return None;
        }
        let owners = lane_owners(&db).await;
        let pid = *owners.get(&1)?;
        owners.contains_key(&0).then_some((pid, owners))
    })
    .await;
    let idx = nodes
        .iter()
        .position(|n| n.child.as_ref().and_then(|c| c.id()) == Some(victim))
        .expect("the provider lane's owner is one of our nodes");
    let mut child = nodes[idx].child.take().unwrap();
    child.start_kill().expect("SIGKILL");
    let killed_at = Instant::now();
    let _ = child.wait().await;
    ports.lock().unwrap().retain(|p| *p != nodes[idx].port);
    let lost: Vec<i64> = owners_before
        .iter()
        .filter(|(_, pid)| **pid == victim)
        .map(|(lane, _)| *lane)
        .collect();

    // Every lane the victim held gets a live owner once its lease ran out.
    let takeover = wait_until("the dead node's lanes taken over", 60, || async {
        let owners = lane_owners(&db).await;
        lost.iter()
            .all(|l| owners.get(l).is_some_and(|pid| *pid != victim))
            .then(|| killed_at.elapsed())
    })
    .await;
    // Bounded by the lease: it expires at most a TTL after its last renewal, and a
    // standby node looks every LEASE_RETRY_MS; the rest is generous slack for a loaded
    // machine, stretched with its load (this is the bound the design promises, not a
    // speed figure).
    let bound = Duration::from_millis(LEASE_TTL_MS + LEASE_RETRY_MS) + scaled_deadline(3);
    assert!(
        takeover <= bound,
        "lanes taken over after {takeover:?}, beyond the lease bound {bound:?}"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    let acked_in = acked_in.lock().unwrap().clone();
    let acked_out = acked_out.lock().unwrap().clone();
    assert!(acked_in.len() >= 40 && !acked_out.is_empty());
    wait_all_delivered(&stage, &acked_in, &acked_out, 120).await;
    for n in &mut nodes {
        if let Some(c) = n.child.as_mut() {
            c.start_kill().ok();
            let _ = c.wait().await;
        }
    }

    let ambiguous = pg_ambiguous_mids(&db).await;
    let repeats = check_repeats(&stage, &ambiguous);
    // The rate limit held for the whole cluster, as the receivers saw it.
    let rio_times: Vec<i64> = stage
        .emulator
        .calls(CHANNEL_ID)
        .iter()
        .map(|c| c.arrival_ms)
        .collect();
    let prov_times: Vec<i64> = stage.sim.sent().iter().map(|a| a.arrival_ms).collect();
    let rio_peak = max_in_window(&rio_times, 1000);
    let prov_peak = max_in_window(&prov_times, 1000);
    assert!(
        rio_peak <= RESPONDIO_RATE,
        "respond.io saw {rio_peak} calls in one second"
    );
    assert!(
        prov_peak <= PROVIDER_RATE,
        "the provider saw {prov_peak} sends in one second"
    );
    eprintln!(
        "cluster run: {} inbound and {} sends acknowledged, all delivered; lanes {lost:?} taken over \
         {} ms after the kill; {} ambiguous item(s), {repeats} repeat(s); busiest second: {rio_peak} \
         to respond.io, {prov_peak} to the provider",
        acked_in.len(),
        acked_out.len(),
        takeover.as_millis(),
        ambiguous.len(),
    );
}

// ---- a send in flight across a database outage and a lease hand-over ----

/// A TCP relay in front of PostgreSQL whose connections can be cut (an outage, a network
/// partition) and restored.
struct PgRelay {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl PgRelay {
    async fn start(upstream: &'static str) -> PgRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = tokio::sync::watch::channel(false);
        let watch = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = watch.subscribe();
                if *cut_rx.borrow() {
                    continue; // refused while cut: dropped at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        PgRelay { port, cut }
    }

    /// The schema's URL, through the relay.
    fn url(&self, schema: &pg::PgSchema) -> String {
        assert!(schema.url.contains("127.0.0.1:5432"), "{}", schema.url);
        schema
            .url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port))
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Send calls for `mid` that reached the provider stand-in, whatever they were answered.
fn calls_for(stage: &Stage, mid: &str) -> usize {
    stage
        .sim
        .sent()
        .iter()
        .filter(|a| a.body["messages"][0]["custom_string"] == mid)
        .count()
}

fn accepted(stage: &Stage, mid: &str) -> bool {
    stage
        .sim
        .sent()
        .iter()
        .any(|a| a.status == 200 && a.body["messages"][0]["custom_string"] == mid)
}

async fn send_to(stage: &Stage, port: u16, contact: &str, text: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/channels/sms/message");
    let message = serde_json::json!({"type": "text", "text": text});
    let (status, body) = stage
        .emulator
        .send_to_gateway(&url, CHANNEL_ID, contact, message)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["mId"].as_str().unwrap().to_string()
}

/// The database is unreachable for longer than the lease while a send is in flight: the
/// node loses its lanes and takes them again when the database is back, and the send it
/// still has in flight is neither taken again nor repeated; its outcome is recorded late,
/// and the contact's next message follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_database_outage_past_the_lease_never_repeats_a_send_in_flight() {
    let schema = pg::PgSchema::create().await;
    let relay = PgRelay::start("127.0.0.1:5432").await;
    let stage = Stage::new(Opts::default()).await;
    let logs = NodeLogs::default();
    let mut node = start_node(&stage, &relay.url(&schema), stage.port, &logs).await;
    const ERIN: &str = "+61400000901";
    stage.sim.push_fault(SimFault::Delay(8000));
    let first = send_to(&stage, node.port, ERIN, "in flight through the outage").await;
    wait_until("the send in flight", 30, || async {
        (calls_for(&stage, &first) > 0).then_some(())
    })
    .await;
    // Longer than the lease (3 s) and than the send (8 s): its answer comes while the
    // database is gone.
    relay.set_cut(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    relay.set_cut(false);
    wait_until("the slow send answered", 30, || async {
        accepted(&stage, &first).then_some(())
    })
    .await;
    let second = send_to(&stage, node.port, ERIN, "after the outage").await;
    wait_until("the next message sent", 60, || async {
        accepted(&stage, &second).then_some(())
    })
    .await;
    // Give a wrongly recovered first send time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls_for(&stage, &first),
        1,
        "the send in flight was repeated"
    );
    assert_eq!(calls_for(&stage, &second), 1);
    let (db, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = db
        .query_one(
            "SELECT state, ambiguous FROM items WHERE mid = $1",
            &[&first],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 0));
    if let Some(c) = node.child.as_mut() {
        c.start_kill().ok();
    }
}

/// The provider lane's owner is stopped (SIGTERM, a rolling deploy) while a send takes 8 s:
/// the other node takes the lane at once but leaves the send in flight to its owner, who
/// records it before exiting; nothing is sent twice and the contact's next message follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn a_lease_hand_over_on_a_planned_stop_never_repeats_a_send_in_flight() {
    let schema = pg::PgSchema::create().await;
    let stage = Stage::new(Opts::default()).await;
    let path = stage.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("shutdown_grace_ms = 3000", "shutdown_grace_ms = 25000"),
    )
    .unwrap();
    let logs = NodeLogs::default();
    let mut nodes = vec![
        start_node(&stage, &schema.url, stage.port, &logs).await,
        start_node(&stage, &schema.url, free_port(), &logs).await,
    ];
    let (db, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let owner = wait_until("the provider lane owned", 30, || async {
        lane_owners(&db).await.get(&1).copied()
    })
    .await;
    let idx = nodes
        .iter()
        .position(|n| n.child.as_ref().and_then(|c| c.id()) == Some(owner))
        .unwrap();
    let other = nodes[1 - idx].port;
    const FRANK: &str = "+61400000902";
    stage.sim.push_fault(SimFault::Delay(8000));
    let first = send_to(&stage, other, FRANK, "in flight through the hand-over").await;
    wait_until("the send in flight", 30, || async {
        (calls_for(&stage, &first) > 0).then_some(())
    })
    .await;
    let mut child = nodes[idx].child.take().unwrap();
    // SAFETY: signalling a child process we own.
    unsafe {
        libc::kill(owner as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the stopped node exited")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let second = send_to(&stage, other, FRANK, "after the hand-over").await;
    wait_until("the next message sent by the other node", 60, || async {
        accepted(&stage, &second).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls_for(&stage, &first),
        1,
        "the hand-over repeated the send in flight"
    );
    assert_eq!(calls_for(&stage, &second), 1);
    let row = db
        .query_one(
            "SELECT state, ambiguous FROM items WHERE mid = $1",
            &[&first],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 0));
    for n in &mut nodes {
        if let Some(c) = n.child.as_mut() {
            c.start_kill().ok();
        }
    }
}
