//! The last hour of each lane, sampled every few seconds: queue depth, dead letters, and
//! requests, deliveries and failures per interval. The console plots it
//! (`GET /admin/lanes/history`); a person sees a backlog building or an error burst at a
//! glance, where the current numbers alone say nothing about the trend.
//!
//! Kept in memory, in a fixed-size ring per lane (720 samples, about 20 KiB per lane): it
//! costs two small queries per sample and is lost on restart, which is fine for a view of
//! the last hour. The counts come from the attempt log ([`ActivityLog`]), so a sample
//! covers exactly the attempts since the previous one, even when a sample was late or its
//! query failed (the next one then covers both intervals).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::store::activity::ActivityLog;
use crate::store::{Lane, Store};

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Attempts are counted this far behind the sample: by then an attempt's outcome is
/// usually recorded, and its time (the slot, moved to when the request left) is final, so
/// no attempt falls into two windows.
const COUNT_LAG_MS: i64 = 2_000;
/// How far back the history reaches.
pub const KEEP_MS: i64 = 3_600_000;
/// Samples per lane: an hour of them, plus one so the oldest interval's start is kept.
const RING_LEN: usize = (KEEP_MS as usize / 5_000) + 1;

/// One lane at one moment, with what it did since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    /// The length of the window the counts cover (it ends [`COUNT_LAG_MS`] before `at_ms`).
    pub interval_ms: i64,
    /// Items waiting or in flight.
    pub depth: i64,
    /// How long the oldest waiting item has waited.
    pub oldest_age_ms: Option<i64>,
    pub dead: i64,
    pub requests: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// One lane's samples, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSeries {
    pub channel: String,
    pub lane: Lane,
    pub samples: Vec<Sample>,
}

pub struct LaneHistory {
    /// Every configured lane, in display order.
    lanes: Vec<(String, Lane)>,
    store: Arc<dyn Store>,
    activity: Arc<dyn ActivityLog>,
    inner: Mutex<Rings>,
}

#[derive(Default)]
struct Rings {
    by_lane: HashMap<(String, Lane), VecDeque<Sample>>,
    /// Where the next sample's counting window starts.
    last_count_until_ms: Option<i64>,
}

impl LaneHistory {
    pub fn new(
        channels: impl IntoIterator<Item = String>,
        store: Arc<dyn Store>,
        activity: Arc<dyn ActivityLog>,
    ) -> LaneHistory {
        let mut names: Vec<String> = channels.into_iter().collect();
        names.sort();
        let lanes = names
            .into_iter()
            .flat_map(|n| [(n.clone(), Lane::RespondIo), (n, Lane::Provider)])
            .collect();
        LaneHistory {
            lanes,
            store,
            activity,
            inner: Mutex::new(Rings::default()),
        }
    }

    /// Takes one sample of every lane at `now`: depths as they are, attempts of the window
    /// since the previous sample's (both [`COUNT_LAG_MS`] behind). On a store error
    /// nothing is recorded and the next sample's window starts where this one would have.
    pub async fn sample(&self, now: i64) -> crate::store::Result<()> {
        let until = now - COUNT_LAG_MS;
        let since = {
            let rings = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            rings
                .last_count_until_ms
                .unwrap_or(until - SAMPLE_EVERY.as_millis() as i64)
        };
        if until <= since {
            return Ok(()); // the clock went back: wait until it passes the last window
        }
        let stats = self.store.lane_stats().await?;
        let counts = self.activity.attempt_counts(since, until).await?;
        let mut rings = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (channel, lane) in &self.lanes {
            let s = stats
                .iter()
                .find(|s| &s.channel == channel && s.lane == *lane);
            let c = counts
                .iter()
                .find(|c| &c.channel == channel && c.lane == *lane);
            let sample = Sample {
                at_ms: now,
                interval_ms: until - since,
                depth: s.map_or(0, |s| s.pending),
                oldest_age_ms: s
                    .and_then(|s| s.oldest_pending_ms)
                    .map(|t| (now - t).max(0)),
                dead: s.map_or(0, |s| s.dead),
                requests: c.map_or(0, |c| c.requests),
                delivered: c.map_or(0, |c| c.delivered),
                failed: c.map_or(0, |c| c.failed),
            };
            let ring = rings
                .by_lane
                .entry((channel.clone(), *lane))
                .or_insert_with(|| VecDeque::with_capacity(RING_LEN));
            if ring.len() == RING_LEN {
                ring.pop_front();
            }
            ring.push_back(sample);
            while ring.front().is_some_and(|f| f.at_ms < now - KEEP_MS) {
                ring.pop_front();
            }
        }
        rings.last_count_until_ms = Some(until);
        Ok(())
    }

    /// Every lane's samples taken at or after `since_ms`, oldest first; a lane not sampled
    /// yet has none.
    pub fn series(&self, since_ms: i64) -> Vec<LaneSeries> {
        let rings = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.lanes
            .iter()
            .map(|(channel, lane)| LaneSeries {
                channel: channel.clone(),
                lane: *lane,
                samples: rings
                    .by_lane
                    .get(&(channel.clone(), *lane))
                    .map(|r| r.iter().filter(|s| s.at_ms >= since_ms).copied().collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Samples every [`SAMPLE_EVERY`] (the first at once) until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.sample(now_ms()).await {
                tracing::warn!(error = %e, "lane history sample failed; the next one covers its interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Result;
    use crate::store::activity::AttemptCounts;
    use async_trait::async_trait;

    /// A log that answers with fixed counts for one lane and remembers the windows asked.
    struct FixedLog {
        asked: Mutex<Vec<(i64, i64)>>,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl ActivityLog for FixedLog {
        async fn attempt_counts(&self, since: i64, until: i64) -> Result<Vec<AttemptCounts>> {
            self.asked.lock().unwrap().push((since, until));
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::StoreError::Unavailable("disk gone".into()));
            }
            Ok(vec![AttemptCounts {
                channel: "sms".into(),
                lane: Lane::Provider,
                requests: 4,
                delivered: 3,
                failed: 1,
            }])
        }
    }

    /// A history over a real (empty) store; keep the directory while it is used.
    fn history(log: Arc<FixedLog>) -> (LaneHistory, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::StoreConfig {
            path: dir.path().join("h.db"),
            ..Default::default()
        };
        let store = Arc::new(crate::store::sqlite::SqliteStore::open(&cfg).unwrap());
        (LaneHistory::new(["sms".to_string()], store, log), dir)
    }

    fn log() -> Arc<FixedLog> {
        Arc::new(FixedLog {
            asked: Mutex::new(Vec::new()),
            fail: false.into(),
        })
    }

    #[tokio::test]
    async fn samples_every_lane_and_counts_each_interval_once() {
        let log = log();
        let (h, _dir) = history(log.clone());
        h.sample(100_000).await.unwrap();
        h.sample(105_000).await.unwrap();
        h.sample(112_000).await.unwrap();
        assert_eq!(
            *log.asked.lock().unwrap(),
            vec![(93_000, 98_000), (98_000, 103_000), (103_000, 110_000)]
        );
        let series = h.series(0);
        assert_eq!(series.len(), 2);
        assert_eq!(
            (series[0].channel.as_str(), series[0].lane),
            ("sms", Lane::RespondIo)
        );
        assert!(series[0].samples.iter().all(|s| s.requests == 0));
        let p = &series[1].samples;
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].interval_ms, 7_000);
        assert_eq!((p[2].requests, p[2].delivered, p[2].failed), (4, 3, 1));
        assert_eq!(h.series(105_000)[1].samples.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_sample_leaves_its_interval_to_the_next() {
        let log = log();
        let (h, _dir) = history(log.clone());
        h.sample(100_000).await.unwrap();
        log.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(h.sample(105_000).await.is_err());
        log.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        h.sample(110_000).await.unwrap();
        let asked = log.asked.lock().unwrap().clone();
        assert_eq!(asked.last(), Some(&(98_000, 108_000)));
        let p = &h.series(0)[1].samples;
        assert_eq!(
            p.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            [100_000, 110_000]
        );
        assert_eq!(p[1].interval_ms, 10_000);
    }

    #[tokio::test]
    async fn keeps_one_hour_and_ignores_a_clock_going_back() {
        let log = log();
        let (h, _dir) = history(log.clone());
        let start = 10_000_000;
        let mut t = start;
        for _ in 0..(RING_LEN + 50) {
            h.sample(t).await.unwrap();
            t += 5_000;
        }
        let p = &h.series(0)[1].samples;
        assert_eq!(p.len(), RING_LEN);
        let last = p.last().unwrap().at_ms;
        assert!(p.first().unwrap().at_ms >= last - KEEP_MS);
        // A long gap (the process was stopped): samples older than an hour go at once.
        h.sample(last + KEEP_MS - 1_000).await.unwrap();
        assert_eq!(h.series(0)[1].samples.len(), 2);
        // The clock went back: nothing is sampled, nothing is asked.
        let asked = log.asked.lock().unwrap().len();
        h.sample(last).await.unwrap();
        assert_eq!(log.asked.lock().unwrap().len(), asked);
    }
}
