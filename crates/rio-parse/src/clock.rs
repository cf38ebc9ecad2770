//! Wall-clock milliseconds since the Unix epoch: the unit of every timestamp we store and of
//! respond.io's `timestamp` field (a webhook without a usable time is stamped "now").

/// 9999-12-31T23:59:59Z in epoch ms: later than any real clock, far from any overflow.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_000;

/// Whether a timestamp read from outside input can be a real time: after 1970 and before
/// the year 10000. Readers treat anything else as unreadable ("now"): respond.io orders a
/// conversation by it, and a negative or 19-digit value is no time at all.
pub fn plausible_ms(ms: i64) -> bool {
    (1..=MAX_TIMESTAMP_MS).contains(&ms)
}

/// How far this process's wall clock has been stepped (see [`step_wall_clock`]).
static WALL_STEP_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        + wall_step_ms()
}

/// Steps this process's wall clock by `ms` (negative: back), as an NTP step does to the
/// system clock: every later [`now_ms`] reads it, monotonic time does not move. For tests
/// of what a clock step does to a running gateway; nothing else calls it.
pub fn step_wall_clock(ms: i64) {
    WALL_STEP_MS.fetch_add(ms, std::sync::atomic::Ordering::AcqRel);
}

/// The sum of the steps so far (0 unless a test stepped the clock).
pub fn wall_step_ms() -> i64 {
    WALL_STEP_MS.load(std::sync::atomic::Ordering::Acquire)
}
