//! Store behaviour through the `Store` trait, on a real SQLite file: dedupe, FIFO claims,
//! the status machine, parked receipts, collapse of statuses, crash recovery.

use std::collections::HashMap;
use std::sync::Arc;

use rio_bridge::config::{OnCrash, StoreConfig};
use rio_bridge::respondio::wire::StatusValue;
use rio_bridge::store::sqlite::SqliteStore;
use rio_bridge::store::*;

fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let cfg = StoreConfig {
        path: dir.path().join("t.db"),
        ..StoreConfig::default()
    };
    Arc::new(SqliteStore::open(&cfg).expect("open store"))
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
        .take_head("ch", Lane::Provider, &qkey, 1, 1)
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

#[tokio::test]
async fn redelivered_webhook_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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

#[tokio::test]
async fn a_contact_queue_is_fifo_and_claimed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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
        .take_head("ch", Lane::RespondIo, &q, 3, now)
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

#[tokio::test]
async fn a_retry_hands_the_queue_back_with_its_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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
        .take_head("ch", Lane::RespondIo, &q, 1, now)
        .await
        .unwrap();

    let fin = Finish::Retry {
        next_ms: now + 60_000,
        error: "503".into(),
        ambiguous: true,
        counted: true,
        outcome: "ambiguous",
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

#[tokio::test]
async fn bulk_sends_are_promoted_when_the_contact_writes_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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

#[tokio::test]
async fn statuses_only_move_forward_and_collapse() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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

#[tokio::test]
async fn a_receipt_that_beats_its_send_is_parked_then_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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

#[tokio::test]
async fn a_send_that_dies_after_its_200_reports_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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
            .take_head("ch", Lane::Provider, contact, 1, 1)
            .await
            .unwrap()
            .remove(0);

        let fin = Finish::Dead {
            reason: "INVALID_RECIPIENT".into(),
            report_failed: report,
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

#[tokio::test]
async fn recovery_marks_in_flight_items_ambiguous_or_failed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
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
                .take_head(ch, Lane::Provider, "+61400000001", 1, 1)
                .await
                .unwrap();
            assert_eq!(taken.len(), 1);
        }
        // The process "dies" here: the items stay attempting, the queues claimed.
    }
    let store = open(&dir);
    let fail = CrashPolicy {
        on_crash: OnCrash::Fail,
        ambiguous_retry_cap: 3,
    };
    let policy: HashMap<String, CrashPolicy> = [("fail".to_string(), fail)].into();
    let report = store.recover(&policy).await.unwrap();
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
    // The resend channel's queue is claimable again.
    let b = store
        .claim("resend", Lane::Provider, i64::MAX / 2, [10, 10])
        .await
        .unwrap();
    assert_eq!(b.claimed.len(), 1);
}

#[tokio::test]
async fn attempt_log_seeds_the_limiter_one_entry_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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
        .take_head("ch", Lane::RespondIo, &q, 3, 1234)
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
