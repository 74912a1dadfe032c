-- Fewer b-trees written per job (docs/design/job-store.md, "Fewer b-trees
-- per job"). Every commit rewrites the last page of each b-tree it touches,
-- so the b-trees a job's writes touch set the WAL written per job:
--
-- * `attempts` becomes a JSON column of `jobs` (`attempt_log`): the job's
--   row is rewritten at every start and end of an attempt anyway.
-- * the idempotency key's UNIQUE constraint indexed every job, NULL keys
--   included; a partial unique index holds only the jobs that have a key.
-- * `jobs_by_state` holds only jobs that are not `succeeded`: the states
--   that are looked up by state (queued and running at start-up, failures in
--   lists), not the bulk of finished jobs. A query uses it only when it
--   carries the index's own term, `state <> 'succeeded'`.
--
-- `jobs` is rebuilt (a column constraint cannot be dropped). `events`
-- references it with ON DELETE CASCADE, and `DROP TABLE` deletes every row
-- first with foreign key actions: so `events` is rebuilt too, referencing
-- the new table, and the old children are dropped before the old `jobs`.
-- The renames then point the new `events` at the new `jobs` by name. All of
-- it runs in the migration's transaction: it happens whole or not at all.

CREATE TABLE jobs_v4 (
    id              TEXT PRIMARY KEY NOT NULL,
    workflow        TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    priority        INTEGER NOT NULL,
    params          TEXT NOT NULL,
    request         TEXT NOT NULL,
    idempotency_key TEXT,
    max_attempts    INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    node            TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    progress        TEXT,
    result          TEXT,
    error           TEXT,
    exit_code       INTEGER,
    signal          INTEGER,
    process_id      INTEGER,
    stdout          TEXT NOT NULL DEFAULT '',
    stderr          TEXT NOT NULL DEFAULT '',
    stdout_dropped  INTEGER NOT NULL DEFAULT 0,
    stderr_dropped  INTEGER NOT NULL DEFAULT 0,
    stdout_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0,
    peak_memory     INTEGER,
    cpu_ms          INTEGER,
    wall_ms         INTEGER,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    not_before      INTEGER,
    -- The attempts, oldest first: one JSON array each,
    -- [n, started_at, finished_at, reason, exit_code, signal, process_id,
    --  node, error]; NULL before the first start.
    attempt_log     TEXT
);

INSERT INTO jobs_v4 (
    id, workflow, state, reason, priority, params, request, idempotency_key,
    max_attempts, attempts, node, lease_until, created_at, started_at,
    finished_at, progress, result, error, exit_code, signal, process_id,
    stdout, stderr, stdout_dropped, stderr_dropped, stdout_truncated,
    stderr_truncated, peak_memory, cpu_ms, wall_ms, last_seq, not_before,
    attempt_log
)
SELECT
    id, workflow, state, reason, priority, params, request, idempotency_key,
    max_attempts, attempts, node, lease_until, created_at, started_at,
    finished_at, progress, result, error, exit_code, signal, process_id,
    stdout, stderr, stdout_dropped, stderr_dropped, stdout_truncated,
    stderr_truncated, peak_memory, cpu_ms, wall_ms, last_seq, not_before,
    (SELECT json_group_array(json_array(a.n, a.started_at, a.finished_at,
                a.reason, a.exit_code, a.signal, a.process_id, a.node, a.error))
       FROM (SELECT * FROM attempts WHERE attempts.job_id = jobs.id ORDER BY n) a
     HAVING count(*) > 0)
FROM jobs;

CREATE TABLE events_v4 (
    job_id TEXT NOT NULL REFERENCES jobs_v4 (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

INSERT INTO events_v4 (job_id, seq, ts, data) SELECT job_id, seq, ts, data FROM events;

DROP TABLE events;
DROP TABLE attempts;
DROP TABLE jobs;

ALTER TABLE jobs_v4 RENAME TO jobs;
ALTER TABLE events_v4 RENAME TO events;

CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_by_state ON jobs (state, id) WHERE state <> 'succeeded';
CREATE INDEX jobs_by_workflow ON jobs (workflow, id);
