//! Every statement the SQLite store runs on a hot path, by name: the backend executes these
//! very constants, and `tests/store.rs` pins the plan of each (`HOT_PATH`) on a populated
//! store, so a scan cannot creep back in unnoticed.

macro_rules! item_columns {
    () => {
        "id, channel, lane, qkey, contact, kind, mid, payload, contact_json, state, \
         attempts, ambiguous, created_ms, COALESCE(queued_ms, created_ms) AS queued_ms, provider_id, \
         status, last_error"
    };
}

/// The columns an [`crate::store::Item`] is read from.
pub const ITEM_COLUMNS: &str = item_columns!();

// The statements of `store::rules`' primitives (`tx.rs`).

pub const STILL_ATTEMPTING: &str =
    "SELECT 1 FROM items WHERE id = ?1 AND state = 1 AND attempts = ?2";

pub const ATTEMPT_DEADLINE: &str = "SELECT next_ms FROM items WHERE id = ?1 AND state = 1";

pub const NUDGE_QUEUE: &str =
    "UPDATE queues SET next_ms = ?1 WHERE channel = ?2 AND lane = ?3 AND qkey = ?4 AND claimed = 0";

pub const PAUSE_LANE: &str =
    "INSERT INTO lane_state(channel, lane, paused_until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(channel, lane) DO UPDATE
             SET paused_until_ms = MAX(paused_until_ms, excluded.paused_until_ms)";

pub const CLAIM_DEDUPE: &str = "INSERT INTO dedupe(channel, key, expires_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(channel, key) DO UPDATE SET expires_ms = excluded.expires_ms
             WHERE dedupe.expires_ms < ?4";

pub const INSERT_ITEM: &str =
    "INSERT INTO items(channel, lane, qkey, contact, kind, mid, payload, contact_json, state,
                               created_ms, next_ms, updated_ms, provider_id, queued_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?9, ?9, ?10, ?9)";

pub const UPSERT_QUEUE: &str = "INSERT INTO queues(channel, lane, qkey, class, next_ms, claimed) VALUES (?1, ?2, ?3, ?4, ?5, 0)
             ON CONFLICT(channel, lane, qkey) DO UPDATE SET class = MIN(class, excluded.class)";

pub const HISTORY: &str =
    "INSERT INTO history(item_id, at_ms, event, detail) VALUES (?1, ?2, ?3, ?4)";

pub const TOUCH_CONTACT: &str =
    "INSERT INTO contacts(channel, contact, last_inbound_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(channel, contact) DO UPDATE
             SET last_inbound_ms = MAX(last_inbound_ms, excluded.last_inbound_ms)";

pub const PROMOTE_SENDS: &str =
    "UPDATE queues SET class = 0 WHERE channel = ?1 AND lane = 1 AND qkey = ?2 AND class = 1";

pub const LAST_INBOUND: &str =
    "SELECT last_inbound_ms FROM contacts WHERE channel = ?1 AND contact = ?2";

pub const SEND_BY_PROVIDER_ID: &str = "SELECT id, mid, contact, status FROM items WHERE channel = ?1 AND provider_id = ?2 AND kind = 3";

pub const STATUS_ROW: &str = "SELECT kind, id, mid, contact, status FROM items WHERE id = ?1";

pub const SET_STATUS: &str = "UPDATE items SET status = ?1, updated_ms = ?2 WHERE id = ?3";

pub const SET_PROVIDER_ID: &str = "UPDATE items SET provider_id = ?1 WHERE id = ?2";

/// The newest pending status of a status queue. `state < 2` as well as `state = 0`: only
/// the first is the predicate of `items_queue`, which SQLite can use only when the query
/// names it; without it the lookup walked the channel's items.
pub const REPLACE_PENDING_STATUS: &str = "UPDATE items SET payload = ?1, updated_ms = ?2
     WHERE id = (SELECT id FROM items WHERE channel = ?3 AND lane = 0 AND qkey = ?4 AND state < 2
                 AND state = 0 ORDER BY id DESC LIMIT 1)";

pub const PARK_RECEIPT: &str =
    "INSERT INTO parked_receipts(channel, provider_id, status, reason, received_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

pub const PARKED_RECEIPTS: &str = "SELECT id, status, reason FROM parked_receipts WHERE channel = ?1 AND provider_id = ?2 ORDER BY id";

pub const DELETE_PARKED: &str = "DELETE FROM parked_receipts WHERE id = ?1";

pub const CLAIM_QUEUES: &str =
    "SELECT qkey FROM queues WHERE channel = ?1 AND lane = ?2 AND claimed = 0 AND class = ?3
                 AND next_ms <= ?4 ORDER BY next_ms LIMIT ?5";

pub const CLAIM_QUEUE_ROW: &str =
    "UPDATE queues SET claimed = 1 WHERE channel = ?1 AND lane = ?2 AND qkey = ?3";

pub const NEXT_DUE: &str =
    "SELECT next_ms FROM queues WHERE channel = ?1 AND lane = ?2 AND claimed = 0 AND class = ?3
                 AND next_ms > ?4 ORDER BY next_ms LIMIT 1";

pub const HEAD_ITEMS: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE channel = ?1 AND lane = ?2 AND qkey = ?3 AND state < 2
             ORDER BY id LIMIT ?4"
);

pub const QUEUE_HAS_PENDING: &str =
    "SELECT 1 FROM items WHERE channel = ?1 AND lane = ?2 AND qkey = ?3 AND state < 2 LIMIT 1";

pub const DROP_QUEUE: &str = "DELETE FROM queues WHERE channel = ?1 AND lane = ?2 AND qkey = ?3";

pub const RELEASE_QUEUE_AT: &str =
    "UPDATE queues SET claimed = 0, next_ms = ?1 WHERE channel = ?2 AND lane = ?3 AND qkey = ?4";

pub const RELEASE_QUEUE: &str =
    "UPDATE queues SET claimed = 0 WHERE channel = ?1 AND lane = ?2 AND qkey = ?3";

pub const RELEASE_CLAIMS: &str =
    "UPDATE queues SET claimed = 0 WHERE channel = ?1 AND lane = ?2 AND claimed = 1";

pub const MARK_ATTEMPTING: &str = "UPDATE items SET state = 1, attempts = attempts + 1, next_ms = ?1, updated_ms = ?2 WHERE id = ?3";

pub const OPEN_ATTEMPT: &str =
    "INSERT INTO attempts(item_id, channel, lane, at_ms, outcome, call_first)
             VALUES (?1, ?2, ?3, ?4, 'attempting', ?5)";

pub const SET_ATTEMPT_OUTCOME: &str =
    "UPDATE attempts SET outcome = ?1, detail = ?2, duration_ms = ?3, at_ms = COALESCE(?5, at_ms)
             WHERE item_id = ?4 AND outcome = 'attempting'";

pub const DELETE_OPEN_ATTEMPT: &str =
    "DELETE FROM attempts WHERE item_id = ?1 AND outcome = 'attempting'";

pub const ITEM_DONE: &str = "UPDATE items SET state = 2, updated_ms = ?1, last_error = NULL,
             status = CASE WHEN kind = 3 AND status = 0 THEN 1 ELSE status END WHERE id = ?2";

pub const ITEM_RETRY: &str =
    "UPDATE items SET state = 0, next_ms = ?1, last_error = ?2, updated_ms = ?3,
             ambiguous = ambiguous + ?4, attempts = attempts - ?5 WHERE id = ?6";

pub const ITEM_NOT_SENT: &str =
    "UPDATE items SET state = 0, attempts = attempts - 1, updated_ms = ?1 WHERE id = ?2";

pub const ITEM_REQUEUE_AMBIGUOUS: &str =
    "UPDATE items SET state = 0, ambiguous = ambiguous + 1 WHERE id = ?1";

pub const ITEM_DEAD: &str =
    "UPDATE items SET state = 3, last_error = ?1, updated_ms = ?2 WHERE id = ?3";

pub const ATTEMPTING_ITEMS: &str =
    "SELECT id, qkey, ambiguous, next_ms FROM items INDEXED BY items_attempting
                 WHERE state = 1 AND channel = ?1 AND lane = ?2 ORDER BY id";

pub const COUNT_AMBIGUOUS: &str = "UPDATE items SET ambiguous = ambiguous + 1 WHERE id = ?1";

/// The pending items of a lane past their age (the sweep of a lane that sends nothing).
pub const AGED_PENDING: &str = "SELECT id, qkey FROM items INDEXED BY items_queued
                 WHERE channel = ?1 AND lane = ?2 AND state = 0 AND queued_ms < ?3
                 ORDER BY queued_ms LIMIT ?4";

pub const IS_PENDING: &str = "SELECT 1 FROM items WHERE id = ?1 AND state = 0";

// Lanes at start, housekeeping and retention (`mod.rs`, `admin.rs`, `store::activity`).

pub const RECENT_ATTEMPTS: &str =
    "SELECT at_ms FROM attempts WHERE channel = ?1 AND lane = ?2 AND call_first = 1
                 ORDER BY at_ms DESC LIMIT ?3";

pub const LANE_PENDING: &str =
    "SELECT channel, lane, COUNT(*) FROM items WHERE state < 2 GROUP BY channel, lane";

pub const LANE_OLDEST_PENDING: &str = "SELECT created_ms FROM items INDEXED BY items_pending
                         WHERE channel = ?1 AND lane = ?2 AND state < 2 ORDER BY id LIMIT 1";

pub const LANE_DEAD: &str =
    "SELECT channel, lane, COUNT(*) FROM items WHERE state = 3 GROUP BY channel, lane";

// Retention: each a batch of at most ?2 rows, oldest first, found on the index of the time
// it is pruned by (schema version 3 adds those of attempts, history, channel logs and
// parked receipts), deleted by primary key.

pub const PRUNE_ITEMS: &str = "DELETE FROM items WHERE id IN
     (SELECT id FROM items WHERE state = 2 AND updated_ms < ?1 ORDER BY updated_ms LIMIT ?2)";

pub const PRUNE_DEDUPE: &str = "DELETE FROM dedupe WHERE (channel, key) IN
     (SELECT channel, key FROM dedupe WHERE expires_ms < ?1 ORDER BY expires_ms LIMIT ?2)";

pub const PRUNE_PARKED: &str = "DELETE FROM parked_receipts WHERE id IN
     (SELECT id FROM parked_receipts WHERE expires_ms < ?1 ORDER BY expires_ms LIMIT ?2)";

pub const PRUNE_ATTEMPTS: &str = "DELETE FROM attempts WHERE id IN
     (SELECT id FROM attempts WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)";

pub const PRUNE_HISTORY: &str = "DELETE FROM history WHERE id IN
     (SELECT id FROM history WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)";

pub const PRUNE_CHANNEL_LOGS: &str = "DELETE FROM channel_logs WHERE id IN
     (SELECT id FROM channel_logs WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)";

/// A window of the attempt log (seconds), on `attempts_at`.
pub const ATTEMPT_COUNTS: &str = "SELECT channel, lane, SUM(call_first),
                        SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END),
                        SUM(CASE WHEN outcome IN ('retry', 'ambiguous', 'throttled', 'fault', 'dead')
                            THEN 1 ELSE 0 END)
                 FROM attempts WHERE at_ms >= ?1 AND at_ms < ?2
                 GROUP BY channel, lane ORDER BY channel, lane";

/// Every statement above whose plan `tests/store.rs` pins, by name.
pub const HOT_PATH: &[(&str, &str)] = &[
    ("STILL_ATTEMPTING", STILL_ATTEMPTING),
    ("ATTEMPT_DEADLINE", ATTEMPT_DEADLINE),
    ("NUDGE_QUEUE", NUDGE_QUEUE),
    ("PAUSE_LANE", PAUSE_LANE),
    ("CLAIM_DEDUPE", CLAIM_DEDUPE),
    ("INSERT_ITEM", INSERT_ITEM),
    ("UPSERT_QUEUE", UPSERT_QUEUE),
    ("HISTORY", HISTORY),
    ("TOUCH_CONTACT", TOUCH_CONTACT),
    ("PROMOTE_SENDS", PROMOTE_SENDS),
    ("LAST_INBOUND", LAST_INBOUND),
    ("SEND_BY_PROVIDER_ID", SEND_BY_PROVIDER_ID),
    ("STATUS_ROW", STATUS_ROW),
    ("SET_STATUS", SET_STATUS),
    ("SET_PROVIDER_ID", SET_PROVIDER_ID),
    ("REPLACE_PENDING_STATUS", REPLACE_PENDING_STATUS),
    ("PARK_RECEIPT", PARK_RECEIPT),
    ("PARKED_RECEIPTS", PARKED_RECEIPTS),
    ("DELETE_PARKED", DELETE_PARKED),
    ("CLAIM_QUEUES", CLAIM_QUEUES),
    ("CLAIM_QUEUE_ROW", CLAIM_QUEUE_ROW),
    ("NEXT_DUE", NEXT_DUE),
    ("HEAD_ITEMS", HEAD_ITEMS),
    ("QUEUE_HAS_PENDING", QUEUE_HAS_PENDING),
    ("DROP_QUEUE", DROP_QUEUE),
    ("RELEASE_QUEUE_AT", RELEASE_QUEUE_AT),
    ("RELEASE_QUEUE", RELEASE_QUEUE),
    ("RELEASE_CLAIMS", RELEASE_CLAIMS),
    ("MARK_ATTEMPTING", MARK_ATTEMPTING),
    ("OPEN_ATTEMPT", OPEN_ATTEMPT),
    ("SET_ATTEMPT_OUTCOME", SET_ATTEMPT_OUTCOME),
    ("DELETE_OPEN_ATTEMPT", DELETE_OPEN_ATTEMPT),
    ("ITEM_DONE", ITEM_DONE),
    ("ITEM_RETRY", ITEM_RETRY),
    ("ITEM_NOT_SENT", ITEM_NOT_SENT),
    ("ITEM_REQUEUE_AMBIGUOUS", ITEM_REQUEUE_AMBIGUOUS),
    ("ITEM_DEAD", ITEM_DEAD),
    ("ATTEMPTING_ITEMS", ATTEMPTING_ITEMS),
    ("COUNT_AMBIGUOUS", COUNT_AMBIGUOUS),
    ("AGED_PENDING", AGED_PENDING),
    ("IS_PENDING", IS_PENDING),
    ("RECENT_ATTEMPTS", RECENT_ATTEMPTS),
    ("LANE_PENDING", LANE_PENDING),
    ("LANE_OLDEST_PENDING", LANE_OLDEST_PENDING),
    ("LANE_DEAD", LANE_DEAD),
    ("PRUNE_ITEMS", PRUNE_ITEMS),
    ("PRUNE_DEDUPE", PRUNE_DEDUPE),
    ("PRUNE_PARKED", PRUNE_PARKED),
    ("PRUNE_ATTEMPTS", PRUNE_ATTEMPTS),
    ("PRUNE_HISTORY", PRUNE_HISTORY),
    ("PRUNE_CHANNEL_LOGS", PRUNE_CHANNEL_LOGS),
    ("ATTEMPT_COUNTS", ATTEMPT_COUNTS),
];
