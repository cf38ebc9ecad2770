-- Version 4: an item's age, as `max_age_secs` counts it, starts when it was last queued
-- (accepted, or replayed by an operator) rather than when it was created, so a replayed
-- dead letter gets its full age again. NULL (rows an older release wrote) reads as
-- `created_ms`.
ALTER TABLE items ADD COLUMN queued_ms INTEGER;
UPDATE items SET queued_ms = created_ms WHERE state < 2;
-- The sweep that expires items a paused lane (or one whose circuit is open) holds back
-- finds them without a scan.
CREATE INDEX IF NOT EXISTS items_queued ON items(channel, lane, queued_ms) WHERE state = 0;
