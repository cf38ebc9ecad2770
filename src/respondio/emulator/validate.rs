//! Validation of an inbound events envelope, written from
//! `shared/spec/respondio-custom-channel.md` §3.3 and §4 — deliberately *not* from the gateway's
//! own `wire` types, so that a misreading of the spec on the gateway side shows up as a rejection
//! here instead of being mirrored.
//!
//! The body is inspected as a `serde_json::Value`. Unknown fields are ignored everywhere (§5.3's
//! "never reject on them" applied to both directions). Every rejection names the offending field
//! by its JSON path, e.g. `events[0].message.attachment.url`.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::EmulatedIdType;

/// `contactId` and `mId` are both capped at 50 characters [DOC S6].
pub(super) const MAX_ID_CHARS: usize = 50;

/// Smallest accepted `timestamp`: 10^12 ms is September 2001. Anything smaller is read as a
/// seconds value the sender forgot to multiply by 1000 (§4.3 "Providers that give seconds must be
/// ×1000", §8).
const MIN_TIMESTAMP_MS: i64 = 1_000_000_000_000;

/// First rejected `timestamp` on the high side: 10^14 ms is the year 5138. [INF] The spec only says
/// "epoch milliseconds"; a value this large is almost certainly microseconds, which is the same
/// class of unit bug as seconds, so the emulator rejects it too.
const MAX_TIMESTAMP_MS: i64 = 100_000_000_000_000;

/// Why a call is refused: the HTTP status and a reason that names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    pub status: StatusCode,
    pub reason: String,
}

impl Rejection {
    pub(super) fn bad_request(reason: impl Into<String>) -> Self {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }

    pub(super) fn unauthorized(reason: impl Into<String>) -> Self {
        Rejection {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }
}

/// What validation needs to know about the emulator's state, captured when the call was admitted.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    /// The channel the bearer token belongs to.
    pub token_channel: String,
    /// The id type of the channel named by the body's `channelId`, if that channel is registered.
    pub claimed_id_type: Option<EmulatedIdType>,
    /// The `max_events_per_call` switch.
    pub max_events_per_call: Option<usize>,
}

/// A valid envelope: borrowed views into the parsed body.
#[derive(Debug)]
pub(super) struct Envelope<'a> {
    pub channel_id: &'a str,
    pub contact_id: &'a str,
    pub events: &'a [Value],
    pub contact: Option<&'a Value>,
}

/// Validates a whole envelope (§4.2) against the rules of the admitted channel.
pub(super) fn validate_envelope<'a>(
    body: &'a Value,
    rules: &Rules,
) -> Result<Envelope<'a>, Rejection> {
    let obj = body.as_object().ok_or_else(|| {
        Rejection::bad_request(format!("body: must be a JSON object, got {}", kind(body)))
    })?;
    let channel_id = required_str(obj, "channelId", "channelId")?;
    let id_type = check_channel(channel_id, rules)?;
    let contact_id = required_str(obj, "contactId", "contactId")?;
    check_contact_id(contact_id, id_type)?;
    let events = check_events(obj.get("events"), rules.max_events_per_call)?;
    let contact = check_contact(obj.get("contact"))?;
    Ok(Envelope {
        channel_id,
        contact_id,
        events,
        contact,
    })
}

/// `channelId` must name a registered channel, and the same channel the token belongs to
/// (§4.2: "Must match the channel the token belongs to (old example README: mismatch → error)").
///
/// [UNK] §4.7: the status respond.io uses for this is not known. Choice: **401** for both an
/// unknown channel and a channel/token mismatch — the (channelId, token) credential pair is wrong,
/// which is a configuration error the gateway must alert on and not retry, exactly the policy §4.7
/// recommends for 401. The reason says which of the two it was.
fn check_channel(channel_id: &str, rules: &Rules) -> Result<EmulatedIdType, Rejection> {
    let Some(id_type) = rules.claimed_id_type else {
        return Err(Rejection::unauthorized(format!(
            "channelId: unknown channel {}",
            shown(channel_id)
        )));
    };
    if channel_id != rules.token_channel {
        return Err(Rejection::unauthorized(format!(
            "channelId: {} does not match the channel of the API token",
            shown(channel_id)
        )));
    }
    Ok(id_type)
}

/// `contactId`: at most 50 characters [DOC S6] and in the format of the channel's id type (§3.3).
/// Both patterns are the spec's suggested validators [INF]: phone `^\+[1-9][0-9]{6,14}$` (the `+`
/// is required — open question 12 — because the documented sample has it), custom
/// `^[A-Za-z0-9_=+/@]{1,50}$` (the alphabet is [DOC S1]).
pub(super) fn check_contact_id(contact_id: &str, id_type: EmulatedIdType) -> Result<(), Rejection> {
    if contact_id.chars().count() > MAX_ID_CHARS {
        return Err(Rejection::bad_request(format!(
            "contactId: longer than {MAX_ID_CHARS} characters"
        )));
    }
    match id_type {
        EmulatedIdType::Phone if !is_e164(contact_id) => Err(Rejection::bad_request(format!(
            "contactId: {} is not a phone number in E.164 form (+ then 7 to 15 digits) \
             as this channel's id type (phone) requires",
            shown(contact_id)
        ))),
        EmulatedIdType::Custom if !is_custom_id(contact_id) => {
            Err(Rejection::bad_request(format!(
                "contactId: {} is not a valid custom id (1 to 50 of A-Z a-z 0-9 _ = + / @)",
                shown(contact_id)
            )))
        }
        _ => Ok(()),
    }
}

/// `^\+[1-9][0-9]{6,14}$`
pub(super) fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// `^[A-Za-z0-9_=+/@]{1,50}$`
pub(super) fn is_custom_id(s: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'+' | b'/' | b'@'))
}

/// `events`: a non-empty array [DOC S1]; each element checked by [`check_event`].
///
/// [UNK] open question 11: no maximum is documented. It is the `max_events_per_call` switch
/// (default unlimited). [INF] one envelope may mix event types; nothing says otherwise.
fn check_events(events: Option<&Value>, max: Option<usize>) -> Result<&[Value], Rejection> {
    let events = match events {
        None => return Err(Rejection::bad_request("events: required")),
        Some(Value::Array(events)) => events.as_slice(),
        Some(other) => {
            return Err(Rejection::bad_request(format!(
                "events: must be an array, got {}",
                kind(other)
            )));
        }
    };
    if events.is_empty() {
        return Err(Rejection::bad_request(
            "events: must contain at least one event",
        ));
    }
    if let Some(max) = max.filter(|&max| events.len() > max) {
        return Err(Rejection::bad_request(format!(
            "events: {} events exceed max_events_per_call ({max})",
            events.len()
        )));
    }
    for (i, event) in events.iter().enumerate() {
        check_event(i, event)?;
    }
    Ok(events)
}

/// What an event carries besides its common fields (§4.3).
enum Payload {
    /// `message` and `message_echo` carry a `message` object.
    Message,
    /// `message_status` carries a `status` object.
    Status,
}

/// One event object (§4.3): `type`, `mId`, `timestamp`, and `message` or `status` by type.
fn check_event(i: usize, event: &Value) -> Result<(), Rejection> {
    let path = format!("events[{i}]");
    let obj = event.as_object().ok_or_else(|| {
        Rejection::bad_request(format!("{path}: must be an object, got {}", kind(event)))
    })?;
    let payload = match required_str(obj, "type", &format!("{path}.type"))? {
        "message" | "message_echo" => Payload::Message,
        "message_status" => Payload::Status,
        other => {
            return Err(Rejection::bad_request(format!(
                "{path}.type: unknown event type {} (expected message, message_echo or message_status)",
                shown(other)
            )));
        }
    };
    check_mid(obj, &path)?;
    check_timestamp(obj, &path)?;
    match payload {
        Payload::Message => check_message(obj.get("message"), &format!("{path}.message")),
        Payload::Status => check_status(obj.get("status"), &format!("{path}.status")),
    }
}

/// `mId`: a string of 1 to 50 characters [DOC S6]. Characters, not bytes: the doc says "max 50
/// chars" [INF].
fn check_mid(obj: &Map<String, Value>, path: &str) -> Result<(), Rejection> {
    let mid = required_str(obj, "mId", &format!("{path}.mId"))?;
    let len = mid.chars().count();
    if len == 0 {
        return Err(Rejection::bad_request(format!(
            "{path}.mId: must not be empty"
        )));
    }
    if len > MAX_ID_CHARS {
        return Err(Rejection::bad_request(format!(
            "{path}.mId: {len} characters, longer than {MAX_ID_CHARS}"
        )));
    }
    Ok(())
}

/// `timestamp`: an integer in UNIX epoch milliseconds [DOC S6]. Floats (even `1.7e12`) and strings
/// are rejected: the doc's type is integer.
fn check_timestamp(obj: &Map<String, Value>, path: &str) -> Result<(), Rejection> {
    let field = format!("{path}.timestamp");
    let value = obj
        .get("timestamp")
        .ok_or_else(|| Rejection::bad_request(format!("{field}: required")))?;
    let not_integer = || {
        Rejection::bad_request(format!(
            "{field}: must be an integer (epoch milliseconds), got {}",
            kind(value)
        ))
    };
    let Value::Number(n) = value else {
        return Err(not_integer());
    };
    let ms = match (n.as_i64(), n.as_u64()) {
        (Some(ms), _) => ms,
        (None, Some(_)) => i64::MAX, // beyond i64: certainly too large
        (None, None) => return Err(not_integer()),
    };
    if ms < MIN_TIMESTAMP_MS {
        return Err(Rejection::bad_request(format!(
            "{field}: {ms} looks like seconds, not epoch milliseconds (must be at least 10^12)"
        )));
    }
    if ms >= MAX_TIMESTAMP_MS {
        return Err(Rejection::bad_request(format!(
            "{field}: {ms} looks like microseconds, not epoch milliseconds (must be below 10^14)"
        )));
    }
    Ok(())
}

/// The `message` object of a `message`/`message_echo` event (§4.4).
///
/// [UNK] the documented type list is cut off after "text, attachment, …". Accepted set: `text`
/// [DOC], `attachment`, `location`, `quick_reply` [INF from S13/S14]; everything else is rejected,
/// matching §4.4's safe policy "send only text/attachment/location" (quick_reply is tolerated).
fn check_message(message: Option<&Value>, path: &str) -> Result<(), Rejection> {
    let obj = required_object(
        message,
        path,
        "required for message and message_echo events",
    )?;
    match required_str(obj, "type", &format!("{path}.type"))? {
        "text" => check_text(obj, path),
        "attachment" => check_attachment(obj.get("attachment"), &format!("{path}.attachment")),
        "location" => check_location(obj, path),
        "quick_reply" => check_quick_reply(obj, path),
        other => Err(Rejection::bad_request(format!(
            "{path}.type: unsupported message type {} (expected text, attachment, location or quick_reply)",
            shown(other)
        ))),
    }
}

/// Text: a non-empty `text` [DOC S1]. [UNK] max length — none enforced. A whitespace-only text
/// is accepted (only "empty" is clearly invalid).
fn check_text(obj: &Map<String, Value>, path: &str) -> Result<(), Rejection> {
    if required_str(obj, "text", &format!("{path}.text"))?.is_empty() {
        return Err(Rejection::bad_request(format!(
            "{path}.text: must not be empty"
        )));
    }
    Ok(())
}

/// Attachment [INF §4.4]: `attachment.type` in image|video|audio|file and `attachment.url` an
/// absolute http(s) URL (the `attachment.url` nesting, not `attachment.payload.url`).
/// `fileName`/`mimeType`/`description` are [UNK] and ignored.
fn check_attachment(attachment: Option<&Value>, path: &str) -> Result<(), Rejection> {
    let obj = required_object(attachment, path, "required for attachment messages")?;
    let ty = required_str(obj, "type", &format!("{path}.type"))?;
    if !matches!(ty, "image" | "video" | "audio" | "file") {
        return Err(Rejection::bad_request(format!(
            "{path}.type: unknown attachment type {} (expected image, video, audio or file)",
            shown(ty)
        )));
    }
    let url = required_str(obj, "url", &format!("{path}.url"))?;
    let is_http = url::Url::parse(url)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false);
    if !is_http {
        return Err(Rejection::bad_request(format!(
            "{path}.url: {} is not an absolute http(s) URL",
            shown(url)
        )));
    }
    Ok(())
}

/// Location [UNK §4.4]: read as numeric `latitude`/`longitude` at the message's top level (the
/// shape the spec's example and the DigiSac bridge use), within their geographic ranges [INF].
fn check_location(obj: &Map<String, Value>, path: &str) -> Result<(), Rejection> {
    check_coordinate(obj, path, "latitude", 90.0)?;
    check_coordinate(obj, path, "longitude", 180.0)
}

fn check_coordinate(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    limit: f64,
) -> Result<(), Rejection> {
    let field = format!("{path}.{key}");
    match obj.get(key) {
        None => Err(Rejection::bad_request(format!(
            "{field}: required for location messages"
        ))),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (-limit..=limit).contains(&v) => Ok(()),
            _ => Err(Rejection::bad_request(format!(
                "{field}: {n} is outside -{limit}..{limit}"
            ))),
        },
        Some(other) => Err(Rejection::bad_request(format!(
            "{field}: must be a number, got {}",
            kind(other)
        ))),
    }
}

/// Quick reply [INF from S13; inbound acceptance UNK]: a `title` string and/or a `replies` array
/// (elements strings or objects — the spec does not settle which); at least one of a non-empty
/// title or a non-empty replies array must be there.
fn check_quick_reply(obj: &Map<String, Value>, path: &str) -> Result<(), Rejection> {
    let title = match obj.get("title") {
        None => "",
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(Rejection::bad_request(format!(
                "{path}.title: must be a string, got {}",
                kind(other)
            )));
        }
    };
    let replies: &[Value] = match obj.get("replies") {
        None => &[],
        Some(Value::Array(r)) => r,
        Some(other) => {
            return Err(Rejection::bad_request(format!(
                "{path}.replies: must be an array, got {}",
                kind(other)
            )));
        }
    };
    if let Some(i) = replies
        .iter()
        .position(|r| !(r.is_string() || r.is_object()))
    {
        return Err(Rejection::bad_request(format!(
            "{path}.replies[{i}]: must be a string or an object"
        )));
    }
    if title.is_empty() && replies.is_empty() {
        return Err(Rejection::bad_request(format!(
            "{path}: quick_reply needs a non-empty title or replies"
        )));
    }
    Ok(())
}

/// The `status` object of a `message_status` event (§4.5): `value` in sent|delivered|read|failed
/// (lowercase); `message` an optional string. [UNK] open question 8: `message` is not required
/// even with `failed`.
fn check_status(status: Option<&Value>, path: &str) -> Result<(), Rejection> {
    let obj = required_object(status, path, "required for message_status events")?;
    let value = required_str(obj, "value", &format!("{path}.value"))?;
    if !matches!(value, "sent" | "delivered" | "read" | "failed") {
        return Err(Rejection::bad_request(format!(
            "{path}.value: unknown status {} (expected sent, delivered, read or failed)",
            shown(value)
        )));
    }
    optional_str(obj, "message", &format!("{path}.message"))?;
    Ok(())
}

/// The optional `contact` object (§4.6). [INF] The documented keys must have their documented
/// types when present (strings; `timezone` a number); `null` is not accepted for them — §4.6 says
/// to omit empty fields rather than send `null`, so a `null` here is a sender bug worth surfacing.
/// Keys outside the documented set are ignored.
fn check_contact(contact: Option<&Value>) -> Result<Option<&Value>, Rejection> {
    const STRING_FIELDS: [&str; 8] = [
        "firstName",
        "lastName",
        "profilePic",
        "countryCode",
        "email",
        "phone",
        "language",
        "locale",
    ];
    let Some(contact) = contact else {
        return Ok(None);
    };
    let obj = contact.as_object().ok_or_else(|| {
        Rejection::bad_request(format!("contact: must be an object, got {}", kind(contact)))
    })?;
    for key in STRING_FIELDS {
        optional_str(obj, key, &format!("contact.{key}"))?;
    }
    match obj.get("timezone") {
        None | Some(Value::Number(_)) => Ok(Some(contact)),
        Some(other) => Err(Rejection::bad_request(format!(
            "contact.timezone: must be a number (UTC offset in hours), got {}",
            kind(other)
        ))),
    }
}

/// A required string field.
fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, Rejection> {
    match obj.get(key) {
        None => Err(Rejection::bad_request(format!("{path}: required"))),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Rejection::bad_request(format!(
            "{path}: must be a string, got {}",
            kind(other)
        ))),
    }
}

/// An optional string field: absent is fine, any other type (including `null`) is not.
fn optional_str(obj: &Map<String, Value>, key: &str, path: &str) -> Result<(), Rejection> {
    match obj.get(key) {
        None | Some(Value::String(_)) => Ok(()),
        Some(other) => Err(Rejection::bad_request(format!(
            "{path}: must be a string, got {}",
            kind(other)
        ))),
    }
}

/// A required object field; `when` says why it is required.
fn required_object<'a>(
    value: Option<&'a Value>,
    path: &str,
    when: &str,
) -> Result<&'a Map<String, Value>, Rejection> {
    match value {
        None => Err(Rejection::bad_request(format!("{path}: {when}"))),
        Some(Value::Object(obj)) => Ok(obj),
        Some(other) => Err(Rejection::bad_request(format!(
            "{path}: must be an object, got {}",
            kind(other)
        ))),
    }
}

/// The JSON type of a value, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A caller-supplied string quoted for a reason, cut to 60 characters so a huge value cannot
/// blow up the error body.
fn shown(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}
