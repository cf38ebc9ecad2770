//! Per-channel sliding-window rate limiting and its offline counterpart for tests.
//!
//! The Overview states "The rate limit for a Custom Channel is set at 20 requests per second"
//! [DOC seed]. [UNK] open question 5: which direction and scope it counts. The emulator's reading:
//! per channel, on the inbound webhook, as a *sliding* one-second window (the strictest reading —
//! a fixed-window limiter would allow 40 in a second straddling a boundary), and every
//! authenticated request counts, including those answered 429 (a client that keeps hammering
//! stays blocked).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The limiter's window.
pub(super) const WINDOW: Duration = Duration::from_secs(1);

/// Arrival instants of the requests of one channel still inside the window.
#[derive(Debug, Default)]
pub(super) struct SlidingWindow {
    hits: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Counts a request arriving at `now`. `Ok` if at most `limit` requests (this one included)
    /// arrived in the last [`WINDOW`]; otherwise `Err(wait)`, how long the client must stay quiet
    /// before one more request fits. `limit == 0` means unlimited.
    pub(super) fn hit(&mut self, now: Instant, limit: u32) -> Result<(), Duration> {
        while self
            .hits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
        {
            self.hits.pop_front();
        }
        let limit = limit as usize;
        let over = limit != 0 && self.hits.len() >= limit;
        self.hits.push_back(now);
        if !over {
            return Ok(());
        }
        // A later request fits once at most limit-1 hits remain in its window, i.e. once the
        // (len - limit)-th oldest hit (0-based, this one included) has left the window.
        let pivot = self.hits[self.hits.len() - limit];
        Err((pivot + WINDOW).saturating_duration_since(now))
    }
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1 (0 would invite an immediate
/// retry that is still over the limit).
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// For tests: max number of accepted+rejected calls for `channel` in any sliding window of
/// `window_ms` (computed from arrival times).
///
/// A window is half-open, `[t, t + window_ms)`: two arrivals exactly `window_ms` apart are never
/// in the same window, the same convention the emulator's limiter uses. Input need not be sorted.
/// Returns 0 for an empty input or a non-positive window.
pub fn max_in_window(arrivals_ms: &[i64], window_ms: i64) -> usize {
    if window_ms <= 0 {
        return 0;
    }
    let mut sorted = arrivals_ms.to_vec();
    sorted.sort_unstable();
    let mut start = 0;
    let mut best = 0;
    for (end, &t) in sorted.iter().enumerate() {
        while t - sorted[start] >= window_ms {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_in_window_empty_and_single() {
        assert_eq!(max_in_window(&[], 1000), 0);
        assert_eq!(max_in_window(&[5], 1000), 1);
    }

    #[test]
    fn max_in_window_window_is_half_open() {
        // Exactly one window apart: never together.
        assert_eq!(max_in_window(&[0, 1000, 2000], 1000), 1);
        // One millisecond closer: together.
        assert_eq!(max_in_window(&[0, 999], 1000), 2);
    }

    #[test]
    fn max_in_window_finds_the_densest_window_anywhere() {
        // 3 early, then 5 packed near t=5000 (straddling no fixed boundary), then 2 late.
        let arrivals = [0, 10, 20, 4990, 5000, 5100, 5500, 5989, 7000, 7001];
        assert_eq!(max_in_window(&arrivals, 1000), 5);
        assert_eq!(max_in_window(&arrivals, 100), 3);
        assert_eq!(max_in_window(&arrivals, 1_000_000), arrivals.len());
    }

    #[test]
    fn max_in_window_sorts_its_input_and_counts_equal_times() {
        assert_eq!(max_in_window(&[900, 100, 500, 500, 2000], 1000), 4);
    }

    #[test]
    fn max_in_window_non_positive_window_is_zero() {
        assert_eq!(max_in_window(&[1, 2, 3], 0), 0);
        assert_eq!(max_in_window(&[1, 2, 3], -5), 0);
    }

    #[test]
    fn sliding_window_admits_limit_then_rejects_with_wait() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..3 {
            assert_eq!(w.hit(t0 + Duration::from_millis(i * 100), 3), Ok(()));
        }
        // 4th at 300 ms: over; the hit at 100 ms must leave first → wait until 1100 ms.
        let wait = w.hit(t0 + Duration::from_millis(300), 3);
        assert_eq!(wait, Err(Duration::from_millis(800)));
        // The rejected hit counts too: at 1050 ms the hits at 100, 200, 300 are still inside.
        assert!(w.hit(t0 + Duration::from_millis(1050), 3).is_err());
        // At 2000 ms only the 1050 ms hit remains.
        assert_eq!(w.hit(t0 + Duration::from_millis(2000), 3), Ok(()));
    }

    #[test]
    fn sliding_window_zero_limit_is_unlimited() {
        let now = Instant::now();
        let mut w = SlidingWindow::default();
        assert!((0..1000).all(|_| w.hit(now, 0).is_ok()));
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
