//! The delivery status machine: statuses only move forward.
//!
//! sent < delivered < read; `failed` only from pending or sent, and terminal. A late or
//! out-of-order receipt never moves a status backwards; a `failed` after `delivered` is a
//! provider anomaly we log but do not forward.

use crate::respondio::wire::StatusValue;

/// The stored status of an outbound message (the `status` column of a send item).
pub const NONE: i64 = 0;

pub fn code(v: StatusValue) -> i64 {
    match v {
        StatusValue::Sent => 1,
        StatusValue::Delivered => 2,
        StatusValue::Read => 3,
        StatusValue::Failed => 4,
    }
}

pub fn from_code(c: i64) -> Option<StatusValue> {
    Some(match c {
        1 => StatusValue::Sent,
        2 => StatusValue::Delivered,
        3 => StatusValue::Read,
        4 => StatusValue::Failed,
        _ => return None,
    })
}

/// The outcome of applying a new status to the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Move to this status and forward it.
    Forward(StatusValue),
    /// Keep the current status; the reason is for the log.
    Ignore(&'static str),
}

pub fn advance(current: i64, new: StatusValue) -> Transition {
    let cur = from_code(current);
    match (cur, new) {
        (Some(StatusValue::Failed), _) => Transition::Ignore("already failed (terminal)"),
        (Some(StatusValue::Delivered | StatusValue::Read), StatusValue::Failed) => {
            Transition::Ignore("failed after delivered: provider anomaly, not forwarded")
        }
        (_, StatusValue::Failed) => Transition::Forward(StatusValue::Failed),
        (None, n) => Transition::Forward(n),
        (Some(c), n) if code(n) > code(c) => Transition::Forward(n),
        _ => Transition::Ignore("not newer than the current status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatusValue::*;

    #[test]
    fn table() {
        let cases = [
            (NONE, Sent, Transition::Forward(Sent)),
            (NONE, Delivered, Transition::Forward(Delivered)),
            (NONE, Failed, Transition::Forward(Failed)),
            (code(Sent), Delivered, Transition::Forward(Delivered)),
            (code(Sent), Read, Transition::Forward(Read)),
            (code(Sent), Failed, Transition::Forward(Failed)),
            (code(Delivered), Read, Transition::Forward(Read)),
            (
                code(Read),
                Delivered,
                Transition::Ignore("not newer than the current status"),
            ),
            (
                code(Delivered),
                Sent,
                Transition::Ignore("not newer than the current status"),
            ),
            (
                code(Delivered),
                Delivered,
                Transition::Ignore("not newer than the current status"),
            ),
            (
                code(Delivered),
                Failed,
                Transition::Ignore("failed after delivered: provider anomaly, not forwarded"),
            ),
            (
                code(Read),
                Failed,
                Transition::Ignore("failed after delivered: provider anomaly, not forwarded"),
            ),
            (
                code(Failed),
                Delivered,
                Transition::Ignore("already failed (terminal)"),
            ),
            (
                code(Failed),
                Failed,
                Transition::Ignore("already failed (terminal)"),
            ),
        ];
        for (cur, new, want) in cases {
            assert_eq!(advance(cur, new), want, "{cur} + {new:?}");
        }
    }
}
