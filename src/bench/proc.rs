//! The gateway under test, as its own process (so its memory is its own), and the bare
//! axum server that gives the ingest ceiling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

pub struct GatewayProc {
    child: tokio::process::Child,
    config: PathBuf,
    log: PathBuf,
    pub addr: SocketAddr,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_http_ok(url: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("{url} not ready after {timeout:?}")
}

impl GatewayProc {
    /// Writes the config and starts `rio-bridge serve` on it; returns once /readyz is 200.
    pub async fn start(dir: &Path, toml: &str, addr: SocketAddr) -> anyhow::Result<GatewayProc> {
        let config = dir.join("gateway.toml");
        std::fs::write(&config, toml)?;
        let log = dir.join("gateway.log");
        let child = spawn(&config, &log)?;
        let mut g = GatewayProc {
            child,
            config,
            log,
            addr,
        };
        g.wait_ready().await?;
        Ok(g)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<Duration> {
        let r = wait_http_ok(
            &format!("http://{}/readyz", self.addr),
            Duration::from_secs(60),
        )
        .await;
        if r.is_err() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            anyhow::bail!("gateway did not become ready; log tail (newest first):\n{tail}");
        }
        r
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// (current RSS, peak RSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
        let Some(pid) = self.pid() else { return (0, 0) };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGKILL, then start again; returns the time from spawn to /readyz 200.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<Duration> {
        self.child.start_kill()?;
        let _ = self.child.wait().await;
        let start = Instant::now();
        self.child = spawn(&self.config, &self.log)?;
        self.wait_ready().await?;
        Ok(start.elapsed())
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn spawn(config: &Path, log: &Path) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating the rio-bridge binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(tokio::process::Command::new(exe)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// The ingest ceiling: a bare axum handler answering 200, in its own process.
pub struct BareProc {
    child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl BareProc {
    pub async fn start() -> anyhow::Result<BareProc> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let exe = std::env::current_exe()?;
        let child = tokio::process::Command::new(exe)
            .args(["bench", "bare-server", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        wait_http_ok(&format!("http://{addr}/"), Duration::from_secs(20)).await?;
        Ok(BareProc { child, addr })
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `rio-bridge bench bare-server`: answers 200 to everything, reading the body first (as
/// a real handler must).
pub async fn serve_bare(listen: SocketAddr) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(|_body: bytes::Bytes| async { "OK" });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
