//! What the store writes, decided once for both backends.
//!
//! Each rule here (ingest, accept, receipts, claims, attempts and their outcomes, crash
//! recovery) runs inside one transaction of a backend and says *what* to read and write;
//! the backend's [`Tx`] says *how*, one statement per primitive. So the SQLite and the
//! PostgreSQL store cannot drift apart in behaviour: they differ only in SQL dialect and in
//! what a shared database needs (row locks, lease fences, notifications), which are
//! primitives too and no-ops on the single-node store.
//!
//! The SQLite store runs a rule on its writer thread and polls it to completion there (its
//! primitives never wait); the PostgreSQL store awaits it on its connection.

use crate::config::OnCrash;
use crate::respondio::wire::{Event, EventType, Status, StatusValue};
use crate::status::{self, Transition};

use super::{
    AcceptedSend, ClaimBatch, CrashPolicy, Finish, Head, IngestResult, Item, ItemKind, Lane,
    LiveAttempts, NewInbound, NewOutbound, ReceiptIn, ReceiptResult, RecoveryReport,
    STATE_ATTEMPTING, TakeHead, Taken, message_qkey, status_qkey,
};

/// A send item as the status machine sees it: (id, mId, contact, current status code).
pub type SendRow = (i64, String, String, i64);

/// A row to insert into `items`, with the class its queue gets if it is new.
pub struct NewRow<'a> {
    pub channel: &'a str,
    pub lane: Lane,
    pub qkey: &'a str,
    pub contact: &'a str,
    pub kind: ItemKind,
    pub mid: &'a str,
    pub payload: &'a str,
    pub contact_json: Option<&'a str>,
    pub provider_id: Option<&'a str>,
    /// 0 first (conversations, a contact's messages), 1 after (bulk, statuses).
    pub class: i64,
}

/// A receipt waiting for its send's provider id.
pub struct ParkedReceipt {
    pub id: i64,
    pub status: i64,
    pub reason: Option<String>,
}

/// An item left attempting.
pub struct InFlight {
    pub id: i64,
    pub qkey: String,
    pub ambiguous: i64,
    /// Its attempt's deadline: until then its owner may still be waiting for the answer.
    pub deadline_ms: i64,
}

/// One transaction of a backend: the statements the rules are made of. Every method is one
/// statement (or none, where a single-node store needs nothing).
#[allow(async_fn_in_trait)] // used with concrete backends only; their futures' Send-ness shows through
pub trait Tx {
    type Error;
    /// Several nodes work this store: an item attempting that is not this process's may
    /// still be in flight on another node until its deadline. (On a single-node store such
    /// an item was left by a process that is gone.)
    const SHARED: bool;
    /// An error of the rule itself (a value that cannot be stored).
    fn invalid(msg: String) -> Self::Error;
    /// The write belongs to a tenure or an attempt that is over.
    fn fenced(what: String) -> Self::Error;

    // What a shared database needs; a single-node store does nothing here.
    /// The node still holds the lane's lease (see `postgres`): else `Fenced`.
    async fn fence(&mut self, channel: &str, lane: Lane) -> Result<(), Self::Error>;
    /// Whether tenure `epoch` of this node on the lane is the current one (locking the
    /// lease against a takeover until commit, where leases are shared).
    async fn holds(&mut self, channel: &str, lane: Lane, epoch: i64) -> Result<bool, Self::Error>;
    /// Whether the item is still attempting as its `attempt`-th attempt.
    async fn still_attempting(&mut self, id: i64, attempt: i64) -> Result<bool, Self::Error>;
    /// The deadline of an item's attempt in progress (`None`: not attempting).
    async fn attempt_deadline(&mut self, id: i64) -> Result<Option<i64>, Self::Error>;
    /// Makes an unclaimed queue due at `next_ms` (a claimed one is left to its holder).
    async fn nudge_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        next_ms: i64,
    ) -> Result<(), Self::Error>;
    /// Pauses the lane until `until_ms`, unless it is already paused longer.
    async fn pause_lane(
        &mut self,
        channel: &str,
        lane: Lane,
        until_ms: i64,
    ) -> Result<(), Self::Error>;
    /// Locks a queue row before anything that may drop it.
    async fn lock_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
    ) -> Result<(), Self::Error>;
    /// Serialises everything about one provider id until the transaction ends.
    async fn lock_provider_id(&mut self, channel: &str, pid: &str) -> Result<(), Self::Error>;
    /// Tells the lane's owner (another node) about new work, at commit.
    async fn announce(&mut self, channel: &str, lane: Lane) -> Result<(), Self::Error>;

    /// Claims a dedupe key until `expires_ms`; false when a live key exists.
    async fn claim_dedupe(
        &mut self,
        channel: &str,
        key: &str,
        now: i64,
        expires_ms: i64,
    ) -> Result<bool, Self::Error>;

    /// Inserts an item (pending) and makes sure its queue exists: a new queue starts due
    /// now; an existing one keeps its schedule and only ever moves up a class.
    async fn insert_item(&mut self, row: &NewRow<'_>, now: i64) -> Result<i64, Self::Error>;
    async fn history(
        &mut self,
        item_id: i64,
        at_ms: i64,
        event: &str,
        detail: Option<&str>,
    ) -> Result<(), Self::Error>;

    /// The contact wrote in at `now` (kept as the latest time seen).
    async fn touch_contact(
        &mut self,
        channel: &str,
        contact: &str,
        now: i64,
    ) -> Result<(), Self::Error>;
    /// Moves the contact's waiting sends to the conversation class; true if it did.
    async fn promote_sends(&mut self, channel: &str, contact: &str) -> Result<bool, Self::Error>;
    async fn last_inbound(
        &mut self,
        channel: &str,
        contact: &str,
    ) -> Result<Option<i64>, Self::Error>;

    /// The send with this provider id, locked for the status machine.
    async fn send_by_provider_id(
        &mut self,
        channel: &str,
        pid: &str,
    ) -> Result<Option<SendRow>, Self::Error>;
    /// An item's kind with its status-machine row, locked.
    async fn status_row(&mut self, id: i64) -> Result<Option<(ItemKind, SendRow)>, Self::Error>;
    async fn set_status(&mut self, id: i64, status: i64, now: i64) -> Result<(), Self::Error>;
    async fn set_provider_id(&mut self, id: i64, pid: &str) -> Result<(), Self::Error>;
    /// Replaces the payload of the newest pending status of a status queue, if it is still
    /// pending; false when there is none.
    async fn replace_pending_status(
        &mut self,
        channel: &str,
        qkey: &str,
        payload: &str,
        now: i64,
    ) -> Result<bool, Self::Error>;

    async fn park_receipt(
        &mut self,
        channel: &str,
        pid: &str,
        status: i64,
        reason: Option<&str>,
        now: i64,
        expires_ms: i64,
    ) -> Result<(), Self::Error>;
    /// Receipts parked for a provider id, oldest first.
    async fn parked_receipts(
        &mut self,
        channel: &str,
        pid: &str,
    ) -> Result<Vec<ParkedReceipt>, Self::Error>;
    async fn delete_parked(&mut self, id: i64) -> Result<(), Self::Error>;

    /// Claims up to `limit` due, unclaimed queues of one class, earliest due first.
    async fn claim_queues(
        &mut self,
        channel: &str,
        lane: Lane,
        class: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<String>, Self::Error>;
    /// When the earliest unclaimed queue of a class that is not due yet becomes due.
    async fn next_due(
        &mut self,
        channel: &str,
        lane: Lane,
        class: i64,
        now: i64,
    ) -> Result<Option<i64>, Self::Error>;
    /// The first items of a queue that are not settled (pending or attempting), in order.
    async fn head_items(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
    ) -> Result<Vec<Item>, Self::Error>;
    async fn queue_has_pending(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
    ) -> Result<bool, Self::Error>;
    async fn drop_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
    ) -> Result<(), Self::Error>;
    /// Hands a claimed queue back, due at `next_ms`.
    async fn release_queue_at(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        next_ms: i64,
    ) -> Result<(), Self::Error>;
    /// Hands a claimed queue back, keeping its schedule.
    async fn release_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
    ) -> Result<(), Self::Error>;
    /// Hands every claimed queue of a lane back.
    async fn release_claims(&mut self, channel: &str, lane: Lane) -> Result<(), Self::Error>;

    /// Marks an item attempting until `deadline_ms` (kept in its `next_ms`) and opens its
    /// attempt row (logged at `at_ms`); `call_first` marks the one row per request that
    /// the rate limit counts.
    async fn mark_attempting(
        &mut self,
        item: &Item,
        at_ms: i64,
        deadline_ms: i64,
        call_first: bool,
        now: i64,
    ) -> Result<(), Self::Error>;
    /// Settles an item's open attempt row; `at_ms`, when given, is when the request really
    /// left (`None` keeps the time recorded).
    async fn set_attempt_outcome(
        &mut self,
        id: i64,
        outcome: &str,
        detail: Option<&str>,
        dur_ms: i64,
        at_ms: Option<i64>,
    ) -> Result<(), Self::Error>;
    /// Deletes an item's open attempt row (it never left).
    async fn delete_open_attempt(&mut self, id: i64) -> Result<(), Self::Error>;
    /// Delivered: state done, error cleared; a send with no status yet becomes `sent`.
    async fn item_done(&mut self, id: i64, now: i64) -> Result<(), Self::Error>;
    /// Back to pending until `next_ms`; `ambiguous` counts one more maybe-acted-on attempt;
    /// `uncount` gives the attempt back (throttles and faults do not use one up).
    #[allow(clippy::too_many_arguments)]
    async fn item_retry(
        &mut self,
        id: i64,
        next_ms: i64,
        error: &str,
        now: i64,
        ambiguous: bool,
        uncount: bool,
    ) -> Result<(), Self::Error>;
    /// Back to pending with the attempt given back (it never left).
    async fn item_not_sent(&mut self, id: i64, now: i64) -> Result<(), Self::Error>;
    /// Back to pending after a crash left it attempting: one more ambiguous attempt.
    async fn item_requeue_ambiguous(&mut self, id: i64) -> Result<(), Self::Error>;
    async fn item_dead(&mut self, id: i64, reason: &str, now: i64) -> Result<(), Self::Error>;
    /// Counts one more attempt that may have been acted on (the item gives up after it).
    async fn count_ambiguous(&mut self, id: i64) -> Result<(), Self::Error>;
    /// Up to `limit` pending items of a lane queued before `before_ms`, oldest first:
    /// (id, queue).
    async fn aged_pending(
        &mut self,
        channel: &str,
        lane: Lane,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, Self::Error>;
    /// Whether an item is pending (not attempting, not settled).
    async fn is_pending(&mut self, id: i64) -> Result<bool, Self::Error>;
    /// Items of a lane left attempting, oldest first, locked.
    async fn attempting_items(
        &mut self,
        channel: &str,
        lane: Lane,
    ) -> Result<Vec<InFlight>, Self::Error>;
}

/// Dedupes and commits inbound events, in order; a contact who writes in has their
/// waiting sends promoted to the conversation class.
pub async fn ingest_inbound<T: Tx>(
    tx: &mut T,
    channel: &str,
    items: Vec<NewInbound>,
    dedupe_ttl_ms: i64,
    now: i64,
) -> Result<Vec<IngestResult>, T::Error> {
    let mut out = Vec::with_capacity(items.len());
    let mut promoted = false;
    for it in items {
        let expires = now.saturating_add(dedupe_ttl_ms);
        if !tx
            .claim_dedupe(channel, &it.dedupe_key, now, expires)
            .await?
        {
            out.push(IngestResult::Duplicate);
            continue;
        }
        let qkey = message_qkey(&it.contact);
        // The item row is the "received" record (created_ms, provider_id): no history row
        // here, every ingest writes as few pages as it can.
        let row = NewRow {
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
        };
        let id = tx.insert_item(&row, now).await?;
        if it.kind == ItemKind::Message {
            tx.touch_contact(channel, &it.contact, now).await?;
            // The contact is in a conversation now: their waiting sends go first.
            promoted |= tx.promote_sends(channel, &it.contact).await?;
        }
        out.push(IngestResult::Stored { item_id: id });
    }
    if out.iter().any(|r| matches!(r, IngestResult::Stored { .. })) {
        tx.announce(channel, Lane::RespondIo).await?;
    }
    if promoted {
        tx.announce(channel, Lane::Provider).await?;
    }
    Ok(out)
}

/// Commits a send from respond.io: conversation class if the contact wrote in within
/// `window_ms`, else bulk.
pub async fn accept_outbound<T: Tx>(
    tx: &mut T,
    channel: &str,
    item: NewOutbound,
    window_ms: i64,
    now: i64,
) -> Result<AcceptedSend, T::Error> {
    let last = tx.last_inbound(channel, &item.contact).await?;
    let conversation = last.is_some_and(|l| now - l <= window_ms);
    let row = NewRow {
        channel,
        lane: Lane::Provider,
        qkey: &item.contact,
        contact: &item.contact,
        kind: ItemKind::Send,
        mid: &item.mid,
        payload: &item.message_json,
        contact_json: None,
        provider_id: None,
        class: if conversation { 0 } else { 1 },
    };
    let id = tx.insert_item(&row, now).await?;
    let class = if conversation { "conversation" } else { "bulk" };
    tx.history(id, now, "accepted", Some(class)).await?;
    tx.announce(channel, Lane::Provider).await?;
    Ok(AcceptedSend {
        item_id: id,
        conversation,
    })
}

/// Applies delivery receipts through the status machine; parks those whose provider id no
/// send has recorded yet.
pub async fn apply_receipts<T: Tx>(
    tx: &mut T,
    channel: &str,
    receipts: Vec<ReceiptIn>,
    dedupe_ttl_ms: i64,
    parked_ttl_ms: i64,
    now: i64,
) -> Result<Vec<ReceiptResult>, T::Error> {
    let mut out = Vec::with_capacity(receipts.len());
    for r in receipts {
        let key = format!("receipt:{}", r.dedupe_key);
        if !tx
            .claim_dedupe(channel, &key, now, now.saturating_add(dedupe_ttl_ms))
            .await?
        {
            out.push(ReceiptResult::Duplicate);
            continue;
        }
        tx.lock_provider_id(channel, &r.provider_id).await?;
        let item = tx.send_by_provider_id(channel, &r.provider_id).await?;
        let Some(value) = r.status else {
            out.push(ReceiptResult::Ignored {
                mid: item.map(|i| i.1).unwrap_or_default(),
                why: "informational receipt".into(),
            });
            continue;
        };
        match item {
            Some(item) => {
                out.push(apply_status(tx, channel, item, value, r.reason.as_deref(), now).await?)
            }
            None => {
                let code = status::code(value);
                let expires = now + parked_ttl_ms;
                tx.park_receipt(
                    channel,
                    &r.provider_id,
                    code,
                    r.reason.as_deref(),
                    now,
                    expires,
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
        tx.announce(channel, Lane::RespondIo).await?;
    }
    Ok(out)
}

/// Runs a receipt's status through the status machine for one (locked) send item.
pub async fn apply_status<T: Tx>(
    tx: &mut T,
    channel: &str,
    item: SendRow,
    new: StatusValue,
    reason: Option<&str>,
    now: i64,
) -> Result<ReceiptResult, T::Error> {
    let (id, mid, contact, current) = item;
    match status::advance(current, new) {
        Transition::Ignore(why) => {
            let event = format!("receipt {} ignored", new.as_str());
            tx.history(id, now, &event, Some(why)).await?;
            Ok(ReceiptResult::Ignored {
                mid,
                why: why.to_string(),
            })
        }
        Transition::Forward(v) => {
            tx.set_status(id, status::code(v), now).await?;
            tx.history(id, now, &format!("status {}", v.as_str()), reason)
                .await?;
            if v == StatusValue::Sent {
                // respond.io took our 200 as "sent" already [INF, spec §4.5].
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

/// Queues a `message_status` toward respond.io; a pending one for the same mId is replaced
/// (several pending statuses of one message collapse into the latest). Callers hold the
/// send's row lock, so statuses of one mId are queued one at a time.
async fn enqueue_status<T: Tx>(
    tx: &mut T,
    channel: &str,
    contact: &str,
    mid: &str,
    value: StatusValue,
    reason: Option<&str>,
    now: i64,
) -> Result<(), T::Error> {
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
    let payload = serde_json::to_string(&event).map_err(|e| T::invalid(e.to_string()))?;
    let qkey = status_qkey(mid);
    if !tx
        .replace_pending_status(channel, &qkey, &payload, now)
        .await?
    {
        let row = NewRow {
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
        };
        tx.insert_item(&row, now).await?;
    }
    Ok(())
}

/// Claims due, unclaimed queues of a lane: up to `limits[c]` of class `c`.
pub async fn claim<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    now: i64,
    limits: [usize; 2],
) -> Result<ClaimBatch, T::Error> {
    tx.fence(channel, lane).await?;
    let mut batch = ClaimBatch::default();
    for (class, &limit) in limits.iter().enumerate() {
        if limit > 0 {
            let keys = tx
                .claim_queues(channel, lane, class as i64, now, limit)
                .await?;
            batch
                .claimed
                .extend(keys.into_iter().map(|k| (k, class as u8)));
        }
        let next = tx.next_due(channel, lane, class as i64, now).await?;
        batch.next_due_ms = match (batch.next_due_ms, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(batch)
}

/// The first unsettled items of a queue (at most `limit`); drops the queue row when it has
/// none.
pub async fn head_of_queue<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    qkey: &str,
    limit: usize,
) -> Result<Vec<Item>, T::Error> {
    tx.lock_queue(channel, lane, qkey).await?;
    let items = tx.head_items(channel, lane, qkey, limit).await?;
    if items.is_empty() {
        tx.drop_queue(channel, lane, qkey).await?;
    }
    Ok(items)
}

/// The head of a claimed queue, marked attempting and logged (provisionally at
/// `how.at_ms`) before the request leaves. The backend registers the items taken as this
/// process's live attempt (see [`LiveAttempts`]) so that no other lane generation of this
/// process sees the mark without knowing whose it is.
/// A head still attempting is never taken again: if it is this process's (an earlier lane
/// generation's attempt that has not recorded its outcome yet) or, on a shared store,
/// another node's before its deadline, the queue is handed back for later; otherwise its
/// owner is gone and the crash policy settles it first.
pub async fn take_head<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    qkey: &str,
    how: TakeHead,
    live: &LiveAttempts,
    now: i64,
) -> Result<Head, T::Error> {
    if !tx.holds(channel, lane, how.epoch).await? {
        return Err(T::fenced(format!("{channel}/{}: tenure over", lane.name())));
    }
    loop {
        let items = head_of_queue(tx, channel, lane, qkey, how.limit).await?;
        if items.is_empty() {
            return Ok(Head::Empty);
        }
        let Some(busy) = items.iter().find(|i| i.state == STATE_ATTEMPTING) else {
            for (i, item) in items.iter().enumerate() {
                tx.mark_attempting(item, how.at_ms, how.deadline_ms, i == 0, now)
                    .await?;
            }
            return Ok(Head::Taken(items));
        };
        let until = if live.contains(busy.id) {
            // Its attempt records the outcome and then makes the queue due again.
            Some(now + 1000)
        } else {
            let deadline = tx.attempt_deadline(busy.id).await?.unwrap_or(0);
            (T::SHARED && deadline > now).then_some(deadline)
        };
        if let Some(until_ms) = until {
            tx.release_queue_at(channel, lane, qkey, until_ms).await?;
            return Ok(Head::InFlight { until_ms });
        }
        let it = InFlight {
            id: busy.id,
            qkey: busy.qkey.clone(),
            ambiguous: busy.ambiguous,
            deadline_ms: 0,
        };
        settle_in_flight(tx, channel, lane, &it, how.crash, now).await?;
    }
}

/// Records how an attempt ended. Returns whether the queue has more pending items (it then
/// stays claimed); otherwise it is released (retrying later) or dropped (empty).
///
/// `taken` says which attempt of each item this is: if another owner settled an item
/// meanwhile (a takeover after the deadline), nothing is written and the result is
/// `fenced`. An attempt whose tenure is over still records its items (its request went
/// out; recording it is what prevents a second send), but never keeps the queue: an
/// unclaimed queue is made due, a claimed one is left to the lane's current holder.
#[allow(clippy::too_many_arguments)]
pub async fn finish<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    qkey: &str,
    taken: &[Taken],
    fin: Finish,
    sent_at: i64,
    dur: i64,
    now: i64,
) -> Result<bool, T::Error> {
    let Some(first) = taken.first() else {
        return Ok(false);
    };
    let current = tx.holds(channel, lane, first.epoch).await?;
    tx.lock_queue(channel, lane, qkey).await?;
    for t in taken {
        if t.attempt >= 0 && !tx.still_attempting(t.id, t.attempt).await? {
            return Err(T::fenced(format!(
                "item {} was settled by another owner while its attempt was in flight",
                t.id
            )));
        }
    }
    let ids: Vec<i64> = taken.iter().map(|t| t.id).collect();
    let released = match fin {
        Finish::Done { provider_id } => {
            for &id in &ids {
                tx.set_attempt_outcome(id, "ok", None, dur, Some(sent_at))
                    .await?;
                tx.item_done(id, now).await?;
            }
            if let (Some(pid), Some(&id)) = (provider_id.as_deref(), ids.first()) {
                record_provider_id(tx, channel, id, pid, now).await?;
            }
            None
        }
        Finish::Retry {
            next_ms,
            error,
            ambiguous,
            counted,
            outcome,
            pause_lane_until,
        } => {
            for &id in &ids {
                tx.set_attempt_outcome(id, outcome, Some(&error), dur, Some(sent_at))
                    .await?;
                tx.item_retry(id, next_ms, &error, now, ambiguous, !counted)
                    .await?;
            }
            if let Some(until) = pause_lane_until {
                tx.pause_lane(channel, lane, until).await?;
            }
            Some((next_ms, current))
        }
        Finish::NotSent { next_ms } => {
            for &id in &ids {
                tx.delete_open_attempt(id).await?;
                tx.item_not_sent(id, now).await?;
            }
            Some((next_ms, current))
        }
        Finish::Dead {
            reason,
            report_failed,
            ambiguous,
        } => {
            for &id in &ids {
                tx.set_attempt_outcome(id, "dead", Some(&reason), dur, Some(sent_at))
                    .await?;
                if ambiguous {
                    tx.count_ambiguous(id).await?;
                }
                mark_dead(tx, channel, id, &reason, report_failed, now).await?;
            }
            None
        }
    };
    match released {
        Some((next_ms, true)) => tx.release_queue_at(channel, lane, qkey, next_ms).await?,
        Some((next_ms, false)) => tx.nudge_queue(channel, lane, qkey, next_ms).await?,
        None => {
            let more = tx.queue_has_pending(channel, lane, qkey).await?;
            if !more {
                tx.drop_queue(channel, lane, qkey).await?;
            } else if !current {
                tx.nudge_queue(channel, lane, qkey, now).await?;
            }
            return Ok(more && current);
        }
    }
    Ok(false)
}

/// Gives a claimed queue back.
pub async fn release<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    qkey: &str,
) -> Result<(), T::Error> {
    tx.fence(channel, lane).await?;
    tx.release_queue(channel, lane, qkey).await
}

/// Stores the provider's id of a send and applies receipts that arrived before it.
async fn record_provider_id<T: Tx>(
    tx: &mut T,
    channel: &str,
    id: i64,
    pid: &str,
    now: i64,
) -> Result<(), T::Error> {
    tx.lock_provider_id(channel, pid).await?;
    if tx.send_by_provider_id(channel, pid).await?.is_some() {
        tx.history(id, now, "duplicate provider id", Some(pid))
            .await?;
        return Ok(());
    }
    tx.set_provider_id(id, pid).await?;
    for parked in tx.parked_receipts(channel, pid).await? {
        if let (Some(v), Some(item)) = (
            status::from_code(parked.status),
            tx.send_by_provider_id(channel, pid).await?,
        ) {
            apply_status(tx, channel, item, v, parked.reason.as_deref(), now).await?;
        }
        tx.delete_parked(parked.id).await?;
    }
    Ok(())
}

/// Dead-letters an item. A send whose 200 respond.io already has is reported `failed`
/// (`report_failed`); one respond.io heard fail as our 4xx only records the status.
pub async fn mark_dead<T: Tx>(
    tx: &mut T,
    channel: &str,
    id: i64,
    reason: &str,
    report_failed: bool,
    now: i64,
) -> Result<(), T::Error> {
    let Some((kind, row)) = tx.status_row(id).await? else {
        return Ok(());
    };
    let current = row.3;
    tx.item_dead(id, reason, now).await?;
    tx.history(id, now, "dead-lettered", Some(reason)).await?;
    if kind == ItemKind::Send {
        if report_failed {
            apply_status(tx, channel, row, StatusValue::Failed, Some(reason), now).await?;
        } else if status::advance(current, StatusValue::Failed)
            == Transition::Forward(StatusValue::Failed)
        {
            // respond.io heard the failure as our 4xx answer: record it, forward nothing.
            tx.set_status(id, status::code(StatusValue::Failed), now)
                .await?;
        }
    }
    Ok(())
}

/// Dead-letters up to `limit` pending items of a lane queued before `before_ms` (their
/// `max_age_secs` is over), each with `reason` and, for a send, its `failed` status for
/// respond.io, as for any item that gave up. Run by the lane's owner while the lane sends
/// nothing (paused by a 429, or its circuit open), so the age limit holds although no
/// attempt ends. Queues are locked before their items, as lanes lock them; an item an
/// attempt took meanwhile is left to it. Returns how many expired.
pub async fn expire_aged<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    before_ms: i64,
    reason: &str,
    limit: usize,
    now: i64,
) -> Result<u64, T::Error> {
    tx.fence(channel, lane).await?;
    let aged = tx.aged_pending(channel, lane, before_ms, limit).await?;
    let queues: std::collections::BTreeSet<&str> = aged.iter().map(|a| a.1.as_str()).collect();
    for q in &queues {
        tx.lock_queue(channel, lane, q).await?;
    }
    let mut expired = 0;
    for (id, _) in &aged {
        if !tx.is_pending(*id).await? {
            continue;
        }
        mark_dead(tx, channel, *id, reason, true, now).await?;
        expired += 1;
    }
    for q in queues {
        if !tx.queue_has_pending(channel, lane, q).await? {
            tx.drop_queue(channel, lane, q).await?;
        }
    }
    Ok(expired)
}

/// Run by a lane's new owner before it claims anything: releases the lane's claims and
/// settles items left attempting, per `policy`, except those still in flight: this
/// process's live attempts, and on a shared store another node's before their deadline
/// (`take_head` settles those later, once their deadline passed without an outcome).
pub async fn recover_lane<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    policy: CrashPolicy,
    live: &LiveAttempts,
    now: i64,
) -> Result<RecoveryReport, T::Error> {
    tx.fence(channel, lane).await?;
    tx.release_claims(channel, lane).await?;
    let mut report = RecoveryReport::default();
    for it in tx.attempting_items(channel, lane).await? {
        if live.contains(it.id) || (T::SHARED && it.deadline_ms > now) {
            continue;
        }
        if settle_in_flight(tx, channel, lane, &it, policy, now).await? {
            report.resent += 1;
        } else {
            report.failed += 1;
        }
    }
    Ok(report)
}

/// Settles an item whose attempt's owner is gone (crashed, or never recorded an outcome
/// within the deadline): resent (it may have gone out: ambiguous) or failed, per policy.
/// Returns whether it is resent.
async fn settle_in_flight<T: Tx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    it: &InFlight,
    policy: CrashPolicy,
    now: i64,
) -> Result<bool, T::Error> {
    // Toward respond.io a repeat carries the same mId, so it is always resent.
    let resend = lane == Lane::RespondIo
        || (policy.on_crash == OnCrash::Resend && it.ambiguous < policy.ambiguous_retry_cap as i64);
    if resend {
        // The request left at some moment before now: logging it at now is the
        // conservative choice for the rate window this lane's limiter seeds from.
        tx.set_attempt_outcome(
            it.id,
            "ambiguous",
            Some("in flight when its owner stopped"),
            0,
            Some(now),
        )
        .await?;
        tx.item_requeue_ambiguous(it.id).await?;
        tx.history(
            it.id,
            now,
            "ambiguous",
            Some("in flight when its owner stopped; resending"),
        )
        .await?;
    } else {
        let reason = "in flight when its owner stopped; not resent (on_crash = fail, or ambiguous too often)";
        tx.set_attempt_outcome(it.id, "dead", Some(reason), 0, Some(now))
            .await?;
        // It may have gone out: a replay has to be forced.
        tx.count_ambiguous(it.id).await?;
        mark_dead(tx, channel, it.id, reason, true, now).await?;
        tx.lock_queue(channel, lane, &it.qkey).await?;
        if !tx.queue_has_pending(channel, lane, &it.qkey).await? {
            tx.drop_queue(channel, lane, &it.qkey).await?;
        }
    }
    Ok(resend)
}
