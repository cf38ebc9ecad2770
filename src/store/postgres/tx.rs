//! The PostgreSQL statements the store's rules are made of (see `store::rules`), with what a
//! database several nodes write at once needs: the lease fence, row and advisory locks, and
//! NOTIFY for work committed on a lane another node owns (see the module notes of
//! `postgres`).

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::sql;
use super::{PgStore, exec, opt, rows};
use crate::store::rules::{InFlight, NewRow, ParkedReceipt, SendRow, Tx};
use crate::store::{Item, ItemKind, Lane, Result, StoreError};

pub(super) use super::sql::ITEM_COLUMNS;

pub(super) fn item_from_row(r: &Row) -> Item {
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
        queued_ms: r.get("queued_ms"),
        provider_id: r.get("provider_id"),
        status: r.get("status"),
        last_error: r.get("last_error"),
    }
}

/// One transaction of a node, with the store that knows the node's leases.
pub struct PgTx<'a> {
    pub tx: &'a Transaction<'a>,
    pub store: &'a PgStore,
}

impl Tx for PgTx<'_> {
    type Error = StoreError;
    const SHARED: bool = true;

    fn invalid(msg: String) -> StoreError {
        StoreError::Unavailable(msg)
    }

    fn fenced(what: String) -> StoreError {
        StoreError::Fenced(what)
    }

    async fn holds(&mut self, channel: &str, lane: Lane, epoch: i64) -> Result<bool> {
        // Key-share locked like `fence`: a takeover waits for this write to commit.
        Ok(opt(
            self.tx,
            sql::HOLDS,
            &[&channel, &lane.code(), &self.store.node(), &epoch],
        )
        .await?
        .is_some())
    }

    async fn still_attempting(&mut self, id: i64, attempt: i64) -> Result<bool> {
        Ok(opt(self.tx, sql::STILL_ATTEMPTING, &[&id, &attempt])
            .await?
            .is_some())
    }

    async fn attempt_deadline(&mut self, id: i64) -> Result<Option<i64>> {
        Ok(opt(self.tx, sql::ATTEMPT_DEADLINE, &[&id])
            .await?
            .map(|r| r.get(0)))
    }

    async fn nudge_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        next_ms: i64,
    ) -> Result<()> {
        exec(
            self.tx,
            sql::NUDGE_QUEUE,
            &[&next_ms, &channel, &lane.code(), &qkey],
        )
        .await?;
        Ok(())
    }

    async fn pause_lane(&mut self, channel: &str, lane: Lane, until_ms: i64) -> Result<()> {
        exec(
            self.tx,
            sql::PAUSE_LANE,
            &[&channel, &lane.code(), &until_ms],
        )
        .await?;
        Ok(())
    }

    async fn fence(&mut self, channel: &str, lane: Lane) -> Result<()> {
        self.store.fence(self.tx, channel, lane).await
    }

    async fn lock_queue(&mut self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        exec(self.tx, sql::LOCK_QUEUE, &[&channel, &lane.code(), &qkey]).await?;
        Ok(())
    }

    async fn lock_provider_id(&mut self, channel: &str, pid: &str) -> Result<()> {
        let key = format!("{channel}\u{1f}{pid}");
        exec(self.tx, sql::LOCK_PROVIDER_ID, &[&key]).await?;
        Ok(())
    }

    async fn announce(&mut self, channel: &str, lane: Lane) -> Result<()> {
        self.store.announce(self.tx, channel, lane).await
    }

    async fn claim_dedupe(
        &mut self,
        channel: &str,
        key: &str,
        now: i64,
        expires_ms: i64,
    ) -> Result<bool> {
        // The primary key makes this atomic across nodes: a concurrent insert of the same key
        // waits for the first to commit and then sees it.
        let n = exec(
            self.tx,
            sql::CLAIM_DEDUPE,
            &[&channel, &key, &expires_ms, &now],
        )
        .await?;
        Ok(n == 1)
    }

    async fn insert_item(&mut self, r: &NewRow<'_>, now: i64) -> Result<i64> {
        let id: i64 = rows(
            self.tx,
            sql::INSERT_ITEM,
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
        // If the lane's owner is dropping this queue row right now, the upsert waits for
        // that and then inserts a fresh row.
        exec(
            self.tx,
            sql::UPSERT_QUEUE,
            &[&r.channel, &r.lane.code(), &r.qkey, &r.class, &now],
        )
        .await?;
        Ok(id)
    }

    async fn history(
        &mut self,
        item_id: i64,
        at_ms: i64,
        event: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        exec(self.tx, sql::HISTORY, &[&item_id, &at_ms, &event, &detail]).await?;
        Ok(())
    }

    async fn touch_contact(&mut self, channel: &str, contact: &str, now: i64) -> Result<()> {
        exec(self.tx, sql::TOUCH_CONTACT, &[&channel, &contact, &now]).await?;
        Ok(())
    }

    async fn promote_sends(&mut self, channel: &str, contact: &str) -> Result<bool> {
        let n = exec(self.tx, sql::PROMOTE_SENDS, &[&channel, &contact]).await?;
        Ok(n > 0)
    }

    async fn last_inbound(&mut self, channel: &str, contact: &str) -> Result<Option<i64>> {
        Ok(opt(self.tx, sql::LAST_INBOUND, &[&channel, &contact])
            .await?
            .map(|r| r.get(0)))
    }

    async fn send_by_provider_id(&mut self, channel: &str, pid: &str) -> Result<Option<SendRow>> {
        Ok(opt(self.tx, sql::SEND_BY_PROVIDER_ID, &[&channel, &pid])
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    async fn status_row(&mut self, id: i64) -> Result<Option<(ItemKind, SendRow)>> {
        Ok(opt(self.tx, sql::STATUS_ROW, &[&id]).await?.map(|r| {
            (
                ItemKind::from_code(r.get(0)),
                (r.get(1), r.get(2), r.get(3), r.get(4)),
            )
        }))
    }

    async fn set_status(&mut self, id: i64, status: i64, now: i64) -> Result<()> {
        exec(self.tx, sql::SET_STATUS, &[&status, &now, &id]).await?;
        Ok(())
    }

    async fn set_provider_id(&mut self, id: i64, pid: &str) -> Result<()> {
        exec(self.tx, sql::SET_PROVIDER_ID, &[&pid, &id]).await?;
        Ok(())
    }

    async fn replace_pending_status(
        &mut self,
        channel: &str,
        qkey: &str,
        payload: &str,
        now: i64,
    ) -> Result<bool> {
        // Conditional on the status still pending: the lane's owner may be taking it.
        let n = exec(
            self.tx,
            sql::REPLACE_PENDING_STATUS,
            &[&payload, &now, &channel, &qkey],
        )
        .await?;
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
    ) -> Result<()> {
        exec(
            self.tx,
            sql::PARK_RECEIPT,
            &[&channel, &pid, &status, &reason, &now, &expires_ms],
        )
        .await?;
        Ok(())
    }

    async fn parked_receipts(&mut self, channel: &str, pid: &str) -> Result<Vec<ParkedReceipt>> {
        Ok(rows(self.tx, sql::PARKED_RECEIPTS, &[&channel, &pid])
            .await?
            .iter()
            .map(|r| ParkedReceipt {
                id: r.get(0),
                status: r.get(1),
                reason: r.get(2),
            })
            .collect())
    }

    async fn delete_parked(&mut self, id: i64) -> Result<()> {
        exec(self.tx, sql::DELETE_PARKED, &[&id]).await?;
        Ok(())
    }

    async fn claim_queues(
        &mut self,
        channel: &str,
        lane: Lane,
        class: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<String>> {
        // See `sql::CLAIM_QUEUES`; RETURNING comes in no particular order.
        let mut got: Vec<(i64, String)> = rows(
            self.tx,
            sql::CLAIM_QUEUES,
            &[&channel, &lane.code(), &class, &now, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        got.sort();
        Ok(got.into_iter().map(|(_, k)| k).collect())
    }

    async fn next_due(
        &mut self,
        channel: &str,
        lane: Lane,
        class: i64,
        now: i64,
    ) -> Result<Option<i64>> {
        Ok(opt(
            self.tx,
            sql::NEXT_DUE,
            &[&channel, &lane.code(), &class, &now],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn head_items(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
    ) -> Result<Vec<Item>> {
        Ok(rows(
            self.tx,
            sql::HEAD_ITEMS,
            &[&channel, &lane.code(), &qkey, &(limit as i64)],
        )
        .await?
        .iter()
        .map(item_from_row)
        .collect())
    }

    async fn queue_has_pending(&mut self, channel: &str, lane: Lane, qkey: &str) -> Result<bool> {
        Ok(opt(
            self.tx,
            sql::QUEUE_HAS_PENDING,
            &[&channel, &lane.code(), &qkey],
        )
        .await?
        .is_some())
    }

    async fn drop_queue(&mut self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        exec(self.tx, sql::DROP_QUEUE, &[&channel, &lane.code(), &qkey]).await?;
        Ok(())
    }

    async fn release_queue_at(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        next_ms: i64,
    ) -> Result<()> {
        exec(
            self.tx,
            sql::RELEASE_QUEUE_AT,
            &[&next_ms, &channel, &lane.code(), &qkey],
        )
        .await?;
        Ok(())
    }

    async fn release_queue(&mut self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        exec(
            self.tx,
            sql::RELEASE_QUEUE,
            &[&channel, &lane.code(), &qkey],
        )
        .await?;
        Ok(())
    }

    async fn release_claims(&mut self, channel: &str, lane: Lane) -> Result<()> {
        exec(self.tx, sql::RELEASE_CLAIMS, &[&channel, &lane.code()]).await?;
        Ok(())
    }

    async fn mark_attempting(
        &mut self,
        item: &Item,
        at_ms: i64,
        deadline_ms: i64,
        call_first: bool,
        now: i64,
    ) -> Result<()> {
        exec(
            self.tx,
            sql::MARK_ATTEMPTING,
            &[&deadline_ms, &now, &item.id],
        )
        .await?;
        exec(
            self.tx,
            sql::OPEN_ATTEMPT,
            &[
                &item.id,
                &item.channel,
                &item.lane.code(),
                &at_ms,
                &(call_first as i64),
            ],
        )
        .await?;
        Ok(())
    }

    async fn set_attempt_outcome(
        &mut self,
        id: i64,
        outcome: &str,
        detail: Option<&str>,
        dur_ms: i64,
        at_ms: Option<i64>,
    ) -> Result<()> {
        exec(
            self.tx,
            sql::SET_ATTEMPT_OUTCOME,
            &[&outcome, &detail, &dur_ms, &id, &at_ms],
        )
        .await?;
        Ok(())
    }

    async fn delete_open_attempt(&mut self, id: i64) -> Result<()> {
        exec(self.tx, sql::DELETE_OPEN_ATTEMPT, &[&id]).await?;
        Ok(())
    }

    async fn item_done(&mut self, id: i64, now: i64) -> Result<()> {
        exec(self.tx, sql::ITEM_DONE, &[&now, &id]).await?;
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
    ) -> Result<()> {
        exec(
            self.tx,
            sql::ITEM_RETRY,
            &[
                &next_ms,
                &error,
                &now,
                &(ambiguous as i64),
                &(uncount as i64),
                &id,
            ],
        )
        .await?;
        Ok(())
    }

    async fn item_not_sent(&mut self, id: i64, now: i64) -> Result<()> {
        exec(self.tx, sql::ITEM_NOT_SENT, &[&now, &id]).await?;
        Ok(())
    }

    async fn item_requeue_ambiguous(&mut self, id: i64) -> Result<()> {
        exec(self.tx, sql::ITEM_REQUEUE_AMBIGUOUS, &[&id]).await?;
        Ok(())
    }

    async fn item_dead(&mut self, id: i64, reason: &str, now: i64) -> Result<()> {
        exec(self.tx, sql::ITEM_DEAD, &[&reason, &now, &id]).await?;
        Ok(())
    }

    async fn count_ambiguous(&mut self, id: i64) -> Result<()> {
        exec(self.tx, sql::COUNT_AMBIGUOUS, &[&id]).await?;
        Ok(())
    }

    async fn aged_pending(
        &mut self,
        channel: &str,
        lane: Lane,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>> {
        Ok(rows(
            self.tx,
            sql::AGED_PENDING,
            &[&channel, &lane.code(), &before_ms, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    async fn is_pending(&mut self, id: i64) -> Result<bool> {
        Ok(opt(self.tx, sql::IS_PENDING, &[&id]).await?.is_some())
    }

    async fn attempting_items(&mut self, channel: &str, lane: Lane) -> Result<Vec<InFlight>> {
        Ok(
            rows(self.tx, sql::ATTEMPTING_ITEMS, &[&channel, &lane.code()])
                .await?
                .iter()
                .map(|r| InFlight {
                    id: r.get(0),
                    qkey: r.get(1),
                    ambiguous: r.get(2),
                    deadline_ms: r.get(3),
                })
                .collect(),
        )
    }
}
