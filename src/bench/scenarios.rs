//! The seven scenarios of BENCHMARKS.md. Each builds its own gateway process and stand-ins.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};

use super::load::{self, MakeRequest, quantile_ms};
use super::proc::{BareProc, GatewayProc, free_port};
use super::{Figure, Report};
use crate::clock::{now_ms, now_us};
use crate::respondio::emulator::{
    EmulatedChannel, EmulatedIdType, Emulator, EmulatorConfig, max_in_window,
};
use crate::simulators::clicksend::{ClickSendSim, SimConfig};

const SECRET: &str = "bench-hook-secret";
const CONCURRENCY: usize = 64;

/// The emulator and the ClickSend stand-in, on loopback in this process.
struct Stage {
    emulator: Emulator,
    emu: SocketAddr,
    sim: ClickSendSim,
    sim_addr: SocketAddr,
}

async fn stage(
    channels: usize,
    emulator_rate: u32,
    max_events: Option<usize>,
) -> anyhow::Result<Stage> {
    let emulator = Emulator::new(EmulatorConfig {
        channels: (0..channels)
            .map(|k| EmulatedChannel {
                channel_id: format!("CH{k}"),
                token: format!("token-{k}"),
                id_type: EmulatedIdType::Phone,
                rate_limit: emulator_rate,
            })
            .collect(),
        max_events_per_call: max_events,
        ..EmulatorConfig::default()
    });
    let el = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let emu = el.local_addr()?;
    tokio::spawn(emulator.clone().serve(el));
    let sim = ClickSendSim::new(SimConfig {
        username: "bench".into(),
        api_key: "bench-key".into(),
        ..SimConfig::default()
    });
    let sl = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sl.local_addr()?;
    tokio::spawn(sim.clone().serve(sl));
    Ok(Stage {
        emulator,
        emu,
        sim,
        sim_addr,
    })
}

/// Per-channel knobs of a scenario.
#[derive(Clone, Copy)]
struct Knobs {
    respondio_rate: u32,
    provider_rate: u32,
    max_events: usize,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            respondio_rate: 20,
            provider_rate: 1000,
            max_events: 10,
        }
    }
}

fn gateway_toml(addr: SocketAddr, dir: &Path, st: &Stage, channels: usize, k: Knobs) -> String {
    // Extra `[store]` lines for A/B runs, e.g. RIO_BENCH_STORE_EXTRA="channel_logs = false".
    let store = format!(
        "path = \"{}\"\n{}",
        dir.join("rio-bridge.db").display(),
        std::env::var("RIO_BENCH_STORE_EXTRA").unwrap_or_default()
    );
    gateway_toml_with_store(addr, &store, st, channels, k)
}

fn gateway_toml_with_store(
    addr: SocketAddr,
    store: &str,
    st: &Stage,
    channels: usize,
    k: Knobs,
) -> String {
    let mut t = format!(
        "[server]\nlisten = \"{addr}\"\npublic_url = \"http://{addr}\"\n[store]\n{store}\n"
    );
    for c in 0..channels {
        t.push_str(&format!(
            r#"
[[channel]]
name = "c{c}"
respondio_channel_id = "CH{c}"
respondio_token = "token-{c}"
respondio_webhook_url = "http://{emu}/custom/channel/webhook/"
respondio_rate_limit = {rr}
provider = "clicksend"
webhook_secret = "{SECRET}"
max_events_per_call = {me}
max_inflight = 64
[channel.clicksend]
username = "bench"
api_key = "bench-key"
from = "+61411111111"
api_base = "http://{sim}"
rate_limit = {pr}
"#,
            emu = st.emu,
            sim = st.sim_addr,
            rr = k.respondio_rate,
            me = k.max_events,
            pr = k.provider_rate,
        ));
    }
    t
}

/// Where the ingest and outbound scenarios run: SQLite (one node), or PostgreSQL with
/// one or more nodes.
pub struct Cluster {
    pub pg_url: Option<String>,
    pub nodes: usize,
}

/// The gateway nodes of a scenario, and the PostgreSQL schema they share (if any).
struct Nodes {
    procs: Vec<GatewayProc>,
    schema: Option<(String, String)>,
}

impl Nodes {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(|p| p.addr).collect()
    }

    async fn stop(self) -> anyhow::Result<()> {
        for p in self.procs {
            p.stop().await;
        }
        if let Some((admin_url, schema)) = self.schema {
            let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await?;
        }
        Ok(())
    }
}

/// Starts the scenario's gateway(s): one on SQLite, or `nodes` on a fresh PostgreSQL schema.
async fn nodes(
    dir: &Path,
    st: &Stage,
    channels: usize,
    k: Knobs,
    cluster: &Cluster,
) -> anyhow::Result<Nodes> {
    let Some(url) = &cluster.pg_url else {
        return Ok(Nodes {
            procs: vec![gateway(dir, st, channels, k).await?],
            schema: None,
        });
    };
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to --pg-url")?;
    tokio::spawn(conn);
    let schema = format!("bench_{}", ulid::Ulid::new().to_string().to_lowercase());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let node_url = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let mut procs = Vec::new();
    for i in 0..cluster.nodes {
        let ndir = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&ndir)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let store = format!("url = \"{node_url}\"\npool_size = 16");
        let toml = gateway_toml_with_store(addr, &store, st, channels, k);
        procs.push(
            GatewayProc::start(&ndir, &toml, addr)
                .await
                .context("starting a gateway node")?,
        );
    }
    Ok(Nodes {
        procs,
        schema: Some((url.clone(), schema)),
    })
}

/// Sends `total` requests spread evenly over the nodes (`concurrency` connections in all);
/// `make(addr, i)` builds request `i` of `0..total` for the node at `addr`.
async fn load_nodes(
    addrs: &[SocketAddr],
    concurrency: usize,
    total: usize,
    make: impl Fn(SocketAddr, usize) -> Request<Full<Bytes>> + Send + Sync + Clone + 'static,
) -> load::LoadResult {
    let n = addrs.len().max(1);
    let runs = addrs.iter().enumerate().map(|(k, &addr)| {
        let make = make.clone();
        let part = total / n + usize::from(k < total % n);
        let offset = k * (total / n) + k.min(total % n);
        let mk: MakeRequest = Arc::new(move |i| make(addr, offset + i));
        load::run(addr, (concurrency / n).max(1), part, mk)
    });
    let started = Instant::now();
    let mut all = load::LoadResult::default();
    for r in futures::future::join_all(runs).await {
        all.ok += r.ok;
        all.non_2xx += r.non_2xx;
        all.errors += r.errors;
        all.latencies_us.extend(r.latencies_us);
    }
    all.elapsed = started.elapsed();
    all
}

fn store_note(cluster: &Cluster) -> String {
    match &cluster.pg_url {
        Some(_) => format!(
            "PostgreSQL store, {} node(s), load spread evenly",
            cluster.nodes
        ),
        None => "SQLite store, synchronous = FULL".to_string(),
    }
}

async fn gateway(dir: &Path, st: &Stage, channels: usize, k: Knobs) -> anyhow::Result<GatewayProc> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    GatewayProc::start(dir, &gateway_toml(addr, dir, st, channels, k), addr)
        .await
        .context("starting the gateway")
}

fn inbound_form(contact: &str, id: &str) -> String {
    format!(
        "from={}&to=%2B61411111111&body=bench+message&message_id={id}&timestamp=1767225600",
        contact.replace('+', "%2B")
    )
}

/// A ClickSend inbound push to channel `c{channel}`.
fn inbound_request(
    addr: SocketAddr,
    channel: usize,
    contact: &str,
    id: &str,
) -> Request<Full<Bytes>> {
    Request::post(format!("/channels/c{channel}/inbound?secret={SECRET}"))
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(inbound_form(contact, id))))
        .expect("static request parts")
}

/// respond.io's `/message` call on channel `c0`.
fn message_request(addr: SocketAddr, contact: &str, text: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"channelId": "CH0", "contactId": contact, "message": {"type": "text", "text": text}});
    Request::post("/channels/c0/message")
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, "Bearer token-0")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static request parts")
}

fn phone(prefix: u32, n: usize) -> String {
    format!("+61{prefix}{:08}", n % 100_000_000)
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

fn errors_figure(r: &load::LoadResult) -> Figure {
    Figure::new(
        "requests not answered 2xx",
        (r.non_2xx + r.errors) as f64,
        "",
    )
    .at_most(0.0)
}

/// Scenario 1: provider webhooks accepted durably per second at 64 connections, against the
/// ceiling of a bare axum handler measured in the same run.
pub async fn ingest(dir: &Path, quick: bool, cluster: &Cluster) -> anyhow::Result<Report> {
    let n = if quick { 1_000 } else { 200_000 };
    let st = stage(1, 20, None).await?;
    let g = nodes(dir, &st, 1, Knobs::default(), cluster).await?;
    let spread = |prefix: &'static str| {
        move |addr: SocketAddr, i: usize| {
            inbound_request(addr, 0, &phone(4, i % 5_000), &format!("{prefix}-{i}"))
        }
    };
    load_nodes(&g.addrs(), CONCURRENCY, n / 10, spread("warm")).await;
    let r = load_nodes(&g.addrs(), CONCURRENCY, n, spread("ing")).await;
    g.stop().await?;
    let make = |prefix: &'static str, addr: SocketAddr| -> MakeRequest {
        Arc::new(move |i| inbound_request(addr, 0, &phone(4, i % 5_000), &format!("{prefix}-{i}")))
    };
    let bare = BareProc::start().await?;
    let baddr = bare.addr;
    load::run(baddr, CONCURRENCY, n / 10, make("warm", baddr)).await;
    let ceiling = load::run(baddr, CONCURRENCY, n, make("ing", baddr)).await;
    bare.stop().await;
    Ok(Report {
        scenario: "1. inbound ingest (64 connections, committed before 200)",
        figures: vec![
            Figure::new("webhooks accepted", r.rate(), "msg/s").at_least(20_000.0),
            Figure::new("latency p50", r.quantile_ms(0.5), "ms"),
            Figure::new("latency p99", r.quantile_ms(0.99), "ms").at_most(10.0),
            Figure::new("bare axum ceiling", ceiling.rate(), "req/s"),
            Figure::new(
                "share of the ceiling",
                100.0 * r.rate() / ceiling.rate().max(1.0),
                "%",
            )
            .at_least(25.0),
            errors_figure(&r),
        ],
        notes: vec![
            format!("{n} webhooks from 5,000 contacts, form-encoded ClickSend pushes"),
            store_note(cluster),
        ],
    })
}

/// Scenario 2: a broadcast of /message calls accepted at 64 connections, then drained toward the
/// provider stand-in at its configured 1,000/s; none lost or doubled.
pub async fn outbound(dir: &Path, quick: bool, cluster: &Cluster) -> anyhow::Result<Report> {
    let n = if quick { 1_000 } else { 100_000 };
    let rate = 1_000u32;
    let st = stage(1, 20, None).await?;
    let g = nodes(
        dir,
        &st,
        1,
        Knobs {
            provider_rate: rate,
            ..Knobs::default()
        },
        cluster,
    )
    .await?;
    let r = load_nodes(&g.addrs(), CONCURRENCY, n, |addr, i| {
        message_request(addr, &phone(4, i), &format!("broadcast {i}"))
    })
    .await;
    let accept_end = now_ms();
    let drain_timeout = Duration::from_secs((n as u64 / rate as u64) * 2 + 60);
    let sim = st.sim.clone();
    wait_for("the drain", drain_timeout, || sim.sent_count() >= r.ok).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.stop().await?;
    let sent = st.sim.sent();
    let times: Vec<i64> = sent
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.arrival_ms)
        .collect();
    let first = times.iter().min().copied().unwrap_or(0);
    let last = times.iter().max().copied().unwrap_or(0);
    let drain_rate =
        (times.len().saturating_sub(1)) as f64 / ((last - first) as f64 / 1000.0).max(1e-3);
    // The steady state: from a second after the last accept until half a second before
    // the last send (the accept phase competes for the same two cores).
    let (steady_from, steady_to) = (accept_end + 1000, last - 500);
    let steady = times
        .iter()
        .filter(|&&t| t >= steady_from && t < steady_to)
        .count();
    let steady_rate = steady as f64 / ((steady_to - steady_from) as f64 / 1000.0).max(1e-3);
    let mids: Vec<&str> = sent
        .iter()
        .filter_map(|a| a.body["messages"][0]["custom_string"].as_str())
        .collect();
    let distinct_mids: HashSet<&str> = mids.iter().copied().collect();
    let recipients: HashSet<&str> = sent
        .iter()
        .filter_map(|a| a.body["messages"][0]["to"].as_str())
        .collect();
    Ok(Report {
        scenario: "2. outbound accept (broadcast burst) and drain",
        figures: vec![
            Figure::new("/message calls accepted", r.rate(), "msg/s").at_least(10_000.0),
            Figure::new("accept latency p99", r.quantile_ms(0.99), "ms"),
            Figure::new("drain rate, first to last send", drain_rate, "msg/s")
                .at_least(0.98 * rate as f64),
            // Utilisation: the limiter may leave a little unused (its guard, the slots of
            // requests that waited for a new connection), never more than 2%.
            Figure::new(
                "share of the configured rate",
                100.0 * drain_rate / rate as f64,
                "%",
            )
            .at_least(98.0),
            Figure::new(
                "share of the configured rate, steady state",
                100.0 * steady_rate / rate as f64,
                "%",
            )
            .at_least(98.0),
            Figure::new(
                "most sends in any 1 s window",
                max_in_window(&times, 1000) as f64,
                "",
            )
            .at_most(rate as f64),
            Figure::new(
                "lost (accepted, never sent)",
                (r.ok.saturating_sub(recipients.len())) as f64,
                "",
            )
            .at_most(0.0),
            Figure::new(
                "doubled (same mId sent twice)",
                (mids.len() - distinct_mids.len()) as f64,
                "",
            )
            .at_most(0.0),
            errors_figure(&r),
        ],
        notes: vec![
            format!(
                "{n} sends to distinct contacts; provider rate {rate}/s; stand-in answers at once"
            ),
            store_note(cluster),
        ],
    })
}

/// Scenario 3: 200 channels, each with a backlog, drained toward the emulator at 20/s each.
pub async fn ratelimit(dir: &Path, quick: bool) -> anyhow::Result<Report> {
    let (channels, per) = if quick { (10, 30) } else { (200, 240) };
    let st = stage(channels, 20, None).await?;
    let g = gateway(
        dir,
        &st,
        channels,
        Knobs {
            max_events: 1,
            provider_rate: 10,
            ..Knobs::default()
        },
    )
    .await?;
    let addr = g.addr;
    let make: MakeRequest = Arc::new(move |i| {
        let (c, seq) = (i % channels, i / channels);
        inbound_request(addr, c, &phone(5, c * 100 + seq % 10), &format!("rl-{i}"))
    });
    let fill = load::run(addr, CONCURRENCY, channels * per, make).await;
    let fill_end = now_ms();
    let total = fill.ok;
    let emu = st.emulator.clone();
    let ids: Vec<String> = (0..channels).map(|c| format!("CH{c}")).collect();
    let drain_timeout = Duration::from_secs(per as u64 / 20 * 3 + 60);
    wait_for("the drain", drain_timeout, || {
        ids.iter().map(|id| emu.events(id).len()).sum::<usize>() >= total
    })
    .await?;
    g.stop().await;
    let mut worst = 0;
    let mut throttled = 0;
    let mut last_arrivals = Vec::new();
    let mut all = Vec::new();
    for id in &ids {
        let calls = st.emulator.calls(id);
        throttled += calls.iter().filter(|c| c.status == 429).count();
        let ok: Vec<i64> = calls
            .iter()
            .filter(|c| c.status == 200)
            .map(|c| c.arrival_ms)
            .collect();
        worst = worst.max(max_in_window(&ok, 1000));
        last_arrivals.push(ok.iter().max().copied().unwrap_or(0));
        all.extend(ok);
    }
    // The steady state: from a second after the backlog is in until the first channel
    // runs dry.
    let start = fill_end + 1000;
    let end = last_arrivals.iter().min().copied().unwrap_or(start) - 500;
    let in_window = all.iter().filter(|&&t| t >= start && t < end).count();
    let aggregate = in_window as f64 / ((end - start) as f64 / 1000.0).max(1e-3);
    let target = 20.0 * channels as f64;
    Ok(Report {
        scenario: "3. rate-limit accuracy (channels × 20/s toward respond.io)",
        figures: vec![
            Figure::new(
                format!("aggregate rate, {channels} channels"),
                aggregate,
                "req/s",
            )
            .at_least(0.98 * target),
            Figure::new("share of the allowed rate", 100.0 * aggregate / target, "%")
                .at_least(98.0),
            Figure::new("most calls of one channel in any 1 s", worst as f64, "").at_most(20.0),
            Figure::new("429 answers from the emulator", throttled as f64, "").at_most(0.0),
            errors_figure(&fill),
        ],
        notes: vec![format!(
            "{per} messages per channel, one event per call; steady state measured over {:.1} s (emulator arrival times)",
            (end - start) as f64 / 1000.0
        )],
    })
}

/// Scenario 4: provider webhook in → emulator receives, one message at a time (no backlog).
pub async fn latency(dir: &Path, quick: bool) -> anyhow::Result<Report> {
    let n = if quick { 50 } else { 2_000 };
    // Rate limits out of the way: this measures the path, not the limiter.
    let st = stage(1, 0, None).await?;
    let g = gateway(
        dir,
        &st,
        1,
        Knobs {
            respondio_rate: 10_000,
            ..Knobs::default()
        },
    )
    .await?;
    let addr = g.addr;
    let mut arrivals = st.emulator.subscribe();
    let make: MakeRequest =
        Arc::new(move |i| inbound_request(addr, 0, &phone(6, i), &format!("lat-{i}")));
    let mut e2e = Vec::with_capacity(n);
    let mut ack = Vec::with_capacity(n);
    for i in 0..n {
        let contact = phone(6, i);
        let t0 = now_us();
        let r = load::run(addr, 1, 1, {
            let make = make.clone();
            Arc::new(move |_| make(i))
        })
        .await;
        ack.extend(r.latencies_us);
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match arrivals.recv().await {
                    Ok(a) if a.contact_id == contact => return Some(a.arrival_us),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
        .context("a message never reached the emulator")?;
        e2e.push((arrived - t0).clamp(0, u32::MAX as i64) as u32);
    }
    g.stop().await;
    Ok(Report {
        scenario: "4. end-to-end latency, provider webhook → respond.io, no backlog",
        figures: vec![
            Figure::new("end to end p50", quantile_ms(&e2e, 0.5), "ms").at_most(2.0),
            Figure::new("end to end p99", quantile_ms(&e2e, 0.99), "ms").at_most(10.0),
            Figure::new("end to end max", quantile_ms(&e2e, 1.0), "ms"),
            Figure::new(
                "webhook answered (committed) p50",
                quantile_ms(&ack, 0.5),
                "ms",
            ),
        ],
        notes: vec![format!(
            "{n} messages, one at a time; includes a new connection per webhook"
        )],
    })
}

/// Scenarios 5 and 6: RSS at idle, peak RSS while a large queue builds, and start-up to ready with it.
pub async fn backlog(dir: &Path, quick: bool) -> anyhow::Result<Report> {
    let n = if quick { 10_000 } else { 1_000_000 };
    let st = stage(1, 20, None).await?;
    let mut g = gateway(dir, &st, 1, Knobs::default()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = g.rss_kib();
    let addr = g.addr;
    let make: MakeRequest =
        Arc::new(move |i| inbound_request(addr, 0, &phone(7, i % 100_000), &format!("bl-{i}")));
    let fill = load::run(addr, CONCURRENCY, n, make).await;
    let (_, peak) = g.rss_kib();
    let delivered = st.emulator.events("CH0").len();
    let restart = g.kill_and_restart().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after_restart, _) = g.rss_kib();
    g.stop().await;
    let db_mb = ["rio-bridge.db", "rio-bridge.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>() as f64
        / 1e6;
    Ok(Report {
        scenario: "5/6. memory with a queue on disk, and start-up to ready",
        figures: vec![
            Figure::new("RSS at idle", idle_rss as f64 / 1024.0, "MiB").at_most(20.0),
            Figure::new(
                format!("peak RSS while {} are queued", fill.ok - delivered),
                peak as f64 / 1024.0,
                "MiB",
            )
            .at_most(100.0),
            Figure::new(
                "start-up to ready after SIGKILL",
                restart.as_secs_f64() * 1000.0,
                "ms",
            )
            .at_most(1000.0),
            Figure::new("RSS after restart", after_restart as f64 / 1024.0, "MiB"),
            Figure::new("store on disk", db_mb, "MB"),
            Figure::new("fill rate", fill.rate(), "msg/s"),
            errors_figure(&fill),
        ],
        notes: vec![format!(
            "{n} inbound messages from 100,000 contacts, respond.io lane at 20/s"
        )],
    })
}

/// Scenario 7: while a broadcast drains at the provider's 500/s, contacts write in and agents reply:
/// how long until each reply reaches the provider stand-in.
pub async fn conversation(dir: &Path, quick: bool) -> anyhow::Result<Report> {
    let (broadcast, replies) = if quick { (2_000, 10) } else { (100_000, 100) };
    let rate = 500u32;
    let st = stage(1, 0, None).await?;
    let g = gateway(
        dir,
        &st,
        1,
        Knobs {
            provider_rate: rate,
            respondio_rate: 1000,
            ..Knobs::default()
        },
    )
    .await?;
    let addr = g.addr;
    let make: MakeRequest =
        Arc::new(move |i| message_request(addr, &phone(4, i), &format!("broadcast {i}")));
    let b = load::run(addr, CONCURRENCY, broadcast, make).await;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut cursor = 0usize;
    let mut waits = Vec::with_capacity(replies);
    for r in 0..replies {
        let contact = phone(9, r);
        http.post(format!("{base}/channels/c0/inbound?secret={SECRET}"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(inbound_form(&contact, &format!("conv-{r}")))
            .send()
            .await?
            .error_for_status()?;
        let t0 = now_ms();
        let body = serde_json::json!({"channelId": "CH0", "contactId": contact, "message": {"type": "text", "text": "agent reply"}});
        http.post(format!("{base}/channels/c0/message"))
            .bearer_auth("token-0")
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let arrived = loop {
            let new = st.sim.sent_since(cursor);
            cursor += new.len();
            if let Some(a) = new
                .iter()
                .find(|a| a.body["messages"][0]["to"] == contact.as_str())
            {
                break a.arrival_ms;
            }
            if Instant::now() > deadline {
                anyhow::bail!("reply {r} never reached the provider");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        waits.push(((arrived - t0).max(0) * 1000) as u32);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = st.sim.sent_count();
    g.stop().await;
    Ok(Report {
        scenario: "7. agent replies during a broadcast",
        figures: vec![
            Figure::new(
                "reply reaches the provider, p50",
                quantile_ms(&waits, 0.5),
                "ms",
            ),
            Figure::new(
                "reply reaches the provider, p99",
                quantile_ms(&waits, 0.99),
                "ms",
            )
            .at_most(2000.0),
            Figure::new(
                "reply reaches the provider, max",
                quantile_ms(&waits, 1.0),
                "ms",
            ),
            Figure::new(
                "broadcast still queued at the end",
                (b.ok.saturating_sub(drained)) as f64,
                "msg",
            ),
            errors_figure(&b),
        ],
        notes: vec![format!(
            "{broadcast}-message broadcast at {rate}/s; {replies} replies, one every ~100 ms"
        )],
    })
}
