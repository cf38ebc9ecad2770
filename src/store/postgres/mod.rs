//! The PostgreSQL store: several rio-bridge nodes share one database.
//!
//! Same tables and behaviour as the SQLite store, with what a shared database needs:
//! - Lanes are owned through lease rows (`lane_leases`). A node acquires a lane when nobody
//!   holds it or the holder's lease expired; each acquisition bumps the lane's `epoch`.
//!   This store remembers the epochs it holds, and every `claim`, `take_head`, `finish` and
//!   `release` first locks the lease row (`FOR KEY SHARE`) and checks the epoch in the same
//!   transaction: a node that lost a lane cannot write to it any more, and a takeover (which
//!   locks the row `FOR UPDATE`) waits for a write in progress to commit.
//! - Claims use `FOR UPDATE SKIP LOCKED`, so two claimers never hand out one queue twice.
//! - Writes that may drop a queue row lock it first (`FOR UPDATE`), so an item committed
//!   by another node at the same moment is never left without its queue.
//! - The status machine locks the send's row; a provider id is serialised by an advisory
//!   lock, so a receipt and the send's response can never miss each other.
//! - Work committed for a lane this node does not own is announced with `NOTIFY rio_work_<schema hash>`;
//!   every node listens and wakes its lane (the lanes also poll, so a lost notification
//!   only delays work by a second).

use crate::store::schema::{self, Compat, MIN_READER_KEY, Migration};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::now_ms;
use crate::config::StoreConfig;
use tx::{ITEM_COLUMNS, PgTx, item_from_row};

/// Runs a rule of `store::rules` in one transaction of this node and commits it; an error
/// drops the transaction (rolled back).
macro_rules! in_tx {
    ($store:expr, |$t:ident| $rule:expr) => {{
        let mut client = $store.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let out = {
            let $t = &mut PgTx {
                tx: &tx,
                store: $store,
            };
            $rule.await?
        };
        tx.commit().await.map_err(db)?;
        Ok(out)
    }};
}

mod admin;
pub mod aged;
pub mod sql;
mod tx;

const SCHEMA_V1: &str = include_str!("schema_v1.sql");
/// Channel logs, the audit log and the admin listings' indexes (see `postgres_admin`).
const SCHEMA_V2: &str = include_str!("schema_v2.sql");
/// Indexes for retention and claims on an aged store.
const SCHEMA_V3: &str = include_str!("schema_v3.sql");
/// (version, SQL): applied in order, each once, under an advisory lock so nodes starting
/// together do not race.
/// When an item was last queued (its age for `max_age_secs`), and the index of the sweep
/// that expires items a blocked lane holds back.
const SCHEMA_V4: &str = include_str!("schema_v4.sql");
/// `readable_by`: see `store::schema` (the same as SQLite's).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: SCHEMA_V1,
        readable_by: 1,
    },
    Migration {
        version: 2,
        sql: SCHEMA_V2,
        readable_by: 1,
    },
    Migration {
        version: 3,
        sql: SCHEMA_V3,
        readable_by: 2,
    },
    Migration {
        version: 4,
        sql: SCHEMA_V4,
        readable_by: 3,
    },
];

/// The schema version this build writes.
pub const LATEST_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;
/// Any constant: the key of the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x7269_6f62_7269_6467;
pub(super) const NOTIFY_CHANNEL: &str = "rio_work";

/// NOTIFY channels are database-wide, but a deployment is a schema: each schema gets its
/// own channel, so two deployments (or two test schemas) sharing a database never wake each
/// other. A hash keeps the name short and a plain identifier whatever the schema is called.
pub(super) fn notify_channel_for(schema: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(schema.as_bytes());
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{NOTIFY_CHANNEL}_{hex}")
}
/// On `NOTIFY_CHANNEL`, a payload `pause:{lane}:{channel}` says that lane's pause changed
/// (an older node's parser ignores it: `pause` is no lane code).
pub(super) const PAUSE_PREFIX: &str = "pause:";

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub struct PgStore {
    pool: Pool,
    /// Who this process is in `lane_leases`: unique per process, so a restarted node never
    /// mistakes its predecessor's lease for its own.
    node: String,
    lease_ttl_ms: i64,
    /// Epochs of the lanes this node holds, by (channel, lane code).
    held: Mutex<HashMap<(String, i64), i64>>,
    /// Attempts in flight (see [`LiveAttempts`]).
    live: LiveAttempts,
    dedupe_ttl_ms: i64,
    parked_ttl_ms: i64,
    signals: broadcast::Sender<(String, Lane)>,
    /// The NOTIFY channel of this store's schema (see [`notify_channel_for`]).
    notify_channel: String,
    /// Lanes whose pause an operator changed (on any node, see `PAUSE_PREFIX`).
    pause_signals: broadcast::Sender<(String, Lane)>,
    stop_listener: CancellationToken,
    /// The bound on requests holding or waiting for a connection (see [`Admission`]).
    admission: Admission,
}

pub(super) fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn fenced(channel: &str, lane: Lane) -> StoreError {
    StoreError::Fenced(format!("{channel}/{}", lane.name()))
}

fn pg_config(url: &str) -> Result<tokio_postgres::Config> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| db(format!("store.url: {e}")))
}

/// TLS when the URL asks for it (`sslmode=require`), with the server's certificate checked
/// against the system's roots; plain otherwise (`prefer`, the libpq default, counts as
/// plain here: a connection that silently may or may not be encrypted helps nobody).
fn tls_for(cfg: &tokio_postgres::Config) -> Result<Option<MakeRustlsConnect>> {
    if cfg.get_ssl_mode() != SslMode::Require {
        return Ok(None);
    }
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| db(format!("TLS setup: {e}")))?
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// One connection outside the pool, driven in the background; its notifications arrive on
/// the receiver.
async fn connect_one(
    cfg: &tokio_postgres::Config,
    tls: &Option<MakeRustlsConnect>,
) -> Result<(
    Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (client, driver) = match tls {
        Some(t) => {
            let (c, conn) = cfg.connect(t.clone()).await.map_err(db)?;
            (c, tokio::spawn(drive(conn, tx)))
        }
        None => {
            let (c, conn) = cfg.connect(NoTls).await.map_err(db)?;
            (c, tokio::spawn(drive(conn, tx)))
        }
    };
    Ok((client, rx, driver))
}

/// Runs a connection, forwarding notifications, until it closes.
async fn drive<S, T>(mut conn: Connection<S, T>, out: tokio::sync::mpsc::UnboundedSender<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => {
                let _ = out.send(n.payload().to_string());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "store connection lost");
                break;
            }
        }
    }
}

/// Applies pending migrations. Safe to run from several nodes at once.
pub async fn migrate(url: &str) -> Result<i64> {
    let cfg = pg_config(url)?;
    let (mut client, _, driver) = connect_one(&cfg, &tls_for(&cfg)?).await?;
    let out = migrate_client(&mut client).await;
    drop(client);
    let _ = driver.await;
    out
}

async fn migrate_client(client: &mut tokio_postgres::Client) -> Result<i64> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS rio_schema (version BIGINT NOT NULL)")
        .await
        .map_err(db)?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM rio_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    if current > LATEST_VERSION {
        let min_reader: Option<i64> = tx
            .query_opt("SELECT v FROM meta WHERE k = $1", &[&MIN_READER_KEY])
            .await
            .map_err(db)?
            .and_then(|r| r.get::<_, String>(0).parse().ok());
        return match schema::compat(current, min_reader, LATEST_VERSION) {
            Compat::TooNew => Err(StoreError::Unavailable(format!(
                "the database is at schema version {current}, newer than this build knows \
                 ({LATEST_VERSION}) and not runnable by it: run the newer release"
            ))),
            _ => {
                tracing::warn!(
                    found = current,
                    known = LATEST_VERSION,
                    "the database was migrated by a newer release that this one may run beside (a rolling upgrade): upgrade this node too"
                );
                Ok(current)
            }
        };
    }
    let mut version = current;
    for m in MIGRATIONS {
        if m.version > version {
            tx.batch_execute(m.sql).await.map_err(db)?;
            tx.execute("INSERT INTO rio_schema(version) VALUES ($1)", &[&m.version])
                .await
                .map_err(db)?;
            tx.execute(
                "INSERT INTO meta(k, v) VALUES ($1, $2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                &[&MIN_READER_KEY, &schema::min_reader(MIGRATIONS, m.version).to_string()],
            )
            .await
            .map_err(db)?;
            version = m.version;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(version)
}

fn node_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    format!("{host}/{}/{}", std::process::id(), ulid::Ulid::new())
}

impl PgStore {
    /// Connects, applies migrations and starts listening for other nodes' work.
    pub async fn connect(cfg: &StoreConfig, url: &str) -> Result<PgStore> {
        let pg = pg_config(url)?;
        let tls = tls_for(&pg)?;
        let mc = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &tls {
            Some(t) => Manager::from_config(pg.clone(), t.clone(), mc()),
            None => Manager::from_config(pg.clone(), NoTls, mc()),
        };
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(db)?;
        {
            let mut client = pool.get().await.map_err(db)?;
            let inner: &mut tokio_postgres::Client = &mut client;
            migrate_client(inner).await?;
        }
        let notify_channel = {
            let client = pool.get().await.map_err(db)?;
            let schema: String = client
                .query_one("SELECT current_schema()::text", &[])
                .await
                .map_err(db)?
                .get(0);
            notify_channel_for(&schema)
        };
        let (signals, _) = broadcast::channel(1024);
        let (pause_signals, _) = broadcast::channel(64);
        let stop = CancellationToken::new();
        tokio::spawn(listen_loop(
            pg,
            tls,
            notify_channel.clone(),
            signals.clone(),
            pause_signals.clone(),
            stop.clone(),
        ));
        Ok(PgStore {
            pool,
            node: node_name(),
            lease_ttl_ms: cfg.lease_ttl_ms as i64,
            held: Mutex::new(HashMap::new()),
            live: LiveAttempts::default(),
            dedupe_ttl_ms: (cfg.dedupe_ttl_secs as i64).saturating_mul(1000),
            parked_ttl_ms: (cfg.parked_receipt_ttl_secs as i64).saturating_mul(1000),
            signals,
            notify_channel,
            pause_signals,
            stop_listener: stop,
            admission: Admission::from_config(cfg),
        })
    }

    /// This process's name in `lane_leases`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A pooled connection. Waiting past the pool's timeout means every connection is
    /// busy with other requests: `Overloaded` (503 with `Retry-After`), not a fault.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                StoreError::Overloaded(
                    "no PostgreSQL connection came free within the pool's wait".into(),
                )
            }
            e => db(e),
        })
    }

    fn epoch(&self, channel: &str, lane: Lane) -> Option<i64> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(channel.to_string(), lane.code()))
            .copied()
    }

    fn set_epoch(&self, channel: &str, lane: Lane, epoch: Option<i64>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let key = (channel.to_string(), lane.code());
        match epoch {
            Some(e) => held.insert(key, e),
            None => held.remove(&key),
        };
    }

    /// The fence: the lane's lease row still carries our epoch. The row stays key-share
    /// locked until the transaction ends, so a takeover (which locks the row FOR UPDATE
    /// first) waits for this write to commit and cannot slip between check and commit.
    /// KEY SHARE, not SHARE: renewals update only non-key columns and so never wait behind
    /// (or get starved by) the stream of fenced writes.
    async fn fence(&self, tx: &Transaction<'_>, channel: &str, lane: Lane) -> Result<()> {
        let epoch = self
            .epoch(channel, lane)
            .ok_or_else(|| fenced(channel, lane))?;
        let row = opt(
            tx,
            sql::FENCE,
            &[&channel, &lane.code(), &self.node, &epoch],
        )
        .await?;
        match row {
            Some(_) => Ok(()),
            None => {
                self.set_epoch(channel, lane, None);
                Err(fenced(channel, lane))
            }
        }
    }

    /// The NOTIFY channel of this store's schema.
    pub(super) fn notify_channel(&self) -> &str {
        &self.notify_channel
    }

    /// Tells the lane's owner about new work, unless that is us (then the caller wakes
    /// the lane in-process). Delivered by PostgreSQL at commit.
    pub(super) async fn announce(
        &self,
        tx: &Transaction<'_>,
        channel: &str,
        lane: Lane,
    ) -> Result<()> {
        if self.epoch(channel, lane).is_none() {
            let payload = format!("{}:{channel}", lane.code());
            exec(
                tx,
                "SELECT pg_notify($1, $2)",
                &[&self.notify_channel.as_str(), &payload],
            )
            .await?;
        }
        Ok(())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop_listener.cancel();
    }
}

/// LISTENs on a dedicated connection and forwards `(channel, lane)` wake-ups; reconnects
/// after a failure.
async fn listen_loop(
    cfg: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    notify_channel: String,
    out: broadcast::Sender<(String, Lane)>,
    pauses: broadcast::Sender<(String, Lane)>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        match connect_one(&cfg, &tls).await {
            Ok((client, mut notes, driver)) => {
                if let Err(e) = client
                    .batch_execute(&format!("LISTEN \"{notify_channel}\""))
                    .await
                {
                    tracing::warn!(error = %e, "cannot LISTEN for other nodes' work");
                } else {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            p = notes.recv() => match p {
                                Some(p) => {
                                    let (p, to) = match p.strip_prefix(PAUSE_PREFIX) {
                                        Some(rest) => (rest.to_string(), &pauses),
                                        None => (p, &out),
                                    };
                                    if let Some((lane, channel)) = p.split_once(':')
                                        && let Ok(code) = lane.parse::<i64>()
                                    {
                                        let _ = to.send((channel.to_string(), Lane::from_code(code)));
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                }
                drop(client);
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to listen for other nodes' work"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

pub(super) async fn exec(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> Result<u64> {
    let stmt = tx.prepare_cached(sql).await.map_err(db)?;
    tx.execute(&stmt, p).await.map_err(db)
}

pub(super) async fn rows(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> Result<Vec<Row>> {
    let stmt = tx.prepare_cached(sql).await.map_err(db)?;
    tx.query(&stmt, p).await.map_err(db)
}

pub(super) async fn opt(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> Result<Option<Row>> {
    let stmt = tx.prepare_cached(sql).await.map_err(db)?;
    tx.query_opt(&stmt, p).await.map_err(db)
}

#[async_trait]
impl Store for PgStore {
    async fn ingest_inbound(
        &self,
        channel: &str,
        items: Vec<NewInbound>,
    ) -> Result<Vec<IngestResult>> {
        let _ticket = self.admission.admit(Class::Webhook)?;
        let ttl = self.dedupe_ttl_ms;
        in_tx!(self, |t| rules::ingest_inbound(
            t,
            channel,
            items,
            ttl,
            now_ms()
        ))
    }
    async fn store_unparseable(
        &self,
        channel: &str,
        route: &str,
        content_type: &str,
        body: Vec<u8>,
        reason: &str,
    ) -> Result<i64> {
        let _ticket = self.admission.admit(Class::Webhook)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let id: i64 = rows(
            &tx,
            "INSERT INTO raw_webhooks(channel, route, content_type, body, reason, received_ms)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&channel, &route, &content_type, &body, &reason, &now_ms()],
        )
        .await?[0]
            .get(0);
        tx.commit().await.map_err(db)?;
        Ok(id)
    }

    async fn accept_outbound(
        &self,
        channel: &str,
        item: NewOutbound,
        window_ms: i64,
    ) -> Result<AcceptedSend> {
        let _ticket = self.admission.admit(Class::Message)?;
        in_tx!(self, |t| rules::accept_outbound(
            t,
            channel,
            item,
            window_ms,
            now_ms()
        ))
    }

    async fn apply_receipts(
        &self,
        channel: &str,
        receipts: Vec<ReceiptIn>,
    ) -> Result<Vec<ReceiptResult>> {
        let _ticket = self.admission.admit(Class::Webhook)?;
        let (ttl, park_ttl) = (self.dedupe_ttl_ms, self.parked_ttl_ms);
        in_tx!(self, |t| rules::apply_receipts(
            t,
            channel,
            receipts,
            ttl,
            park_ttl,
            now_ms()
        ))
    }

    async fn claim(
        &self,
        channel: &str,
        lane: Lane,
        now: i64,
        limits: [usize; 2],
    ) -> Result<ClaimBatch> {
        in_tx!(self, |t| rules::claim(t, channel, lane, now, limits))
    }

    async fn head_items(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
    ) -> Result<Vec<Item>> {
        in_tx!(self, |t| rules::head_of_queue(
            t, channel, lane, qkey, limit
        ))
    }

    async fn take_head(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        how: TakeHead,
    ) -> Result<Head> {
        let head: Result<Head> = in_tx!(self, |t| rules::take_head(
            t,
            channel,
            lane,
            qkey,
            how,
            &self.live,
            now_ms()
        ));
        // Registered after the commit: until then another lane generation of this node
        // that sees the mark takes it for another node's attempt, which it leaves alone
        // until the deadline just the same.
        if let Ok(Head::Taken(items)) = &head {
            self.live.register(items, how.epoch);
        }
        head
    }

    async fn finish(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        ids: &[i64],
        fin: Finish,
        sent_at: i64,
        dur: i64,
    ) -> Result<bool> {
        let taken = taken_of(&self.live, ids, self.epoch(channel, lane).unwrap_or(0));
        let out: Result<bool> = in_tx!(self, |t| rules::finish(
            t,
            channel,
            lane,
            qkey,
            &taken,
            fin,
            sent_at,
            dur,
            now_ms()
        ));
        if matches!(out, Ok(_) | Err(StoreError::Fenced(_))) {
            self.live.remove(ids);
        }
        out
    }

    async fn release(&self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        in_tx!(self, |t| rules::release(t, channel, lane, qkey))
    }

    async fn expire_aged(
        &self,
        channel: &str,
        lane: Lane,
        before_ms: i64,
        reason: &str,
        limit: usize,
    ) -> Result<u64> {
        in_tx!(self, |t| rules::expire_aged(
            t,
            channel,
            lane,
            before_ms,
            reason,
            limit,
            now_ms()
        ))
    }

    /// Recovers every lane no live node holds: each is acquired, recovered and given back.
    /// Lanes another node holds are its own business.
    async fn recover(
        &self,
        policy: &std::collections::HashMap<String, CrashPolicy>,
    ) -> Result<RecoveryReport> {
        let lanes: Vec<(String, i64)> = {
            let client = self.client().await?;
            client
                .query(
                    "SELECT DISTINCT channel, lane FROM items WHERE state = 1
                     UNION SELECT DISTINCT channel, lane FROM queues WHERE claimed = 1",
                    &[],
                )
                .await
                .map_err(db)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        };
        let mut report = RecoveryReport::default();
        for (channel, lane) in lanes {
            let lane = Lane::from_code(lane);
            let held_before = self.epoch(&channel, lane).is_some();
            if !held_before && self.acquire_lane(&channel, lane).await?.is_none() {
                continue;
            }
            let p = policy.get(&channel).copied().unwrap_or_default();
            let r = self.recover_lane(&channel, lane, p).await;
            if !held_before {
                self.release_lane(&channel, lane).await?;
            }
            let r = r?;
            report.resent += r.resent;
            report.failed += r.failed;
        }
        Ok(report)
    }

    async fn recent_attempts(&self, channel: &str, lane: Lane, n: usize) -> Result<Vec<i64>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::RECENT_ATTEMPTS)
            .await
            .map_err(db)?;
        Ok(client
            .query(&stmt, &[&channel, &lane.code(), &(n as i64)])
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn set_paused_until(&self, channel: &str, lane: Lane, until_ms: i64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES ($1, $2, $3)
                 ON CONFLICT(channel, lane) DO UPDATE SET paused_until_ms = excluded.paused_until_ms",
                &[&channel, &lane.code(), &until_ms],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn paused_until(&self, channel: &str, lane: Lane) -> Result<i64> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT paused_until_ms FROM lane_state WHERE channel = $1 AND lane = $2",
                &[&channel, &lane.code()],
            )
            .await
            .map_err(db)?
            .map(|r| r.get(0))
            .unwrap_or(0))
    }

    async fn lane_stats(&self) -> Result<Vec<LaneStats>> {
        let client = self.client().await?;
        let mut out: Vec<LaneStats> = client
            .query(sql::LANE_PENDING, &[])
            .await
            .map_err(db)?
            .iter()
            .map(|r| LaneStats {
                channel: r.get(0),
                lane: Lane::from_code(r.get(1)),
                pending: r.get(2),
                oldest_pending_ms: None,
                dead: 0,
            })
            .collect();
        for s in &mut out {
            s.oldest_pending_ms = client
                .query_opt(sql::LANE_OLDEST_PENDING, &[&s.channel, &s.lane.code()])
                .await
                .map_err(db)?
                .map(|r| r.get(0));
        }
        let dead = client.query(sql::LANE_DEAD, &[]).await.map_err(db)?;
        for r in dead {
            let (channel, lane, n): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let lane = Lane::from_code(lane);
            match out
                .iter_mut()
                .find(|s| s.channel == channel && s.lane == lane)
            {
                Some(s) => s.dead = n,
                None => out.push(LaneStats {
                    channel,
                    lane,
                    pending: 0,
                    oldest_pending_ms: None,
                    dead: n,
                }),
            }
        }
        Ok(out)
    }

    async fn probe_write(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta(k, v) VALUES ('ready_probe', $1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                &[&now_ms().to_string()],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn note(&self, key: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        Ok(client
            .query_opt("SELECT v FROM meta WHERE k = $1", &[&key])
            .await
            .map_err(db)?
            .map(|r| r.get(0)))
    }

    async fn set_note(&self, key: &str, value: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta(k, v) VALUES ($1, $2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                &[&key, &value],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn prune_batch(&self, now: i64, retention_ms: i64, batch: usize) -> Result<PruneReport> {
        let client = self.client().await?;
        let cutoff = now - retention_ms;
        // Each statement commits on its own (no transaction): short, on an index, and rows
        // another node is pruning at the same moment are skipped rather than waited for.
        let mut counts = [0u64; 5];
        for (n, (sql, at)) in [
            (sql::PRUNE_ITEMS, cutoff),
            (sql::PRUNE_DEDUPE, now),
            (sql::PRUNE_PARKED, now),
            (sql::PRUNE_ATTEMPTS, cutoff),
            (sql::PRUNE_HISTORY, cutoff),
        ]
        .into_iter()
        .enumerate()
        {
            let stmt = client.prepare_cached(sql).await.map_err(db)?;
            counts[n] = client
                .execute(&stmt, &[&at, &(batch as i64)])
                .await
                .map_err(db)?;
        }
        let [items, dedupe, parked, attempts, history] = counts;
        Ok(PruneReport {
            items,
            dedupe,
            parked,
            attempts,
            history,
            caught_up: counts.iter().all(|&n| n < batch as u64),
        })
    }

    async fn item_by_mid(&self, channel: &str, mid: &str) -> Result<Option<Item>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE channel = $1 AND mid = $2 ORDER BY id LIMIT 1"
        );
        Ok(client
            .query_opt(&sql, &[&channel, &mid])
            .await
            .map_err(db)?
            .as_ref()
            .map(item_from_row))
    }

    async fn acquire_lane(&self, channel: &str, lane: Lane) -> Result<Option<LeaseGrant>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Wait for the old holder's fenced writes in progress (they key-share lock the row).
        exec(
            &tx,
            "SELECT 1 FROM lane_leases WHERE channel = $1 AND lane = $2 FOR UPDATE",
            &[&channel, &lane.code()],
        )
        .await?;
        // Free, expired, or (after this node lost track of it) ours: take it with a new
        // epoch. A live lease of another node is left alone.
        let row = tx
            .query_opt(
                "INSERT INTO lane_leases(channel, lane, node, epoch, expires_ms)
                 VALUES ($1, $2, $3, 1, rio_now_ms() + $4)
                 ON CONFLICT(channel, lane) DO UPDATE
                 SET node = excluded.node, epoch = lane_leases.epoch + 1, expires_ms = excluded.expires_ms
                 WHERE lane_leases.expires_ms <= rio_now_ms() OR lane_leases.node = excluded.node
                 RETURNING epoch",
                &[&channel, &lane.code(), &self.node, &self.lease_ttl_ms],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let grant = row.map(|r| LeaseGrant {
            epoch: r.get(0),
            ttl_ms: Some(self.lease_ttl_ms as u64),
        });
        self.set_epoch(channel, lane, grant.map(|g| g.epoch));
        Ok(grant)
    }

    async fn renew_lane(&self, channel: &str, lane: Lane) -> Result<bool> {
        let Some(epoch) = self.epoch(channel, lane) else {
            return Ok(false);
        };
        let client = self.client().await?;
        // Only a live lease is renewed: once expired it may have been recovered by
        // another node, and must be acquired afresh (new epoch, recovery).
        let n = client
            .execute(
                "UPDATE lane_leases SET expires_ms = rio_now_ms() + $5
                 WHERE channel = $1 AND lane = $2 AND node = $3 AND epoch = $4 AND expires_ms > rio_now_ms()",
                &[&channel, &lane.code(), &self.node, &epoch, &self.lease_ttl_ms],
            )
            .await
            .map_err(db)?;
        if n == 0 {
            self.set_epoch(channel, lane, None);
        }
        Ok(n == 1)
    }

    async fn release_lane(&self, channel: &str, lane: Lane) -> Result<()> {
        let Some(epoch) = self.epoch(channel, lane) else {
            return Ok(());
        };
        self.set_epoch(channel, lane, None);
        let client = self.client().await?;
        client
            .execute(
                "UPDATE lane_leases SET expires_ms = 0
                 WHERE channel = $1 AND lane = $2 AND node = $3 AND epoch = $4",
                &[&channel, &lane.code(), &self.node, &epoch],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn recover_lane(
        &self,
        channel: &str,
        lane: Lane,
        policy: CrashPolicy,
    ) -> Result<RecoveryReport> {
        in_tx!(self, |t| rules::recover_lane(
            t,
            channel,
            lane,
            policy,
            &self.live,
            now_ms()
        ))
    }

    fn queue_depth(&self) -> QueueDepth {
        self.admission.depth()
    }

    fn live(&self) -> &LiveAttempts {
        &self.live
    }

    fn lane_epoch(&self, channel: &str, lane: Lane) -> i64 {
        self.epoch(channel, lane).unwrap_or(0)
    }

    fn work_signals(&self) -> Option<broadcast::Receiver<(String, Lane)>> {
        Some(self.signals.subscribe())
    }

    fn pause_signals(&self) -> Option<broadcast::Receiver<(String, Lane)>> {
        Some(self.pause_signals.subscribe())
    }
}
