-- rio-bridge PostgreSQL schema, version 4 (the SQLite store's migration 0004): an item's
-- age, as `max_age_secs` counts it, starts when it was last queued (accepted, or replayed
-- by an operator), so a replayed dead letter gets its full age again. NULL (rows a node of
-- the previous release writes during a rolling upgrade) reads as `created_ms`.
ALTER TABLE items ADD COLUMN IF NOT EXISTS queued_ms BIGINT;
UPDATE items SET queued_ms = created_ms WHERE state < 2 AND queued_ms IS NULL;
-- The sweep that expires items a paused lane (or one whose circuit is open) holds back
-- finds them without a scan.
CREATE INDEX IF NOT EXISTS items_queued ON items(channel, lane, queued_ms) WHERE state = 0;
