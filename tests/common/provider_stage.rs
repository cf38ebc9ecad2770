//! A gateway with one signed-webhook provider channel (Twilio, Vonage) and the respond.io
//! emulator, in this process over loopback HTTP. Included by tests/provider_*.rs with
//! `#[path]`, next to `mod common` (whose constants and waits it uses).

use std::time::Duration;

use rio_bridge::app::App;
use rio_bridge::config::Config;
use rio_bridge::respondio::emulator::{
    EmulatedChannel, EmulatedIdType, Emulator, EmulatorConfig, RecordedEvent,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{CHANNEL_ID, TOKEN, wait_ready, wait_until};

pub struct ProviderStage {
    pub emulator: Emulator,
    /// Holds the store's files for as long as the stage lives.
    _dir: tempfile::TempDir,
    pub port: u16,
    /// The channel's name: our URLs are `/channels/{name}/...`.
    pub name: String,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Picks a free port for the gateway before its config is written.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

/// Starts the emulator and returns its webhook URL.
pub async fn start_emulator() -> (Emulator, String) {
    let emulator = Emulator::new(EmulatorConfig {
        channels: vec![EmulatedChannel {
            channel_id: CHANNEL_ID.into(),
            token: TOKEN.into(),
            id_type: EmulatedIdType::Phone,
            rate_limit: 20,
        }],
        dedupe_by_mid: false,
        max_events_per_call: None,
        retry_after: Default::default(),
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/custom/channel/webhook/", l.local_addr().unwrap());
    tokio::spawn(emulator.clone().serve(l));
    (emulator, url)
}

impl ProviderStage {
    /// Writes a config for channel `name` with `provider` and its `[channel.{provider}]`
    /// section, and starts the gateway on `port`.
    pub async fn start(
        emulator: Emulator,
        emulator_url: &str,
        port: u16,
        name: &str,
        provider: &str,
        section: &str,
    ) -> ProviderStage {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
shutdown_grace_ms = 3000
[store]
path = "{db}"
[[channel]]
name = "{name}"
respondio_channel_id = "{CHANNEL_ID}"
respondio_token = "{TOKEN}"
respondio_webhook_url = "{emulator_url}"
id_type = "phone"
provider = "{provider}"
backoff_base_ms = 100
backoff_max_ms = 2000
[channel.{provider}]
{section}
"#,
            db = dir.path().join("rio-bridge.db").display(),
        );
        let path = dir.path().join("rio-bridge.toml");
        std::fs::write(&path, toml).unwrap();
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("port");
        let app = App::build(cfg).await.expect("build app");
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(listener, stop.clone()));
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await;
        ProviderStage {
            emulator,
            _dir: dir,
            port,
            name: name.to_string(),
            stop,
            task: Some(task),
        }
    }

    pub fn url(&self, route: &str) -> String {
        format!(
            "http://127.0.0.1:{}/channels/{}/{route}",
            self.port, self.name
        )
    }

    /// respond.io's side: POST /message through the emulator.
    pub async fn send(&self, contact: &str, message: Value) -> (u16, Value) {
        self.emulator
            .send_to_gateway(&self.url("message"), CHANNEL_ID, contact, message)
            .await
            .expect("gateway reachable")
    }

    pub fn events(&self) -> Vec<RecordedEvent> {
        self.emulator.events(CHANNEL_ID)
    }

    /// Waits for the event of `type` for which `pick` holds.
    pub async fn wait_event(
        &self,
        what: &str,
        ty: &str,
        pick: impl Fn(&RecordedEvent) -> bool,
    ) -> RecordedEvent {
        wait_until(what, 20, || async {
            self.events()
                .into_iter()
                .find(|e| e.event["type"] == ty && pick(e))
        })
        .await
    }

    /// The status events respond.io got for `mid`, in arrival order.
    pub fn statuses_of(&self, mid: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e.event["type"] == "message_status" && e.event["mId"] == mid)
            .map(|e| {
                e.event["status"]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}
