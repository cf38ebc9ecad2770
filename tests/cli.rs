//! The command line: check-config reports problems with their keys; --help everywhere.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rio-bridge"))
}

#[test]
fn check_config_lists_problems_with_keys_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
public_url = "not a url"
[[channel]]
name = "sms"
respondio_channel_id = "CH1"
respondio_token = "${RIO_TEST_UNSET_TOKEN}"
provider = "clicksend"
"#,
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("RIO_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("channel[0].respondio_token") && text.contains("RIO_TEST_UNSET_TOKEN"),
        "{text}"
    );

    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("RIO_TEST_UNSET_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "server.public_url",
        "channel[0].webhook_secret",
        "channel[0].clicksend",
    ] {
        assert!(text.contains(key), "{key} missing in:\n{text}");
    }
}

#[test]
fn check_config_accepts_the_example() {
    let out = bin()
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rio-bridge.toml"),
        ])
        .env("RIO_TOKEN", "token")
        .env("SMS_HOOK_SECRET", "secret")
        .env("CLICKSEND_KEY", "key")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check-config", "--help"],
        vec!["emulate", "respondio", "--help"],
        vec!["demo", "--help"],
        vec!["migrate", "--help"],
        vec!["admin", "--help"],
        vec!["admin", "replay", "--help"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn backup_writes_a_checked_copy_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    // The real schema, made by the store itself.
    drop(
        rio_bridge::store::sqlite::SqliteStore::open(&rio_bridge::config::StoreConfig {
            path: db.clone(),
            ..Default::default()
        })
        .unwrap(),
    );
    let cfg = dir.path().join("rio-bridge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[store]
path = "{}"
[[channel]]
name = "sms"
respondio_channel_id = "CH1"
respondio_token = "t"
provider = "clicksend"
webhook_secret = "s"
[channel.clicksend]
username = "u"
api_key = "k"
"#,
            db.display()
        ),
    )
    .unwrap();
    let out_path = dir.path().join("copy.db");
    let run = || {
        bin()
            .args(["backup", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out_path)
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("backup written") && text.contains("0 items"),
        "{text}"
    );
    assert!(out_path.exists());
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
}

#[test]
fn migrate_upgrades_a_first_release_file_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(include_str!("fixtures/schema/v1.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO dedupe(channel, key, expires_ms) VALUES ('sms', 'k1', 1)",
            [],
        )
        .unwrap();
    }
    let cfg = dir.path().join("rio-bridge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[store]
path = "{}"
[[channel]]
name = "sms"
respondio_channel_id = "CH1"
respondio_token = "token"
provider = "clicksend"
webhook_secret = "secret"
[channel.clicksend]
username = "u"
api_key = "k"
"#,
            db.display()
        ),
    )
    .unwrap();
    let run = || {
        let out = bin()
            .args(["migrate", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(first.contains("applied migrations [2]"), "{first}");
    let second = run();
    assert!(second.contains("up to date"), "{second}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 2);
    let kept: i64 = conn
        .query_row("SELECT COUNT(*) FROM dedupe", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1);
    let logs: i64 = conn
        .query_row("SELECT COUNT(*) FROM channel_logs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logs, 0);
}
