//! `GET /media/{channel}/{src}`: proxied attachments (see `crate::media`).
//!
//! respond.io fetches these URLs with no credentials of ours: the signature in the URL is
//! the authority. A bad signature is 403, an expired link 410, a provider that cannot give
//! the file 502 (respond.io may try again later).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::json_error;
use crate::app::AppState;
use crate::media::MediaError;

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path((channel, src)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let now_s = (crate::clock::now_ms() / 1000) as u64;
    let target = match state
        .media
        .verify(&channel, &src, uri.query().unwrap_or(""), now_s)
    {
        Ok(t) => t,
        Err(MediaError::Expired) => return json_error(StatusCode::GONE, "media link expired"),
        Err(_) => return json_error(StatusCode::FORBIDDEN, "bad media signature"),
    };
    // The signature names the channel, so this only fails for a channel removed since.
    let Some(ch) = state.channel(&channel) else {
        return json_error(StatusCode::NOT_FOUND, "unknown channel");
    };
    let cached = match state
        .media
        .get(&channel, ch.provider.as_ref(), &target)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(channel, error = %e, "media could not be served");
            let status = match e {
                MediaError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_GATEWAY,
            };
            return json_error(status, &e.to_string());
        }
    };
    let file = match tokio::fs::File::open(&cached.path).await {
        Ok(f) => f,
        // Pruned between the check and the open: the next request fetches it again.
        Err(_) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "media being refreshed, try again",
            );
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, cached.content_type),
            (header::CONTENT_LENGTH, cached.len.to_string()),
            (header::CACHE_CONTROL, "private, max-age=86400".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            // A provider's file must never run as a page on our origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'".to_string(),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response()
}
