-- The job store (docs/design/job-store.md). Times are Unix milliseconds.

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,   -- UUIDv7, hyphenated: sorts by creation
    workflow        TEXT NOT NULL,
    state           TEXT NOT NULL,               -- queued | running | succeeded | failed | cancelled | timed_out
    reason          TEXT,                        -- EndReason of a finished job
    priority        INTEGER NOT NULL,
    params          TEXT NOT NULL,               -- JSON
    request         TEXT NOT NULL,               -- JSON: what a re-run needs (timeout, env)
    idempotency_key TEXT UNIQUE,
    max_attempts    INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,  -- attempts started
    node            TEXT,                        -- the node running it
    lease_until     INTEGER,                     -- reserved for shared stores (PostgreSQL)
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    progress        TEXT,                        -- JSON Progress
    result          TEXT,                        -- JSON
    error           TEXT,                        -- JSON ApiErrorBody
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
    last_seq        INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_workflow ON jobs (workflow, id);

CREATE TABLE attempts (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    node        TEXT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    reason      TEXT,
    exit_code   INTEGER,
    signal      INTEGER,
    process_id  INTEGER,
    error       TEXT,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;

CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    data   TEXT NOT NULL,                        -- JSON EventData
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
