//! The PostgreSQL statements the store's rules are made of (see `store::rules`), with what a
//! database several nodes write at once needs: the lease fence, row and advisory locks, and
//! NOTIFY for work committed on a lane another node owns (see the module notes of
//! `postgres`).

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::{PgStore, exec, opt, rows};
use crate::store::rules::{InFlight, NewRow, ParkedReceipt, SendRow, Tx};
use crate::store::{Item, ItemKind, Lane, Result, StoreError};

pub(super) const ITEM_COLUMNS: &str = "id, channel, lane, qkey, contact, kind, mid, payload, contact_json, state, \
     attempts, ambiguous, created_ms, COALESCE(queued_ms, created_ms) AS queued_ms, provider_id, status, last_error";

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
            "SELECT 1 FROM lane_leases WHERE channel = $1 AND lane = $2 AND node = $3 AND epoch = $4 FOR KEY SHARE",
            &[&channel, &lane.code(), &self.store.node(), &epoch],
        )
        .await?
        .is_some())
    }

    async fn still_attempting(&mut self, id: i64, attempt: i64) -> Result<bool> {
        Ok(opt(
            self.tx,
            "SELECT 1 FROM items WHERE id = $1 AND state = 1 AND attempts = $2 FOR UPDATE",
            &[&id, &attempt],
        )
        .await?
        .is_some())
    }

    async fn attempt_deadline(&mut self, id: i64) -> Result<Option<i64>> {
        Ok(opt(
            self.tx,
            "SELECT next_ms FROM items WHERE id = $1 AND state = 1",
            &[&id],
        )
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
            "UPDATE queues SET next_ms = $1 WHERE channel = $2 AND lane = $3 AND qkey = $4 AND claimed = 0",
            &[&next_ms, &channel, &lane.code(), &qkey],
        )
        .await?;
        Ok(())
    }

    async fn pause_lane(&mut self, channel: &str, lane: Lane, until_ms: i64) -> Result<()> {
        exec(
            self.tx,
            "INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES ($1, $2, $3)
             ON CONFLICT(channel, lane) DO UPDATE
             SET paused_until_ms = GREATEST(lane_state.paused_until_ms, excluded.paused_until_ms)",
            &[&channel, &lane.code(), &until_ms],
        )
        .await?;
        Ok(())
    }

    async fn fence(&mut self, channel: &str, lane: Lane) -> Result<()> {
        self.store.fence(self.tx, channel, lane).await
    }

    async fn lock_queue(&mut self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        exec(
            self.tx,
            "SELECT 1 FROM queues WHERE channel = $1 AND lane = $2 AND qkey = $3 FOR UPDATE",
            &[&channel, &lane.code(), &qkey],
        )
        .await?;
        Ok(())
    }

    async fn lock_provider_id(&mut self, channel: &str, pid: &str) -> Result<()> {
        let key = format!("{channel}\u{1f}{pid}");
        exec(
            self.tx,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .await?;
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
            "INSERT INTO dedupe(channel, key, expires_ms) VALUES ($1, $2, $3)
             ON CONFLICT(channel, key) DO UPDATE SET expires_ms = excluded.expires_ms
             WHERE dedupe.expires_ms < $4",
            &[&channel, &key, &expires_ms, &now],
        )
        .await?;
        Ok(n == 1)
    }

    async fn insert_item(&mut self, r: &NewRow<'_>, now: i64) -> Result<i64> {
        let id: i64 = rows(
            self.tx,
            "INSERT INTO items(channel, lane, qkey, contact, kind, mid, payload, contact_json, state,
                               created_ms, next_ms, updated_ms, provider_id, queued_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9, $9, $10, $9) RETURNING id",
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
            "INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES ($1, $2, $3, $4, $5, 0)
             ON CONFLICT(channel, lane, qkey) DO UPDATE SET class = LEAST(queues.class, excluded.class)",
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
        exec(
            self.tx,
            "INSERT INTO history(item_id, at_ms, event, detail) VALUES ($1, $2, $3, $4)",
            &[&item_id, &at_ms, &event, &detail],
        )
        .await?;
        Ok(())
    }

    async fn touch_contact(&mut self, channel: &str, contact: &str, now: i64) -> Result<()> {
        exec(
            self.tx,
            "INSERT INTO contacts(channel, contact, last_inbound_ms) VALUES ($1, $2, $3)
             ON CONFLICT(channel, contact) DO UPDATE
             SET last_inbound_ms = GREATEST(contacts.last_inbound_ms, excluded.last_inbound_ms)",
            &[&channel, &contact, &now],
        )
        .await?;
        Ok(())
    }

    async fn promote_sends(&mut self, channel: &str, contact: &str) -> Result<bool> {
        let n = exec(
            self.tx,
            "UPDATE queues SET class = 0 WHERE channel = $1 AND lane = 1 AND qkey = $2 AND class = 1",
            &[&channel, &contact],
        )
        .await?;
        Ok(n > 0)
    }

    async fn last_inbound(&mut self, channel: &str, contact: &str) -> Result<Option<i64>> {
        Ok(opt(
            self.tx,
            "SELECT last_inbound_ms FROM contacts WHERE channel = $1 AND contact = $2",
            &[&channel, &contact],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn send_by_provider_id(&mut self, channel: &str, pid: &str) -> Result<Option<SendRow>> {
        Ok(opt(
            self.tx,
            "SELECT id, mid, contact, status FROM items WHERE channel = $1 AND provider_id = $2 AND kind = 3
             FOR UPDATE",
            &[&channel, &pid],
        )
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    async fn status_row(&mut self, id: i64) -> Result<Option<(ItemKind, SendRow)>> {
        Ok(opt(
            self.tx,
            "SELECT kind, id, mid, contact, status FROM items WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .map(|r| {
            (
                ItemKind::from_code(r.get(0)),
                (r.get(1), r.get(2), r.get(3), r.get(4)),
            )
        }))
    }

    async fn set_status(&mut self, id: i64, status: i64, now: i64) -> Result<()> {
        exec(
            self.tx,
            "UPDATE items SET status = $1, updated_ms = $2 WHERE id = $3",
            &[&status, &now, &id],
        )
        .await?;
        Ok(())
    }

    async fn set_provider_id(&mut self, id: i64, pid: &str) -> Result<()> {
        exec(
            self.tx,
            "UPDATE items SET provider_id = $1 WHERE id = $2",
            &[&pid, &id],
        )
        .await?;
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
            "UPDATE items SET payload = $1, updated_ms = $2
             WHERE id = (SELECT id FROM items WHERE channel = $3 AND lane = 0 AND qkey = $4 AND state = 0
                         ORDER BY id DESC LIMIT 1)
               AND state = 0",
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
            "INSERT INTO parked_receipts(channel, provider_id, status, reason, received_ms, expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&channel, &pid, &status, &reason, &now, &expires_ms],
        )
        .await?;
        Ok(())
    }

    async fn parked_receipts(&mut self, channel: &str, pid: &str) -> Result<Vec<ParkedReceipt>> {
        Ok(rows(
            self.tx,
            "SELECT id, status, reason FROM parked_receipts WHERE channel = $1 AND provider_id = $2 ORDER BY id",
            &[&channel, &pid],
        )
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
        exec(self.tx, "DELETE FROM parked_receipts WHERE id = $1", &[&id]).await?;
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
        // Rows another transaction holds are skipped, not waited for: two claimers never get
        // one queue, and neither stalls behind the other. Joined on the row's ctid: a plan
        // made on stale statistics could otherwise scan the whole lane once per claimed row.
        let mut got: Vec<(i64, String)> = rows(
            self.tx,
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
            "SELECT next_ms FROM queues WHERE channel = $1 AND lane = $2 AND claimed = 0 AND class = $3
             AND next_ms > $4 ORDER BY next_ms LIMIT 1",
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
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE channel = $1 AND lane = $2 AND qkey = $3 AND state < 2
             ORDER BY id LIMIT $4"
        );
        Ok(rows(
            self.tx,
            &sql,
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
            "SELECT 1 FROM items WHERE channel = $1 AND lane = $2 AND qkey = $3 AND state < 2 LIMIT 1",
            &[&channel, &lane.code(), &qkey],
        )
        .await?
        .is_some())
    }

    async fn drop_queue(&mut self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        exec(
            self.tx,
            "DELETE FROM queues WHERE channel = $1 AND lane = $2 AND qkey = $3",
            &[&channel, &lane.code(), &qkey],
        )
        .await?;
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
            "UPDATE queues SET claimed = 0, next_ms = $1 WHERE channel = $2 AND lane = $3 AND qkey = $4",
            &[&next_ms, &channel, &lane.code(), &qkey],
        )
        .await?;
        Ok(())
    }

    async fn release_queue(&mut self, channel: &str, lane: Lane, qkey: &str) -> Result<()> {
        exec(
            self.tx,
            "UPDATE queues SET claimed = 0 WHERE channel = $1 AND lane = $2 AND qkey = $3",
            &[&channel, &lane.code(), &qkey],
        )
        .await?;
        Ok(())
    }

    async fn release_claims(&mut self, channel: &str, lane: Lane) -> Result<()> {
        exec(
            self.tx,
            "UPDATE queues SET claimed = 0 WHERE channel = $1 AND lane = $2 AND claimed = 1",
            &[&channel, &lane.code()],
        )
        .await?;
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
            "UPDATE items SET state = 1, attempts = attempts + 1, next_ms = $1, updated_ms = $2 WHERE id = $3",
            &[&deadline_ms, &now, &item.id],
        )
        .await?;
        exec(
            self.tx,
            "INSERT INTO attempts(item_id, channel, lane, at_ms, outcome, call_first)
             VALUES ($1, $2, $3, $4, 'attempting', $5)",
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
            "UPDATE attempts SET outcome = $1, detail = $2, duration_ms = $3, at_ms = COALESCE($5, at_ms)
             WHERE item_id = $4 AND outcome = 'attempting'",
            &[&outcome, &detail, &dur_ms, &id, &at_ms],
        )
        .await?;
        Ok(())
    }

    async fn delete_open_attempt(&mut self, id: i64) -> Result<()> {
        exec(
            self.tx,
            "DELETE FROM attempts WHERE item_id = $1 AND outcome = 'attempting'",
            &[&id],
        )
        .await?;
        Ok(())
    }

    async fn item_done(&mut self, id: i64, now: i64) -> Result<()> {
        exec(
            self.tx,
            "UPDATE items SET state = 2, updated_ms = $1, last_error = NULL,
             status = CASE WHEN kind = 3 AND status = 0 THEN 1 ELSE status END WHERE id = $2",
            &[&now, &id],
        )
        .await?;
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
            "UPDATE items SET state = 0, next_ms = $1, last_error = $2, updated_ms = $3,
             ambiguous = ambiguous + $4, attempts = attempts - $5 WHERE id = $6",
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
        exec(
            self.tx,
            "UPDATE items SET state = 0, attempts = attempts - 1, updated_ms = $1 WHERE id = $2",
            &[&now, &id],
        )
        .await?;
        Ok(())
    }

    async fn item_requeue_ambiguous(&mut self, id: i64) -> Result<()> {
        exec(
            self.tx,
            "UPDATE items SET state = 0, ambiguous = ambiguous + 1 WHERE id = $1",
            &[&id],
        )
        .await?;
        Ok(())
    }

    async fn item_dead(&mut self, id: i64, reason: &str, now: i64) -> Result<()> {
        exec(
            self.tx,
            "UPDATE items SET state = 3, last_error = $1, updated_ms = $2 WHERE id = $3",
            &[&reason, &now, &id],
        )
        .await?;
        Ok(())
    }

    async fn count_ambiguous(&mut self, id: i64) -> Result<()> {
        exec(
            self.tx,
            "UPDATE items SET ambiguous = ambiguous + 1 WHERE id = $1",
            &[&id],
        )
        .await?;
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
            "SELECT id, qkey FROM items
             WHERE channel = $1 AND lane = $2 AND state = 0 AND queued_ms < $3
             ORDER BY queued_ms LIMIT $4",
            &[&channel, &lane.code(), &before_ms, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    async fn is_pending(&mut self, id: i64) -> Result<bool> {
        Ok(opt(
            self.tx,
            "SELECT 1 FROM items WHERE id = $1 AND state = 0",
            &[&id],
        )
        .await?
        .is_some())
    }

    async fn attempting_items(&mut self, channel: &str, lane: Lane) -> Result<Vec<InFlight>> {
        Ok(rows(
            self.tx,
            "SELECT id, qkey, ambiguous, next_ms FROM items WHERE channel = $1 AND lane = $2 AND state = 1
             ORDER BY id FOR UPDATE",
            &[&channel, &lane.code()],
        )
        .await?
        .iter()
        .map(|r| InFlight {
            id: r.get(0),
            qkey: r.get(1),
            ambiguous: r.get(2),
            deadline_ms: r.get(3),
        })
        .collect())
    }
}
