//! Wiring: builds channels, lanes and the router from a config, runs them until shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::channel_log::ChannelLog;
use crate::clock::now_ms;
use crate::config::{ChannelConfig, Config};
use crate::lanes::deliver::{ToProvider, ToRespondIo};
use crate::lanes::lease::{self, LeaseTiming};
use crate::lanes::{LaneCtx, Waiters};
use crate::providers::{Provider, ProviderEnv};
use crate::respondio::client::RespondIoClient;
use crate::secret::Secret;
use crate::store::admin::AdminStore;
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

/// The configured channels. Replaced as a whole on a config reload; a request keeps the
/// `Arc<Channel>` it started with, so a reload never cuts one off.
#[derive(Default)]
pub struct ChannelSet {
    pub by_name: HashMap<String, Arc<Channel>>,
    /// respond.io channel id → our channel name, for `POST /message`.
    pub by_respondio_id: HashMap<String, String>,
}

pub struct AppState {
    /// The config the process started with. Channel settings may since have been reloaded:
    /// read them from [`Channel::cfg`]; server, store and media settings need a restart.
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    /// The same store, seen through the admin API's queries (and the channel-log sink).
    admin_store: Arc<dyn AdminStore>,
    /// Where HTTP exchanges are recorded (see `channel_log`).
    pub channel_log: ChannelLog,
    channels: std::sync::RwLock<Arc<ChannelSet>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub media: Arc<crate::media::MediaProxy>,
    /// The last hour of every lane, for the console's plots.
    pub lane_history: Arc<crate::lane_history::LaneHistory>,
}

impl AppState {
    /// The store, seen through the admin API's queries.
    pub fn admin_store(&self) -> &Arc<dyn AdminStore> {
        &self.admin_store
    }

    /// A snapshot of the channels.
    pub fn channels(&self) -> Arc<ChannelSet> {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels().by_name.get(name).cloned()
    }

    pub fn channel_by_respondio_id(&self, id: &str) -> Option<Arc<Channel>> {
        let set = self.channels();
        let name = set.by_respondio_id.get(id)?;
        set.by_name.get(name).cloned()
    }

    fn replace_channels(&self, set: ChannelSet) {
        *self.channels.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
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
        // A request waiting for a new connection has its rate slot placed when it leaves.
        .connector_layer(crate::lanes::gate::ConnectGateLayer)
        .build()?)
}

/// Builds every channel of `cfg` with its provider and lanes. `waiters` carries the
/// `/message` waiters of channels that existed before a reload, so a request waiting
/// across the reload hears the new lane's outcome.
async fn build_channels(
    cfg: &Config,
    store: &Arc<dyn Store>,
    channel_log: &ChannelLog,
    waiters: &HashMap<String, Arc<Waiters>>,
) -> anyhow::Result<(ChannelSet, Vec<(Arc<LaneCtx>, CrashPolicy)>)> {
    let respondio_http = http_client(30_000)?;
    let mut set = ChannelSet::default();
    let mut lanes = Vec::new();
    for ch in &cfg.channels {
        let provider = build_provider(cfg, ch)?;
        let waiters = waiters.get(&ch.name).cloned().unwrap_or_default();
        let client = RespondIoClient::new(
            respondio_http.clone(),
            ch.respondio_webhook_url.clone(),
            ch.respondio_token.clone(),
            ch.respondio_token_next.clone(),
            ch.respondio_channel_id.clone(),
            Duration::from_millis(ch.delivery.respondio_timeout_ms),
        )
        .remember_in(store.clone(), format!("respondio_token_in_use/{}", ch.name))
        .await;
        warn_open_rotations(ch);
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
        channel_log.set_secrets(&ch.name, channel_secrets(ch));
        if channel_log.is_enabled() {
            to_respondio.set_channel_log(channel_log.clone());
            to_provider.set_channel_log(channel_log.clone());
        }
        let policy = CrashPolicy {
            on_crash: ch.delivery.on_crash,
            ambiguous_retry_cap: ch.delivery.ambiguous_retry_cap,
        };
        lanes.push((to_respondio.clone(), policy));
        lanes.push((to_provider.clone(), policy));
        set.by_respondio_id
            .insert(ch.respondio_channel_id.clone(), ch.name.clone());
        set.by_name.insert(
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
    Ok((set, lanes))
}

fn build_provider(cfg: &Config, ch: &ChannelConfig) -> anyhow::Result<Arc<dyn Provider>> {
    crate::providers::build(
        ch,
        ProviderEnv {
            channel: ch.name.clone(),
            public_url: cfg.server.public_url.trim_end_matches('/').to_string(),
            client: http_client(ch.delivery.provider_timeout_ms)?,
        },
    )
}

/// Says at start-up and on each reload which secrets still accept an earlier value, so an
/// operator does not leave a rotation open for good.
fn warn_open_rotations(ch: &ChannelConfig) {
    let open: usize = channel_secrets(ch).iter().map(|s| s.previous_count()).sum();
    if open > 0 || ch.respondio_token_next.is_some() {
        tracing::info!(channel = %ch.name, earlier_values_accepted = open,
            respondio_token_next = ch.respondio_token_next.is_some(),
            "a secret rotation is open: remove the old values from the config once the other side uses the new ones");
    }
}

/// The secrets of a channel's config, for value redaction in channel logs. A provider's
/// own credentials are listed here as each provider section is added.
pub fn channel_secrets(ch: &ChannelConfig) -> Vec<&Secret> {
    let mut out = vec![&ch.respondio_token, &ch.webhook_secret];
    out.extend(ch.respondio_token_next.as_ref());
    if let Some(cs) = &ch.clicksend {
        out.push(&cs.api_key);
    }
    if let Some(tw) = &ch.twilio {
        out.push(&tw.auth_token);
        out.extend(tw.api_key_secret.as_ref());
    }
    if let Some(vo) = &ch.vonage {
        out.extend([&vo.api_secret, &vo.signature_secret]);
    }
    if let Some(tg) = &ch.telegram {
        out.extend([&tg.bot_token, &tg.secret_token]);
    }
    if let Some(pl) = &ch.plivo {
        out.push(&pl.auth_token);
        out.extend(pl.main_auth_token.as_ref());
    }
    if let Some(http) = &ch.http {
        out.extend(http.secrets.values());
    }
    out
}

/// A running gateway: its state, and the lane tasks to stop on shutdown.
pub struct App {
    pub state: Arc<AppState>,
    /// Every lane with its crash policy: each runs while this node holds its lease.
    lanes: Vec<(Arc<LaneCtx>, CrashPolicy)>,
    channel_log_rx: tokio::sync::mpsc::Receiver<crate::store::admin::ChannelLogRow>,
}

impl App {
    /// Opens the store, recovers what a crash left in flight, and prepares every lane.
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        let (store, admin_store, lane_history) = match &cfg.store.url {
            Some(url) => {
                let pg = Arc::new(PgStore::connect(&cfg.store, url.expose()).await?);
                let store: Arc<dyn Store> = pg.clone();
                let admin_store: Arc<dyn AdminStore> = pg.clone();
                let lane_history = Arc::new(crate::lane_history::LaneHistory::new(
                    cfg.channels.iter().map(|c| c.name.clone()),
                    store.clone(),
                    pg,
                ));
                (store, admin_store, lane_history)
            }
            None => {
                let sqlite = Arc::new(SqliteStore::open(&cfg.store)?);
                let store: Arc<dyn Store> = sqlite.clone();
                let admin_store: Arc<dyn AdminStore> = sqlite.clone();
                let lane_history = Arc::new(crate::lane_history::LaneHistory::new(
                    cfg.channels.iter().map(|c| c.name.clone()),
                    store.clone(),
                    sqlite,
                ));
                (store, admin_store, lane_history)
            }
        };
        let (channel_log, channel_log_rx) = ChannelLog::new();
        let channel_log = if cfg.store.channel_logs {
            channel_log
        } else {
            channel_log.disabled()
        };
        let (channels, lanes) = build_channels(&cfg, &store, &channel_log, &HashMap::new()).await?;
        let media = Arc::new(crate::media::MediaProxy::open(
            &cfg.media,
            &cfg.store.path,
            &cfg.server.public_url,
        )?);
        let state = Arc::new(AppState {
            media,
            cfg,
            store,
            channels: std::sync::RwLock::new(Arc::new(channels)),
            admin_store,
            channel_log,
            lane_history,
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
        self.run_with_reloads(listener, shutdown, None).await
    }

    /// As [`App::run`], and applies every config that arrives on `reloads` (`serve` sends
    /// one per SIGHUP) without dropping a request: see [`reload`].
    pub async fn run_with_reloads(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
        mut reloads: Option<tokio::sync::mpsc::Receiver<Config>>,
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
        let mut generation = Generation::start(lanes, LeaseTiming::from_config(&state.cfg.store));
        let house_stop = CancellationToken::new();
        let house = tokio::spawn(housekeeping(state.clone(), house_stop.clone()));
        tokio::spawn(wake_on_other_nodes_work(state.clone(), house_stop.clone()));
        tokio::spawn(follow_other_nodes_pauses(state.clone(), house_stop.clone()));
        // Only the admin API reads the history: without an admin token nothing is sampled.
        if !state.cfg.admin.tokens.is_empty() {
            tokio::spawn(state.lane_history.clone().run(house_stop.clone()));
        }
        let router = crate::http::router(state.clone());
        tracing::info!(listen = %listener.local_addr()?, channels = state.channels().by_name.len(), "rio-bridge serving");
        let grace = Duration::from_millis(state.cfg.server.shutdown_grace_ms);
        let longest = state
            .cfg
            .channels
            .iter()
            .map(|c| {
                c.delivery
                    .respondio_timeout_ms
                    .max(c.delivery.provider_timeout_ms)
                    + 5_000
            })
            .max()
            .unwrap_or(0);
        if state.cfg.server.shutdown_grace_ms < longest {
            tracing::warn!(
                shutdown_grace_ms = state.cfg.server.shutdown_grace_ms,
                longest_attempt_ms = longest,
                "server.shutdown_grace_ms is shorter than the longest attempt: a stop may cut attempts, which are then ambiguous at the next start"
            );
        }
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
        loop {
            let next = async {
                match reloads.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                cfg = next => match cfg {
                    Some(cfg) => generation = reload(&state, cfg, generation).await,
                    None => reloads = None,
                },
            }
        }
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
        house_stop.cancel();
        generation.stop(deadline).await;
        // The lanes handed their queues back; attempts in flight finish and record their
        // outcomes on their own. Wait for them: one cut now is ambiguous at the next start.
        let live = || state.store.live_attempts();
        while live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if live() > 0 {
            tracing::warn!(
                inflight = live(),
                "attempts still in flight at the end of the grace period (server.shutdown_grace_ms); they will be ambiguous at the next start"
            );
        }
        let _ = house.await;
        if let Some(internal) = internal {
            internal.abort();
        }
        // The lanes' last exchanges are queued by now: write them (briefly) and stop.
        log_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), log_writer).await;
        Ok(())
    }
}

/// The lane tasks started together (at start-up, or by one reload).
struct Generation {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Generation {
    /// Each lane runs under its lease keeper: it takes the lane's lease (SQLite grants it at
    /// once), recovers what an earlier owner left in flight, seeds its limiter from the
    /// attempt log, and runs while it holds the lease.
    fn start(lanes: Vec<(Arc<LaneCtx>, CrashPolicy)>, timing: LeaseTiming) -> Generation {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for (lane, policy) in lanes {
            tasks.spawn(lease::keep(lane, policy, timing, stop.clone()));
        }
        Generation { stop, tasks }
    }

    /// Stops the lanes (each finishes or hands back its in-flight work); false if some
    /// were still draining at `deadline`.
    async fn stop(mut self, deadline: tokio::time::Instant) -> bool {
        self.stop.cancel();
        tokio::time::timeout_at(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok()
    }
}

/// Applies a reloaded config. Channel settings (tokens, secrets, provider credentials,
/// rates, retry policy, channels added or removed) take effect; server, store and media
/// settings need a restart and are kept. Providers are built first, so a config that
/// cannot work leaves everything as it was. Then the lanes stop (finishing or handing
/// back in-flight attempts), the channel set is swapped, and new lanes start: they seed
/// their rate limiters from the attempt log, so a reload never bursts past a limit.
/// Requests in flight keep the channel they started with; `/message` waiters carry over.
async fn reload(state: &Arc<AppState>, new: Config, old: Generation) -> Generation {
    let restart_only = [
        (
            "server",
            format!("{:?}", state.cfg.server) != format!("{:?}", new.server),
        ),
        (
            "store",
            format!("{:?}", state.cfg.store) != format!("{:?}", new.store),
        ),
        (
            "media",
            format!("{:?}", state.cfg.media) != format!("{:?}", new.media),
        ),
    ];
    for (section, changed) in restart_only {
        if changed {
            tracing::warn!(
                section,
                "config reload: [{section}] changed; it takes effect only after a restart"
            );
        }
    }
    let mut merged = state.cfg.clone();
    merged.channels = new.channels;
    if let Some(e) = merged
        .channels
        .iter()
        .find_map(|ch| build_provider(&merged, ch).err())
    {
        tracing::error!(error = %e, "config reload refused; the running config stays");
        return old;
    }
    let before = state.channels();
    let waiters: HashMap<String, Arc<Waiters>> = before
        .by_name
        .iter()
        .map(|(n, c)| (n.clone(), c.waiters.clone()))
        .collect();
    // The old lanes stop at once and hand their queues back; their attempts in flight
    // finish under the tenure that started them and record their outcomes (the new lanes
    // leave those items alone until then, see `store::LiveAttempts`).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    if !old.stop(deadline).await {
        tracing::warn!("config reload: some lanes were slow to stop");
    }
    match build_channels(&merged, &state.store, &state.channel_log, &waiters).await {
        Ok((set, lanes)) => {
            let added: Vec<&String> = set
                .by_name
                .keys()
                .filter(|n| !before.by_name.contains_key(*n))
                .collect();
            let removed: Vec<&String> = before
                .by_name
                .keys()
                .filter(|n| !set.by_name.contains_key(*n))
                .collect();
            tracing::info!(
                channels = set.by_name.len(),
                ?added,
                ?removed,
                "config reloaded"
            );
            if !removed.is_empty() {
                tracing::warn!(
                    ?removed,
                    "removed channels keep their queued items in the store (parked: /admin/lanes lists them with configured = false, rio_unconfigured_items counts them) until they are configured again"
                );
            }
            // A channel whose provider changed keeps its queue: sends are stored as
            // respond.io's message, so the new provider sends them. Receipts for sends the
            // old provider made reach the new provider's parser (unreadable ones are kept
            // raw, as any).
            let changed: Vec<(&String, &str, &str)> = set
                .by_name
                .iter()
                .filter_map(|(name, ch)| {
                    let old_ch = before.by_name.get(name)?;
                    (old_ch.cfg.provider != ch.cfg.provider).then_some((
                        name,
                        old_ch.cfg.provider.as_str(),
                        ch.cfg.provider.as_str(),
                    ))
                })
                .collect();
            if !changed.is_empty() {
                let stats = state.store.lane_stats().await.unwrap_or_default();
                for (name, from, to) in changed {
                    let queued = stats
                        .iter()
                        .find(|s| &s.channel == name && s.lane == Lane::Provider)
                        .map_or(0, |s| s.pending);
                    tracing::warn!(channel = %name, from, to, queued,
                        "config reload: the channel's provider changed; its queued sends go out through the new provider");
                }
            }
            state.replace_channels(set);
            Generation::start(lanes, LeaseTiming::from_config(&state.cfg.store))
        }
        Err(e) => {
            // The store refused (the providers built): restart the channels as they were.
            tracing::error!(error = %e, "config reload failed; restarting the previous channels");
            let mut previous = state.cfg.clone();
            previous.channels = before.by_name.values().map(|c| c.cfg.clone()).collect();
            match build_channels(&previous, &state.store, &state.channel_log, &waiters).await {
                Ok((set, lanes)) => {
                    state.replace_channels(set);
                    Generation::start(lanes, LeaseTiming::from_config(&state.cfg.store))
                }
                Err(e) => {
                    tracing::error!(error = %e, "lanes could not restart; /readyz stays red until the next reload or restart");
                    Generation::start(Vec::new(), LeaseTiming::from_config(&state.cfg.store))
                }
            }
        }
    }
}

/// Applies a pause or resume an operator made on any node to this node's lane, read back
/// from the store (the notice may be late, or one of several: the store has the last word).
async fn follow_other_nodes_pauses(state: Arc<AppState>, stop: CancellationToken) {
    let Some(mut signals) = state.store.pause_signals() else {
        return;
    };
    loop {
        let signal = tokio::select! {
            s = signals.recv() => s,
            _ = stop.cancelled() => return,
        };
        let lanes: Vec<(String, Lane)> = match signal {
            Ok(one) => vec![one],
            // Missed some: re-read every lane's pause.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state
                .channels()
                .by_name
                .keys()
                .flat_map(|c| [(c.clone(), Lane::RespondIo), (c.clone(), Lane::Provider)])
                .collect(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        for (channel, lane) in lanes {
            let Some(c) = state.channel(&channel) else {
                continue;
            };
            let ctx = match lane {
                Lane::RespondIo => c.to_respondio.clone(),
                Lane::Provider => c.to_provider.clone(),
            };
            match state.store.paused_until(&channel, lane).await {
                Ok(until) if until != ctx.paused_until() => ctx.set_paused_until(until),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, channel = %channel, "cannot read a lane's pause")
                }
            }
        }
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
                for c in state.channels().by_name.values() {
                    c.to_respondio.wake();
                    c.to_provider.wake();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How long one prune cycle may run before housekeeping gets back to its gauges. Each
/// batch inside it is a short write of its own; a cycle that is not caught up when its
/// budget is spent is continued at the next tick, not a minute later.
const PRUNE_BUDGET: Duration = Duration::from_secs(4);

/// Publishes queue gauges (and the lanes' backlog counts: the first tick is at once, so
/// start-up does not wait for a count of a million queued items) and prunes old rows,
/// off the lanes' path: once a minute when retention is caught up, at every tick while it
/// is behind (so it keeps up with any sustained ingest the store can take).
async fn housekeeping(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_prune = 0i64;
    let mut behind = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        crate::http::metrics::publish_lane_stats(&state).await;
        let now = now_ms();
        if behind || now - last_prune >= 60_000 {
            last_prune = now;
            let retention = (state.cfg.store.retention_secs as i64) * 1000;
            behind = false;
            match crate::store::prune(&*state.store, now, retention, PRUNE_BUDGET).await {
                Ok(r) => {
                    behind |= !r.caught_up;
                    if r.rows() > 0 {
                        tracing::info!(?r, "pruned");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "prune failed"),
            }
            let media = state.media.clone();
            match tokio::task::spawn_blocking(move || media.prune()).await {
                Ok(n) if n > 0 => tracing::info!(files = n, "pruned expired media"),
                _ => {}
            }
            behind |= !prune_channel_logs(&state, now).await;
        }
    }
}

/// Deletes expired channel logs in small batches (each its own short write, on the
/// `at_ms` index), so a large backlog of old rows never holds the writer for long, until
/// caught up or [`PRUNE_BUDGET`] is spent. Returns whether it caught up.
async fn prune_channel_logs(state: &AppState, now: i64) -> bool {
    let cutoff = now - (state.cfg.store.channel_log_retention_secs as i64).saturating_mul(1000);
    let started = std::time::Instant::now();
    let mut total = 0u64;
    let caught_up = loop {
        match state
            .admin_store
            .prune_channel_logs(cutoff, crate::store::PRUNE_BATCH)
            .await
        {
            Ok(n) => {
                total += n;
                if (n as usize) < crate::store::PRUNE_BATCH {
                    break true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "channel log prune failed");
                break true;
            }
        }
        if started.elapsed() >= PRUNE_BUDGET {
            break false;
        }
        tokio::task::yield_now().await;
    };
    if total > 0 {
        tracing::info!(rows = total, "channel logs pruned");
    }
    caught_up
}
