-- A job re-queued for a retry: when its next attempt may start (Unix ms),
-- so that a restart waits out the backoff too.
ALTER TABLE jobs ADD COLUMN not_before INTEGER;
