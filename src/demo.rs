//! `rio-bridge demo` and `rio-bridge emulate respondio`: everything on loopback, nothing
//! to configure, so an operator sees all three flows work in a minute.

use std::net::SocketAddr;

use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::respondio::emulator::{
    EmulatedChannel, EmulatedIdType, Emulator, EmulatorConfig, RetryAfterForm, parse_channel_arg,
};
use crate::simulators::clicksend::{ClickSendSim, SimConfig};

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn parse_retry_after_form(s: &str) -> anyhow::Result<RetryAfterForm> {
    Ok(match s {
        "seconds" => RetryAfterForm::Seconds,
        "http-date" | "http_date" => RetryAfterForm::HttpDate,
        "none" => RetryAfterForm::None,
        other => anyhow::bail!("--retry-after {other:?}: expected seconds, http-date or none"),
    })
}

pub async fn emulate_respondio(
    listen: SocketAddr,
    channels: &[String],
    dedupe_by_mid: bool,
    max_events_per_call: Option<usize>,
    retry_after: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let channels = channels
        .iter()
        .map(|c| parse_channel_arg(c).map_err(|e| anyhow::anyhow!("--channel {c:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let emulator = Emulator::new(EmulatorConfig {
        channels,
        dedupe_by_mid,
        max_events_per_call,
        retry_after: parse_retry_after_form(retry_after)?,
    });
    let listener = TcpListener::bind(listen).await?;
    println!("respond.io emulator on http://{}", listener.local_addr()?);
    println!(
        "  webhook URL: http://{}/custom/channel/webhook/",
        listener.local_addr()?
    );
    println!(
        "  recorded events: GET /_emulator/events?channel=ID   register a channel: POST /_emulator/channels"
    );
    tokio::select! {
        r = emulator.serve(listener) => r?,
        _ = shutdown.cancelled() => {}
    }
    Ok(())
}

pub async fn run(listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token = random_token(46);
    let secret = random_token(24);
    let api_key = random_token(32);
    let channel_id = "DEMO1";

    let emu_listener = TcpListener::bind("127.0.0.1:0").await?;
    let emu = emu_listener.local_addr()?;
    let emulator = Emulator::new(EmulatorConfig {
        channels: vec![EmulatedChannel {
            channel_id: channel_id.into(),
            token: token.clone(),
            id_type: EmulatedIdType::Phone,
            rate_limit: 20,
        }],
        dedupe_by_mid: false,
        max_events_per_call: None,
        retry_after: RetryAfterForm::Seconds,
    });
    tokio::spawn(emulator.serve(emu_listener));

    let gw_listener = TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen}: {e} (try --listen 127.0.0.1:0)")
    })?;
    let gw = gw_listener.local_addr()?;
    let sim_listener = TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    let sim = ClickSendSim::new(SimConfig {
        username: "demo".into(),
        api_key: api_key.clone(),
        receipt_url: Some(format!("http://{gw}/channels/sms/status?secret={secret}")),
        receipt_delay_ms: 500,
        inbound_url: Some(format!("http://{gw}/channels/sms/inbound?secret={secret}")),
    });
    tokio::spawn(sim.serve(sim_listener));

    let db = dir.path().join("rio-bridge.db");
    let toml = format!(
        r#"
[server]
listen = "{gw}"
public_url = "http://{gw}"
[store]
path = "{db}"
[[channel]]
name = "sms"
respondio_channel_id = "{channel_id}"
respondio_token = "{token}"
respondio_webhook_url = "http://{emu}/custom/channel/webhook/"
id_type = "phone"
provider = "clicksend"
webhook_secret = "{secret}"
[channel.clicksend]
username = "demo"
api_key = "{api_key}"
from = "+61411111111"
api_base = "http://{sim_addr}"
rate_limit = 10
"#,
        db = db.display()
    );
    let cfg =
        Config::from_toml(&toml, &|_| None).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let app = App::build(cfg).await?;
    println!(
        r#"
rio-bridge demo: all on loopback, store in {db}
  gateway               http://{gw}
  respond.io emulator   http://{emu}   (channel {channel_id})
  ClickSend stand-in    http://{sim_addr}

1. A contact texts in (ClickSend inbound push -> gateway -> respond.io):
   curl -s -X POST 'http://{gw}/channels/sms/inbound?secret={secret}' --data-urlencode 'from=+61400000001' --data-urlencode 'to=+61411111111' --data-urlencode 'body=Hello there' -d "message_id=demo-$(date +%s%N)" -d "timestamp=$(date +%s)"
2. What respond.io received:
   curl -s 'http://{emu}/_emulator/events?channel={channel_id}'
3. An agent replies (respond.io -> gateway -> ClickSend):
   curl -s -X POST http://{gw}/channels/sms/message -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{"channelId":"{channel_id}","contactId":"+61400000001","message":{{"type":"text","text":"Hi from respond.io"}}}}'
4. What ClickSend received:
   curl -s http://{sim_addr}/_sim/sent
5. ClickSend's delivery receipt comes back by itself and reaches respond.io as message_status "delivered":
   curl -s 'http://{emu}/_emulator/events?channel={channel_id}'
Health and metrics: curl -s http://{gw}/readyz ; curl -s http://{gw}/metrics
Ctrl-C stops everything and deletes the store.
"#,
        db = db.display()
    );
    app.run(gw_listener, shutdown).await?;
    drop(dir);
    Ok(())
}
