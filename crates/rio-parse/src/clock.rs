//! Wall-clock milliseconds since the Unix epoch: the unit of every timestamp we store and of
//! respond.io's `timestamp` field (a webhook without a usable time is stamped "now").

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
