//! The generic provider as a whole: the shipped example mappings, check-config's problems,
//! sends over loopback HTTP to a recording server, and the Vonage SMS API example against
//! recorded payloads shaped like the real ones (tests/fixtures/http-vonage-sms).

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use serde_json::{Value, json};

use super::*;
use crate::config::Config as FileConfig;
use crate::respondio::wire::{Attachment, StatusValue};

const HOOK: &str = "a-long-webhook-secret-0123456789";

fn env(k: &str) -> Option<String> {
    Some(
        match k {
            "RIO_TOKEN" => "rio-token",
            "SMS_HOOK_SECRET" => HOOK,
            "CLICKSEND_USERNAME" => "csuser",
            "CLICKSEND_API_KEY" => "cs-key",
            "VONAGE_API_KEY" => "vkey",
            "VONAGE_API_SECRET" => "v&secret=1",
            _ => return None,
        }
        .to_string(),
    )
}

fn example(name: &str) -> String {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/http-vonage-sms/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim_end()
        .to_string()
}

/// An example with its gateway's API host pointed at `api` (a local server).
fn provider(example_text: &str, api: &str) -> HttpProvider {
    let text = example_text
        .replace("https://rest.clicksend.com", api)
        .replace("https://rest.nexmo.com", api);
    let cfg = FileConfig::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    let compiled = compile(&cfg.channels[0], &|f| f.to_string()).unwrap();
    HttpProvider::new(
        compiled,
        ProviderEnv {
            channel: "sms".into(),
            public_url: "https://gw.example.com".into(),
            client: reqwest::Client::new(),
        },
    )
}

#[test]
fn the_examples_pass_check_config() {
    for name in ["http-clicksend.toml", "http-vonage-sms.toml"] {
        if let Err(e) = FileConfig::from_toml(&example(name), &env) {
            panic!("{name}: {e}");
        }
    }
}

/// A small mapping to break one piece at a time.
const BASE: &str = r#"
[[channel]]
name = "sms"
respondio_channel_id = "CH1"
respondio_token = "tok"
provider = "http"
webhook_secret = "a-long-webhook-secret-0123456789"
[channel.http.secrets]
token = "t0ken"
[channel.http.send]
url = "https://api.example.com/v1/messages"
headers = { Authorization = "Bearer {secret.token}" }
json = { to = "{contact_id}", text = "{text}" }
[channel.http.send.response]
id_pointer = "/id"
[channel.http.inbound]
format = "json"
contact_id = "/from"
message_id = "/id"
text = "/text"
[channel.http.receipt]
format = "json"
provider_id = "/id"
status = "/status"
statuses = { DELIVRD = "delivered" }
"#;

#[test]
fn check_config_names_every_problem_by_its_key() {
    assert!(
        FileConfig::from_toml(BASE, &env).is_ok(),
        "{:?}",
        FileConfig::from_toml(BASE, &env).err()
    );
    let json_line = r#"json = { to = "{contact_id}", text = "{text}" }"#;
    // (what, replace, with, expected key, words in the message)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "unknown placeholder",
            json_line,
            r#"json = { to = "{contact}", text = "{text}" }"#,
            "channel[0].http.send.json.to",
            "unknown placeholder {contact}",
        ),
        (
            "malformed template",
            json_line,
            r#"json = { to = "{contact_id", text = "{text}" }"#,
            "channel[0].http.send.json.to",
            "unclosed {",
        ),
        (
            "attachment placeholder in text request",
            json_line,
            r#"json = { to = "{contact_id}", text = "{text}", m = ["{attachment_url}"] }"#,
            "channel[0].http.send.json.m[0]",
            "only known in [channel.http.send.attachment]",
        ),
        (
            "unknown secret",
            "Bearer {secret.token}",
            "Bearer {secret.tokn}",
            "channel[0].http.send.headers.Authorization",
            "no secret \"tokn\"",
        ),
        (
            "empty secret",
            "token = \"t0ken\"",
            "token = \"\"",
            "channel[0].http.secrets.token",
            "is empty",
        ),
        (
            "no credentials used",
            "headers = { Authorization = \"Bearer {secret.token}\" }",
            "",
            "channel[0].http.send",
            "uses no {secret.NAME}",
        ),
        (
            "text never sent",
            json_line,
            r#"json = { to = "{contact_id}" }"#,
            "channel[0].http.send.json",
            "never uses {text}",
        ),
        (
            "bad url",
            "https://api.example.com/v1/messages",
            "api.example.com/v1",
            "channel[0].http.send.url",
            "not a URL",
        ),
        (
            "credentials in url",
            "https://api.example.com/v1/messages",
            "https://u:p@api.example.com/",
            "channel[0].http.send.url",
            "basic_auth",
        ),
        (
            "json and form",
            json_line,
            "json = { text = \"{text}\" }\nform = { text = \"{text}\" }",
            "channel[0].http.send.form",
            "exclusive",
        ),
        (
            "GET with a body",
            "[channel.http.send]\n",
            "[channel.http.send]\nmethod = \"GET\"\n",
            "channel[0].http.send.method",
            "GET carries no body",
        ),
        (
            "bad method",
            "[channel.http.send]\n",
            "[channel.http.send]\nmethod = \"BREW\"\n",
            "channel[0].http.send.method",
            "BREW",
        ),
        (
            "bad header name",
            "headers = { Authorization",
            "headers = { \"Bad Header\" = \"x\", Authorization",
            "channel[0].http.send.headers.Bad Header",
            "header name",
        ),
        (
            "no id pointer",
            "id_pointer = \"/id\"",
            "",
            "channel[0].http.send.response.id_pointer",
            "is required",
        ),
        (
            "bad pointer",
            "id_pointer = \"/id\"",
            "id_pointer = \"id\"",
            "channel[0].http.send.response.id_pointer",
            "JSON Pointer",
        ),
        (
            "bad pointer escape",
            "id_pointer = \"/id\"",
            "id_pointer = \"/a~b\"",
            "channel[0].http.send.response.id_pointer",
            "~0",
        ),
        (
            "inbound pointer in form",
            "format = \"json\"\ncontact_id",
            "format = \"form\"\ncontact_id",
            "channel[0].http.inbound.contact_id",
            "looks like a JSON Pointer",
        ),
        (
            "inbound without sender",
            "contact_id = \"/from\"\n",
            "",
            "channel[0].http.inbound.contact_id",
            "is required",
        ),
        (
            "receipt status meaning",
            "DELIVRD = \"delivered\"",
            "DELIVRD = \"done\"",
            "channel[0].http.receipt.statuses.DELIVRD",
            "not one of",
        ),
        (
            "no webhook secret",
            "webhook_secret = \"a-long-webhook-secret-0123456789\"",
            "",
            "channel[0].webhook_secret",
            "is required",
        ),
        (
            "short webhook secret",
            "webhook_secret = \"a-long-webhook-secret-0123456789\"",
            "webhook_secret = \"abc\"",
            "channel[0].webhook_secret",
            "too short",
        ),
        (
            "hmac without header",
            "[channel.http.inbound]",
            "[channel.http.auth]\nkind = \"hmac\"\n[channel.http.inbound]",
            "channel[0].http.auth.header",
            "is required",
        ),
        (
            "misspelt section",
            "[channel.http.send]\n",
            "[channel.http.sendx]\n",
            "channel[0].http.sendx",
            "unknown field",
        ),
        (
            "no send section",
            "[channel.http.send]\nurl = \"https://api.example.com/v1/messages\"\nheaders = { Authorization = \"Bearer {secret.token}\" }\njson = { to = \"{contact_id}\", text = \"{text}\" }\n[channel.http.send.response]\nid_pointer = \"/id\"\n",
            "",
            "channel[0].http.send",
            "section [channel.http.send] is required",
        ),
        (
            "typo in a key",
            "id_pointer = \"/id\"",
            "id_pointer = \"/id\"\nsucess_pointer = \"/ok\"",
            "channel[0].http.send.response.sucess_pointer",
            "unknown field",
        ),
        (
            "zero rate",
            "[channel.http.secrets]",
            "[channel.http]\nrate_limit = 0\n[channel.http.secrets]",
            "channel[0].http.rate_limit",
            "at least 1",
        ),
    ];
    for (what, from, to, key, words) in cases {
        assert!(BASE.contains(from), "{what}: base lacks {from:?}");
        let text = BASE.replacen(from, to, 1);
        let err = FileConfig::from_toml(&text, &env)
            .err()
            .unwrap_or_else(|| panic!("{what}: no problem reported"));
        let hit = err
            .0
            .iter()
            .find(|p| p.key == *key && p.message.contains(words));
        assert!(
            hit.is_some(),
            "{what}: wanted {key}: …{words}…, got {:?}",
            err.0
        );
    }
    // Secrets never show in problems.
    let err = FileConfig::from_toml(
        &BASE.replace(
            "{secret.token}\" }",
            "{secret.token}\" }\nbasic_auth = { username = \"{nope}\" }",
        ),
        &env,
    )
    .unwrap_err();
    assert!(!err.to_string().contains("t0ken"), "{err}");
}

// ---- a recording HTTP server standing in for "the gateway's API" ----

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// (HTTP status, extra headers, body) of one canned answer.
type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answers in order; the last one repeats.
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Recorder {
    async fn start(answers: Vec<Answer>) -> (Recorder, String) {
        let rec = Recorder {
            seen: Arc::default(),
            answers: Arc::new(Mutex::new(answers)),
        };
        let r = rec.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: axum::body::Bytes| {
                let r = r.clone();
                async move {
                    r.seen.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        path_query: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers,
                        body: body.to_vec(),
                    });
                    let (status, hs, body) = {
                        let mut a = r.answers.lock().unwrap();
                        if a.len() > 1 {
                            a.remove(0)
                        } else {
                            a[0].clone()
                        }
                    };
                    let mut resp = axum::response::Response::new(axum::body::Body::from(body));
                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    for (k, v) in hs {
                        resp.headers_mut()
                            .insert(k, HeaderValue::from_str(&v).unwrap());
                    }
                    resp
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (rec, base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn ok(body: &str) -> Answer {
    (200, vec![], body.to_string())
}

async fn send(p: &HttpProvider, m: &Message) -> Result<Accepted, SendError> {
    p.send(SendRequest {
        mid: "01JH0000000000000000000000",
        contact_id: "+447700900000",
        message: m,
    })
    .await
}

fn text(t: &str) -> Message {
    Message::Text { text: t.into() }
}

fn form_of(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn clicksend_example_sends_escaped_json_with_basic_auth() {
    let (rec, base) = Recorder::start(vec![ok(
        r#"{"data":{"messages":[{"status":"SUCCESS","message_id":"BF7A-1"}]}}"#,
    )])
    .await;
    let p = provider(&example("http-clicksend.toml"), &base);
    let tricky = "He said \"hi\" \\ {mid} }\n<b>&amp; ✓";
    let got = send(&p, &text(tricky)).await.unwrap();
    assert_eq!(got.provider_id, "BF7A-1");

    let image = Message::Attachment {
        attachment: Attachment {
            kind: AttachmentKind::Image,
            url: "https://cdn.example.com/p/shoe.jpg".into(),
            file_name: None,
            description: Some("Our new shoe".into()),
        },
    };
    let pdf = Message::Attachment {
        attachment: Attachment {
            kind: AttachmentKind::File,
            url: "https://cdn.example.com/terms.pdf".into(),
            file_name: Some("terms.pdf".into()),
            description: None,
        },
    };
    send(&p, &image).await.unwrap();
    send(&p, &pdf).await.unwrap();

    let seen = rec.seen();
    assert_eq!(seen.len(), 3);
    let s = &seen[0];
    assert_eq!(
        (s.method.as_str(), s.path_query.as_str()),
        ("POST", "/v3/sms/send")
    );
    assert_eq!(s.headers[CONTENT_TYPE], "application/json");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "csuser:cs-key");
    assert_eq!(s.headers["authorization"], format!("Basic {auth}").as_str());
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body,
        json!({"messages": [{"source": "rio-bridge", "from": "+61411111111", "to": "+447700900000",
            "body": tricky, "custom_string": "01JH0000000000000000000000"}]})
    );
    // Pictures go to the MMS endpoint; a PDF goes as SMS text with its URL.
    assert_eq!(seen[1].path_query, "/v3/mms/send");
    let mms: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(mms["media_file"], "https://cdn.example.com/p/shoe.jpg");
    assert_eq!(mms["messages"][0]["subject"], "Picture");
    assert_eq!(
        mms["messages"][0]["body"],
        "Our new shoe\nhttps://cdn.example.com/p/shoe.jpg"
    );
    assert_eq!(seen[2].path_query, "/v3/sms/send");
    let sms: Value = serde_json::from_slice(&seen[2].body).unwrap();
    assert_eq!(
        sms["messages"][0]["body"],
        "https://cdn.example.com/terms.pdf"
    );
}

#[tokio::test]
async fn vonage_example_sends_a_form_with_credentials_and_callback() {
    let (rec, base) = Recorder::start(vec![ok(&fixture("send_success.json"))]).await;
    let p = provider(&example("http-vonage-sms.toml"), &base);
    let got = send(&p, &text("Café & \"quotes\"\nline two"))
        .await
        .unwrap();
    assert_eq!(got.provider_id, "0A0000000123ABCD1");
    let seen = rec.seen();
    assert_eq!(seen[0].path_query, "/sms/json");
    assert_eq!(
        seen[0].headers[CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    let form = form_of(&seen[0].body);
    assert_eq!(field(&form, "api_key"), Some("vkey"));
    assert_eq!(field(&form, "api_secret"), Some("v&secret=1"));
    assert_eq!(field(&form, "to"), Some("447700900000"));
    assert_eq!(field(&form, "from"), Some("447700900001"));
    assert_eq!(field(&form, "text"), Some("Café & \"quotes\"\nline two"));
    assert_eq!(
        field(&form, "client-ref"),
        Some("01JH0000000000000000000000")
    );
    assert_eq!(field(&form, "status-report-req"), Some("1"));
    assert_eq!(
        field(&form, "callback"),
        Some(format!("https://gw.example.com/channels/sms/status?secret={HOOK}").as_str())
    );
}

#[tokio::test]
async fn vonage_answers_are_typed() {
    // (fixture, HTTP status, Retry-After, expected)
    let cases: &[(&str, u16, Option<&str>, &str)] = &[
        ("send_success.json", 200, None, "ok 0A0000000123ABCD1"),
        (
            "send_success_two_parts.json",
            200,
            None,
            "ok 0A0000000123ABCD2",
        ),
        ("send_throttled.json", 200, None, "throttled"),
        ("send_internal_error.json", 200, None, "ambiguous"),
        ("send_bad_credentials.json", 200, None, "channel"),
        ("send_quota_exceeded.json", 200, None, "channel"),
        (
            "send_invalid_params.json",
            200,
            None,
            "permanent Invalid to address",
        ),
        ("", 429, Some("3"), "throttled 3s"),
        ("", 500, None, "ambiguous"),
        ("", 401, None, "channel"),
    ];
    for (name, status, retry_after, want) in cases {
        let body = if name.is_empty() {
            String::new()
        } else {
            fixture(name)
        };
        let headers = retry_after
            .map(|r| vec![("retry-after", r.to_string())])
            .unwrap_or_default();
        let (_rec, base) = Recorder::start(vec![(*status, headers, body)]).await;
        let p = provider(&example("http-vonage-sms.toml"), &base);
        let got = send(&p, &text("hi")).await;
        let kind = match &got {
            Ok(a) => format!("ok {}", a.provider_id),
            Err(SendError::Throttled {
                retry_after: Some(d),
                ..
            }) => format!("throttled {}s", d.as_secs()),
            Err(SendError::Throttled { .. }) => "throttled".into(),
            Err(SendError::Ambiguous(_)) => "ambiguous".into(),
            Err(SendError::ChannelFault(_)) => "channel".into(),
            Err(SendError::Permanent(r)) => {
                format!("permanent {}", r.rsplit(": ").next().unwrap_or(""))
            }
            Err(SendError::Unsent(_)) => "unsent".into(),
            Err(SendError::Rotated(_)) => "rotated".into(),
        };
        assert_eq!(kind, *want, "{name} {status}: {got:?}");
    }
}

#[tokio::test]
async fn unreachable_gateway_is_unsent_and_empty_text_is_permanent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let p = provider(&example("http-vonage-sms.toml"), &base);
    let err = send(&p, &text("hi")).await.unwrap_err();
    assert!(matches!(err, SendError::Unsent(_)), "{err:?}");
    let err = send(&p, &text("  ")).await.unwrap_err();
    assert!(matches!(err, SendError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn headers_and_url_templates_are_filled_and_encoded() {
    let (rec, base) = Recorder::start(vec![ok(r#"{"result":{"id":99}}"#)]).await;
    let text_cfg = format!(
        r#"
[[channel]]
name = "sms"
respondio_channel_id = "CH1"
respondio_token = "tok"
id_type = "custom"
provider = "http"
webhook_secret = "{HOOK}"
[channel.http.secrets]
token = "t0k/en?"
[channel.http.send]
method = "GET"
url = "{base}/bot{{secret.token}}/send?to={{contact_id}}&text={{text}}&ref={{mid}}"
headers = {{ Authorization = "Bearer {{secret.token}}", X-Ref = "{{mid}}" }}
[channel.http.send.response]
id_pointer = "/result/id"
[channel.http.inbound]
format = "json"
contact_id = "/from"
message_id = "/id"
text = "/text"
"#
    );
    let cfg = FileConfig::from_toml(&text_cfg, &env).unwrap_or_else(|e| panic!("{e}"));
    let p = HttpProvider::new(
        compile(&cfg.channels[0], &|f| f.to_string()).unwrap(),
        ProviderEnv {
            channel: "sms".into(),
            public_url: "https://gw.example.com".into(),
            client: reqwest::Client::new(),
        },
    );
    let got = p
        .send(SendRequest {
            mid: "M1",
            contact_id: "user/1+x@y",
            message: &text("a&b=c #1 ?"),
        })
        .await
        .unwrap();
    assert_eq!(got.provider_id, "99");
    let s = &rec.seen()[0];
    assert_eq!(s.method, "GET");
    // An unreachable gateway: the reason must not carry the URL, which holds the token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let cfg = FileConfig::from_toml(&text_cfg.replace(&base, &closed), &env).unwrap();
    let unreachable = HttpProvider::new(
        compile(&cfg.channels[0], &|f| f.to_string()).unwrap(),
        ProviderEnv {
            channel: "sms".into(),
            public_url: "https://gw.example.com".into(),
            client: reqwest::Client::new(),
        },
    );
    let err = unreachable
        .send(SendRequest {
            mid: "M2",
            contact_id: "user1",
            message: &text("x"),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Unsent(_)), "{err:?}");
    assert!(!err.reason().contains("t0k"), "{err:?}");
    assert_eq!(
        s.path_query,
        "/bott0k%2Fen%3F/send?to=user%2F1%2Bx%40y&text=a%26b%3Dc%20%231%20%3F&ref=M1"
    );
    assert_eq!(s.headers["authorization"], "Bearer t0k/en?");
    assert_eq!(s.headers["x-ref"], "M1");
    assert!(s.body.is_empty());
}

fn webhook<'a>(query: &'a str, h: &'a HeaderMap, body: &'a str) -> WebhookRequest<'a> {
    WebhookRequest {
        query,
        headers: h,
        body: body.as_bytes(),
        public_url: "https://gw.example.com/channels/sms/inbound",
    }
}

fn form_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h
}

#[test]
fn vonage_inbound_fixtures() {
    let p = provider(&example("http-vonage-sms.toml"), "http://unused.test");
    let h = form_headers();
    let q = format!("secret={HOOK}");

    let body = fixture("inbound.form");
    let ev = p.parse_inbound(&webhook(&q, &h, &body)).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].contact_id, "+15862151111");
    assert_eq!(ev[0].dedupe_key, "0B0000004B65F62F");
    assert_eq!(ev[0].message, Message::Text { text: "Msg".into() });
    // 2017-05-01 21:52:49 UTC
    assert_eq!(ev[0].timestamp_ms, 1_493_675_569_000);
    assert_eq!(
        ev[0].contact.as_ref().unwrap().phone.as_deref(),
        Some("+15862151111")
    );

    let body = fixture("inbound_unicode.form");
    let ev = p.parse_inbound(&webhook(&q, &h, &body)).unwrap();
    assert_eq!(
        ev[0].message,
        Message::Text {
            text: "Café & \"quotes\"\nline two".into()
        }
    );

    // GET: the fields are the query string, next to our secret.
    let get_q = format!("{}&secret={HOOK}", fixture("inbound_get.query"));
    let ev = p
        .parse_inbound(&webhook(&get_q, &HeaderMap::new(), ""))
        .unwrap();
    assert_eq!(
        ev[0].message,
        Message::Text {
            text: "Hi from GET".into()
        }
    );
    assert_eq!(ev[0].contact_id, "+447700900000");
    let err = p
        .parse_inbound(&webhook(&q, &HeaderMap::new(), ""))
        .unwrap_err();
    assert!(err.contains("neither a body nor query fields"), "{err}");
}

#[test]
fn vonage_receipt_fixtures() {
    let p = provider(&example("http-vonage-sms.toml"), "http://unused.test");
    let h = form_headers();
    let q = format!("secret={HOOK}");
    let cases: &[(&str, Option<StatusValue>, Option<&str>)] = &[
        ("dlr_delivered.form", Some(StatusValue::Delivered), None),
        ("dlr_accepted.form", Some(StatusValue::Sent), None),
        (
            "dlr_failed.form",
            Some(StatusValue::Failed),
            Some("the gateway reported failed, error code 6"),
        ),
        ("dlr_unknown.form", None, None),
    ];
    let mut keys = std::collections::HashSet::new();
    for (name, status, reason) in cases {
        let body = fixture(name);
        let r = p.parse_receipts(&webhook(&q, &h, &body)).unwrap();
        assert_eq!(r.len(), 1, "{name}");
        assert_eq!(r[0].provider_id, "0A0000000123ABCD1", "{name}");
        assert_eq!(r[0].status, *status, "{name}");
        assert_eq!(r[0].reason.as_deref(), *reason, "{name}");
        assert!(
            keys.insert(r[0].dedupe_key.clone()),
            "{name}: dedupe key repeats"
        );
    }
    let body = fixture("dlr_delivered.form");
    assert_eq!(
        p.parse_receipts(&webhook(&q, &h, &body)).unwrap()[0].timestamp_ms,
        1_736_935_205_000
    );
    let body = fixture("dlr_missing_message_id.form");
    let err = p.parse_receipts(&webhook(&q, &h, &body)).unwrap_err();
    assert!(err.contains("messageId"), "{err}");
}

#[test]
fn webhooks_are_authenticated_before_parsing() {
    let p = provider(&example("http-vonage-sms.toml"), "http://unused.test");
    let h = form_headers();
    let body = fixture("inbound.form");
    let good = format!("secret={HOOK}");
    let bad = format!("secret={HOOK}x");
    assert!(p.authenticate(&webhook(&good, &h, &body)).is_ok());
    assert!(p.authenticate(&webhook(&bad, &h, &body)).is_err());
    assert!(p.authenticate(&webhook("", &h, &body)).is_err());
    // Wrong secret is refused even when the payload would not parse.
    assert!(p.authenticate(&webhook(&bad, &h, "garbage")).is_err());
}

#[test]
fn a_channel_without_a_receipt_mapping_keeps_receipts_raw() {
    let text = BASE.split("[channel.http.receipt]").next().unwrap();
    let cfg = FileConfig::from_toml(text, &env).unwrap_or_else(|e| panic!("{e}"));
    let p = HttpProvider::new(
        compile(&cfg.channels[0], &|f| f.to_string()).unwrap(),
        ProviderEnv {
            channel: "sms".into(),
            public_url: "https://gw.example.com".into(),
            client: reqwest::Client::new(),
        },
    );
    let h = HeaderMap::new();
    let err = p
        .parse_receipts(&webhook("", &h, r#"{"id":"x","status":"DELIVRD"}"#))
        .unwrap_err();
    assert!(err.contains("no [channel.http.receipt]"), "{err}");
}
