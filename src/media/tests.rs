use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;

use super::*;
use crate::providers::{
    Accepted, InboundEvent, MediaFetch, Receipt, SendError, SendRequest, WebhookRequest,
};

/// A provider whose media lives at `{base}{source}` behind a bearer credential.
struct MediaOnly {
    base: String,
}

#[async_trait]
impl Provider for MediaOnly {
    fn kind(&self) -> &'static str {
        "media-only"
    }
    fn rate_limit(&self) -> u32 {
        1
    }
    fn authenticate(&self, _: &WebhookRequest<'_>) -> Result<(), String> {
        Err("not used".into())
    }
    fn parse_inbound(&self, _: &WebhookRequest<'_>) -> Result<Vec<InboundEvent>, String> {
        Err("not used".into())
    }
    fn parse_receipts(&self, _: &WebhookRequest<'_>) -> Result<Vec<Receipt>, String> {
        Err("not used".into())
    }
    async fn send(&self, _: SendRequest<'_>) -> Result<Accepted, SendError> {
        Err(SendError::Permanent("not used".into()))
    }
    async fn resolve_media(&self, source: &str) -> Result<MediaFetch, String> {
        if source == "unknown" {
            return Err("no such file".into());
        }
        Ok(MediaFetch {
            url: format!("{}{source}", self.base),
            headers: vec![("authorization".into(), Secret::new("Bearer media-cred"))],
        })
    }
}

#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    auth: Mutex<Vec<Option<String>>>,
}

/// A file server on loopback: `/pic` (an image), `/big` (over the cap, chunked), `/html`,
/// `/hop` (redirects to `other` host), `/slow` (never finishes the body).
async fn file_server(other: Option<String>) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let record = move |h: &HeaderMap| {
        s.hits.fetch_add(1, Ordering::SeqCst);
        s.auth.lock().unwrap().push(
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
    };
    let (r1, r2, r3, r4, r5) = (
        record.clone(),
        record.clone(),
        record.clone(),
        record.clone(),
        record,
    );
    let app = Router::new()
        .route(
            "/pic",
            get(move |h: HeaderMap| async move {
                r1(&h);
                ([("content-type", "image/png")], b"PNGDATA".to_vec())
            }),
        )
        .route(
            "/big",
            get(move |h: HeaderMap| async move {
                r2(&h);
                let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![7u8; 1024]));
                axum::body::Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            "/html",
            get(move |h: HeaderMap| async move {
                r3(&h);
                ([("content-type", "text/html")], "<script>alert(1)</script>")
            }),
        )
        .route(
            "/hop",
            get(move |h: HeaderMap| async move {
                r4(&h);
                let to = other.clone().unwrap_or_default();
                (
                    axum::http::StatusCode::FOUND,
                    [("location", format!("{to}/pic"))],
                )
                    .into_response()
            }),
        )
        .route(
            "/slow",
            get(move |h: HeaderMap| async move {
                r5(&h);
                let s = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
                axum::body::Body::from_stream(s)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn proxy(dir: &Path, allow_private: bool) -> MediaProxy {
    let cfg = MediaConfig {
        allow_private,
        max_bytes: 16 * 1024,
        fetch_timeout_ms: 1500,
        dir: Some(dir.to_path_buf()),
        ..MediaConfig::default()
    };
    MediaProxy::open(&cfg, Path::new("unused.db"), "https://gw.example/").unwrap()
}

fn media(source: &str, ct: Option<&str>) -> MediaRef {
    MediaRef {
        source: source.into(),
        content_type: ct.map(str::to_string),
    }
}

/// Splits a signed URL into (channel, src, query).
fn parts(url: &str) -> (String, String, String) {
    let u = url::Url::parse(url).unwrap();
    let segs: Vec<&str> = u.path_segments().unwrap().collect();
    assert_eq!(segs[0], "media");
    (
        segs[1].to_string(),
        segs[2].to_string(),
        u.query().unwrap_or("").to_string(),
    )
}

#[test]
fn signed_urls_verify_and_refuse_tampering_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(dir.path(), false);
    let url = p.signed_url("tg", &media("AgADfile_id-1", Some("image/jpeg")), 1_000);
    assert!(url.starts_with("https://gw.example/media/tg/"), "{url}");
    let (ch, src, q) = parts(&url);
    let t = p.verify(&ch, &src, &q, 1_000).unwrap();
    assert_eq!(t.source, "AgADfile_id-1");
    assert_eq!(t.content_type.as_deref(), Some("image/jpeg"));
    // Valid up to the lifetime, expired after.
    let exp = 1_000 + 7 * 86_400;
    assert!(p.verify(&ch, &src, &q, exp).is_ok());
    assert_eq!(p.verify(&ch, &src, &q, exp + 1), Err(MediaError::Expired));
    // Another channel, another source, another type, a later expiry: all refused.
    assert_eq!(
        p.verify("other", &src, &q, 1_000),
        Err(MediaError::BadSignature)
    );
    let other_src = URL_SAFE_NO_PAD.encode("AgADfile_id-2");
    assert_eq!(
        p.verify(&ch, &other_src, &q, 1_000),
        Err(MediaError::BadSignature)
    );
    let q_ct = q.replace("image%2Fjpeg", "text%2Fhtml");
    assert_ne!(q_ct, q);
    assert_eq!(
        p.verify(&ch, &src, &q_ct, 1_000),
        Err(MediaError::BadSignature)
    );
    let q_exp = q.replace(&format!("exp={exp}"), &format!("exp={}", exp + 100));
    assert_ne!(q_exp, q);
    assert_eq!(
        p.verify(&ch, &src, &q_exp, 1_000),
        Err(MediaError::BadSignature)
    );
    for q in ["", "exp=1", "sig=abc", "exp=x&sig=%%%"] {
        assert_eq!(
            p.verify(&ch, &src, q, 1_000),
            Err(MediaError::BadSignature),
            "{q}"
        );
    }
}

#[test]
fn the_generated_key_survives_a_restart_and_a_configured_key_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let m = media("f", None);
    let a = proxy(dir.path(), false).signed_url("c", &m, 5);
    let b = proxy(dir.path(), false).signed_url("c", &m, 5);
    assert_eq!(a, b, "same key after reopening");
    let key_file = std::fs::metadata(dir.path().join(".key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_file.permissions().mode() & 0o777, 0o600);
    let cfg = MediaConfig {
        key: Secret::new("k".repeat(40)),
        dir: Some(dir.path().to_path_buf()),
        ..MediaConfig::default()
    };
    let c = MediaProxy::open(&cfg, Path::new("x"), "https://gw.example")
        .unwrap()
        .signed_url("c", &m, 5);
    assert_ne!(a, c);
}

#[tokio::test]
async fn fetches_with_credentials_once_then_serves_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (base, seen) = file_server(None).await;
    let p = proxy(dir.path(), true);
    let prov = MediaOnly { base };
    let t = MediaTarget {
        source: "/pic".into(),
        content_type: None,
    };
    let c = p.get("ch", &prov, &t).await.unwrap();
    assert_eq!(std::fs::read(&c.path).unwrap(), b"PNGDATA");
    assert_eq!(c.content_type, "image/png");
    assert_eq!(c.len, 7);
    let again = p.get("ch", &prov, &t).await.unwrap();
    assert_eq!(again.path, c.path);
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        1,
        "second get is served from cache"
    );
    assert_eq!(
        seen.auth.lock().unwrap().as_slice(),
        &[Some("Bearer media-cred".to_string())]
    );
    // A provider that cannot find the file.
    let missing = MediaTarget {
        source: "unknown".into(),
        content_type: None,
    };
    assert!(matches!(
        p.get("ch", &prov, &missing).await,
        Err(MediaError::Upstream(m)) if m.contains("no such file")
    ));
}

#[tokio::test]
async fn refuses_private_addresses_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (base, seen) = file_server(None).await;
    let p = proxy(dir.path(), false);
    let t = MediaTarget {
        source: "/pic".into(),
        content_type: None,
    };
    let err = p.get("ch", &MediaOnly { base }, &t).await.unwrap_err();
    assert!(
        matches!(&err, MediaError::Upstream(m) if m.contains("non-public")),
        "{err}"
    );
    assert_eq!(seen.hits.load(Ordering::SeqCst), 0, "nothing was requested");
}

#[tokio::test]
async fn caps_size_time_and_dangerous_types() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = file_server(None).await;
    let p = proxy(dir.path(), true);
    let prov = MediaOnly { base };
    let get = |s: &str, ct: Option<&str>| MediaTarget {
        source: s.into(),
        content_type: ct.map(str::to_string),
    };
    assert_eq!(
        p.get("ch", &prov, &get("/big", None)).await.unwrap_err(),
        MediaError::TooLarge(16 * 1024)
    );
    let err = p.get("ch", &prov, &get("/slow", None)).await.unwrap_err();
    assert!(
        matches!(&err, MediaError::Upstream(m) if m.contains("longer than")),
        "{err}"
    );
    // Neither left a partial file behind that could be served.
    let html = p.get("ch", &prov, &get("/html", None)).await.unwrap();
    assert_eq!(html.content_type, "application/octet-stream");
    let claimed_svg = p
        .get("ch2", &prov, &get("/pic", Some("image/svg+xml")))
        .await
        .unwrap();
    assert_eq!(claimed_svg.content_type, "application/octet-stream");
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files.iter().any(|f| f.ends_with(".part")),
        "no partial download kept: {files:?}"
    );
}

#[tokio::test]
async fn redirects_to_another_host_carry_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, storage_seen) = file_server(None).await;
    // The same loopback server under another host name is another host to the proxy.
    let storage = storage.replace("127.0.0.1", "localhost");
    let (base, api_seen) = file_server(Some(storage)).await;
    let p = proxy(dir.path(), true);
    let t = MediaTarget {
        source: "/hop".into(),
        content_type: None,
    };
    let c = p.get("ch", &MediaOnly { base }, &t).await.unwrap();
    assert_eq!(std::fs::read(&c.path).unwrap(), b"PNGDATA");
    assert_eq!(
        api_seen.auth.lock().unwrap().as_slice(),
        &[Some("Bearer media-cred".to_string())]
    );
    assert_eq!(storage_seen.auth.lock().unwrap().as_slice(), &[None]);
}

#[test]
fn prune_removes_only_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(dir.path(), false);
    let old = dir.path().join("0123");
    let fresh = dir.path().join("4567");
    std::fs::write(&old, b"x").unwrap();
    std::fs::write(&fresh, b"y").unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(9 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(dir.path().join(".key"))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    assert_eq!(p.prune(), 1);
    assert!(!old.exists());
    assert!(fresh.exists());
    assert!(dir.path().join(".key").exists(), "the key is never pruned");
}
