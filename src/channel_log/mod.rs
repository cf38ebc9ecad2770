//! Channel logs: the HTTP exchanges on each message's path, kept (redacted, cut to 4 KiB)
//! for `store.channel_log_retention_secs` so an operator can see what was said to whom.
//!
//! Recording never stalls a lane or fails a request: [`ChannelLog::record`] redacts on the
//! caller's task and hands the rows to a bounded queue (`try_send`; a full queue drops the
//! row and counts it in `rio_channel_log_dropped_total`). One background task writes what
//! has queued up in batches through the store's group-committing writer.
//!
//! Outgoing calls are recorded without the caller naming its message: a lane runs each
//! attempt inside [`scope`], and [`send`] (a drop-in for `RequestBuilder::send`) records
//! into the current scope. A provider that sends with plain `reqwest` still gets a summary
//! row from the lane (see `lanes::deliver`), just without the HTTP details.

pub mod redact;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::secret::Secret;
use crate::store::admin::{AdminStore, ChannelLogRow};

/// Rows waiting to be written, at most.
const QUEUE_MAX: usize = 4096;
/// Rows per write.
const BATCH_MAX: usize = 256;
/// How much of a response `send` reads (more than any provider reads itself).
const RESPONSE_READ_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// They called us (webhooks, `/message`).
    In,
    /// We called them (respond.io, the provider).
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// One HTTP exchange as it happened, before redaction.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub direction: Direction,
    /// `webhook_inbound`, `webhook_status`, `message`, `respondio`, `provider`.
    pub kind: &'static str,
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub started_ms: i64,
    pub duration: Duration,
    /// (name, value) pairs.
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub error: Option<String>,
}

impl Exchange {
    pub fn new(direction: Direction, kind: &'static str, method: &str, url: &str) -> Exchange {
        Exchange {
            direction,
            kind,
            method: method.to_string(),
            url: url.to_string(),
            status: None,
            started_ms: now_ms(),
            duration: Duration::ZERO,
            request_headers: Vec::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            error: None,
        }
    }

    pub fn headers_from(mut self, headers: &axum::http::HeaderMap) -> Exchange {
        self.request_headers = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        self
    }
}

/// The sink: cheap to clone, shared by the HTTP handlers and the lanes.
#[derive(Clone)]
pub struct ChannelLog {
    tx: mpsc::Sender<ChannelLogRow>,
    /// Off (`store.channel_logs = false`): `record` does nothing.
    enabled: bool,
    /// Secret values per channel, replaced wherever they appear.
    secrets: Arc<RwLock<HashMap<String, ChannelSecrets>>>,
}

/// A channel's secret values: those of its current config, and for redaction also those
/// of the config before (an exchange that started before a reload may still carry them).
#[derive(Debug, Default, Clone)]
struct ChannelSecrets {
    current: Vec<String>,
    redacted: Arc<Vec<String>>,
}

impl ChannelLog {
    /// A sink and its receiving end; [`ChannelLog::run_writer`] drains the latter.
    pub fn new() -> (ChannelLog, mpsc::Receiver<ChannelLogRow>) {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        (
            ChannelLog {
                tx,
                enabled: true,
                secrets: Arc::default(),
            },
            rx,
        )
    }

    /// A sink that records nothing.
    pub fn disabled(mut self) -> ChannelLog {
        self.enabled = false;
        self
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Sets a channel's secrets (tokens, keys, webhook secrets) for value redaction: those
    /// of its config now, and those it had before this call (each value once). A reload
    /// sets them again, so the list stays as long as two configs' secrets, however many
    /// reloads there were.
    pub fn set_secrets<'a>(&self, channel: &str, secrets: impl IntoIterator<Item = &'a Secret>) {
        let mut current: Vec<String> = Vec::new();
        for v in secrets.into_iter().flat_map(Secret::accepted) {
            if !v.is_empty() && !current.iter().any(|c| c == v) {
                current.push(v.to_string());
            }
        }
        let mut map = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(channel.to_string()).or_default();
        let mut redacted = current.clone();
        for v in &entry.current {
            if !redacted.contains(v) {
                redacted.push(v.clone());
            }
        }
        *entry = ChannelSecrets {
            current,
            redacted: Arc::new(redacted),
        };
    }

    /// How many secret values are redacted from a channel's exchanges.
    pub fn redacted_values(&self, channel: &str) -> usize {
        self.secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .map_or(0, |s| s.redacted.len())
    }

    /// Records an exchange for each of `mids` (one row with no mId when empty). Never
    /// waits: a full queue drops the rows.
    pub fn record(&self, channel: &str, mids: &[String], ex: &Exchange) {
        if !self.enabled {
            return;
        }
        let secrets = self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .map(|s| s.redacted.clone())
            .unwrap_or_default();
        let row = ChannelLogRow {
            id: 0,
            channel: channel.to_string(),
            mid: None,
            at_ms: ex.started_ms,
            direction: ex.direction.as_str().to_string(),
            kind: ex.kind.to_string(),
            method: ex.method.clone(),
            url: redact::url(&ex.url, &secrets),
            status: ex.status.map(i64::from),
            duration_ms: ex.duration.as_millis() as i64,
            request_headers: Some(redact::headers(
                ex.request_headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice())),
                &secrets,
            ))
            .filter(|h| !h.is_empty()),
            request_body: redact::body(&ex.request_body, &secrets),
            response_body: redact::body(&ex.response_body, &secrets),
            error: ex
                .error
                .as_deref()
                .map(|e| redact::truncate(&redact::scrub(e, &secrets), 1024)),
        };
        let rows: Vec<ChannelLogRow> = if mids.is_empty() {
            vec![row]
        } else {
            mids.iter()
                .map(|m| ChannelLogRow {
                    mid: Some(m.clone()),
                    ..row.clone()
                })
                .collect()
        };
        for r in rows {
            if self.tx.try_send(r).is_err() {
                metrics::counter!("rio_channel_log_dropped_total", "channel" => channel.to_string())
                    .increment(1);
            }
        }
    }

    /// Writes queued rows in batches until `stop`, then writes what is left.
    pub async fn run_writer(
        mut rx: mpsc::Receiver<ChannelLogRow>,
        store: Arc<dyn AdminStore>,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH_MAX) => n,
                _ = stop.cancelled() => {
                    rx.close();
                    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
                        write_batch(&*store, &mut batch).await;
                    }
                    return;
                }
            };
            if n == 0 {
                return;
            }
            write_batch(&*store, &mut batch).await;
        }
    }
}

async fn write_batch(store: &dyn AdminStore, batch: &mut Vec<ChannelLogRow>) {
    let rows = std::mem::take(batch);
    let n = rows.len() as u64;
    if let Err(e) = store.insert_channel_logs(rows).await {
        // The store is failing (disk full...): logs are the first thing to give up.
        metrics::counter!("rio_channel_log_dropped_total", "channel" => "*").increment(n);
        tracing::warn!(error = %e, rows = n, "channel log rows dropped: the store refused them");
    }
}

/// What an attempt's outgoing calls are recorded under.
struct Scope {
    log: ChannelLog,
    channel: String,
    mids: Vec<String>,
    recorded: AtomicUsize,
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// Runs `fut` with its outgoing calls (made through [`send`]) recorded for `mids`;
/// returns how many exchanges were recorded.
pub async fn scope<F: std::future::Future>(
    log: ChannelLog,
    channel: &str,
    mids: Vec<String>,
    fut: F,
) -> (F::Output, usize) {
    let s = Arc::new(Scope {
        log,
        channel: channel.to_string(),
        mids,
        recorded: AtomicUsize::new(0),
    });
    let out = SCOPE.scope(s.clone(), fut).await;
    (out, s.recorded.load(Ordering::Acquire))
}

/// Records an exchange into the current scope, if there is one.
pub fn record_in_scope(ex: &Exchange) -> bool {
    SCOPE
        .try_with(|s| {
            s.log.record(&s.channel, &s.mids, ex);
            s.recorded.fetch_add(1, Ordering::AcqRel);
        })
        .is_ok()
}

/// `RequestBuilder::send` that also records the exchange (request, status, the response
/// body as read, timing) into the current scope. The response is handed back whole (up to
/// 1 MiB of body, more than any provider reads), so callers read it as before.
pub async fn send(
    builder: reqwest::RequestBuilder,
    kind: &'static str,
) -> Result<reqwest::Response, reqwest::Error> {
    let (client, req) = builder.build_split();
    let req = req?;
    let mut ex = Exchange::new(
        Direction::Out,
        kind,
        req.method().as_str(),
        req.url().as_str(),
    );
    ex.request_headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    ex.request_body = req
        .body()
        .and_then(|b| b.as_bytes())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let started = Instant::now();
    let finish = |mut ex: Exchange, status: Option<u16>, body: &[u8], err: Option<String>| {
        ex.status = status;
        ex.duration = started.elapsed();
        ex.response_body = body.to_vec();
        ex.error = err;
        record_in_scope(&ex);
    };
    let executed = client.execute(req).await;
    // The attempt's rate slot was used (see lanes::gate).
    crate::lanes::gate::request_sent();
    let mut resp = match executed {
        Ok(r) => r,
        Err(e) => {
            finish(ex, None, &[], Some(e.to_string()));
            return Err(e);
        }
    };
    let (status, version, headers) = (resp.status(), resp.version(), resp.headers().clone());
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_READ_MAX - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= RESPONSE_READ_MAX {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                finish(ex, Some(status.as_u16()), &body, Some(e.to_string()));
                return Err(e);
            }
        }
    }
    finish(ex, Some(status.as_u16()), &body, None);
    let mut rebuilt = axum::http::Response::new(body);
    *rebuilt.status_mut() = status;
    *rebuilt.version_mut() = version;
    *rebuilt.headers_mut() = headers;
    Ok(reqwest::Response::from(rebuilt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_drops_instead_of_waiting() {
        let (log, mut rx) = ChannelLog::new();
        let ex = Exchange::new(Direction::In, "message", "POST", "http://x/message");
        for _ in 0..QUEUE_MAX + 10 {
            log.record("sms", &[], &ex);
        }
        let mut got = Vec::new();
        rx.recv_many(&mut got, QUEUE_MAX * 2).await;
        assert_eq!(got.len(), QUEUE_MAX);
    }

    #[tokio::test]
    async fn a_disabled_sink_records_nothing() {
        let (log, mut rx) = ChannelLog::new();
        let log = log.disabled();
        log.record(
            "sms",
            &[],
            &Exchange::new(Direction::In, "message", "POST", "http://x"),
        );
        drop(log);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn scope_tags_rows_with_its_mids_and_secrets_are_scrubbed() {
        let (log, mut rx) = ChannelLog::new();
        log.set_secrets("sms", [&Secret::new("tok-abcdef")]);
        let mut ex = Exchange::new(Direction::Out, "respondio", "POST", "http://x/hook");
        ex.request_body = b"{\"note\":\"tok-abcdef\"}".to_vec();
        let ((), n) = scope(log.clone(), "sms", vec!["M1".into(), "M2".into()], async {
            assert!(record_in_scope(&ex));
        })
        .await;
        assert_eq!(n, 1);
        assert!(!record_in_scope(&ex), "outside a scope nothing is recorded");
        let mut rows = Vec::new();
        rx.recv_many(&mut rows, 10).await;
        let mids: Vec<_> = rows.iter().map(|r| r.mid.clone().unwrap()).collect();
        assert_eq!(mids, ["M1", "M2"]);
        assert!(
            !rows[0]
                .request_body
                .as_ref()
                .unwrap()
                .contains("tok-abcdef")
        );
    }
}
