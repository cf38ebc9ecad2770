//! Small helpers the providers share for reading send answers (the pure readers are in
//! `rio_parse::support`).

use std::time::Duration;

use super::parse_retry_after;

/// Reads at most `cap` bytes of a response body, so a misbehaving upstream cannot make us
/// buffer without bound. A truncated body simply fails to parse later.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the provider's answer failed: {e}"))?
    {
        let room = cap - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    Ok(buf)
}

/// The answer's `Retry-After`, if it has a readable one.
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}
