//! What each lane did in a time window, from the attempt log: the numbers behind the
//! console's rate and error plots (see `crate::lane_history`).

use async_trait::async_trait;
use rusqlite::params;

use super::sqlite::SqliteStore;
use super::{Lane, Result};

/// A lane's attempts whose request time falls in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptCounts {
    pub channel: String,
    pub lane: Lane,
    /// Requests that left (a batch of several items counts once).
    pub requests: i64,
    /// Items the other side accepted.
    pub delivered: i64,
    /// Items whose attempt failed: to be retried, ambiguous, throttled, a lane fault, or
    /// dead-lettered. An attempt still in flight counts as a request only.
    pub failed: i64,
}

#[async_trait]
pub trait ActivityLog: Send + Sync + 'static {
    /// Counts per lane of the attempts with `since_ms <= at_ms < until_ms`; lanes with no
    /// attempt in the window are left out.
    async fn attempt_counts(&self, since_ms: i64, until_ms: i64) -> Result<Vec<AttemptCounts>>;
}

#[async_trait]
impl ActivityLog for SqliteStore {
    async fn attempt_counts(&self, since_ms: i64, until_ms: i64) -> Result<Vec<AttemptCounts>> {
        // One range scan of the window on attempts_at (at_ms).
        self.read(move |conn| {
            conn.prepare_cached(super::sqlite::sql::ATTEMPT_COUNTS)?
                .query_map(params![since_ms, until_ms], |r| {
                    Ok(AttemptCounts {
                        channel: r.get(0)?,
                        lane: Lane::from_code(r.get(1)?),
                        requests: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                        delivered: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                        failed: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                    })
                })?
                .collect()
        })
        .await
    }
}
