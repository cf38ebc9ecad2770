//! [`AdminStore`] for SQLite. Reads go through the read connection, changes through the
//! group-committing writer (so they never race a lane's write).
//!
//! The SQL sticks to what PostgreSQL also speaks (`?N` placeholders aside, which are the
//! driver's), with two exceptions noted where they are: `LIMIT` inside `DELETE ... IN
//! (SELECT ...)` for batched deletes, and `rowid`-free deletes of WITHOUT ROWID tables.

use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, params, params_from_iter};

use super::sql;
use super::tx::SqliteTx;
use super::{SqliteStore, run_rule};
use crate::clock::now_ms;
use crate::store::admin::*;
use crate::store::admin_rules::{self, AdminTx, ContactItem, DeadItem, Revived};
use crate::store::{ItemKind, Lane, Result};

const MESSAGE_COLUMNS: &str = "id, channel, lane, contact, kind, mid, payload, state, status, attempts, \
     ambiguous, created_ms, updated_ms, next_ms, provider_id, last_error";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: r.get(0)?,
        channel: r.get(1)?,
        lane: r.get(2)?,
        contact: r.get(3)?,
        kind: r.get(4)?,
        mid: r.get(5)?,
        payload: r.get(6)?,
        state: r.get(7)?,
        status: r.get(8)?,
        attempts: r.get(9)?,
        ambiguous: r.get(10)?,
        created_ms: r.get(11)?,
        updated_ms: r.get(12)?,
        next_ms: r.get(13)?,
        provider_id: r.get(14)?,
        last_error: r.get(15)?,
    })
}

const LOG_COLUMNS: &str = "id, channel, mid, at_ms, direction, kind, method, url, status, duration_ms, \
     request_headers, request_body, response_body, error";

fn log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChannelLogRow> {
    Ok(ChannelLogRow {
        id: r.get(0)?,
        channel: r.get(1)?,
        mid: r.get(2)?,
        at_ms: r.get(3)?,
        direction: r.get(4)?,
        kind: r.get(5)?,
        method: r.get(6)?,
        url: r.get(7)?,
        status: r.get(8)?,
        duration_ms: r.get(9)?,
        request_headers: r.get(10)?,
        request_body: r.get(11)?,
        response_body: r.get(12)?,
        error: r.get(13)?,
    })
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawWebhookRow> {
    Ok(RawWebhookRow {
        id: r.get(0)?,
        channel: r.get(1)?,
        route: r.get(2)?,
        content_type: r.get(3)?,
        body: r.get(4)?,
        reason: r.get(5)?,
        received_ms: r.get(6)?,
    })
}

/// Builds the WHERE clause of a message listing.
fn message_where(f: &MessageFilter) -> (String, Vec<SqlValue>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    let mut add = |clause: &str, v: SqlValue| {
        args.push(v);
        clauses.push(clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(c) = &f.channel {
        add("channel = ?", SqlValue::Text(c.clone()));
    }
    if let Some(l) = f.lane {
        add("lane = ?", SqlValue::Integer(l.code()));
    }
    if let Some(s) = f.state {
        add("state = ?", SqlValue::Integer(s));
    }
    if let Some(c) = &f.contact {
        add("contact = ?", SqlValue::Text(c.clone()));
    }
    if let Some(m) = &f.mid {
        add("mid = ?", SqlValue::Text(m.clone()));
    }
    match f.kind {
        Some(k) => add("kind = ?", SqlValue::Integer(k as i64)),
        None => add("kind <> ?", SqlValue::Integer(ItemKind::Status as i64)),
    }
    if let Some(t) = f.since_ms {
        add("created_ms >= ?", SqlValue::Integer(t));
    }
    if let Some(t) = f.until_ms {
        add("created_ms < ?", SqlValue::Integer(t));
    }
    if let Some(id) = f.before_id {
        add("id < ?", SqlValue::Integer(id));
    }
    (clauses.join(" AND "), args)
}

#[async_trait::async_trait]
impl AdminStore for SqliteStore {
    async fn list_messages(&self, filter: MessageFilter) -> Result<Vec<MessageRow>> {
        self.read(move |conn| {
            let (clause, mut args) = message_where(&filter);
            args.push(SqlValue::Integer(filter.limit as i64));
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM items WHERE {clause} ORDER BY id DESC LIMIT ?{}",
                args.len()
            );
            conn.prepare(&sql)?
                .query_map(params_from_iter(args), message_row)?
                .collect()
        })
        .await
    }

    async fn message_detail(&self, mid: &str) -> Result<Option<MessageDetail>> {
        let mid = mid.to_string();
        self.read(move |conn| {
            let sql = format!("SELECT {MESSAGE_COLUMNS} FROM items WHERE mid = ?1 ORDER BY kind = 2, id");
            let items: Vec<MessageRow> = conn
                .prepare_cached(&sql)?
                .query_map(params![mid], message_row)?
                .collect::<rusqlite::Result<_>>()?;
            let mut items = items.into_iter();
            let Some(item) = items.next() else {
                return Ok(None);
            };
            let related: Vec<MessageRow> = items.collect();
            let mut history = Vec::new();
            let mut attempts = Vec::new();
            for id in std::iter::once(item.id).chain(related.iter().map(|r| r.id)) {
                let h = conn
                    .prepare_cached("SELECT item_id, at_ms, event, detail FROM history WHERE item_id = ?1 ORDER BY id")?
                    .query_map(params![id], |r| {
                        Ok(HistoryRow { item_id: r.get(0)?, at_ms: r.get(1)?, event: r.get(2)?, detail: r.get(3)? })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                history.extend(h);
                let a = conn
                    .prepare_cached(
                        "SELECT item_id, at_ms, outcome, detail, duration_ms FROM attempts WHERE item_id = ?1 ORDER BY id",
                    )?
                    .query_map(params![id], |r| {
                        Ok(AttemptRow {
                            item_id: r.get(0)?,
                            at_ms: r.get(1)?,
                            outcome: r.get(2)?,
                            detail: r.get(3)?,
                            duration_ms: r.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                attempts.extend(a);
            }
            history.sort_by_key(|h| h.at_ms);
            attempts.sort_by_key(|a| a.at_ms);
            let sql = format!("SELECT {LOG_COLUMNS} FROM channel_logs WHERE mid = ?1 ORDER BY id");
            let channel_logs = conn
                .prepare_cached(&sql)?
                .query_map(params![mid], log_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(MessageDetail { item, related, history, attempts, channel_logs }))
        })
        .await
    }

    async fn list_raw_webhooks(
        &self,
        channel: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RawWebhookRow>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, channel, route, content_type, body, reason, received_ms FROM raw_webhooks
                 WHERE (?1 IS NULL OR channel = ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
            )?
            .query_map(params![channel, before_id, limit as i64], raw_row)?
            .collect()
        })
        .await
    }

    async fn raw_webhook(&self, id: i64) -> Result<Option<RawWebhookRow>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, channel, route, content_type, body, reason, received_ms FROM raw_webhooks WHERE id = ?1",
            )?
            .query_row(params![id], raw_row)
            .optional()
        })
        .await
    }

    async fn replay_items(
        &self,
        ids: Vec<i64>,
        actor: &str,
        force: bool,
    ) -> Result<Vec<ReplayResult>> {
        let actor = actor.to_string();
        self.write(move |conn| {
            run_rule(admin_rules::replay_items(
                &mut SqliteTx(conn, None),
                ids,
                &actor,
                force,
                now_ms(),
            ))
        })
        .await
    }

    async fn discard_items(&self, ids: Vec<i64>, actor: &str) -> Result<Vec<i64>> {
        let actor = actor.to_string();
        self.write(move |conn| {
            run_rule(admin_rules::discard_items(
                &mut SqliteTx(conn, None),
                ids,
                &actor,
                now_ms(),
            ))
        })
        .await
    }

    async fn delete_raw_webhook(
        &self,
        id: i64,
        actor: &str,
        action: &str,
        detail: Option<String>,
    ) -> Result<bool> {
        let (actor, action) = (actor.to_string(), action.to_string());
        self.write(move |conn| {
            let tx = &mut SqliteTx(conn, None);
            run_rule(admin_rules::delete_raw_webhook(
                tx,
                id,
                &actor,
                &action,
                detail.as_deref(),
            ))
        })
        .await
    }

    async fn update_raw_webhook_reason(&self, id: i64, reason: &str) -> Result<()> {
        let reason = reason.to_string();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE raw_webhooks SET reason = ?1 WHERE id = ?2")?
                .execute(params![reason, id])?;
            Ok(())
        })
        .await
    }

    async fn pause_lane(
        &self,
        channel: &str,
        lane: Lane,
        until_ms: i64,
        actor: &str,
    ) -> Result<()> {
        let (channel, actor) = (channel.to_string(), actor.to_string());
        self.write(move |conn| {
            run_rule(admin_rules::pause_lane(
                &mut SqliteTx(conn, None),
                &channel,
                lane,
                until_ms,
                &actor,
            ))
        })
        .await
    }

    async fn resume_lane(&self, channel: &str, lane: Lane, now: i64, actor: &str) -> Result<()> {
        let (channel, actor) = (channel.to_string(), actor.to_string());
        self.write(move |conn| {
            run_rule(admin_rules::resume_lane(
                &mut SqliteTx(conn, None),
                &channel,
                lane,
                now,
                &actor,
            ))
        })
        .await
    }

    async fn lane_activity(&self, since_ms: i64) -> Result<Vec<LaneActivity>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT channel, lane, SUM(call_first), SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END)
                 FROM attempts WHERE at_ms >= ?1 GROUP BY channel, lane",
            )?
            .query_map(params![since_ms], |r| {
                Ok(LaneActivity {
                    channel: r.get(0)?,
                    lane: Lane::from_code(r.get(1)?),
                    requests: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                    delivered: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                })
            })?
            .collect()
        })
        .await
    }

    async fn purge_contact(
        &self,
        channel: &str,
        contact: &str,
        actor: &str,
    ) -> Result<PurgeReport> {
        let (channel, contact, actor) =
            (channel.to_string(), contact.to_string(), actor.to_string());
        self.write(move |conn| {
            run_rule(admin_rules::purge_contact(
                &mut SqliteTx(conn, None),
                &channel,
                &contact,
                &actor,
            ))
        })
        .await
    }

    async fn list_audit(
        &self,
        actor: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, at_ms, actor, action, target, detail FROM audit_log
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
            )?
            .query_map(params![actor, before_id, limit as i64], |r| {
                Ok(AuditRow { id: r.get(0)?, at_ms: r.get(1)?, actor: r.get(2)?, action: r.get(3)?, target: r.get(4)?, detail: r.get(5)? })
            })?
            .collect()
        })
        .await
    }

    async fn insert_channel_logs(&self, rows: Vec<ChannelLogRow>) -> Result<()> {
        self.write(move |conn| {
            // A row is queued only after its message was committed, so a message that is
            // gone by the time the row is written was purged meanwhile: its row is dropped.
            let mut stmt = conn.prepare_cached(
                "INSERT INTO channel_logs(channel, mid, at_ms, direction, kind, method, url, status, duration_ms,
                                          request_headers, request_body, response_body, error)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13
                 WHERE ?2 IS NULL OR EXISTS (SELECT 1 FROM items WHERE channel = ?1 AND mid = ?2)",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.channel, r.mid, r.at_ms, r.direction, r.kind, r.method, r.url, r.status, r.duration_ms,
                    r.request_headers, r.request_body, r.response_body, r.error
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn prune_channel_logs(&self, cutoff_ms: i64, batch: usize) -> Result<u64> {
        self.write(move |conn| {
            // The oldest `batch` rows on `channel_logs_at`: walking ids from the lowest (as
            // before schema version 3) read the whole table whenever nothing was old.
            Ok(conn
                .prepare_cached(sql::PRUNE_CHANNEL_LOGS)?
                .execute(params![cutoff_ms, batch as i64])? as u64)
        })
        .await
    }

    async fn list_channel_logs(
        &self,
        channel: Option<String>,
        mid: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChannelLogRow>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {LOG_COLUMNS} FROM channel_logs
                 WHERE (?1 IS NULL OR channel = ?1) AND (?2 IS NULL OR mid = ?2) AND (?3 IS NULL OR id < ?3)
                 ORDER BY id DESC LIMIT ?4"
            );
            conn.prepare_cached(&sql)?
                .query_map(params![channel, mid, before_id, limit as i64], log_row)?
                .collect()
        })
        .await
    }
}

impl AdminTx for SqliteTx<'_> {
    async fn audit(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> rusqlite::Result<()> {
        self.exec(
            "INSERT INTO audit_log(at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), actor, action, target, detail],
        )?;
        Ok(())
    }

    async fn announce_pause(&mut self, _channel: &str, _lane: Lane) -> rusqlite::Result<()> {
        Ok(())
    }

    async fn revive_dead(&mut self, id: i64, now: i64) -> rusqlite::Result<Option<Revived>> {
        // The state check is in the UPDATE itself: of two replays, only the first finds
        // the item dead. Its age starts again (`queued_ms`); a send keeps its status (a
        // failed send stays failed at respond.io: see `admin_rules::replay_items`).
        self.0
            .prepare_cached(
                "UPDATE items SET state = 0, attempts = 0, next_ms = ?1, updated_ms = ?1, queued_ms = ?1,
                 last_error = NULL WHERE id = ?2 AND state = 3
                 RETURNING channel, lane, qkey, mid, kind",
            )?
            .query_row(params![now, id], |r| {
                Ok(Revived {
                    channel: r.get(0)?,
                    lane: Lane::from_code(r.get(1)?),
                    qkey: r.get(2)?,
                    mid: r.get(3)?,
                    kind: ItemKind::from_code(r.get(4)?),
                })
            })
            .optional()
    }

    async fn dead_item(&mut self, id: i64) -> rusqlite::Result<Option<DeadItem>> {
        self.0
            .prepare_cached(
                "SELECT channel, lane, kind, mid, payload, ambiguous FROM items WHERE id = ?1 AND state = 3",
            )?
            .query_row(params![id], |r| {
                Ok(DeadItem {
                    channel: r.get(0)?,
                    lane: Lane::from_code(r.get(1)?),
                    kind: ItemKind::from_code(r.get(2)?),
                    mid: r.get(3)?,
                    payload: r.get(4)?,
                    ambiguous: r.get(5)?,
                })
            })
            .optional()
    }

    async fn send_status(&mut self, channel: &str, mid: &str) -> rusqlite::Result<Option<i64>> {
        self.0
            .prepare_cached(
                "SELECT status FROM items WHERE channel = ?1 AND mid = ?2 AND kind = 3 ORDER BY id LIMIT 1",
            )?
            .query_row(params![channel, mid], |r| r.get(0))
            .optional()
    }

    async fn supersede_dead(&mut self, id: i64, note: &str, now: i64) -> rusqlite::Result<bool> {
        let n = self.exec(
            "UPDATE items SET state = 2, last_error = ?1, updated_ms = ?2 WHERE id = ?3 AND state = 3",
            params![note, now, id],
        )?;
        Ok(n == 1)
    }

    async fn item_place(&mut self, id: i64) -> rusqlite::Result<Option<(String, Lane)>> {
        self.0
            .prepare_cached("SELECT channel, lane FROM items WHERE id = ?1")?
            .query_row(params![id], |r| Ok((r.get(0)?, Lane::from_code(r.get(1)?))))
            .optional()
    }

    async fn ensure_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        class: i64,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.exec(
            "INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES (?1, ?2, ?3, ?4, ?5, 0)
             ON CONFLICT(channel, lane, qkey) DO NOTHING",
            params![channel, lane.code(), qkey, class, now],
        )?;
        Ok(())
    }

    async fn discard_dead(
        &mut self,
        id: i64,
        actor: &str,
        now: i64,
    ) -> rusqlite::Result<Option<(String, String)>> {
        // Done with a `last_error` that says so: delivered items never keep one, and
        // retention prunes it like any finished item.
        self.0
            .prepare_cached(
                "UPDATE items SET state = 2, updated_ms = ?1,
                 last_error = 'discarded by ' || ?2 || ' (was: ' || COALESCE(last_error, '') || ')'
                 WHERE id = ?3 AND state = 3 RETURNING channel, mid",
            )?
            .query_row(params![now, actor, id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    }

    async fn delete_raw_webhook(&mut self, id: i64) -> rusqlite::Result<Option<String>> {
        self.0
            .prepare_cached("DELETE FROM raw_webhooks WHERE id = ?1 RETURNING channel")?
            .query_row(params![id], |r| r.get(0))
            .optional()
    }

    async fn set_pause(
        &mut self,
        channel: &str,
        lane: Lane,
        until_ms: i64,
    ) -> rusqlite::Result<()> {
        self.exec(
            "INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(channel, lane) DO UPDATE SET paused_until_ms = excluded.paused_until_ms",
            params![channel, lane.code(), until_ms],
        )?;
        Ok(())
    }

    async fn pause_of(&mut self, channel: &str, lane: Lane) -> rusqlite::Result<i64> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT paused_until_ms FROM lane_state WHERE channel = ?1 AND lane = ?2",
            )?
            .query_row(params![channel, lane.code()], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    async fn requeue_paused(
        &mut self,
        channel: &str,
        lane: Lane,
        was_ms: i64,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.exec(
            "UPDATE queues SET next_ms = ?1 WHERE channel = ?2 AND lane = ?3 AND next_ms = ?4",
            params![now, channel, lane.code(), was_ms],
        )?;
        Ok(())
    }

    async fn lock_contact_queues(
        &mut self,
        _channel: &str,
        _contact: &str,
    ) -> rusqlite::Result<()> {
        Ok(())
    }

    async fn contact_items(
        &mut self,
        channel: &str,
        contact: &str,
    ) -> rusqlite::Result<Vec<ContactItem>> {
        self.0
            .prepare_cached(
                "SELECT id, mid, provider_id, lane, qkey, state FROM items WHERE channel = ?1 AND contact = ?2 ORDER BY id",
            )?
            .query_map(params![channel, contact], |r| {
                Ok(ContactItem {
                    id: r.get(0)?,
                    mid: r.get(1)?,
                    provider_id: r.get(2)?,
                    lane: Lane::from_code(r.get(3)?),
                    qkey: r.get(4)?,
                    attempting: r.get::<_, i64>(5)? == 1,
                })
            })?
            .collect()
    }

    async fn delete_items(&mut self, ids: &[i64]) -> rusqlite::Result<(u64, u64, u64)> {
        let (mut items, mut history, mut attempts) = (0, 0, 0);
        for id in ids {
            history += self.exec("DELETE FROM history WHERE item_id = ?1", params![id])? as u64;
            attempts += self.exec("DELETE FROM attempts WHERE item_id = ?1", params![id])? as u64;
            items += self.exec("DELETE FROM items WHERE id = ?1", params![id])? as u64;
        }
        Ok((items, history, attempts))
    }

    async fn delete_provider_id_traces(
        &mut self,
        channel: &str,
        pid: &str,
    ) -> rusqlite::Result<(u64, u64)> {
        let mut keys = self.exec(
            "DELETE FROM dedupe WHERE channel = ?1 AND key = ?2",
            params![channel, pid],
        )? as u64;
        let prefix = format!("receipt:{pid}:");
        keys += self.exec(
            "DELETE FROM dedupe WHERE channel = ?1 AND substr(key, 1, length(?2)) = ?2",
            params![channel, prefix],
        )? as u64;
        let parked = self.exec(
            "DELETE FROM parked_receipts WHERE channel = ?1 AND provider_id = ?2",
            params![channel, pid],
        )? as u64;
        Ok((keys, parked))
    }

    async fn delete_contact_logs(
        &mut self,
        channel: &str,
        mids: &[String],
        contact: &str,
    ) -> rusqlite::Result<u64> {
        let mut n = 0;
        for mid in mids {
            n += self.exec("DELETE FROM channel_logs WHERE mid = ?1", params![mid])? as u64;
        }
        // Exchanges tied to no message may still carry the contact id in their body or URL.
        let pattern = format!(
            "%{}%",
            contact
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        n += self.exec(
            "DELETE FROM channel_logs WHERE channel = ?1 AND mid IS NULL AND
             (request_body LIKE ?2 ESCAPE '\\' OR url LIKE ?2 ESCAPE '\\' OR response_body LIKE ?2 ESCAPE '\\')",
            params![channel, pattern],
        )? as u64;
        Ok(n)
    }

    async fn delete_contact_profile(
        &mut self,
        channel: &str,
        contact: &str,
    ) -> rusqlite::Result<u64> {
        Ok(self.exec(
            "DELETE FROM contacts WHERE channel = ?1 AND contact = ?2",
            params![channel, contact],
        )? as u64)
    }

    async fn raw_webhook_bodies(&mut self, channel: &str) -> rusqlite::Result<Vec<(i64, Vec<u8>)>> {
        self.0
            .prepare_cached("SELECT id, body FROM raw_webhooks WHERE channel = ?1")?
            .query_map(params![channel], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }
}
