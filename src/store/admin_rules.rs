//! What the admin API's changes write (replay, discard, pause, resume, purge), decided once
//! for both backends over the statements of an [`AdminTx`], as `store::rules` does for the
//! hot path. Every change writes its audit row in the same transaction as the change.

use std::collections::BTreeSet;

use super::admin::{PurgeReport, ReplayOutcome, ReplayResult, mask_contact};
use super::rules::Tx;
use super::{ItemKind, Lane};
use crate::respondio::wire::Event;
use crate::status;

/// A dead item a replay moved back to pending.
pub struct Revived {
    pub channel: String,
    pub lane: Lane,
    pub qkey: String,
    pub mid: String,
    pub kind: ItemKind,
}

/// A dead item, as a replay decides about it.
pub struct DeadItem {
    pub channel: String,
    pub lane: Lane,
    pub kind: ItemKind,
    pub mid: String,
    pub payload: String,
    /// Attempts that may have been acted on (the request may have gone out).
    pub ambiguous: i64,
}

/// An item of a contact, as a purge sees it.
pub struct ContactItem {
    pub id: i64,
    pub mid: String,
    pub provider_id: Option<String>,
    pub lane: Lane,
    pub qkey: String,
    pub attempting: bool,
}

/// The admin API's statements, on top of the hot path's.
#[allow(async_fn_in_trait)]
pub trait AdminTx: Tx {
    async fn audit(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> Result<(), Self::Error>;
    /// Tells every node, at commit, that a lane's pause changed (no-op on one node).
    async fn announce_pause(&mut self, channel: &str, lane: Lane) -> Result<(), Self::Error>;

    /// Moves an item from dead to pending (attempts reset) if it is still dead right now;
    /// `None` if it was not.
    async fn revive_dead(&mut self, id: i64, now: i64) -> Result<Option<Revived>, Self::Error>;
    /// A dead item, locked against a concurrent replay; `None` if it is not dead.
    async fn dead_item(&mut self, id: i64) -> Result<Option<DeadItem>, Self::Error>;
    /// The status-machine code of the send with this mId (locked as receipts lock it).
    async fn send_status(&mut self, channel: &str, mid: &str) -> Result<Option<i64>, Self::Error>;
    /// Settles a dead item as done without sending it, with `note` as its `last_error`;
    /// false if it was not dead.
    async fn supersede_dead(&mut self, id: i64, note: &str, now: i64) -> Result<bool, Self::Error>;
    /// Where an item lives, if it exists.
    async fn item_place(&mut self, id: i64) -> Result<Option<(String, Lane)>, Self::Error>;
    /// Puts a queue row back for a replayed item; an existing row keeps its schedule,
    /// class and claim.
    async fn ensure_queue(
        &mut self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        class: i64,
        now: i64,
    ) -> Result<(), Self::Error>;
    /// Settles a dead item as done, with a `last_error` saying who discarded it; `None` if
    /// it was not dead. Returns (channel, mId).
    async fn discard_dead(
        &mut self,
        id: i64,
        actor: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, Self::Error>;

    /// Deletes a kept raw webhook; its channel, or `None` if it was gone.
    async fn delete_raw_webhook(&mut self, id: i64) -> Result<Option<String>, Self::Error>;

    async fn set_pause(
        &mut self,
        channel: &str,
        lane: Lane,
        until_ms: i64,
    ) -> Result<(), Self::Error>;
    /// The lane's pause (0: none), locked against a concurrent pause.
    async fn pause_of(&mut self, channel: &str, lane: Lane) -> Result<i64, Self::Error>;
    /// Queues due exactly at `was_ms` (those a pause handed back) become due at `now`.
    async fn requeue_paused(
        &mut self,
        channel: &str,
        lane: Lane,
        was_ms: i64,
        now: i64,
    ) -> Result<(), Self::Error>;

    /// Locks the queue rows of a contact's items (before the items: the order lanes lock
    /// them in).
    async fn lock_contact_queues(
        &mut self,
        channel: &str,
        contact: &str,
    ) -> Result<(), Self::Error>;
    /// A contact's items, locked.
    async fn contact_items(
        &mut self,
        channel: &str,
        contact: &str,
    ) -> Result<Vec<ContactItem>, Self::Error>;
    /// Deletes items with their history and attempts: (items, history, attempts) deleted.
    async fn delete_items(&mut self, ids: &[i64]) -> Result<(u64, u64, u64), Self::Error>;
    /// Deletes the dedupe keys and parked receipts of a provider id: (keys, receipts).
    async fn delete_provider_id_traces(
        &mut self,
        channel: &str,
        pid: &str,
    ) -> Result<(u64, u64), Self::Error>;
    /// Deletes the channel logs of these mIds, and those tied to no message whose body or
    /// URL contains the contact id.
    async fn delete_contact_logs(
        &mut self,
        channel: &str,
        mids: &[String],
        contact: &str,
    ) -> Result<u64, Self::Error>;
    async fn delete_contact_profile(
        &mut self,
        channel: &str,
        contact: &str,
    ) -> Result<u64, Self::Error>;
    /// The channel's kept raw webhooks (they are few): (id, body).
    async fn raw_webhook_bodies(
        &mut self,
        channel: &str,
    ) -> Result<Vec<(i64, Vec<u8>)>, Self::Error>;
}

/// Moves dead items back to pending, each exactly once: only an item still dead at the
/// moment of the write changes, so concurrent or repeated replays send it once. Its age
/// (`max_age_secs`) starts again.
///
/// What a replay never does:
/// - move a message backwards at respond.io: a dead `message_status` whose value is no
///   longer the message's current status (a later one went out since, or the message
///   failed) is settled as superseded instead, with a note, a history row and an audit
///   row; only the current status is sent again;
/// - re-send a send toward the provider that may already have reached the contact (an
///   ambiguous attempt: the request left and no answer came back) unless `force` says
///   so; without it the item stays dead and the result says `NeedsForce`. A forced
///   replay's audit row says so.
///
/// A replayed send keeps its status: respond.io was told `failed` (or heard our 4xx), and
/// `failed` is terminal in the status machine, so nothing it learns from the replay's
/// receipts is forwarded (they are recorded in the message's history).
pub async fn replay_items<T: AdminTx>(
    tx: &mut T,
    ids: Vec<i64>,
    actor: &str,
    force: bool,
    now: i64,
) -> Result<Vec<ReplayResult>, T::Error> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let result = |outcome, d: &DeadItem| ReplayResult {
            id,
            outcome,
            channel: Some(d.channel.clone()),
            lane: Some(d.lane.code()),
        };
        let Some(dead) = tx.dead_item(id).await? else {
            let place = tx.item_place(id).await?;
            out.push(ReplayResult {
                id,
                outcome: match place {
                    Some(_) => ReplayOutcome::NotDead,
                    None => ReplayOutcome::NotFound,
                },
                lane: place.as_ref().map(|p| p.1.code()),
                channel: place.map(|p| p.0),
            });
            continue;
        };
        let target = format!("item {id} ({} {})", dead.channel, dead.mid);
        if dead.lane == Lane::Provider && dead.ambiguous > 0 && !force {
            out.push(result(ReplayOutcome::NeedsForce, &dead));
            continue;
        }
        if dead.kind == ItemKind::Status
            && let Some(why) = superseded(tx, &dead).await?
        {
            if tx.supersede_dead(id, &why, now).await? {
                tx.history(
                    id,
                    now,
                    "replay superseded",
                    Some(&format!("by {actor}: {why}")),
                )
                .await?;
                tx.audit(actor, "replay", &target, Some(&why)).await?;
            }
            out.push(result(ReplayOutcome::Superseded, &dead));
            continue;
        }
        let Some(item) = tx.revive_dead(id, now).await? else {
            out.push(result(ReplayOutcome::NotDead, &dead));
            continue;
        };
        // Back into its contact's FIFO. A replayed send toward the provider goes with bulk
        // (class 1), a contact's events first (class 0), as when they were accepted.
        let class = match item.kind {
            ItemKind::Status | ItemKind::Send => 1,
            ItemKind::Message | ItemKind::Echo => 0,
        };
        tx.ensure_queue(&item.channel, item.lane, &item.qkey, class, now)
            .await?;
        let forced = (dead.lane == Lane::Provider && dead.ambiguous > 0).then(|| {
            format!(
                "forced: {} earlier attempt(s) may already have reached the contact",
                dead.ambiguous
            )
        });
        let by = match &forced {
            Some(f) => format!("by {actor} ({f})"),
            None => format!("by {actor}"),
        };
        tx.history(id, now, "replayed", Some(&by)).await?;
        tx.audit(actor, "replay", &target, forced.as_deref())
            .await?;
        // The lane's owner may be another node: tell it at commit.
        tx.announce(&item.channel, item.lane).await?;
        out.push(ReplayResult {
            id,
            outcome: ReplayOutcome::Replayed,
            channel: Some(item.channel),
            lane: Some(item.lane.code()),
        });
    }
    Ok(out)
}

/// Why a dead `message_status` must not be sent again, if so: its value is not the
/// message's current status (sending it would move the message backwards at respond.io).
async fn superseded<T: AdminTx>(tx: &mut T, dead: &DeadItem) -> Result<Option<String>, T::Error> {
    let value = serde_json::from_str::<Event>(&dead.payload)
        .ok()
        .and_then(|e| e.status)
        .map(|s| s.value);
    let (Some(value), Some(current)) = (value, tx.send_status(&dead.channel, &dead.mid).await?)
    else {
        return Ok(None);
    };
    if status::code(value) == current {
        return Ok(None);
    }
    let now_is = status::from_code(current).map_or("none", |v| v.as_str());
    Ok(Some(format!(
        "superseded: the message is {now_is} now; a replayed {} would move it backwards at respond.io",
        value.as_str()
    )))
}

/// Settles dead items without sending them; returns the ids that were dead.
pub async fn discard_items<T: AdminTx>(
    tx: &mut T,
    ids: Vec<i64>,
    actor: &str,
    now: i64,
) -> Result<Vec<i64>, T::Error> {
    let mut out = Vec::new();
    for id in ids {
        let Some((channel, mid)) = tx.discard_dead(id, actor, now).await? else {
            continue;
        };
        tx.history(id, now, "discarded", Some(&format!("by {actor}")))
            .await?;
        tx.audit(
            actor,
            "discard",
            &format!("item {id} ({channel} {mid})"),
            None,
        )
        .await?;
        out.push(id);
    }
    Ok(out)
}

/// Deletes a raw webhook (after a replay read it, or a discard); false if it was gone.
pub async fn delete_raw_webhook<T: AdminTx>(
    tx: &mut T,
    id: i64,
    actor: &str,
    action: &str,
    detail: Option<&str>,
) -> Result<bool, T::Error> {
    let Some(channel) = tx.delete_raw_webhook(id).await? else {
        return Ok(false);
    };
    tx.audit(
        actor,
        action,
        &format!("raw webhook {id} ({channel})"),
        detail,
    )
    .await?;
    Ok(true)
}

/// An operator's pause, persisted and audited.
pub async fn pause_lane<T: AdminTx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    until_ms: i64,
    actor: &str,
) -> Result<(), T::Error> {
    tx.set_pause(channel, lane, until_ms).await?;
    let target = format!("{channel} {}", lane.name());
    tx.audit(
        actor,
        "pause",
        &target,
        Some(&format!("until_ms {until_ms}")),
    )
    .await?;
    tx.announce_pause(channel, lane).await
}

/// Lifts a lane's pause; queues the pause pushed back are due at `now`.
pub async fn resume_lane<T: AdminTx>(
    tx: &mut T,
    channel: &str,
    lane: Lane,
    now: i64,
    actor: &str,
) -> Result<(), T::Error> {
    let until = tx.pause_of(channel, lane).await?;
    tx.set_pause(channel, lane, 0).await?;
    // Attempts the pause stopped handed their queue back due at the pause's end: exactly
    // those become due now (backoffs of other contacts keep their time).
    if until > now {
        tx.requeue_paused(channel, lane, until, now).await?;
    }
    let target = format!("{channel} {}", lane.name());
    tx.audit(actor, "resume", &target, None).await?;
    tx.announce(channel, lane).await?;
    tx.announce_pause(channel, lane).await
}

/// Deletes everything stored about one contact of a channel, unless one of its items is
/// being attempted right now (its outcome would be recorded against rows that are gone:
/// the report then says how many, and nothing changed). Audited with the contact masked.
pub async fn purge_contact<T: AdminTx>(
    tx: &mut T,
    channel: &str,
    contact: &str,
    actor: &str,
) -> Result<PurgeReport, T::Error> {
    tx.lock_contact_queues(channel, contact).await?;
    let items = tx.contact_items(channel, contact).await?;
    let mut report = PurgeReport {
        in_flight: items.iter().filter(|i| i.attempting).count() as u64,
        ..Default::default()
    };
    if report.in_flight > 0 {
        return Ok(report);
    }
    let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    (report.items, report.history, report.attempts) = tx.delete_items(&ids).await?;
    // Dedupe keys hold no contact id: they are found through the provider ids (an inbound
    // key is the provider's id, a receipt key starts with it).
    let pids: BTreeSet<&str> = items
        .iter()
        .filter_map(|i| i.provider_id.as_deref())
        .collect();
    for pid in pids {
        let (keys, parked) = tx.delete_provider_id_traces(channel, pid).await?;
        report.dedupe_keys += keys;
        report.parked_receipts += parked;
    }
    let mids: Vec<String> = items
        .iter()
        .map(|i| i.mid.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    report.channel_logs = tx.delete_contact_logs(channel, &mids, contact).await?;
    let queues: BTreeSet<(Lane, &str)> = items.iter().map(|i| (i.lane, i.qkey.as_str())).collect();
    for (lane, qkey) in queues {
        if !tx.queue_has_pending(channel, lane, qkey).await? {
            tx.drop_queue(channel, lane, qkey).await?;
        }
    }
    report.contact_profiles = tx.delete_contact_profile(channel, contact).await?;
    // Raw webhooks are few: scan the channel's bodies for the contact id.
    let needles = crate::channel_log::redact::contact_forms(contact);
    for (id, body) in tx.raw_webhook_bodies(channel).await? {
        let text = String::from_utf8_lossy(&body);
        if needles.iter().any(|n| text.contains(n.as_str())) {
            report.raw_webhooks += tx.delete_raw_webhook(id).await?.is_some() as u64;
        }
    }
    let detail = serde_json::to_string(&report).ok();
    let target = format!("{channel} contact {}", mask_contact(contact));
    tx.audit(actor, "purge", &target, detail.as_deref()).await?;
    Ok(report)
}
