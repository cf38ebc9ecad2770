//! The whole request body must arrive within `server.body_read_timeout_ms` of the headers.
//!
//! hyper's header-read timeout (see `serve.rs`) ends once the headers are in; after that a
//! client could trickle its body a byte at a time and hold a connection, a task and a buffer
//! for as long as it likes (an idle-between-frames timeout would not stop that). This layer
//! reads the body, bounded in size and in total time, before any handler runs: past the
//! deadline the client gets 408 and the connection is closed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::json_error;

/// What the layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub timeout: Duration,
    pub max_bytes: usize,
}

pub async fn read_body_in_time(
    State(limits): State<BodyDeadline>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The 413 and 400 answers leave the connection to hyper, as the body limit layer did:
    // closing it ourselves while the client is still writing could reset the connection
    // before the client reads the answer.
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large(limits.max_bytes);
    }
    match tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limits.max_bytes)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let over_limit = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if over_limit {
                too_large(limits.max_bytes)
            } else {
                // The client went away or sent a broken chunked body.
                json_error(StatusCode::BAD_REQUEST, "could not read the request body")
            }
        }
        Err(_) => {
            tracing::info!(
                path = parts.uri.path(),
                timeout_ms = limits.timeout.as_millis() as u64,
                "request body not received in time; closing the connection"
            );
            closing(json_error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} ms",
                    limits.timeout.as_millis()
                ),
            ))
        }
    }
}

fn too_large(max: usize) -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {max} bytes"),
    )
}

/// A client this slow is not worth keeping: the rest of its body is never read, and the
/// connection is closed after the answer.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
