//! Wiring: builds channels, lanes and the router from a config, runs them until shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{ChannelConfig, Config};
use crate::lanes::deliver::{ToProvider, ToRespondIo};
use crate::lanes::lease::{self, LeaseTiming};
use crate::lanes::{LaneCtx, Waiters};
use crate::providers::{Provider, ProviderEnv};
use crate::respondio::client::RespondIoClient;
use crate::store::postgres::PgStore;
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
    pub channels: HashMap<String, Arc<Channel>>,
    /// respond.io channel id → our channel name, for `POST /message`.
    pub by_respondio_id: HashMap<String, String>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
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

/// A running gateway: its state, and the lane tasks to stop on shutdown.
pub struct App {
    pub state: Arc<AppState>,
    /// Every lane with its crash policy: each runs while this node holds its lease.
    lanes: Vec<(Arc<LaneCtx>, CrashPolicy)>,
}

/// The store the config names: PostgreSQL when `store.url` is set, else the SQLite file.
pub async fn open_store(cfg: &crate::config::StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &cfg.url {
        Some(url) => Arc::new(PgStore::connect(cfg, url.expose()).await?),
        None => Arc::new(SqliteStore::open(cfg)?),
    })
}

impl App {
    /// Opens the store and prepares every lane. What a crash left in flight is recovered
    /// per lane by the node that takes the lane's lease, before the lane claims anything.
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        let store = open_store(&cfg.store).await?;
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
            let policy = CrashPolicy {
                on_crash: ch.delivery.on_crash,
                ambiguous_retry_cap: ch.delivery.ambiguous_retry_cap,
            };
            lanes.push((to_respondio.clone(), policy));
            lanes.push((to_provider.clone(), policy));
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
        let state = Arc::new(AppState {
            cfg,
            store,
            channels,
            by_respondio_id,
            metrics: crate::http::metrics::handle(),
        });
        Ok(App { state, lanes })
    }

    /// Serves on `listener` until `shutdown` fires, then stops accepting, lets lanes
    /// finish their in-flight attempts, and returns.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let App { state, lanes } = self;
        let lane_stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let timing = LeaseTiming::from_config(&state.cfg.store);
        for (lane, policy) in lanes {
            tasks.spawn(lease::keep(lane, policy, timing, lane_stop.clone()));
        }
        tasks.spawn(wake_on_other_nodes_work(state.clone(), lane_stop.clone()));
        tasks.spawn(housekeeping(state.clone(), lane_stop.clone()));
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
        Ok(())
    }
}

/// Wakes a lane this node owns when another node committed work for it.
async fn wake_on_other_nodes_work(state: Arc<AppState>, stop: CancellationToken) {
    let Some(mut signals) = state.store.work_signals() else {
        return;
    };
    let lane_of = |channel: &str, lane: Lane| {
        state.channel(channel).map(|c| match lane {
            Lane::RespondIo => c.to_respondio.clone(),
            Lane::Provider => c.to_provider.clone(),
        })
    };
    loop {
        let signal = tokio::select! {
            s = signals.recv() => s,
            _ = stop.cancelled() => return,
        };
        match signal {
            Ok((channel, lane)) => {
                if let Some(l) = lane_of(&channel, lane) {
                    l.wake();
                }
            }
            // Missed some: wake every lane, each looks at the store once.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                for c in state.channels.values() {
                    c.to_respondio.wake();
                    c.to_provider.wake();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
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
        }
    }
}
