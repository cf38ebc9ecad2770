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

/// check-config on a provider example, with its variables set except those in `unset`.
fn check_example(file: &str, vars: &[(&str, &str)], unset: &[&str]) -> (Option<i32>, String) {
    let mut cmd = bin();
    cmd.args(["check-config", "--config"])
        .arg(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR")));
    for (k, v) in vars {
        if unset.contains(k) {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_config_telegram_and_plivo_examples_and_missing_credentials() {
    let tg = [
        ("RIO_TG_TOKEN", "token"),
        ("TELEGRAM_BOT_TOKEN", "123456:ABC-def_ghi"),
        ("TELEGRAM_SECRET_TOKEN", "s3cret_token-value"),
    ];
    let (code, text) = check_example("telegram.toml", &tg, &[]);
    assert_eq!(code, Some(0), "{text}");
    let tg_empty = [tg[0], ("TELEGRAM_BOT_TOKEN", ""), tg[2]];
    let (code, text) = check_example("telegram.toml", &tg_empty, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("channel[0].telegram.bot_token"), "{text}");
    let (code, text) = check_example("telegram.toml", &tg, &["TELEGRAM_SECRET_TOKEN"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("TELEGRAM_SECRET_TOKEN"), "{text}");

    let pl = [
        ("RIO_PLIVO_TOKEN", "token"),
        ("PLIVO_AUTH_ID", "MAZDQ1ZJIYMDZKMJQ2MZ"),
        ("PLIVO_AUTH_TOKEN", "plivo-token"),
    ];
    let (code, text) = check_example("plivo.toml", &pl, &[]);
    assert_eq!(code, Some(0), "{text}");
    let pl_empty = [pl[0], pl[1], ("PLIVO_AUTH_TOKEN", "")];
    let (code, text) = check_example("plivo.toml", &pl_empty, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("channel[0].plivo.auth_token"), "{text}");
    assert!(
        !text.contains("plivo-token"),
        "a secret is never printed: {text}"
    );
}

#[test]
fn check_config_accepts_the_http_provider_examples_and_names_mapping_problems() {
    let check = |path: &std::path::Path| {
        bin()
            .args(["check-config", "--config"])
            .arg(path)
            .env("RIO_TOKEN", "token")
            .env("SMS_HOOK_SECRET", "a-long-webhook-secret-0123456789")
            .env("CLICKSEND_USERNAME", "user")
            .env("CLICKSEND_API_KEY", "key")
            .env("VONAGE_API_KEY", "key")
            .env("VONAGE_API_SECRET", "secret")
            .output()
            .unwrap()
    };
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for name in ["http-clicksend.toml", "http-vonage-sms.toml"] {
        let out = check(&examples.join(name));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = std::fs::read_to_string(examples.join("http-clicksend.toml"))
        .unwrap()
        .replace("to = \"{contact_id}\"", "to = \"{contact}\"")
        .replace("id_pointer = \"/data/messages/0/message_id\"", "")
        .replace("contact_id = \"from\"", "contact_id = \"/from\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, text).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "channel[0].http.send.json.messages[0].to: unknown placeholder {contact}",
        "channel[0].http.send.attachment.json.messages[0].to: unknown placeholder {contact}",
        "channel[0].http.send.response.id_pointer: is required",
        "channel[0].http.inbound.contact_id: \"/from\" looks like a JSON Pointer",
    ] {
        assert!(text.contains(key), "{key} missing in:\n{text}");
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check-config", "--help"],
        vec!["emulate", "respondio", "--help"],
        vec!["demo", "--help"],
        vec!["backup", "--help"],
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
    assert!(first.contains("applied migrations [2, 3, 4]"), "{first}");
    let second = run();
    assert!(second.contains("up to date"), "{second}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, rio_bridge::store::sqlite::migrate::latest());
    let kept: i64 = conn
        .query_row("SELECT COUNT(*) FROM dedupe", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1);
    let logs: i64 = conn
        .query_row("SELECT COUNT(*) FROM channel_logs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logs, 0);
}
