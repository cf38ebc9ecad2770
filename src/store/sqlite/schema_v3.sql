-- Version 3: retention and receipts whose cost does not grow with the store's age.
--
-- Pruning deletes the oldest rows of each table in short batches, each found on an index
-- of the time it is pruned by; before this the attempts, history, channel logs and parked
-- receipts prunes (and the console's attempt counts, every 5 s) read their whole table.
-- On a store that has aged, building these reads each table once, at the upgrade.
CREATE INDEX IF NOT EXISTS attempts_at ON attempts(at_ms);
CREATE INDEX IF NOT EXISTS history_at ON history(at_ms);
CREATE INDEX IF NOT EXISTS channel_logs_at ON channel_logs(at_ms);
CREATE INDEX IF NOT EXISTS parked_expiry ON parked_receipts(expires_ms);
