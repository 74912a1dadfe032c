-- A cancel asked on one node for a job another node runs: the owner reads
-- it at its next poll (and at once through NOTIFY tsbridge_cancel).
ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
