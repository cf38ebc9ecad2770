//! Retry timing: exponential backoff with jitter, and Retry-After clamping.

use std::time::Duration;

use rand::Rng;

/// Delay before the next try after `failures` failed attempts (1-based): base·2^(n−1),
/// capped, then jittered into [d/2, d] so a burst of failures does not retry in lockstep.
pub fn backoff_ms(failures: u32, base_ms: u64, max_ms: u64) -> i64 {
    let exp = base_ms
        .saturating_mul(1u64 << failures.saturating_sub(1).min(30))
        .min(max_ms);
    let lo = exp / 2;
    rand::rng().random_range(lo..=exp.max(lo)) as i64
}

/// The longest pause a Retry-After may impose; longer answers are clamped (a broken header
/// must not stop a channel for a day).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// How long to pause a lane on a 429: the server's Retry-After (clamped), else one second
/// (the width of respond.io's rate window).
pub fn throttle_pause_ms(retry_after: Option<Duration>) -> i64 {
    match retry_after {
        Some(d) => d.min(MAX_RETRY_AFTER).as_millis().max(50) as i64,
        None => 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        for _ in 0..200 {
            let d1 = backoff_ms(1, 1000, 60_000);
            assert!((500..=1000).contains(&d1), "{d1}");
            let d3 = backoff_ms(3, 1000, 60_000);
            assert!((2000..=4000).contains(&d3), "{d3}");
            let d20 = backoff_ms(20, 1000, 60_000);
            assert!((30_000..=60_000).contains(&d20), "{d20}");
        }
    }

    #[test]
    fn retry_after_is_clamped() {
        assert_eq!(throttle_pause_ms(Some(Duration::from_secs(2))), 2000);
        assert_eq!(
            throttle_pause_ms(Some(Duration::from_secs(86_400))),
            900_000
        );
        assert_eq!(throttle_pause_ms(None), 1000);
    }
}
