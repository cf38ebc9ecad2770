//! What the admin API reads and changes in the store, kept apart from the hot-path
//! [`Store`](super::Store) trait: lanes and webhooks never call these.
//!
//! Every change an operator makes (replay, discard, pause, resume, purge) writes its audit
//! row in the same transaction as the change itself, so the audit log cannot miss one.

use async_trait::async_trait;
use serde::Serialize;

use super::{ItemKind, Lane, Result};

/// Which messages to list. All filters are optional and combine with AND.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub channel: Option<String>,
    pub lane: Option<Lane>,
    pub state: Option<i64>,
    pub contact: Option<String>,
    pub mid: Option<String>,
    /// `None`: messages, echoes and sends (not the status events toward respond.io).
    pub kind: Option<ItemKind>,
    /// created_ms >= since_ms
    pub since_ms: Option<i64>,
    /// created_ms < until_ms
    pub until_ms: Option<i64>,
    /// Cursor: only items with a smaller id (listings are newest first).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// One item as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageRow {
    pub id: i64,
    pub channel: String,
    pub lane: i64,
    pub contact: String,
    pub kind: i64,
    pub mid: String,
    pub payload: String,
    pub state: i64,
    pub status: i64,
    pub attempts: i64,
    pub ambiguous: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub next_ms: i64,
    pub provider_id: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryRow {
    pub item_id: i64,
    pub at_ms: i64,
    pub event: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttemptRow {
    pub item_id: i64,
    pub at_ms: i64,
    pub outcome: String,
    pub detail: Option<String>,
    pub duration_ms: Option<i64>,
}

/// One HTTP exchange on a message's path, already redacted and truncated.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChannelLogRow {
    pub id: i64,
    pub channel: String,
    pub mid: Option<String>,
    pub at_ms: i64,
    pub direction: String,
    pub kind: String,
    pub method: String,
    pub url: String,
    pub status: Option<i64>,
    pub duration_ms: i64,
    pub request_headers: Option<String>,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// A message with everything that happened to it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    pub item: MessageRow,
    /// Other items with the same mId: the `message_status` events of a send.
    pub related: Vec<MessageRow>,
    pub history: Vec<HistoryRow>,
    pub attempts: Vec<AttemptRow>,
    pub channel_logs: Vec<ChannelLogRow>,
}

/// An authentic webhook we could not parse, kept raw.
#[derive(Debug, Clone, Serialize)]
pub struct RawWebhookRow {
    pub id: i64,
    pub channel: String,
    pub route: String,
    pub content_type: String,
    #[serde(skip)]
    pub body: Vec<u8>,
    pub reason: String,
    pub received_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// Moved from dead back to pending: it will be sent again.
    Replayed,
    /// Not dead (any more): nothing changed. A second replay of the same item lands here.
    NotDead,
    NotFound,
    /// A status that is no longer the message's current one: settled without sending, as
    /// sending it would move the message backwards at respond.io.
    Superseded,
    /// A send whose earlier attempt may already have reached the contact: left dead, as
    /// replaying it needs `force`.
    NeedsForce,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub id: i64,
    pub outcome: ReplayOutcome,
    pub channel: Option<String>,
    pub lane: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: Option<String>,
}

/// Requests per lane in a recent window, from the attempt log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneActivity {
    pub channel: String,
    pub lane: Lane,
    /// Requests that left (one per call, batches count once).
    pub requests: i64,
    /// Items delivered.
    pub delivered: i64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PurgeReport {
    /// Messages of the contact being attempted right now: when not 0, nothing was purged.
    pub in_flight: u64,
    pub items: u64,
    pub history: u64,
    pub attempts: u64,
    pub channel_logs: u64,
    pub dedupe_keys: u64,
    pub parked_receipts: u64,
    pub raw_webhooks: u64,
    pub contact_profiles: u64,
}

#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    /// Newest first, at most `filter.limit`.
    async fn list_messages(&self, filter: MessageFilter) -> Result<Vec<MessageRow>>;

    /// The message (not a status event) with this mId, with its history, attempts, status
    /// events and channel logs.
    async fn message_detail(&self, mid: &str) -> Result<Option<MessageDetail>>;

    /// Kept raw webhooks, newest first.
    async fn list_raw_webhooks(
        &self,
        channel: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RawWebhookRow>>;
    async fn raw_webhook(&self, id: i64) -> Result<Option<RawWebhookRow>>;

    /// Moves dead items back to pending (attempt count reset), each exactly once: only an
    /// item still dead at the moment of the write changes, so concurrent or repeated
    /// replays send it once. Audited per item replayed.
    async fn replay_items(
        &self,
        ids: Vec<i64>,
        actor: &str,
        force: bool,
    ) -> Result<Vec<ReplayResult>>;

    /// Settles dead items without sending them (state done, `last_error` says who
    /// discarded them). Returns the ids that were dead.
    async fn discard_items(&self, ids: Vec<i64>, actor: &str) -> Result<Vec<i64>>;

    /// Deletes a raw webhook (after a replay that read it, or a discard); false if gone.
    async fn delete_raw_webhook(
        &self,
        id: i64,
        actor: &str,
        action: &str,
        detail: Option<String>,
    ) -> Result<bool>;

    /// Records that a raw webhook still cannot be read.
    async fn update_raw_webhook_reason(&self, id: i64, reason: &str) -> Result<()>;

    /// Pauses a lane until `until_ms` (persisted, audited).
    async fn pause_lane(&self, channel: &str, lane: Lane, until_ms: i64, actor: &str)
    -> Result<()>;

    /// Lifts a lane's pause; queues that the pause pushed back are due at `now_ms`.
    async fn resume_lane(&self, channel: &str, lane: Lane, now_ms: i64, actor: &str) -> Result<()>;

    /// Requests and deliveries per lane since `since_ms`.
    async fn lane_activity(&self, since_ms: i64) -> Result<Vec<LaneActivity>>;

    /// Deletes everything stored about one contact of a channel. Audited with the contact
    /// id masked: the audit log must not keep what the purge removed.
    async fn purge_contact(&self, channel: &str, contact: &str, actor: &str)
    -> Result<PurgeReport>;

    /// Newest first.
    async fn list_audit(
        &self,
        actor: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>>;

    /// Appends channel log rows (ids are assigned by the store).
    async fn insert_channel_logs(&self, rows: Vec<ChannelLogRow>) -> Result<()>;

    /// Deletes up to `batch` channel log rows older than `cutoff_ms`; returns how many.
    async fn prune_channel_logs(&self, cutoff_ms: i64, batch: usize) -> Result<u64>;

    /// Channel logs of one channel without a known message, newest first (unparseable
    /// webhooks, receipts for unknown ids, rejected requests).
    async fn list_channel_logs(
        &self,
        channel: Option<String>,
        mid: Option<String>,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChannelLogRow>>;
}

/// Shows enough of a contact id to recognise it in the audit log, not enough to keep it.
pub fn mask_contact(contact: &str) -> String {
    let chars: Vec<char> = contact.chars().collect();
    if chars.len() <= 4 {
        return "***".into();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_contact_ids() {
        assert_eq!(mask_contact("+61412345678"), "+6***78");
        assert_eq!(mask_contact("abc"), "***");
    }
}
