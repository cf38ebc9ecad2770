//! What the stand-ins' `/_sim/...` control endpoints share: request shapes and answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// `POST /_sim/inbound`: a contact's text to push to the gateway.
#[derive(Deserialize)]
pub struct InboundReq {
    pub from: String,
    pub to: String,
    pub body: String,
}

/// A 400 with the reason, for a control request the stand-in cannot read.
pub fn bad_request(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

/// A push's outcome: the gateway's status, or 502 when it could not be reached.
pub fn push_outcome(r: Result<u16, String>) -> Response {
    match r {
        Ok(status) => axum::Json(json!({ "status": status })).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, axum::Json(json!({ "error": e }))).into_response(),
    }
}

/// Reads one `T` or a list of them (`POST /_sim/faults` takes either).
pub fn one_or_many<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, Response> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    match serde_json::from_slice::<OneOrMany<T>>(body) {
        Ok(OneOrMany::One(t)) => Ok(vec![t]),
        Ok(OneOrMany::Many(ts)) => Ok(ts),
        Err(e) => Err(bad_request(e)),
    }
}
