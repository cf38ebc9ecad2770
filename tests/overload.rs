//! Overload: a flood against a stalled store finds bounded queues and 503 with
//! `Retry-After` beyond them, provider webhooks refused before respond.io's `/message`; a
//! `/message` whose caller hung up before its commit ran is not committed.
//!
//! The store is stalled the way a backup or an operator's shell stalls it: another
//! connection holds SQLite's write lock (shorter than `busy_timeout_ms`, so what waits
//! behind it goes through once the lock is gone).

mod common;

use common::*;
use serde_json::json;

/// Holds SQLite's write lock on `db` from another connection until `release` fires;
/// `locked` fires once it is held.
fn hold_write_lock(
    db: std::path::PathBuf,
    locked: tokio::sync::oneshot::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let _ = locked.send(());
        let _ = release.recv();
        conn.execute_batch("COMMIT").unwrap();
    })
}

struct Lock {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

async fn lock(stage: &Stage) -> Lock {
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let holder = hold_write_lock(stage.db_path(), locked_tx, release_rx);
    locked.await.unwrap();
    Lock { release, holder }
}

impl Lock {
    fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

/// The stage's config with `lines` added to `[store]`.
fn with_store(stage: &Stage, lines: &str) {
    std::fs::write(
        stage.config_path(),
        std::fs::read_to_string(stage.config_path())
            .unwrap()
            .replace("[store]\n", &format!("[store]\n{lines}\n")),
    )
    .unwrap();
}

/// (status, Retry-After) of an answer; (0, None) when there was none.
type Answer = (u16, Option<String>);

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    match req.send().await {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ),
        Err(_) => (0, None),
    }
}

/// A ClickSend inbound webhook from `from` with `text`.
fn webhook(
    http: &reqwest::Client,
    stage: &Stage,
    from: &str,
    text: &str,
) -> reqwest::RequestBuilder {
    let id = format!("cs-{}", text.replace(' ', "-"));
    http.post(format!(
        "{}/channels/sms/inbound?secret={SECRET}",
        stage.base()
    ))
    .form(&[
        ("timestamp", (chrono_now_s()).to_string()),
        ("from", from.to_string()),
        ("to", OUR_NUMBER.to_string()),
        ("body", text.to_string()),
        ("message_id", id),
    ])
}

fn chrono_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// respond.io's `POST /channels/sms/message` to `contact` with `text`.
fn message(
    http: &reqwest::Client,
    stage: &Stage,
    contact: &str,
    text: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{}/channels/sms/message", stage.base()))
        .bearer_auth(TOKEN)
        .json(&json!({
            "channelId": CHANNEL_ID,
            "contactId": contact,
            "message": {"type": "text", "text": text},
        }))
}

/// The value of the first `/metrics` sample whose line starts with `prefix`.
async fn metric(http: &reqwest::Client, stage: &Stage, prefix: &str) -> Option<f64> {
    let text = http
        .get(format!("{}/metrics", stage.base()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls until exactly those of `tasks` that will finish while the store is stalled have
/// (`want` of them), and returns their answers; the rest are still waiting.
async fn settled(
    what: &str,
    tasks: &mut Vec<tokio::task::JoinHandle<Answer>>,
    want: usize,
) -> Vec<Answer> {
    wait_until(what, 30, || {
        let done = tasks.iter().filter(|t| t.is_finished()).count();
        async move { (done >= want).then_some(()) }
    })
    .await;
    let mut answered = Vec::new();
    let mut waiting = Vec::new();
    for t in tasks.drain(..) {
        if t.is_finished() {
            answered.push(t.await.unwrap());
        } else {
            waiting.push(t);
        }
    }
    *tasks = waiting;
    answered
}

/// With the store stalled, a flood finds the queue bounded: webhooks are refused with 503
/// and `Retry-After` once `webhook_queue_max` requests wait, `/message` only once
/// `queue_max` do; the gauge shows the queue; what was admitted goes through once the
/// store is back, and nothing refused was taken.
#[tokio::test]
async fn a_flood_against_a_stalled_store_is_bounded_and_sheds_webhooks_first() {
    let stage = Stage::new(Opts::default()).await;
    with_store(
        &stage,
        "busy_timeout_ms = 20000\nqueue_max = 8\nwebhook_queue_max = 4",
    );
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let lock = lock(&stage).await;

    // 12 webhooks: 4 wait for the store, 8 are refused at once.
    let mut hooks = Vec::new();
    for n in 0..12 {
        let req = webhook(
            &http,
            &stage,
            &format!("+614000005{n:02}"),
            &format!("flood {n}"),
        );
        hooks.push(tokio::spawn(answer(req)));
    }
    let refused = settled("8 webhooks refused", &mut hooks, 8).await;
    assert_eq!(refused.len(), 8, "{refused:?}");
    for a in &refused {
        assert_eq!(a.0, 503, "{refused:?}");
        assert!(
            a.1.as_deref().is_some_and(|s| s.parse::<u64>().is_ok()),
            "Retry-After: {refused:?}"
        );
    }
    assert_eq!(hooks.len(), 4, "4 webhooks wait for the store");

    // /message still gets in, up to the whole queue: 4 more wait, 2 are refused.
    let mut sends = Vec::new();
    for n in 0..6 {
        let req = message(
            &http,
            &stage,
            &format!("+614000006{n:02}"),
            &format!("send {n}"),
        );
        sends.push(tokio::spawn(answer(req)));
    }
    let refused = settled("2 sends refused", &mut sends, 2).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    for a in &refused {
        assert_eq!(a.0, 503, "{refused:?}");
        assert!(a.1.is_some(), "Retry-After: {refused:?}");
    }
    assert_eq!(sends.len(), 4, "4 sends wait for the store");
    // A webhook now is refused at once, the queue being full.
    let late = answer(webhook(&http, &stage, "+61400000599", "late")).await;
    assert_eq!(late.0, 503, "{late:?}");
    assert!(late.1.is_some(), "{late:?}");

    // The gauge shows the queue.
    let depth_of = |class: &'static str| {
        let (http, stage) = (&http, &stage);
        async move {
            metric(
                http,
                stage,
                &format!("rio_store_queue_depth{{class=\"{class}\"}}"),
            )
            .await
            .unwrap_or(-1.0)
        }
    };
    assert_eq!(depth_of("webhook").await, 4.0);
    assert_eq!(depth_of("message").await, 4.0);

    // The store is back: everything admitted is committed and answered 200.
    lock.release();
    for t in hooks.into_iter().chain(sends) {
        let a = t.await.unwrap();
        assert_eq!(a.0, 200, "{a:?}");
    }
    wait_until("the admitted webhooks at respond.io", 30, || async {
        (stage.events_of_type("message").len() >= 4).then_some(())
    })
    .await;
    wait_until("the admitted sends at the provider", 30, || async {
        (accepted_mids(&stage.sim).len() >= 4).then_some(())
    })
    .await;
    // Nothing refused was taken: 4 inbound and 4 sends in the store, no more.
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let count = |lane: i64| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM items WHERE lane = ?1 AND kind IN (0, 3)",
            [lane],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count(0), 4, "inbound items");
    assert_eq!(count(1), 4, "sends");
    wait_until("the queue empty again", 30, || async {
        (depth_of("webhook").await == 0.0 && depth_of("message").await == 0.0).then_some(())
    })
    .await;
    gw.shutdown().await;
}

/// respond.io's `/message` hangs up while its commit waits behind a stalled store: the
/// message is not committed (nobody was told it was), and is never sent.
#[tokio::test]
async fn a_message_whose_caller_hung_up_before_its_commit_is_not_committed() {
    let stage = Stage::new(Opts::default()).await;
    with_store(&stage, "busy_timeout_ms = 20000");
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let lock = lock(&stage).await;

    let abandoned = tokio::spawn(answer(message(
        &http,
        &stage,
        "+61400000701",
        "nobody waits for this",
    )));
    let queued = "rio_store_queue_depth{class=\"message\"}";
    wait_until("the send waits for the store", 30, || async {
        (metric(&http, &stage, queued).await == Some(1.0)).then_some(())
    })
    .await;
    // respond.io gives up: the connection closes.
    abandoned.abort();
    let hung_up = "rio_http_request_duration_seconds_count{route=\"/channels/{name}/message\",status=\"499\"}";
    wait_until("the gateway saw the caller go", 30, || async {
        (metric(&http, &stage, hung_up).await == Some(1.0)).then_some(())
    })
    .await;

    lock.release();
    let (status, body) = stage.send("+61400000702", "after the stall").await;
    assert_eq!(status, 200, "{body}");
    wait_until("the later send at the provider", 30, || async {
        (accepted_mids(&stage.sim).len() == 1).then_some(())
    })
    .await;
    let conn = rusqlite::Connection::open(stage.db_path()).unwrap();
    let sends: Vec<String> = conn
        .prepare("SELECT payload FROM items WHERE lane = 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        sends.len(),
        1,
        "only the send whose caller waited: {sends:?}"
    );
    assert!(sends[0].contains("after the stall"), "{sends:?}");
    let texts: Vec<String> = stage
        .sim
        .sent()
        .iter()
        .map(|a| a.body.to_string())
        .collect();
    assert!(
        !texts.iter().any(|t| t.contains("nobody waits")),
        "{texts:?}"
    );
    assert_eq!(metric(&http, &stage, queued).await, Some(0.0));
    gw.shutdown().await;
}

/// Requests handled at once are bounded too (`server.max_concurrent_requests`), before
/// their body is read: beyond it 503 with `Retry-After`; webhooks have the smaller share
/// (`server.max_concurrent_webhooks`), so `/message` still gets in; health checks always do.
#[tokio::test]
async fn concurrent_requests_are_bounded_and_webhooks_refused_first() {
    let stage = Stage::new(Opts {
        server_extra: "max_concurrent_requests = 3\nmax_concurrent_webhooks = 1".into(),
        ..Opts::default()
    })
    .await;
    with_store(&stage, "busy_timeout_ms = 20000");
    let gw = InProcess::start(&stage).await;
    let http = reqwest::Client::new();
    let lock = lock(&stage).await;

    // Three webhooks: one is handled (it waits for the store), two are refused.
    let mut hooks = Vec::new();
    for n in 0..3 {
        let req = webhook(
            &http,
            &stage,
            &format!("+614000010{n:02}"),
            &format!("hook {n}"),
        );
        hooks.push(tokio::spawn(answer(req)));
    }
    let refused = settled("2 webhooks refused", &mut hooks, 2).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    for a in &refused {
        assert_eq!(a.0, 503, "{refused:?}");
        assert!(a.1.is_some(), "Retry-After: {refused:?}");
    }
    // /message takes the other two places; a third is refused.
    let mut sends = Vec::new();
    for n in 0..3 {
        let req = message(
            &http,
            &stage,
            &format!("+614000011{n:02}"),
            &format!("send {n}"),
        );
        sends.push(tokio::spawn(answer(req)));
    }
    let refused = settled("1 send refused", &mut sends, 1).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, 503, "{refused:?}");
    assert!(refused[0].1.is_some(), "Retry-After: {refused:?}");
    assert_eq!(
        answer(http.get(format!("{}/healthz", stage.base())))
            .await
            .0,
        200,
        "health checks are never refused"
    );

    lock.release();
    for t in hooks.into_iter().chain(sends) {
        let a = t.await.unwrap();
        assert_eq!(a.0, 200, "{a:?}");
    }
    // The places are given back: a webhook gets in again.
    let again = answer(webhook(&http, &stage, "+61400001099", "after")).await;
    assert_eq!(again.0, 200, "{again:?}");
    gw.shutdown().await;
}
