//! Playing respond.io's outbound side: `POST <gateway base>/message` (§5).

use serde_json::{Value, json};

use super::Emulator;

impl Emulator {
    /// POSTs `{"channelId","contactId","message"}` to `url` with the channel's bearer token, as
    /// respond.io does when a user, workflow or broadcast sends a message (§5.1–§5.3), and returns
    /// the gateway's HTTP status and body.
    ///
    /// `channelId` is sent as a JSON string, exactly as registered ([UNK] §3.2 whether respond.io
    /// sends a string or a number; the string form is what the docs' sample shows). The body is
    /// returned parsed when it is JSON, as a JSON string when it is not, and as `null` when empty.
    /// `Err` for an unknown channel or when no HTTP answer was obtained (connection, timeout).
    pub async fn send_to_gateway(
        &self,
        url: &str,
        channel_id: &str,
        contact_id: &str,
        message: Value,
    ) -> Result<(u16, Value), String> {
        let token = self
            .lock()
            .channel(channel_id)
            .map(|c| c.token.clone())
            .ok_or_else(|| format!("unknown channel {channel_id:?}"))?;
        let payload = json!({
            "channelId": channel_id,
            "contactId": contact_id,
            "message": message,
        });
        let response = self
            .inner
            .http
            .post(url)
            .bearer_auth(token)
            .json(&payload)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
        Ok((status, answer_body(&bytes)))
    }
}

/// The gateway's answer body as JSON: parsed, or the raw text as a string, or `null` if empty.
fn answer_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
