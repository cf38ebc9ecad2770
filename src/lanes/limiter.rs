//! The rate limiter: an exact sliding-window log.
//!
//! respond.io allows 20 requests per second per channel. A token bucket (governor's GCRA)
//! with a burst of N lets through N at once and then one every 1/N s, which puts up to
//! 2N−1 requests in some 1-second window. A log of the last N request times never does:
//! a request may go only when the N-th previous one is more than a full window old. The
//! memory is N timestamps per lane; seeded from the attempt log at start-up, it also holds
//! across a restart.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: usize,
    window_ms: i64,
    /// Granted slots, oldest first; at most `2 × limit` (a window widened at run time, up to
    /// twice the width, still sees every grant it must count).
    log: VecDeque<i64>,
    /// Slots granted whose request has not left yet and may leave at any moment (it waits
    /// for a new connection): they count in every window until they are placed at the time
    /// the request actually left.
    pending: usize,
    pacing: Option<Pacing>,
}

/// Even spacing in front of the window (GCRA): one slot every `interval_ms`, with up to
/// `burst` at once after a quiet spell. Without it a busy lane spends a window's slots in
/// the first moments and then idles until the window slides, so whatever arrives in the
/// quiet part (an agent's reply during a broadcast) waits most of a second; and bursts
/// bunch up on the way to the receiver, which counts arrivals.
#[derive(Debug, Clone)]
struct Pacing {
    interval_ms: f64,
    tolerance_ms: f64,
    /// The theoretical arrival time of the next slot.
    tat: f64,
}

impl SlidingWindow {
    pub fn new(limit: u32, window_ms: i64) -> Self {
        let limit = limit.max(1) as usize;
        SlidingWindow {
            limit,
            window_ms,
            log: VecDeque::with_capacity(2 * limit),
            pending: 0,
            pacing: None,
        }
    }

    /// Adds even pacing: `limit` slots spread over a second, `burst` of them at once.
    pub fn paced(mut self, burst: u32) -> Self {
        let interval_ms = 1000.0 / self.limit as f64;
        let tolerance_ms = interval_ms * (burst.max(1) - 1) as f64;
        self.pacing = Some(Pacing {
            interval_ms,
            tolerance_ms,
            tat: 0.0,
        });
        self
    }

    /// How long pacing holds the next slot back at `now` (0: it may go).
    fn pacing_wait(&self, now: i64) -> i64 {
        match &self.pacing {
            Some(p) => {
                let tat = p.tat.max(now as f64);
                let early = tat - p.tolerance_ms - now as f64;
                if early > 0.0 { early.ceil() as i64 } else { 0 }
            }
            None => 0,
        }
    }

    /// Widens or narrows the window from now on. Widening never lets more through;
    /// narrowing only affects slots granted after it.
    pub fn set_window(&mut self, window_ms: i64) {
        self.window_ms = window_ms.max(1);
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Remembers requests made before (e.g. by the previous process), in any order.
    pub fn seed(&mut self, times: impl IntoIterator<Item = i64>) {
        let mut all: Vec<i64> = self.log.drain(..).chain(times).collect();
        all.sort_unstable();
        let skip = all.len().saturating_sub(self.limit);
        self.log.extend(all.into_iter().skip(skip));
    }

    /// Index of the first logged slot inside the closed window ending at `at`.
    fn window_start(&self, at: i64) -> usize {
        self.log.partition_point(|&t| t < at - self.window_ms)
    }

    /// Slots counted in the closed window ending at `at` (pending ones included), and if
    /// that leaves none free, how long from `at` until one is.
    fn counted(&self, at: i64) -> (usize, i64) {
        let first = self.window_start(at);
        let count = self.log.len() - first + self.pending;
        if count < self.limit {
            return (count, 0);
        }
        // The (count − limit + 1)-th oldest slot in the window must leave it first.
        let wait = match self.log.get(first + count - self.limit) {
            Some(&t) => (t + self.window_ms + 1 - at).max(1),
            // Only pending slots fill the window: one is placed as soon as its connection
            // is ready.
            None => 5,
        };
        (count, wait)
    }

    /// Takes a slot at `now` if one is free; otherwise says how many ms to wait.
    /// Any closed interval of `window_ms` holds at most `limit` granted slots.
    pub fn try_acquire(&mut self, now: i64) -> Result<i64, i64> {
        // A clock that steps back must not let a burst through: never record before the last.
        let now = self.log.back().map_or(now, |&last| now.max(last));
        let paced = self.pacing_wait(now);
        if paced > 0 {
            return Err(paced);
        }
        let (count, wait) = self.counted(now);
        if count >= self.limit {
            return Err(wait);
        }
        self.log.push_back(now);
        while self.log.len() > 2 * self.limit {
            self.log.pop_front();
        }
        if let Some(p) = &mut self.pacing {
            p.tat = p.tat.max(now as f64) + p.interval_ms;
        }
        Ok(now)
    }

    /// The request of the slot granted at `at` has not left and may leave at any moment
    /// from now on (it waits for a connection): it counts in every window until
    /// [`SlidingWindow::place`] says when it left. False if there is no such slot.
    pub fn suspend(&mut self, at: i64) -> bool {
        match self.log.iter().rposition(|&t| t == at) {
            Some(i) => {
                self.log.remove(i);
                self.pending += 1;
                true
            }
            None => false,
        }
    }

    /// A suspended slot's request left at `now`: the slot is logged at that time.
    pub fn place(&mut self, now: i64) -> i64 {
        self.pending = self.pending.saturating_sub(1);
        let now = self.log.back().map_or(now, |&last| now.max(last));
        self.log.push_back(now);
        while self.log.len() > 2 * self.limit {
            self.log.pop_front();
        }
        now
    }

    /// How many slots are free at `at`, and if none, how long from `at` until one is.
    /// Changes nothing.
    pub fn free_at(&self, at: i64) -> (usize, i64) {
        let at = self.log.back().map_or(at, |&last| at.max(last));
        let (count, mut wait) = self.counted(at);
        let mut free = self.limit.saturating_sub(count);
        if let Some(p) = &self.pacing {
            let paced = self.pacing_wait(at);
            if paced > 0 {
                return (0, paced);
            }
            // Slots pacing allows at `at`: what is left of its tolerance.
            let used = (p.tat - at as f64).max(0.0);
            let allowed = ((p.tolerance_ms - used) / p.interval_ms).floor().max(0.0) as usize + 1;
            if allowed < free {
                free = allowed;
                wait = 0;
            }
        }
        (free, if free > 0 { 0 } else { wait })
    }

    /// Waits for a slot; `clock` gives the current time in ms. Returns the slot's time.
    pub async fn acquire(&mut self, clock: &(dyn Fn() -> i64 + Sync)) -> i64 {
        loop {
            match self.try_acquire(clock()) {
                Ok(t) => return t,
                Err(wait) => tokio::time::sleep(Duration::from_millis(wait as u64)).await,
            }
        }
    }
}

/// The largest number of timestamps in any closed interval of `window_ms` (for tests and
/// benchmarks checking a recorded log).
pub fn max_in_window(times: &[i64], window_ms: i64) -> usize {
    let mut t = times.to_vec();
    t.sort_unstable();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..t.len() {
        while t[hi] - t[lo] > window_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The extra width of a lane's rate window, learnt from the receiver.
///
/// The receiver counts requests by arrival, and arrival = slot + a delay that varies (our
/// scheduling, the network, the receiver's own queueing). A window of 1 s + guard
/// tolerates a variation of up to the guard, so the right guard is the receiver's: start
/// from the configured one, double it (+10 ms) on every 429, and give 1 ms back for every
/// 100 requests that went through, never below the configured floor.
#[derive(Debug, Clone)]
pub struct AdaptiveGuard {
    floor_ms: i64,
    current_ms: i64,
    clean: u32,
}

/// The widest guard: a quarter of the rate at most.
pub const MAX_GUARD_MS: i64 = 250;

impl AdaptiveGuard {
    pub fn new(floor_ms: i64) -> Self {
        let floor_ms = floor_ms.clamp(0, MAX_GUARD_MS);
        AdaptiveGuard {
            floor_ms,
            current_ms: floor_ms,
            clean: 0,
        }
    }

    pub fn current_ms(&self) -> i64 {
        self.current_ms
    }

    /// The receiver throttled us: widen.
    pub fn throttled(&mut self) -> i64 {
        self.clean = 0;
        self.current_ms = (self.current_ms * 2 + 10).min(MAX_GUARD_MS);
        self.current_ms
    }

    /// A request went through: narrow slowly.
    pub fn succeeded(&mut self) -> i64 {
        self.clean += 1;
        if self.clean >= 100 {
            self.clean = 0;
            self.current_ms = (self.current_ms - 1).max(self.floor_ms);
        }
        self.current_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_widens_on_throttle_and_narrows_slowly_to_its_floor() {
        let mut g = AdaptiveGuard::new(10);
        assert_eq!(g.throttled(), 30);
        assert_eq!(g.throttled(), 70);
        for _ in 0..100 {
            g.succeeded();
        }
        assert_eq!(g.current_ms(), 69);
        for _ in 0..100_000 {
            g.succeeded();
        }
        assert_eq!(g.current_ms(), 10);
        for _ in 0..20 {
            g.throttled();
        }
        assert_eq!(g.current_ms(), MAX_GUARD_MS);
    }

    #[test]
    fn pacing_spreads_slots_and_keeps_the_window() {
        let mut w = SlidingWindow::new(20, 1000).paced(1);
        let mut granted = Vec::new();
        for now in 0..5000 {
            if w.try_acquire(now).is_ok() {
                granted.push(now);
            }
        }
        assert_eq!(max_in_window(&granted, 1000), 20);
        assert!(granted.len() >= 95, "{}", granted.len());
        // One every 50 ms: no gap longer than the interval.
        assert_eq!(&granted[..3], &[0, 50, 100]);
        let gaps: Vec<i64> = granted.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.iter().skip(1).all(|&g| g <= 51), "{gaps:?}");
        assert_eq!(w.free_at(granted[granted.len() - 1]).0, 0);
        // Looking ahead changes nothing.
        let before = w.clone().log;
        let _ = w.free_at(10_000);
        assert_eq!(w.log, before);
    }

    #[test]
    fn widening_after_old_grants_still_counts_them() {
        let mut w = SlidingWindow::new(2, 1010);
        for t in [0, 5, 1020] {
            assert!(w.try_acquire(t).is_ok());
        }
        w.set_window(1030);
        assert!(
            w.try_acquire(1021).is_err(),
            "5 and 1020 are both within 1030 ms of 1021"
        );
        assert!(w.try_acquire(1036).is_ok());
    }

    #[test]
    fn a_wider_window_never_lets_more_through() {
        let mut w = SlidingWindow::new(2, 1000);
        assert!(w.try_acquire(0).is_ok());
        assert!(w.try_acquire(1).is_ok());
        w.set_window(1100);
        assert!(w.try_acquire(1050).is_err());
        assert!(w.try_acquire(1101).is_ok());
    }

    #[test]
    fn never_more_than_limit_in_any_window() {
        let mut w = SlidingWindow::new(20, 1000);
        let mut granted = Vec::new();
        // Ask every millisecond for 5 seconds.
        for now in 0..5000 {
            if w.try_acquire(now).is_ok() {
                granted.push(now);
            }
        }
        assert_eq!(max_in_window(&granted, 1000), 20);
        // And it is not too conservative: about 20 per 1001 ms.
        assert!(granted.len() >= 95, "{}", granted.len());
    }

    #[test]
    fn wait_says_when_the_oldest_leaves() {
        let mut w = SlidingWindow::new(2, 1000);
        assert!(w.try_acquire(0).is_ok());
        assert!(w.try_acquire(10).is_ok());
        assert_eq!(w.try_acquire(500), Err(501));
        assert!(w.try_acquire(1001).is_ok());
    }

    #[test]
    fn seeding_carries_the_window_across_a_restart() {
        let mut w = SlidingWindow::new(3, 1000);
        w.seed([900, 950, 990, 100]);
        assert!(w.try_acquire(1000).is_err());
        assert!(w.try_acquire(1901).is_ok());
    }

    #[test]
    fn a_suspended_slot_counts_everywhere_until_placed_when_it_left() {
        let mut w = SlidingWindow::new(3, 1000);
        for t in [0, 10, 20] {
            assert!(w.try_acquire(t).is_ok());
        }
        // The slot of 0 waits for a connection: it still holds its place in every window.
        assert!(w.suspend(0));
        assert!(w.try_acquire(1005).is_err(), "10, 20 and the pending one");
        assert_eq!(w.free_at(1005).0, 0);
        // Its request left at 1500: logged there, the window ending at 2020 sees it.
        assert_eq!(w.place(1500), 1500);
        assert!(w.try_acquire(1500).is_ok());
        assert!(w.try_acquire(1501).is_ok());
        assert!(
            w.try_acquire(2000).is_err(),
            "1500, 1500 and 1501 in the window"
        );
        assert!(w.try_acquire(2501).is_ok());
        // Nothing to suspend at a time never granted.
        assert!(!w.suspend(7));
    }

    #[test]
    fn only_pending_slots_fill_the_window() {
        let mut w = SlidingWindow::new(2, 1000);
        assert!(w.try_acquire(0).is_ok());
        assert!(w.try_acquire(1).is_ok());
        assert!(w.suspend(0) && w.suspend(1));
        // Long after: the two are still in flight, so nothing may go, whatever the time.
        assert!(w.try_acquire(50_000).is_err());
        w.place(50_001);
        assert!(
            w.try_acquire(50_001).is_err(),
            "one placed, one still pending"
        );
        w.place(50_002);
        assert!(
            w.try_acquire(51_001).is_err(),
            "both placed within the window"
        );
        assert!(w.try_acquire(51_002).is_ok());
    }

    #[test]
    fn every_window_holds_the_limit_with_slots_placed_late() {
        // Every 7th slot waits 400 ms for its connection and is placed when it leaves.
        let mut w = SlidingWindow::new(20, 1000);
        let (mut left, mut waiting) = (Vec::new(), Vec::new());
        for now in 0..10_000 {
            waiting.retain(|&(granted, at): &(i64, i64)| {
                if at == now {
                    w.place(now);
                    left.push(now);
                    let _ = granted;
                    false
                } else {
                    true
                }
            });
            if let Ok(t) = w.try_acquire(now) {
                if t % 7 == 0 && w.suspend(t) {
                    waiting.push((t, now + 400));
                } else {
                    left.push(t);
                }
            }
        }
        assert!(max_in_window(&left, 1000) <= 20);
        assert!(left.len() >= 180, "{}", left.len());
    }

    #[test]
    fn clock_stepping_back_does_not_open_a_burst() {
        let mut w = SlidingWindow::new(2, 1000);
        assert!(w.try_acquire(5000).is_ok());
        assert!(w.try_acquire(5001).is_ok());
        assert!(w.try_acquire(3000).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_paces_on_paused_time() {
        let start = tokio::time::Instant::now();
        let clock = move || start.elapsed().as_millis() as i64;
        let mut w = SlidingWindow::new(20, 1000);
        let mut times = Vec::new();
        for _ in 0..100 {
            times.push(w.acquire(&clock).await);
        }
        assert_eq!(max_in_window(&times, 1000), 20);
        // 100 slots at 20 per window take four full windows (+1 ms each) after the first.
        let last = *times.last().unwrap();
        assert!((4004..4100).contains(&last), "{last}");
    }
}
