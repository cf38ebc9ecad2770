//! The SQLite statements the store's rules are made of (see `store::rules`).
//!
//! Every primitive runs synchronously on the writer thread inside the batch's transaction;
//! the futures of this [`Tx`] are ready at their first poll. One writer serialises every
//! write, so the locks, fences and notifications a shared database needs are no-ops here.

use rusqlite::{Connection, OptionalExtension, params};

use super::sql;
use crate::store::rules::{InFlight, NewRow, ParkedReceipt, SendRow, Tx};
use crate::store::{Item, ItemKind, Lane};

pub(super) use super::sql::ITEM_COLUMNS;

pub(super) fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
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
        queued_ms: r.get("queued_ms")?,
        provider_id: r.get("provider_id")?,
        status: r.get("status")?,
        last_error: r.get("last_error")?,
    })
}

/// The writer's connection inside the batch's transaction, with the lanes' tenures where
/// a rule fences by them (lane work; admin changes need none).
pub struct SqliteTx<'c>(pub &'c Connection, pub Option<&'c super::LaneEpochs>);

/// The marker inside the rusqlite error a fenced write returns (see `StoreError::Fenced`).
#[derive(Debug)]
pub struct FencedWrite(pub String);

impl std::fmt::Display for FencedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FencedWrite {}

impl SqliteTx<'_> {
    pub(super) fn exec(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.0.prepare_cached(sql)?.execute(p)
    }
}

impl Tx for SqliteTx<'_> {
    type Error = rusqlite::Error;
    // One process owns the file (see `SqliteStore::open`'s lock).
    const SHARED: bool = false;

    fn invalid(msg: String) -> rusqlite::Error {
        rusqlite::Error::ToSqlConversionFailure(msg.into())
    }

    fn fenced(what: String) -> rusqlite::Error {
        rusqlite::Error::ToSqlConversionFailure(Box::new(FencedWrite(what)))
    }

    async fn holds(&mut self, channel: &str, lane: Lane, epoch: i64) -> rusqlite::Result<bool> {
        match self.1 {
            Some(epochs) => Ok(epochs.current(channel, lane) == epoch),
            None => Err(Self::invalid("lane work needs the lanes' tenures".into())),
        }
    }

    async fn still_attempting(&mut self, id: i64, attempt: i64) -> rusqlite::Result<bool> {
        Ok(self
            .0
            .prepare_cached(sql::STILL_ATTEMPTING)?
            .query_row(params![id, attempt], |_| Ok(()))
            .optional()?
            .is_some())
    }

    async fn attempt_deadline(&mut self, id: i64) -> rusqlite::Result<Option<i64>> {
        self.0
            .prepare_cached(sql::ATTEMPT_DEADLINE)?
            .query_row(params![id], |r| r.get(0))
            .optional()
    }

    async fn nudge_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        next_ms: i64,
    ) -> rusqlite::Result<()> {
        self.exec(
            sql::NUDGE_QUEUE,
            params![next_ms, channel, lane.code(), qkey],
        )?;
        Ok(())
    }

    async fn pause_lane(
        &mut self,
        channel: &str,
        lane: Lane,
        until_ms: i64,
    ) -> rusqlite::Result<()> {
        self.exec(sql::PAUSE_LANE, params![channel, lane.code(), until_ms])?;
        Ok(())
    }

    async fn fence(&mut self, _channel: &str, _lane: Lane) -> rusqlite::Result<()> {
        Ok(())
    }

    async fn lock_queue(
        &mut self,
        _channel: &str,
        _lane: Lane,
        _qkey: &str,
    ) -> rusqlite::Result<()> {
        Ok(())
    }

    async fn lock_provider_id(&mut self, _channel: &str, _pid: &str) -> rusqlite::Result<()> {
        Ok(())
    }

    async fn announce(&mut self, _channel: &str, _lane: Lane) -> rusqlite::Result<()> {
        Ok(())
    }

    async fn claim_dedupe(
        &mut self,
        channel: &str,
        key: &str,
        now: i64,
        expires_ms: i64,
    ) -> rusqlite::Result<bool> {
        let n = self.exec(sql::CLAIM_DEDUPE, params![channel, key, expires_ms, now])?;
        Ok(n == 1)
    }

    async fn insert_item(&mut self, r: &NewRow<'_>, now: i64) -> rusqlite::Result<i64> {
        self.exec(
            sql::INSERT_ITEM,
            params![
                r.channel,
                r.lane.code(),
                r.qkey,
                r.contact,
                r.kind as i64,
                r.mid,
                r.payload,
                r.contact_json,
                now,
                r.provider_id
            ],
        )?;
        let id = self.0.last_insert_rowid();
        self.exec(
            sql::UPSERT_QUEUE,
            params![r.channel, r.lane.code(), r.qkey, r.class, now],
        )?;
        Ok(id)
    }

    async fn history(
        &mut self,
        item_id: i64,
        at_ms: i64,
        event: &str,
        detail: Option<&str>,
    ) -> rusqlite::Result<()> {
        self.exec(sql::HISTORY, params![item_id, at_ms, event, detail])?;
        Ok(())
    }

    async fn touch_contact(
        &mut self,
        channel: &str,
        contact: &str,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.exec(sql::TOUCH_CONTACT, params![channel, contact, now])?;
        Ok(())
    }

    async fn promote_sends(&mut self, channel: &str, contact: &str) -> rusqlite::Result<bool> {
        let n = self.exec(sql::PROMOTE_SENDS, params![channel, contact])?;
        Ok(n > 0)
    }

    async fn last_inbound(
        &mut self,
        channel: &str,
        contact: &str,
    ) -> rusqlite::Result<Option<i64>> {
        self.0
            .prepare_cached(sql::LAST_INBOUND)?
            .query_row(params![channel, contact], |r| r.get(0))
            .optional()
    }

    async fn send_by_provider_id(
        &mut self,
        channel: &str,
        pid: &str,
    ) -> rusqlite::Result<Option<SendRow>> {
        self.0
            .prepare_cached(sql::SEND_BY_PROVIDER_ID)?
            .query_row(params![channel, pid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
    }

    async fn status_row(&mut self, id: i64) -> rusqlite::Result<Option<(ItemKind, SendRow)>> {
        self.0
            .prepare_cached(sql::STATUS_ROW)?
            .query_row(params![id], |r| {
                Ok((
                    ItemKind::from_code(r.get(0)?),
                    (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                ))
            })
            .optional()
    }

    async fn set_status(&mut self, id: i64, status: i64, now: i64) -> rusqlite::Result<()> {
        self.exec(sql::SET_STATUS, params![status, now, id])?;
        Ok(())
    }

    async fn set_provider_id(&mut self, id: i64, pid: &str) -> rusqlite::Result<()> {
        self.exec(sql::SET_PROVIDER_ID, params![pid, id])?;
        Ok(())
    }

    async fn replace_pending_status(
        &mut self,
        channel: &str,
        qkey: &str,
        payload: &str,
        now: i64,
    ) -> rusqlite::Result<bool> {
        let n = self.exec(
            sql::REPLACE_PENDING_STATUS,
            params![payload, now, channel, qkey],
        )?;
        Ok(n > 0)
    }

    async fn park_receipt(
        &mut self,
        channel: &str,
        pid: &str,
        status: i64,
        reason: Option<&str>,
        now: i64,
        expires_ms: i64,
    ) -> rusqlite::Result<()> {
        self.exec(
            sql::PARK_RECEIPT,
            params![channel, pid, status, reason, now, expires_ms],
        )?;
        Ok(())
    }

    async fn parked_receipts(
        &mut self,
        channel: &str,
        pid: &str,
    ) -> rusqlite::Result<Vec<ParkedReceipt>> {
        self.0
            .prepare_cached(sql::PARKED_RECEIPTS)?
            .query_map(params![channel, pid], |r| {
                Ok(ParkedReceipt {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    reason: r.get(2)?,
                })
            })?
            .collect()
    }

    async fn delete_parked(&mut self, id: i64) -> rusqlite::Result<()> {
        self.exec(sql::DELETE_PARKED, params![id])?;
        Ok(())
    }

    async fn claim_queues(
        &mut self,
        channel: &str,
        lane: Lane,
        class: i64,
        now: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<String>> {
        let keys: Vec<String> = self
            .0
            .prepare_cached(sql::CLAIM_QUEUES)?
            .query_map(
                params![channel, lane.code(), class, now, limit as i64],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<_>>()?;
        let mut upd = self.0.prepare_cached(sql::CLAIM_QUEUE_ROW)?;
        for k in &keys {
            upd.execute(params![channel, lane.code(), k])?;
        }
        Ok(keys)
    }

    async fn next_due(
        &mut self,
        channel: &str,
        lane: Lane,
        class: i64,
        now: i64,
    ) -> rusqlite::Result<Option<i64>> {
        self.0
            .prepare_cached(sql::NEXT_DUE)?
            .query_row(params![channel, lane.code(), class, now], |r| r.get(0))
            .optional()
    }

    async fn head_items(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
    ) -> rusqlite::Result<Vec<Item>> {
        self.0
            .prepare_cached(sql::HEAD_ITEMS)?
            .query_map(
                params![channel, lane.code(), qkey, limit as i64],
                item_from_row,
            )?
            .collect()
    }

    async fn queue_has_pending(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
    ) -> rusqlite::Result<bool> {
        Ok(self
            .0
            .prepare_cached(sql::QUEUE_HAS_PENDING)?
            .query_row(params![channel, lane.code(), qkey], |_| Ok(()))
            .optional()?
            .is_some())
    }

    async fn drop_queue(&mut self, channel: &str, lane: Lane, qkey: &str) -> rusqlite::Result<()> {
        self.exec(sql::DROP_QUEUE, params![channel, lane.code(), qkey])?;
        Ok(())
    }

    async fn release_queue_at(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        next_ms: i64,
    ) -> rusqlite::Result<()> {
        self.exec(
            sql::RELEASE_QUEUE_AT,
            params![next_ms, channel, lane.code(), qkey],
        )?;
        Ok(())
    }

    async fn release_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
    ) -> rusqlite::Result<()> {
        self.exec(sql::RELEASE_QUEUE, params![channel, lane.code(), qkey])?;
        Ok(())
    }

    async fn release_claims(&mut self, channel: &str, lane: Lane) -> rusqlite::Result<()> {
        self.exec(sql::RELEASE_CLAIMS, params![channel, lane.code()])?;
        Ok(())
    }

    async fn mark_attempting(
        &mut self,
        item: &Item,
        at_ms: i64,
        deadline_ms: i64,
        call_first: bool,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.exec(sql::MARK_ATTEMPTING, params![deadline_ms, now, item.id])?;
        self.exec(
            sql::OPEN_ATTEMPT,
            params![
                item.id,
                item.channel,
                item.lane.code(),
                at_ms,
                call_first as i64
            ],
        )?;
        Ok(())
    }

    async fn set_attempt_outcome(
        &mut self,
        id: i64,
        outcome: &str,
        detail: Option<&str>,
        dur_ms: i64,
        at_ms: Option<i64>,
    ) -> rusqlite::Result<()> {
        self.exec(
            sql::SET_ATTEMPT_OUTCOME,
            params![outcome, detail, dur_ms, id, at_ms],
        )?;
        Ok(())
    }

    async fn delete_open_attempt(&mut self, id: i64) -> rusqlite::Result<()> {
        self.exec(sql::DELETE_OPEN_ATTEMPT, params![id])?;
        Ok(())
    }

    async fn item_done(&mut self, id: i64, now: i64) -> rusqlite::Result<()> {
        self.exec(sql::ITEM_DONE, params![now, id])?;
        Ok(())
    }

    async fn item_retry(
        &mut self,
        id: i64,
        next_ms: i64,
        error: &str,
        now: i64,
        ambiguous: bool,
        uncount: bool,
    ) -> rusqlite::Result<()> {
        self.exec(
            sql::ITEM_RETRY,
            params![next_ms, error, now, ambiguous as i64, uncount as i64, id],
        )?;
        Ok(())
    }

    async fn item_not_sent(&mut self, id: i64, now: i64) -> rusqlite::Result<()> {
        self.exec(sql::ITEM_NOT_SENT, params![now, id])?;
        Ok(())
    }

    async fn item_requeue_ambiguous(&mut self, id: i64) -> rusqlite::Result<()> {
        self.exec(sql::ITEM_REQUEUE_AMBIGUOUS, params![id])?;
        Ok(())
    }

    async fn item_dead(&mut self, id: i64, reason: &str, now: i64) -> rusqlite::Result<()> {
        self.exec(sql::ITEM_DEAD, params![reason, now, id])?;
        Ok(())
    }

    async fn count_ambiguous(&mut self, id: i64) -> rusqlite::Result<()> {
        self.exec(sql::COUNT_AMBIGUOUS, params![id])?;
        Ok(())
    }

    async fn aged_pending(
        &mut self,
        channel: &str,
        lane: Lane,
        before_ms: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<(i64, String)>> {
        self.0
            .prepare_cached(sql::AGED_PENDING)?
            .query_map(
                params![channel, lane.code(), before_ms, limit as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect()
    }

    async fn is_pending(&mut self, id: i64) -> rusqlite::Result<bool> {
        self.0
            .prepare_cached(sql::IS_PENDING)?
            .query_row(params![id], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    async fn attempting_items(
        &mut self,
        channel: &str,
        lane: Lane,
    ) -> rusqlite::Result<Vec<InFlight>> {
        self.0
            .prepare_cached(sql::ATTEMPTING_ITEMS)?
            .query_map(params![channel, lane.code()], |r| {
                Ok(InFlight {
                    id: r.get(0)?,
                    qkey: r.get(1)?,
                    ambiguous: r.get(2)?,
                    deadline_ms: r.get(3)?,
                })
            })?
            .collect()
    }
}
