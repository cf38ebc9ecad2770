//! Wiring: builds channels, lanes and the router from a config, runs them until shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::channel_log::ChannelLog;
use crate::clock::now_ms;
use crate::config::{ChannelConfig, Config};
use crate::lanes::deliver::{ToProvider, ToRespondIo};
use crate::lanes::{LaneCtx, LaneRunner, Waiters};
use crate::providers::{Provider, ProviderEnv};
use crate::respondio::client::RespondIoClient;
use crate::secret::Secret;
use crate::store::admin::AdminStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{CrashPolicy, Lane, Store};

/// One configured channel with its provider and its two lanes.
pub struct Channel {
    pub cfg: ChannelConfig,
    pub provider: Arc<dyn Provider>,
    pub to_respondio: Arc<LaneCtx>,
    pub to_provider: Arc<LaneCtx>,
    pub waiters: Arc<Waiters>,
}

pub struct AppState {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    /// The same store, seen through the admin API's queries.
    pub admin_store: Arc<dyn AdminStore>,
    /// Where HTTP exchanges are recorded (see `channel_log`).
    pub channel_log: ChannelLog,
    pub channels: HashMap<String, Arc<Channel>>,
    /// respond.io channel id → our channel name, for `POST /message`.
    pub by_respondio_id: HashMap<String, String>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub media: Arc<crate::media::MediaProxy>,
    /// The last hour of every lane, for the console's plots.
    pub lane_history: Arc<crate::lane_history::LaneHistory>,
}

impl AppState {
    pub fn channel(&self, name: &str) -> Option<&Arc<Channel>> {
        self.channels.get(name)
    }
}

fn http_client(timeout_ms: u64) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        // Provider and respond.io endpoints never legitimately redirect a POST; following
        // one could send credentials elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_millis(timeout_ms))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?)
}

/// The secrets of a channel's config, for value redaction in channel logs. A provider's
/// own credentials are listed here as each provider section is added.
pub fn channel_secrets(ch: &ChannelConfig) -> Vec<&Secret> {
    let mut out = vec![&ch.respondio_token, &ch.webhook_secret];
    out.extend(ch.respondio_token_next.as_ref());
    if let Some(cs) = &ch.clicksend {
        out.push(&cs.api_key);
    }
    out
}

/// A running gateway: its state, and the lane tasks to stop on shutdown.
pub struct App {
    pub state: Arc<AppState>,
    lanes: Vec<LaneRunner>,
    channel_log_rx: tokio::sync::mpsc::Receiver<crate::store::admin::ChannelLogRow>,
}

impl App {
    /// Opens the store, recovers what a crash left in flight, and prepares every lane.
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        let sqlite = Arc::new(SqliteStore::open(&cfg.store)?);
        let store: Arc<dyn Store> = sqlite.clone();
        let admin_store: Arc<dyn AdminStore> = sqlite.clone();
        let lane_history = Arc::new(crate::lane_history::LaneHistory::new(
            cfg.channels.iter().map(|c| c.name.clone()),
            store.clone(),
            sqlite,
        ));
        let (channel_log, channel_log_rx) = ChannelLog::new();
        let policy: HashMap<String, CrashPolicy> = cfg
            .channels
            .iter()
            .map(|c| {
                let p = CrashPolicy {
                    on_crash: c.delivery.on_crash,
                    ambiguous_retry_cap: c.delivery.ambiguous_retry_cap,
                };
                (c.name.clone(), p)
            })
            .collect();
        let report = store.recover(&policy).await?;
        if report.resent + report.failed > 0 {
            tracing::warn!(
                resent = report.resent,
                failed = report.failed,
                "items were in flight when the gateway last stopped: their next attempt is marked ambiguous"
            );
        }
        let respondio_http = http_client(30_000)?;
        let mut channels = HashMap::new();
        let mut by_respondio_id = HashMap::new();
        let mut lanes = Vec::new();
        for ch in &cfg.channels {
            let provider = crate::providers::build(
                ch,
                ProviderEnv {
                    channel: ch.name.clone(),
                    public_url: cfg.server.public_url.trim_end_matches('/').to_string(),
                    client: http_client(ch.delivery.provider_timeout_ms)?,
                },
            )?;
            let waiters = Arc::new(Waiters::default());
            let client = RespondIoClient::new(
                respondio_http.clone(),
                ch.respondio_webhook_url.clone(),
                ch.respondio_token.clone(),
                ch.respondio_token_next.clone(),
                ch.respondio_channel_id.clone(),
                Duration::from_millis(ch.delivery.respondio_timeout_ms),
            );
            let to_respondio = LaneCtx::new(
                ch.name.clone(),
                Lane::RespondIo,
                store.clone(),
                Arc::new(ToRespondIo {
                    client,
                    max_events_per_call: ch.delivery.max_events_per_call,
                }),
                ch.delivery.clone(),
                ch.respondio_rate_limit,
                waiters.clone(),
            );
            let to_provider = LaneCtx::new(
                ch.name.clone(),
                Lane::Provider,
                store.clone(),
                Arc::new(ToProvider {
                    provider: provider.clone(),
                }),
                ch.delivery.clone(),
                provider.rate_limit(),
                waiters.clone(),
            );
            to_provider.set_status_lane(&to_respondio);
            channel_log.add_secrets(&ch.name, channel_secrets(ch));
            to_respondio.set_channel_log(channel_log.clone());
            to_provider.set_channel_log(channel_log.clone());
            lanes.push(LaneRunner::new(to_respondio.clone()).await?);
            lanes.push(LaneRunner::new(to_provider.clone()).await?);
            by_respondio_id.insert(ch.respondio_channel_id.clone(), ch.name.clone());
            channels.insert(
                ch.name.clone(),
                Arc::new(Channel {
                    cfg: ch.clone(),
                    provider,
                    to_respondio,
                    to_provider,
                    waiters,
                }),
            );
        }
        let media = Arc::new(crate::media::MediaProxy::open(
            &cfg.media,
            &cfg.store.path,
            &cfg.server.public_url,
        )?);
        let state = Arc::new(AppState {
            media,
            cfg,
            store,
            admin_store,
            channel_log,
            lane_history,
            channels,
            by_respondio_id,
            metrics: crate::http::metrics::handle(),
        });
        Ok(App {
            state,
            lanes,
            channel_log_rx,
        })
    }

    /// Serves on `listener` until `shutdown` fires, then stops accepting, lets lanes
    /// finish their in-flight attempts, and returns.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let App {
            state,
            lanes,
            channel_log_rx,
        } = self;
        // Bound before anything starts, so a taken port fails the start.
        let admin_listener = match state.cfg.server.admin_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (server.admin_listen): {e}")
            })?),
            None => None,
        };
        let log_stop = CancellationToken::new();
        let log_writer = tokio::spawn(ChannelLog::run_writer(
            channel_log_rx,
            state.admin_store.clone(),
            log_stop.clone(),
        ));
        let lane_stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for lane in lanes {
            tasks.spawn(lane.run(lane_stop.clone()));
        }
        tasks.spawn(housekeeping(state.clone(), lane_stop.clone()));
        // Only the admin API reads the history: without an admin token nothing is sampled.
        if !state.cfg.admin.tokens.is_empty() {
            tasks.spawn(state.lane_history.clone().run(lane_stop.clone()));
        }
        let router = crate::http::router(state.clone());
        tracing::info!(listen = %listener.local_addr()?, channels = state.channels.len(), "rio-bridge serving");
        let grace = Duration::from_millis(state.cfg.server.shutdown_grace_ms);
        let header_timeout = Duration::from_millis(state.cfg.server.header_read_timeout_ms);
        let served = tokio::spawn(crate::http::serve::serve(
            listener,
            router,
            shutdown.clone(),
            header_timeout,
        ));
        // The internal listener: /admin and /metrics only, never on the public one.
        let internal = admin_listener.map(|l| {
            tracing::info!(listen = ?l.local_addr().ok(), "admin API and metrics on the internal listener");
            tokio::spawn(crate::http::serve::serve(
                l,
                crate::http::internal_router(state.clone()),
                shutdown.clone(),
                header_timeout,
            ))
        });
        shutdown.cancelled().await;
        tracing::info!(
            "shutting down: no new connections; finishing in-flight requests and attempts"
        );
        // One deadline for the whole shutdown: requests first, then the lanes' in-flight
        // attempts, so the process exits within `shutdown_grace_ms` (an orchestrator's
        // SIGKILL after its own grace would leave attempts ambiguous).
        let deadline = tokio::time::Instant::now() + grace;
        let mut served = served;
        if tokio::time::timeout_at(deadline, &mut served)
            .await
            .is_err()
        {
            tracing::warn!("requests still open at the end of the grace period; closing them");
            served.abort();
        }
        lane_stop.cancel();
        let lanes_done = tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        });
        if lanes_done.await.is_err() {
            tracing::warn!(
                "attempts still in flight at the end of the grace period; they will be ambiguous at the next start"
            );
        }
        if let Some(internal) = internal {
            internal.abort();
        }
        // The lanes' last exchanges are queued by now: write them (briefly) and stop.
        log_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), log_writer).await;
        Ok(())
    }
}

/// Publishes queue gauges (and the lanes' backlog counts: the first tick is at once, so
/// start-up does not wait for a count of a million queued items) and prunes old rows,
/// off the lanes' path.
async fn housekeeping(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_prune = 0i64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        crate::http::metrics::publish_lane_stats(&state).await;
        let now = now_ms();
        if now - last_prune >= 60_000 {
            last_prune = now;
            let retention = (state.cfg.store.retention_secs as i64) * 1000;
            match state.store.prune(now, retention).await {
                Ok(r) if r.items + r.dedupe + r.parked + r.attempts > 0 => {
                    tracing::info!(?r, "pruned")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "prune failed"),
            }
            let media = state.media.clone();
            match tokio::task::spawn_blocking(move || media.prune()).await {
                Ok(n) if n > 0 => tracing::info!(files = n, "pruned expired media"),
                _ => {}
            }
            prune_channel_logs(&state, now).await;
        }
    }
}

/// Deletes expired channel logs in small batches (each its own short write), so a large
/// backlog of old rows never holds the writer for long; at most a bounded number of
/// batches per housekeeping round.
async fn prune_channel_logs(state: &AppState, now: i64) {
    const BATCH: usize = 2000;
    const ROUNDS: usize = 20;
    let cutoff = now - (state.cfg.store.channel_log_retention_secs as i64).saturating_mul(1000);
    let mut total = 0u64;
    for _ in 0..ROUNDS {
        match state.admin_store.prune_channel_logs(cutoff, BATCH).await {
            Ok(n) => {
                total += n;
                if (n as usize) < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "channel log prune failed");
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    if total > 0 {
        tracing::info!(rows = total, "channel logs pruned");
    }
}
