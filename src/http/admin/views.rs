//! How store rows look in the admin API: codes as names, payloads as JSON, times as epoch
//! milliseconds (numbers, for a console to format), and the message filter's query form.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::admin::{
    AttemptRow, ChannelLogRow, HistoryRow, MessageDetail, MessageFilter, MessageRow,
};
use crate::store::{ItemKind, Lane};

pub fn lane_name(code: i64) -> &'static str {
    Lane::from_code(code).name()
}

pub fn parse_lane(s: &str) -> Result<Lane, String> {
    match s {
        "to_respondio" => Ok(Lane::RespondIo),
        "to_provider" => Ok(Lane::Provider),
        other => Err(format!(
            "direction {other:?}: expected to_respondio or to_provider"
        )),
    }
}

pub fn kind_name(code: i64) -> &'static str {
    match ItemKind::from_code(code) {
        ItemKind::Message => "message",
        ItemKind::Echo => "echo",
        ItemKind::Status => "status",
        ItemKind::Send => "send",
    }
}

fn parse_kind(s: &str) -> Result<ItemKind, String> {
    match s {
        "message" => Ok(ItemKind::Message),
        "echo" => Ok(ItemKind::Echo),
        "status" => Ok(ItemKind::Status),
        "send" => Ok(ItemKind::Send),
        other => Err(format!(
            "kind {other:?}: expected message, echo, status or send"
        )),
    }
}

pub fn state_name(code: i64) -> &'static str {
    match code {
        0 => "pending",
        1 => "attempting",
        2 => "done",
        _ => "dead",
    }
}

fn parse_state(s: &str) -> Result<i64, String> {
    match s {
        "pending" => Ok(0),
        "attempting" => Ok(1),
        "done" => Ok(2),
        "dead" => Ok(3),
        other => Err(format!(
            "state {other:?}: expected pending, attempting, done or dead"
        )),
    }
}

fn status_name(code: i64) -> Option<&'static str> {
    crate::status::from_code(code).map(|s| s.as_str())
}

/// A stored JSON payload as JSON (a string if it somehow is not).
fn payload(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

pub fn message(m: &MessageRow) -> Value {
    json!({
        "id": m.id,
        "channel": m.channel,
        "direction": lane_name(m.lane),
        "kind": kind_name(m.kind),
        "mid": m.mid,
        "contact": m.contact,
        "state": state_name(m.state),
        // Discarded dead letters are settled as done with a note; delivered ones have none.
        "discarded": m.state == 2 && m.last_error.is_some(),
        "status": status_name(m.status),
        "attempts": m.attempts,
        "ambiguous_attempts": m.ambiguous,
        "created_ms": m.created_ms,
        "updated_ms": m.updated_ms,
        "next_attempt_ms": (m.state == 0).then_some(m.next_ms),
        "provider_id": m.provider_id,
        "last_error": m.last_error,
        "payload": payload(&m.payload),
    })
}

pub fn channel_log(l: &ChannelLogRow) -> Value {
    json!({
        "id": l.id,
        "channel": l.channel,
        "mid": l.mid,
        "at_ms": l.at_ms,
        "direction": l.direction,
        "kind": l.kind,
        "method": l.method,
        "url": l.url,
        "status": l.status,
        "duration_ms": l.duration_ms,
        "request_headers": l.request_headers,
        "request_body": l.request_body,
        "response_body": l.response_body,
        "error": l.error,
    })
}

fn history(h: &HistoryRow) -> Value {
    json!({"item_id": h.item_id, "at_ms": h.at_ms, "event": h.event, "detail": h.detail})
}

fn attempt(a: &AttemptRow) -> Value {
    json!({"item_id": a.item_id, "at_ms": a.at_ms, "outcome": a.outcome, "detail": a.detail, "duration_ms": a.duration_ms})
}

/// A message with its status events, history, attempts and channel logs, plus one
/// timeline of all of them in time order (what a console shows first).
pub fn detail(d: &MessageDetail) -> Value {
    let mut timeline: Vec<(i64, u8, Value)> = Vec::new();
    timeline.push((
        d.item.created_ms,
        0,
        json!({"at_ms": d.item.created_ms, "source": "item", "event": "received", "detail": format!("{} {}", kind_name(d.item.kind), lane_name(d.item.lane))}),
    ));
    for h in &d.history {
        timeline.push((
            h.at_ms,
            1,
            json!({"at_ms": h.at_ms, "source": "history", "event": h.event, "detail": h.detail}),
        ));
    }
    for a in &d.attempts {
        timeline.push((
            a.at_ms,
            2,
            json!({"at_ms": a.at_ms, "source": "attempt", "event": format!("attempt {}", a.outcome), "detail": a.detail, "duration_ms": a.duration_ms}),
        ));
    }
    for l in &d.channel_logs {
        let status = l.status.map_or("no answer".to_string(), |s| s.to_string());
        timeline.push((
            l.at_ms,
            3,
            json!({"at_ms": l.at_ms, "source": "channel_log", "event": format!("{} {} {} → {}", l.direction, l.method, l.kind, status), "detail": l.error, "channel_log_id": l.id, "duration_ms": l.duration_ms}),
        ));
    }
    timeline.sort_by_key(|(at, order, _)| (*at, *order));
    json!({
        "message": message(&d.item),
        "status_events": d.related.iter().map(message).collect::<Vec<_>>(),
        "history": d.history.iter().map(history).collect::<Vec<_>>(),
        "attempts": d.attempts.iter().map(attempt).collect::<Vec<_>>(),
        "channel_logs": d.channel_logs.iter().map(channel_log).collect::<Vec<_>>(),
        "timeline": timeline.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
    })
}

/// The filter of `GET /admin/messages` (and of replay/discard by filter).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FilterQuery {
    pub channel: Option<String>,
    pub direction: Option<String>,
    pub state: Option<String>,
    pub contact: Option<String>,
    pub mid: Option<String>,
    pub kind: Option<String>,
    /// Epoch ms, inclusive.
    pub since: Option<i64>,
    /// Epoch ms, exclusive.
    pub until: Option<i64>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

impl FilterQuery {
    pub fn to_filter(&self, limit: usize) -> Result<MessageFilter, String> {
        let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
        Ok(MessageFilter {
            channel: nonempty(&self.channel),
            lane: nonempty(&self.direction)
                .as_deref()
                .map(parse_lane)
                .transpose()?,
            state: nonempty(&self.state)
                .as_deref()
                .map(parse_state)
                .transpose()?,
            contact: nonempty(&self.contact),
            mid: nonempty(&self.mid),
            kind: nonempty(&self.kind)
                .as_deref()
                .map(parse_kind)
                .transpose()?,
            since_ms: self.since,
            until_ms: self.until,
            before_id: nonempty(&self.cursor)
                .map(|c| {
                    c.parse::<i64>()
                        .map_err(|_| "cursor is not one we handed out".to_string())
                })
                .transpose()?,
            limit,
        })
    }
}
