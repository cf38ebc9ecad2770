//! Wall-clock milliseconds since the Unix epoch: the unit of every timestamp we store and of
//! respond.io's `timestamp` field.

// now_ms lives in the parser crate (providers' webhook readers need it); re-exported here.
pub use rio_parse::clock::now_ms;

/// Wall-clock microseconds since the Unix epoch (latency measurements across components).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
