//! Lanes: each channel has one toward respond.io and one toward the provider.
//!
//! A lane schedules queues (one per contact, or per mId for statuses), not messages: it
//! claims due queues from the store into a small in-memory ready list, two classes deep
//! (conversations/messages first, bulk/statuses after, with a minimum share for the
//! second), and runs one attempt per queue at a time, many queues in parallel. Every
//! attempt takes a slot from the lane's sliding-window rate limiter first, retries and
//! throttled ones included. The queue of a contact is held until its head item is
//! delivered or dead-lettered, so order per contact holds; a backoff hands the queue back
//! to the store with its due time, so it blocks only that contact.

pub mod deliver;
pub mod gate;
pub mod lease;
pub mod limiter;
pub mod retry;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::{mono_ms, mono_to_wall, now_ms, steady_wall_ms, wall_to_mono};
use crate::config::DeliveryConfig;
use crate::providers::SendError;
use crate::store::{CrashPolicy, Finish, Head, Item, Lane, Store, StoreError, TakeHead};
use deliver::Deliverer;
use limiter::{AdaptiveGuard, SlidingWindow};

/// What `/message` learns from the first attempt of its send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstOutcome {
    Accepted,
    Rejected(String),
    /// Retrying (or paused): respond.io gets 200 now and a `failed` status if it dies.
    Pending,
}

/// `/message` handlers waiting for their send's first outcome, by mId. A handler registers
/// before it commits, so the lane can never finish a first attempt unheard.
#[derive(Default)]
pub struct Waiters(Mutex<HashMap<String, oneshot::Sender<FirstOutcome>>>);

impl Waiters {
    pub fn register(&self, mid: &str) -> oneshot::Receiver<FirstOutcome> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mid.to_string(), tx);
        rx
    }
    /// Hands the outcome to a waiting handler; false when nobody was listening any more.
    pub fn resolve(&self, mid: &str, outcome: FirstOutcome) -> bool {
        let tx = self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(mid);
        tx.is_some_and(|tx| tx.send(outcome).is_ok())
    }
    pub fn forget(&self, mid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(mid);
    }
}

/// Everything a lane needs; shared with the HTTP handlers that feed it and with its
/// attempts in flight.
pub struct LaneCtx {
    pub channel: String,
    pub lane: Lane,
    pub store: Arc<dyn Store>,
    pub deliverer: Arc<dyn Deliverer>,
    pub policy: DeliveryConfig,
    pub rate_limit: u32,
    pub waiters: Arc<Waiters>,
    dirty: AtomicBool,
    notify: Notify,
    running: AtomicBool,
    /// The lane's rate limiter and its learnt guard, on the monotonic clock (`mono_ms`).
    /// Attempts take their slot right before the request leaves, so nothing (no fsync)
    /// sits between the slot's time and the wire; a request that has to wait for a new
    /// connection has its slot placed when it leaves (see `gate`).
    limiter: Mutex<(SlidingWindow, AdaptiveGuard)>,
    /// Attempts dispatched that have not taken their slot yet.
    reserved: AtomicUsize,
    /// A 429 (or operator's) pause as a deadline on the monotonic clock, checked again by
    /// each attempt right before it sends.
    pause_mono: AtomicI64,
    /// The same pause as stored (wall-clock epoch ms), for the admin API and for telling a
    /// pause stored by another node from the one already applied.
    pause_wall: AtomicI64,
    /// The circuit is open: only the probe may send.
    circuit_open: AtomicBool,
    /// The respond.io lane of the same channel, woken when a send queues a status.
    status_lane: OnceLock<Weak<LaneCtx>>,
    /// About how many items wait in this lane (counted from the store at start, then kept
    /// up by whoever adds or settles items). Tells `/message` when the lane is busy.
    backlog: AtomicI64,
    /// Where attempts record their HTTP exchanges (unset: not recorded).
    channel_log: OnceLock<crate::channel_log::ChannelLog>,
    /// This node may send on the lane until then (`lease::mono_ms`); 0 while it does not
    /// own the lane. Checked right before every request leaves.
    lease_until: AtomicI64,
    /// Counts the lane's tenures on this node: an attempt dispatched in an earlier tenure
    /// never sends in a later one.
    tenure: AtomicU64,
    /// The store's epoch of the current tenure: the attempts dispatched in it take their
    /// items under it, so the store tells their late outcomes from the current tenure's.
    epoch: AtomicI64,
    /// Another node owns the lane; this one stands by to take it over.
    standby: AtomicBool,
}

impl LaneCtx {
    pub fn new(
        channel: String,
        lane: Lane,
        store: Arc<dyn Store>,
        deliverer: Arc<dyn Deliverer>,
        policy: DeliveryConfig,
        rate_limit: u32,
        waiters: Arc<Waiters>,
    ) -> Arc<LaneCtx> {
        let policy_guard = policy.rate_guard_ms as i64;
        let window_ms = 1000 + policy_guard;
        Arc::new(LaneCtx {
            channel,
            lane,
            store,
            deliverer,
            policy,
            waiters,
            dirty: AtomicBool::new(true),
            notify: Notify::new(),
            running: AtomicBool::new(false),
            limiter: Mutex::new((
                // Even spacing, bursts of 50 ms worth of sends; the window caps every second.
                SlidingWindow::new(rate_limit, window_ms).paced((rate_limit / 20).max(1)),
                AdaptiveGuard::new(policy_guard),
            )),
            reserved: AtomicUsize::new(0),
            pause_mono: AtomicI64::new(0),
            pause_wall: AtomicI64::new(0),
            circuit_open: AtomicBool::new(false),
            status_lane: OnceLock::new(),
            backlog: AtomicI64::new(0),
            lease_until: AtomicI64::new(0),
            tenure: AtomicU64::new(0),
            epoch: AtomicI64::new(0),
            standby: AtomicBool::new(false),
            rate_limit,
            channel_log: OnceLock::new(),
        })
    }

    /// Attempts record their HTTP exchanges here from now on.
    pub fn set_channel_log(&self, log: crate::channel_log::ChannelLog) {
        let _ = self.channel_log.set(log);
    }

    /// Until when the lane is paused, as stored (epoch ms; 0 or past: not paused).
    pub fn paused_until(&self) -> i64 {
        self.pause_wall.load(Ordering::Acquire)
    }

    /// Pauses the lane until `until_ms` (epoch ms, as stored: an operator's pause, or one
    /// read from the store; 0 resumes) and wakes it, so a resume takes effect at once. The
    /// pause runs on the monotonic clock from here on: a later step of the wall clock
    /// neither ends it early nor stretches it. The caller persists the pause.
    pub fn set_paused_until(&self, until_ms: i64) {
        self.pause_wall.store(until_ms, Ordering::Release);
        let mono = if until_ms <= 0 {
            0
        } else {
            wall_to_mono(until_ms)
        };
        self.pause_mono.store(mono, Ordering::Release);
        self.wake();
    }

    /// A 429 pauses the lane for `ms` from now (never shortens a longer pause); returns
    /// the pause's end on the monotonic clock and as stored (epoch ms).
    fn pause_for(&self, ms: i64) -> (i64, i64) {
        let (mono, wall) = (mono_ms() + ms, now_ms() + ms);
        if self.pause_mono.fetch_max(mono, Ordering::AcqRel) < mono {
            self.pause_wall.store(wall, Ordering::Release);
        }
        (mono, wall)
    }

    /// Until when (monotonic ms) the lane is paused; 0 or past: not paused.
    fn pause_deadline(&self) -> i64 {
        self.pause_mono.load(Ordering::Acquire)
    }

    /// The circuit is open (a channel fault): only probes are sent.
    pub fn circuit_is_open(&self) -> bool {
        self.circuit_open.load(Ordering::Acquire)
    }

    /// `n` items were committed for this lane.
    pub fn add_backlog(&self, n: usize) {
        self.backlog.fetch_add(n as i64, Ordering::AcqRel);
    }

    fn settle_backlog(&self, n: usize) {
        let _ = self
            .backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b - n as i64).max(0))
            });
    }

    /// The lane is paused (429) or its circuit is open: no attempt will start soon.
    pub fn is_blocked(&self) -> bool {
        self.blocked(false, mono_ms()).is_some()
    }

    /// Rate slots free right now that no dispatched attempt has claimed yet.
    pub fn free_slots(&self) -> i64 {
        let (free, _) = self.with_limiter(|l| l.free_at(mono_ms()));
        free as i64 - self.reserved.load(Ordering::Acquire) as i64
    }

    /// Sets the backlog from a count of the store.
    pub fn set_backlog(&self, n: i64) {
        self.backlog.store(n.max(0), Ordering::Release);
    }

    /// About how many items wait in this lane.
    pub fn backlog(&self) -> i64 {
        self.backlog.load(Ordering::Acquire)
    }

    /// New work was committed for this lane.
    pub fn wake(&self) {
        self.dirty.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Another node owns this lane; this node is ready to take it over.
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Acquire)
    }

    /// This node owns the lane and may send on it right now.
    pub fn owns(&self) -> bool {
        lease::mono_ms() < self.lease_until.load(Ordering::Acquire)
    }

    /// Statuses this lane queues (a send that failed after its 200, parked receipts) are
    /// delivered by `lane`: wake it when that happens.
    pub fn set_status_lane(&self, lane: &Arc<LaneCtx>) {
        let _ = self.status_lane.set(Arc::downgrade(lane));
    }

    fn wake_status_lane(&self) {
        if let Some(l) = self.status_lane.get().and_then(Weak::upgrade) {
            l.wake();
        }
    }

    fn with_limiter<R>(&self, f: impl FnOnce(&mut SlidingWindow) -> R) -> R {
        let mut guard = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard.0)
    }

    /// Feeds the receiver's answer to the adaptive guard and resizes the window.
    fn learn_guard(&self, throttled: bool) {
        let mut guard = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let (window, adaptive) = &mut *guard;
        let before = adaptive.current_ms();
        let now = if throttled {
            adaptive.throttled()
        } else {
            adaptive.succeeded()
        };
        if now != before {
            window.set_window(1000 + now);
            metrics::gauge!("rio_lane_rate_guard_ms", &self.labels()).set(now as f64);
            if throttled {
                tracing::warn!(channel = %self.channel, lane = self.lane.name(), guard_ms = now,
                    "receiver throttled us: widening the rate window");
            }
        }
    }

    /// Until when (monotonic ms) an attempt must not send now (a pause, or an open
    /// circuit for anything but the probe).
    fn blocked(&self, probe: bool, now: i64) -> Option<i64> {
        // Not ours (any more), or our lease is about to run out: nothing may leave.
        if !self.owns() {
            return Some(now + 1000);
        }
        let paused = self.pause_deadline();
        if paused > now {
            return Some(paused);
        }
        (!probe && self.circuit_open.load(Ordering::Acquire)).then_some(now + 1000)
    }

    /// Takes a rate slot right before sending, waiting if none is free; `Err(until)`
    /// (monotonic ms) if the lane was paused (or its circuit opened) meanwhile.
    async fn take_slot(&self, probe: bool, tenure: u64) -> Result<i64, i64> {
        let give_up = Instant::now() + SLOT_WAIT_MAX;
        loop {
            let now = mono_ms();
            if self.tenure.load(Ordering::Acquire) != tenure || Instant::now() >= give_up {
                return Err(now);
            }
            if let Some(until) = self.blocked(probe, now) {
                return Err(until);
            }
            match self.with_limiter(|l| l.try_acquire(now)) {
                Ok(t) => return Ok(t),
                Err(wait) => tokio::time::sleep(Duration::from_millis(wait.min(50) as u64)).await,
            }
        }
    }

    /// How long one request of this lane may take before it counts as unanswered.
    fn request_timeout(&self) -> Duration {
        Duration::from_millis(match self.lane {
            Lane::RespondIo => self.policy.respondio_timeout_ms,
            Lane::Provider => self.policy.provider_timeout_ms,
        })
    }

    /// How a crash (or an owner gone silent) settles this lane's attempts.
    fn crash_policy(&self) -> CrashPolicy {
        CrashPolicy {
            on_crash: self.policy.on_crash,
            ambiguous_retry_cap: self.policy.ambiguous_retry_cap,
        }
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("channel", self.channel.clone()),
            ("direction", self.lane.name().to_string()),
        ]
    }
}

/// How one attempt left its queue.
#[derive(Debug)]
enum Next {
    /// Delivered or dead-lettered, and the queue has more: keep it.
    More,
    /// The queue went back to the store (empty, or retrying later).
    Released,
    /// 429: pause the whole lane until then (monotonic ms).
    Paused { until: i64 },
    /// The channel is broken (credentials, credit): open the circuit.
    Fault(String),
    /// The store failed; the queue stays held and is tried again.
    StoreError,
}

#[derive(Debug)]
struct Completion {
    qkey: String,
    class: u8,
    next: Next,
    /// The batch was rejected as a whole: send this queue one event per call from now on.
    split: bool,
    /// This attempt was the open circuit's probe.
    probe: bool,
    /// A request went out (a probe that sent nothing proves nothing about the channel).
    sent: bool,
}

#[derive(Debug, Default)]
struct Circuit {
    open: bool,
    probe_inflight: bool,
    probe_at: i64,
    backoff_ms: i64,
    reason: String,
}

/// How often a lane with work in hand looks for more (and for promoted conversations).
const FILL_INTERVAL_MS: i64 = 20;

const CIRCUIT_FIRST_PROBE_MS: i64 = 5_000;

/// An attempt that got no rate slot within this long goes back unsent (the runner only
/// dispatches against free slots, so this is a guard, not a schedule).
const SLOT_WAIT_MAX: Duration = Duration::from_secs(10);
/// The deadline an attempt's mark carries, beyond its slot wait and request timeout: until
/// then another node taking the lane over leaves the item alone (its outcome may still be
/// recorded); after it, the crash policy settles the item.
const ATTEMPT_DEADLINE_MARGIN: Duration = Duration::from_secs(30);
const CIRCUIT_MAX_PROBE_MS: i64 = 300_000;
/// How often a lane that sends nothing (paused, circuit open) expires items past their
/// max age, and how many at most per sweep (one write transaction).
const SWEEP_INTERVAL_MS: i64 = 1_000;
const SWEEP_BATCH: usize = 500;

pub struct LaneRunner {
    ctx: Arc<LaneCtx>,
    ready: [VecDeque<String>; 2],
    /// Queues this lane has claimed in the store (ready or in flight).
    held: HashSet<String>,
    /// Held queues an attempt released in the store that a later claim took again before
    /// the attempt's completion arrived: the completion must keep them.
    reclaimed: HashSet<String>,
    single: HashSet<String>,
    inflight: usize,
    bulk_credit: f64,
    circuit: Circuit,
    next_due: Option<i64>,
    last_fill_ms: i64,
    last_sweep_ms: i64,
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
}

impl LaneRunner {
    /// Prepares a lane: seeds its limiter from the attempt log and restores a pause.
    pub async fn new(ctx: Arc<LaneCtx>) -> crate::store::Result<LaneRunner> {
        let recent = ctx
            .store
            .recent_attempts(&ctx.channel, ctx.lane, ctx.rate_limit as usize)
            .await?;
        // The attempt log is stored in wall-clock ms; the limiter runs on the monotonic clock.
        // (One logged "after now", by a clock since stepped back, counts as now.)
        let (wall, mono) = (now_ms(), mono_ms());
        ctx.with_limiter(|l| l.seed(recent.into_iter().map(|t| (t - wall + mono).min(mono))));
        let paused_until = ctx.store.paused_until(&ctx.channel, ctx.lane).await?;
        ctx.set_paused_until(paused_until);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(LaneRunner {
            ctx,
            ready: [VecDeque::new(), VecDeque::new()],
            held: HashSet::new(),
            reclaimed: HashSet::new(),
            single: HashSet::new(),
            inflight: 0,
            bulk_credit: 0.0,
            circuit: Circuit::default(),
            next_due: None,
            last_fill_ms: 0,
            last_sweep_ms: 0,
            done_tx,
            done_rx,
        })
    }

    /// How many queues a class keeps ready in memory: about half a second of sends.
    fn ready_cap(&self) -> usize {
        ((self.ctx.rate_limit as usize) / 2).clamp(8, 512)
    }

    fn paused_until(&self) -> i64 {
        self.ctx.pause_deadline()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let ctx = self.ctx.clone();
        ctx.running.store(true, Ordering::Release);
        self.publish_gauges();
        tracing::info!(channel = %ctx.channel, lane = ctx.lane.name(), rate = ctx.rate_limit, "lane started");
        loop {
            while let Ok(c) = self.done_rx.try_recv() {
                self.complete(c);
            }
            if shutdown.is_cancelled() {
                break;
            }
            // Pauses, probes and rate slots run on the monotonic clock; queues fall due by
            // the wall-clock times the store keeps (read on a clock that never steps back).
            let (now, wall) = (mono_ms(), steady_wall_ms());
            if let Some(until) = self.gate(now) {
                // Nothing is sent while the lane is paused or its circuit open, so no
                // attempt ends and expires old items: the sweep does, every so often.
                let blocked = self.blocked_why(now);
                if let Some(why) = blocked {
                    self.sweep_aged(now, wall, why).await;
                }
                let wait = if blocked.is_some() {
                    (until - now).min(SWEEP_INTERVAL_MS)
                } else {
                    until - now
                };
                self.wait(&shutdown, Some(wait)).await;
                continue;
            }
            if self.should_fill(now, wall)
                && let Err(e) = self.fill(wall).await
            {
                tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e, "lane cannot read its queues");
                self.ctx.dirty.store(true, Ordering::Release);
                self.wait(&shutdown, Some(500)).await;
                continue;
            }
            if self.ready[0].is_empty() && self.ready[1].is_empty() {
                let idle = self.next_due.map_or(1000, |d| (d - wall).clamp(1, 1000));
                self.wait(&shutdown, Some(idle)).await;
                // Look at the store again even without a wake-up: work may have been
                // committed by a path that had no handle on this lane.
                self.ctx.dirty.store(true, Ordering::Release);
                continue;
            }
            if self.inflight >= self.ctx.policy.max_inflight {
                self.wait(&shutdown, None).await;
                continue;
            }
            // Dispatch only as many attempts as there are free slots, so the order of
            // `pick` (priority) is the order in which requests leave. (Dispatching ahead of
            // the slot, or letting pacing absorb lateness, was measured: both bunch requests
            // up at the receiver, which then sees 21 in a second when the CPU is busy.)
            let reserved = self.ctx.reserved.load(Ordering::Acquire);
            let (free, wait) = self.ctx.with_limiter(|l| l.free_at(now));
            if free <= reserved {
                self.wait(&shutdown, Some(if free == 0 { wait } else { 2 }))
                    .await;
                continue;
            }
            let Some((qkey, class)) = self.pick() else {
                continue;
            };
            self.ctx.reserved.fetch_add(1, Ordering::AcqRel);
            let probe = self.circuit.open;
            if probe {
                self.circuit.probe_inflight = true;
                tracing::info!(channel = %ctx.channel, lane = ctx.lane.name(), fault = %self.circuit.reason,
                    "circuit open: probing with one attempt");
            }
            self.inflight += 1;
            let single = self.single.contains(&qkey);
            let (ctx2, tx) = (self.ctx.clone(), self.done_tx.clone());
            let tenure = self.ctx.tenure.load(Ordering::Acquire);
            let epoch = self.ctx.epoch.load(Ordering::Acquire);
            tokio::spawn(async move {
                // An attempt that panics must still report back, or its queue would stay
                // held and the lane would count it in flight forever.
                let task = tokio::spawn(attempt(
                    ctx2.clone(),
                    qkey.clone(),
                    class,
                    single,
                    probe,
                    tenure,
                    epoch,
                ));
                let c = task.await.unwrap_or_else(|e| {
                    tracing::error!(channel = %ctx2.channel, lane = ctx2.lane.name(), error = %e, "attempt panicked");
                    Completion { qkey, class, next: Next::StoreError, split: false, probe, sent: false }
                });
                let _ = tx.send(c);
            });
        }
        self.drain().await;
        ctx.running.store(false, Ordering::Release);
        tracing::info!(channel = %ctx.channel, lane = ctx.lane.name(), "lane stopped");
    }

    /// Hands every held queue back to the store at once, those with an attempt in flight
    /// included. Attempts in flight are not waited for and never cut: each finishes and
    /// records its outcome on its own (the store knows them as this process's live
    /// attempts, so the next owner of the lane, on this node or another, never re-sends
    /// them), then hands its queue to whoever owns the lane by then.
    async fn drain(&mut self) {
        if self.inflight > 0 {
            tracing::info!(channel = %self.ctx.channel, lane = self.ctx.lane.name(), inflight = self.inflight,
                "lane stopping: attempts in flight finish on their own");
        }
        for qkey in self.held.drain() {
            if let Err(e) = self
                .ctx
                .store
                .release(&self.ctx.channel, self.ctx.lane, &qkey)
                .await
            {
                // Its claim is released by the lane's next owner (recovery) anyway.
                tracing::warn!(channel = %self.ctx.channel, lane = self.ctx.lane.name(), error = %e,
                    "could not hand a queue back while stopping");
            }
        }
    }

    /// Until when the lane may not start attempts (a 429 pause, an open circuit).
    fn gate(&self, now: i64) -> Option<i64> {
        // The lease is running out (its keeper is about to stop this lane): start nothing.
        if !self.ctx.owns() {
            return Some(now + 100);
        }
        let paused = self.paused_until();
        if paused > now {
            return Some(paused);
        }
        if self.circuit.open {
            if self.circuit.probe_inflight {
                return Some(now + 1000);
            }
            if now < self.circuit.probe_at {
                return Some(self.circuit.probe_at);
            }
        }
        None
    }

    /// Why the lane sends nothing although it owns its lease: paused or circuit open.
    fn blocked_why(&self, now: i64) -> Option<&'static str> {
        if !self.ctx.owns() {
            None
        } else if self.paused_until() > now {
            Some("paused")
        } else if self.circuit.open {
            Some("stopped by an open circuit (channel fault)")
        } else {
            None
        }
    }

    /// Expires items past `max_age_secs` while the lane sends nothing (at most every
    /// `SWEEP_INTERVAL_MS`): dead-lettered with a reason saying so, a send's `failed`
    /// status queued for respond.io, as for any item that gave up. `now` is the monotonic
    /// clock (the interval), `wall` the wall clock the stored ages are kept in.
    async fn sweep_aged(&mut self, now: i64, wall: i64, why: &str) {
        if now - self.last_sweep_ms < SWEEP_INTERVAL_MS {
            return;
        }
        self.last_sweep_ms = now;
        let ctx = &self.ctx;
        let max_age_ms = (ctx.policy.max_age_secs as i64).saturating_mul(1000);
        let reason = format!(
            "expired: waited over {} s (max_age_secs) while the lane was {why}",
            ctx.policy.max_age_secs
        );
        match ctx
            .store
            .expire_aged(
                &ctx.channel,
                ctx.lane,
                wall - max_age_ms,
                &reason,
                SWEEP_BATCH,
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                let labels = ctx.labels();
                metrics::counter!("rio_dead_total", &labels).increment(n);
                metrics::counter!("rio_expired_total", &labels).increment(n);
                tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), expired = n, reason = %reason,
                    "items past their max age dead-lettered");
                ctx.settle_backlog(n as usize);
                ctx.wake_status_lane();
                if n as usize >= SWEEP_BATCH {
                    // More may be waiting: sweep again at the next turn.
                    self.last_sweep_ms = 0;
                }
            }
            Err(e) => {
                tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e, "cannot expire old items yet");
            }
        }
    }

    async fn wait(&mut self, shutdown: &CancellationToken, ms: Option<i64>) {
        let sleep = tokio::time::sleep(Duration::from_millis(ms.unwrap_or(60_000).max(1) as u64));
        tokio::select! {
            c = self.done_rx.recv() => if let Some(c) = c { self.complete(c) },
            _ = self.ctx.notify.notified() => {}
            _ = sleep => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Whether to look for due queues now. A claim is a committed write, so a busy lane
    /// claims at most every `FILL_INTERVAL_MS` (each finished send marks it dirty); an
    /// empty one claims as soon as work is signalled.
    fn should_fill(&mut self, now: i64, wall: i64) -> bool {
        let signalled =
            self.ctx.dirty.load(Ordering::Acquire) || self.next_due.is_some_and(|d| d <= wall);
        if !signalled {
            return false;
        }
        let empty = self.ready[0].is_empty() && self.ready[1].is_empty();
        if !empty && now - self.last_fill_ms < FILL_INTERVAL_MS {
            return false;
        }
        self.ctx.dirty.store(false, Ordering::Release);
        self.last_fill_ms = now;
        true
    }

    async fn fill(&mut self, now: i64) -> crate::store::Result<()> {
        let cap = self.ready_cap();
        let limits = [
            cap.saturating_sub(self.ready[0].len()),
            cap.saturating_sub(self.ready[1].len()),
        ];
        if limits == [0, 0] {
            self.ctx.dirty.store(true, Ordering::Release);
            return Ok(());
        }
        let batch = self
            .ctx
            .store
            .claim(&self.ctx.channel, self.ctx.lane, now, limits)
            .await?;
        let mut per_class = [0usize; 2];
        for (qkey, class) in batch.claimed {
            let c = (class as usize).min(1);
            per_class[c] += 1;
            if self.held.contains(&qkey) {
                // Its attempt released it and we took it again before hearing back.
                self.reclaimed.insert(qkey);
            } else {
                self.held.insert(qkey.clone());
                self.ready[c].push_back(qkey);
            }
        }
        // A full batch may have left more behind: look again soon.
        if per_class
            .iter()
            .zip(limits)
            .any(|(&got, lim)| lim > 0 && got == lim)
        {
            self.ctx.dirty.store(true, Ordering::Release);
        }
        self.next_due = batch.next_due_ms;
        Ok(())
    }

    /// Weighted round robin: class 0 first, class 1 keeps at least `bulk_min_share`.
    fn pick(&mut self) -> Option<(String, u8)> {
        let share = self.ctx.policy.bulk_min_share;
        self.bulk_credit = (self.bulk_credit + share).min(1.0);
        let take_bulk =
            self.ready[0].is_empty() || (self.bulk_credit >= 1.0 && !self.ready[1].is_empty());
        let class = if take_bulk { 1 } else { 0 };
        let qkey = self.ready[class].pop_front()?;
        if class == 1 {
            self.bulk_credit = (self.bulk_credit - 1.0).max(0.0);
        }
        Some((qkey, class as u8))
    }

    fn complete(&mut self, c: Completion) {
        self.inflight = self.inflight.saturating_sub(1);
        let ctx = self.ctx.clone();
        let now = mono_ms();
        if c.split {
            self.single.insert(c.qkey.clone());
        }
        self.update_circuit(&c, now);
        match c.next {
            Next::More | Next::StoreError => {
                // Still claimed in the store: keep holding it.
                self.ready[c.class as usize].push_back(c.qkey);
            }
            Next::Released | Next::Paused { .. } | Next::Fault(_) => {
                // The attempt paused the lane (see `decide`) and committed the pause with
                // its outcome.
                if let Next::Paused { until } = c.next
                    && until >= self.paused_until()
                {
                    tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), pause_ms = until - now, "throttled: lane paused");
                }
                if self.reclaimed.remove(&c.qkey) {
                    self.ready[c.class as usize].push_back(c.qkey);
                } else {
                    self.held.remove(&c.qkey);
                    if !c.split {
                        self.single.remove(&c.qkey);
                    }
                }
                self.ctx.dirty.store(true, Ordering::Release);
            }
        }
        self.publish_gauges();
    }

    /// Only the probe's outcome closes or re-arms an open circuit; a fault from any
    /// attempt opens a closed one.
    fn update_circuit(&mut self, c: &Completion, now: i64) {
        let ctx = &self.ctx;
        let fault = match &c.next {
            Next::Fault(reason) => Some(reason.clone()),
            _ => None,
        };
        if c.probe && !c.sent {
            // The probe found nothing to send (its queue emptied meanwhile): the circuit
            // stays open and the next ready queue probes soon.
            self.circuit.probe_inflight = false;
            self.circuit.probe_at = now + 1000;
        } else if c.probe {
            self.circuit.probe_inflight = false;
            match fault {
                None => {
                    tracing::info!(channel = %ctx.channel, lane = ctx.lane.name(), "probe succeeded: circuit closed, lane resumes");
                    self.circuit = Circuit::default();
                    ctx.circuit_open.store(false, Ordering::Release);
                }
                Some(reason) => {
                    let backoff = (self.circuit.backoff_ms * 2).min(CIRCUIT_MAX_PROBE_MS);
                    tracing::error!(channel = %ctx.channel, lane = ctx.lane.name(), reason = %reason, probe_in_ms = backoff,
                        "probe failed: circuit stays open");
                    self.circuit.backoff_ms = backoff;
                    self.circuit.probe_at = now + backoff;
                    self.circuit.reason = reason;
                }
            }
        } else if let Some(reason) = fault
            && !self.circuit.open
        {
            tracing::error!(channel = %ctx.channel, lane = ctx.lane.name(), reason = %reason, probe_in_ms = CIRCUIT_FIRST_PROBE_MS,
                "channel fault: lane paused (circuit open) until a probe succeeds");
            self.circuit = Circuit {
                open: true,
                probe_inflight: false,
                probe_at: now + CIRCUIT_FIRST_PROBE_MS,
                backoff_ms: CIRCUIT_FIRST_PROBE_MS,
                reason,
            };
            ctx.circuit_open.store(true, Ordering::Release);
        }
    }

    fn publish_gauges(&self) {
        let l = self.ctx.labels();
        metrics::gauge!("rio_lane_paused", &l).set(if self.paused_until() > mono_ms() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("rio_lane_circuit_open", &l).set(if self.circuit.open { 1.0 } else { 0.0 });
        metrics::gauge!("rio_lane_inflight", &l).set(self.inflight as f64);
    }
}

/// Gives back a dispatched attempt's claim on a slot if it ends before taking one.
struct Reservation<'a>(&'a AtomicUsize, bool);

impl Reservation<'_> {
    fn settle(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// One attempt for one queue: take its head (marked attempting), take a rate slot,
/// deliver, record.
async fn attempt(
    ctx: Arc<LaneCtx>,
    qkey: String,
    class: u8,
    single: bool,
    probe: bool,
    tenure: u64,
    epoch: i64,
) -> Completion {
    let mut reservation = Reservation(&ctx.reserved, false);
    let limit = if single {
        1
    } else {
        ctx.deliverer.batch_limit(&qkey).max(1)
    };
    let done_sent = |next, split, sent| Completion {
        qkey: qkey.clone(),
        class,
        next,
        split,
        probe,
        sent,
    };
    let done = |next, split| done_sent(next, split, false);
    let now = now_ms();
    let timeout = ctx.request_timeout();
    let how = TakeHead {
        limit,
        at_ms: now,
        deadline_ms: now + (SLOT_WAIT_MAX + timeout + ATTEMPT_DEADLINE_MARGIN).as_millis() as i64,
        epoch,
        crash: ctx.crash_policy(),
    };
    let items = match ctx
        .store
        .take_head(&ctx.channel, ctx.lane, &qkey, how)
        .await
    {
        Ok(Head::Taken(items)) => items,
        // Empty (the queue is gone), or its head still in flight from an earlier tenure
        // (the queue was handed back due when that attempt's outcome is expected).
        Ok(Head::Empty | Head::InFlight { .. }) => return done(Next::Released, false),
        Err(StoreError::Fenced(_)) => return done(Next::Released, false),
        Err(e) => {
            tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e, "store failed before an attempt");
            tokio::time::sleep(Duration::from_millis(500)).await;
            return done(Next::StoreError, false);
        }
    };
    let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    let mut unrecorded = Unrecorded(&*ctx.store, &ids, true);
    let slot_ms = match ctx.take_slot(probe, tenure).await {
        Ok(t) => t,
        Err(until) => {
            // Paused (or the circuit opened, or the tenure ended) after this attempt was
            // dispatched: nothing was sent, so nothing is counted.
            let fin = Finish::NotSent {
                next_ms: steady_wall_ms() + (until - mono_ms()).max(0),
            };
            record(&ctx, &qkey, &ids, fin, 0, 0).await;
            unrecorded.settle();
            return done(Next::Released, false);
        }
    };
    reservation.settle();
    let started = Instant::now();
    // A request that has to wait for a new connection has its slot placed when it leaves.
    let gate = gate::SlotGate::new(ctx.clone(), slot_ms);
    let send = gate.scope(async {
        match ctx.channel_log.get() {
            Some(log) => deliver_logged(&ctx, log, &items).await,
            None => ctx.deliverer.deliver(&items).await,
        }
    });
    // A deliverer's own timeouts should answer first; this one bounds the attempt whatever
    // it does, so its mark's deadline holds.
    let result = match tokio::time::timeout(timeout + Duration::from_secs(5), send).await {
        Ok(r) => r,
        Err(_) => Err(SendError::Ambiguous(format!(
            "no answer within {} ms",
            (timeout + Duration::from_secs(5)).as_millis()
        ))),
    };
    let dur = started.elapsed();
    // When the request left, as stored in the attempt log (wall-clock ms).
    let slot_ms = mono_to_wall(gate.finish());
    metrics::histogram!("rio_delivery_duration_seconds", &ctx.labels()).record(dur.as_secs_f64());
    ctx.learn_guard(matches!(result, Err(SendError::Throttled { .. })));
    let (fin, next, split) = decide(&ctx, &items, result, dur);
    let settled = matches!(fin, Finish::Done { .. } | Finish::Dead { .. });
    let recorded = record(&ctx, &qkey, &ids, fin, slot_ms, dur.as_millis() as i64).await;
    unrecorded.settle();
    let Some(more) = recorded else {
        return done_sent(Next::Released, false, true);
    };
    if settled {
        ctx.settle_backlog(ids.len());
    }
    ctx.wake_status_lane();
    let next = match next {
        Some(n) => n,
        None if more => Next::More,
        None => Next::Released,
    };
    done_sent(next, split, true)
}

/// The items of an attempt that has not recorded its outcome yet. Dropped unsettled (the
/// attempt panicked), they stop being live in this process, so the next take settles them by
/// the crash policy instead of waiting on an attempt that will never report.
struct Unrecorded<'a>(&'a dyn Store, &'a [i64], bool);

impl Unrecorded<'_> {
    fn settle(&mut self) {
        self.2 = false;
    }
}

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        if self.2 {
            self.0.abandon_live(self.1);
        }
    }
}

/// Delivers with the attempt's HTTP exchanges recorded under its items' mIds. A deliverer
/// whose calls bypass `channel_log::send` still leaves one row saying what was sent and
/// how it ended, without the HTTP details.
async fn deliver_logged(
    ctx: &LaneCtx,
    log: &crate::channel_log::ChannelLog,
    items: &[Item],
) -> Result<Option<String>, SendError> {
    use crate::channel_log::{Direction, Exchange};
    let mids: Vec<String> = items.iter().map(|i| i.mid.clone()).collect();
    let started = Instant::now();
    let (result, recorded) = crate::channel_log::scope(
        log.clone(),
        &ctx.channel,
        mids.clone(),
        ctx.deliverer.deliver(items),
    )
    .await;
    if recorded == 0 {
        let kind = match ctx.lane {
            Lane::RespondIo => "respondio",
            Lane::Provider => "provider",
        };
        let mut ex = Exchange::new(Direction::Out, kind, "SEND", "(HTTP details not recorded)");
        ex.duration = started.elapsed();
        ex.request_body = items
            .first()
            .map(|i| i.payload.as_bytes().to_vec())
            .unwrap_or_default();
        match &result {
            Ok(pid) => {
                ex.response_body =
                    format!("accepted, provider id {}", pid.as_deref().unwrap_or("-")).into_bytes()
            }
            Err(e) => ex.error = Some(e.reason().to_string()),
        }
        log.record(&ctx.channel, &mids, &ex);
    }
    result
}

/// Records an attempt's outcome, retrying the write for as long as the store fails: the
/// request already went out, so it must not be sent again just because the bookkeeping
/// failed. The queue stays held meanwhile (the contact's next message waits, in order),
/// and the item stays this process's live attempt, which no other lane generation takes.
/// `None`: the write was fenced (another owner settled the items), nothing to record.
async fn record(
    ctx: &LaneCtx,
    qkey: &str,
    ids: &[i64],
    fin: Finish,
    slot_ms: i64,
    dur_ms: i64,
) -> Option<bool> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut next_error_log = Duration::ZERO;
    loop {
        match ctx
            .store
            .finish(
                &ctx.channel,
                ctx.lane,
                qkey,
                ids,
                fin.clone(),
                slot_ms,
                dur_ms,
            )
            .await
        {
            Ok(more) => {
                if started.elapsed() > Duration::from_secs(1) {
                    tracing::info!(channel = %ctx.channel, lane = ctx.lane.name(), waited_ms = started.elapsed().as_millis() as u64,
                        "attempt's outcome recorded after the store recovered");
                }
                return Some(more);
            }
            Err(e @ StoreError::Fenced(_)) => {
                tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e,
                    "an attempt's outcome came too late: the lane's owner settled it meanwhile");
                return None;
            }
            Err(e) => {
                let waited = started.elapsed();
                if waited >= next_error_log {
                    tracing::error!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e, waited_s = waited.as_secs(),
                        "cannot record an attempt's outcome; keeps retrying (the queue waits, nothing is re-sent)");
                    next_error_log = waited + Duration::from_secs(30);
                } else {
                    tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e, "cannot record an attempt's outcome yet; retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Turns a delivery result into what to record and what the lane does next. `None` for
/// "next" means: depends on whether the queue has more.
fn decide(
    ctx: &LaneCtx,
    items: &[Item],
    result: Result<Option<String>, SendError>,
    dur: Duration,
) -> (Finish, Option<Next>, bool) {
    let head = &items[0];
    // Ages by the wall clock (items are stamped with it); retries fall due by the lanes'
    // clock that never steps back.
    let now = now_ms();
    let due_now = steady_wall_ms();
    let p = &ctx.policy;
    let labels = ctx.labels();
    // Counted from when the item was last queued: a replayed dead letter starts afresh.
    let age_ms = now - head.queued_ms;
    let too_old = age_ms >= (p.max_age_secs as i64).saturating_mul(1000);
    let log_item = |what: &str, detail: &str| {
        for it in items {
            tracing::info!(channel = %ctx.channel, mid = %it.mid, lane = ctx.lane.name(), attempt = it.attempts + 1,
                ms = dur.as_millis() as u64, detail, "{what}");
        }
    };
    let dead_maybe_sent = |reason: String, report: bool, ambiguous: bool| {
        metrics::counter!("rio_dead_total", &labels).increment(items.len() as u64);
        for it in items {
            tracing::warn!(channel = %ctx.channel, mid = %it.mid, lane = ctx.lane.name(), reason = %reason, "dead-lettered");
        }
        (
            Finish::Dead {
                reason,
                report_failed: report,
                ambiguous,
            },
            None,
            false,
        )
    };
    let dead = |reason: String, report: bool| dead_maybe_sent(reason, report, false);
    match result {
        Ok(provider_id) => {
            metrics::counter!("rio_delivered_total", &labels).increment(items.len() as u64);
            log_item("delivered", provider_id.as_deref().unwrap_or(""));
            ctx.waiters.resolve(&head.mid, FirstOutcome::Accepted);
            (Finish::Done { provider_id }, None, false)
        }
        Err(SendError::Permanent(reason)) if items.len() > 1 => {
            // A batch answered 4xx: find the culprit one event at a time before anything
            // is dead-lettered.
            log_item("batch rejected; retrying one event per call", &reason);
            let fin = Finish::Retry {
                next_ms: due_now,
                error: reason,
                ambiguous: false,
                counted: false,
                outcome: "split",
                pause_lane_until: None,
            };
            (fin, Some(Next::Released), true)
        }
        Err(SendError::Permanent(reason)) => {
            metrics::counter!("rio_failed_total", &labels).increment(1);
            // If `/message` is still waiting, respond.io hears this as our 4xx and needs no
            // `failed` status; otherwise it already has our 200 and must be told.
            let told = ctx
                .waiters
                .resolve(&head.mid, FirstOutcome::Rejected(reason.clone()));
            dead(reason, !told)
        }
        // A throttle or a channel fault acts on the lane first, whatever the item's age
        // (dead-lettering the item instead would let the next one hit the same wall at
        // once): the lane pauses or opens its circuit, and while it sends nothing the
        // runner's sweep expires items past `max_age_secs`.
        Err(SendError::Rotated(reason)) => {
            // Not acted on, and the next attempt uses the rotation's other credential: at
            // once, in a slot of its own, uncounted.
            log_item(
                "refused with one token of a rotation; trying the other",
                &reason,
            );
            let fin = Finish::Retry {
                next_ms: now,
                error: reason,
                ambiguous: false,
                counted: false,
                outcome: "rotated",
                pause_lane_until: None,
            };
            (fin, Some(Next::Released), false)
        }
        Err(SendError::ChannelFault(reason)) => {
            metrics::counter!("rio_channel_faults_total", &labels).increment(1);
            ctx.waiters.resolve(&head.mid, FirstOutcome::Pending);
            let fin = Finish::Retry {
                next_ms: due_now,
                error: reason.clone(),
                ambiguous: false,
                counted: false,
                outcome: "fault",
                pause_lane_until: None,
            };
            (fin, Some(Next::Fault(reason)), false)
        }
        Err(SendError::Throttled {
            retry_after,
            reason,
        }) => {
            metrics::counter!("rio_throttled_total", &labels).increment(1);
            ctx.waiters.resolve(&head.mid, FirstOutcome::Pending);
            // The pause holds from this moment: attempts of other contacts waiting for a
            // slot must not go out while this outcome is still being recorded.
            let pause_ms = retry::throttle_pause_ms(retry_after);
            let (until_mono, until) = ctx.pause_for(pause_ms);
            let fin = Finish::Retry {
                next_ms: due_now + pause_ms,
                error: reason,
                ambiguous: false,
                counted: false,
                outcome: "throttled",
                pause_lane_until: Some(until),
            };
            (fin, Some(Next::Paused { until: until_mono }), false)
        }
        Err(e @ (SendError::Unsent(_) | SendError::Ambiguous(_))) => {
            let ambiguous = matches!(e, SendError::Ambiguous(_));
            let reason = e.reason().to_string();
            metrics::counter!("rio_retries_total", &labels).increment(1);
            ctx.waiters.resolve(&head.mid, FirstOutcome::Pending);
            let attempts = head.attempts + 1;
            // Toward the provider a repeat may double the message: cap those.
            if ambiguous
                && ctx.lane == Lane::Provider
                && head.ambiguous + 1 > p.ambiguous_retry_cap as i64
            {
                return dead_maybe_sent(
                    format!(
                        "may have been sent; not retried again after {} ambiguous attempts: {reason}",
                        head.ambiguous + 1
                    ),
                    true,
                    true,
                );
            }
            if attempts >= p.max_attempts as i64 {
                return dead(format!("gave up after {attempts} attempts: {reason}"), true);
            }
            if too_old {
                return dead(format!("gave up after {} s: {reason}", age_ms / 1000), true);
            }
            let delay = retry::backoff_ms(attempts as u32, p.backoff_base_ms, p.backoff_max_ms);
            log_item(
                if ambiguous {
                    "retrying (ambiguous)"
                } else {
                    "retrying"
                },
                &reason,
            );
            let outcome = if ambiguous { "ambiguous" } else { "retry" };
            (
                Finish::Retry {
                    next_ms: due_now + delay,
                    error: reason,
                    ambiguous,
                    counted: true,
                    outcome,
                    pause_lane_until: None,
                },
                None,
                false,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ItemKind, sqlite::SqliteStore};
    use async_trait::async_trait;

    struct NeverCalled;

    #[async_trait]
    impl Deliverer for NeverCalled {
        fn batch_limit(&self, _qkey: &str) -> usize {
            1
        }
        async fn deliver(&self, _items: &[Item]) -> Result<Option<String>, SendError> {
            unreachable!("no attempt goes out while the lane is paused")
        }
    }

    fn item(created_ms: i64) -> Item {
        Item {
            id: 1,
            channel: "sms".into(),
            lane: Lane::RespondIo,
            qkey: "c:+61400000001".into(),
            contact: "+61400000001".into(),
            kind: ItemKind::Message,
            mid: "m1".into(),
            payload: "{}".into(),
            contact_json: None,
            state: 1,
            attempts: 0,
            ambiguous: 0,
            created_ms,
            queued_ms: created_ms,
            provider_id: None,
            status: 0,
            last_error: None,
        }
    }

    /// A 429 pauses the lane the moment it is read, not once its outcome is recorded:
    /// attempts of other contacts that are waiting for a rate slot meanwhile must not send.
    #[tokio::test]
    async fn a_429_pauses_the_lane_before_its_outcome_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&crate::config::StoreConfig {
            path: dir.path().join("t.db"),
            ..Default::default()
        })
        .unwrap();
        let ctx = LaneCtx::new(
            "sms".into(),
            Lane::RespondIo,
            Arc::new(store),
            Arc::new(NeverCalled),
            DeliveryConfig::default(),
            20,
            Arc::new(Waiters::default()),
        );
        // The lane is ours (as its lease keeper would have made it).
        ctx.lease_until.store(i64::MAX, Ordering::Release);
        assert!(
            ctx.take_slot(false, ctx.tenure.load(Ordering::Acquire))
                .await
                .is_ok(),
            "not paused before"
        );
        let throttled = Err(SendError::Throttled {
            retry_after: Some(Duration::from_secs(2)),
            reason: "respond.io answered 429".into(),
        });
        let (_, next, _) = decide(&ctx, &[item(now_ms())], throttled, Duration::ZERO);
        let Some(Next::Paused { until }) = next else {
            panic!("a 429 pauses the lane");
        };
        assert_eq!(
            ctx.take_slot(false, ctx.tenure.load(Ordering::Acquire))
                .await,
            Err(until),
            "paused at once"
        );
        assert!(until >= mono_ms() + 1000, "for the Retry-After");
    }

    /// Panics on its first delivery, then delivers.
    struct PanicsOnce(std::sync::atomic::AtomicBool);

    #[async_trait]
    impl Deliverer for PanicsOnce {
        fn batch_limit(&self, _qkey: &str) -> usize {
            1
        }
        async fn deliver(&self, _items: &[Item]) -> Result<Option<String>, SendError> {
            if !self.0.swap(true, Ordering::AcqRel) {
                panic!("a deliverer's bug");
            }
            Ok(None)
        }
    }

    /// An attempt that panics may have sent: its item is settled as after a crash (sent
    /// again, marked ambiguous) instead of staying in flight in this process for good.
    #[tokio::test]
    async fn a_panicked_attempt_is_settled_as_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&crate::config::StoreConfig {
                path: dir.path().join("t.db"),
                ..Default::default()
            })
            .unwrap(),
        );
        let event = r#"{"type":"message","mId":"m1","timestamp":1767225600000,"message":{"type":"text","text":"hi"}}"#;
        store
            .ingest_inbound(
                "sms",
                vec![crate::store::NewInbound {
                    dedupe_key: "k1".into(),
                    contact: "+61400000001".into(),
                    kind: ItemKind::Message,
                    mid: "m1".into(),
                    event_json: event.into(),
                    contact_json: None,
                    provider_id: "p1".into(),
                }],
            )
            .await
            .unwrap();
        let ctx = LaneCtx::new(
            "sms".into(),
            Lane::RespondIo,
            store.clone(),
            Arc::new(PanicsOnce(Default::default())),
            DeliveryConfig::default(),
            20,
            Arc::new(Waiters::default()),
        );
        let shutdown = CancellationToken::new();
        let keeper = tokio::spawn(lease::keep(
            ctx.clone(),
            ctx.crash_policy(),
            lease::LeaseTiming {
                margin_ms: 0,
                retry_ms: 100,
            },
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        let item = loop {
            let item = store.item_by_mid("sms", "m1").await.unwrap().unwrap();
            if item.state == 2 {
                break item;
            }
            assert!(
                Instant::now() < deadline,
                "the panicked attempt's item is still {} after 30 s",
                item.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(item.ambiguous, 1, "sent again as an ambiguous attempt");
        assert_eq!(store.live_attempts(), 0);
        shutdown.cancel();
        keeper.await.unwrap();
    }
}
