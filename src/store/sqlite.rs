//! The embedded SQLite store.
//!
//! One writer thread owns the only read-write connection. Requests arrive as jobs on a
//! channel; the writer runs every job waiting at that moment inside one transaction (each
//! in its own savepoint, so one failing job does not undo the others) and commits once:
//! many requests share one fsync (group commit). A job's caller hears back only after the
//! COMMIT returned, so an `Ok` means the write is on disk (with `synchronous = FULL`).
//! Statistics queries use a separate read connection so they never wait behind writes.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::*;
use crate::clock::now_ms;
use crate::config::{StoreConfig, Synchronous};
use crate::respondio::wire::{Event, EventType, Status};
use crate::status::{self, Transition};

type Reply = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A job runs inside the batch's transaction, or gets `None` when the batch was already
/// lost (then it only answers with the error).
type Job = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;

pub struct SqliteStore {
    jobs: Mutex<mpsc::Sender<Job>>,
    stop_checkpoints: Arc<std::sync::atomic::AtomicBool>,
    reader: Arc<Mutex<Connection>>,
    dedupe_ttl_ms: i64,
    parked_ttl_ms: i64,
    /// The first sign of a damaged file. Corruption does not heal by itself: once seen,
    /// readiness stays red (with this reason) until the file is repaired and the process
    /// restarted, even while writes that avoid the damaged pages still succeed.
    damaged: Arc<Mutex<Option<String>>>,
}

/// SQLite found the file damaged (a bad page, or not a database at all).
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Remembers the first corruption error in `damaged`.
fn note_corruption(damaged: &Mutex<Option<String>>, e: &rusqlite::Error) {
    if is_corruption(e) {
        let mut d = damaged.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            tracing::error!(error = %e, "the database file is damaged; restore it from a backup");
            *d = Some(e.to_string());
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open_connection(
    path: &Path,
    sync: Synchronous,
    busy_timeout_ms: u64,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Another process holding a lock (a backup, an operator's sqlite3 shell) is waited for
    // this long; past it the write fails and the request is answered 503.
    conn.busy_timeout(std::time::Duration::from_millis(busy_timeout_ms))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    // Keep the WAL from growing without bound after bursts.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // Checkpoints run on a background connection (see `checkpoint_loop`) so the writer
    // rarely stalls copying pages; other connections never checkpoint on their own.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

impl SqliteStore {
    pub fn open(cfg: &StoreConfig) -> Result<SqliteStore> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer = open_connection(&cfg.path, cfg.synchronous, cfg.busy_timeout_ms)
            .map_err(unavailable)?;
        // The background checkpointer copies most pages; the writer checkpoints the short
        // tail itself once the WAL passes 16 MB. Without this, a WAL under steady writes
        // never gets back to its start (each PASSIVE checkpoint is overtaken by new
        // commits), grows without bound, and must be replayed when the store opens.
        writer
            .pragma_update(None, "wal_autocheckpoint", 4096)
            .map_err(unavailable)?;
        let applied = super::migrate::migrate(&mut writer).map_err(unavailable)?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, path = %cfg.path.display(), "store schema migrated");
        }
        let reader = open_connection(&cfg.path, cfg.synchronous, cfg.busy_timeout_ms)
            .map_err(unavailable)?;
        let checkpointer = open_connection(&cfg.path, cfg.synchronous, cfg.busy_timeout_ms)
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let batch_max = cfg.group_commit_max.max(1);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer, rx, batch_max))
            .map_err(unavailable)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, stop2))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            jobs: Mutex::new(tx),
            stop_checkpoints: stop,
            reader: Arc::new(Mutex::new(reader)),
            dedupe_ttl_ms: (cfg.dedupe_ttl_secs as i64).saturating_mul(1000),
            parked_ttl_ms: (cfg.parked_receipt_ttl_secs as i64).saturating_mul(1000),
            damaged: Arc::new(Mutex::new(None)),
        })
    }

    /// Why the file is known to be damaged, if it is.
    fn damage(&self) -> Option<String> {
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies pending schema migrations to the store's file and returns their versions,
    /// without starting the writer (`rio-bridge migrate`).
    pub fn migrate_only(cfg: &StoreConfig) -> anyhow::Result<Vec<i64>> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = open_connection(&cfg.path, cfg.synchronous, cfg.busy_timeout_ms)?;
        Ok(super::migrate::migrate(&mut conn)?)
    }

    /// Runs `f` inside the writer's next transaction; resolves after the COMMIT.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let damaged = self.damaged.clone();
        let job: Job = Box::new(move |conn| {
            let res = match conn {
                Some(conn) => in_savepoint(conn, f),
                None => Err(rusqlite::Error::InvalidQuery),
            };
            if let Err(e) = &res {
                note_corruption(&damaged, e);
            }
            Box::new(move |commit| {
                let out = match (commit, res) {
                    (Ok(()), Ok(v)) => Ok(v),
                    (Err(e), _) => Err(unavailable(format!("commit failed: {e}"))),
                    (Ok(()), Err(e)) => Err(unavailable(e)),
                };
                let _ = tx.send(out);
            })
        });
        self.jobs
            .lock()
            .map_err(|_| unavailable("writer lock poisoned"))?
            .send(job)
            .map_err(|_| unavailable("the store writer has stopped"))?;
        rx.await
            .map_err(|_| unavailable("the store writer dropped the request"))?
    }

    pub(crate) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let (reader, damaged) = (self.reader.clone(), self.damaged.clone());
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| unavailable("reader lock poisoned"))?;
            f(&conn).map_err(|e| {
                note_corruption(&damaged, &e);
                unavailable(e)
            })
        })
        .await
        .map_err(unavailable)?
    }

    /// Releases claims and settles items a crash left attempting, on every lane or on one.
    async fn recover_matching(
        &self,
        only: Option<(String, Lane)>,
        policy: impl Fn(&str) -> CrashPolicy + Send + 'static,
    ) -> Result<RecoveryReport> {
        // Read what was in flight, decide per channel, then apply in one write.
        let filter = only.clone();
        let inflight: Vec<(i64, String, i64, String, i64)> = self
            .read(move |conn| {
                let rows = conn
                    .prepare(
                        "SELECT id, channel, lane, qkey, ambiguous FROM items WHERE state = 1",
                    )?
                    .query_map([], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect::<rusqlite::Result<Vec<(i64, String, i64, String, i64)>>>()?;
                Ok(rows
                    .into_iter()
                    .filter(|(_, ch, lane, _, _)| {
                        filter
                            .as_ref()
                            .is_none_or(|(c, l)| c == ch && l.code() == *lane)
                    })
                    .collect())
            })
            .await?;
        let plan: Vec<(i64, String, Lane, String, bool)> = inflight
            .into_iter()
            .map(|(id, ch, lane, qkey, ambiguous)| {
                let lane = Lane::from_code(lane);
                let p = policy(&ch);
                // Toward respond.io a repeat carries the same mId, so it is always resent.
                let resend = lane == Lane::RespondIo
                    || (p.on_crash == OnCrash::Resend && ambiguous < p.ambiguous_retry_cap as i64);
                (id, ch, lane, qkey, resend)
            })
            .collect();
        self.write(move |conn| {
            let now = now_ms();
            match &only {
                None => {
                    conn.execute("UPDATE queues SET claimed = 0 WHERE claimed = 1", [])?;
                }
                Some((channel, lane)) => {
                    conn.execute(
                        "UPDATE queues SET claimed = 0 WHERE channel = ?1 AND lane = ?2 AND claimed = 1",
                        params![channel, lane.code()],
                    )?;
                }
            }
            let mut report = RecoveryReport::default();
            for (id, channel, lane, qkey, resend) in plan {
                if resend {
                    // The request left at some moment before now: logging it at now is the
                    // conservative choice for the rate window that the next lane seeds from.
                    set_attempt_outcome(
                        conn,
                        id,
                        "ambiguous",
                        Some("in flight when the gateway stopped"),
                        0,
                        Some(now),
                    )?;
                    conn.prepare_cached(
                        "UPDATE items SET state = 0, ambiguous = ambiguous + 1 WHERE id = ?1",
                    )?
                    .execute(params![id])?;
                    history(
                        conn,
                        id,
                        now,
                        "ambiguous",
                        Some("in flight when the gateway stopped; resending"),
                    )?;
                    report.resent += 1;
                } else {
                    let reason = "in flight when the gateway stopped; not resent (on_crash = fail, or ambiguous too often)";
                    set_attempt_outcome(conn, id, "dead", Some(reason), 0, Some(now))?;
                    mark_dead(conn, &channel, id, reason, true, now)?;
                    if !queue_has_pending(conn, &channel, lane, &qkey)? {
                        drop_queue(conn, &channel, lane, &qkey)?;
                    }
                    report.failed += 1;
                }
            }
            Ok(report)
        })
        .await
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop_checkpoints
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Copies committed WAL pages into the database file in the background. PASSIVE never
/// waits for or blocks the writer; the WAL restarts from its beginning once a checkpoint
/// has caught up.
fn checkpoint_loop(conn: Connection, stop: Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, batch_max: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(jobs.len());
        let outcome = match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) => {
                for job in jobs.drain(..) {
                    replies.push(job(None));
                }
                Err(e.to_string())
            }
            Ok(()) => {
                let mut lost = false;
                for job in jobs.drain(..) {
                    if lost {
                        replies.push(job(None));
                        continue;
                    }
                    replies.push(job(Some(&conn)));
                    // SQLITE_FULL, IOERR and NOMEM roll the whole transaction back. The jobs
                    // after that must not run outside it (each would commit on its own while
                    // its caller is told the batch failed).
                    lost = conn.is_autocommit();
                }
                if lost {
                    Err("the transaction was rolled back by SQLite".to_string())
                } else {
                    conn.execute_batch("COMMIT").map_err(|e| {
                        let _ = conn.execute_batch("ROLLBACK");
                        e.to_string()
                    })
                }
            }
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "store transaction failed; answering 503 until it recovers");
        }
        for reply in replies {
            reply(outcome.clone());
        }
    }
}

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        id: r.get("id")?,
        channel: r.get("channel")?,
        lane: Lane::from_code(r.get("lane")?),
        qkey: r.get("qkey")?,
        contact: r.get("contact")?,
        kind: ItemKind::from_code(r.get("kind")?),
        mid: r.get("mid")?,
        payload: r.get("payload")?,
        contact_json: r.get("contact_json")?,
        state: r.get("state")?,
        attempts: r.get("attempts")?,
        ambiguous: r.get("ambiguous")?,
        created_ms: r.get("created_ms")?,
        provider_id: r.get("provider_id")?,
        status: r.get("status")?,
        last_error: r.get("last_error")?,
    })
}

const ITEM_COLUMNS: &str = "id, channel, lane, qkey, contact, kind, mid, payload, contact_json, state, \
     attempts, ambiguous, created_ms, provider_id, status, last_error";

/// Claims a dedupe key; false when a live key already exists (a redelivery).
fn claim_dedupe(
    conn: &Connection,
    channel: &str,
    key: &str,
    now: i64,
    ttl: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO dedupe(channel, key, expires_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(channel, key) DO UPDATE SET expires_ms = excluded.expires_ms
             WHERE dedupe.expires_ms < ?4",
        )?
        .execute(params![channel, key, now.saturating_add(ttl), now])?;
    Ok(n == 1)
}

fn history(
    conn: &Connection,
    item_id: i64,
    now: i64,
    event: &str,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO history(item_id, at_ms, event, detail) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![item_id, now, event, detail])?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn insert_item(
    conn: &Connection,
    channel: &str,
    lane: Lane,
    qkey: &str,
    contact: &str,
    kind: ItemKind,
    mid: &str,
    payload: &str,
    contact_json: Option<&str>,
    provider_id: Option<&str>,
    class: i64,
    now: i64,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO items(channel, lane, qkey, contact, kind, mid, payload, contact_json, state,
                           created_ms, next_ms, updated_ms, provider_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?9, ?9, ?10)",
    )?
    .execute(params![
        channel,
        lane.code(),
        qkey,
        contact,
        kind as i64,
        mid,
        payload,
        contact_json,
        now,
        provider_id
    ])?;
    let id = conn.last_insert_rowid();
    // A new queue starts due now; an existing one keeps its schedule, and only ever moves
    // up a class (a contact who wrote in is promoted, never demoted by a bulk send).
    conn.prepare_cached(
        "INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES (?1, ?2, ?3, ?4, ?5, 0)
         ON CONFLICT(channel, lane, qkey) DO UPDATE SET class = MIN(class, excluded.class)",
    )?
    .execute(params![channel, lane.code(), qkey, class, now])?;
    Ok(id)
}

/// Queues a `message_status` toward respond.io; a pending one for the same mId is replaced
/// (several pending statuses of one message collapse into the latest).
fn enqueue_status(
    conn: &Connection,
    channel: &str,
    contact: &str,
    mid: &str,
    value: StatusValue,
    reason: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
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
    let payload = serde_json::to_string(&event)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let qkey = status_qkey(mid);
    let pending: Option<i64> = conn
        .prepare_cached(
            "SELECT id FROM items WHERE channel = ?1 AND lane = 0 AND qkey = ?2 AND state = 0
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![channel, qkey], |r| r.get(0))
        .optional()?;
    match pending {
        Some(id) => {
            conn.prepare_cached("UPDATE items SET payload = ?1, updated_ms = ?2 WHERE id = ?3")?
                .execute(params![payload, now, id])?;
        }
        None => {
            insert_item(
                conn,
                channel,
                Lane::RespondIo,
                &qkey,
                contact,
                ItemKind::Status,
                mid,
                &payload,
                None,
                None,
                1,
                now,
            )?;
        }
    }
    Ok(())
}

/// Runs a receipt's status through the status machine for one send item.
fn apply_status(
    conn: &Connection,
    channel: &str,
    item: (i64, String, String, i64),
    new: StatusValue,
    reason: Option<&str>,
    now: i64,
) -> rusqlite::Result<ReceiptResult> {
    let (id, mid, contact, current) = item;
    match status::advance(current, new) {
        Transition::Ignore(why) => {
            history(
                conn,
                id,
                now,
                &format!("receipt {} ignored", new.as_str()),
                Some(why),
            )?;
            Ok(ReceiptResult::Ignored {
                mid,
                why: why.to_string(),
            })
        }
        Transition::Forward(v) => {
            conn.prepare_cached("UPDATE items SET status = ?1, updated_ms = ?2 WHERE id = ?3")?
                .execute(params![status::code(v), now, id])?;
            history(conn, id, now, &format!("status {}", v.as_str()), reason)?;
            if v == StatusValue::Sent {
                // respond.io took our 200 as "sent" already [INF, spec §4.5].
                return Ok(ReceiptResult::Ignored {
                    mid,
                    why: "sent is implied by the 200".into(),
                });
            }
            enqueue_status(conn, channel, &contact, &mid, v, reason, now)?;
            Ok(ReceiptResult::Forwarded {
                mid,
                contact,
                status: v,
            })
        }
    }
}

fn send_by_provider_id(
    conn: &Connection,
    channel: &str,
    provider_id: &str,
) -> rusqlite::Result<Option<(i64, String, String, i64)>> {
    conn.prepare_cached(
        "SELECT id, mid, contact, status FROM items WHERE channel = ?1 AND provider_id = ?2 AND kind = 3",
    )?
    .query_row(params![channel, provider_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
    .optional()
}

fn queue_has_pending(
    conn: &Connection,
    channel: &str,
    lane: Lane,
    qkey: &str,
) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM items WHERE channel = ?1 AND lane = ?2 AND qkey = ?3 AND state < 2 LIMIT 1")?
        .query_row(params![channel, lane.code(), qkey], |_| Ok(()))
        .optional()?
        .is_some())
}

fn drop_queue(conn: &Connection, channel: &str, lane: Lane, qkey: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM queues WHERE channel = ?1 AND lane = ?2 AND qkey = ?3")?
        .execute(params![channel, lane.code(), qkey])?;
    Ok(())
}

fn mark_dead(
    conn: &Connection,
    channel: &str,
    id: i64,
    reason: &str,
    report_failed: bool,
    now: i64,
) -> rusqlite::Result<()> {
    let (kind, mid, contact, current): (i64, String, String, i64) = conn
        .prepare_cached("SELECT kind, mid, contact, status FROM items WHERE id = ?1")?
        .query_row(params![id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    conn.prepare_cached(
        "UPDATE items SET state = 3, last_error = ?1, updated_ms = ?2 WHERE id = ?3",
    )?
    .execute(params![reason, now, id])?;
    history(conn, id, now, "dead-lettered", Some(reason))?;
    if ItemKind::from_code(kind) == ItemKind::Send {
        if report_failed {
            apply_status(
                conn,
                channel,
                (id, mid, contact, current),
                StatusValue::Failed,
                Some(reason),
                now,
            )?;
        } else if status::advance(current, StatusValue::Failed)
            == Transition::Forward(StatusValue::Failed)
        {
            // respond.io heard the failure as our 4xx answer: record it, forward nothing.
            conn.prepare_cached("UPDATE items SET status = 4 WHERE id = ?1")?
                .execute(params![id])?;
        }
    }
    Ok(())
}

/// Settles an item's open attempt row. `at_ms`, when given, is when the request really
/// left; `None` keeps the time already recorded.
fn set_attempt_outcome(
    conn: &Connection,
    id: i64,
    outcome: &str,
    detail: Option<&str>,
    dur: i64,
    at_ms: Option<i64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE attempts SET outcome = ?1, detail = ?2, duration_ms = ?3, at_ms = COALESCE(?5, at_ms)
         WHERE item_id = ?4 AND outcome = 'attempting'",
    )?
    .execute(params![outcome, detail, dur, id, at_ms])?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest_inbound(
        &self,
        channel: &str,
        items: Vec<NewInbound>,
    ) -> Result<Vec<IngestResult>> {
        let channel = channel.to_string();
        let ttl = self.dedupe_ttl_ms;
        self.write(move |conn| {
            let now = now_ms();
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                if !claim_dedupe(conn, &channel, &it.dedupe_key, now, ttl)? {
                    out.push(IngestResult::Duplicate);
                    continue;
                }
                let qkey = message_qkey(&it.contact);
                // The item row is the "received" record (created_ms, provider_id): no history
                // row here, every ingest writes as few pages as it can.
                let id = insert_item(
                    conn, &channel, Lane::RespondIo, &qkey, &it.contact, it.kind, &it.mid, &it.event_json,
                    it.contact_json.as_deref(), Some(&it.provider_id), 0, now,
                )?;
                if it.kind == ItemKind::Message {
                    conn.prepare_cached(
                        "INSERT INTO contacts(channel, contact, last_inbound_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT(channel, contact) DO UPDATE SET last_inbound_ms = excluded.last_inbound_ms",
                    )?
                    .execute(params![channel, it.contact, now])?;
                    // The contact is in a conversation now: their waiting sends go first.
                    conn.prepare_cached(
                        "UPDATE queues SET class = 0 WHERE channel = ?1 AND lane = 1 AND qkey = ?2 AND class = 1",
                    )?
                    .execute(params![channel, it.contact])?;
                }
                out.push(IngestResult::Stored { item_id: id });
            }
            Ok(out)
        })
        .await
    }

    async fn store_unparseable(
        &self,
        channel: &str,
        route: &str,
        content_type: &str,
        body: Vec<u8>,
        reason: &str,
    ) -> Result<i64> {
        let (channel, route, ct, reason) = (
            channel.to_string(),
            route.to_string(),
            content_type.to_string(),
            reason.to_string(),
        );
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO raw_webhooks(channel, route, content_type, body, reason, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![channel, route, ct, body, reason, now_ms()])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn accept_outbound(
        &self,
        channel: &str,
        item: NewOutbound,
        window_ms: i64,
    ) -> Result<AcceptedSend> {
        let channel = channel.to_string();
        self.write(move |conn| {
            let now = now_ms();
            let last: Option<i64> = conn
                .prepare_cached(
                    "SELECT last_inbound_ms FROM contacts WHERE channel = ?1 AND contact = ?2",
                )?
                .query_row(params![channel, item.contact], |r| r.get(0))
                .optional()?;
            let class = if last.is_some_and(|l| now - l <= window_ms) {
                0
            } else {
                1
            };
            let id = insert_item(
                conn,
                &channel,
                Lane::Provider,
                &item.contact,
                &item.contact,
                ItemKind::Send,
                &item.mid,
                &item.message_json,
                None,
                None,
                class,
                now,
            )?;
            history(
                conn,
                id,
                now,
                "accepted",
                Some(if class == 0 { "conversation" } else { "bulk" }),
            )?;
            Ok(AcceptedSend {
                item_id: id,
                conversation: class == 0,
            })
        })
        .await
    }

    async fn apply_receipts(
        &self,
        channel: &str,
        receipts: Vec<ReceiptIn>,
    ) -> Result<Vec<ReceiptResult>> {
        let channel = channel.to_string();
        let (ttl, park_ttl) = (self.dedupe_ttl_ms, self.parked_ttl_ms);
        self.write(move |conn| {
            let now = now_ms();
            let mut out = Vec::with_capacity(receipts.len());
            for r in receipts {
                if !claim_dedupe(conn, &channel, &format!("receipt:{}", r.dedupe_key), now, ttl)? {
                    out.push(ReceiptResult::Duplicate);
                    continue;
                }
                let item = send_by_provider_id(conn, &channel, &r.provider_id)?;
                let Some(value) = r.status else {
                    out.push(ReceiptResult::Ignored {
                        mid: item.map(|i| i.1).unwrap_or_default(),
                        why: "informational receipt".into(),
                    });
                    continue;
                };
                match item {
                    Some(item) => out.push(apply_status(conn, &channel, item, value, r.reason.as_deref(), now)?),
                    None => {
                        conn.prepare_cached(
                            "INSERT INTO parked_receipts(channel, provider_id, status, reason, received_ms, expires_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![channel, r.provider_id, status::code(value), r.reason, now, now + park_ttl])?;
                        out.push(ReceiptResult::Parked);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn claim(
        &self,
        channel: &str,
        lane: Lane,
        now: i64,
        limits: [usize; 2],
    ) -> Result<ClaimBatch> {
        let channel = channel.to_string();
        self.write(move |conn| {
            let mut batch = ClaimBatch::default();
            for (class, &limit) in limits.iter().enumerate() {
                let mut next: Option<i64> = None;
                if limit > 0 {
                    let mut stmt = conn.prepare_cached(
                        "SELECT qkey FROM queues WHERE channel = ?1 AND lane = ?2 AND claimed = 0 AND class = ?3
                         AND next_ms <= ?4 ORDER BY next_ms LIMIT ?5",
                    )?;
                    let keys: Vec<String> = stmt
                        .query_map(params![channel, lane.code(), class as i64, now, limit as i64], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut upd = conn
                        .prepare_cached("UPDATE queues SET claimed = 1 WHERE channel = ?1 AND lane = ?2 AND qkey = ?3")?;
                    for k in keys {
                        upd.execute(params![channel, lane.code(), k])?;
                        batch.claimed.push((k, class as u8));
                    }
                }
                next = next.or(conn
                    .prepare_cached(
                        "SELECT next_ms FROM queues WHERE channel = ?1 AND lane = ?2 AND claimed = 0 AND class = ?3
                         AND next_ms > ?4 ORDER BY next_ms LIMIT 1",
                    )?
                    .query_row(params![channel, lane.code(), class as i64, now], |r| r.get(0))
                    .optional()?);
                batch.next_due_ms = match (batch.next_due_ms, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Ok(batch)
        })
        .await
    }

    async fn head_items(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
    ) -> Result<Vec<Item>> {
        let (channel, qkey) = (channel.to_string(), qkey.to_string());
        self.write(move |conn| head_of_queue(conn, &channel, lane, &qkey, limit))
            .await
    }

    async fn take_head(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
        at_ms: i64,
    ) -> Result<Vec<Item>> {
        let (channel, qkey) = (channel.to_string(), qkey.to_string());
        self.write(move |conn| {
            let items = head_of_queue(conn, &channel, lane, &qkey, limit)?;
            let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
            mark_attempting(conn, &channel, lane, &ids, at_ms)?;
            Ok(items)
        })
        .await
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
        let (channel, qkey, ids) = (channel.to_string(), qkey.to_string(), ids.to_vec());
        self.write(move |conn| {
            let now = now_ms();
            match fin {
                Finish::Done { provider_id } => {
                    for &id in &ids {
                        set_attempt_outcome(conn, id, "ok", None, dur, Some(sent_at))?;
                        conn.prepare_cached(
                            "UPDATE items SET state = 2, updated_ms = ?1, last_error = NULL,
                             status = CASE WHEN kind = 3 AND status = 0 THEN 1 ELSE status END WHERE id = ?2",
                        )?
                        .execute(params![now, id])?;
                    }
                    if let (Some(pid), Some(&id)) = (provider_id, ids.first()) {
                        record_provider_id(conn, &channel, id, &pid, now)?;
                    }
                }
                Finish::Retry { next_ms, error, ambiguous, counted, outcome } => {
                    for &id in &ids {
                        set_attempt_outcome(conn, id, outcome, Some(&error), dur, Some(sent_at))?;
                        conn.prepare_cached(
                            "UPDATE items SET state = 0, next_ms = ?1, last_error = ?2, updated_ms = ?3,
                             ambiguous = ambiguous + ?4, attempts = attempts - ?5 WHERE id = ?6",
                        )?
                        .execute(params![next_ms, error, now, ambiguous as i64, (!counted) as i64, id])?;
                    }
                    conn.prepare_cached(
                        "UPDATE queues SET claimed = 0, next_ms = ?1 WHERE channel = ?2 AND lane = ?3 AND qkey = ?4",
                    )?
                    .execute(params![next_ms, channel, lane.code(), qkey])?;
                    return Ok(false);
                }
                Finish::NotSent { next_ms } => {
                    for &id in &ids {
                        conn.prepare_cached("DELETE FROM attempts WHERE item_id = ?1 AND outcome = 'attempting'")?
                            .execute(params![id])?;
                        conn.prepare_cached(
                            "UPDATE items SET state = 0, attempts = attempts - 1, updated_ms = ?1 WHERE id = ?2",
                        )?
                        .execute(params![now, id])?;
                    }
                    conn.prepare_cached(
                        "UPDATE queues SET claimed = 0, next_ms = ?1 WHERE channel = ?2 AND lane = ?3 AND qkey = ?4",
                    )?
                    .execute(params![next_ms, channel, lane.code(), qkey])?;
                    return Ok(false);
                }
                Finish::Dead { reason, report_failed } => {
                    for &id in &ids {
                        set_attempt_outcome(conn, id, "dead", Some(&reason), dur, Some(sent_at))?;
                        mark_dead(conn, &channel, id, &reason, report_failed, now)?;
                    }
                }
            }
            let more = queue_has_pending(conn, &channel, lane, &qkey)?;
            if !more {
                drop_queue(conn, &channel, lane, &qkey)?;
            }
            Ok(more)
        })
        .await
    }

    async fn release(&self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        let (channel, qkey) = (channel.to_string(), qkey.to_string());
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE queues SET claimed = 0 WHERE channel = ?1 AND lane = ?2 AND qkey = ?3",
            )?
            .execute(params![channel, lane.code(), qkey])?;
            Ok(())
        })
        .await
    }

    async fn recover(
        &self,
        policy: &std::collections::HashMap<String, CrashPolicy>,
    ) -> Result<RecoveryReport> {
        let policy = policy.clone();
        self.recover_matching(None, move |ch| policy.get(ch).copied().unwrap_or_default())
            .await
    }

    async fn recent_attempts(&self, channel: &str, lane: Lane, n: usize) -> Result<Vec<i64>> {
        let channel = channel.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT at_ms FROM attempts WHERE channel = ?1 AND lane = ?2 AND call_first = 1
                 ORDER BY at_ms DESC LIMIT ?3",
            )?
            .query_map(params![channel, lane.code(), n as i64], |r| r.get(0))?
            .collect()
        })
        .await
    }

    async fn set_paused_until(&self, channel: &str, lane: Lane, until_ms: i64) -> Result<()> {
        let channel = channel.to_string();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(channel, lane) DO UPDATE SET paused_until_ms = excluded.paused_until_ms",
            )?
            .execute(params![channel, lane.code(), until_ms])?;
            Ok(())
        })
        .await
    }

    async fn paused_until(&self, channel: &str, lane: Lane) -> Result<i64> {
        let channel = channel.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT paused_until_ms FROM lane_state WHERE channel = ?1 AND lane = ?2",
                )?
                .query_row(params![channel, lane.code()], |r| r.get(0))
                .optional()?
                .unwrap_or(0))
        })
        .await
    }

    async fn lane_stats(&self) -> Result<Vec<LaneStats>> {
        self.read(|conn| {
            // Counts read only the partial indexes (no table rows); the oldest pending item
            // is the first entry of `items_pending` for the lane.
            let mut out: Vec<LaneStats> = conn
                .prepare_cached("SELECT channel, lane, COUNT(*) FROM items WHERE state < 2 GROUP BY channel, lane")?
                .query_map([], |r| {
                    Ok(LaneStats {
                        channel: r.get(0)?,
                        lane: Lane::from_code(r.get(1)?),
                        pending: r.get(2)?,
                        oldest_pending_ms: None,
                        dead: 0,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            for s in &mut out {
                s.oldest_pending_ms = conn
                    .prepare_cached(
                        "SELECT created_ms FROM items INDEXED BY items_pending
                         WHERE channel = ?1 AND lane = ?2 AND state < 2 ORDER BY id LIMIT 1",
                    )?
                    .query_row(params![s.channel, s.lane.code()], |r| r.get(0))
                    .optional()?;
            }
            let dead: Vec<(String, i64, i64)> = conn
                .prepare_cached("SELECT channel, lane, COUNT(*) FROM items WHERE state = 3 GROUP BY channel, lane")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (channel, lane, n) in dead {
                let lane = Lane::from_code(lane);
                match out.iter_mut().find(|s| s.channel == channel && s.lane == lane) {
                    Some(s) => s.dead = n,
                    None => out.push(LaneStats { channel, lane, pending: 0, oldest_pending_ms: None, dead: n }),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn probe_write(&self) -> Result<()> {
        if let Some(why) = self.damage() {
            return Err(unavailable(format!("the database file is damaged: {why}")));
        }
        self.write(|conn| {
            conn.prepare_cached("INSERT INTO meta(k, v) VALUES ('ready_probe', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v")?
                .execute(params![now_ms().to_string()])?;
            Ok(())
        })
        .await
    }

    async fn prune(&self, now: i64, retention_ms: i64) -> Result<PruneReport> {
        self.write(move |conn| {
            let cutoff = now - retention_ms;
            // Bounded batches keep each group commit short, so lanes never stall behind a prune.
            let items = conn.execute(
                "DELETE FROM items WHERE id IN (SELECT id FROM items WHERE state = 2 AND updated_ms < ?1 LIMIT 5000)",
                params![cutoff],
            )? as u64;
            let dedupe = conn.execute(
                "DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe WHERE expires_ms < ?1 LIMIT 5000)",
                params![now],
            );
            // `dedupe` is WITHOUT ROWID: delete by key instead.
            let dedupe = match dedupe {
                Ok(n) => n as u64,
                Err(_) => conn.execute(
                    "DELETE FROM dedupe WHERE (channel, key) IN
                     (SELECT channel, key FROM dedupe WHERE expires_ms < ?1 LIMIT 5000)",
                    params![now],
                )? as u64,
            };
            let parked = conn.execute("DELETE FROM parked_receipts WHERE expires_ms < ?1", params![now])? as u64;
            let attempts = conn.execute(
                "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE at_ms < ?1 LIMIT 5000)",
                params![cutoff],
            )? as u64;
            conn.execute(
                "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE at_ms < ?1 LIMIT 5000)",
                params![cutoff],
            )?;
            Ok(PruneReport { items, dedupe, parked, attempts })
        })
        .await
    }

    async fn item_by_mid(&self, channel: &str, mid: &str) -> Result<Option<Item>> {
        let (channel, mid) = (channel.to_string(), mid.to_string());
        self.read(move |conn| {
            let sql = format!("SELECT {ITEM_COLUMNS} FROM items WHERE channel = ?1 AND mid = ?2 ORDER BY id LIMIT 1");
            conn.prepare_cached(&sql)?.query_row(params![channel, mid], item_from_row).optional()
        })
        .await
    }

    // One node owns the file: it holds every lane from the start, for good.
    async fn acquire_lane(&self, _channel: &str, _lane: Lane) -> Result<Option<LeaseGrant>> {
        Ok(Some(LeaseGrant {
            epoch: 1,
            ttl_ms: None,
        }))
    }

    async fn renew_lane(&self, _channel: &str, _lane: Lane) -> Result<bool> {
        Ok(true)
    }

    async fn release_lane(&self, _channel: &str, _lane: Lane) -> Result<()> {
        Ok(())
    }

    async fn recover_lane(
        &self,
        channel: &str,
        lane: Lane,
        policy: CrashPolicy,
    ) -> Result<RecoveryReport> {
        self.recover_matching(Some((channel.to_string(), lane)), move |_| policy)
            .await
    }
}

/// The first pending items of a queue; drops the queue row when there are none.
fn head_of_queue(
    conn: &Connection,
    channel: &str,
    lane: Lane,
    qkey: &str,
    limit: usize,
) -> rusqlite::Result<Vec<Item>> {
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM items WHERE channel = ?1 AND lane = ?2 AND qkey = ?3 AND state < 2
         ORDER BY id LIMIT ?4"
    );
    let items: Vec<Item> = conn
        .prepare_cached(&sql)?
        .query_map(
            params![channel, lane.code(), qkey, limit as i64],
            item_from_row,
        )?
        .collect::<rusqlite::Result<_>>()?;
    if items.is_empty() {
        drop_queue(conn, channel, lane, qkey)?;
    }
    Ok(items)
}

fn mark_attempting(
    conn: &Connection,
    channel: &str,
    lane: Lane,
    ids: &[i64],
    at_ms: i64,
) -> rusqlite::Result<()> {
    let now = now_ms();
    for (i, id) in ids.iter().enumerate() {
        conn.prepare_cached(
            "UPDATE items SET state = 1, attempts = attempts + 1, updated_ms = ?1 WHERE id = ?2",
        )?
        .execute(params![now, id])?;
        // One row per item for its history; `call_first` marks one row per request, which
        // is what the rate limit counts.
        conn.prepare_cached(
            "INSERT INTO attempts(item_id, channel, lane, at_ms, outcome, call_first)
             VALUES (?1, ?2, ?3, ?4, 'attempting', ?5)",
        )?
        .execute(params![id, channel, lane.code(), at_ms, (i == 0) as i64])?;
    }
    Ok(())
}

/// Stores the provider's id of a send and applies receipts that arrived before it.
fn record_provider_id(
    conn: &Connection,
    channel: &str,
    id: i64,
    pid: &str,
    now: i64,
) -> rusqlite::Result<()> {
    if send_by_provider_id(conn, channel, pid)?.is_some() {
        history(conn, id, now, "duplicate provider id", Some(pid))?;
        return Ok(());
    }
    conn.prepare_cached("UPDATE items SET provider_id = ?1 WHERE id = ?2")?
        .execute(params![pid, id])?;
    let parked: Vec<(i64, i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT id, status, reason FROM parked_receipts WHERE channel = ?1 AND provider_id = ?2 ORDER BY id",
        )?
        .query_map(params![channel, pid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (pk, code, reason) in parked {
        if let (Some(v), Some(item)) = (
            status::from_code(code),
            send_by_provider_id(conn, channel, pid)?,
        ) {
            apply_status(conn, channel, item, v, reason.as_deref(), now)?;
        }
        conn.prepare_cached("DELETE FROM parked_receipts WHERE id = ?1")?
            .execute(params![pk])?;
    }
    Ok(())
}
