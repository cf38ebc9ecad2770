-- rio-bridge PostgreSQL schema, version 3 (the SQLite store's migration 0003): retention
-- and claims whose cost does not grow with the store's age.
--
-- Pruning deletes the oldest rows of each table in short batches, each found on an index
-- of the time it is pruned by; before this the attempts, history, channel logs and parked
-- receipts prunes (and the console's attempt counts, every 5 s) read their whole table.
-- Built once, at the upgrade; a node of the previous release keeps working meanwhile (it
-- waits for each build to finish before it writes that table) and alongside (it only gains
-- indexes).
CREATE INDEX IF NOT EXISTS attempts_at ON attempts(at_ms);
CREATE INDEX IF NOT EXISTS history_at ON history(at_ms);
CREATE INDEX IF NOT EXISTS channel_logs_at ON channel_logs(at_ms);
CREATE INDEX IF NOT EXISTS parked_expiry ON parked_receipts(expires_ms);
-- The claimed queues of a lane, which a new owner hands back: few, whatever the backlog.
CREATE INDEX IF NOT EXISTS queues_claimed ON queues(channel, lane) WHERE claimed = 1;
