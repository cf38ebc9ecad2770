//! [`AdminStore`] and [`ActivityLog`] for PostgreSQL: the same answers as the SQLite
//! implementation (`sqlite/admin.rs`), written for a database several nodes change at once.
//!
//! SQLite runs every change on one writer thread, so "check, then write" cannot race
//! there. Here each change is one transaction that decides with the write itself:
//! - a replay or discard is an `UPDATE ... WHERE state = 3`: of two concurrent ones (from
//!   any nodes), the second waits for the first's row lock, then finds the item no longer
//!   dead and changes nothing;
//! - a purge locks the contact's queue rows, then its items (the order the lanes lock them
//!   in), and only then decides whether a message is in flight;
//! - every audit row is written in the transaction of its change.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::sql;
use super::tx::PgTx;
use super::{PAUSE_PREFIX, PgStore, db, exec, opt, rows};
use crate::clock::now_ms;
use crate::store::activity::{ActivityLog, AttemptCounts};
use crate::store::admin::*;
use crate::store::admin_rules::{self, AdminTx, ContactItem, DeadItem, Revived};
use crate::store::{ItemKind, Lane, Result};

const MESSAGE_COLUMNS: &str = "id, channel, lane, contact, kind, mid, payload, state, status, attempts, \
     ambiguous, created_ms, updated_ms, next_ms, provider_id, last_error";

fn message_row(r: &Row) -> MessageRow {
    MessageRow {
        id: r.get(0),
        channel: r.get(1),
        lane: r.get(2),
        contact: r.get(3),
        kind: r.get(4),
        mid: r.get(5),
        payload: r.get(6),
        state: r.get(7),
        status: r.get(8),
        attempts: r.get(9),
        ambiguous: r.get(10),
        created_ms: r.get(11),
        updated_ms: r.get(12),
        next_ms: r.get(13),
        provider_id: r.get(14),
        last_error: r.get(15),
    }
}

const LOG_COLUMNS: &str = "id, channel, mid, at_ms, direction, kind, method, url, status, duration_ms, \
     request_headers, request_body, response_body, error";

fn log_row(r: &Row) -> ChannelLogRow {
    ChannelLogRow {
        id: r.get(0),
        channel: r.get(1),
        mid: r.get(2),
        at_ms: r.get(3),
        direction: r.get(4),
        kind: r.get(5),
        method: r.get(6),
        url: r.get(7),
        status: r.get(8),
        duration_ms: r.get(9),
        request_headers: r.get(10),
        request_body: r.get(11),
        response_body: r.get(12),
        error: r.get(13),
    }
}

const RAW_COLUMNS: &str = "id, channel, route, content_type, body, reason, received_ms";

fn raw_row(r: &Row) -> RawWebhookRow {
    RawWebhookRow {
        id: r.get(0),
        channel: r.get(1),
        route: r.get(2),
        content_type: r.get(3),
        body: r.get(4),
        reason: r.get(5),
        received_ms: r.get(6),
    }
}

type Arg = Box<dyn ToSql + Sync + Send>;

/// Builds the WHERE clause of a message listing (the same filters as SQLite's).
fn message_where(f: &MessageFilter) -> (String, Vec<Arg>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut add = |clause: &str, v: Arg| {
        args.push(v);
        clauses.push(clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(c) = &f.channel {
        add("channel = ?", Box::new(c.clone()));
    }
    if let Some(l) = f.lane {
        add("lane = ?", Box::new(l.code()));
    }
    if let Some(s) = f.state {
        add("state = ?", Box::new(s));
    }
    if let Some(c) = &f.contact {
        add("contact = ?", Box::new(c.clone()));
    }
    if let Some(m) = &f.mid {
        add("mid = ?", Box::new(m.clone()));
    }
    match f.kind {
        Some(k) => add("kind = ?", Box::new(k as i64)),
        None => add("kind <> ?", Box::new(ItemKind::Status as i64)),
    }
    if let Some(t) = f.since_ms {
        add("created_ms >= ?", Box::new(t));
    }
    if let Some(t) = f.until_ms {
        add("created_ms < ?", Box::new(t));
    }
    if let Some(id) = f.before_id {
        add("id < ?", Box::new(id));
    }
    (clauses.join(" AND "), args)
}

impl PgStore {
    /// One read outside any transaction.
    async fn read(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db)?;
        client.query(&stmt, p).await.map_err(db)
    }
}

#[async_trait::async_trait]
impl AdminStore for PgStore {
    async fn list_messages(&self, filter: MessageFilter) -> Result<Vec<MessageRow>> {
        let (clause, mut args) = message_where(&filter);
        args.push(Box::new(filter.limit as i64));
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM items WHERE {clause} ORDER BY id DESC LIMIT ${}",
            args.len()
        );
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        // Filters vary per call: a plain (unnamed) statement rather than a cached one.
        let client = self.client().await?;
        let found = client.query(&sql, &refs).await.map_err(db)?;
        Ok(found.iter().map(message_row).collect())
    }

    async fn message_detail(&self, mid: &str) -> Result<Option<MessageDetail>> {
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM items WHERE mid = $1 ORDER BY kind = 2, id");
        let found = self.read(&sql, &[&mid]).await?;
        let mut items = found.iter().map(message_row);
        let Some(item) = items.next() else {
            return Ok(None);
        };
        let related: Vec<MessageRow> = items.collect();
        let mut history = Vec::new();
        let mut attempts = Vec::new();
        for id in std::iter::once(item.id).chain(related.iter().map(|r| r.id)) {
            let h = self
                .read(
                    "SELECT item_id, at_ms, event, detail FROM history WHERE item_id = $1 ORDER BY id",
                    &[&id],
                )
                .await?;
            history.extend(h.iter().map(|r| HistoryRow {
                item_id: r.get(0),
                at_ms: r.get(1),
                event: r.get(2),
                detail: r.get(3),
            }));
            let a = self
                .read(
                    "SELECT item_id, at_ms, outcome, detail, duration_ms FROM attempts
                     WHERE item_id = $1 ORDER BY id",
                    &[&id],
                )
                .await?;
            attempts.extend(a.iter().map(|r| AttemptRow {
                item_id: r.get(0),
                at_ms: r.get(1),
                outcome: r.get(2),
                detail: r.get(3),
                duration_ms: r.get(4),
            }));
        }
        history.sort_by_key(|h| h.at_ms);
        attempts.sort_by_key(|a| a.at_ms);
        let sql = format!("SELECT {LOG_COLUMNS} FROM channel_logs WHERE mid = $1 ORDER BY id");
        let channel_logs = self
            .read(&sql, &[&mid])
            .await?
            .iter()
            .map(log_row)
            .collect();
        Ok(Some(MessageDetail {
            item,
            related,
            history,
            attempts,
            channel_logs,
        }))
    }

    async fn list_raw_webhooks(
        &self,
        channel: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RawWebhookRow>> {
        let sql = format!(
            "SELECT {RAW_COLUMNS} FROM raw_webhooks
             WHERE ($1::TEXT IS NULL OR channel = $1) AND ($2::BIGINT IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3"
        );
        let found = self
            .read(&sql, &[&channel, &before_id, &(limit as i64)])
            .await?;
        Ok(found.iter().map(raw_row).collect())
    }

    async fn raw_webhook(&self, id: i64) -> Result<Option<RawWebhookRow>> {
        let sql = format!("SELECT {RAW_COLUMNS} FROM raw_webhooks WHERE id = $1");
        Ok(self.read(&sql, &[&id]).await?.first().map(raw_row))
    }

    async fn replay_items(
        &self,
        ids: Vec<i64>,
        actor: &str,
        force: bool,
    ) -> Result<Vec<ReplayResult>> {
        in_tx!(self, |t| admin_rules::replay_items(
            t,
            ids,
            actor,
            force,
            now_ms()
        ))
    }

    async fn discard_items(&self, ids: Vec<i64>, actor: &str) -> Result<Vec<i64>> {
        in_tx!(self, |t| admin_rules::discard_items(
            t,
            ids,
            actor,
            now_ms()
        ))
    }

    async fn delete_raw_webhook(
        &self,
        id: i64,
        actor: &str,
        action: &str,
        detail: Option<String>,
    ) -> Result<bool> {
        in_tx!(self, |t| admin_rules::delete_raw_webhook(
            t,
            id,
            actor,
            action,
            detail.as_deref()
        ))
    }

    async fn update_raw_webhook_reason(&self, id: i64, reason: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE raw_webhooks SET reason = $1 WHERE id = $2",
                &[&reason, &id],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn pause_lane(
        &self,
        channel: &str,
        lane: Lane,
        until_ms: i64,
        actor: &str,
    ) -> Result<()> {
        in_tx!(self, |t| admin_rules::pause_lane(
            t, channel, lane, until_ms, actor
        ))
    }

    async fn resume_lane(&self, channel: &str, lane: Lane, now: i64, actor: &str) -> Result<()> {
        in_tx!(self, |t| admin_rules::resume_lane(
            t, channel, lane, now, actor
        ))
    }

    async fn lane_activity(&self, since_ms: i64) -> Result<Vec<LaneActivity>> {
        // SUM of a BIGINT is NUMERIC in PostgreSQL: cast back.
        let found = self
            .read(
                "SELECT channel, lane, SUM(call_first)::BIGINT,
                        SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END)::BIGINT
                 FROM attempts WHERE at_ms >= $1 GROUP BY channel, lane",
                &[&since_ms],
            )
            .await?;
        Ok(found
            .iter()
            .map(|r| LaneActivity {
                channel: r.get(0),
                lane: Lane::from_code(r.get(1)),
                requests: r.get::<_, Option<i64>>(2).unwrap_or(0),
                delivered: r.get::<_, Option<i64>>(3).unwrap_or(0),
            })
            .collect())
    }

    async fn purge_contact(
        &self,
        channel: &str,
        contact: &str,
        actor: &str,
    ) -> Result<PurgeReport> {
        in_tx!(self, |t| admin_rules::purge_contact(
            t, channel, contact, actor
        ))
    }

    async fn list_audit(
        &self,
        actor: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>> {
        let found = self
            .read(
                "SELECT id, at_ms, actor, action, target, detail FROM audit_log
                 WHERE ($1::TEXT IS NULL OR actor = $1) AND ($2::BIGINT IS NULL OR id < $2)
                 ORDER BY id DESC LIMIT $3",
                &[&actor, &before_id, &(limit as i64)],
            )
            .await?;
        Ok(found
            .iter()
            .map(|r| AuditRow {
                id: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }

    async fn insert_channel_logs(&self, rows: Vec<ChannelLogRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // One statement per batch: the columns go as arrays and come back as rows.
        let mut channel = Vec::with_capacity(rows.len());
        let mut mid = Vec::with_capacity(rows.len());
        let mut at_ms = Vec::with_capacity(rows.len());
        let mut direction = Vec::with_capacity(rows.len());
        let mut kind = Vec::with_capacity(rows.len());
        let mut method = Vec::with_capacity(rows.len());
        let mut url = Vec::with_capacity(rows.len());
        let mut status = Vec::with_capacity(rows.len());
        let mut duration_ms = Vec::with_capacity(rows.len());
        let mut request_headers = Vec::with_capacity(rows.len());
        let mut request_body = Vec::with_capacity(rows.len());
        let mut response_body = Vec::with_capacity(rows.len());
        let mut error = Vec::with_capacity(rows.len());
        for r in rows {
            channel.push(r.channel);
            mid.push(r.mid);
            at_ms.push(r.at_ms);
            direction.push(r.direction);
            kind.push(r.kind);
            method.push(r.method);
            url.push(r.url);
            status.push(r.status);
            duration_ms.push(r.duration_ms);
            request_headers.push(r.request_headers);
            request_body.push(r.request_body);
            response_body.push(r.response_body);
            error.push(r.error);
        }
        let client = self.client().await?;
        // A row is queued only after its message was committed, so a message that is gone
        // by the time the row is written was purged meanwhile: its row is dropped.
        let stmt = client
            .prepare_cached(
                "INSERT INTO channel_logs(channel, mid, at_ms, direction, kind, method, url, status,
                                          duration_ms, request_headers, request_body, response_body, error)
                 SELECT u.channel, u.mid, u.at_ms, u.direction, u.kind, u.method, u.url, u.status,
                        u.duration_ms, u.request_headers, u.request_body, u.response_body, u.error
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[],
                             $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[], $11::TEXT[],
                             $12::TEXT[], $13::TEXT[])
                      WITH ORDINALITY AS u(channel, mid, at_ms, direction, kind, method, url, status,
                                           duration_ms, request_headers, request_body, response_body,
                                           error, n)
                 WHERE u.mid IS NULL
                    OR EXISTS (SELECT 1 FROM items WHERE items.channel = u.channel AND items.mid = u.mid)
                 ORDER BY u.n",
            )
            .await
            .map_err(db)?;
        client
            .execute(
                &stmt,
                &[
                    &channel,
                    &mid,
                    &at_ms,
                    &direction,
                    &kind,
                    &method,
                    &url,
                    &status,
                    &duration_ms,
                    &request_headers,
                    &request_body,
                    &response_body,
                    &error,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn prune_channel_logs(&self, cutoff_ms: i64, batch: usize) -> Result<u64> {
        let client = self.client().await?;
        // The oldest `batch` rows on `channel_logs_at` (see `sql::PRUNE_CHANNEL_LOGS`).
        client
            .execute(sql::PRUNE_CHANNEL_LOGS, &[&cutoff_ms, &(batch as i64)])
            .await
            .map_err(db)
    }

    async fn list_channel_logs(
        &self,
        channel: Option<String>,
        mid: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChannelLogRow>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM channel_logs
             WHERE ($1::TEXT IS NULL OR channel = $1) AND ($2::TEXT IS NULL OR mid = $2)
               AND ($3::BIGINT IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        );
        let found = self
            .read(&sql, &[&channel, &mid, &before_id, &(limit as i64)])
            .await?;
        Ok(found.iter().map(log_row).collect())
    }
}

#[async_trait::async_trait]
impl ActivityLog for PgStore {
    async fn attempt_counts(&self, since_ms: i64, until_ms: i64) -> Result<Vec<AttemptCounts>> {
        let found = self
            .read(sql::ATTEMPT_COUNTS, &[&since_ms, &until_ms])
            .await?;
        Ok(found
            .iter()
            .map(|r| AttemptCounts {
                channel: r.get(0),
                lane: Lane::from_code(r.get(1)),
                requests: r.get::<_, Option<i64>>(2).unwrap_or(0),
                delivered: r.get::<_, Option<i64>>(3).unwrap_or(0),
                failed: r.get::<_, Option<i64>>(4).unwrap_or(0),
            })
            .collect())
    }
}

impl AdminTx for PgTx<'_> {
    async fn audit(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        exec(
            self.tx,
            "INSERT INTO audit_log(at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
            &[&now_ms(), &actor, &action, &target, &detail],
        )
        .await?;
        Ok(())
    }

    async fn announce_pause(&mut self, channel: &str, lane: Lane) -> Result<()> {
        // The lane's owner may be another node, and a lane reads its pause from the store
        // only when it starts.
        let payload = format!("{PAUSE_PREFIX}{}:{channel}", lane.code());
        exec(
            self.tx,
            "SELECT pg_notify($1, $2)",
            &[&self.store.notify_channel(), &payload],
        )
        .await?;
        Ok(())
    }

    async fn revive_dead(&mut self, id: i64, now: i64) -> Result<Option<Revived>> {
        // The state check is in the UPDATE itself: a concurrent replay (this node or
        // another) waits for our row lock, then finds the item no longer dead. Its age
        // starts again (`queued_ms`); a send keeps its status (a failed send stays failed
        // at respond.io: see `admin_rules::replay_items`).
        Ok(opt(
            self.tx,
            "UPDATE items SET state = 0, attempts = 0, next_ms = $1, updated_ms = $1, queued_ms = $1,
             last_error = NULL WHERE id = $2 AND state = 3
             RETURNING channel, lane, qkey, mid, kind",
            &[&now, &id],
        )
        .await?
        .map(|r| Revived {
            channel: r.get(0),
            lane: Lane::from_code(r.get(1)),
            qkey: r.get(2),
            mid: r.get(3),
            kind: ItemKind::from_code(r.get(4)),
        }))
    }

    async fn dead_item(&mut self, id: i64) -> Result<Option<DeadItem>> {
        // Locked: a concurrent replay of the same item waits here, then finds it not dead.
        Ok(opt(
            self.tx,
            "SELECT channel, lane, kind, mid, payload, ambiguous FROM items WHERE id = $1 AND state = 3
             FOR UPDATE",
            &[&id],
        )
        .await?
        .map(|r| DeadItem {
            channel: r.get(0),
            lane: Lane::from_code(r.get(1)),
            kind: ItemKind::from_code(r.get(2)),
            mid: r.get(3),
            payload: r.get(4),
            ambiguous: r.get(5),
        }))
    }

    async fn send_status(&mut self, channel: &str, mid: &str) -> Result<Option<i64>> {
        // Locked as the status machine locks it, so a receipt for the same message waits.
        Ok(opt(
            self.tx,
            "SELECT status FROM items WHERE channel = $1 AND mid = $2 AND kind = 3 ORDER BY id LIMIT 1
             FOR UPDATE",
            &[&channel, &mid],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn supersede_dead(&mut self, id: i64, note: &str, now: i64) -> Result<bool> {
        let n = exec(
            self.tx,
            "UPDATE items SET state = 2, last_error = $1, updated_ms = $2 WHERE id = $3 AND state = 3",
            &[&note, &now, &id],
        )
        .await?;
        Ok(n == 1)
    }

    async fn item_place(&mut self, id: i64) -> Result<Option<(String, Lane)>> {
        Ok(opt(
            self.tx,
            "SELECT channel, lane FROM items WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| (r.get(0), Lane::from_code(r.get(1)))))
    }

    async fn ensure_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        class: i64,
        now: i64,
    ) -> Result<()> {
        // DO UPDATE (a no-op) rather than DO NOTHING: it waits for a lane dropping that row
        // right now, then inserts a fresh one.
        exec(
            self.tx,
            "INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES ($1, $2, $3, $4, $5, 0)
             ON CONFLICT(channel, lane, qkey) DO UPDATE SET class = queues.class",
            &[&channel, &lane.code(), &qkey, &class, &now],
        )
        .await?;
        Ok(())
    }

    async fn discard_dead(
        &mut self,
        id: i64,
        actor: &str,
        now: i64,
    ) -> Result<Option<(String, String)>> {
        Ok(opt(
            self.tx,
            "UPDATE items SET state = 2, updated_ms = $1,
             last_error = 'discarded by ' || $2::TEXT || ' (was: ' || COALESCE(last_error, '') || ')'
             WHERE id = $3 AND state = 3 RETURNING channel, mid",
            &[&now, &actor, &id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
    }

    async fn delete_raw_webhook(&mut self, id: i64) -> Result<Option<String>> {
        Ok(opt(
            self.tx,
            "DELETE FROM raw_webhooks WHERE id = $1 RETURNING channel",
            &[&id],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn set_pause(&mut self, channel: &str, lane: Lane, until_ms: i64) -> Result<()> {
        exec(
            self.tx,
            "INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES ($1, $2, $3)
             ON CONFLICT(channel, lane) DO UPDATE SET paused_until_ms = excluded.paused_until_ms",
            &[&channel, &lane.code(), &until_ms],
        )
        .await?;
        Ok(())
    }

    async fn pause_of(&mut self, channel: &str, lane: Lane) -> Result<i64> {
        // Locks the lane's row, so a concurrent pause lands wholly before or after.
        Ok(opt(
            self.tx,
            "SELECT paused_until_ms FROM lane_state WHERE channel = $1 AND lane = $2 FOR UPDATE",
            &[&channel, &lane.code()],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
    }

    async fn requeue_paused(
        &mut self,
        channel: &str,
        lane: Lane,
        was_ms: i64,
        now: i64,
    ) -> Result<()> {
        exec(
            self.tx,
            "UPDATE queues SET next_ms = $1 WHERE channel = $2 AND lane = $3 AND next_ms = $4",
            &[&now, &channel, &lane.code(), &was_ms],
        )
        .await?;
        Ok(())
    }

    async fn lock_contact_queues(&mut self, channel: &str, contact: &str) -> Result<()> {
        // Queue rows first, then items: the order lanes lock them in, so a purge and a
        // lane's claim or outcome wait for each other instead of deadlocking.
        exec(
            self.tx,
            "SELECT 1 FROM queues WHERE channel = $1 AND (lane, qkey) IN
             (SELECT lane, qkey FROM items WHERE channel = $1 AND contact = $2)
             ORDER BY lane, qkey FOR UPDATE",
            &[&channel, &contact],
        )
        .await?;
        Ok(())
    }

    async fn contact_items(&mut self, channel: &str, contact: &str) -> Result<Vec<ContactItem>> {
        Ok(rows(
            self.tx,
            "SELECT id, mid, provider_id, lane, qkey, state FROM items
             WHERE channel = $1 AND contact = $2 ORDER BY id FOR UPDATE",
            &[&channel, &contact],
        )
        .await?
        .iter()
        .map(|r| ContactItem {
            id: r.get(0),
            mid: r.get(1),
            provider_id: r.get(2),
            lane: Lane::from_code(r.get(3)),
            qkey: r.get(4),
            attempting: r.get::<_, i64>(5) == 1,
        })
        .collect())
    }

    async fn delete_items(&mut self, ids: &[i64]) -> Result<(u64, u64, u64)> {
        let ids = ids.to_vec();
        let history = exec(
            self.tx,
            "DELETE FROM history WHERE item_id = ANY($1)",
            &[&ids],
        )
        .await?;
        let attempts = exec(
            self.tx,
            "DELETE FROM attempts WHERE item_id = ANY($1)",
            &[&ids],
        )
        .await?;
        let items = exec(self.tx, "DELETE FROM items WHERE id = ANY($1)", &[&ids]).await?;
        Ok((items, history, attempts))
    }

    async fn delete_provider_id_traces(&mut self, channel: &str, pid: &str) -> Result<(u64, u64)> {
        let mut keys = exec(
            self.tx,
            "DELETE FROM dedupe WHERE channel = $1 AND key = $2",
            &[&channel, &pid],
        )
        .await?;
        let prefix = format!("receipt:{pid}:");
        keys += exec(
            self.tx,
            "DELETE FROM dedupe WHERE channel = $1 AND substr(key, 1, length($2)) = $2",
            &[&channel, &prefix],
        )
        .await?;
        let parked = exec(
            self.tx,
            "DELETE FROM parked_receipts WHERE channel = $1 AND provider_id = $2",
            &[&channel, &pid],
        )
        .await?;
        Ok((keys, parked))
    }

    async fn delete_contact_logs(
        &mut self,
        channel: &str,
        mids: &[String],
        contact: &str,
    ) -> Result<u64> {
        let mids = mids.to_vec();
        let mut n = exec(
            self.tx,
            "DELETE FROM channel_logs WHERE mid = ANY($1)",
            &[&mids],
        )
        .await?;
        // Exchanges tied to no message may still carry the contact id in their body or URL.
        let pattern = format!(
            "%{}%",
            contact
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        n += exec(
            self.tx,
            "DELETE FROM channel_logs WHERE channel = $1 AND mid IS NULL AND
             (request_body LIKE $2 ESCAPE '\\' OR url LIKE $2 ESCAPE '\\' OR response_body LIKE $2 ESCAPE '\\')",
            &[&channel, &pattern],
        )
        .await?;
        Ok(n)
    }

    async fn delete_contact_profile(&mut self, channel: &str, contact: &str) -> Result<u64> {
        exec(
            self.tx,
            "DELETE FROM contacts WHERE channel = $1 AND contact = $2",
            &[&channel, &contact],
        )
        .await
    }

    async fn raw_webhook_bodies(&mut self, channel: &str) -> Result<Vec<(i64, Vec<u8>)>> {
        Ok(rows(
            self.tx,
            "SELECT id, body FROM raw_webhooks WHERE channel = $1",
            &[&channel],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }
}
