//! Harness for one provider channel end to end: the respond.io emulator, a gateway in this
//! process on a real SQLite file, and whichever provider stand-in the test starts. The
//! channel's provider lines come from the test, so every provider's test shares this.
//! Included with `#[path]` by the provider tests (tests/common/mod.rs stays ClickSend's).

#![allow(dead_code)]

use std::time::Duration;

use rio_bridge::app::App;
use rio_bridge::config::Config;
use rio_bridge::respondio::emulator::{
    EmulatedChannel, EmulatedIdType, Emulator, EmulatorConfig, RecordedEvent,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const CHANNEL_ID: &str = "CHP1";
pub const TOKEN: &str = "rio-provider-test-token-qwertyuiopasdfghjklzxcv";

/// The emulator, the gateway's address and its temp dir, before the gateway starts.
pub struct ProviderStage {
    pub emulator: Emulator,
    pub emulator_addr: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub channel: String,
}

impl ProviderStage {
    pub async fn new(channel: &str, id_type: EmulatedIdType) -> ProviderStage {
        let emulator = Emulator::new(EmulatorConfig {
            channels: vec![EmulatedChannel {
                channel_id: CHANNEL_ID.into(),
                token: TOKEN.into(),
                id_type,
                rate_limit: 20,
            }],
            ..EmulatorConfig::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator_addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(emulator.clone().serve(listener));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        ProviderStage {
            emulator,
            emulator_addr,
            port,
            dir: tempfile::tempdir().unwrap(),
            channel: channel.into(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `{base}/channels/{channel}/{route}`.
    pub fn url(&self, route: &str) -> String {
        format!("{}/channels/{}/{route}", self.base(), self.channel)
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("rio-bridge.db")
    }

    /// The whole config: server, store, and one channel whose provider part is `provider`
    /// (`provider = ...`, `id_type = ...` and the provider's section).
    pub fn config_toml(&self, provider: &str) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
message_budget_ms = 3000
shutdown_grace_ms = 3000
[store]
path = "{db}"
# The provider stand-ins serve media on loopback.
[media]
allow_private = true
[[channel]]
name = "{name}"
respondio_channel_id = "{CHANNEL_ID}"
respondio_token = "{TOKEN}"
respondio_webhook_url = "http://{emu}/custom/channel/webhook/"
backoff_base_ms = 100
backoff_max_ms = 2000
{provider}
"#,
            port = self.port,
            db = self.db_path().display(),
            name = self.channel,
            emu = self.emulator_addr,
        )
    }

    pub async fn start(&self, provider: &str) -> Running {
        let path = self.dir.path().join("rio-bridge.toml");
        std::fs::write(&path, self.config_toml(provider)).unwrap();
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let app = App::build(cfg).await.expect("build app");
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(listener, stop.clone()));
        crate::common::wait_ready(&self.base()).await;
        Running { stop, task }
    }

    /// respond.io's side: `POST /message` through the emulator.
    pub async fn send(&self, contact: &str, message: Value) -> (u16, Value) {
        self.emulator
            .send_to_gateway(&self.url("message"), CHANNEL_ID, contact, message)
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

    /// Waits until respond.io has `n` events of type `ty`; returns them.
    pub async fn wait_events(&self, ty: &str, n: usize) -> Vec<RecordedEvent> {
        crate::common::wait_until(&format!("{n} {ty} event(s) at respond.io"), 20, || async {
            let ev = self.events_of_type(ty);
            (ev.len() >= n).then_some(ev)
        })
        .await
    }

    /// Rows in the store's table (to show a rejected webhook left nothing behind).
    pub fn count_rows(&self, table: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }
}

pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub fn text_of(e: &RecordedEvent) -> String {
    e.event["message"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
