//! What every input that once crashed a fuzz target (fuzz/regressions/<target>/) must
//! produce now. `corpora.rs` replays them all for "no panic"; these pin the outcome, so a
//! fix cannot quietly turn into a different wrong answer.

use std::path::Path;

use rio_parse::clock::now_ms;
use rio_parse::harness::generic_read;

fn regression(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file in fuzz/regressions/ has its test here.
#[test]
fn every_past_crash_has_an_expected_outcome() {
    let this = include_str!("regressions.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    for dir in std::fs::read_dir(&root).into_iter().flatten() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let name = file.unwrap().file_name().to_string_lossy().into_owned();
            assert!(this.contains(&name), "{name} has no test in regressions.rs");
        }
    }
}

/// A JSON webhook dated `1012-01-15T10:02:00Z` was read as -30230373480000 ms (the year
/// 1012), which respond.io would file before every other message of the conversation. A
/// date before 1970 is no real time: it reads as "now", like an unreadable one.
#[test]
fn generic_webhook_date_before_1970_reads_as_now() {
    let data = regression(
        "generic_webhook",
        "crash-d7b08cdd76b44c5710089dbb0383244203433ed9",
    );
    let before = now_ms();
    let events = generic_read(&data).json_inbound.expect("the message reads");
    let after = now_ms();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].contact_id, "+61422222222");
    assert!(
        (before..=after).contains(&events[0].timestamp_ms),
        "{}",
        events[0].timestamp_ms
    );
}

/// A Vonage status webhook stamped `1012-01-15T10:00:00.500Z` was read as a receipt of the
/// year 1012 (-30230373599500 ms), which would order it before everything in the message's
/// history. Like the generic provider's, a timestamp before 1970 now reads as "now".
#[test]
fn vonage_receipt_dated_before_1970_reads_as_now() {
    let data = regression(
        "vonage_webhook",
        "crash-6a52ade85d07ed039b3d21d3549ea54cc04f7aee",
    );
    let parts = rio_parse::harness::webhook_parts(&data);
    let before = now_ms();
    let receipts = rio_parse::vonage::parse_receipts(&parts.request()).expect("the receipt reads");
    let after = now_ms();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0].provider_id,
        "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
    );
    assert!(
        (before..=after).contains(&receipts[0].timestamp_ms),
        "{}",
        receipts[0].timestamp_ms
    );
}

/// A Vonage inbound message `from` `4477009to000` became the contact `+4477009to000`, which
/// is no phone number: respond.io would refuse every event of it after we had acknowledged
/// the webhook. Such a sender is now refused when the webhook is read.
#[test]
fn vonage_inbound_from_that_is_no_number_is_refused() {
    let data = regression(
        "vonage_webhook",
        "crash-bc3ebeacdf9c34128722903c65cd6dd5121a4c36",
    );
    let parts = rio_parse::harness::webhook_parts(&data);
    let err = rio_parse::vonage::parse_inbound(&parts.request()).unwrap_err();
    assert!(err.contains("is not a phone number"), "{err}");
}
