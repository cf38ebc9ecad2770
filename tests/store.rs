//! Store behaviour through the `Store` trait: dedupe, FIFO claims, the status machine,
//! parked receipts, collapse of statuses, crash recovery. Every test runs against both
//! backends (`sqlite::*` on a real file, `postgres::*` in a schema of its own), then the
//! PostgreSQL-only tests check what several nodes sharing one database need: lease
//! takeover, fencing, concurrent claims and ingest.

#[path = "common/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rio_bridge::config::{OnCrash, StoreConfig};
use rio_bridge::respondio::wire::StatusValue;
use rio_bridge::store::postgres::PgStore;
use rio_bridge::store::sqlite::SqliteStore;
use rio_bridge::store::*;

#[path = "common/take.rs"]
mod take;
use take::TakeHeadExt;

/// Channels the tests use; `Fixture::open` takes their lanes, as a node's keeper would.
const CHANNELS: [&str; 4] = ["ch", "other", "resend", "fail"];
/// Short, so takeover tests need not wait long; single-store tests never renew, and the
/// fence checks the epoch, not the clock, so an expired but untaken lease still writes.
const TEST_LEASE_TTL_MS: u64 = 400;

enum Fixture {
    Sqlite(tempfile::TempDir),
    Pg(pg::PgSchema),
}

impl Fixture {
    fn sqlite() -> Fixture {
        Fixture::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Fixture {
        Fixture::Pg(pg::PgSchema::create().await)
    }

    fn cfg(&self) -> StoreConfig {
        self.cfg_with_ttl(TEST_LEASE_TTL_MS)
    }

    fn cfg_with_ttl(&self, lease_ttl_ms: u64) -> StoreConfig {
        let mut cfg = StoreConfig {
            lease_ttl_ms,
            lease_margin_ms: 100,
            pool_size: 8,
            ..StoreConfig::default()
        };
        match self {
            Fixture::Sqlite(dir) => cfg.path = dir.path().join("t.db"),
            Fixture::Pg(schema) => {
                cfg.url = Some(rio_bridge::secret::Secret::new(schema.url.clone()))
            }
        }
        cfg
    }

    /// A store (a node) that holds no lane.
    async fn open_node(&self) -> Arc<dyn Store> {
        self.open_node_with(self.cfg()).await
    }

    async fn open_node_with(&self, cfg: StoreConfig) -> Arc<dyn Store> {
        match &cfg.url {
            Some(url) => Arc::new(PgStore::connect(&cfg, url.expose()).await.expect("connect")),
            None => Arc::new(SqliteStore::open(&cfg).expect("open store")),
        }
    }

    /// A store holding every lane of the test channels that no other store holds.
    async fn open(&self) -> Arc<dyn Store> {
        let store = self.open_node().await;
        for ch in CHANNELS {
            for lane in [Lane::RespondIo, Lane::Provider] {
                store.acquire_lane(ch, lane).await.unwrap();
            }
        }
        store
    }
}

/// Runs each named test once per backend: `sqlite::name` and `postgres::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(&super::Fixture::sqlite()).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
            async fn $name() {
                super::$name(&super::Fixture::postgres().await).await;
            })*
        }
    };
}

fn inbound(key: &str, contact: &str, mid: &str) -> NewInbound {
    NewInbound {
        dedupe_key: key.into(),
        contact: contact.into(),
        kind: ItemKind::Message,
        mid: mid.into(),
        event_json: format!(
            r#"{{"type":"message","mId":"{mid}","timestamp":1767225600000,"message":{{"type":"text","text":"{mid}"}}}}"#
        ),
        contact_json: None,
        provider_id: key.into(),
    }
}

fn outbound(mid: &str, contact: &str) -> NewOutbound {
    NewOutbound {
        mid: mid.into(),
        contact: contact.into(),
        message_json: r#"{"type":"text","text":"hi"}"#.into(),
    }
}

/// Sends `mid` through the provider lane as accepted with `pid`.
async fn send_ok(store: &Arc<dyn Store>, contact: &str, pid: &str) {
    let batch = store
        .claim("ch", Lane::Provider, i64::MAX / 2, [10, 10])
        .await
        .unwrap();
    let (qkey, _) = batch
        .claimed
        .iter()
        .find(|(q, _)| q == contact)
        .cloned()
        .expect("claimed");
    let items = store
        .take_items("ch", Lane::Provider, &qkey, 1, 1)
        .await
        .unwrap();

    store
        .finish(
            "ch",
            Lane::Provider,
            &qkey,
            &[items[0].id],
            Finish::Done {
                provider_id: Some(pid.into()),
            },
            1,
            5,
        )
        .await
        .unwrap();
}

fn receipt(key: &str, pid: &str, status: StatusValue) -> ReceiptIn {
    ReceiptIn {
        dedupe_key: key.into(),
        provider_id: pid.into(),
        status: Some(status),
        reason: Some("why".into()),
    }
}

async fn pending_statuses(store: &Arc<dyn Store>, mid: &str) -> Vec<String> {
    let qkey = status_qkey(mid);
    store
        .head_items("ch", Lane::RespondIo, &qkey, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.payload)
        .collect()
}

async fn redelivered_webhook_is_a_duplicate(fx: &Fixture) {
    let store = fx.open().await;
    let r = store
        .ingest_inbound("ch", vec![inbound("k1", "+61400000001", "m1")])
        .await
        .unwrap();
    assert!(matches!(r[0], IngestResult::Stored { .. }));
    let r = store
        .ingest_inbound("ch", vec![inbound("k1", "+61400000001", "m2")])
        .await
        .unwrap();
    assert_eq!(r[0], IngestResult::Duplicate);
    // The same key on another channel is another webhook.
    let r = store
        .ingest_inbound("other", vec![inbound("k1", "+61400000001", "m3")])
        .await
        .unwrap();
    assert!(matches!(r[0], IngestResult::Stored { .. }));
}

async fn a_contact_queue_is_fifo_and_claimed_once(fx: &Fixture) {
    let store = fx.open().await;
    let items: Vec<_> = (0..5)
        .map(|i| inbound(&format!("k{i}"), "+61400000001", &format!("m{i}")))
        .collect();
    store.ingest_inbound("ch", items).await.unwrap();
    store
        .ingest_inbound("ch", vec![inbound("x", "+61400000002", "other")])
        .await
        .unwrap();
    let now = rio_bridge::clock::now_ms() + 1;
    let batch = store
        .claim("ch", Lane::RespondIo, now, [10, 10])
        .await
        .unwrap();
    assert_eq!(
        batch.claimed.len(),
        2,
        "one entry per contact, not per message"
    );
    // Claimed queues are not handed out twice.
    assert!(
        store
            .claim("ch", Lane::RespondIo, now, [10, 10])
            .await
            .unwrap()
            .claimed
            .is_empty()
    );
    let q = message_qkey("+61400000001");
    let head = store
        .take_items("ch", Lane::RespondIo, &q, 3, now)
        .await
        .unwrap();
    assert_eq!(
        head.iter().map(|i| i.mid.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    let ids: Vec<i64> = head.iter().map(|i| i.id).collect();

    let more = store
        .finish(
            "ch",
            Lane::RespondIo,
            &q,
            &ids,
            Finish::Done { provider_id: None },
            now,
            1,
        )
        .await
        .unwrap();
    assert!(more);
    let head = store
        .head_items("ch", Lane::RespondIo, &q, 10)
        .await
        .unwrap();
    assert_eq!(
        head.iter().map(|i| i.mid.as_str()).collect::<Vec<_>>(),
        ["m3", "m4"]
    );
}

async fn a_retry_hands_the_queue_back_with_its_due_time(fx: &Fixture) {
    let store = fx.open().await;
    store
        .ingest_inbound("ch", vec![inbound("k", "+61400000001", "m")])
        .await
        .unwrap();
    let now = rio_bridge::clock::now_ms() + 1;
    let q = message_qkey("+61400000001");
    store
        .claim("ch", Lane::RespondIo, now, [10, 10])
        .await
        .unwrap();
    let head = store
        .take_items("ch", Lane::RespondIo, &q, 1, now)
        .await
        .unwrap();

    let fin = Finish::Retry {
        next_ms: now + 60_000,
        error: "503".into(),
        ambiguous: true,
        counted: true,
        outcome: "ambiguous",
        pause_lane_until: None,
    };
    assert!(
        !store
            .finish("ch", Lane::RespondIo, &q, &[head[0].id], fin, now, 1)
            .await
            .unwrap()
    );
    let b = store
        .claim("ch", Lane::RespondIo, now, [10, 10])
        .await
        .unwrap();
    assert!(b.claimed.is_empty(), "not due yet");
    assert_eq!(b.next_due_ms, Some(now + 60_000));
    let b = store
        .claim("ch", Lane::RespondIo, now + 60_000, [10, 10])
        .await
        .unwrap();
    assert_eq!(b.claimed.len(), 1);
    let item = store.item_by_mid("ch", "m").await.unwrap().unwrap();
    assert_eq!((item.attempts, item.ambiguous), (1, 1));
}

async fn bulk_sends_are_promoted_when_the_contact_writes_in(fx: &Fixture) {
    let store = fx.open().await;
    store
        .accept_outbound("ch", outbound("b1", "+61400000001"), 3_600_000)
        .await
        .unwrap();
    store
        .accept_outbound("ch", outbound("b2", "+61400000002"), 3_600_000)
        .await
        .unwrap();
    let far = i64::MAX / 2;
    // Both are bulk: nobody wrote in.
    let b = store
        .claim("ch", Lane::Provider, far, [10, 0])
        .await
        .unwrap();
    assert!(b.claimed.is_empty());
    store
        .ingest_inbound("ch", vec![inbound("k", "+61400000002", "in")])
        .await
        .unwrap();
    let b = store
        .claim("ch", Lane::Provider, far, [10, 0])
        .await
        .unwrap();
    assert_eq!(b.claimed, vec![("+61400000002".to_string(), 0)]);
    // A new send to a contact in conversation starts in class 0.
    store
        .accept_outbound("ch", outbound("c1", "+61400000002"), 3_600_000)
        .await
        .unwrap();
    let item = store.item_by_mid("ch", "c1").await.unwrap().unwrap();
    assert_eq!(item.qkey, "+61400000002");
}

async fn statuses_only_move_forward_and_collapse(fx: &Fixture) {
    let store = fx.open().await;
    store
        .accept_outbound("ch", outbound("m1", "+61400000001"), 0)
        .await
        .unwrap();
    send_ok(&store, "+61400000001", "P1").await;
    let r = store
        .apply_receipts(
            "ch",
            vec![
                receipt("a", "P1", StatusValue::Delivered),
                receipt("b", "P1", StatusValue::Read),
                receipt("c", "P1", StatusValue::Delivered),
                receipt("d", "P1", StatusValue::Failed),
                receipt("a", "P1", StatusValue::Delivered),
            ],
        )
        .await
        .unwrap();
    assert!(matches!(
        r[0],
        ReceiptResult::Forwarded {
            status: StatusValue::Delivered,
            ..
        }
    ));
    assert!(matches!(
        r[1],
        ReceiptResult::Forwarded {
            status: StatusValue::Read,
            ..
        }
    ));
    assert!(matches!(r[2], ReceiptResult::Ignored { .. }), "{:?}", r[2]);
    assert!(
        matches!(r[3], ReceiptResult::Ignored { .. }),
        "failed after delivered is not forwarded"
    );
    assert_eq!(r[4], ReceiptResult::Duplicate);
    // delivered and read collapsed into one pending status: read.
    let pending = pending_statuses(&store, "m1").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].contains(r#""value":"read""#), "{}", pending[0]);
    assert_eq!(
        store.item_by_mid("ch", "m1").await.unwrap().unwrap().status,
        3
    );
}

async fn a_receipt_that_beats_its_send_is_parked_then_applied(fx: &Fixture) {
    let store = fx.open().await;
    store
        .accept_outbound("ch", outbound("m1", "+61400000001"), 0)
        .await
        .unwrap();
    let r = store
        .apply_receipts("ch", vec![receipt("early", "P9", StatusValue::Delivered)])
        .await
        .unwrap();
    assert_eq!(r[0], ReceiptResult::Parked);
    assert!(pending_statuses(&store, "m1").await.is_empty());
    send_ok(&store, "+61400000001", "P9").await;
    let pending = pending_statuses(&store, "m1").await;
    assert_eq!(pending.len(), 1);
    assert!(pending[0].contains(r#""value":"delivered""#));
}

async fn a_send_that_dies_after_its_200_reports_failed(fx: &Fixture) {
    let store = fx.open().await;
    store
        .accept_outbound("ch", outbound("m1", "+61400000001"), 0)
        .await
        .unwrap();
    store
        .accept_outbound("ch", outbound("m2", "+61400000002"), 0)
        .await
        .unwrap();
    let far = i64::MAX / 2;
    store
        .claim("ch", Lane::Provider, far, [10, 10])
        .await
        .unwrap();
    for (contact, report) in [("+61400000001", true), ("+61400000002", false)] {
        let it = store
            .take_items("ch", Lane::Provider, contact, 1, 1)
            .await
            .unwrap()
            .remove(0);

        let fin = Finish::Dead {
            reason: "INVALID_RECIPIENT".into(),
            report_failed: report,
            ambiguous: false,
        };
        assert!(
            !store
                .finish("ch", Lane::Provider, contact, &[it.id], fin, 1, 1)
                .await
                .unwrap()
        );
    }
    let p1 = pending_statuses(&store, "m1").await;
    assert_eq!(p1.len(), 1);
    assert!(
        p1[0].contains(r#""value":"failed""#) && p1[0].contains("INVALID_RECIPIENT"),
        "{}",
        p1[0]
    );
    // m2's failure was respond.io's 4xx answer: nothing more to report.
    assert!(pending_statuses(&store, "m2").await.is_empty());
    let stats = store.lane_stats().await.unwrap();
    let prov = stats.iter().find(|s| s.lane == Lane::Provider).unwrap();
    assert_eq!(prov.dead, 2);
}

async fn recovery_marks_in_flight_items_ambiguous_or_failed(fx: &Fixture) {
    {
        let store = fx.open().await;
        store
            .accept_outbound("resend", outbound("r1", "+61400000001"), 0)
            .await
            .unwrap();
        store
            .accept_outbound("fail", outbound("f1", "+61400000001"), 0)
            .await
            .unwrap();
        for ch in ["resend", "fail"] {
            store
                .claim(ch, Lane::Provider, i64::MAX / 2, [10, 10])
                .await
                .unwrap();
            let taken = store
                .take_items(ch, Lane::Provider, "+61400000001", 1, 1)
                .await
                .unwrap();
            assert_eq!(taken.len(), 1);
        }
        // The process "dies" here: the items stay attempting, the queues claimed (and on
        // PostgreSQL its leases stay until they expire).
    }
    let store = fx.open_node().await;
    let fail = CrashPolicy {
        on_crash: OnCrash::Fail,
        ambiguous_retry_cap: 3,
    };
    let policy: HashMap<String, CrashPolicy> = [("fail".to_string(), fail)].into();
    let mut report = RecoveryReport::default();
    // A dead node's lanes are recovered once its leases expired (at once on SQLite).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while report.resent + report.failed < 2 {
        let r = store.recover(&policy).await.unwrap();
        report.resent += r.resent;
        report.failed += r.failed;
        assert!(
            std::time::Instant::now() < deadline,
            "the dead node's lanes were never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        report,
        RecoveryReport {
            resent: 1,
            failed: 1
        }
    );
    let r1 = store.item_by_mid("resend", "r1").await.unwrap().unwrap();
    assert_eq!((r1.state, r1.ambiguous), (STATE_PENDING, 1));
    let f1 = store.item_by_mid("fail", "f1").await.unwrap().unwrap();
    assert_eq!(f1.state, STATE_DEAD);
    // The resend channel's queue is claimable again (by whoever owns the lane now).
    store
        .acquire_lane("resend", Lane::Provider)
        .await
        .unwrap()
        .expect("free after recovery");
    let b = store
        .claim("resend", Lane::Provider, i64::MAX / 2, [10, 10])
        .await
        .unwrap();
    assert_eq!(b.claimed.len(), 1);
}

async fn attempt_log_seeds_the_limiter_one_entry_per_call(fx: &Fixture) {
    let store = fx.open().await;
    let items: Vec<_> = (0..3)
        .map(|i| inbound(&format!("k{i}"), "+61400000001", &format!("m{i}")))
        .collect();
    store.ingest_inbound("ch", items).await.unwrap();
    let q = message_qkey("+61400000001");
    store
        .claim("ch", Lane::RespondIo, i64::MAX / 2, [10, 10])
        .await
        .unwrap();
    let taken = store
        .take_items("ch", Lane::RespondIo, &q, 3, 1234)
        .await
        .unwrap();
    assert_eq!(taken.len(), 3, "three events, one call");
    assert_eq!(
        store
            .recent_attempts("ch", Lane::RespondIo, 20)
            .await
            .unwrap(),
        vec![1234]
    );
}

/// A note (which token of a rotation works) is kept across a reopen, and replaced.
async fn a_note_survives_a_reopen_and_is_replaced(fx: &Fixture) {
    let key = "respondio_token_in_use/ch";
    {
        let store = fx.open().await;
        assert_eq!(store.note(key).await.unwrap(), None);
        store.set_note(key, "fp-one").await.unwrap();
        store.set_note(key, "fp-two").await.unwrap();
    }
    let store = fx.open().await;
    assert_eq!(store.note(key).await.unwrap().as_deref(), Some("fp-two"));
}

on_both_backends!(
    redelivered_webhook_is_a_duplicate,
    a_note_survives_a_reopen_and_is_replaced,
    a_contact_queue_is_fifo_and_claimed_once,
    a_retry_hands_the_queue_back_with_its_due_time,
    bulk_sends_are_promoted_when_the_contact_writes_in,
    statuses_only_move_forward_and_collapse,
    a_receipt_that_beats_its_send_is_parked_then_applied,
    a_send_that_dies_after_its_200_reports_failed,
    recovery_marks_in_flight_items_ambiguous_or_failed,
    attempt_log_seeds_the_limiter_one_entry_per_call,
);

/// What several nodes sharing one PostgreSQL database rely on.
mod postgres_cluster {
    use super::*;
    use std::collections::HashSet;

    async fn fixture() -> Fixture {
        Fixture::postgres().await
    }

    /// Polls `acquire_lane` until `store` gets the lane (the holder's lease expired).
    async fn acquire_when_free(store: &Arc<dyn Store>, ch: &str, lane: Lane) -> LeaseGrant {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(g) = store.acquire_lane(ch, lane).await.unwrap() {
                return g;
            }
            assert!(std::time::Instant::now() < deadline, "lane never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn an_expired_lease_is_taken_over_and_fences_the_old_owner() {
        let fx = fixture().await;
        let a = fx.open().await;
        let b = fx.open_node().await;
        a.accept_outbound("ch", outbound("m1", "+61400000001"), 0)
            .await
            .unwrap();
        a.claim("ch", Lane::Provider, i64::MAX / 2, [10, 10])
            .await
            .unwrap();
        // Taken long ago: its deadline has passed.
        let taken = a
            .take_items("ch", Lane::Provider, "+61400000001", 1, 1)
            .await
            .unwrap();
        // A is paused here; its lease runs out and B takes the lane with a newer epoch.
        let grant = acquire_when_free(&b, "ch", Lane::Provider).await;
        assert!(grant.epoch >= 2, "{grant:?}");
        assert!(matches!(
            a.claim("ch", Lane::Provider, i64::MAX / 2, [10, 10]).await,
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            a.take_items("ch", Lane::Provider, "+61400000001", 1, 3)
                .await,
            Err(StoreError::Fenced(_))
        ));
        assert!(!a.renew_lane("ch", Lane::Provider).await.unwrap());
        // B finds the attempt in flight past its deadline and settles it.
        let report = b
            .recover_lane("ch", Lane::Provider, CrashPolicy::default())
            .await
            .unwrap();
        assert_eq!(
            report,
            RecoveryReport {
                resent: 1,
                failed: 0
            }
        );
        // A's outcome now comes too late: refused, nothing changed.
        let late = a
            .finish(
                "ch",
                Lane::Provider,
                "+61400000001",
                &[taken[0].id],
                Finish::Done {
                    provider_id: Some("P1".into()),
                },
                2,
                1,
            )
            .await;
        assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
        let item = b.item_by_mid("ch", "m1").await.unwrap().unwrap();
        assert_eq!(
            (item.state, item.ambiguous, item.provider_id),
            (STATE_PENDING, 1, None)
        );
        let batch = b
            .claim("ch", Lane::Provider, i64::MAX / 2, [10, 10])
            .await
            .unwrap();
        assert_eq!(batch.claimed.len(), 1);
        assert!(b.renew_lane("ch", Lane::Provider).await.unwrap());
    }

    /// An attempt still within its deadline when the lane changes hands is left to its
    /// owner: the new owner neither recovers nor re-takes it, and the old owner's late
    /// outcome is recorded and hands the queue over. Nothing is sent twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn a_takeover_leaves_an_attempt_in_flight_to_its_owner_until_its_deadline() {
        let fx = fixture().await;
        let a = fx.open().await;
        let b = fx.open_node().await;
        for mid in ["m1", "m2"] {
            a.accept_outbound("ch", outbound(mid, "+61400000001"), 0)
                .await
                .unwrap();
        }
        a.claim("ch", Lane::Provider, i64::MAX / 2, [10, 10])
            .await
            .unwrap();
        let now = rio_bridge::clock::now_ms();
        let taken = a
            .take_items("ch", Lane::Provider, "+61400000001", 1, now)
            .await
            .unwrap();
        let grant = acquire_when_free(&b, "ch", Lane::Provider).await;
        assert!(grant.epoch >= 2, "{grant:?}");
        let report = b
            .recover_lane("ch", Lane::Provider, CrashPolicy::default())
            .await
            .unwrap();
        assert_eq!(
            report,
            RecoveryReport::default(),
            "still in flight: left alone"
        );
        let batch = b
            .claim("ch", Lane::Provider, i64::MAX / 2, [10, 10])
            .await
            .unwrap();
        assert_eq!(batch.claimed.len(), 1);
        let how = TakeHead {
            limit: 1,
            at_ms: now,
            deadline_ms: now + 60_000,
            epoch: grant.epoch,
            crash: CrashPolicy::default(),
        };
        let head = b
            .take_head("ch", Lane::Provider, "+61400000001", how)
            .await
            .unwrap();
        assert!(
            matches!(head, Head::InFlight { until_ms } if until_ms > now),
            "{head:?}"
        );
        // A's outcome arrives after the hand-over: recorded, and the queue made due for B.
        let more = a
            .finish(
                "ch",
                Lane::Provider,
                "+61400000001",
                &[taken[0].id],
                Finish::Done {
                    provider_id: Some("P1".into()),
                },
                now,
                1,
            )
            .await
            .unwrap();
        assert!(!more, "a past tenure never keeps the queue");
        let m1 = b.item_by_mid("ch", "m1").await.unwrap().unwrap();
        assert_eq!((m1.state, m1.ambiguous), (STATE_DONE, 0));
        let batch = b
            .claim("ch", Lane::Provider, rio_bridge::clock::now_ms(), [10, 10])
            .await
            .unwrap();
        assert_eq!(batch.claimed.len(), 1, "the queue is due again at once");
        let next = b
            .take_head("ch", Lane::Provider, "+61400000001", how)
            .await
            .unwrap()
            .items();
        assert_eq!(
            next.iter().map(|i| i.mid.as_str()).collect::<Vec<_>>(),
            ["m2"],
            "the next message, and m1 not again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn a_released_lane_is_free_at_once_and_recovery_skips_live_lanes() {
        let fx = fixture().await;
        // A's lease outlives the test: it is live throughout, however slow the machine.
        let a = fx.open_node_with(fx.cfg_with_ttl(600_000)).await;
        assert!(
            a.acquire_lane("ch", Lane::Provider)
                .await
                .unwrap()
                .is_some()
        );
        let b = fx.open_node().await;
        a.accept_outbound("ch", outbound("m1", "+61400000001"), 0)
            .await
            .unwrap();
        a.claim("ch", Lane::Provider, i64::MAX / 2, [10, 10])
            .await
            .unwrap();
        a.take_items("ch", Lane::Provider, "+61400000001", 1, 1)
            .await
            .unwrap();
        // A's lease is live: B can neither take the lane nor recover A's attempt.
        assert_eq!(b.acquire_lane("ch", Lane::Provider).await.unwrap(), None);
        let report = b.recover(&HashMap::new()).await.unwrap();
        assert_eq!(report, RecoveryReport::default());
        let item = b.item_by_mid("ch", "m1").await.unwrap().unwrap();
        assert_eq!(item.state, STATE_ATTEMPTING);
        // A shuts down cleanly: the lane is free for B at once.
        a.release_lane("ch", Lane::Provider).await.unwrap();
        let g = b.acquire_lane("ch", Lane::Provider).await.unwrap();
        assert!(g.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn concurrent_claims_never_hand_out_a_queue_twice() {
        let fx = fixture().await;
        let a = fx.open().await;
        let contacts: Vec<String> = (0..200).map(|i| format!("+614{i:08}")).collect();
        for (i, c) in contacts.iter().enumerate() {
            a.accept_outbound("ch", outbound(&format!("m{i}"), c), 0)
                .await
                .unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let a = a.clone();
            tasks.spawn(async move {
                let mut got = Vec::new();
                loop {
                    let b = a
                        .claim("ch", Lane::Provider, i64::MAX / 2, [7, 7])
                        .await
                        .unwrap();
                    if b.claimed.is_empty() {
                        return got;
                    }
                    got.extend(b.claimed.into_iter().map(|(q, _)| q));
                }
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap());
        }
        let unique: HashSet<&String> = all.iter().collect();
        assert_eq!(all.len(), 200, "every queue claimed exactly once");
        assert_eq!(unique.len(), 200);
        // A node that does not own the lane cannot claim at all.
        let b = fx.open_node().await;
        assert!(matches!(
            b.claim("ch", Lane::Provider, i64::MAX / 2, [10, 10]).await,
            Err(StoreError::Fenced(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn dedupe_holds_under_concurrent_ingest_from_two_nodes() {
        let fx = fixture().await;
        let nodes = [fx.open_node().await, fx.open_node().await];
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..4usize {
            let store = nodes[t % 2].clone();
            tasks.spawn(async move {
                let mut stored = 0;
                // Each task walks the same keys from a different starting point.
                for i in 0..100usize {
                    let k = (i + t * 25) % 100;
                    let r = store
                        .ingest_inbound(
                            "ch",
                            vec![inbound(
                                &format!("k{k}"),
                                "+61400000001",
                                &format!("m{k}-{t}"),
                            )],
                        )
                        .await
                        .unwrap();
                    if matches!(r[0], IngestResult::Stored { .. }) {
                        stored += 1;
                    }
                }
                stored
            });
        }
        let mut stored = 0;
        while let Some(n) = tasks.join_next().await {
            stored += n.unwrap();
        }
        assert_eq!(stored, 100, "each webhook stored once across both nodes");
        let stats = nodes[0].lane_stats().await.unwrap();
        let lane = stats.iter().find(|s| s.lane == Lane::RespondIo).unwrap();
        assert_eq!(lane.pending, 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn receipts_and_send_outcomes_from_two_nodes_never_miss_each_other() {
        let fx = fixture().await;
        let a = fx.open().await;
        let b = fx.open_node().await;
        let n = 30;
        for i in 0..n {
            a.accept_outbound(
                "ch",
                outbound(&format!("m{i}"), &format!("+6140000{i:04}")),
                0,
            )
            .await
            .unwrap();
        }
        a.claim("ch", Lane::Provider, i64::MAX / 2, [100, 100])
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let contact = format!("+6140000{i:04}");
            let it = a
                .take_items("ch", Lane::Provider, &contact, 1, 1)
                .await
                .unwrap()
                .remove(0);
            let (a, b) = (a.clone(), b.clone());
            // The provider's receipt (on node B) races the send's response (on node A).
            tasks.spawn(async move {
                let pid = format!("P{i}");
                let fin = Finish::Done {
                    provider_id: Some(pid.clone()),
                };
                let ids = [it.id];
                let (done, receipts) = tokio::join!(
                    a.finish("ch", Lane::Provider, &contact, &ids, fin, 1, 1),
                    b.apply_receipts(
                        "ch",
                        vec![receipt(&format!("r{i}"), &pid, StatusValue::Delivered)]
                    ),
                );
                done.unwrap();
                receipts.unwrap();
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        for i in 0..n {
            let mid = format!("m{i}");
            let item = a.item_by_mid("ch", &mid).await.unwrap().unwrap();
            assert_eq!(item.status, 2, "{mid}: the receipt was applied");
            let pending = pending_statuses(&a, &mid).await;
            assert_eq!(pending.len(), 1, "{mid}: {pending:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn statuses_from_two_nodes_only_move_forward() {
        let fx = fixture().await;
        let a = fx.open().await;
        let b = fx.open_node().await;
        a.accept_outbound("ch", outbound("m1", "+61400000001"), 0)
            .await
            .unwrap();
        send_ok(&a, "+61400000001", "P1").await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let (store, value) = if i % 2 == 0 {
                (a.clone(), StatusValue::Delivered)
            } else {
                (b.clone(), StatusValue::Read)
            };
            tasks.spawn(async move {
                store
                    .apply_receipts("ch", vec![receipt(&format!("r{i}"), "P1", value)])
                    .await
                    .unwrap()
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(a.item_by_mid("ch", "m1").await.unwrap().unwrap().status, 3);
        let pending = pending_statuses(&a, "m1").await;
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert!(pending[0].contains(r#""value":"read""#), "{}", pending[0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn work_for_a_lane_owned_elsewhere_is_announced_to_its_owner() {
        let fx = fixture().await;
        let a = fx.open().await;
        let mut signals = a.work_signals().expect("a shared store announces work");
        let b = fx.open_node().await;
        // The listener connects in the background: keep committing until A hears one.
        let heard = tokio::time::timeout(Duration::from_secs(20), async {
            let mut i = 0;
            loop {
                b.accept_outbound("ch", outbound(&format!("m{i}"), "+61400000001"), 0)
                    .await
                    .unwrap();
                i += 1;
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_millis(200), signals.recv()).await
                {
                    return s;
                }
            }
        })
        .await
        .expect("A never heard of B's work");
        assert_eq!(heard, ("ch".to_string(), Lane::Provider));
    }
}
