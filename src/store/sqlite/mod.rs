//! The embedded SQLite store.
//!
//! One writer thread owns the only read-write connection. Requests arrive as jobs on a
//! channel; the writer runs every job waiting at that moment inside one transaction (each
//! in its own savepoint, so one failing job does not undo the others) and commits once:
//! many requests share one fsync (group commit). A job's caller hears back only after the
//! COMMIT returned, so an `Ok` means the write is on disk (with `synchronous = FULL`).
//! Statistics queries use a separate read connection so they never wait behind writes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::*;
use crate::clock::now_ms;
use crate::config::{StoreConfig, Synchronous};
use tx::{ITEM_COLUMNS, SqliteTx, item_from_row};

mod admin;
pub mod aged;
pub mod migrate;
pub mod sql;
mod tx;

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
    /// The lanes' tenures in this process (see [`LaneEpochs`]).
    epochs: Arc<LaneEpochs>,
    /// Attempts in flight (see [`LiveAttempts`]).
    live: Arc<LiveAttempts>,
    /// The bound on the writer's queue (see [`Admission`]).
    admission: Admission,
}

/// The current tenure of each lane: bumped each time a lane (re)starts, so an attempt of
/// an earlier lane generation (before a reload) is told apart from the current one's.
#[derive(Debug, Default)]
pub struct LaneEpochs(Mutex<HashMap<(String, i64), i64>>);

impl LaneEpochs {
    /// 0 for a lane that never started.
    pub fn current(&self, channel: &str, lane: Lane) -> i64 {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(channel.to_string(), lane.code()))
            .copied()
            .unwrap_or(0)
    }
    fn bump(&self, channel: &str, lane: Lane) -> i64 {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry((channel.to_string(), lane.code())).or_insert(0);
        *e += 1;
        *e
    }
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

/// A rule's error: fenced writes keep their kind, anything else means unavailable.
fn rule_error(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::ToSqlConversionFailure(inner) = &e
        && let Some(f) = inner.downcast_ref::<tx::FencedWrite>()
    {
        return StoreError::Fenced(f.0.clone());
    }
    unavailable(e)
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
        let applied = migrate::migrate(&mut writer).map_err(unavailable)?;
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
            epochs: Arc::default(),
            live: Arc::default(),
            admission: Admission::from_config(cfg),
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
        Ok(migrate::migrate(&mut conn)?)
    }

    /// Runs `f` inside the writer's next transaction; resolves after the COMMIT.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        self.write_as(Class::Internal, f).await
    }

    /// As [`SqliteStore::write`], for a request of `class`: refused with `Overloaded` when
    /// its share of the queue is full. A request whose caller has gone (the HTTP handler's
    /// future was dropped: the client hung up, or the request timed out) before the writer
    /// got to it is not run, so nothing is committed that nobody was answered for.
    pub(crate) async fn write_as<R: Send + 'static>(
        &self,
        class: Class,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let ticket = self.admission.admit(class)?;
        let (tx, rx) = oneshot::channel();
        let damaged = self.damaged.clone();
        let cancellable = class != Class::Internal;
        let job: Job = Box::new(move |conn| {
            let gone = cancellable && tx.is_closed();
            let res = match conn {
                _ if gone => Err(rusqlite::Error::InvalidQuery),
                Some(conn) => in_savepoint(conn, f),
                None => Err(rusqlite::Error::InvalidQuery),
            };
            if gone {
                tracing::info!(
                    ?class,
                    "a request's caller went away before the store got to it: not committed"
                );
            }
            if let Err(e) = &res {
                note_corruption(&damaged, e);
            }
            Box::new(move |commit| {
                let out = match (commit, res) {
                    (Ok(()), Ok(v)) => Ok(v),
                    (Err(e), _) => Err(unavailable(format!("commit failed: {e}"))),
                    (Ok(()), Err(e)) => Err(rule_error(e)),
                };
                let _ = tx.send(out);
                drop(ticket);
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

/// Runs a rule of `store::rules` to completion on the writer thread. SQLite's primitives
/// never wait, so the rule is ready at its first poll; one that is not is a bug, reported
/// as an error rather than a hang of the writer.
fn run_rule<R>(
    rule: impl std::future::Future<Output = rusqlite::Result<R>>,
) -> rusqlite::Result<R> {
    let mut rule = std::pin::pin!(rule);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match rule.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => Err(rusqlite::Error::ToSqlConversionFailure(
            "a store rule waited inside the SQLite writer".into(),
        )),
    }
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
        self.write_as(Class::Webhook, move |conn| {
            run_rule(rules::ingest_inbound(
                &mut SqliteTx(conn, None),
                &channel,
                items,
                ttl,
                now_ms(),
            ))
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
        self.write_as(Class::Webhook, move |conn| {
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
        self.write_as(Class::Message, move |conn| {
            run_rule(rules::accept_outbound(
                &mut SqliteTx(conn, None),
                &channel,
                item,
                window_ms,
                now_ms(),
            ))
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
        self.write_as(Class::Webhook, move |conn| {
            let tx = &mut SqliteTx(conn, None);
            run_rule(rules::apply_receipts(
                tx,
                &channel,
                receipts,
                ttl,
                park_ttl,
                now_ms(),
            ))
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
            run_rule(rules::claim(
                &mut SqliteTx(conn, None),
                &channel,
                lane,
                now,
                limits,
            ))
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
        self.write(move |conn| {
            run_rule(rules::head_of_queue(
                &mut SqliteTx(conn, None),
                &channel,
                lane,
                &qkey,
                limit,
            ))
        })
        .await
    }

    async fn take_head(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        how: TakeHead,
    ) -> Result<Head> {
        let (channel, qkey) = (channel.to_string(), qkey.to_string());
        let (epochs, live) = (self.epochs.clone(), self.live.clone());
        let marked = Arc::new(Mutex::new(Vec::new()));
        let marked2 = marked.clone();
        let head = self
            .write(move |conn| {
                let tx = &mut SqliteTx(conn, Some(&epochs));
                let head = run_rule(rules::take_head(
                    tx,
                    &channel,
                    lane,
                    &qkey,
                    how,
                    &live,
                    now_ms(),
                ))?;
                // Registered on the writer thread, in the same step as the mark: the next
                // rule to run (another lane generation's) already knows whose mark it is.
                if let Head::Taken(items) = &head {
                    live.register(items, how.epoch);
                    *marked2.lock().unwrap_or_else(|e| e.into_inner()) =
                        items.iter().map(|i| i.id).collect();
                }
                Ok(head)
            })
            .await;
        if head.is_err() {
            // Not committed: those items are nobody's attempt.
            self.live
                .remove(&marked.lock().unwrap_or_else(|e| e.into_inner()));
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
        let current = self.epochs.current(channel, lane);
        let taken = taken_of(&self.live, ids, current);
        let (channel, qkey) = (channel.to_string(), qkey.to_string());
        let epochs = self.epochs.clone();
        let out = self
            .write(move |conn| {
                let tx = &mut SqliteTx(conn, Some(&epochs));
                run_rule(rules::finish(
                    tx,
                    &channel,
                    lane,
                    &qkey,
                    &taken,
                    fin,
                    sent_at,
                    dur,
                    now_ms(),
                ))
            })
            .await;
        if matches!(out, Ok(_) | Err(StoreError::Fenced(_))) {
            self.live.remove(ids);
        }
        out
    }

    async fn release(&self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        let (channel, qkey) = (channel.to_string(), qkey.to_string());
        self.write(move |conn| {
            run_rule(rules::release(
                &mut SqliteTx(conn, None),
                &channel,
                lane,
                &qkey,
            ))
        })
        .await
    }

    async fn expire_aged(
        &self,
        channel: &str,
        lane: Lane,
        before_ms: i64,
        reason: &str,
        limit: usize,
    ) -> Result<u64> {
        let (channel, reason) = (channel.to_string(), reason.to_string());
        self.write(move |conn| {
            run_rule(rules::expire_aged(
                &mut SqliteTx(conn, None),
                &channel,
                lane,
                before_ms,
                &reason,
                limit,
                now_ms(),
            ))
        })
        .await
    }

    async fn recover(
        &self,
        policy: &std::collections::HashMap<String, CrashPolicy>,
    ) -> Result<RecoveryReport> {
        // Every lane with an item left attempting or a queue left claimed, in one write.
        let policy = policy.clone();
        self.write(move |conn| {
            let lanes: Vec<(String, i64)> = conn
                .prepare(
                    "SELECT DISTINCT channel, lane FROM items WHERE state = 1
                     UNION SELECT DISTINCT channel, lane FROM queues WHERE claimed = 1",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut report = RecoveryReport::default();
            let now = now_ms();
            for (channel, lane) in lanes {
                let p = policy.get(&channel).copied().unwrap_or_default();
                let tx = &mut SqliteTx(conn, None);
                let r = run_rule(rules::recover_lane(
                    tx,
                    &channel,
                    Lane::from_code(lane),
                    p,
                    &LiveAttempts::default(),
                    now,
                ))?;
                report.resent += r.resent;
                report.failed += r.failed;
            }
            Ok(report)
        })
        .await
    }
    async fn recent_attempts(&self, channel: &str, lane: Lane, n: usize) -> Result<Vec<i64>> {
        let channel = channel.to_string();
        self.read(move |conn| {
            conn.prepare_cached(sql::RECENT_ATTEMPTS)?
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
                .prepare_cached(sql::LANE_PENDING)?
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
                    .prepare_cached(sql::LANE_OLDEST_PENDING)?
                    .query_row(params![s.channel, s.lane.code()], |r| r.get(0))
                    .optional()?;
            }
            let dead: Vec<(String, i64, i64)> = conn
                .prepare_cached(sql::LANE_DEAD)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (channel, lane, n) in dead {
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

    async fn note(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT v FROM meta WHERE k = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn set_note(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |conn| {
            conn.prepare_cached("INSERT INTO meta(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v")?
                .execute(params![key, value])?;
            Ok(())
        })
        .await
    }

    async fn prune_batch(&self, now: i64, retention_ms: i64, batch: usize) -> Result<PruneReport> {
        let cutoff = now - retention_ms;
        // Each table its own job of the writer: one indexed DELETE of at most `batch` rows,
        // so the group commits around it stay short.
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
            counts[n] = self
                .write(move |conn| {
                    Ok(conn
                        .prepare_cached(sql)?
                        .execute(params![at, batch as i64])? as u64)
                })
                .await?;
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
        let (channel, mid) = (channel.to_string(), mid.to_string());
        self.read(move |conn| {
            let sql = format!("SELECT {ITEM_COLUMNS} FROM items WHERE channel = ?1 AND mid = ?2 ORDER BY id LIMIT 1");
            conn.prepare_cached(&sql)?.query_row(params![channel, mid], item_from_row).optional()
        })
        .await
    }

    // One node owns the file: it holds every lane for good. Each start of a lane (at
    // start-up, after a reload) is a new tenure, so the earlier one's late writes are known.
    async fn acquire_lane(&self, channel: &str, lane: Lane) -> Result<Option<LeaseGrant>> {
        Ok(Some(LeaseGrant {
            epoch: self.epochs.bump(channel, lane),
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
        let channel = channel.to_string();
        let live = self.live.clone();
        self.write(move |conn| {
            run_rule(rules::recover_lane(
                &mut SqliteTx(conn, None),
                &channel,
                lane,
                policy,
                &live,
                now_ms(),
            ))
        })
        .await
    }

    fn queue_depth(&self) -> QueueDepth {
        self.admission.depth()
    }

    fn live(&self) -> &LiveAttempts {
        &self.live
    }

    fn lane_epoch(&self, channel: &str, lane: Lane) -> i64 {
        self.epochs.current(channel, lane)
    }
}
