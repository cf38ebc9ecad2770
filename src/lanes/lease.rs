//! Lane ownership. A lane runs on the node that holds its lease, so its rate limit and its
//! per-contact order hold for the whole cluster.
//!
//! A keeper per lane tries to acquire the lease; once it has it, it recovers what the
//! previous owner left in flight, seeds the rate limiter from the shared attempt log, runs
//! the lane and renews the lease. The node may send only until `lease asked at + TTL -
//! margin` on its own monotonic clock: the database counts the TTL from a later moment (it
//! received the request after we sent it), so the node stops sending at least `margin`
//! before any other node can take the lane, however long this node was paused. A renewal
//! that fails leaves that deadline where it was; a lost lease stops the lane at once.
//!
//! A single-node store (SQLite) grants every lane for good: the keeper recovers and runs
//! each lane once, as the whole process did before there were leases.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{LaneCtx, LaneRunner};
use crate::store::{CrashPolicy, LeaseGrant};

/// Milliseconds on this process's monotonic clock (never 0, which means "never").
pub fn mono_ms() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as i64 + 1
}

/// How a node keeps its lanes.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// Stop sending this long before the lease would expire unrenewed.
    pub margin_ms: i64,
    /// How often a standby node tries to take a lane over.
    pub retry_ms: i64,
}

impl LeaseTiming {
    pub fn from_config(cfg: &crate::config::StoreConfig) -> LeaseTiming {
        LeaseTiming {
            margin_ms: cfg.lease_margin_ms as i64,
            retry_ms: (cfg.lease_ttl_ms as i64 / 5).clamp(100, 2_000),
        }
    }
}

/// Owns the lane whenever it can until `shutdown`, then gives it up.
pub async fn keep(
    ctx: Arc<LaneCtx>,
    policy: CrashPolicy,
    timing: LeaseTiming,
    shutdown: CancellationToken,
) {
    let mut was_standby = false;
    while !shutdown.is_cancelled() {
        let asked = mono_ms();
        match ctx.store.acquire_lane(&ctx.channel, ctx.lane).await {
            Ok(Some(grant)) => {
                ctx.standby.store(false, Ordering::Release);
                was_standby = false;
                tenure(&ctx, grant, asked, policy, timing, &shutdown).await;
            }
            Ok(None) => {
                if !was_standby {
                    tracing::info!(channel = %ctx.channel, lane = ctx.lane.name(),
                        "lane owned by another node: standing by");
                }
                was_standby = true;
                ctx.standby.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e,
                    "cannot acquire the lane's lease; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(timing.retry_ms as u64)) => {}
        }
    }
    ctx.standby.store(false, Ordering::Release);
    if let Err(e) = ctx.store.release_lane(&ctx.channel, ctx.lane).await {
        tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e,
            "could not give the lane up; another node takes it when the lease expires");
    }
}

/// One stretch of ownership: recover, seed, run, renew; returns when the lane stopped.
async fn tenure(
    ctx: &Arc<LaneCtx>,
    grant: LeaseGrant,
    asked: i64,
    policy: CrashPolicy,
    timing: LeaseTiming,
    shutdown: &CancellationToken,
) {
    ctx.tenure.fetch_add(1, Ordering::AcqRel);
    ctx.epoch.store(grant.epoch, Ordering::Release);
    let until = match grant.ttl_ms {
        Some(ttl) => asked + ttl as i64 - timing.margin_ms,
        None => i64::MAX,
    };
    ctx.lease_until.store(until, Ordering::Release);
    // Recovery first (the previous owner's in-flight items become ambiguous, its claims
    // are released), then the limiter is seeded from the shared attempt log, which now
    // includes the previous owner's last requests.
    let runner = async {
        let report = ctx
            .store
            .recover_lane(&ctx.channel, ctx.lane, policy)
            .await?;
        if report.resent + report.failed > 0 {
            tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), resent = report.resent, failed = report.failed,
                "items were in flight when the lane's last owner stopped: their next attempt is marked ambiguous");
        }
        LaneRunner::new(ctx.clone()).await
    }
    .await;
    let runner = match runner {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e,
                "cannot start the lane after acquiring it; giving it up");
            ctx.lease_until.store(0, Ordering::Release);
            let _ = ctx.store.release_lane(&ctx.channel, ctx.lane).await;
            return;
        }
    };
    if grant.ttl_ms.is_some() {
        tracing::info!(channel = %ctx.channel, lane = ctx.lane.name(), epoch = grant.epoch, "lane acquired");
    }
    let stop = shutdown.child_token();
    let renewer = grant.ttl_ms.map(|ttl| {
        tokio::spawn(renew(
            ctx.clone(),
            ttl as i64,
            timing.margin_ms,
            stop.clone(),
        ))
    });
    runner.run(stop.clone()).await;
    stop.cancel();
    if let Some(r) = renewer {
        r.abort();
    }
    ctx.lease_until.store(0, Ordering::Release);
    ctx.tenure.fetch_add(1, Ordering::AcqRel);
}

/// Renews the lease about three times per usable lease time; stops the lane when the
/// lease is lost or its deadline passes without a renewal.
async fn renew(ctx: Arc<LaneCtx>, ttl_ms: i64, margin_ms: i64, stop: CancellationToken) {
    let every = Duration::from_millis(((ttl_ms - margin_ms) / 3).max(50) as u64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let asked = mono_ms();
        match ctx.store.renew_lane(&ctx.channel, ctx.lane).await {
            Ok(true) => ctx
                .lease_until
                .store(asked + ttl_ms - margin_ms, Ordering::Release),
            Ok(false) => {
                tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), "lane lease lost: stopping the lane");
                ctx.lease_until.store(0, Ordering::Release);
                stop.cancel();
                return;
            }
            Err(e) => {
                let left = ctx.lease_until.load(Ordering::Acquire) - mono_ms();
                tracing::warn!(channel = %ctx.channel, lane = ctx.lane.name(), error = %e, left_ms = left,
                    "cannot renew the lane's lease");
                if left <= 0 {
                    stop.cancel();
                    return;
                }
            }
        }
    }
}
