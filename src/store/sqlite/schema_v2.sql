-- Version 2: what operators need to answer "my message never arrived" without a database
-- shell: the HTTP exchanges on each message's path, an audit log of admin actions, and
-- indexes for listing messages by contact and time.

-- HTTP exchanges (webhooks in, respond.io calls out, provider sends out, /message in),
-- redacted and truncated before they are stored. One row per message an exchange
-- belongs to (`mid` NULL when it belongs to none we know: an unparseable webhook, a
-- receipt for an unknown provider id). Pruned after `store.channel_log_retention_secs`.
CREATE TABLE IF NOT EXISTS channel_logs (
    id               INTEGER PRIMARY KEY,
    channel          TEXT    NOT NULL,
    mid              TEXT,
    at_ms            INTEGER NOT NULL,
    direction        TEXT    NOT NULL,  -- in (they called us) or out (we called them)
    kind             TEXT    NOT NULL,  -- webhook_inbound, webhook_status, message, respondio, provider
    method           TEXT    NOT NULL,
    url              TEXT    NOT NULL,
    status           INTEGER,           -- NULL: no HTTP answer (transport error)
    duration_ms      INTEGER NOT NULL,
    request_headers  TEXT,
    request_body     TEXT,
    response_body    TEXT,
    error            TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS channel_logs_mid ON channel_logs(mid, id);
-- No index on at_ms: rows arrive in time order, so pruning reads from the lowest ids and
-- stops at its batch size; one index fewer keeps each logged exchange cheaper to write.

-- Who did what through the admin API: replays, discards, pauses, resumes, purges.
CREATE TABLE IF NOT EXISTS audit_log (
    id      INTEGER PRIMARY KEY,
    at_ms   INTEGER NOT NULL,
    actor   TEXT    NOT NULL,           -- the admin token's name
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    detail  TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at_ms);

-- Listing one contact's messages, and messages by time, without a scan.
CREATE INDEX IF NOT EXISTS items_contact ON items(channel, contact, id);
CREATE INDEX IF NOT EXISTS items_created ON items(created_ms);
CREATE INDEX IF NOT EXISTS raw_webhooks_channel ON raw_webhooks(channel, id);
