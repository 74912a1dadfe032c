-- A job re-queued for a retry waits out its backoff on every node: the
-- re-queue stores when its next attempt may start (Unix ms of the database's clock,
-- like leases), and every node's claim refuses the job before then.
ALTER TABLE jobs ADD COLUMN not_before BIGINT;                -- Unix ms, by the database's clock
