-- rio-bridge SQLite schema, version 1. Timestamps are epoch milliseconds.

-- Every message or event that passes through: inbound events toward respond.io (lane 0)
-- and sends toward the provider (lane 1). Rows are the payload; `queues` is what lanes
-- schedule.
CREATE TABLE IF NOT EXISTS items (
    id          INTEGER PRIMARY KEY,      -- FIFO order within a queue
    channel     TEXT    NOT NULL,
    lane        INTEGER NOT NULL,         -- 0 toward respond.io, 1 toward the provider
    qkey        TEXT    NOT NULL,         -- the FIFO this item waits in
    contact     TEXT    NOT NULL,
    kind        INTEGER NOT NULL,         -- 0 message, 1 echo, 2 status, 3 send
    mid         TEXT    NOT NULL,         -- the respond.io mId
    payload     TEXT    NOT NULL,         -- JSON: the event (lane 0) or the message (lane 1)
    contact_json TEXT,                    -- respond.io `contact` profile, inbound only
    state       INTEGER NOT NULL,         -- 0 pending, 1 attempting, 2 done, 3 dead
    attempts    INTEGER NOT NULL DEFAULT 0,
    ambiguous   INTEGER NOT NULL DEFAULT 0, -- attempts that may have been acted on
    created_ms  INTEGER NOT NULL,
    next_ms     INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    provider_id TEXT,                     -- the provider's id (sends: for receipts; inbound: for the history)
    status      INTEGER NOT NULL DEFAULT 0, -- sends: 0 none 1 sent 2 delivered 3 read 4 failed
    last_error  TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS items_queue ON items(channel, lane, qkey, id) WHERE state < 2;
-- Append-only (ids grow): finds a lane's oldest pending item without a scan.
CREATE INDEX IF NOT EXISTS items_pending ON items(channel, lane, id) WHERE state < 2;
CREATE INDEX IF NOT EXISTS items_attempting ON items(state) WHERE state = 1;
CREATE INDEX IF NOT EXISTS items_mid ON items(channel, mid);
CREATE UNIQUE INDEX IF NOT EXISTS items_provider ON items(channel, provider_id)
    WHERE provider_id IS NOT NULL AND kind = 3;
CREATE INDEX IF NOT EXISTS items_done ON items(updated_ms) WHERE state = 2;
CREATE INDEX IF NOT EXISTS items_dead ON items(channel, lane) WHERE state = 3;

-- One row per FIFO with pending work: what a lane claims. Scheduling contacts rather than
-- messages keeps start-up and claiming O(due queues), however many messages are queued.
CREATE TABLE IF NOT EXISTS queues (
    channel TEXT    NOT NULL,
    lane    INTEGER NOT NULL,
    qkey    TEXT    NOT NULL,
    class   INTEGER NOT NULL,             -- 0 first (conversations, messages), 1 after (bulk, statuses)
    next_ms INTEGER NOT NULL,             -- not before (backoff)
    claimed INTEGER NOT NULL DEFAULT 0,   -- held by the running lane
    PRIMARY KEY (channel, lane, qkey)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queues_due ON queues(channel, lane, claimed, class, next_ms);

-- What identifies a provider webhook, kept for a TTL: a redelivery is answered 2xx and dropped.
CREATE TABLE IF NOT EXISTS dedupe (
    channel    TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe(expires_ms);

-- Receipts for provider ids we do not know yet (the receipt beat the send's response).
CREATE TABLE IF NOT EXISTS parked_receipts (
    id          INTEGER PRIMARY KEY,
    channel     TEXT    NOT NULL,
    provider_id TEXT    NOT NULL,
    status      INTEGER NOT NULL,
    reason      TEXT,
    received_ms INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS parked_by_id ON parked_receipts(channel, provider_id);

-- Every attempt, written before the request leaves: the rate limiter's memory across
-- restarts and the message's history.
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    item_id     INTEGER NOT NULL,
    channel     TEXT    NOT NULL,
    lane        INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,         -- attempting, ok, retry, ambiguous, throttled, fault, dead
    call_first  INTEGER NOT NULL DEFAULT 1, -- 1 on one row per request (batches carry several items)
    detail      TEXT,
    duration_ms INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS attempts_window ON attempts(channel, lane, at_ms);
CREATE INDEX IF NOT EXISTS attempts_item ON attempts(item_id);

-- Status changes and other notable events of an item.
CREATE TABLE IF NOT EXISTS history (
    id      INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL,
    event   TEXT    NOT NULL,
    detail  TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS history_item ON history(item_id);

-- When each contact last wrote in: decides conversation vs bulk for outbound sends.
CREATE TABLE IF NOT EXISTS contacts (
    channel         TEXT    NOT NULL,
    contact         TEXT    NOT NULL,
    last_inbound_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, contact)
) STRICT, WITHOUT ROWID;

-- Lane pauses that must survive a restart (429 Retry-After).
CREATE TABLE IF NOT EXISTS lane_state (
    channel         TEXT    NOT NULL,
    lane            INTEGER NOT NULL,
    paused_until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, lane)
) STRICT, WITHOUT ROWID;

-- Authentic provider webhooks we could not parse: kept raw and dead-lettered.
CREATE TABLE IF NOT EXISTS raw_webhooks (
    id           INTEGER PRIMARY KEY,
    channel      TEXT    NOT NULL,
    route        TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    reason       TEXT    NOT NULL,
    received_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
) STRICT;
