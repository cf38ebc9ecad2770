//! [`AdminStore`] for SQLite. Reads go through the read connection, changes through the
//! group-committing writer (so they never race a lane's write).
//!
//! The SQL sticks to what PostgreSQL also speaks (`?N` placeholders aside, which are the
//! driver's), with two exceptions noted where they are: `LIMIT` inside `DELETE ... IN
//! (SELECT ...)` for batched deletes, and `rowid`-free deletes of WITHOUT ROWID tables.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::SqliteStore;
use crate::clock::now_ms;
use crate::store::admin::*;
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

fn audit(
    conn: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_log(at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![now_ms(), actor, action, target, detail])?;
    Ok(())
}

fn history(conn: &Connection, item_id: i64, event: &str, detail: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO history(item_id, at_ms, event, detail) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![item_id, now_ms(), event, detail])?;
    Ok(())
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

    async fn replay_items(&self, ids: Vec<i64>, actor: &str) -> Result<Vec<ReplayResult>> {
        let actor = actor.to_string();
        self.write(move |conn| {
            let now = now_ms();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row: Option<(String, i64, String, String, i64, i64)> = conn
                    .prepare_cached("SELECT channel, lane, qkey, mid, state, kind FROM items WHERE id = ?1")?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
                    .optional()?;
                let Some((channel, lane, qkey, mid, _, kind)) = row else {
                    out.push(ReplayResult { id, outcome: ReplayOutcome::NotFound, channel: None, lane: None });
                    continue;
                };
                // The state check is in the UPDATE itself: of two replays, only the first
                // finds the item dead (the writer runs jobs one after another).
                // A send's status goes back to "none" so its receipts move it forward again.
                let changed = conn
                    .prepare_cached(
                        "UPDATE items SET state = 0, attempts = 0, next_ms = ?1, updated_ms = ?1, last_error = NULL,
                         status = CASE WHEN kind = 3 THEN 0 ELSE status END WHERE id = ?2 AND state = 3",
                    )?
                    .execute(params![now, id])?;
                if changed == 0 {
                    out.push(ReplayResult { id, outcome: ReplayOutcome::NotDead, channel: Some(channel), lane: Some(lane) });
                    continue;
                }
                // Back into its contact's FIFO. An existing queue row keeps its schedule and
                // claim; a replayed send toward the provider goes with bulk (class 1), a
                // contact's events first (class 0), as when they were accepted.
                let class = if kind == ItemKind::Status as i64 || kind == ItemKind::Send as i64 { 1 } else { 0 };
                conn.prepare_cached(
                    "INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES (?1, ?2, ?3, ?4, ?5, 0)
                     ON CONFLICT(channel, lane, qkey) DO NOTHING",
                )?
                .execute(params![channel, lane, qkey, class, now])?;
                history(conn, id, "replayed", &format!("by {actor}"))?;
                audit(conn, &actor, "replay", &format!("item {id} ({channel} {mid})"), None)?;
                out.push(ReplayResult { id, outcome: ReplayOutcome::Replayed, channel: Some(channel), lane: Some(lane) });
            }
            Ok(out)
        })
        .await
    }

    async fn discard_items(&self, ids: Vec<i64>, actor: &str) -> Result<Vec<i64>> {
        let actor = actor.to_string();
        self.write(move |conn| {
            let now = now_ms();
            let mut out = Vec::new();
            for id in ids {
                let reason: Option<(String, String, Option<String>)> = conn
                    .prepare_cached("SELECT channel, mid, last_error FROM items WHERE id = ?1 AND state = 3")?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((channel, mid, last)) = reason else { continue };
                // Done with a `last_error` that says so: delivered items never keep one, and
                // retention prunes it like any finished item.
                let note = format!("discarded by {actor} (was: {})", last.unwrap_or_default());
                conn.prepare_cached("UPDATE items SET state = 2, updated_ms = ?1, last_error = ?2 WHERE id = ?3 AND state = 3")?
                    .execute(params![now, note, id])?;
                history(conn, id, "discarded", &format!("by {actor}"))?;
                audit(conn, &actor, "discard", &format!("item {id} ({channel} {mid})"), None)?;
                out.push(id);
            }
            Ok(out)
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
            let channel: Option<String> = conn
                .prepare_cached("SELECT channel FROM raw_webhooks WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            let Some(channel) = channel else {
                return Ok(false);
            };
            conn.prepare_cached("DELETE FROM raw_webhooks WHERE id = ?1")?
                .execute(params![id])?;
            audit(
                conn,
                &actor,
                &action,
                &format!("raw webhook {id} ({channel})"),
                detail.as_deref(),
            )?;
            Ok(true)
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
            conn.prepare_cached(
                "INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(channel, lane) DO UPDATE SET paused_until_ms = excluded.paused_until_ms",
            )?
            .execute(params![channel, lane.code(), until_ms])?;
            audit(conn, &actor, "pause", &format!("{channel} {}", lane.name()), Some(&format!("until_ms {until_ms}")))
        })
        .await
    }

    async fn resume_lane(&self, channel: &str, lane: Lane, now: i64, actor: &str) -> Result<()> {
        let (channel, actor) = (channel.to_string(), actor.to_string());
        self.write(move |conn| {
            let until: i64 = conn
                .prepare_cached("SELECT paused_until_ms FROM lane_state WHERE channel = ?1 AND lane = ?2")?
                .query_row(params![channel, lane.code()], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            conn.prepare_cached("UPDATE lane_state SET paused_until_ms = 0 WHERE channel = ?1 AND lane = ?2")?
                .execute(params![channel, lane.code()])?;
            // Attempts the pause stopped handed their queue back due at the pause's end:
            // exactly those become due now (backoffs of other contacts keep their time).
            if until > now {
                conn.prepare_cached(
                    "UPDATE queues SET next_ms = ?1 WHERE channel = ?2 AND lane = ?3 AND next_ms = ?4",
                )?
                .execute(params![now, channel, lane.code(), until])?;
            }
            audit(conn, &actor, "resume", &format!("{channel} {}", lane.name()), None)
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
            // A send in flight would have its outcome recorded against rows that are gone:
            // refuse, and let the operator try again once the attempt has finished.
            let in_flight = conn
                .prepare_cached("SELECT COUNT(*) FROM items WHERE channel = ?1 AND contact = ?2 AND state = 1")?
                .query_row(params![channel, contact], |r| r.get::<_, i64>(0))? as u64;
            let mut report = PurgeReport { in_flight, ..Default::default() };
            if report.in_flight > 0 {
                return Ok(report);
            }
            let items: Vec<(i64, String, Option<String>, i64, String)> = conn
                .prepare_cached("SELECT id, mid, provider_id, lane, qkey FROM items WHERE channel = ?1 AND contact = ?2")?
                .query_map(params![channel, contact], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut mids = std::collections::BTreeSet::new();
            let mut queues = std::collections::BTreeSet::new();
            for (id, mid, pid, lane, qkey) in &items {
                report.history += conn.prepare_cached("DELETE FROM history WHERE item_id = ?1")?.execute(params![id])? as u64;
                report.attempts += conn.prepare_cached("DELETE FROM attempts WHERE item_id = ?1")?.execute(params![id])? as u64;
                report.items += conn.prepare_cached("DELETE FROM items WHERE id = ?1")?.execute(params![id])? as u64;
                mids.insert(mid.clone());
                queues.insert((*lane, qkey.clone()));
                // Dedupe keys hold no contact id: they are found through the provider ids
                // (an inbound key is the provider's id, a receipt key starts with it).
                if let Some(pid) = pid {
                    report.dedupe_keys += conn
                        .prepare_cached("DELETE FROM dedupe WHERE channel = ?1 AND key = ?2")?
                        .execute(params![channel, pid])? as u64;
                    let prefix = format!("receipt:{pid}:");
                    report.dedupe_keys += conn
                        .prepare_cached(
                            "DELETE FROM dedupe WHERE channel = ?1 AND substr(key, 1, length(?2)) = ?2",
                        )?
                        .execute(params![channel, prefix])? as u64;
                    report.parked_receipts += conn
                        .prepare_cached("DELETE FROM parked_receipts WHERE channel = ?1 AND provider_id = ?2")?
                        .execute(params![channel, pid])? as u64;
                }
            }
            for mid in &mids {
                report.channel_logs += conn
                    .prepare_cached("DELETE FROM channel_logs WHERE mid = ?1")?
                    .execute(params![mid])? as u64;
            }
            // Exchanges tied to no message may still carry the contact id in their body or URL.
            let pattern = format!("%{}%", contact.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
            report.channel_logs += conn
                .prepare_cached(
                    "DELETE FROM channel_logs WHERE channel = ?1 AND mid IS NULL AND
                     (request_body LIKE ?2 ESCAPE '\\' OR url LIKE ?2 ESCAPE '\\' OR response_body LIKE ?2 ESCAPE '\\')",
                )?
                .execute(params![channel, pattern])? as u64;
            for (lane, qkey) in &queues {
                let left: Option<i64> = conn
                    .prepare_cached("SELECT id FROM items WHERE channel = ?1 AND lane = ?2 AND qkey = ?3 AND state < 2 LIMIT 1")?
                    .query_row(params![channel, lane, qkey], |r| r.get(0))
                    .optional()?;
                if left.is_none() {
                    conn.prepare_cached("DELETE FROM queues WHERE channel = ?1 AND lane = ?2 AND qkey = ?3")?
                        .execute(params![channel, lane, qkey])?;
                }
            }
            report.contact_profiles += conn
                .prepare_cached("DELETE FROM contacts WHERE channel = ?1 AND contact = ?2")?
                .execute(params![channel, contact])? as u64;
            // Raw webhooks are few: scan the channel's bodies for the contact id.
            let raws: Vec<(i64, Vec<u8>)> = conn
                .prepare_cached("SELECT id, body FROM raw_webhooks WHERE channel = ?1")?
                .query_map(params![channel], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let needles = crate::channel_log::redact::contact_forms(&contact);
            for (id, body) in raws {
                let text = String::from_utf8_lossy(&body);
                if needles.iter().any(|n| text.contains(n.as_str())) {
                    report.raw_webhooks += conn.prepare_cached("DELETE FROM raw_webhooks WHERE id = ?1")?.execute(params![id])? as u64;
                }
            }
            let detail = serde_json::to_string(&report).ok();
            audit(conn, &actor, "purge", &format!("{channel} contact {}", mask_contact(&contact)), detail.as_deref())?;
            Ok(report)
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
            // Rows are written in about time order: walking ids from the lowest finds the old
            // ones first and stops after `batch` (no index on at_ms needed). LIMIT in a
            // DELETE's subquery is standard enough (PostgreSQL accepts it too).
            Ok(conn
                .prepare_cached(
                    "DELETE FROM channel_logs WHERE id IN (SELECT id FROM channel_logs WHERE at_ms < ?1 ORDER BY id LIMIT ?2)",
                )?
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
