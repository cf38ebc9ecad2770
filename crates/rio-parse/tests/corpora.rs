//! Replays the fuzz suite on stable: every committed corpus input (fuzz/corpus/<target>/)
//! and every input that once crashed a target (fuzz/regressions/<target>/) goes through the
//! same `rio_parse::harness` function the fuzz target calls. A panic there (a crash, or a
//! broken invariant) fails the test and names the file.
//!
//! What each past crash must now produce is asserted in `tests/regressions.rs`.

use std::path::{Path, PathBuf};

type Harness = fn(&[u8]);

/// Every fuzz target, by its name in fuzz/Cargo.toml.
const TARGETS: &[(&str, Harness)] = &[
    ("message_body", rio_parse::harness::message_body),
    ("clicksend_inbound", rio_parse::harness::clicksend_inbound),
    ("clicksend_receipts", rio_parse::harness::clicksend_receipts),
    (
        "clicksend_send_response",
        rio_parse::harness::clicksend_send_response,
    ),
    ("generic_webhook", rio_parse::harness::generic_webhook),
    ("generic_response", rio_parse::harness::generic_response),
    ("generic_template", rio_parse::harness::generic_template),
    ("retry_after", rio_parse::harness::retry_after),
    ("config_text", rio_parse::harness::config_text),
    ("twilio_webhook", rio_parse::harness::twilio_webhook),
    (
        "twilio_send_response",
        rio_parse::harness::twilio_send_response,
    ),
    ("vonage_webhook", rio_parse::harness::vonage_webhook),
    (
        "vonage_send_response",
        rio_parse::harness::vonage_send_response,
    ),
    ("telegram_webhook", rio_parse::harness::telegram_webhook),
    (
        "telegram_send_response",
        rio_parse::harness::telegram_send_response,
    ),
    ("plivo_webhook", rio_parse::harness::plivo_webhook),
    (
        "plivo_send_response",
        rio_parse::harness::plivo_send_response,
    ),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn harness(target: &str) -> Harness {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("fuzz/{target}: no harness is registered in corpora.rs"))
        .1
}

/// Runs every file of `fuzz/<kind>/<target>/`; returns how many ran.
fn replay(kind: &str) -> usize {
    let root = fuzz_dir().join(kind);
    let mut ran = 0;
    for dir in std::fs::read_dir(&root).into_iter().flatten() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        let run = harness(&target);
        for file in files(&dir) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{} panics in {target} (replay it with: cargo +nightly fuzz run {target} {})",
                file.display(),
                file.display()
            );
            ran += 1;
        }
    }
    ran
}

#[test]
fn every_target_has_a_committed_corpus() {
    let targets = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(
            targets.contains(&format!("name = \"{name}\"")),
            "{name} is not a target in fuzz/Cargo.toml"
        );
        assert!(
            !files(&fuzz_dir().join("corpus").join(name)).is_empty(),
            "fuzz/corpus/{name} is empty"
        );
    }
    let declared = targets.matches("[[bin]]").count();
    assert_eq!(
        declared,
        TARGETS.len(),
        "fuzz/Cargo.toml declares a target corpora.rs does not replay"
    );
}

#[test]
fn committed_corpora_replay_without_a_panic() {
    let ran = replay("corpus");
    assert!(ran >= TARGETS.len(), "only {ran} corpus inputs found");
}

#[test]
fn past_crashes_replay_without_a_panic() {
    replay("regressions");
}
