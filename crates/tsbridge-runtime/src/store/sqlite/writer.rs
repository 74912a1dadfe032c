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

use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::EventRetention;
use crate::errors::StoreError;

/// Operations per transaction, at most.
const MAX_BATCH_OPS: usize = 256;
/// Event rows per transaction before the batch is closed (one operation's
/// events are never split).
const MAX_BATCH_EVENTS: usize = 4096;
/// Rows per multi-row `INSERT` of events (4 bound values each; SQLite allows
/// 32 766 per statement).
const EVENT_ROWS_PER_INSERT: usize = 1000;
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

struct Writer {
    conn: SqliteConnection,
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
            let (op, ack) = match first {
                Msg::Op(op, ack) => (*op, ack),
                Msg::Close(done) => {
                    self.close().await;
                    let _ = done.send(());
                    return;
                }
            };
            // Everything that queued up while the previous commit ran.
            let mut events = op.event_count();
            let mut ops = vec![op];
            let mut acks = vec![ack];
            while ops.len() < MAX_BATCH_OPS && events < MAX_BATCH_EVENTS {
                match self.rx.try_recv() {
                    Ok(Msg::Op(op, ack)) => {
                        events += op.event_count();
                        ops.push(*op);
                        acks.push(ack);
                    }
                    Ok(close @ Msg::Close(_)) => {
                        next = Some(close);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(ops, acks).await;
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

    async fn transaction(&mut self, ops: &[Op]) -> Result<Vec<Applied>, StoreError> {
        // IMMEDIATE: take the write lock now, not at the first write (a
        // DEFERRED transaction that must upgrade can fail with BUSY at once).
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::query("begin"))?;
        // On an error, dropping `tx` rolls the transaction back.
        let applied = if ops.len() == 1 {
            apply(&mut tx, ops, self.retention).await?
        } else {
            apply_grouped(&mut tx, ops, self.retention).await?
        };
        tx.commit().await.map_err(StoreError::query("commit"))?;
        Ok(applied)
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
}

/// Rows per statement of a grouped batch (each statement's text depends on
/// its row count, so they are prepared each time: this bounds their size).
const GROUP_ROWS: usize = 64;

/// A batch with one statement per kind of operation (per 64 rows) instead of
/// a few per operation: `INSERT ... VALUES (..), (..)` and `WITH v(..) AS
/// (VALUES ..) UPDATE ... FROM v`. Calls in flight together have no order,
/// so operations are grouped by kind; a job appears at most once per round
/// (a second operation of the same job, which its caller sent concurrently,
/// goes to the next round). Refusals are read back with `RETURNING`.
async fn apply_grouped(
    conn: &mut SqliteConnection,
    ops: &[Op],
    retention: EventRetention,
) -> Result<Vec<Applied>, StoreError> {
    let mut applied = vec![Applied::Done; ops.len()];
    let mut events: Vec<(&str, &EventRow)> = Vec::new();
    let mut prune: Vec<(&str, i64)> = Vec::new();
    let mut remaining: Vec<usize> = (0..ops.len()).collect();
    while !remaining.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = remaining
            .into_iter()
            .partition(|&i| seen.insert(ops[i].job_id()));
        let of = |pick: fn(&Op) -> bool| -> Vec<usize> {
            round.iter().copied().filter(|&i| pick(&ops[i])).collect()
        };
        let inserts = of(|o| matches!(o, Op::InsertJob { .. }));
        let starts = of(|o| matches!(o, Op::StartAttempt { .. }));
        let pids = of(|o| matches!(o, Op::SetPid { .. }));
        let appends = of(|o| matches!(o, Op::AppendEvents { .. }));
        let completes = of(|o| matches!(o, Op::CompleteAttempt { .. }));
        let finishes = of(|o| matches!(o, Op::FinishJob { .. }));

        for chunk in inserts.chunks(GROUP_ROWS) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO jobs (id, workflow, state, priority, params, request, \
                 idempotency_key, max_attempts, created_at, last_seq) ",
            );
            qb.push_values(chunk, |mut b, &i| {
                if let Op::InsertJob {
                    id,
                    workflow,
                    priority,
                    params,
                    request,
                    key,
                    max_attempts,
                    created_at,
                    event,
                } = &ops[i]
                {
                    b.push_bind(id.as_str())
                        .push_bind(workflow.as_str())
                        .push("'queued'")
                        .push_bind(*priority)
                        .push_bind(params.as_str())
                        .push_bind(request.as_str())
                        .push_bind(key.as_deref())
                        .push_bind(*max_attempts)
                        .push_bind(*created_at)
                        .push_bind(event.seq);
                }
            });
            qb.push(" ON CONFLICT (idempotency_key) DO NOTHING RETURNING id");
            let created = returned_ids(conn, qb, "insert jobs").await?;
            for &i in chunk {
                if let Op::InsertJob { id, event, .. } = &ops[i] {
                    if created.contains(id.as_str()) {
                        events.push((id, event));
                    } else {
                        applied[i] = Applied::KeyTaken;
                    }
                }
            }
        }

        for chunk in starts.chunks(GROUP_ROWS) {
            let mut qb = values_cte("v(vid, vn, vnode, vat, vseq)", chunk, |b, i| {
                if let Op::StartAttempt {
                    id,
                    n,
                    node,
                    at,
                    event,
                } = &ops[i]
                {
                    b.push_bind(id.as_str())
                        .push_bind(*n)
                        .push_bind(node.as_str())
                        .push_bind(*at)
                        .push_bind(event.seq);
                }
            });
            // The claim: only a queued job can start.
            qb.push(
                " UPDATE jobs SET state = 'running', attempts = v.vn, node = v.vnode, \
                 started_at = COALESCE(started_at, v.vat), last_seq = MAX(last_seq, v.vseq) \
                 FROM v WHERE jobs.id = v.vid AND jobs.state = 'queued' RETURNING jobs.id",
            );
            let claimed = returned_ids(conn, qb, "claim jobs").await?;
            let won: Vec<usize> = chunk
                .iter()
                .copied()
                .filter(|&i| claimed.contains(ops[i].job_id()))
                .collect();
            for &i in chunk {
                if !claimed.contains(ops[i].job_id()) {
                    applied[i] = Applied::NotQueued;
                }
            }
            if won.is_empty() {
                continue;
            }
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO attempts (job_id, n, node, started_at) ");
            qb.push_values(&won, |mut b, &i| {
                if let Op::StartAttempt {
                    id, n, node, at, ..
                } = &ops[i]
                {
                    b.push_bind(id.as_str())
                        .push_bind(*n)
                        .push_bind(node.as_str())
                        .push_bind(*at);
                }
            });
            execute(conn, qb, "insert attempts").await?;
            for &i in &won {
                if let Op::StartAttempt { id, event, .. } = &ops[i] {
                    events.push((id, event));
                }
            }
        }

        for chunk in pids.chunks(GROUP_ROWS) {
            let rows = |b: &mut Separated<'_>, i: usize| {
                if let Op::SetPid { id, n, pid } = &ops[i] {
                    b.push_bind(id.as_str()).push_bind(*n).push_bind(*pid);
                }
            };
            let mut qb = values_cte("v(vid, vn, vpid)", chunk, rows);
            qb.push(
                " UPDATE attempts SET process_id = v.vpid FROM v \
                 WHERE attempts.job_id = v.vid AND attempts.n = v.vn",
            );
            execute(conn, qb, "set attempt pids").await?;
            let mut qb = values_cte("v(vid, vn, vpid)", chunk, rows);
            qb.push(" UPDATE jobs SET process_id = v.vpid FROM v WHERE jobs.id = v.vid");
            execute(conn, qb, "set job pids").await?;
        }

        for chunk in appends.chunks(GROUP_ROWS) {
            let mut qb = values_cte("v(vid, vlast, vprogress, vresult)", chunk, |b, i| {
                if let Op::AppendEvents {
                    id,
                    events,
                    progress,
                    result,
                } = &ops[i]
                {
                    b.push_bind(id.as_str())
                        .push_bind(events.last().map_or(0, |e| e.seq))
                        .push_bind(progress.as_deref())
                        .push_bind(result.as_deref());
                }
            });
            qb.push(
                " UPDATE jobs SET last_seq = MAX(last_seq, v.vlast), \
                 progress = COALESCE(v.vprogress, progress), \
                 result = COALESCE(v.vresult, result) FROM v WHERE jobs.id = v.vid",
            );
            execute(conn, qb, "update progress").await?;
            for &i in chunk {
                if let Op::AppendEvents {
                    id, events: evs, ..
                } = &ops[i]
                {
                    events.extend(evs.iter().map(|e| (id.as_str(), e)));
                    if let Some(last) = evs.last().map(|e| e.seq)
                        && last as u64 > retention.head + retention.tail
                    {
                        prune.push((id, last));
                    }
                }
            }
        }

        for chunk in completes.chunks(GROUP_ROWS / 2) {
            let mut qb = values_cte(
                "v(vid, vn, vfinished, vreason, vexit, vsignal, vpid, verror)",
                chunk,
                |b, i| {
                    if let Op::CompleteAttempt { id, end, .. } = &ops[i] {
                        b.push_bind(id.as_str())
                            .push_bind(end.n)
                            .push_bind(end.finished_at)
                            .push_bind(end.reason)
                            .push_bind(end.exit_code)
                            .push_bind(end.signal)
                            .push_bind(end.pid)
                            .push_bind(end.error.as_deref());
                    }
                },
            );
            qb.push(
                " UPDATE attempts SET finished_at = v.vfinished, reason = v.vreason, \
                 exit_code = v.vexit, signal = v.vsignal, \
                 process_id = COALESCE(v.vpid, process_id), error = v.verror \
                 FROM v WHERE attempts.job_id = v.vid AND attempts.n = v.vn",
            );
            execute(conn, qb, "finish attempts").await?;
            let mut qb = values_cte(
                "v(vid, vexit, vsignal, vpid, vstdout, vstderr, vstdout_dropped, \
                 vstderr_dropped, vstdout_truncated, vstderr_truncated, vpeak, vcpu, vwall, \
                 vseq, vfin, vstate, vreason, vresult, verror, vfinished)",
                chunk,
                |b, i| {
                    if let Op::CompleteAttempt {
                        id,
                        end,
                        finish,
                        event,
                    } = &ops[i]
                    {
                        b.push_bind(id.as_str())
                            .push_bind(end.exit_code)
                            .push_bind(end.signal)
                            .push_bind(end.pid)
                            .push_bind(end.stdout.as_str())
                            .push_bind(end.stderr.as_str())
                            .push_bind(end.stdout_dropped)
                            .push_bind(end.stderr_dropped)
                            .push_bind(end.stdout_truncated)
                            .push_bind(end.stderr_truncated)
                            .push_bind(end.peak_memory)
                            .push_bind(end.cpu_ms)
                            .push_bind(end.wall_ms)
                            .push_bind(event.seq)
                            .push_bind(finish.is_some())
                            .push_bind(finish.as_ref().map_or("queued", |f| f.state))
                            .push_bind(finish.as_ref().and_then(|f| f.reason))
                            .push_bind(finish.as_ref().and_then(|f| f.result.as_deref()))
                            .push_bind(finish.as_ref().and_then(|f| f.error.as_deref()))
                            .push_bind(finish.as_ref().map(|f| f.finished_at));
                    }
                },
            );
            // A re-queue (`vfin` false) keeps the finish columns.
            qb.push(
                " UPDATE jobs SET exit_code = v.vexit, signal = v.vsignal, \
                 process_id = COALESCE(v.vpid, process_id), stdout = v.vstdout, \
                 stderr = v.vstderr, stdout_dropped = v.vstdout_dropped, \
                 stderr_dropped = v.vstderr_dropped, stdout_truncated = v.vstdout_truncated, \
                 stderr_truncated = v.vstderr_truncated, peak_memory = v.vpeak, \
                 cpu_ms = v.vcpu, wall_ms = v.vwall, last_seq = MAX(last_seq, v.vseq), \
                 node = NULL, state = v.vstate, \
                 reason = CASE WHEN v.vfin THEN v.vreason ELSE reason END, \
                 result = CASE WHEN v.vfin THEN COALESCE(v.vresult, result) ELSE result END, \
                 error = CASE WHEN v.vfin THEN v.verror ELSE error END, \
                 finished_at = CASE WHEN v.vfin THEN v.vfinished ELSE finished_at END \
                 FROM v WHERE jobs.id = v.vid",
            );
            execute(conn, qb, "record attempt ends").await?;
            for &i in chunk {
                if let Op::CompleteAttempt { id, event, .. } = &ops[i] {
                    events.push((id, event));
                }
            }
        }

        for chunk in finishes.chunks(GROUP_ROWS) {
            let mut qb = values_cte(
                "v(vid, vseq, vstate, vreason, vresult, verror, vfinished)",
                chunk,
                |b, i| {
                    if let Op::FinishJob { id, finish, event } = &ops[i] {
                        b.push_bind(id.as_str())
                            .push_bind(event.seq)
                            .push_bind(finish.state)
                            .push_bind(finish.reason)
                            .push_bind(finish.result.as_deref())
                            .push_bind(finish.error.as_deref())
                            .push_bind(finish.finished_at);
                    }
                },
            );
            qb.push(
                " UPDATE jobs SET last_seq = MAX(last_seq, v.vseq), state = v.vstate, \
                 reason = v.vreason, result = COALESCE(v.vresult, result), error = v.verror, \
                 finished_at = v.vfinished, node = NULL FROM v WHERE jobs.id = v.vid",
            );
            execute(conn, qb, "finish jobs").await?;
            for &i in chunk {
                if let Op::FinishJob { id, event, .. } = &ops[i] {
                    events.push((id, event));
                }
            }
        }
        remaining = later;
    }
    insert_events(conn, &events).await?;
    prune_events(conn, &prune, retention).await?;
    Ok(applied)
}

type Separated<'qb> = sqlx::query_builder::Separated<'qb, Sqlite, &'static str>;

/// `WITH <name> AS (VALUES (..), (..))`, one row per operation.
fn values_cte(
    name: &str,
    rows: &[usize],
    mut row: impl FnMut(&mut Separated<'_>, usize),
) -> QueryBuilder<Sqlite> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("WITH ");
    qb.push(name).push(" AS (VALUES ");
    for (k, &i) in rows.iter().enumerate() {
        if k > 0 {
            qb.push(", ");
        }
        qb.push("(");
        let mut sep = qb.separated(", ");
        row(&mut sep, i);
        qb.push(")");
    }
    qb.push(")");
    qb
}

async fn execute(
    conn: &mut SqliteConnection,
    mut qb: QueryBuilder<Sqlite>,
    op: &'static str,
) -> Result<(), StoreError> {
    qb.build()
        .persistent(false)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query(op))?;
    Ok(())
}

/// Runs a statement ending in `RETURNING id`.
async fn returned_ids(
    conn: &mut SqliteConnection,
    mut qb: QueryBuilder<Sqlite>,
    op: &'static str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows = qb
        .build()
        .persistent(false)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::query(op))?;
    rows.iter()
        .map(|r| sqlx::Row::try_get::<String, _>(r, 0).map_err(StoreError::query(op)))
        .collect()
}

async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[(&str, &EventRow)],
) -> Result<(), StoreError> {
    for chunk in events.chunks(EVENT_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO events (job_id, seq, ts, data) ");
        qb.push_values(chunk, |mut b, (id, e)| {
            b.push_bind(*id)
                .push_bind(e.seq)
                .push_bind(e.ts)
                .push_bind(e.data.as_str());
        });
        // Its text depends on the row count: not worth a cache slot.
        execute(conn, qb, "insert events").await?;
    }
    Ok(())
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

/// The statements of one operation, in order, then its events (the path
/// of a lone operation, and of each operation of a failed batch).
async fn apply(
    conn: &mut SqliteConnection,
    ops: &[Op],
    retention: EventRetention,
) -> Result<Vec<Applied>, StoreError> {
    let mut events: Vec<(&str, &EventRow)> = Vec::new();
    let mut prune: Vec<(&str, i64)> = Vec::new();
    let mut applied = Vec::with_capacity(ops.len());
    for op in ops {
        applied.push(apply_one(conn, op, retention, &mut events, &mut prune).await?);
    }
    insert_events(conn, &events).await?;
    prune_events(conn, &prune, retention).await?;
    Ok(applied)
}

async fn apply_one<'a>(
    conn: &mut SqliteConnection,
    op: &'a Op,
    retention: EventRetention,
    events: &mut Vec<(&'a str, &'a EventRow)>,
    prune: &mut Vec<(&'a str, i64)>,
) -> Result<Applied, StoreError> {
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
            let res = sqlx::query(
                "INSERT INTO jobs (id, workflow, state, priority, params, request, \
                 idempotency_key, max_attempts, created_at, last_seq) \
                 VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(workflow.as_str())
            .bind(priority)
            .bind(params.as_str())
            .bind(request.as_str())
            .bind(key.as_deref())
            .bind(max_attempts)
            .bind(created_at)
            .bind(event.seq)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query("insert job"))?;
            if res.rows_affected() == 0 {
                return Ok(Applied::KeyTaken);
            }
            events.push((id, event));
        }
        Op::StartAttempt {
            id,
            n,
            node,
            at,
            event,
        } => {
            // The claim: only a queued job can start.
            let res = sqlx::query(
                "UPDATE jobs SET state = 'running', attempts = ?, node = ?, \
                 started_at = COALESCE(started_at, ?), last_seq = MAX(last_seq, ?) \
                 WHERE id = ? AND state = 'queued'",
            )
            .bind(n)
            .bind(node.as_str())
            .bind(at)
            .bind(event.seq)
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query("claim job"))?;
            if res.rows_affected() == 0 {
                return Ok(Applied::NotQueued);
            }
            sqlx::query("INSERT INTO attempts (job_id, n, node, started_at) VALUES (?, ?, ?, ?)")
                .bind(id.as_str())
                .bind(n)
                .bind(node.as_str())
                .bind(at)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::query("insert attempt"))?;
            events.push((id, event));
        }
        Op::SetPid { id, n, pid } => {
            sqlx::query("UPDATE attempts SET process_id = ? WHERE job_id = ? AND n = ?")
                .bind(pid)
                .bind(id.as_str())
                .bind(n)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::query("set attempt pid"))?;
            sqlx::query("UPDATE jobs SET process_id = ? WHERE id = ?")
                .bind(pid)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(StoreError::query("set job pid"))?;
        }
        Op::AppendEvents {
            id,
            events: evs,
            progress,
            result,
        } => {
            let Some(last) = evs.last().map(|e| e.seq) else {
                return Ok(Applied::Done);
            };
            sqlx::query(
                "UPDATE jobs SET last_seq = MAX(last_seq, ?), progress = COALESCE(?, progress), \
                 result = COALESCE(?, result) WHERE id = ?",
            )
            .bind(last)
            .bind(progress.as_deref())
            .bind(result.as_deref())
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query("update progress"))?;
            events.extend(evs.iter().map(|e| (id.as_str(), e)));
            if last as u64 > retention.head + retention.tail {
                prune.push((id, last));
            }
        }
        Op::CompleteAttempt {
            id,
            end,
            finish,
            event,
        } => {
            sqlx::query(
                "UPDATE attempts SET finished_at = ?, reason = ?, exit_code = ?, signal = ?, \
                 process_id = COALESCE(?, process_id), error = ? WHERE job_id = ? AND n = ?",
            )
            .bind(end.finished_at)
            .bind(end.reason)
            .bind(end.exit_code)
            .bind(end.signal)
            .bind(end.pid)
            .bind(end.error.as_deref())
            .bind(id.as_str())
            .bind(end.n)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query("finish attempt"))?;
            // The attempt's output and, in the same statement, what follows.
            macro_rules! record_end {
                ($then:literal) => {
                    concat!(
                        "UPDATE jobs SET exit_code = ?, signal = ?, \
                         process_id = COALESCE(?, process_id), stdout = ?, stderr = ?, \
                         stdout_dropped = ?, stderr_dropped = ?, stdout_truncated = ?, \
                         stderr_truncated = ?, peak_memory = ?, cpu_ms = ?, wall_ms = ?, \
                         last_seq = MAX(last_seq, ?), node = NULL, ",
                        $then
                    )
                };
            }
            let sql = match finish {
                None => record_end!("state = 'queued' WHERE id = ?"),
                Some(_) => record_end!(
                    "state = ?, reason = ?, result = COALESCE(?, result), error = ?, \
                     finished_at = ? WHERE id = ?"
                ),
            };
            let mut q = sqlx::query(sql)
                .bind(end.exit_code)
                .bind(end.signal)
                .bind(end.pid)
                .bind(end.stdout.as_str())
                .bind(end.stderr.as_str())
                .bind(end.stdout_dropped)
                .bind(end.stderr_dropped)
                .bind(end.stdout_truncated)
                .bind(end.stderr_truncated)
                .bind(end.peak_memory)
                .bind(end.cpu_ms)
                .bind(end.wall_ms)
                .bind(event.seq);
            if let Some(f) = finish {
                q = q
                    .bind(f.state)
                    .bind(f.reason)
                    .bind(f.result.as_deref())
                    .bind(f.error.as_deref())
                    .bind(f.finished_at);
            }
            q.bind(id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(StoreError::query("record attempt end"))?;
            events.push((id, event));
        }
        Op::FinishJob { id, finish, event } => {
            sqlx::query(
                "UPDATE jobs SET last_seq = MAX(last_seq, ?), state = ?, reason = ?, \
                 result = COALESCE(?, result), error = ?, finished_at = ?, node = NULL \
                 WHERE id = ?",
            )
            .bind(event.seq)
            .bind(finish.state)
            .bind(finish.reason)
            .bind(finish.result.as_deref())
            .bind(finish.error.as_deref())
            .bind(finish.finished_at)
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(StoreError::query("finish job"))?;
            events.push((id, event));
        }
    }
    Ok(Applied::Done)
}
