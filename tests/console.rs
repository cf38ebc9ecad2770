//! The web console (`/console`): its pages and their security headers over plain HTTP, the
//! lane history behind its plots, and the operator's path in a real browser — headless
//! Chromium driven through chromedriver (WebDriver) against the gateway on loopback, with
//! the respond.io emulator and the ClickSend stand-in.
//!
//! The browser test writes a screenshot at each step to `target/tmp/console-screenshots/`
//! (the path is printed). It needs Debian's `chromium` and `chromium-driver`, so it is
//! marked ignored: `cargo nextest run` lists it as skipped, `--run-ignored all` (what
//! `.ci/run` does, after installing them) runs it, and then it fails without them.
//! `CHROME_BIN` and `CHROMEDRIVER` override where they are looked for.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use rio_bridge::simulators::clicksend::SimFault;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "console-admin-token-0123456789";
const ALICE: &str = "+61400000001";
const BOB: &str = "+61400000002";
/// The customer who says "my message never arrived".
const DORA: &str = "+61400000042";

fn console_opts(server_extra: &str) -> Opts {
    Opts {
        server_extra: format!(
            "{server_extra}\n[[admin.token]]\nname = \"ops\"\ntoken = \"{ADMIN_TOKEN}\"\n"
        ),
        ..Opts::default()
    }
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("gateway reachable")
}

async fn admin_json(stage: &Stage, path: &str) -> Value {
    let r = get(&format!("{}{path}", stage.base()), Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// An agent's reply the provider stand-in rejects for good: dead at once.
async fn dead_send(stage: &Stage, to: &str, text: &str) -> String {
    stage
        .sim
        .push_fault(SimFault::MessageStatus("INVALID_RECIPIENT".into()));
    let (status, body) = stage.send(to, text).await;
    assert_eq!(status, 400, "{body}");
    wait_until("the rejected send is dead", 20, || async {
        let v = admin_json(stage, "/admin/dead-letters").await;
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["contact"] == to)
            .map(|m| m["mid"].as_str().unwrap().to_string())
    })
    .await
}

/// Some ordinary traffic both ways, delivered.
async fn everyday_traffic(stage: &Stage) {
    for (who, text) in [(ALICE, "Hi, is my order shipped?"), (BOB, "Thanks!")] {
        assert_eq!(
            stage.sim.push_inbound(who, OUR_NUMBER, text).await.unwrap(),
            200
        );
    }
    for (who, text) in [
        (ALICE, "Yes, it left this morning."),
        (BOB, "You're welcome."),
    ] {
        let (status, body) = stage.send(who, text).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_until("inbound delivered to respond.io", 20, || async {
        (stage.events_of_type("message").len() >= 2).then_some(())
    })
    .await;
}

// ---- pages and headers ---------------------------------------------------------------

#[tokio::test]
async fn console_pages_are_self_contained_and_carry_a_strict_policy() {
    let stage = Stage::new(console_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let base = stage.base();
    let mut bodies = String::new();
    for (path, ctype) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        // No token is needed for the page itself: it holds no data.
        let r = get(&format!("{base}{path}"), None).await;
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ctype),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        bodies.push_str(&r.text().await.unwrap());
    }
    // Works offline: nothing is loaded from another origin (the SVG namespace is a name,
    // not a fetch). No inline code either.
    let bodies = bodies.replace("http://www.w3.org/2000/svg", "");
    assert!(!bodies.contains("https://") && !bodies.contains("http://"));
    let html = get(&format!("{base}/console"), None)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains(r#"<script src="/console/console.js" defer></script>"#));
    assert!(!html.contains("style="));
    let handler = html.split(" on").skip(1).find(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert_eq!(handler, None, "an inline event handler");
    // The token field has no name: a form submission could not carry it anywhere.
    assert!(html.contains(r#"<input id="token" type="password""#));
    assert!(!html.contains(r#"name="token""#));

    let r = get(&format!("{base}/console/other.js"), None).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    gw.shutdown().await;
}

#[tokio::test]
async fn console_is_absent_without_admin_tokens_and_moves_to_the_internal_listener() {
    let stage = Stage::new(Opts::default()).await;
    let gw = InProcess::start(&stage).await;
    assert_eq!(
        get(&format!("{}/console", stage.base()), None)
            .await
            .status(),
        404
    );
    gw.shutdown().await;

    let internal = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stage = Stage::new(console_opts(&format!("admin_listen = \"{internal}\""))).await;
    let gw = InProcess::start(&stage).await;
    assert_eq!(
        get(&format!("{}/console", stage.base()), None)
            .await
            .status(),
        404
    );
    let r = get(&format!("http://{internal}/console"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    gw.shutdown().await;
}

// ---- lane history --------------------------------------------------------------------

fn lane<'a>(h: &'a Value, direction: &str) -> &'a Value {
    h["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["channel"] == "sms" && l["direction"] == direction)
        .unwrap_or_else(|| panic!("no {direction} lane in {h}"))
}

fn total(l: &Value, field: &str) -> i64 {
    l[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn lane_history_counts_requests_deliveries_failures_and_dead_letters() {
    let stage = Stage::new(console_opts("")).await;
    let gw = InProcess::start(&stage).await;
    let url = format!("{}/admin/lanes/history", stage.base());
    assert_eq!(get(&url, None).await.status(), 401);
    assert_eq!(
        get(&format!("{url}?since=soon"), Some(ADMIN_TOKEN))
            .await
            .status(),
        400
    );
    assert_eq!(
        get(&format!("{url}?until=1"), Some(ADMIN_TOKEN))
            .await
            .status(),
        400
    );

    everyday_traffic(&stage).await;
    dead_send(&stage, DORA, "Your parcel is at the depot").await;
    // Samples come every 5 s; the counts of all of them add up to what happened.
    let h = wait_until("the history shows the traffic", 30, || async {
        let h = admin_json(&stage, "/admin/lanes/history").await;
        let p = lane(&h, "to_provider");
        let dead = p["dead"].as_array().unwrap().last().and_then(Value::as_i64);
        (total(p, "delivered") >= 2 && total(p, "failed") >= 1 && dead == Some(1)).then_some(h)
    })
    .await;
    assert_eq!(h["sample_every_ms"], 5000);
    let p = lane(&h, "to_provider");
    assert_eq!(total(p, "delivered"), 2, "{p}");
    assert_eq!(total(p, "failed"), 1, "{p}");
    assert_eq!(total(p, "requests"), 3, "{p}");
    let n = p["at_ms"].as_array().unwrap().len();
    for field in [
        "interval_ms",
        "depth",
        "oldest_age_ms",
        "dead",
        "requests",
        "delivered",
        "failed",
    ] {
        assert_eq!(p[field].as_array().unwrap().len(), n, "{field}");
    }
    let at: Vec<i64> = p["at_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    // Toward respond.io: the two contacts' messages (batched or not) and the statuses.
    let r = lane(&h, "to_respondio");
    assert!(total(r, "delivered") >= 2, "{r}");
    assert_eq!(total(r, "failed"), 0, "{r}");

    // `since` returns only the newer samples.
    let last = *at.last().unwrap();
    let newer = admin_json(&stage, &format!("/admin/lanes/history?since={last}")).await;
    let newer_at = lane(&newer, "to_provider")["at_ms"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!newer_at.is_empty() && newer_at.iter().all(|t| t.as_i64().unwrap() >= last));
    gw.shutdown().await;
}

// ---- in a real browser ---------------------------------------------------------------

/// A program on PATH (or the path in `env_var`).
fn find_program(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver and a headless Chromium session; both end when this is dropped.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    /// Panics, saying what to install, where Chromium or chromedriver is missing.
    async fn start(shots: PathBuf) -> Browser {
        let chrome = find_program(
            "CHROME_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let driver = find_program("CHROMEDRIVER", &["chromedriver"]);
        let (Some(chrome), Some(driver)) = (chrome, driver) else {
            panic!(
                "the console's browser test needs Chromium and chromedriver \
                 (Debian: apt-get install -y chromium chromium-driver; .ci/run installs them)"
            );
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let status = format!("http://127.0.0.1:{port}/status");
        wait_until("chromedriver ready", 30, || async {
            let r = reqwest::get(&status).await.ok()?;
            let v: Value = r.json().await.ok()?;
            (v["value"]["ready"] == true).then_some(())
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": [
                    "--headless=new",
                    // Containers and CI run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        // A fresh set each run (no failed.png from an earlier one).
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            _driver: child,
            _profile: profile,
            shots,
        }
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Waits until the element at `css` exists and its text contains `needle`. On time
    /// out, the page as it was goes to `failed.png` and its text into the panic message.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
                && t.contains(needle)
            {
                return t;
            }
            if std::time::Instant::now() > deadline {
                self.shot("failed").await;
                let page = match self.client.find(Locator::Css("body")).await {
                    Ok(b) => b.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                panic!("timed out waiting for {css} to show {needle:?}; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element at `css`, finding it again if the page redrew it in between
    /// (the overview refreshes itself).
    async fn click(&self, css: &str) {
        self.wait_text(css, "").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await,
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                Err(err) if std::time::Instant::now() > deadline => panic!("click {css}: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }
}

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// "My message never arrived": the operator signs in, sees the channel, finds the message
/// by the customer's number, reads its timeline and channel logs (the provider refused
/// it), replays the dead letter and watches it go out.
#[tokio::test]
#[ignore = "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"]
async fn in_a_browser_search_timeline_and_replay_of_a_dead_letter() {
    let browser = Browser::start(screenshot_dir()).await;
    let stage = Stage::new(console_opts("")).await;
    let gw = InProcess::start(&stage).await;
    everyday_traffic(&stage).await;
    let mid = dead_send(
        &stage,
        DORA,
        "Your parcel is at the depot, pick it up by Friday",
    )
    .await;
    let c = &browser.client;

    // Sign in: a wrong token is refused, the right one opens the overview.
    c.goto(&format!("{}/console", stage.base())).await.unwrap();
    browser.type_into("#token", "not-the-token").await;
    browser.click("#signin").await;
    browser
        .wait_text("#login-error", "not one of the admin tokens")
        .await;
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.shot("01-sign-in").await;
    browser.click("#signin").await;
    let row = "section[data-channel='sms'] tr[data-lane='to_provider']";
    browser.wait_text(row, "running").await;
    // The dead letter shows on its lane, and the plots have samples.
    browser
        .wait_text(&format!("{row} td:nth-child(7)"), "1")
        .await;
    browser
        .wait_text("section[data-channel='sms'] .plots", "(now ")
        .await;
    browser.shot("02-overview").await;

    // Pause the lane (the console asks first), then resume it.
    browser
        .click(&format!("{row} button[data-action='pause']"))
        .await;
    c.accept_alert().await.expect("the pause confirmation");
    browser.wait_text(row, "paused").await;
    browser.shot("03-paused").await;
    browser
        .click(&format!("{row} button[data-action='resume']"))
        .await;
    browser.wait_text(row, "running").await;

    // The dead-letters page lists it with the provider's reason.
    browser.click(&format!("{row} td:nth-child(7) a")).await;
    browser.wait_text("#dead-table", &mid).await;
    browser.wait_text("#dead-table", "INVALID_RECIPIENT").await;
    browser.shot("04-dead-letters").await;

    // Search by the number as the customer gives it: spaces, and no leading +.
    browser.click("#nav a[data-page='messages']").await;
    browser.type_into("#q", "61 400 000 042").await;
    browser.click("#search").await;
    let result = format!("#results-table tr[data-mid='{mid}']");
    browser.wait_text(&result, "dead").await;
    browser.shot("05-search").await;

    // The timeline: why it died, with the provider exchange from the channel log.
    browser.click(&format!("{result} a.mid")).await;
    browser.wait_text("#verdict", "Dead letter").await;
    browser.wait_text("#verdict", "INVALID_RECIPIENT").await;
    browser.wait_text("#timeline", "attempt dead").await;
    let send = "//details[contains(@class, 'exchange')]/summary[contains(., '/v3/sms/send')]";
    c.find(Locator::XPath(send))
        .await
        .expect("the provider exchange")
        .click()
        .await
        .unwrap();
    let exchange = browser
        .wait_text("#timeline details.exchange[open]", "INVALID_RECIPIENT")
        .await;
    assert!(exchange.contains("/v3/sms/send"), "{exchange}");
    assert!(exchange.contains("INVALID_RECIPIENT"), "{exchange}");
    assert!(
        !exchange.contains(CS_KEY),
        "the channel log must not show the API key"
    );
    browser.shot("06-timeline").await;
    // Fold the exchange again, so the end of the timeline shows after the replay.
    c.find(Locator::XPath(send))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Replay: the stand-in accepts it this time, and the page follows it to delivered
    // (respond.io keeps the failed status it was told: README, What a replay sends).
    browser.click("#replay").await;
    browser.wait_text("#banner", "Replayed 1").await;
    // The stand-in pushes the replay's receipt once; pushed again here (a redelivery,
    // deduplicated), so the page does not depend on that single push having landed.
    let replay_id = wait_until("the replay accepted by the stand-in", 30, || async {
        stage
            .sim
            .sent()
            .iter()
            .rev()
            .find(|a| a.status == 200 && a.body["messages"][0]["custom_string"] == mid.as_str())
            .and_then(|a| a.message_ids.first().cloned())
    })
    .await;
    assert_eq!(stage.sim.push_receipt(&replay_id, 201, None).await, Ok(200));
    browser
        .wait_text("#verdict", "Replayed and delivered to the contact")
        .await;
    // Two calls reached the stand-in with this mId: the one it refused, and the replay
    // (the delivery receipt above is the stand-in's, for the message it queued).
    assert_eq!(
        accepted_mids(&stage.sim)
            .iter()
            .filter(|m| **m == mid)
            .count(),
        2
    );
    browser.wait_text("#timeline", "replay").await;
    browser.shot("07-replayed-and-delivered").await;

    // The audit log names who did it.
    browser.click("#nav a[data-page='audit']").await;
    let audit = browser.wait_text("#view table", "ops").await;
    for action in ["pause", "resume", "replay"] {
        assert!(audit.contains(action), "{audit}");
    }
    browser.shot("08-audit").await;

    // Signing out forgets the token: the next visit asks again.
    browser.click("#signout").await;
    browser.wait_text("#login-error", "Signed out").await;
    c.goto(&format!("{}/console#/messages", stage.base()))
        .await
        .unwrap();
    browser.wait_text("#login", "Sign in").await;
    let stored = c
        .execute("return sessionStorage.length", vec![])
        .await
        .unwrap();
    assert_eq!(stored, json!(0));

    eprintln!("console screenshots in {}", browser.shots.display());
    browser.client.clone().close().await.unwrap();
    gw.shutdown().await;
}
