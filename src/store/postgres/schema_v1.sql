-- rio-bridge PostgreSQL schema, version 1: the SQLite schema's tables with PostgreSQL
-- types, plus the lane leases of a cluster. Timestamps are epoch milliseconds.

-- The database's clock, in the unit of every stored time. Leases use it so that nodes'
-- clocks never have to agree for ownership to be decided.
CREATE OR REPLACE FUNCTION rio_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

CREATE TABLE IF NOT EXISTS items (
    id           BIGSERIAL PRIMARY KEY,   -- FIFO order within a queue
    channel      TEXT   NOT NULL,
    lane         BIGINT NOT NULL,         -- 0 toward respond.io, 1 toward the provider
    qkey         TEXT   NOT NULL,
    contact      TEXT   NOT NULL,
    kind         BIGINT NOT NULL,         -- 0 message, 1 echo, 2 status, 3 send
    mid          TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    contact_json TEXT,
    state        BIGINT NOT NULL,         -- 0 pending, 1 attempting, 2 done, 3 dead
    attempts     BIGINT NOT NULL DEFAULT 0,
    ambiguous    BIGINT NOT NULL DEFAULT 0,
    created_ms   BIGINT NOT NULL,
    next_ms      BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    provider_id  TEXT,
    status       BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS items_queue ON items(channel, lane, qkey, id) WHERE state < 2;
-- The oldest pending item of a lane. The extra `kind >= 0` (always true) keeps the
-- planner from using this index for a queue's lookups (which name no kind): with stale
-- statistics, e.g. right after a burst, it would otherwise scan a whole lane per lookup.
CREATE INDEX IF NOT EXISTS items_pending ON items(channel, lane, id) WHERE state < 2 AND kind >= 0;
CREATE INDEX IF NOT EXISTS items_attempting ON items(channel, lane) WHERE state = 1;
CREATE INDEX IF NOT EXISTS items_mid ON items(channel, mid);
CREATE UNIQUE INDEX IF NOT EXISTS items_provider ON items(channel, provider_id)
    WHERE provider_id IS NOT NULL AND kind = 3;
CREATE INDEX IF NOT EXISTS items_done ON items(updated_ms) WHERE state = 2;
CREATE INDEX IF NOT EXISTS items_dead ON items(channel, lane) WHERE state = 3;

CREATE TABLE IF NOT EXISTS queues (
    channel TEXT   NOT NULL,
    lane    BIGINT NOT NULL,
    qkey    TEXT   NOT NULL,
    class   BIGINT NOT NULL,
    next_ms BIGINT NOT NULL,
    claimed BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, lane, qkey)
);
-- Only unclaimed queues: what `claim` looks for. Partial, so a lookup of one queue by its
-- key (which names no `claimed`) can only use the primary key, whatever the statistics say.
CREATE INDEX IF NOT EXISTS queues_due ON queues(channel, lane, class, next_ms) WHERE claimed = 0;
-- Queue tables churn (every send inserts, updates and deletes rows): analyse them often so
-- plans follow a burst instead of the empty table they were first planned on.
ALTER TABLE items SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE queues SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);

CREATE TABLE IF NOT EXISTS dedupe (
    channel    TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, key)
);
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe(expires_ms);

CREATE TABLE IF NOT EXISTS parked_receipts (
    id          BIGSERIAL PRIMARY KEY,
    channel     TEXT   NOT NULL,
    provider_id TEXT   NOT NULL,
    status      BIGINT NOT NULL,
    reason      TEXT,
    received_ms BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_by_id ON parked_receipts(channel, provider_id);

CREATE TABLE IF NOT EXISTS attempts (
    id          BIGSERIAL PRIMARY KEY,
    item_id     BIGINT NOT NULL,
    channel     TEXT   NOT NULL,
    lane        BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    outcome     TEXT   NOT NULL,
    call_first  BIGINT NOT NULL DEFAULT 1,
    detail      TEXT,
    duration_ms BIGINT
);
CREATE INDEX IF NOT EXISTS attempts_window ON attempts(channel, lane, at_ms);
CREATE INDEX IF NOT EXISTS attempts_item ON attempts(item_id);

CREATE TABLE IF NOT EXISTS history (
    id      BIGSERIAL PRIMARY KEY,
    item_id BIGINT NOT NULL,
    at_ms   BIGINT NOT NULL,
    event   TEXT   NOT NULL,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS history_item ON history(item_id);

CREATE TABLE IF NOT EXISTS contacts (
    channel         TEXT   NOT NULL,
    contact         TEXT   NOT NULL,
    last_inbound_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, contact)
);

CREATE TABLE IF NOT EXISTS lane_state (
    channel         TEXT   NOT NULL,
    lane            BIGINT NOT NULL,
    paused_until_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, lane)
);

CREATE TABLE IF NOT EXISTS raw_webhooks (
    id           BIGSERIAL PRIMARY KEY,
    channel      TEXT   NOT NULL,
    route        TEXT   NOT NULL,
    content_type TEXT   NOT NULL,
    body         BYTEA  NOT NULL,
    reason       TEXT   NOT NULL,
    received_ms  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);

-- Which node works each lane. `epoch` grows with every acquisition and is checked by every
-- claim, attempt and outcome the holder writes (fencing); rows are never deleted, so epochs
-- never repeat. `expires_ms` is on the database's clock.
CREATE TABLE IF NOT EXISTS lane_leases (
    channel    TEXT   NOT NULL,
    lane       BIGINT NOT NULL,
    node       TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, lane)
);
