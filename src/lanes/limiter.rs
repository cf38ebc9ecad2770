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
    log: VecDeque<i64>,
}

impl SlidingWindow {
    pub fn new(limit: u32, window_ms: i64) -> Self {
        let limit = limit.max(1) as usize;
        SlidingWindow {
            limit,
            window_ms,
            log: VecDeque::with_capacity(limit),
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

    /// Takes a slot at `now` if one is free; otherwise says how many ms to wait.
    /// Any closed interval of `window_ms` holds at most `limit` granted slots.
    pub fn try_acquire(&mut self, now: i64) -> Result<i64, i64> {
        // A clock that steps back must not let a burst through: never record before the last.
        let now = self.log.back().map_or(now, |&last| now.max(last));
        while self.log.front().is_some_and(|&t| t < now - self.window_ms) {
            self.log.pop_front();
        }
        if self.log.len() < self.limit {
            self.log.push_back(now);
            Ok(now)
        } else {
            let oldest = self.log.front().copied().unwrap_or(now);
            Err((oldest + self.window_ms + 1 - now).max(1))
        }
    }

    /// How many slots are free at `now`, and if none, how long until one is.
    pub fn free_at(&mut self, now: i64) -> (usize, i64) {
        let now = self.log.back().map_or(now, |&last| now.max(last));
        while self.log.front().is_some_and(|&t| t < now - self.window_ms) {
            self.log.pop_front();
        }
        let free = self.limit - self.log.len();
        let wait = self
            .log
            .front()
            .map_or(0, |&oldest| (oldest + self.window_ms + 1 - now).max(1));
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
