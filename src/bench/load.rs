//! A lean closed-loop HTTP/1.1 load generator: `concurrency` keep-alive connections, each
//! sending its next request as soon as the previous answer is in. hyper directly, not
//! reqwest: on two shared cores the load generator's own CPU cost counts against the
//! figures it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Builds request number `i`.
pub type MakeRequest = Arc<dyn Fn(usize) -> Request<Full<Bytes>> + Send + Sync>;

#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub ok: usize,
    pub non_2xx: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Latency of every answered request, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The q-quantile latency in milliseconds (0 ≤ q ≤ 1).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies_us, q)
    }
}

pub fn quantile_ms(latencies_us: &[u32], q: f64) -> f64 {
    if latencies_us.is_empty() {
        return 0.0;
    }
    let mut v = latencies_us.to_vec();
    v.sort_unstable();
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx] as f64 / 1000.0
}

/// Sends `total` requests over `concurrency` connections.
pub async fn run(
    addr: SocketAddr,
    concurrency: usize,
    total: usize,
    make: MakeRequest,
) -> LoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (next, make) = (next.clone(), make.clone());
        workers.push(tokio::spawn(async move {
            worker(addr, total, next, make).await
        }));
    }
    let mut result = LoadResult::default();
    for w in workers {
        if let Ok(r) = w.await {
            result.ok += r.ok;
            result.non_2xx += r.non_2xx;
            result.errors += r.errors;
            result.latencies_us.extend(r.latencies_us);
        }
    }
    result.elapsed = started.elapsed();
    result
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn worker(
    addr: SocketAddr,
    total: usize,
    next: Arc<AtomicUsize>,
    make: MakeRequest,
) -> LoadResult {
    let mut r = LoadResult::default();
    let mut sender: Option<Sender> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return r;
        }
        // A request that fails on a broken connection is retried on a new one (up to 3
        // times), so a connection reset is an error only when it persists.
        let mut tries = 0;
        loop {
            tries += 1;
            if sender.is_none() {
                sender = connect(addr).await;
            }
            let Some(s) = sender.as_mut() else {
                if tries >= 3 {
                    r.errors += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let t0 = Instant::now();
            let outcome = async {
                s.ready().await?;
                let resp = s.send_request(make(i)).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            }
            .await;
            match outcome {
                Ok(status) => {
                    r.latencies_us
                        .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    if status.is_success() {
                        r.ok += 1;
                    } else {
                        r.non_2xx += 1;
                    }
                    break;
                }
                Err(_) => {
                    sender = None;
                    if tries >= 3 {
                        r.errors += 1;
                        break;
                    }
                }
            }
        }
    }
}
