//! The durable store: one trait, implemented by SQLite (the embedded default) and by
//! PostgreSQL (several nodes sharing one database).
//!
//! Every method that returns `Ok` has committed its writes to disk: the HTTP layer answers
//! 2xx only after that. Lanes read and update items through the same trait.
//!
//! Lanes are owned through leases: a node works a lane (claims, attempts, outcomes) only
//! while it holds the lane's lease, and those writes are fenced by the lease's epoch. The
//! SQLite store is one node: it grants every lease at once and for good.

pub mod activity;
pub mod admin;
pub mod admin_rules;
pub mod aged;
pub mod backup;
pub mod postgres;
pub mod rules;
pub mod schema;
pub mod sqlite;

use async_trait::async_trait;

use crate::config::OnCrash;
use crate::respondio::wire::StatusValue;

/// A channel has two lanes: toward respond.io and toward the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    RespondIo,
    Provider,
}

impl Lane {
    pub fn code(self) -> i64 {
        match self {
            Lane::RespondIo => 0,
            Lane::Provider => 1,
        }
    }
    pub fn from_code(c: i64) -> Lane {
        if c == 0 {
            Lane::RespondIo
        } else {
            Lane::Provider
        }
    }
    /// The name used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Lane::RespondIo => "to_respondio",
            Lane::Provider => "to_provider",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Message = 0,
    Echo = 1,
    Status = 2,
    Send = 3,
}

impl ItemKind {
    pub fn from_code(c: i64) -> ItemKind {
        match c {
            0 => ItemKind::Message,
            1 => ItemKind::Echo,
            2 => ItemKind::Status,
            _ => ItemKind::Send,
        }
    }
}

pub const STATE_PENDING: i64 = 0;
pub const STATE_ATTEMPTING: i64 = 1;
pub const STATE_DONE: i64 = 2;
pub const STATE_DEAD: i64 = 3;

/// The FIFO of a contact's messages toward respond.io.
pub fn message_qkey(contact: &str) -> String {
    format!("c:{contact}")
}
/// Statuses of one mId collapse into one queue: only the latest pending one is sent.
pub fn status_qkey(mid: &str) -> String {
    format!("s:{mid}")
}

#[derive(Debug, Clone)]
pub struct NewInbound {
    pub dedupe_key: String,
    pub contact: String,
    pub kind: ItemKind,
    pub mid: String,
    /// The respond.io event, serialised.
    pub event_json: String,
    pub contact_json: Option<String>,
    pub provider_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestResult {
    Stored { item_id: i64 },
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub mid: String,
    pub contact: String,
    /// The respond.io `message` object, serialised.
    pub message_json: String,
}

/// A committed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedSend {
    pub item_id: i64,
    /// The contact wrote in recently: the send goes ahead of bulk.
    pub conversation: bool,
}

#[derive(Debug, Clone)]
pub struct ReceiptIn {
    pub dedupe_key: String,
    pub provider_id: String,
    pub status: Option<StatusValue>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReceiptResult {
    /// The status moved forward and a `message_status` event was queued.
    Forwarded {
        mid: String,
        contact: String,
        status: StatusValue,
    },
    /// Known message, nothing to forward (informational, or not newer).
    Ignored {
        mid: String,
        why: String,
    },
    /// No send with that provider id yet: parked until one records it.
    Parked,
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: i64,
    pub channel: String,
    pub lane: Lane,
    pub qkey: String,
    pub contact: String,
    pub kind: ItemKind,
    pub mid: String,
    pub payload: String,
    pub contact_json: Option<String>,
    pub state: i64,
    pub attempts: i64,
    pub ambiguous: i64,
    pub created_ms: i64,
    /// When it was last queued (accepted, or replayed): its age for `max_age_secs`.
    pub queued_ms: i64,
    pub provider_id: Option<String>,
    pub status: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ClaimBatch {
    /// (qkey, class), class 0 first.
    pub claimed: Vec<(String, u8)>,
    /// When the earliest unclaimed queue that is not due yet becomes due.
    pub next_due_ms: Option<i64>,
}

/// How an attempt ended, for the items it carried.
#[derive(Debug, Clone)]
pub enum Finish {
    Done {
        provider_id: Option<String>,
    },
    /// Try again at `next_ms`. `ambiguous`: the attempt may have been acted on.
    /// `counted`: whether it uses up one of `max_attempts` (throttles and channel faults don't).
    Retry {
        next_ms: i64,
        error: String,
        ambiguous: bool,
        counted: bool,
        outcome: &'static str,
        /// A 429: the whole lane is paused until then, committed with this outcome.
        pause_lane_until: Option<i64>,
    },
    /// The attempt was dispatched but never sent (the lane paused meanwhile): undo the
    /// attempting mark and its log row, hand the queue back due at `next_ms`.
    NotSent {
        next_ms: i64,
    },
    /// Dead-lettered. `report_failed`: queue a `message_status` failed to respond.io
    /// (a send whose 200 respond.io already has).
    Dead {
        reason: String,
        report_failed: bool,
        /// This last attempt may have been acted on (no answer came back): counted, so a
        /// replay knows the item may already have reached its receiver.
        ambiguous: bool,
    },
}

/// One item of an attempt this process has in flight: taken in tenure `epoch` of its lane,
/// as its `attempt`-th attempt. Its outcome may only be recorded while the item is still
/// attempting as that attempt: once another owner settled it, the late outcome is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub id: i64,
    pub attempt: i64,
    pub epoch: i64,
}

/// The attempts this process has in flight, by item id. An item in here is never settled
/// by anyone else in this process (a reload's new lanes, a re-acquired lease): its own
/// attempt records its outcome, however long the store takes to accept it. Shared by all
/// lane generations through the store instance.
#[derive(Debug, Default)]
pub struct LiveAttempts(std::sync::Mutex<std::collections::HashMap<i64, Taken>>);

impl LiveAttempts {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, Taken>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// `items` (as `take_head` returned them) are attempted from now on, in tenure `epoch`.
    pub fn register(&self, items: &[Item], epoch: i64) {
        let mut m = self.map();
        for it in items {
            let taken = Taken {
                id: it.id,
                attempt: it.attempts + 1,
                epoch,
            };
            m.insert(it.id, taken);
        }
    }
    pub fn remove(&self, ids: &[i64]) {
        let mut m = self.map();
        for id in ids {
            m.remove(id);
        }
    }
    pub fn get(&self, id: i64) -> Option<Taken> {
        self.map().get(&id).copied()
    }
    pub fn contains(&self, id: i64) -> bool {
        self.map().contains_key(&id)
    }
    pub fn len(&self) -> usize {
        self.map().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The attempts of `ids` as this process registered them. An id not registered (an item
/// that was not taken through `take_head`) counts as the current tenure's, unchecked.
pub(crate) fn taken_of(live: &LiveAttempts, ids: &[i64], current_epoch: i64) -> Vec<Taken> {
    ids.iter()
        .map(|&id| {
            live.get(id).unwrap_or(Taken {
                id,
                attempt: -1,
                epoch: current_epoch,
            })
        })
        .collect()
}

/// How a lane's attempt takes the head of its queue.
#[derive(Debug, Clone, Copy)]
pub struct TakeHead {
    /// At most this many items (a batch toward respond.io).
    pub limit: usize,
    /// Logged provisionally at this time (the slot's time replaces it).
    pub at_ms: i64,
    /// If no outcome is recorded by then, the attempt may be settled as ambiguous by
    /// another node (it must have given up on its request by then).
    pub deadline_ms: i64,
    /// The tenure of the lane the attempt was dispatched in.
    pub epoch: i64,
    /// How a head item left attempting by a dead owner is settled.
    pub crash: CrashPolicy,
}

/// What `take_head` found.
#[derive(Debug, Clone)]
pub enum Head {
    /// The items, marked attempting (as they were before the mark: `attempts` counts
    /// earlier attempts).
    Taken(Vec<Item>),
    /// Nothing left: the queue row is gone.
    Empty,
    /// The head is still being attempted (by this process's earlier lane generation, or
    /// by another node until its deadline): the queue was handed back, due at `until_ms`.
    InFlight { until_ms: i64 },
}

impl Head {
    /// The items taken (none when empty or in flight).
    pub fn items(self) -> Vec<Item> {
        match self {
            Head::Taken(items) => items,
            _ => Vec::new(),
        }
    }
}

/// What a channel does with sends a crash left in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPolicy {
    pub on_crash: OnCrash,
    /// A send already this often ambiguous is failed rather than resent again (a crash
    /// loop must not resend one message forever).
    pub ambiguous_retry_cap: u32,
}

impl Default for CrashPolicy {
    fn default() -> Self {
        CrashPolicy {
            on_crash: OnCrash::Resend,
            ambiguous_retry_cap: 3,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub resent: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneStats {
    pub channel: String,
    pub lane: Lane,
    pub pending: i64,
    pub oldest_pending_ms: Option<i64>,
    pub dead: i64,
}

/// Rows one prune batch deletes at most from each table: each table's batch is one short
/// write of its own (one statement on an index), so commits queued behind it never wait
/// long, however large the backlog of old rows.
pub const PRUNE_BATCH: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub items: u64,
    pub dedupe: u64,
    pub parked: u64,
    pub attempts: u64,
    pub history: u64,
    /// No table had more old rows than its batch took (set by [`prune`]; a single
    /// [`Store::prune_batch`] says whether any table filled its batch).
    pub caught_up: bool,
}

impl PruneReport {
    pub fn rows(&self) -> u64 {
        self.items + self.dedupe + self.parked + self.attempts + self.history
    }

    fn add(&mut self, o: &PruneReport) {
        self.items += o.items;
        self.dedupe += o.dedupe;
        self.parked += o.parked;
        self.attempts += o.attempts;
        self.history += o.history;
    }
}

/// One prune cycle: batches of [`PRUNE_BATCH`] rows per table, each its own short write,
/// until every table is caught up or `budget` is spent (then `caught_up` is false and the
/// caller comes back soon). So retention keeps up with any sustained ingest the store can
/// take, instead of a fixed number of rows per cycle, and never holds the writer long.
pub async fn prune(
    store: &dyn Store,
    now_ms: i64,
    retention_ms: i64,
    budget: std::time::Duration,
) -> Result<PruneReport> {
    let started = std::time::Instant::now();
    let mut total = PruneReport::default();
    loop {
        let batch = store.prune_batch(now_ms, retention_ms, PRUNE_BATCH).await?;
        total.add(&batch);
        if batch.caught_up {
            total.caught_up = true;
            return Ok(total);
        }
        if started.elapsed() >= budget {
            return Ok(total);
        }
        // Let the lanes' work in between the batches.
        tokio::task::yield_now().await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write belongs to a tenure on the lane that is over (the lease expired, another
    /// node took the lane over), or to an attempt another owner already settled: it was
    /// refused and nothing changed.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Too many requests are waiting for the store already: this one was refused before
    /// it was queued, and nothing changed. The caller answers 503 with `Retry-After`.
    #[error("store overloaded: {0}")]
    Overloaded(String),
}

/// Who is asking for a write, for admission to the store's bounded queue (see
/// [`Admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A provider webhook (or a replay of one): refused first under load, since providers
    /// retry.
    Webhook,
    /// respond.io's `/message`: refused only when the whole queue is full.
    Message,
    /// The lanes, recovery, readiness, pruning, the admin surface: never refused (their
    /// number is bounded by the lanes and tasks that issue them, one at a time each).
    Internal,
}

/// The bound on requests waiting for the store: the SQLite writer's job queue, or the
/// PostgreSQL requests holding or waiting for a pool connection. Webhooks are admitted
/// while fewer than `webhook_max` requests wait, `/message` while fewer than `max`;
/// internal jobs always, but they count in [`Admission::depth`].
#[derive(Debug)]
pub struct Admission {
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Jobs by class (webhook, message, internal), for the gauge.
    by_class: std::sync::Arc<[std::sync::atomic::AtomicUsize; 3]>,
    max: usize,
    webhook_max: usize,
}

/// Jobs waiting for the store or running in it, by [`Class`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub webhook: usize,
    pub message: usize,
    pub internal: usize,
}

/// A place in the queue: given back when dropped (the job ran, or was abandoned).
#[derive(Debug)]
pub struct Ticket {
    request: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    by_class: std::sync::Arc<[std::sync::atomic::AtomicUsize; 3]>,
    class: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::AcqRel;
        if let Some(r) = &self.request {
            r.fetch_sub(1, AcqRel);
        }
        self.by_class[self.class].fetch_sub(1, AcqRel);
    }
}

impl Admission {
    pub fn new(max: usize, webhook_max: usize) -> Admission {
        let max = max.max(1);
        Admission {
            requests: Default::default(),
            by_class: Default::default(),
            max,
            webhook_max: webhook_max.clamp(1, max),
        }
    }

    pub fn from_config(cfg: &crate::config::StoreConfig) -> Admission {
        Admission::new(cfg.queue_max, cfg.webhook_queue_max)
    }

    /// A place for a job of `class`, or `Overloaded` when its share of the queue is full.
    pub fn admit(&self, class: Class) -> Result<Ticket> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let (limit, idx) = match class {
            Class::Webhook => (self.webhook_max, 0),
            Class::Message => (self.max, 1),
            Class::Internal => (usize::MAX, 2),
        };
        let request = if class == Class::Internal {
            None
        } else {
            self.requests
                .fetch_update(AcqRel, Acquire, |n| (n < limit).then_some(n + 1))
                .map_err(|n| {
                    StoreError::Overloaded(format!(
                        "{n} requests are waiting for the store (limit {limit} for {class:?})"
                    ))
                })?;
            Some(self.requests.clone())
        };
        self.by_class[idx].fetch_add(1, AcqRel);
        Ok(Ticket {
            request,
            by_class: self.by_class.clone(),
            class: idx,
        })
    }

    /// Jobs queued or running now, by class.
    pub fn depth(&self) -> QueueDepth {
        let get = |i: usize| self.by_class[i].load(std::sync::atomic::Ordering::Acquire);
        QueueDepth {
            webhook: get(0),
            message: get(1),
            internal: get(2),
        }
    }
}

/// A node's hold on one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Grows with every acquisition of the lane, by any node.
    pub epoch: i64,
    /// How long the lease lasts from the moment it was requested unless renewed; `None`:
    /// until released (a single-node store).
    pub ttl_ms: Option<u64>,
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Dedupes and commits inbound events, in order. A contact who writes in has their
    /// outbound queue promoted to the conversation class.
    async fn ingest_inbound(
        &self,
        channel: &str,
        items: Vec<NewInbound>,
    ) -> Result<Vec<IngestResult>>;

    /// Keeps an authentic webhook we could not parse, dead-lettered with the reason.
    async fn store_unparseable(
        &self,
        channel: &str,
        route: &str,
        content_type: &str,
        body: Vec<u8>,
        reason: &str,
    ) -> Result<i64>;

    /// Commits a send from respond.io; its class is conversation if the contact wrote in
    /// within `conversation_window_ms`, else bulk.
    async fn accept_outbound(
        &self,
        channel: &str,
        item: NewOutbound,
        conversation_window_ms: i64,
    ) -> Result<AcceptedSend>;

    /// Applies delivery receipts through the status machine; parks unknown provider ids.
    async fn apply_receipts(
        &self,
        channel: &str,
        receipts: Vec<ReceiptIn>,
    ) -> Result<Vec<ReceiptResult>>;

    /// Claims due, unclaimed queues of a lane: up to `limits[c]` of class `c`.
    async fn claim(
        &self,
        channel: &str,
        lane: Lane,
        now_ms: i64,
        limits: [usize; 2],
    ) -> Result<ClaimBatch>;

    /// The first pending items of a queue (at most `limit`). Drops the queue row when it
    /// has none left.
    async fn head_items(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
    ) -> Result<Vec<Item>>;

    /// The first pending items of a claimed queue, marked attempting and logged
    /// (provisionally at `how.at_ms`) in one commit, before the request leaves; the items
    /// stay this process's live attempt until `finish` records them. A crash leaves the
    /// mark: the item is then settled by the crash policy (at the next start on SQLite;
    /// after its deadline by whichever node owns the lane on PostgreSQL). Fenced when the
    /// attempt's tenure is over.
    async fn take_head(&self, channel: &str, lane: Lane, qkey: &str, how: TakeHead)
    -> Result<Head>;

    /// Records how an attempt ended and when its request really left (`sent_at_ms`, the
    /// rate-limiter slot). Returns whether the queue has more pending items (it then stays
    /// claimed); otherwise the queue is released or removed. An attempt whose tenure is
    /// over still records its items, and hands the queue to whoever owns the lane now
    /// (never keeps it). `Fenced` when another owner already settled the items.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        channel: &str,
        lane: Lane,
        qkey: &str,
        ids: &[i64],
        fin: Finish,
        sent_at_ms: i64,
        duration_ms: i64,
    ) -> Result<bool>;

    /// Gives a claimed queue back (shutdown, or a lane that stops holding it).
    async fn release(&self, channel: &str, lane: Lane, qkey: &str) -> Result<()>;

    /// Dead-letters up to `limit` pending items of a lane queued before `before_ms`, with
    /// `reason` (a send's `failed` status goes to respond.io): the age limit of a lane that
    /// sends nothing (paused, circuit open). Returns how many expired.
    async fn expire_aged(
        &self,
        channel: &str,
        lane: Lane,
        before_ms: i64,
        reason: &str,
        limit: usize,
    ) -> Result<u64>;

    /// At start-up: releases every claim and settles items a crash left attempting, per
    /// channel policy (channels not in the map resend).
    async fn recover(
        &self,
        policy: &std::collections::HashMap<String, CrashPolicy>,
    ) -> Result<RecoveryReport>;

    /// The newest `n` attempt times of a lane, newest first (seeds the rate limiter).
    async fn recent_attempts(&self, channel: &str, lane: Lane, n: usize) -> Result<Vec<i64>>;

    async fn set_paused_until(&self, channel: &str, lane: Lane, until_ms: i64) -> Result<()>;
    async fn paused_until(&self, channel: &str, lane: Lane) -> Result<i64>;

    async fn lane_stats(&self) -> Result<Vec<LaneStats>>;

    /// A tiny committed write: readiness means the store accepts writes.
    async fn probe_write(&self) -> Result<()>;

    /// A small fact the gateway keeps across restarts (e.g. which token of a rotation
    /// respond.io accepts, as a fingerprint). Never a secret itself.
    async fn note(&self, key: &str) -> Result<Option<String>>;
    async fn set_note(&self, key: &str, value: &str) -> Result<()>;

    /// One batch of [`prune`]: deletes up to `batch` rows of each table (finished items
    /// settled before `now_ms - retention_ms`, expired dedupe keys and parked receipts, older
    /// attempts and history), each table in a short write of its own, driven by an index on
    /// the time it is pruned by. `caught_up`: no table filled its batch.
    async fn prune_batch(
        &self,
        now_ms: i64,
        retention_ms: i64,
        batch: usize,
    ) -> Result<PruneReport>;

    async fn item_by_mid(&self, channel: &str, mid: &str) -> Result<Option<Item>>;

    /// Takes a lane for this node if nobody holds it or the holder's lease expired.
    /// From then on this store instance's `claim`, `take_head`, `finish` and `release` on
    /// the lane are fenced by the new epoch, checked in the same transaction as the write.
    /// `None`: another node holds it.
    async fn acquire_lane(&self, channel: &str, lane: Lane) -> Result<Option<LeaseGrant>>;

    /// Extends this node's lease on a lane by its TTL from now; `false` when the lease was
    /// lost (expired, or taken over): the lane must stop and be acquired afresh.
    async fn renew_lane(&self, channel: &str, lane: Lane) -> Result<bool>;

    /// Gives a held lane up (shutdown), so another node takes it over without waiting for
    /// the lease to expire.
    async fn release_lane(&self, channel: &str, lane: Lane) -> Result<()>;

    /// Run by a lane's new owner before it claims anything: releases the lane's queue
    /// claims and settles items the previous owner left attempting, per `policy`.
    async fn recover_lane(
        &self,
        channel: &str,
        lane: Lane,
        policy: CrashPolicy,
    ) -> Result<RecoveryReport>;

    /// This process's attempts in flight on this store.
    fn live(&self) -> &LiveAttempts;

    /// How many attempts this process has in flight on this store (a stop waits for them).
    fn live_attempts(&self) -> usize {
        self.live().len()
    }

    /// An attempt that will never record its outcome (it panicked): its items stop being
    /// this process's live attempts, so the next take settles them as after a crash (the
    /// `on_crash` policy, marked ambiguous) instead of waiting for them for good.
    fn abandon_live(&self, ids: &[i64]) {
        self.live().remove(ids);
    }

    /// Jobs waiting for the store or running in it now (`rio_store_queue_depth`).
    fn queue_depth(&self) -> QueueDepth {
        QueueDepth::default()
    }

    /// The epoch of this store instance's current tenure on a lane (0: never acquired).
    fn lane_epoch(&self, channel: &str, lane: Lane) -> i64;

    /// Other nodes may commit work for lanes this node owns: the store then tells about it
    /// through this channel (`(channel, lane)`). `None` for a single-node store.
    fn work_signals(&self) -> Option<tokio::sync::broadcast::Receiver<(String, Lane)>> {
        None
    }

    /// An operator paused or resumed a lane on another node: the lane's owner re-reads the
    /// pause from the store. `None` for a single-node store.
    fn pause_signals(&self) -> Option<tokio::sync::broadcast::Receiver<(String, Lane)>> {
        None
    }
}
