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

/// One prune cycle catches up with a backlog of old rows far above a batch, whatever the
/// backlog (retention keeps up with ingest), and keeps what is not old or not settled.
async fn one_prune_cycle_removes_every_old_row(fx: &Fixture) {
    let store = fx.open_node().await;
    let raw = aged::Raw::open(fx).await;
    aged::fill(&raw).await;
    let unsettled = "SELECT COUNT(*) FROM items WHERE state <> 2";
    let kept = raw.count(unsettled).await;
    assert!(kept > 0);
    let now = now_ms();
    let day = 86_400_000;
    // A budget no run comes near: the cycle stops when it is caught up.
    let report = prune(&*store, now, day, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(report.caught_up, "{report:?}");
    let cutoff = now - day;
    for (what, sql) in [
        (
            "delivered items",
            format!("SELECT COUNT(*) FROM items WHERE state = 2 AND updated_ms < {cutoff}"),
        ),
        (
            "expired dedupe keys",
            format!("SELECT COUNT(*) FROM dedupe WHERE expires_ms < {now}"),
        ),
        (
            "expired parked receipts",
            format!("SELECT COUNT(*) FROM parked_receipts WHERE expires_ms < {now}"),
        ),
        (
            "old attempts",
            format!("SELECT COUNT(*) FROM attempts WHERE at_ms < {cutoff}"),
        ),
        (
            "old history",
            format!("SELECT COUNT(*) FROM history WHERE at_ms < {cutoff}"),
        ),
    ] {
        assert_eq!(
            raw.count(&sql).await,
            0,
            "{what} left after one prune cycle"
        );
    }
    assert_eq!(
        raw.count(unsettled).await,
        kept,
        "pending, attempting and dead items stay"
    );
}

/// A cycle whose budget is spent stops after its batch, says it is behind, and the next
/// cycle goes on from there.
async fn a_prune_cycle_out_of_budget_says_it_is_behind(fx: &Fixture) {
    let store = fx.open_node().await;
    let raw = aged::Raw::open(fx).await;
    aged::fill(&raw).await;
    let (now, day) = (now_ms(), 86_400_000);
    let first = prune(&*store, now, day, Duration::ZERO).await.unwrap();
    assert!(!first.caught_up, "{first:?}");
    let batch = PRUNE_BATCH as u64;
    assert_eq!(
        (first.items, first.dedupe, first.attempts, first.history),
        (batch, batch, batch, batch),
        "one batch per table"
    );
    let rest = prune(&*store, now, day, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(rest.caught_up, "{rest:?}");
    assert_eq!(first.attempts + rest.attempts, aged::ROWS as u64);
    assert_eq!(first.history + rest.history, aged::ROWS as u64);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Another connection holds the store still: SQLite's write lock, or PostgreSQL's locks on
/// the tables a webhook or a send writes. `release` lets it go.
struct Stall {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl Stall {
    async fn hold(f: &Fixture) -> Stall {
        let (locked_tx, locked) = tokio::sync::oneshot::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = match f {
            Fixture::Sqlite(dir) => {
                let db = dir.path().join("t.db");
                std::thread::spawn(move || {
                    let conn = rusqlite::Connection::open(&db).unwrap();
                    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
                    let _ = locked_tx.send(());
                    let _ = release_rx.recv();
                    conn.execute_batch("COMMIT").unwrap();
                })
            }
            Fixture::Pg(schema) => {
                let url = schema.url.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                            .await
                            .unwrap();
                        tokio::spawn(conn);
                        client
                            .batch_execute(
                                "BEGIN; LOCK TABLE items, dedupe, queues, contacts IN ACCESS EXCLUSIVE MODE",
                            )
                            .await
                            .unwrap();
                        let _ = locked_tx.send(());
                        let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                        client.batch_execute("COMMIT").await.unwrap();
                    });
                })
            }
        };
        locked.await.unwrap();
        Stall { release, holder }
    }

    fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

/// Polls until `f` holds (20 s at most).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With the store stalled, webhooks are refused (`Overloaded`) once `webhook_queue_max`
/// requests wait, sends only once `queue_max` do; the depth shows them; what was admitted
/// commits once the store is back. A send whose caller went away before its commit ran is
/// not committed.
async fn a_stalled_store_refuses_webhooks_first_and_drops_abandoned_sends(f: &Fixture) {
    let cfg = StoreConfig {
        queue_max: 5,
        webhook_queue_max: 2,
        busy_timeout_ms: 20_000,
        ..f.cfg()
    };
    let store = f.open_node_with(cfg).await;
    let stall = Stall::hold(f).await;
    let mut waiting = Vec::new();
    for n in 0..2 {
        let s = store.clone();
        waiting.push(tokio::spawn(async move {
            s.ingest_inbound(
                "ch",
                vec![inbound(&format!("k{n}"), "+61400000001", &format!("in{n}"))],
            )
            .await
            .map(|_| ())
        }));
    }
    until("2 webhooks queued", || store.queue_depth().webhook == 2).await;
    let refused = store
        .ingest_inbound("ch", vec![inbound("k9", "+61400000001", "in9")])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Overloaded(_))),
        "{refused:?}"
    );
    let refused = store
        .apply_receipts(
            "ch",
            vec![ReceiptIn {
                dedupe_key: "r9".into(),
                provider_id: "P9".into(),
                status: Some(StatusValue::Delivered),
                reason: None,
            }],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Overloaded(_))),
        "{refused:?}"
    );
    for n in 0..2 {
        let s = store.clone();
        waiting.push(tokio::spawn(async move {
            s.accept_outbound("ch", outbound(&format!("m{n}"), "+61400000002"), 0)
                .await
                .map(|_| ())
        }));
    }
    until("2 sends queued", || store.queue_depth().message == 2).await;
    let gone = {
        let s = store.clone();
        tokio::spawn(async move {
            s.accept_outbound("ch", outbound("gone", "+61400000003"), 0)
                .await
        })
    };
    until("the abandoned send queued", || {
        store.queue_depth().message == 3
    })
    .await;
    let refused = store
        .accept_outbound("ch", outbound("m9", "+61400000002"), 0)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Overloaded(_))),
        "{refused:?}"
    );
    // Its caller goes away.
    gone.abort();
    let _ = gone.await;
    stall.release();
    for w in waiting {
        w.await
            .unwrap()
            .expect("admitted, committed once the store is back");
    }
    until("the queue empty", || {
        let d = store.queue_depth();
        d.webhook == 0 && d.message == 0
    })
    .await;
    for mid in ["m0", "m1"] {
        assert!(
            store.item_by_mid("ch", mid).await.unwrap().is_some(),
            "{mid}"
        );
    }
    for mid in ["gone", "m9"] {
        assert!(
            store.item_by_mid("ch", mid).await.unwrap().is_none(),
            "{mid} committed"
        );
    }
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
    one_prune_cycle_removes_every_old_row,
    a_prune_cycle_out_of_budget_says_it_is_behind,
    a_stalled_store_refuses_webhooks_first_and_drops_abandoned_sends,
);

/// What several nodes sharing one PostgreSQL database rely on.
mod postgres_cluster {
    use super::*;
    use std::collections::HashSet;

    async fn fixture() -> Fixture {
        Fixture::postgres().await
    }

    /// Every pooled connection busy past the pool's wait: the request is refused as
    /// `Overloaded` (503 with `Retry-After` at the HTTP layer), not as a store fault.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn a_pool_wait_past_its_timeout_is_overloaded() {
        let fx = fixture().await;
        let cfg = StoreConfig {
            pool_size: 1,
            ..fx.cfg()
        };
        let store = fx.open_node_with(cfg).await;
        let stall = Stall::hold(&fx).await;
        // The only connection waits behind the lock.
        let first = {
            let s = store.clone();
            tokio::spawn(async move {
                s.accept_outbound("ch", outbound("m1", "+61400000001"), 0)
                    .await
                    .map(|_| ())
            })
        };
        // Wait until it really holds it: blocked on the lock.
        let Fixture::Pg(schema) = &fx else {
            unreachable!()
        };
        let (watch, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: i64 = watch
                .query_one(
                    "SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE NOT l.granted AND n.nspname = $1",
                    &[&schema.name],
                )
                .await
                .unwrap()
                .get(0);
            if waiting >= 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the first send never waited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let second = store
            .accept_outbound("ch", outbound("m2", "+61400000002"), 0)
            .await;
        assert!(
            matches!(second, Err(StoreError::Overloaded(_))),
            "{second:?}"
        );
        stall.release();
        first.await.unwrap().expect("the first send commits");
        assert!(store.item_by_mid("ch", "m2").await.unwrap().is_none());
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

/// A store that has aged: rows of every table, nearly all of them settled and old (times
/// in 1970), with a backlog of pending, attempting and dead items, built by SQL on a
/// connection of its own. Statistics are whatever the test makes of them (`ANALYZE`).
mod aged {
    use super::*;

    /// Rows per big table.
    pub const ROWS: i64 = 60_000;

    /// A connection to a fixture's store, beside the store's own.
    pub enum Raw {
        Sqlite(rusqlite::Connection),
        Pg(tokio_postgres::Client),
    }

    impl Raw {
        pub async fn open(fx: &Fixture) -> Raw {
            match fx {
                Fixture::Sqlite(dir) => {
                    let c = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
                    c.busy_timeout(Duration::from_secs(30)).unwrap();
                    Raw::Sqlite(c)
                }
                Fixture::Pg(schema) => {
                    let (client, conn) =
                        tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
                            .await
                            .unwrap();
                    tokio::spawn(conn);
                    Raw::Pg(client)
                }
            }
        }

        pub async fn exec(&self, sql: &str) {
            match self {
                Raw::Sqlite(c) => c.execute_batch(sql).unwrap(),
                Raw::Pg(c) => c.batch_execute(sql).await.unwrap(),
            }
        }

        pub async fn count(&self, sql: &str) -> i64 {
            match self {
                Raw::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).unwrap(),
                Raw::Pg(c) => c.query_one(sql, &[]).await.unwrap().get(0),
            }
        }
    }

    /// Fills the store (already migrated) with `ROWS` rows per big table. One channel has
    /// them all (the case where an index on `channel` alone would walk everything).
    pub async fn fill(raw: &Raw) {
        let series = match raw {
            Raw::Sqlite(_) => format!(
                "CREATE TEMP TABLE n AS WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS}) SELECT i FROM s;"
            ),
            Raw::Pg(_) => {
                format!("CREATE TEMP TABLE n AS SELECT generate_series(1, {ROWS})::BIGINT AS i;")
            }
        };
        raw.exec(&series).await;
        // Thirds: inbound messages (lane 0), their statuses (lane 0, one queue per mId),
        // sends (lane 1). The newest hundred are the backlog; one in ~1000 is dead.
        raw.exec(
            "INSERT INTO items(channel, lane, qkey, contact, kind, mid, payload, state, attempts,
                               created_ms, next_ms, updated_ms, provider_id, status)
             SELECT 'ch',
                    CASE i % 3 WHEN 2 THEN 1 ELSE 0 END,
                    CASE i % 3 WHEN 0 THEN 'm:c' || (i % 500) WHEN 1 THEN 's:mid' || (i - 1)
                               ELSE 'c' || (i % 500) END,
                    'c' || (i % 500),
                    CASE i % 3 WHEN 0 THEN 0 WHEN 1 THEN 2 ELSE 3 END,
                    'mid' || i, '{}',
                    CASE WHEN i > n_max.m - 100 THEN i % 2 WHEN i % 997 = 0 THEN 3 ELSE 2 END,
                    1, i * 10, i * 10, i * 10,
                    CASE WHEN i % 3 <> 1 THEN 'p' || i END,
                    CASE WHEN i % 3 = 2 THEN 2 ELSE 0 END
             FROM n, (SELECT MAX(i) AS m FROM n) AS n_max;
             INSERT INTO attempts(item_id, channel, lane, at_ms, outcome, call_first, duration_ms)
             SELECT i, 'ch', CASE i % 3 WHEN 2 THEN 1 ELSE 0 END, i * 10, 'ok', 1, 5 FROM n;
             INSERT INTO history(item_id, at_ms, event) SELECT i, i * 10, 'status delivered' FROM n;
             INSERT INTO dedupe(channel, key, expires_ms) SELECT 'ch', 'k' || i, i * 10 FROM n;
             INSERT INTO channel_logs(channel, mid, at_ms, direction, kind, method, url, status, duration_ms)
             SELECT 'ch', 'mid' || i, i * 10, 'out', 'respondio', 'POST', 'http://x/', 200, 5 FROM n;
             INSERT INTO parked_receipts(channel, provider_id, status, received_ms, expires_ms)
             SELECT 'ch', 'unknown' || i, 2, i * 10, i * 10 FROM n WHERE i % 20 = 0;
             INSERT INTO contacts(channel, contact, last_inbound_ms)
             SELECT 'ch', 'c' || i, i * 10 FROM n WHERE i <= 500;
             INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed)
             SELECT 'ch', CASE i % 3 WHEN 2 THEN 1 ELSE 0 END, 'q' || i, i % 2, i * 10, CASE WHEN i % 5 = 0 THEN 1 ELSE 0 END
             FROM n WHERE i <= 20000;
             INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES ('ch', 0, 0), ('ch', 1, 0);
             DROP TABLE n;",
        )
        .await;
    }
}

/// The plan of every statement on a hot path (`sql::HOT_PATH`, the very text the store
/// runs), on an aged store, before and after `ANALYZE`: each reads through the index meant
/// for it, so its cost does not grow with the store's size.
mod plans {
    use super::aged::{self, Raw};
    use super::*;

    /// Statement → the indexes (as `EXPLAIN QUERY PLAN` names them) it may read through,
    /// the one that drives it first (which the plan must use; `a|b`: either); every table
    /// access of its plan must be one of them. Empty: no table read (an insert, an upsert on its key).
    const SQLITE: &[(&str, &[&str])] = &[
        ("STILL_ATTEMPTING", &["INTEGER PRIMARY KEY"]),
        ("ATTEMPT_DEADLINE", &["INTEGER PRIMARY KEY"]),
        ("NUDGE_QUEUE", &["USING PRIMARY KEY"]),
        ("PAUSE_LANE", &[]),
        ("CLAIM_DEDUPE", &[]),
        ("INSERT_ITEM", &[]),
        ("UPSERT_QUEUE", &[]),
        ("HISTORY", &[]),
        ("TOUCH_CONTACT", &[]),
        ("PROMOTE_SENDS", &["USING PRIMARY KEY"]),
        ("LAST_INBOUND", &["USING PRIMARY KEY"]),
        ("SEND_BY_PROVIDER_ID", &["INDEX items_provider"]),
        ("STATUS_ROW", &["INTEGER PRIMARY KEY"]),
        ("SET_STATUS", &["INTEGER PRIMARY KEY"]),
        ("SET_PROVIDER_ID", &["INTEGER PRIMARY KEY"]),
        (
            "REPLACE_PENDING_STATUS",
            &[
                "INDEX items_queue (channel=? AND lane=? AND qkey=?)",
                "INTEGER PRIMARY KEY",
            ],
        ),
        ("PARK_RECEIPT", &[]),
        ("PARKED_RECEIPTS", &["INDEX parked_by_id"]),
        ("DELETE_PARKED", &["INTEGER PRIMARY KEY"]),
        ("CLAIM_QUEUES", &["INDEX queues_due"]),
        ("CLAIM_QUEUE_ROW", &["USING PRIMARY KEY"]),
        ("NEXT_DUE", &["INDEX queues_due"]),
        (
            "HEAD_ITEMS",
            &["INDEX items_queue (channel=? AND lane=? AND qkey=?)"],
        ),
        (
            "QUEUE_HAS_PENDING",
            &["INDEX items_queue (channel=? AND lane=? AND qkey=?)"],
        ),
        ("DROP_QUEUE", &["USING PRIMARY KEY"]),
        ("RELEASE_QUEUE_AT", &["USING PRIMARY KEY"]),
        ("RELEASE_QUEUE", &["USING PRIMARY KEY"]),
        ("RELEASE_CLAIMS", &["INDEX queues_due"]),
        ("MARK_ATTEMPTING", &["INTEGER PRIMARY KEY"]),
        ("OPEN_ATTEMPT", &[]),
        ("SET_ATTEMPT_OUTCOME", &["INDEX attempts_item"]),
        ("DELETE_OPEN_ATTEMPT", &["INDEX attempts_item"]),
        ("ITEM_DONE", &["INTEGER PRIMARY KEY"]),
        ("ITEM_RETRY", &["INTEGER PRIMARY KEY"]),
        ("ITEM_NOT_SENT", &["INTEGER PRIMARY KEY"]),
        ("ITEM_REQUEUE_AMBIGUOUS", &["INTEGER PRIMARY KEY"]),
        ("ITEM_DEAD", &["INTEGER PRIMARY KEY"]),
        ("ATTEMPTING_ITEMS", &["INDEX items_attempting"]),
        ("COUNT_AMBIGUOUS", &["INTEGER PRIMARY KEY"]),
        (
            "AGED_PENDING",
            &["INDEX items_queued (channel=? AND lane=? AND queued_ms<?)"],
        ),
        ("IS_PENDING", &["INTEGER PRIMARY KEY"]),
        (
            "RECENT_ATTEMPTS",
            &["INDEX attempts_window (channel=? AND lane=?)"],
        ),
        // The backlog's counts read the partial indexes of unsettled and of dead items
        // only: their cost is the backlog's, not the store's.
        ("LANE_PENDING", &["INDEX items_pending"]),
        (
            "LANE_OLDEST_PENDING",
            &["INDEX items_pending (channel=? AND lane=?)"],
        ),
        ("LANE_DEAD", &["COVERING INDEX items_dead"]),
        ("PRUNE_ITEMS", &["INDEX items_done", "INTEGER PRIMARY KEY"]),
        (
            "PRUNE_DEDUPE",
            &["INDEX dedupe_expiry", "USING PRIMARY KEY"],
        ),
        (
            "PRUNE_PARKED",
            &["INDEX parked_expiry", "INTEGER PRIMARY KEY"],
        ),
        (
            "PRUNE_ATTEMPTS",
            &["INDEX attempts_at", "INTEGER PRIMARY KEY"],
        ),
        (
            "PRUNE_HISTORY",
            &["INDEX history_at", "INTEGER PRIMARY KEY"],
        ),
        (
            "PRUNE_CHANNEL_LOGS",
            &["INDEX channel_logs_at", "INTEGER PRIMARY KEY"],
        ),
        ("ATTEMPT_COUNTS", &["INDEX attempts_at"]),
    ];

    /// Full scans SQLite may do: only of the partial indexes named above.
    const SQLITE_SCANS: &[&str] = &[
        "SCAN items USING INDEX items_pending",
        "SCAN items USING COVERING INDEX items_pending",
        "SCAN items USING COVERING INDEX items_dead",
    ];

    fn sqlite_plan(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
        // Unbound parameters are NULL: the plan does not depend on their values.
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// What is wrong with a statement's plan lines, if anything.
    fn judge(
        name: &str,
        plan: &[String],
        expected: &[&str],
        is_access: impl Fn(&str) -> bool,
        is_scan: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let mut wrong = Vec::new();
        for line in plan {
            if is_scan(line) {
                wrong.push(format!("full scan `{line}`"));
            } else if is_access(line)
                && !expected
                    .iter()
                    .any(|e| e.split('|').any(|e| line.contains(e)))
            {
                wrong.push(format!("`{line}` reads through none of {expected:?}"));
            }
        }
        if let Some(e) = expected.first()
            && !plan.iter().any(|l| e.split('|').any(|e| l.contains(e)))
        {
            wrong.push(format!("does not use {e}"));
        }
        (!wrong.is_empty()).then(|| format!("{name}: {}\n    plan: {plan:?}", wrong.join("; ")))
    }

    fn expectations_cover(
        hot: &[(&str, &str)],
        expected: &[(&str, &[&str])],
    ) -> HashMap<String, Vec<String>> {
        let names: Vec<&str> = hot.iter().map(|h| h.0).collect();
        for (n, _) in expected {
            assert!(
                names.contains(n),
                "{n} is pinned but no longer on the hot path"
            );
        }
        for n in &names {
            assert!(
                expected.iter().any(|e| e.0 == *n),
                "{n} is on the hot path: pin its plan here"
            );
        }
        expected
            .iter()
            .map(|(n, e)| (n.to_string(), e.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn check_sqlite(conn: &rusqlite::Connection, when: &str) -> Vec<String> {
        use rio_bridge::store::sqlite::sql::HOT_PATH;
        let expected = expectations_cover(HOT_PATH, SQLITE);
        let mut failures = Vec::new();
        for (name, sql) in HOT_PATH {
            let plan = sqlite_plan(conn, sql);
            let exp: Vec<&str> = expected[*name].iter().map(String::as_str).collect();
            if let Some(f) = judge(
                name,
                &plan,
                &exp,
                |l| l.starts_with("SEARCH ") || l.starts_with("SCAN "),
                |l| l.starts_with("SCAN ") && !SQLITE_SCANS.iter().any(|s| l.starts_with(s)),
            ) {
                failures.push(format!("[{when}] {f}"));
            }
        }
        failures
    }

    #[tokio::test]
    async fn sqlite_hot_path_reads_through_its_indexes_on_an_aged_store() {
        let fx = Fixture::sqlite();
        drop(fx.open_node().await); // migrated
        let raw = Raw::open(&fx).await;
        aged::fill(&raw).await;
        let Raw::Sqlite(conn) = &raw else {
            unreachable!()
        };
        // As the store runs (it never analyses), then with statistics of the aged store.
        let mut failures = check_sqlite(conn, "no statistics");
        conn.execute_batch("ANALYZE").unwrap();
        failures.extend(check_sqlite(conn, "after ANALYZE"));
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    /// As `SQLITE`, with PostgreSQL's index names.
    const POSTGRES: &[(&str, &[&str])] = &[
        ("FENCE", &[]),
        ("HOLDS", &[]),
        ("STILL_ATTEMPTING", &["items_pkey"]),
        ("ATTEMPT_DEADLINE", &["items_pkey"]),
        ("NUDGE_QUEUE", &["queues_pkey"]),
        ("PAUSE_LANE", &[]),
        ("LOCK_QUEUE", &["queues_pkey"]),
        ("LOCK_PROVIDER_ID", &[]),
        ("CLAIM_DEDUPE", &[]),
        ("INSERT_ITEM", &[]),
        ("UPSERT_QUEUE", &[]),
        ("HISTORY", &[]),
        ("TOUCH_CONTACT", &[]),
        ("PROMOTE_SENDS", &["queues_pkey"]),
        ("LAST_INBOUND", &["contacts_pkey"]),
        ("SEND_BY_PROVIDER_ID", &["items_provider"]),
        ("STATUS_ROW", &["items_pkey"]),
        ("SET_STATUS", &["items_pkey"]),
        ("SET_PROVIDER_ID", &["items_pkey"]),
        ("REPLACE_PENDING_STATUS", &["items_queue", "items_pkey"]),
        ("PARK_RECEIPT", &[]),
        ("PARKED_RECEIPTS", &["parked_by_id"]),
        ("DELETE_PARKED", &["parked_receipts_pkey"]),
        ("CLAIM_QUEUES", &["queues_due"]),
        ("NEXT_DUE", &["queues_due"]),
        ("HEAD_ITEMS", &["items_queue"]),
        ("QUEUE_HAS_PENDING", &["items_queue"]),
        ("DROP_QUEUE", &["queues_pkey"]),
        ("RELEASE_QUEUE_AT", &["queues_pkey"]),
        ("RELEASE_QUEUE", &["queues_pkey"]),
        ("RELEASE_CLAIMS", &["queues_claimed"]),
        ("MARK_ATTEMPTING", &["items_pkey"]),
        ("OPEN_ATTEMPT", &[]),
        ("SET_ATTEMPT_OUTCOME", &["attempts_item"]),
        ("DELETE_OPEN_ATTEMPT", &["attempts_item"]),
        ("ITEM_DONE", &["items_pkey"]),
        ("ITEM_RETRY", &["items_pkey"]),
        ("ITEM_NOT_SENT", &["items_pkey"]),
        ("ITEM_REQUEUE_AMBIGUOUS", &["items_pkey"]),
        ("ITEM_DEAD", &["items_pkey"]),
        ("ATTEMPTING_ITEMS", &["items_attempting"]),
        ("COUNT_AMBIGUOUS", &["items_pkey"]),
        // The sweep of a lane that sends nothing: the partial index of pending items by age.
        ("AGED_PENDING", &["items_queued"]),
        ("IS_PENDING", &["items_pkey"]),
        // At a lane's start. Backwards on attempts_at only where the statistics say the
        // lane has a large share of all attempts (it then meets its rows soon).
        ("RECENT_ATTEMPTS", &["attempts_window|attempts_at"]),
        // Partial indexes of the unsettled and of the dead items: the backlog's cost.
        ("LANE_PENDING", &["items_pending|items_queue"]),
        ("LANE_OLDEST_PENDING", &["items_pending"]),
        ("LANE_DEAD", &["items_dead"]),
        ("PRUNE_ITEMS", &["items_done", "items_pkey"]),
        ("PRUNE_DEDUPE", &["dedupe_expiry", "dedupe_pkey"]),
        ("PRUNE_PARKED", &["parked_expiry", "parked_receipts_pkey"]),
        ("PRUNE_ATTEMPTS", &["attempts_at", "attempts_pkey"]),
        ("PRUNE_HISTORY", &["history_at", "history_pkey"]),
        (
            "PRUNE_CHANNEL_LOGS",
            &["channel_logs_at", "channel_logs_pkey"],
        ),
        ("ATTEMPT_COUNTS", &["attempts_at"]),
    ];

    /// Tables with a row per lane: read however the planner likes.
    const PG_SMALL: &[&str] = &["lane_leases", "lane_state"];

    /// The generic plan of `sql` (the one a prepared statement settles on), as text lines.
    async fn pg_plan(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
        let params = (1..=20)
            .rev()
            .find(|n| sql.contains(&format!("${n}")))
            .unwrap_or(0);
        client
            .batch_execute(&format!("PREPARE hot AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {sql}", e.as_db_error()));
        let args = vec!["NULL"; params].join(", ");
        let call = if params == 0 {
            "EXPLAIN EXECUTE hot".to_string()
        } else {
            format!("EXPLAIN EXECUTE hot({args})")
        };
        let lines = client
            .simple_query(&call)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {sql}", e.as_db_error()))
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        client.batch_execute("DEALLOCATE hot").await.unwrap();
        lines
    }

    async fn check_postgres(client: &tokio_postgres::Client, when: &str) -> Vec<String> {
        use rio_bridge::store::postgres::sql::HOT_PATH;
        let expected = expectations_cover(HOT_PATH, POSTGRES);
        let mut failures = Vec::new();
        for (name, sql) in HOT_PATH {
            let plan = pg_plan(client, sql).await;
            let exp: Vec<&str> = expected[*name].iter().map(String::as_str).collect();
            let small = |l: &str| PG_SMALL.iter().any(|t| l.contains(&format!(" on {t}")));
            if let Some(f) = judge(
                name,
                &plan,
                &exp,
                |l| {
                    !small(l)
                        && (l.contains("Index Scan using")
                            || l.contains("Index Only Scan using")
                            || l.contains("Bitmap Index Scan on"))
                },
                |l| l.contains("Seq Scan on") && !small(l),
            ) {
                failures.push(format!("[{when}] {f}"));
            }
        }
        failures
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
    async fn postgres_hot_path_reads_through_its_indexes_on_an_aged_store() {
        let fx = Fixture::postgres().await;
        drop(fx.open().await); // migrated, with lane leases
        let raw = Raw::open(&fx).await;
        aged::fill(&raw).await;
        let Raw::Pg(client) = &raw else {
            unreachable!()
        };
        // The plan every prepared statement settles on after its first executions.
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .await
            .unwrap();
        // Before autovacuum has looked at the new rows, then with their statistics.
        let mut failures = check_postgres(client, "no statistics").await;
        client.batch_execute("ANALYZE").await.unwrap();
        failures.extend(check_postgres(client, "after ANALYZE").await);
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }
}

/// The aged-store builder on PostgreSQL: a template database with a week of history, a run
/// database copied from it that the store opens and prunes like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn postgres_aged_store_opens_and_prunes_like_any_other() {
    use rio_bridge::store::aged::AgeSpec;
    use rio_bridge::store::postgres::aged::{aged_database, drop_database};
    let base = pg::base_url();
    let run_db = format!("rio_aged_t_{}", std::process::id());
    let spec = AgeSpec {
        contacts: 97,
        ..AgeSpec::week("sms", 20_000)
    };
    let (url, report) = aged_database(&spec, &base, &run_db).await.unwrap();
    assert_eq!(report.items, 20_000);
    let cfg = StoreConfig {
        url: Some(rio_bridge::secret::Secret::new(url.clone())),
        ..StoreConfig::default()
    };
    let store = PgStore::connect(&cfg, &url).await.unwrap();
    let item = store
        .item_by_mid("sms", "01AGED00000000000000000042")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.state, 2);
    assert!(item.payload.contains("aged message 42"));
    let pruned = store
        .prune_batch(now_ms(), 6 * 86_400_000, 100_000)
        .await
        .unwrap();
    assert!(pruned.items > 0 && pruned.attempts > 0);
    // A second run reuses the template.
    drop(store);
    let (_, again) = aged_database(&spec, &base, &run_db).await.unwrap();
    assert!(again.cached);
    drop_database(&base, &run_db).await.unwrap();
}

/// A rolling upgrade on PostgreSQL: a node of this release starts on a database the next
/// release migrated, when that migration says this release may still run on it, and
/// refuses when it says not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (tests/common/pg.rs)"]
async fn postgres_runs_beside_a_newer_release_only_when_its_schema_allows() {
    use rio_bridge::store::postgres::LATEST_VERSION;
    let schema = pg::PgSchema::create().await;
    rio_bridge::store::postgres::migrate(&schema.url)
        .await
        .unwrap();
    let (db, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.execute(
        "INSERT INTO rio_schema(version) VALUES ($1)",
        &[&(LATEST_VERSION + 1)],
    )
    .await
    .unwrap();
    let set_min_reader = |v: i64| {
        let db = &db;
        async move {
            db.execute(
                "UPDATE meta SET v = $1 WHERE k = 'schema_min_reader'",
                &[&v.to_string()],
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(set_min_reader(LATEST_VERSION).await, 1);
    let cfg = StoreConfig {
        url: Some(rio_bridge::secret::Secret::new(schema.url.clone())),
        ..StoreConfig::default()
    };
    let store = PgStore::connect(&cfg, &schema.url)
        .await
        .expect("runs beside the newer release");
    store.probe_write().await.unwrap();
    drop(store);
    set_min_reader(LATEST_VERSION + 1).await;
    let refused = PgStore::connect(&cfg, &schema.url)
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("newer"), "{refused}");
}
