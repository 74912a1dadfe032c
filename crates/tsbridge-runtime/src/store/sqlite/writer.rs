//! The one writer of the SQLite store: a task that owns the only read-write
//! connection and applies write operations sent to it over a channel, with
//! **group commit**. Whatever arrives while a transaction is being written
//! goes into the next one, so N concurrent callers cost one `BEGIN
//! IMMEDIATE ... COMMIT` instead of N, and no two connections ever compete
//! for SQLite's write lock (no busy back-off). Each caller waits for its own
//! acknowledgement, which is sent only after the transaction that holds its
//! operation committed: a write returns when it is durable, as before;
//! batching shares the commit, it never skips it.
//!
//! If a batch fails (any statement, or the commit), it is rolled back and its
//! operations are retried one per transaction, so one bad operation fails
//! only its own caller and every caller gets the error of its own operation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, AssertSqlSafe, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::EventRetention;
use crate::errors::StoreError;

/// Operations per transaction, at most.
const MAX_BATCH_OPS: usize = 256;
/// Event rows per transaction before the batch is closed (one operation's
/// events are never split).
const MAX_BATCH_EVENTS: usize = 4096;
/// Operations waiting for the writer, at most (callers wait beyond).
const QUEUE: usize = 4096;

/// One event row, encoded.
#[derive(Debug)]
pub(super) struct EventRow {
    pub seq: i64,
    pub ts: i64,
    /// The `EventData` JSON.
    pub data: String,
}

/// How an attempt ended, encoded.
#[derive(Debug)]
pub(super) struct EndRow {
    pub n: i64,
    pub finished_at: i64,
    pub reason: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub pid: Option<i64>,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_dropped: i64,
    pub stderr_dropped: i64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub peak_memory: Option<i64>,
    pub cpu_ms: Option<i64>,
    pub wall_ms: Option<i64>,
    /// A re-queue's `not_before` (Unix ms).
    pub not_before: Option<i64>,
}

/// The end of a job, encoded.
#[derive(Debug)]
pub(super) struct FinishRow {
    pub state: &'static str,
    pub reason: Option<&'static str>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub finished_at: i64,
}

/// A write, with everything encoded by the caller (off the writer task).
#[derive(Debug)]
pub(super) enum Op {
    InsertJob {
        id: String,
        workflow: String,
        priority: i64,
        params: String,
        request: String,
        key: Option<String>,
        max_attempts: i64,
        created_at: i64,
        event: EventRow,
    },
    StartAttempt {
        id: String,
        n: i64,
        node: String,
        at: i64,
        event: EventRow,
    },
    SetPid {
        id: String,
        n: i64,
        pid: i64,
    },
    AppendEvents {
        id: String,
        events: Vec<EventRow>,
        progress: Option<String>,
        result: Option<String>,
    },
    CompleteAttempt {
        id: String,
        end: EndRow,
        /// `None`: re-queue.
        finish: Option<FinishRow>,
        event: EventRow,
    },
    FinishJob {
        id: String,
        finish: FinishRow,
        event: EventRow,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::InsertJob { .. } => "insert job",
            Op::StartAttempt { .. } => "start attempt",
            Op::SetPid { .. } => "set attempt pid",
            Op::AppendEvents { .. } => "append events",
            Op::CompleteAttempt { .. } => "complete attempt",
            Op::FinishJob { .. } => "finish job",
        }
    }

    fn event_count(&self) -> usize {
        match self {
            Op::AppendEvents { events, .. } => events.len(),
            Op::SetPid { .. } => 0,
            _ => 1,
        }
    }
}

/// What an operation did (a refusal is not an error: it wrote nothing and
/// did not spoil its batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Done,
    /// `InsertJob`: the idempotency key names another job.
    KeyTaken,
    /// `StartAttempt`: the job is not queued.
    NotQueued,
}

type Ack = oneshot::Sender<Result<Applied, StoreError>>;

enum Msg {
    /// Boxed: an operation is large, and the channel holds up to 4 096.
    Op(Box<Op>, Ack),
    /// Operations that go into the same transaction, in this order.
    Ops(Vec<(Op, Ack)>),
    /// Write what came before, close the connection, stop.
    Close(oneshot::Sender<()>),
}

/// The handle callers write through. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Op(op, _) => f.debug_tuple("Op").field(&op.name()).finish(),
            Msg::Ops(ops) => f
                .debug_tuple("Ops")
                .field(&ops.iter().map(|(op, _)| op.name()).collect::<Vec<_>>())
                .finish(),
            Msg::Close(_) => f.write_str("Close"),
        }
    }
}

fn closed(op: &'static str) -> StoreError {
    StoreError::Query {
        op,
        source: sqlx::Error::PoolClosed,
    }
}

impl WriterHandle {
    /// Starts the writer task on the current tokio runtime; it owns `conn`
    /// until [`WriterHandle::close`] or until every handle is dropped.
    pub(super) fn spawn(conn: SqliteConnection, retention: EventRetention) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(
            Writer {
                conn,
                texts: Texts::default(),
                retention,
                rx,
            }
            .run(),
        );
        Self { tx }
    }

    /// Applies `op` and returns once the transaction holding it committed.
    pub(super) async fn write(&self, op: Op) -> Result<Applied, StoreError> {
        let name = op.name();
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Op(Box::new(op), ack))
            .await
            .map_err(|_| closed(name))?;
        // A dropped ack means the writer stopped before answering: the
        // operation is not known to be written.
        done.await.map_err(|_| closed(name))?
    }

    /// Applies `ops` in one transaction, in this order, and returns once it
    /// committed: each operation's own result (a failed batch is retried
    /// one operation per transaction, like any other).
    pub(super) async fn write_all(&self, ops: Vec<Op>) -> Vec<Result<Applied, StoreError>> {
        let names: Vec<&'static str> = ops.iter().map(Op::name).collect();
        let (msgs, dones): (Vec<_>, Vec<_>) = ops
            .into_iter()
            .map(|op| {
                let (ack, done) = oneshot::channel();
                ((op, ack), done)
            })
            .unzip();
        if self.tx.send(Msg::Ops(msgs)).await.is_err() {
            return names.into_iter().map(|n| Err(closed(n))).collect();
        }
        let mut out = Vec::with_capacity(dones.len());
        for (done, name) in dones.into_iter().zip(names) {
            out.push(done.await.map_err(|_| closed(name)).and_then(|r| r));
        }
        out
    }

    /// Writes what was sent before, then closes the connection. Later
    /// writes fail.
    pub(super) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The operations of one transaction.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    acks: Vec<Ack>,
    /// Event rows in `ops`.
    events: usize,
}

impl Batch {
    /// Adds the operations of `msg` (not a `Close`).
    fn push(&mut self, msg: Msg) {
        let mut add = |op: Op, ack: Ack| {
            self.events += op.event_count();
            self.ops.push(op);
            self.acks.push(ack);
        };
        match msg {
            Msg::Op(op, ack) => add(*op, ack),
            Msg::Ops(pairs) => pairs.into_iter().for_each(|(op, ack)| add(op, ack)),
            Msg::Close(_) => {}
        }
    }
}

struct Writer {
    conn: SqliteConnection,
    texts: Texts,
    retention: EventRetention,
    rx: mpsc::Receiver<Msg>,
}

impl Writer {
    async fn run(mut self) {
        let mut next: Option<Msg> = None;
        loop {
            let first = match next.take() {
                Some(m) => m,
                None => match self.rx.recv().await {
                    Some(m) => m,
                    None => break,
                },
            };
            let mut batch = Batch::default();
            match first {
                Msg::Close(done) => {
                    self.close().await;
                    let _ = done.send(());
                    return;
                }
                msg => batch.push(msg),
            }
            // Everything that queued up while the previous commit ran.
            while batch.ops.len() < MAX_BATCH_OPS && batch.events < MAX_BATCH_EVENTS {
                match self.rx.try_recv() {
                    Ok(close @ Msg::Close(_)) => {
                        next = Some(close);
                        break;
                    }
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            self.commit(batch.ops, batch.acks).await;
        }
        self.close().await;
    }

    async fn close(&mut self) {
        self.rx.close();
        // Ops still queued get an error when their acks drop with `rx`.
        if let Err(e) = sqlx::query("PRAGMA optimize").execute(&mut self.conn).await {
            tracing::debug!(error = %e, "PRAGMA optimize failed");
        }
    }

    /// Writes `ops` in one transaction and answers every caller.
    async fn commit(&mut self, ops: Vec<Op>, acks: Vec<Ack>) {
        match self.transaction(&ops).await {
            Ok(applied) => {
                for (ack, a) in acks.into_iter().zip(applied) {
                    let _ = ack.send(Ok(a));
                }
            }
            Err(e) if ops.len() == 1 => {
                if let Some(ack) = acks.into_iter().next() {
                    let _ = ack.send(Err(e));
                }
            }
            Err(e) => {
                // Nothing of the batch was written. Retry each operation
                // alone so that only the bad one fails, with its own error.
                tracing::warn!(error = %e, ops = ops.len(), "a group commit failed; writing its operations one by one");
                for (op, ack) in ops.into_iter().zip(acks) {
                    let r = self
                        .transaction(std::slice::from_ref(&op))
                        .await
                        .map(|a| a.first().copied().unwrap_or(Applied::Done));
                    let _ = ack.send(r);
                }
            }
        }
    }

    /// Writes `ops` in one transaction (opened and committed by the
    /// queries of [`apply`]); on an error, rolls it back.
    async fn transaction(&mut self, ops: &[Op]) -> Result<Vec<Applied>, StoreError> {
        match apply(&mut self.conn, &mut self.texts, ops, self.retention).await {
            Ok(applied) => Ok(applied),
            Err(e) => {
                // The transaction may be open (a statement after BEGIN
                // failed) or not (BEGIN or COMMIT failed): ROLLBACK ends it
                // if it is, and fails harmlessly if not. Nothing of it was
                // committed: the COMMIT is the last statement run, and a
                // query whose rows are read after it never carries it.
                if let Err(r) = sqlx::query("ROLLBACK").execute(&mut self.conn).await {
                    tracing::debug!(error = %r, "ROLLBACK after a failed batch");
                }
                Err(e)
            }
        }
    }
}

impl Op {
    fn job_id(&self) -> &str {
        match self {
            Op::InsertJob { id, .. }
            | Op::StartAttempt { id, .. }
            | Op::SetPid { id, .. }
            | Op::AppendEvents { id, .. }
            | Op::CompleteAttempt { id, .. }
            | Op::FinishJob { id, .. } => id,
        }
    }

    /// Its statement's place in a round (see [`apply`]).
    fn kind(&self) -> usize {
        match self {
            Op::InsertJob { .. } => 0,
            Op::StartAttempt { .. } => 1,
            Op::SetPid { .. } => 2,
            Op::AppendEvents { .. } => 3,
            Op::CompleteAttempt { .. } => 4,
            Op::FinishJob { .. } => 5,
        }
    }
}

/// Kinds of operation (`Op::kind`).
const KINDS: usize = 6;

/// Row counts the statements of an operation kind are prepared for.
const OP_BUCKETS: &[usize] = &[1, 4, 16, 64];
/// Row counts the `INSERT INTO events` of appended events is prepared for.
const EVENT_BUCKETS: &[usize] = &[1, 4, 16, 64, 256];

/// One grouped query: for each of `stmts`, `WITH v(<cols>) AS (VALUES
/// (..), (..)) <stmt>`, all in one query text, so that a kind of operation
/// costs one round trip to the connection's thread however many statements
/// it needs. The statements share the bound rows through numbered
/// parameters (`?1`, `?2`, ...): each row is bound once.
///
/// A query is built for a fixed row count (a bucket): the rows of a batch
/// are cut into chunks of the largest bucket, and the last chunk is padded
/// with rows of NULLs up to the smallest bucket that holds it (a NULL id
/// matches no job, and inserts skip it). So every (shape, bucket) is one
/// text, prepared once and then served from the connection's statement
/// cache.
#[derive(Debug)]
struct Shape {
    /// What a failure says was being done.
    op: &'static str,
    /// The columns of `v`, in the order the rows are bound.
    cols: &'static [&'static str],
    /// Run in order.
    stmts: &'static [&'static str],
    buckets: &'static [usize],
    /// Its last statement ends in `RETURNING id`.
    returns: bool,
}

impl Shape {
    fn largest(&self) -> usize {
        self.buckets.last().copied().unwrap_or(1)
    }
}

/// An operation's own event (its `state` event), for the shapes whose
/// rows end with `vseq, vts, vdata`.
const INSERT_OWN_EVENT: &str = "INSERT INTO events (job_id, seq, ts, data) SELECT vid, vseq, vts, vdata FROM v WHERE vid IS NOT NULL";

/// Submissions. A missing id in `RETURNING` means the idempotency key
/// names another job: its row and event are not written.
const INSERT_JOBS: Shape = Shape {
    op: "insert jobs",
    cols: &[
        "vid",
        "vworkflow",
        "vpriority",
        "vparams",
        "vrequest",
        "vkey",
        "vmax",
        "vcreated",
        "vseq",
        "vts",
        "vdata",
    ],
    stmts: &[
        "INSERT INTO jobs (id, workflow, state, priority, params, request, idempotency_key, \
         max_attempts, created_at, last_seq) \
         SELECT vid, vworkflow, 'queued', vpriority, vparams, vrequest, vkey, vmax, vcreated, vseq \
         FROM v WHERE vid IS NOT NULL \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        // Ids are new: a job with the id is one this statement created.
        "INSERT INTO events (job_id, seq, ts, data) \
         SELECT vid, vseq, vts, vdata FROM v JOIN jobs ON jobs.id = v.vid",
    ],
    buckets: OP_BUCKETS,
    returns: true,
};

/// Claims: only a queued job can start; a missing id in `RETURNING` is a
/// refused claim, and its attempt and event are not written.
const START_ATTEMPTS: Shape = Shape {
    op: "claim jobs",
    cols: &["vid", "vn", "vnode", "vat", "vseq", "vts", "vdata"],
    stmts: &[
        "INSERT INTO attempts (job_id, n, node, started_at) \
         SELECT vid, vn, vnode, vat FROM v JOIN jobs ON jobs.id = v.vid \
         WHERE jobs.state = 'queued'",
        "INSERT INTO events (job_id, seq, ts, data) \
         SELECT vid, vseq, vts, vdata FROM v JOIN jobs ON jobs.id = v.vid \
         WHERE jobs.state = 'queued'",
        "UPDATE jobs SET state = 'running', attempts = v.vn, node = v.vnode, \
         started_at = COALESCE(started_at, v.vat), last_seq = MAX(last_seq, v.vseq) \
         FROM v WHERE jobs.id = v.vid AND jobs.state = 'queued' RETURNING jobs.id",
    ],
    buckets: OP_BUCKETS,
    returns: true,
};

const SET_PIDS: Shape = Shape {
    op: "set pids",
    cols: &["vid", "vn", "vpid"],
    stmts: &[
        "UPDATE attempts SET process_id = v.vpid FROM v \
         WHERE attempts.job_id = v.vid AND attempts.n = v.vn",
        "UPDATE jobs SET process_id = v.vpid FROM v WHERE jobs.id = v.vid",
    ],
    buckets: OP_BUCKETS,
    returns: false,
};

/// What a batch of events changes on its job row (the events themselves
/// go through [`INSERT_EVENTS`]).
const APPEND_EVENTS: Shape = Shape {
    op: "update progress",
    cols: &["vid", "vlast", "vprogress", "vresult"],
    stmts: &["UPDATE jobs SET last_seq = MAX(last_seq, v.vlast), \
         progress = COALESCE(v.vprogress, progress), \
         result = COALESCE(v.vresult, result) FROM v WHERE jobs.id = v.vid"],
    buckets: OP_BUCKETS,
    returns: false,
};

/// Attempt ends: the attempt, then the job (a re-queue, `vfin` false,
/// keeps the job's finish columns), then the `state` event.
const COMPLETE_ATTEMPTS: Shape = Shape {
    op: "record attempt ends",
    cols: &[
        "vid",
        "vn",
        "vfinished",
        "vreason",
        "vexit",
        "vsignal",
        "vpid",
        "verror",
        "vstdout",
        "vstderr",
        "vstdout_dropped",
        "vstderr_dropped",
        "vstdout_truncated",
        "vstderr_truncated",
        "vpeak",
        "vcpu",
        "vwall",
        "vfin",
        "vstate",
        "vjreason",
        "vresult",
        "vjerror",
        "vjfinished",
        "vnot_before",
        "vseq",
        "vts",
        "vdata",
    ],
    stmts: &[
        "UPDATE attempts SET finished_at = v.vfinished, reason = v.vreason, \
         exit_code = v.vexit, signal = v.vsignal, process_id = COALESCE(v.vpid, process_id), \
         error = v.verror FROM v WHERE attempts.job_id = v.vid AND attempts.n = v.vn",
        "UPDATE jobs SET exit_code = v.vexit, signal = v.vsignal, \
         process_id = COALESCE(v.vpid, process_id), stdout = v.vstdout, \
         stderr = v.vstderr, stdout_dropped = v.vstdout_dropped, \
         stderr_dropped = v.vstderr_dropped, stdout_truncated = v.vstdout_truncated, \
         stderr_truncated = v.vstderr_truncated, peak_memory = v.vpeak, \
         cpu_ms = v.vcpu, wall_ms = v.vwall, last_seq = MAX(last_seq, v.vseq), \
         node = NULL, state = v.vstate, \
         reason = CASE WHEN v.vfin THEN v.vjreason ELSE reason END, \
         result = CASE WHEN v.vfin THEN COALESCE(v.vresult, result) ELSE result END, \
         error = CASE WHEN v.vfin THEN v.vjerror ELSE error END, \
         finished_at = CASE WHEN v.vfin THEN v.vjfinished ELSE finished_at END, \
         not_before = CASE WHEN v.vfin THEN NULL ELSE v.vnot_before END \
         FROM v WHERE jobs.id = v.vid",
        INSERT_OWN_EVENT,
    ],
    buckets: OP_BUCKETS,
    returns: false,
};

/// Ends of jobs with no running attempt.
const FINISH_JOBS: Shape = Shape {
    op: "finish jobs",
    cols: &[
        "vid",
        "vstate",
        "vreason",
        "vresult",
        "verror",
        "vfinished",
        "vseq",
        "vts",
        "vdata",
    ],
    stmts: &[
        "UPDATE jobs SET last_seq = MAX(last_seq, v.vseq), state = v.vstate, \
         reason = v.vreason, result = COALESCE(v.vresult, result), error = v.verror, \
         finished_at = v.vfinished, node = NULL FROM v WHERE jobs.id = v.vid",
        INSERT_OWN_EVENT,
    ],
    buckets: OP_BUCKETS,
    returns: false,
};

/// Appended events (4 values a row: 256 rows bind 1 024 of SQLite's 32 766).
const INSERT_EVENTS: Shape = Shape {
    op: "insert events",
    cols: &["vid", "vseq", "vts", "vdata"],
    stmts: &[INSERT_OWN_EVENT],
    buckets: EVENT_BUCKETS,
    returns: false,
};

/// The query texts built so far, by shape, row count and whether they open
/// or close the transaction (each is also a prepared statement in the
/// connection's cache: at most 7 shapes x 5 row counts x 4 = 140, the
/// writer's cache holds 256).
#[derive(Debug, Default)]
pub(super) struct Texts(HashMap<(&'static str, usize, Txn), Arc<str>>);

impl Texts {
    fn get(&mut self, shape: &'static Shape, rows: usize, txn: Txn) -> Arc<str> {
        self.0
            .entry((shape.op, rows, txn))
            .or_insert_with(|| {
                let mut text = String::new();
                if txn.begin {
                    // IMMEDIATE: take the write lock now, not at the first
                    // write (a DEFERRED transaction that must upgrade can
                    // fail with BUSY at once).
                    text.push_str("BEGIN IMMEDIATE;\n");
                }
                text.push_str(&shape_text(shape, rows));
                if txn.commit {
                    text.push_str(";\nCOMMIT");
                }
                text.into()
            })
            .clone()
    }
}

/// The text of `shape` for `rows` rows.
fn shape_text(shape: &Shape, rows: usize) -> String {
    use std::fmt::Write;
    let k = shape.cols.len();
    let mut head = format!("WITH v({}) AS (VALUES ", shape.cols.join(", "));
    for r in 0..rows {
        head.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..k {
            let sep = if c == 0 { "" } else { ", " };
            // Writing to a String cannot fail.
            let _ = write!(head, "{sep}?{}", r * k + c + 1);
        }
        head.push(')');
    }
    head.push_str(") ");
    let stmts: Vec<String> = shape.stmts.iter().map(|s| format!("{head}{s}")).collect();
    stmts.join(";\n")
}

/// The bound values of one grouped query, row after row.
#[derive(Default)]
struct Binder {
    args: SqliteArguments,
    err: Option<sqlx::error::BoxDynError>,
}

impl Binder {
    fn v<'t, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'t, Sqlite> + sqlx::Type<Sqlite> + 't,
    {
        if let Err(e) = self.args.add(value)
            && self.err.is_none()
        {
            self.err = Some(e);
        }
        self
    }

    fn len(&self) -> usize {
        self.args.len()
    }
}

/// One query of a batch: a shape over at most its largest bucket of rows.
struct Step<'a> {
    shape: &'static Shape,
    rows: Rows<'a>,
}

enum Rows<'a> {
    /// Operations (indexes into the batch), each of the shape's kind.
    Ops(Vec<usize>),
    /// Appended events, by job id.
    Events(&'a [(&'a str, &'a EventRow)]),
}

/// The shape of each operation kind (`Op::kind`).
const SHAPES: [&Shape; KINDS] = [
    &INSERT_JOBS,
    &START_ATTEMPTS,
    &SET_PIDS,
    &APPEND_EVENTS,
    &COMPLETE_ATTEMPTS,
    &FINISH_JOBS,
];

/// Writes a batch (or a lone operation) in one transaction: one grouped
/// query per kind of operation present (per 64 rows) instead of a few
/// statements per operation, and the transaction's `BEGIN IMMEDIATE` and
/// `COMMIT` ride in the first and last query, so a batch of one kind is a
/// single round trip to the connection's thread. Calls in flight together
/// have no order, so operations are grouped by kind; a job appears at most
/// once per kind in a round (a second operation of the same kind and job,
/// which its caller sent concurrently, goes to the next round). No query
/// depends on another's answer: refusals happen inside the SQL (a claim of
/// a job that is not queued writes nothing) and are read back with
/// `RETURNING`. Appended events go into `INSERT INTO events` queries at the
/// end, then retention prunes.
///
/// On an error the transaction may be open: the caller rolls it back.
async fn apply(
    conn: &mut SqliteConnection,
    texts: &mut Texts,
    ops: &[Op],
    retention: EventRetention,
) -> Result<Vec<Applied>, StoreError> {
    let mut applied = vec![Applied::Done; ops.len()];
    // Appends without events write nothing.
    let writes =
        |i: &usize| !matches!(&ops[*i], Op::AppendEvents { events, .. } if events.is_empty());
    let mut steps: Vec<Step<'_>> = Vec::new();
    let mut remaining: Vec<usize> = (0..ops.len()).filter(writes).collect();
    while !remaining.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = remaining
            .into_iter()
            .partition(|&i| seen.insert((ops[i].kind(), ops[i].job_id())));
        for (kind, shape) in SHAPES.iter().enumerate() {
            let of_kind: Vec<usize> = round
                .iter()
                .copied()
                .filter(|&i| ops[i].kind() == kind)
                .collect();
            for chunk in of_kind.chunks(shape.largest()) {
                steps.push(Step {
                    shape,
                    rows: Rows::Ops(chunk.to_vec()),
                });
            }
        }
        remaining = later;
    }
    let mut events: Vec<(&str, &EventRow)> = Vec::new();
    let mut prune: Vec<(&str, i64)> = Vec::new();
    for op in ops {
        if let Op::AppendEvents {
            id, events: evs, ..
        } = op
        {
            events.extend(evs.iter().map(|e| (id.as_str(), e)));
            if let Some(last) = evs.last().map(|e| e.seq)
                && last as u64 > retention.head + retention.tail
            {
                prune.push((id, last));
            }
        }
    }
    for chunk in events.chunks(INSERT_EVENTS.largest()) {
        steps.push(Step {
            shape: &INSERT_EVENTS,
            rows: Rows::Events(chunk),
        });
    }
    let Some(last) = steps.len().checked_sub(1) else {
        return Ok(applied);
    };
    // A query that returns rows does not carry the COMMIT: its rows are
    // read after it ran, and a failure to read them must not come after
    // the commit (the batch would be retried although it was written).
    let commit_inline = prune.is_empty() && !steps[last].shape.returns;
    for (s, step) in steps.iter().enumerate() {
        let txn = Txn {
            begin: s == 0,
            commit: s == last && commit_inline,
        };
        match &step.rows {
            Rows::Ops(idx) => {
                let rows: Vec<&Op> = idx.iter().map(|&i| &ops[i]).collect();
                let returned = run_shape(conn, texts, step.shape, txn, &rows, bind_op).await?;
                let refusal = match step.shape.op {
                    op if op == INSERT_JOBS.op => Applied::KeyTaken,
                    op if op == START_ATTEMPTS.op => Applied::NotQueued,
                    _ => continue,
                };
                for &i in idx {
                    if !returned.contains(ops[i].job_id()) {
                        applied[i] = refusal;
                    }
                }
            }
            Rows::Events(rows) => {
                run_shape(conn, texts, step.shape, txn, rows, |b, (id, e)| {
                    b.v(*id);
                    bind_event(b, e);
                })
                .await?;
            }
        }
    }
    if !commit_inline {
        prune_events(conn, &prune, retention).await?;
        sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query("commit"))?;
    }
    Ok(applied)
}

/// Whether a query opens or closes the batch's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Txn {
    begin: bool,
    commit: bool,
}

/// Runs `shape` over `items` (at most its largest bucket; `row` binds one
/// item's columns, in order) and returns the ids its statements returned.
async fn run_shape<T>(
    conn: &mut SqliteConnection,
    texts: &mut Texts,
    shape: &'static Shape,
    txn: Txn,
    items: &[T],
    row: impl Fn(&mut Binder, &T),
) -> Result<HashSet<String>, StoreError> {
    let k = shape.cols.len();
    let failed = |what: String| StoreError::Query {
        op: shape.op,
        source: sqlx::Error::Protocol(what),
    };
    let Some(size) = shape.buckets.iter().copied().find(|&b| b >= items.len()) else {
        return Err(failed(format!("{} rows for one query", items.len())));
    };
    let mut b = Binder::default();
    for item in items {
        let before = b.len();
        row(&mut b, item);
        if b.len() != before + k {
            return Err(failed(format!(
                "a row bound {} values for {k} columns",
                b.len() - before
            )));
        }
    }
    for _ in items.len()..size {
        for _ in 0..k {
            b.v(None::<i64>);
        }
    }
    if let Some(e) = b.err {
        return Err(StoreError::Query {
            op: shape.op,
            source: sqlx::Error::Encode(e),
        });
    }
    let query = sqlx::query_with(AssertSqlSafe(texts.get(shape, size, txn)), b.args);
    let mut ids = HashSet::new();
    if shape.returns {
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::query(shape.op))?;
        for r in &rows {
            ids.insert(sqlx::Row::try_get::<String, _>(r, 0).map_err(StoreError::query(shape.op))?);
        }
    } else {
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query(shape.op))?;
    }
    Ok(ids)
}

/// Binds an operation's row of its kind's shape.
fn bind_op(b: &mut Binder, op: &&Op) {
    match op {
        Op::InsertJob {
            id,
            workflow,
            priority,
            params,
            request,
            key,
            max_attempts,
            created_at,
            event,
        } => {
            b.v(id.as_str())
                .v(workflow.as_str())
                .v(*priority)
                .v(params.as_str())
                .v(request.as_str())
                .v(key.as_deref())
                .v(*max_attempts)
                .v(*created_at);
            bind_event(b, event);
        }
        Op::StartAttempt {
            id,
            n,
            node,
            at,
            event,
        } => {
            b.v(id.as_str()).v(*n).v(node.as_str()).v(*at);
            bind_event(b, event);
        }
        Op::SetPid { id, n, pid } => {
            b.v(id.as_str()).v(*n).v(*pid);
        }
        Op::AppendEvents {
            id,
            events,
            progress,
            result,
        } => {
            b.v(id.as_str())
                .v(events.last().map_or(0, |e| e.seq))
                .v(progress.as_deref())
                .v(result.as_deref());
        }
        Op::CompleteAttempt {
            id,
            end,
            finish,
            event,
        } => {
            b.v(id.as_str())
                .v(end.n)
                .v(end.finished_at)
                .v(end.reason)
                .v(end.exit_code)
                .v(end.signal)
                .v(end.pid)
                .v(end.error.as_deref())
                .v(end.stdout.as_str())
                .v(end.stderr.as_str())
                .v(end.stdout_dropped)
                .v(end.stderr_dropped)
                .v(end.stdout_truncated)
                .v(end.stderr_truncated)
                .v(end.peak_memory)
                .v(end.cpu_ms)
                .v(end.wall_ms)
                .v(finish.is_some())
                .v(finish.as_ref().map_or("queued", |f| f.state))
                .v(finish.as_ref().and_then(|f| f.reason))
                .v(finish.as_ref().and_then(|f| f.result.as_deref()))
                .v(finish.as_ref().and_then(|f| f.error.as_deref()))
                .v(finish.as_ref().map(|f| f.finished_at))
                .v(end.not_before);
            bind_event(b, event);
        }
        Op::FinishJob { id, finish, event } => {
            b.v(id.as_str())
                .v(finish.state)
                .v(finish.reason)
                .v(finish.result.as_deref())
                .v(finish.error.as_deref())
                .v(finish.finished_at);
            bind_event(b, event);
        }
    }
}

/// The `vseq, vts, vdata` of a row.
fn bind_event(b: &mut Binder, e: &EventRow) {
    b.v(e.seq).v(e.ts).v(e.data.as_str());
}

async fn prune_events(
    conn: &mut SqliteConnection,
    prune: &[(&str, i64)],
    retention: EventRetention,
) -> Result<(), StoreError> {
    let EventRetention { head, tail } = retention;
    for (id, last) in prune {
        sqlx::query("DELETE FROM events WHERE job_id = ? AND seq > ? AND seq <= ?")
            .bind(*id)
            .bind(head as i64)
            .bind(last - tail as i64)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query("prune events"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_number_every_row_and_repeat_them_per_statement() {
        let t = shape_text(&SET_PIDS, 2);
        assert_eq!(
            t.matches("WITH v(vid, vn, vpid) AS (VALUES (?1, ?2, ?3), (?4, ?5, ?6)) ")
                .count(),
            2,
            "{t}"
        );
        assert!(!t.contains("?7"), "{t}");
    }

    #[test]
    fn every_shape_binds_what_it_declares() {
        for shape in [
            &INSERT_JOBS,
            &START_ATTEMPTS,
            &SET_PIDS,
            &APPEND_EVENTS,
            &COMPLETE_ATTEMPTS,
            &FINISH_JOBS,
            &INSERT_EVENTS,
        ] {
            for col in shape.cols {
                assert!(
                    shape.stmts.iter().any(|s| s.contains(col)),
                    "{}: {col} is bound but never used",
                    shape.op
                );
            }
            // SQLite's limit on parameters per statement.
            let largest = shape.buckets.last().copied().unwrap_or(1);
            assert!(shape.cols.len() * largest <= 32_766, "{}", shape.op);
        }
    }
}
