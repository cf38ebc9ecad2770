//! Wall-clock milliseconds since the Unix epoch: the unit of every timestamp we store and of
//! respond.io's `timestamp` field.

// now_ms lives in the parser crate (providers' webhook readers need it); re-exported here.
pub use rio_parse::clock::{now_ms, step_wall_clock};

/// Wall-clock microseconds since the Unix epoch (latency measurements across components).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        + rio_parse::clock::wall_step_ms() * 1000
}

/// Milliseconds on this process's monotonic clock (tokio's, so tests on paused time see it
/// move with their sleeps); never 0. What runs on it: the lanes' rate windows, their 429
/// pauses and circuit probes. A wall-clock step (NTP) moves none of them.
pub fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(start)
        .as_millis() as i64
        + 1
}

/// A stored wall-clock time (epoch ms) as a deadline on [`mono_ms`], read now.
pub fn wall_to_mono(wall_ms: i64) -> i64 {
    mono_ms().saturating_add(wall_ms.saturating_sub(now_ms()))
}

/// A [`mono_ms`] time as wall-clock epoch ms, read now (for what is stored or shown).
pub fn mono_to_wall(mono: i64) -> i64 {
    now_ms().saturating_add(mono.saturating_sub(mono_ms()))
}

/// Wall-clock epoch ms that never step back: after the system clock steps back, it keeps
/// counting on the monotonic clock from where it was. The lanes compare and write their
/// queues' due times with it, so a step back does not leave every queue that was due
/// before it waiting for the wall clock to catch up. (A step forward makes due at once what
/// was due within the step; pauses and rate windows do not move, they are monotonic.)
pub fn steady_wall_ms() -> i64 {
    static MAX_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    let mono = mono_ms();
    let offset = now_ms() - mono;
    let seen = MAX_OFFSET.fetch_max(offset, std::sync::atomic::Ordering::AcqRel);
    mono + seen.max(offset)
}
