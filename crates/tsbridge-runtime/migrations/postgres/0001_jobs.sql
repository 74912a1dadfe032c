-- The PostgreSQL job store (docs/design/job-store.md): the SQLite schema
-- with PostgreSQL types. Times are Unix milliseconds, except `lease_until`,
-- which is compared with the server's clock (now()) so that the nodes'
-- clocks never matter for leases. Ids sort bytewise (COLLATE "C").

CREATE TABLE jobs (
    id              TEXT COLLATE "C" PRIMARY KEY, -- UUIDv7, hyphenated: sorts by creation
    workflow        TEXT NOT NULL,
    state           TEXT NOT NULL,               -- queued | running | succeeded | failed | cancelled | timed_out
    reason          TEXT,                        -- EndReason of a finished job
    priority        BIGINT NOT NULL,
    params          TEXT NOT NULL,               -- JSON (text: key order is kept)
    request         TEXT NOT NULL,               -- JSON: what a re-run needs (timeout, env)
    idempotency_key TEXT UNIQUE,
    max_attempts    BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,   -- attempts started
    node            TEXT,                        -- the node running it
    lease_until     TIMESTAMPTZ,                 -- while running: the owner's lease
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    progress        TEXT,                        -- JSON Progress
    result          TEXT,                        -- JSON
    error           TEXT,                        -- JSON ApiErrorBody
    exit_code       BIGINT,
    signal          BIGINT,
    process_id      BIGINT,
    stdout          TEXT NOT NULL DEFAULT '',
    stderr          TEXT NOT NULL DEFAULT '',
    stdout_dropped  BIGINT NOT NULL DEFAULT 0,
    stderr_dropped  BIGINT NOT NULL DEFAULT 0,
    stdout_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    stderr_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    peak_memory     BIGINT,
    cpu_ms          BIGINT,
    wall_ms         BIGINT,
    last_seq        BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_workflow ON jobs (workflow, id);
CREATE INDEX jobs_queued ON jobs (priority DESC, id) WHERE state = 'queued';

CREATE TABLE attempts (
    job_id      TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n           BIGINT NOT NULL,
    node        TEXT,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    reason      TEXT,
    exit_code   BIGINT,
    signal      BIGINT,
    process_id  BIGINT,
    error       TEXT,
    PRIMARY KEY (job_id, n)
);

CREATE TABLE events (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    ts     BIGINT NOT NULL,
    data   TEXT NOT NULL,                        -- JSON EventData
    PRIMARY KEY (job_id, seq)
);
