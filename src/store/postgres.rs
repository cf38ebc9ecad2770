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
use crate::respondio::wire::{Event, EventType, Status};
use crate::status::{self, Transition};

const SCHEMA_V1: &str = include_str!("postgres_schema.sql");
/// Channel logs, the audit log and the admin listings' indexes (see `postgres_admin`).
const SCHEMA_V2: &str = include_str!("postgres_schema_v2.sql");
/// (version, SQL): applied in order, each once, under an advisory lock so nodes starting
/// together do not race.
const MIGRATIONS: &[(i64, &str)] = &[(1, SCHEMA_V1), (2, SCHEMA_V2)];
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
    dedupe_ttl_ms: i64,
    parked_ttl_ms: i64,
    signals: broadcast::Sender<(String, Lane)>,
    /// The NOTIFY channel of this store's schema (see [`notify_channel_for`]).
    notify_channel: String,
    /// Lanes whose pause an operator changed (on any node, see `PAUSE_PREFIX`).
    pause_signals: broadcast::Sender<(String, Lane)>,
    stop_listener: CancellationToken,
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
    let mut version = current;
    for (v, sql) in MIGRATIONS {
        if *v > version {
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute("INSERT INTO rio_schema(version) VALUES ($1)", &[v])
                .await
                .map_err(db)?;
            version = *v;
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
            dedupe_ttl_ms: (cfg.dedupe_ttl_secs as i64).saturating_mul(1000),
            parked_ttl_ms: (cfg.parked_receipt_ttl_secs as i64).saturating_mul(1000),
            signals,
            notify_channel,
            pause_signals,
            stop_listener: stop,
        })
    }

    /// This process's name in `lane_leases`.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(db)
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
            "SELECT 1 FROM lane_leases WHERE channel = $1 AND lane = $2 AND node = $3 AND epoch = $4 FOR KEY SHARE",
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

const ITEM_COLUMNS: &str = "id, channel, lane, qkey, contact, kind, mid, payload, contact_json, state, \
     attempts, ambiguous, created_ms, provider_id, status, last_error";

fn item_from_row(r: &Row) -> Item {
    Item {
        id: r.get("id"),
        channel: r.get("channel"),
        lane: Lane::from_code(r.get("lane")),
        qkey: r.get("qkey"),
        contact: r.get("contact"),
        kind: ItemKind::from_code(r.get("kind")),
        mid: r.get("mid"),
        payload: r.get("payload"),
        contact_json: r.get("contact_json"),
        state: r.get("state"),
        attempts: r.get("attempts"),
        ambiguous: r.get("ambiguous"),
        created_ms: r.get("created_ms"),
        provider_id: r.get("provider_id"),
        status: r.get("status"),
        last_error: r.get("last_error"),
    }
}

/// Claims a dedupe key; false when a live key already exists (a redelivery). The primary
/// key makes this atomic across nodes: a concurrent insert of the same key waits for the
/// first to commit and then sees it.
async fn claim_dedupe(
    tx: &Transaction<'_>,
    channel: &str,
    key: &str,
    now: i64,
    ttl: i64,
) -> Result<bool> {
    let n = exec(
        tx,
        "INSERT INTO dedupe(channel, key, expires_ms) VALUES ($1, $2, $3)
         ON CONFLICT(channel, key) DO UPDATE SET expires_ms = excluded.expires_ms
         WHERE dedupe.expires_ms < $4",
        &[&channel, &key, &now.saturating_add(ttl), &now],
    )
    .await?;
    Ok(n == 1)
}

async fn history(
    tx: &Transaction<'_>,
    item_id: i64,
    now: i64,
    event: &str,
    detail: Option<&str>,
) -> Result<()> {
    exec(
        tx,
        "INSERT INTO history(item_id, at_ms, event, detail) VALUES ($1, $2, $3, $4)",
        &[&item_id, &now, &event, &detail],
    )
    .await?;
    Ok(())
}

struct NewRow<'a> {
    channel: &'a str,
    lane: Lane,
    qkey: &'a str,
    contact: &'a str,
    kind: ItemKind,
    mid: &'a str,
    payload: &'a str,
    contact_json: Option<&'a str>,
    provider_id: Option<&'a str>,
    class: i64,
}

async fn insert_item(tx: &Transaction<'_>, r: NewRow<'_>, now: i64) -> Result<i64> {
    let id: i64 = rows(
        tx,
        "INSERT INTO items(channel, lane, qkey, contact, kind, mid, payload, contact_json, state,
                           created_ms, next_ms, updated_ms, provider_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9, $9, $10) RETURNING id",
        &[
            &r.channel,
            &r.lane.code(),
            &r.qkey,
            &r.contact,
            &(r.kind as i64),
            &r.mid,
            &r.payload,
            &r.contact_json,
            &now,
            &r.provider_id,
        ],
    )
    .await?[0]
        .get(0);
    // A new queue starts due now; an existing one keeps its schedule and only moves up a
    // class. If the lane's owner is dropping this queue row right now, the upsert waits
    // for that and then inserts a fresh row.
    exec(
        tx,
        "INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES ($1, $2, $3, $4, $5, 0)
         ON CONFLICT(channel, lane, qkey) DO UPDATE SET class = LEAST(queues.class, excluded.class)",
        &[&r.channel, &r.lane.code(), &r.qkey, &r.class, &now],
    )
    .await?;
    Ok(id)
}

/// Queues a `message_status` toward respond.io; a pending one for the same mId is replaced.
/// Callers hold the send's row lock, so statuses of one mId are queued one at a time; the
/// replacement is conditional on the status still pending (the lane may be taking it).
async fn enqueue_status(
    tx: &Transaction<'_>,
    channel: &str,
    contact: &str,
    mid: &str,
    value: StatusValue,
    reason: Option<&str>,
    now: i64,
) -> Result<()> {
    let message = match (value, reason) {
        (_, Some(r)) if !r.is_empty() => Some(r.to_string()),
        (StatusValue::Failed, _) => Some("failed".to_string()),
        _ => None,
    };
    let event = Event {
        kind: EventType::MessageStatus,
        mid: mid.to_string(),
        timestamp: now,
        message: None,
        status: Some(Status { value, message }),
    };
    let payload = serde_json::to_string(&event).map_err(db)?;
    let qkey = status_qkey(mid);
    let replaced = exec(
        tx,
        "UPDATE items SET payload = $1, updated_ms = $2
         WHERE id = (SELECT id FROM items WHERE channel = $3 AND lane = 0 AND qkey = $4 AND state = 0
                     ORDER BY id DESC LIMIT 1)
           AND state = 0",
        &[&payload, &now, &channel, &qkey],
    )
    .await?;
    if replaced == 0 {
        insert_item(
            tx,
            NewRow {
                channel,
                lane: Lane::RespondIo,
                qkey: &qkey,
                contact,
                kind: ItemKind::Status,
                mid,
                payload: &payload,
                contact_json: None,
                provider_id: None,
                class: 1,
            },
            now,
        )
        .await?;
    }
    Ok(())
}

/// (id, mid, contact, status) of a send, row-locked for the status machine.
type SendRow = (i64, String, String, i64);

async fn send_by_provider_id(
    tx: &Transaction<'_>,
    channel: &str,
    provider_id: &str,
) -> Result<Option<SendRow>> {
    Ok(opt(
        tx,
        "SELECT id, mid, contact, status FROM items WHERE channel = $1 AND provider_id = $2 AND kind = 3
         FOR UPDATE",
        &[&channel, &provider_id],
    )
    .await?
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
}

/// Serialises everything about one provider id (its receipts, its send's response) across
/// nodes, until the transaction ends.
async fn lock_provider_id(tx: &Transaction<'_>, channel: &str, provider_id: &str) -> Result<()> {
    let key = format!("{channel}\u{1f}{provider_id}");
    exec(
        tx,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&key],
    )
    .await?;
    Ok(())
}

/// Runs a receipt's status through the status machine for one (locked) send item.
/// Returns whether a status was queued toward respond.io.
async fn apply_status(
    tx: &Transaction<'_>,
    channel: &str,
    item: SendRow,
    new: StatusValue,
    reason: Option<&str>,
    now: i64,
) -> Result<ReceiptResult> {
    let (id, mid, contact, current) = item;
    match status::advance(current, new) {
        Transition::Ignore(why) => {
            history(
                tx,
                id,
                now,
                &format!("receipt {} ignored", new.as_str()),
                Some(why),
            )
            .await?;
            Ok(ReceiptResult::Ignored {
                mid,
                why: why.to_string(),
            })
        }
        Transition::Forward(v) => {
            exec(
                tx,
                "UPDATE items SET status = $1, updated_ms = $2 WHERE id = $3",
                &[&status::code(v), &now, &id],
            )
            .await?;
            history(tx, id, now, &format!("status {}", v.as_str()), reason).await?;
            if v == StatusValue::Sent {
                return Ok(ReceiptResult::Ignored {
                    mid,
                    why: "sent is implied by the 200".into(),
                });
            }
            enqueue_status(tx, channel, &contact, &mid, v, reason, now).await?;
            Ok(ReceiptResult::Forwarded {
                mid,
                contact,
                status: v,
            })
        }
    }
}

/// Locks a queue row before anything that may drop it (see the module notes).
async fn lock_queue(tx: &Transaction<'_>, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
    exec(
        tx,
        "SELECT 1 FROM queues WHERE channel = $1 AND lane = $2 AND qkey = $3 FOR UPDATE",
        &[&channel, &lane.code(), &qkey],
    )
    .await?;
    Ok(())
}

/// Hands a claimed queue back, due at `next_ms`.
async fn release_queue_at(
    tx: &Transaction<'_>,
    channel: &str,
    lane: Lane,
    qkey: &str,
    next_ms: i64,
) -> Result<()> {
    exec(
        tx,
        "UPDATE queues SET claimed = 0, next_ms = $1 WHERE channel = $2 AND lane = $3 AND qkey = $4",
        &[&next_ms, &channel, &lane.code(), &qkey],
    )
    .await?;
    Ok(())
}

async fn queue_has_pending(
    tx: &Transaction<'_>,
    channel: &str,
    lane: Lane,
    qkey: &str,
) -> Result<bool> {
    Ok(opt(
        tx,
        "SELECT 1 FROM items WHERE channel = $1 AND lane = $2 AND qkey = $3 AND state < 2 LIMIT 1",
        &[&channel, &lane.code(), &qkey],
    )
    .await?
    .is_some())
}

async fn drop_queue(tx: &Transaction<'_>, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
    exec(
        tx,
        "DELETE FROM queues WHERE channel = $1 AND lane = $2 AND qkey = $3",
        &[&channel, &lane.code(), &qkey],
    )
    .await?;
    Ok(())
}

async fn mark_dead(
    tx: &Transaction<'_>,
    channel: &str,
    id: i64,
    reason: &str,
    report_failed: bool,
    now: i64,
) -> Result<()> {
    let r = rows(
        tx,
        "SELECT kind, mid, contact, status FROM items WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    let Some(r) = r.first() else {
        return Ok(());
    };
    let (kind, mid, contact, current): (i64, String, String, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    exec(
        tx,
        "UPDATE items SET state = 3, last_error = $1, updated_ms = $2 WHERE id = $3",
        &[&reason, &now, &id],
    )
    .await?;
    history(tx, id, now, "dead-lettered", Some(reason)).await?;
    if ItemKind::from_code(kind) == ItemKind::Send {
        if report_failed {
            apply_status(
                tx,
                channel,
                (id, mid, contact, current),
                StatusValue::Failed,
                Some(reason),
                now,
            )
            .await?;
        } else if status::advance(current, StatusValue::Failed)
            == Transition::Forward(StatusValue::Failed)
        {
            exec(tx, "UPDATE items SET status = 4 WHERE id = $1", &[&id]).await?;
        }
    }
    Ok(())
}

async fn set_attempt_outcome(
    tx: &Transaction<'_>,
    id: i64,
    outcome: &str,
    detail: Option<&str>,
    dur: i64,
    at_ms: Option<i64>,
) -> Result<()> {
    exec(
        tx,
        "UPDATE attempts SET outcome = $1, detail = $2, duration_ms = $3, at_ms = COALESCE($5, at_ms)
         WHERE item_id = $4 AND outcome = 'attempting'",
        &[&outcome, &detail, &dur, &id, &at_ms],
    )
    .await?;
    Ok(())
}

async fn head_of_queue(
    tx: &Transaction<'_>,
    channel: &str,
    lane: Lane,
    qkey: &str,
    limit: usize,
) -> Result<Vec<Item>> {
    lock_queue(tx, channel, lane, qkey).await?;
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM items WHERE channel = $1 AND lane = $2 AND qkey = $3 AND state < 2
         ORDER BY id LIMIT $4"
    );
    let items: Vec<Item> = rows(tx, &sql, &[&channel, &lane.code(), &qkey, &(limit as i64)])
        .await?
        .iter()
        .map(item_from_row)
        .collect();
    if items.is_empty() {
        drop_queue(tx, channel, lane, qkey).await?;
    }
    Ok(items)
}

async fn record_provider_id(
    tx: &Transaction<'_>,
    channel: &str,
    id: i64,
    pid: &str,
    now: i64,
) -> Result<()> {
    lock_provider_id(tx, channel, pid).await?;
    if send_by_provider_id(tx, channel, pid).await?.is_some() {
        history(tx, id, now, "duplicate provider id", Some(pid)).await?;
        return Ok(());
    }
    exec(
        tx,
        "UPDATE items SET provider_id = $1 WHERE id = $2",
        &[&pid, &id],
    )
    .await?;
    let parked: Vec<(i64, i64, Option<String>)> = rows(
        tx,
        "SELECT id, status, reason FROM parked_receipts WHERE channel = $1 AND provider_id = $2 ORDER BY id",
        &[&channel, &pid],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    for (pk, code, reason) in parked {
        if let (Some(v), Some(item)) = (
            status::from_code(code),
            send_by_provider_id(tx, channel, pid).await?,
        ) {
            apply_status(tx, channel, item, v, reason.as_deref(), now).await?;
        }
        exec(tx, "DELETE FROM parked_receipts WHERE id = $1", &[&pk]).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn ingest_inbound(
        &self,
        channel: &str,
        items: Vec<NewInbound>,
    ) -> Result<Vec<IngestResult>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let now = now_ms();
        let mut out = Vec::with_capacity(items.len());
        let mut promoted = false;
        for it in items {
            if !claim_dedupe(&tx, channel, &it.dedupe_key, now, self.dedupe_ttl_ms).await? {
                out.push(IngestResult::Duplicate);
                continue;
            }
            let qkey = message_qkey(&it.contact);
            let id = insert_item(
                &tx,
                NewRow {
                    channel,
                    lane: Lane::RespondIo,
                    qkey: &qkey,
                    contact: &it.contact,
                    kind: it.kind,
                    mid: &it.mid,
                    payload: &it.event_json,
                    contact_json: it.contact_json.as_deref(),
                    provider_id: Some(&it.provider_id),
                    class: 0,
                },
                now,
            )
            .await?;
            if it.kind == ItemKind::Message {
                exec(
                    &tx,
                    "INSERT INTO contacts(channel, contact, last_inbound_ms) VALUES ($1, $2, $3)
                     ON CONFLICT(channel, contact) DO UPDATE
                     SET last_inbound_ms = GREATEST(contacts.last_inbound_ms, excluded.last_inbound_ms)",
                    &[&channel, &it.contact, &now],
                )
                .await?;
                promoted |= exec(
                    &tx,
                    "UPDATE queues SET class = 0 WHERE channel = $1 AND lane = 1 AND qkey = $2 AND class = 1",
                    &[&channel, &it.contact],
                )
                .await?
                    > 0;
            }
            out.push(IngestResult::Stored { item_id: id });
        }
        if out.iter().any(|r| matches!(r, IngestResult::Stored { .. })) {
            self.announce(&tx, channel, Lane::RespondIo).await?;
        }
        if promoted {
            self.announce(&tx, channel, Lane::Provider).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn store_unparseable(
        &self,
        channel: &str,
        route: &str,
        content_type: &str,
        body: Vec<u8>,
        reason: &str,
    ) -> Result<i64> {
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let now = now_ms();
        let last: Option<i64> = opt(
            &tx,
            "SELECT last_inbound_ms FROM contacts WHERE channel = $1 AND contact = $2",
            &[&channel, &item.contact],
        )
        .await?
        .map(|r| r.get(0));
        let class = if last.is_some_and(|l| now - l <= window_ms) {
            0
        } else {
            1
        };
        let id = insert_item(
            &tx,
            NewRow {
                channel,
                lane: Lane::Provider,
                qkey: &item.contact,
                contact: &item.contact,
                kind: ItemKind::Send,
                mid: &item.mid,
                payload: &item.message_json,
                contact_json: None,
                provider_id: None,
                class,
            },
            now,
        )
        .await?;
        history(
            &tx,
            id,
            now,
            "accepted",
            Some(if class == 0 { "conversation" } else { "bulk" }),
        )
        .await?;
        self.announce(&tx, channel, Lane::Provider).await?;
        tx.commit().await.map_err(db)?;
        Ok(AcceptedSend {
            item_id: id,
            conversation: class == 0,
        })
    }

    async fn apply_receipts(
        &self,
        channel: &str,
        receipts: Vec<ReceiptIn>,
    ) -> Result<Vec<ReceiptResult>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let now = now_ms();
        let mut out = Vec::with_capacity(receipts.len());
        for r in receipts {
            let key = format!("receipt:{}", r.dedupe_key);
            if !claim_dedupe(&tx, channel, &key, now, self.dedupe_ttl_ms).await? {
                out.push(ReceiptResult::Duplicate);
                continue;
            }
            lock_provider_id(&tx, channel, &r.provider_id).await?;
            let item = send_by_provider_id(&tx, channel, &r.provider_id).await?;
            let Some(value) = r.status else {
                out.push(ReceiptResult::Ignored {
                    mid: item.map(|i| i.1).unwrap_or_default(),
                    why: "informational receipt".into(),
                });
                continue;
            };
            match item {
                Some(item) => out
                    .push(apply_status(&tx, channel, item, value, r.reason.as_deref(), now).await?),
                None => {
                    exec(
                        &tx,
                        "INSERT INTO parked_receipts(channel, provider_id, status, reason, received_ms, expires_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &channel,
                            &r.provider_id,
                            &status::code(value),
                            &r.reason,
                            &now,
                            &(now + self.parked_ttl_ms),
                        ],
                    )
                    .await?;
                    out.push(ReceiptResult::Parked);
                }
            }
        }
        if out
            .iter()
            .any(|r| matches!(r, ReceiptResult::Forwarded { .. }))
        {
            self.announce(&tx, channel, Lane::RespondIo).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn claim(
        &self,
        channel: &str,
        lane: Lane,
        now: i64,
        limits: [usize; 2],
    ) -> Result<ClaimBatch> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        self.fence(&tx, channel, lane).await?;
        let mut batch = ClaimBatch::default();
        for (class, &limit) in limits.iter().enumerate() {
            let class = class as i64;
            if limit > 0 {
                // Rows another transaction holds are skipped, not waited for: two claimers
                // never get one queue, and neither stalls behind the other.
                let mut got: Vec<(i64, String)> = rows(
                    &tx,
                    // Joined on the row's ctid: a plan made on stale statistics could
                    // otherwise scan the whole lane once per claimed row.
                    "WITH c AS (
                         SELECT ctid FROM queues
                         WHERE channel = $1 AND lane = $2 AND claimed = 0 AND class = $3 AND next_ms <= $4
                         ORDER BY next_ms LIMIT $5
                         FOR UPDATE SKIP LOCKED)
                     UPDATE queues q SET claimed = 1 FROM c
                     WHERE q.ctid = c.ctid
                     RETURNING q.next_ms, q.qkey",
                    &[&channel, &lane.code(), &class, &now, &(limit as i64)],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
                got.sort();
                batch
                    .claimed
                    .extend(got.into_iter().map(|(_, k)| (k, class as u8)));
            }
            let next: Option<i64> = opt(
                &tx,
                "SELECT next_ms FROM queues WHERE channel = $1 AND lane = $2 AND claimed = 0 AND class = $3
                 AND next_ms > $4 ORDER BY next_ms LIMIT 1",
                &[&channel, &lane.code(), &class, &now],
            )
            .await?
            .map(|r| r.get(0));
            batch.next_due_ms = match (batch.next_due_ms, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        tx.commit().await.map_err(db)?;
        Ok(batch)
    }

    async fn head_items(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
    ) -> Result<Vec<Item>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let items = head_of_queue(&tx, channel, lane, qkey, limit).await?;
        tx.commit().await.map_err(db)?;
        Ok(items)
    }

    async fn take_head(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
        at_ms: i64,
    ) -> Result<Vec<Item>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        self.fence(&tx, channel, lane).await?;
        let items = head_of_queue(&tx, channel, lane, qkey, limit).await?;
        let now = now_ms();
        for (i, it) in items.iter().enumerate() {
            exec(
                &tx,
                "UPDATE items SET state = 1, attempts = attempts + 1, updated_ms = $1 WHERE id = $2",
                &[&now, &it.id],
            )
            .await?;
            exec(
                &tx,
                "INSERT INTO attempts(item_id, channel, lane, at_ms, outcome, call_first)
                 VALUES ($1, $2, $3, $4, 'attempting', $5)",
                &[&it.id, &channel, &lane.code(), &at_ms, &((i == 0) as i64)],
            )
            .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(items)
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        self.fence(&tx, channel, lane).await?;
        lock_queue(&tx, channel, lane, qkey).await?;
        let now = now_ms();
        match fin {
            Finish::Done { provider_id } => {
                for &id in ids {
                    set_attempt_outcome(&tx, id, "ok", None, dur, Some(sent_at)).await?;
                    exec(
                        &tx,
                        "UPDATE items SET state = 2, updated_ms = $1, last_error = NULL,
                         status = CASE WHEN kind = 3 AND status = 0 THEN 1 ELSE status END WHERE id = $2",
                        &[&now, &id],
                    )
                    .await?;
                }
                if let (Some(pid), Some(&id)) = (provider_id, ids.first()) {
                    record_provider_id(&tx, channel, id, &pid, now).await?;
                }
            }
            Finish::Retry {
                next_ms,
                error,
                ambiguous,
                counted,
                outcome,
            } => {
                for &id in ids {
                    set_attempt_outcome(&tx, id, outcome, Some(&error), dur, Some(sent_at)).await?;
                    exec(
                        &tx,
                        "UPDATE items SET state = 0, next_ms = $1, last_error = $2, updated_ms = $3,
                         ambiguous = ambiguous + $4, attempts = attempts - $5 WHERE id = $6",
                        &[
                            &next_ms,
                            &error,
                            &now,
                            &(ambiguous as i64),
                            &((!counted) as i64),
                            &id,
                        ],
                    )
                    .await?;
                }
                release_queue_at(&tx, channel, lane, qkey, next_ms).await?;
                tx.commit().await.map_err(db)?;
                return Ok(false);
            }
            Finish::NotSent { next_ms } => {
                for &id in ids {
                    exec(
                        &tx,
                        "DELETE FROM attempts WHERE item_id = $1 AND outcome = 'attempting'",
                        &[&id],
                    )
                    .await?;
                    exec(
                        &tx,
                        "UPDATE items SET state = 0, attempts = attempts - 1, updated_ms = $1 WHERE id = $2",
                        &[&now, &id],
                    )
                    .await?;
                }
                release_queue_at(&tx, channel, lane, qkey, next_ms).await?;
                tx.commit().await.map_err(db)?;
                return Ok(false);
            }
            Finish::Dead {
                reason,
                report_failed,
            } => {
                for &id in ids {
                    set_attempt_outcome(&tx, id, "dead", Some(&reason), dur, Some(sent_at)).await?;
                    mark_dead(&tx, channel, id, &reason, report_failed, now).await?;
                }
            }
        }
        let more = queue_has_pending(&tx, channel, lane, qkey).await?;
        if !more {
            drop_queue(&tx, channel, lane, qkey).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(more)
    }

    async fn release(&self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        self.fence(&tx, channel, lane).await?;
        exec(
            &tx,
            "UPDATE queues SET claimed = 0 WHERE channel = $1 AND lane = $2 AND qkey = $3",
            &[&channel, &lane.code(), &qkey],
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(())
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
            .prepare_cached(
                "SELECT at_ms FROM attempts WHERE channel = $1 AND lane = $2 AND call_first = 1
                 ORDER BY at_ms DESC LIMIT $3",
            )
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
            .query(
                "SELECT channel, lane, COUNT(*) FROM items WHERE state < 2 GROUP BY channel, lane",
                &[],
            )
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
                .query_opt(
                    "SELECT created_ms FROM items WHERE channel = $1 AND lane = $2 AND state < 2
                     AND kind >= 0 ORDER BY id LIMIT 1",
                    &[&s.channel, &s.lane.code()],
                )
                .await
                .map_err(db)?
                .map(|r| r.get(0));
        }
        let dead = client
            .query(
                "SELECT channel, lane, COUNT(*) FROM items WHERE state = 3 GROUP BY channel, lane",
                &[],
            )
            .await
            .map_err(db)?;
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

    async fn prune(&self, now: i64, retention_ms: i64) -> Result<PruneReport> {
        let client = self.client().await?;
        let cutoff = now - retention_ms;
        let run = |sql: &'static str, at: i64| {
            let client = &client;
            async move { client.execute(sql, &[&at]).await.map_err(db) }
        };
        // Bounded batches keep each statement short; nodes may prune at the same time.
        let items = run(
            "DELETE FROM items WHERE id IN (SELECT id FROM items WHERE state = 2 AND updated_ms < $1 LIMIT 5000)",
            cutoff,
        )
        .await?;
        let dedupe = run(
            "DELETE FROM dedupe WHERE (channel, key) IN
             (SELECT channel, key FROM dedupe WHERE expires_ms < $1 LIMIT 5000)",
            now,
        )
        .await?;
        let parked = run("DELETE FROM parked_receipts WHERE expires_ms < $1", now).await?;
        let attempts = run(
            "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at_ms < $1 LIMIT 5000)",
            cutoff,
        )
        .await?;
        run(
            "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE at_ms < $1 LIMIT 5000)",
            cutoff,
        )
        .await?;
        Ok(PruneReport {
            items,
            dedupe,
            parked,
            attempts,
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        self.fence(&tx, channel, lane).await?;
        let now = now_ms();
        exec(
            &tx,
            "UPDATE queues SET claimed = 0 WHERE channel = $1 AND lane = $2 AND claimed = 1",
            &[&channel, &lane.code()],
        )
        .await?;
        let inflight: Vec<(i64, String, i64)> = rows(
            &tx,
            "SELECT id, qkey, ambiguous FROM items WHERE channel = $1 AND lane = $2 AND state = 1
             ORDER BY id FOR UPDATE",
            &[&channel, &lane.code()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
        let mut report = RecoveryReport::default();
        for (id, qkey, ambiguous) in inflight {
            // Toward respond.io a repeat carries the same mId, so it is always resent.
            let resend = lane == Lane::RespondIo
                || (policy.on_crash == OnCrash::Resend
                    && ambiguous < policy.ambiguous_retry_cap as i64);
            if resend {
                // The request left at some moment before now: logging it at now is the
                // conservative choice for the rate window this lane's limiter seeds from.
                set_attempt_outcome(
                    &tx,
                    id,
                    "ambiguous",
                    Some("in flight when its node stopped"),
                    0,
                    Some(now),
                )
                .await?;
                exec(
                    &tx,
                    "UPDATE items SET state = 0, ambiguous = ambiguous + 1 WHERE id = $1",
                    &[&id],
                )
                .await?;
                history(
                    &tx,
                    id,
                    now,
                    "ambiguous",
                    Some("in flight when its node stopped; resending"),
                )
                .await?;
                report.resent += 1;
            } else {
                let reason = "in flight when its node stopped; not resent (on_crash = fail, or ambiguous too often)";
                set_attempt_outcome(&tx, id, "dead", Some(reason), 0, Some(now)).await?;
                mark_dead(&tx, channel, id, reason, true, now).await?;
                lock_queue(&tx, channel, lane, &qkey).await?;
                if !queue_has_pending(&tx, channel, lane, &qkey).await? {
                    drop_queue(&tx, channel, lane, &qkey).await?;
                }
                report.failed += 1;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(report)
    }

    fn work_signals(&self) -> Option<broadcast::Receiver<(String, Lane)>> {
        Some(self.signals.subscribe())
    }

    fn pause_signals(&self) -> Option<broadcast::Receiver<(String, Lane)>> {
        Some(self.pause_signals.subscribe())
    }
}
