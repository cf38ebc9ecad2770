//! `take_head` as a lane calls it, for tests that drive the store by hand: under the
//! lane's current tenure, with the default crash policy and a deadline a minute after `at_ms`.

use rio_bridge::store::{CrashPolicy, Item, Lane, Result, Store, TakeHead};

pub trait TakeHeadExt {
    async fn take_items(
        &self,
        ch: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
        at_ms: i64,
    ) -> Result<Vec<Item>>;
}

impl<S: Store + ?Sized> TakeHeadExt for S {
    async fn take_items(
        &self,
        ch: &str,
        lane: Lane,
        qkey: &str,
        limit: usize,
        at_ms: i64,
    ) -> Result<Vec<Item>> {
        let how = TakeHead {
            limit,
            at_ms,
            deadline_ms: at_ms + 60_000,
            epoch: self.lane_epoch(ch, lane),
            crash: CrashPolicy::default(),
        };
        Ok(self.take_head(ch, lane, qkey, how).await?.items())
    }
}
