//! The embedded job store: one SQLite file, WAL journal, `synchronous =
//! NORMAL`. A committed transaction survives a crash (even SIGKILL) of
//! tsbridge; only an OS crash or power loss can lose the last commits. See
//! docs/design/job-store.md for the trade-off.
//!
//! One read-write connection, owned by the writer task ([`writer`]: group
//! commit, `BEGIN IMMEDIATE`), and a pool of read-only connections for
//! reads. In WAL mode readers never wait for the writer and the writer never
//! waits for them, and with a single writer no transaction ever waits for
//! SQLite's write lock.

mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite};
use tsbridge_proto::api::{AttemptView, OutputView, Resources};
use tsbridge_proto::{EndReason, JobEvent, JobId, JobState};

use super::columns::{
    ENV_KEY_FINGERPRINT, corrupt, from_ms, json_text, key_taken, ms, next_page, read_event,
    read_job_text,
};
use super::list_output::{LIST_OUTPUT_TAIL, cut_listed_output};
use super::{
    AfterAttempt, AttemptEnd, Finish, FirstStart, Inserted, JobPage, JobRecord, JobStore,
    ListFilter, NewJob, last_progress_and_result,
};
use crate::errors::StoreError;
use writer::{Applied, EndRow, EventRow, FinishRow, Op, StartRow, Target, WriterHandle};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Read-only connections.
const READERS: u32 = 4;

/// How many events of one job are kept: the first `head` and the last
/// `tail`; the middle of a longer stream is deleted as it grows (its `seq`
/// numbers are never reused, so a reader sees the gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    pub head: u64,
    pub tail: u64,
}

/// How a SQLite store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    pub retention: EventRetention,
    /// The WAL size (bytes) past which the WAL is started again from its
    /// beginning (`store.wal_restart`): each restart holds the writes for a
    /// copy and two syncs, so a larger one stalls less often, and a crash
    /// recovery reads up to this much (docs/design/job-store.md).
    pub wal_restart: u64,
    /// Run the checkpointer thread, which copies the WAL back beside the
    /// writer (the default). Without it only the writer's own copy past
    /// twice `wal_restart` restarts the WAL: for tests of that path, which
    /// must hold whatever the checkpointer does (a thread starved of CPU
    /// completes no pass).
    pub checkpointer: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            retention: EventRetention::default(),
            wal_restart: writer::DEFAULT_WAL_RESTART,
            checkpointer: true,
        }
    }
}

impl From<EventRetention> for SqliteOptions {
    fn from(retention: EventRetention) -> Self {
        Self {
            retention,
            ..Self::default()
        }
    }
}

impl Default for EventRetention {
    fn default() -> Self {
        Self {
            head: 2_000,
            tail: 8_000,
        }
    }
}

/// `SELECT` of job rows (their attempts are a column of the row,
/// `attempt_log`), then the given `WHERE ...` and `ORDER BY ...`.
macro_rules! select_jobs {
    ($rest:expr) => {
        concat!("SELECT * FROM jobs ", $rest)
    };
}

/// The term of `jobs_by_state`'s `WHERE` (migration 0004): the index holds
/// every job that has not succeeded, and SQLite uses a partial index only
/// for a query that carries its term word for word. Every lookup by another
/// state adds it (the plans are checked by a test).
macro_rules! not_succeeded {
    () => {
        "state <> 'succeeded'"
    };
}

/// The queued jobs, best first ([`JobStore::queued_jobs`]).
const QUEUED_JOBS: &str = select_jobs!(concat!(
    "WHERE state = 'queued' AND ",
    not_succeeded!(),
    " ORDER BY priority DESC, id"
));

/// The job that holds an idempotency key (the key's partial unique index
/// serves it: `idempotency_key = ?` implies its `IS NOT NULL`).
const BY_KEY: &str = select_jobs!("WHERE idempotency_key = ?");

/// The running jobs, oldest first ([`JobStore::recover_interrupted`]).
const RUNNING_JOBS: &str = select_jobs!(concat!(
    "WHERE state = 'running' AND ",
    not_succeeded!(),
    " ORDER BY id"
));

/// A job list's columns ([`shared_list_columns!`], then this store's), the
/// captured output cut by SQLite. (The literal 4096 is checked against
/// [`LIST_OUTPUT_TAIL`] below; test `list_columns_are_every_column_of_jobs`
/// compares the list with the table.)
macro_rules! list_columns {
    () => {
        concat!(
            shared_list_columns!(),
            "attempt_log, \
             substr(stdout,-4096) AS stdout, length(CAST(stdout AS BLOB)) AS stdout_len, \
             substr(stderr,-4096) AS stderr, length(CAST(stderr AS BLOB)) AS stderr_len"
        )
    };
}
const _: () = assert!(
    LIST_OUTPUT_TAIL == 4096,
    "list_columns! cuts 4096 characters"
);

/// The SQLite [`JobStore`]. Cheap to clone (clones share the connections).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Read-only connections.
    readers: SqlitePool,
    /// The one read-write connection, behind its task.
    writer: WriterHandle,
    /// A file store's exclusive lock ([`lock_store`]), held until
    /// [`SqliteStore::close`] or the last clone's drop.
    lock: Arc<Mutex<Option<std::fs::File>>>,
    /// A file store's canonical path ([`SqliteStore::file`]).
    file: Option<Arc<Path>>,
}

impl SqliteStore {
    /// Opens (creating it if needed) the store at a `sqlite://PATH` URL and
    /// runs the embedded migrations. Must be called within a tokio runtime:
    /// the writer is a task of it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open`] with these options (an [`EventRetention`]
    /// alone keeps the other defaults).
    pub async fn open_with(
        url: &str,
        options: impl Into<SqliteOptions>,
    ) -> Result<Self, StoreError> {
        let SqliteOptions {
            retention,
            wal_restart,
            checkpointer,
        } = options.into();
        let memory = url == "sqlite::memory:";
        if !memory && !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl {
                url: url.to_owned(),
                expected: "sqlite://PATH",
            });
        }
        let bad_url = |source| StoreError::BadUrl {
            url: url.to_owned(),
            source,
        };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(bad_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if !memory {
            let file = opts.get_filename();
            if let Some(dir) = file.parent()
                && !dir.as_os_str().is_empty()
                && !dir.exists()
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            create_private(file)?;
        }
        // Before any connection: a second server neither migrates nor
        // recovers a store another one runs.
        let (lock, file) = if memory {
            (None, None)
        } else {
            let (lock, canonical) = lock_store(opts.get_filename())?;
            (Some(lock), Some(Arc::from(canonical)))
        };
        // Migrations run on a connection of their own, closed once the
        // writer's is open (an in-memory database lives while one is).
        let mut conn = opts.clone().connect().await.map_err(StoreError::Open)?;
        MIGRATOR.run(&mut conn).await.map_err(StoreError::Migrate)?;
        let target = Target {
            path: opts.get_filename().to_path_buf(),
            memory,
        };
        // `sqlite::memory:` is a named shared-cache database in sqlx: the
        // same options reach the same database (while one connection is
        // open: the writer's). A file is opened read-only by the readers.
        let read_opts = if memory {
            opts
        } else {
            SqliteConnectOptions::from_str(url)
                .map_err(bad_url)?
                .read_only(true)
                .busy_timeout(Duration::from_secs(10))
        };
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            // No ping before each acquire: it is a round trip to the
            // connection's thread per read, and an in-process SQLite
            // connection does not go stale like a socket (a failed one
            // fails the query, which reports it).
            .test_before_acquire(false)
            .connect_with(read_opts)
            .await
            .map_err(StoreError::Open)?;
        let writer = WriterHandle::spawn(target, retention, wal_restart, checkpointer).await?;
        drop(conn);
        Ok(Self {
            readers,
            writer,
            lock: Arc::new(Mutex::new(lock)),
            file,
        })
    }

    /// The canonical path of the store's file (symlinks resolved, no `.`
    /// or `..`), whatever spelling opened it; `None` in memory. Its lock
    /// is named after it, and so is a server's parent cgroup: every
    /// spelling of one store finds the same ones.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Opens a store file by path.
    pub async fn open_path(path: &Path) -> Result<Self, StoreError> {
        Self::open(&format!("sqlite://{}", path.display())).await
    }

    /// Writes what was already submitted, then closes every connection;
    /// later calls fail.
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
        // The store is free for another server (or a reopen) from here.
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

/// The write of appended events.
fn append_op(id: JobId, events: &[JobEvent]) -> Op {
    let (progress, result) = last_progress_and_result(events);
    Op::AppendEvents {
        id: id.to_string(),
        events: events.iter().map(event_row).collect(),
        progress: progress.map(json_text),
        result: result.map(json_text),
    }
}

/// The write of an attempt's end, after its last `events`.
fn complete_op(
    id: JobId,
    events: &[JobEvent],
    end: &AttemptEnd,
    next: &AfterAttempt,
    event: &JobEvent,
) -> Op {
    let (progress, result) = last_progress_and_result(events);
    Op::CompleteAttempt {
        id: id.to_string(),
        events: events.iter().map(event_row).collect(),
        progress: progress.map(json_text),
        result: result.map(json_text),
        end: end_row(end),
        finish: match next {
            AfterAttempt::Requeue => None,
            AfterAttempt::Finish(f) => Some(finish_row(f)),
        },
        event: event_row(event),
    }
}

fn event_row(e: &JobEvent) -> EventRow {
    EventRow {
        seq: e.seq as i64,
        ts: ms(e.timestamp),
        data: json_text(&e.data),
    }
}

fn end_row(end: &AttemptEnd) -> EndRow {
    let o = &end.output;
    let r = &end.resources;
    EndRow {
        n: i64::from(end.n),
        finished_at: ms(end.finished_at),
        reason: end.reason.as_str(),
        exit_code: end.exit_code,
        signal: end.signal,
        pid: end.process_id.map(i64::from),
        error: end.error.clone(),
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
        stdout_dropped: o.stdout_dropped_bytes as i64,
        stderr_dropped: o.stderr_dropped_bytes as i64,
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        peak_memory: r.peak_memory_bytes.map(|v| v as i64),
        cpu_ms: r.cpu_time_ms.map(|v| v as i64),
        wall_ms: r.wall_time_ms.map(|v| v as i64),
        not_before: end.retry_in.map(|d| {
            ms(Utc::now()).saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }),
    }
}

fn finish_row(f: &Finish) -> FinishRow {
    FinishRow {
        state: f.state.as_str(),
        reason: f.reason.map(|r| r.as_str()),
        result: f.result.as_ref().map(json_text),
        error: f.error.as_ref().map(json_text),
        finished_at: ms(f.finished_at),
    }
}

fn read_job(row: &SqliteRow, cut_output: bool) -> Result<JobRecord, StoreError> {
    let g = |e: sqlx::Error| StoreError::Query {
        op: "read job row",
        source: e,
    };
    let id_s: String = row.try_get("id").map_err(g)?;
    let t = read_job_text(&id_s, |col| row.try_get(col).map_err(g))?;
    let opt_u64 = |col: &str| -> Result<Option<u64>, StoreError> {
        Ok(row
            .try_get::<Option<i64>, _>(col)
            .map_err(g)?
            .map(|v| v.max(0) as u64))
    };
    let opt_i32 = |col: &str| -> Result<Option<i32>, StoreError> {
        Ok(row
            .try_get::<Option<i64>, _>(col)
            .map_err(g)?
            .map(|v| v as i32))
    };
    let opt_time = |col: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(col).map_err(g)?.map(from_ms))
    };
    let mut output = OutputView {
        stdout: row.try_get("stdout").map_err(g)?,
        stderr: row.try_get("stderr").map_err(g)?,
        stdout_truncated: row.try_get::<i64, _>("stdout_truncated").map_err(g)? != 0,
        stderr_truncated: row.try_get::<i64, _>("stderr_truncated").map_err(g)? != 0,
        stdout_dropped_bytes: opt_u64("stdout_dropped")?.unwrap_or(0),
        stderr_dropped_bytes: opt_u64("stderr_dropped")?.unwrap_or(0),
    };
    if cut_output {
        // The row holds the streams' last characters (`list_columns!`) and
        // their whole length in bytes.
        let len = |col: &str| -> Result<u64, StoreError> {
            Ok(row.try_get::<i64, _>(col).map_err(g)?.max(0) as u64)
        };
        cut_listed_output(
            &mut output,
            LIST_OUTPUT_TAIL,
            len("stdout_len")?,
            len("stderr_len")?,
        );
    }
    Ok(JobRecord {
        not_before: opt_time("not_before")?,
        id: t.id,
        workflow: row.try_get("workflow").map_err(g)?,
        state: t.state,
        reason: t.reason,
        priority: row.try_get::<i64, _>("priority").map_err(g)? as i32,
        params: t.params,
        request: t.request,
        idempotency_key: row.try_get("idempotency_key").map_err(g)?,
        max_attempts: row.try_get::<i64, _>("max_attempts").map_err(g)? as u32,
        attempts_started: row.try_get::<i64, _>("attempts").map_err(g)? as u32,
        node: row.try_get("node").map_err(g)?,
        created_at: from_ms(row.try_get("created_at").map_err(g)?),
        started_at: opt_time("started_at")?,
        finished_at: opt_time("finished_at")?,
        progress: t.progress,
        result: t.result,
        error: t.error,
        exit_code: opt_i32("exit_code")?,
        signal: opt_i32("signal")?,
        process_id: opt_u64("process_id")?.map(|p| p as u32),
        output,
        resources: Resources {
            peak_memory_bytes: opt_u64("peak_memory")?,
            cpu_time_ms: opt_u64("cpu_ms")?,
            wall_time_ms: opt_u64("wall_ms")?,
        },
        last_seq: row.try_get::<i64, _>("last_seq").map_err(g)?.max(0) as u64,
        attempts: read_attempts(
            &id_s,
            row.try_get::<Option<String>, _>("attempt_log")
                .map_err(g)?
                .as_deref(),
        )?,
    })
}

/// A job's attempts as its `attempt_log` column holds them: one JSON array
/// per attempt, `[n, started_at, finished_at, reason, exit_code, signal,
/// process_id, node, error]` (the writer's statements keep this order).
type AttemptTuple = (
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn read_attempts(id: &str, json: Option<&str>) -> Result<Vec<AttemptView>, StoreError> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let mut rows: Vec<AttemptTuple> =
        serde_json::from_str(json).map_err(|_| corrupt(id, "attempts"))?;
    rows.sort_by_key(|a| a.0);
    Ok(rows
        .into_iter()
        .map(
            |(n, started, finished, reason, exit_code, signal, pid, _node, _error)| AttemptView {
                n: n as u32,
                started_at: from_ms(started),
                finished_at: finished.map(from_ms),
                reason: reason.as_deref().and_then(EndReason::parse),
                exit_code: exit_code.map(|v| v as i32),
                signal: signal.map(|v| v as i32),
                process_id: pid.map(|v| v as u32),
            },
        )
        .collect())
}

impl SqliteStore {
    async fn jobs_where(
        &self,
        sql: &'static str,
        binds: &[String],
        cut_output: bool,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q
            .fetch_all(&self.readers)
            .await
            .map_err(StoreError::query("read jobs"))?;
        rows.iter().map(|r| read_job(r, cut_output)).collect()
    }

    /// What an insert's write means for its caller.
    async fn inserted(&self, job: &NewJob, applied: Applied) -> Result<Inserted, StoreError> {
        match applied {
            Applied::KeyTaken => {
                // The job holding the key is committed (before, or earlier
                // in the same transaction, which has committed now).
                let key = job.idempotency_key.as_deref().unwrap_or_default();
                key_taken(job.id, self.find_by_idempotency_key(key).await?)
            }
            Applied::Done | Applied::NotQueued => Ok(Inserted::Created),
        }
    }
}

/// The `SELECT` of a page of [`JobStore::list_jobs`]: `limit + 1` rows,
/// newest first (the extra row tells whether there is a next page).
fn list_query(filter: &ListFilter, limit: u32) -> QueryBuilder<Sqlite> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
        "SELECT ",
        list_columns!(),
        " FROM jobs WHERE 1 = 1"
    ));
    if let Some(s) = filter.state {
        qb.push(" AND state = ").push_bind(s.as_str());
        if s != JobState::Succeeded {
            qb.push(concat!(" AND ", not_succeeded!()));
        }
    }
    if let Some(w) = &filter.workflow {
        qb.push(" AND workflow = ").push_bind(w.clone());
    }
    if let Some(b) = filter.before {
        qb.push(" AND id < ").push_bind(b.to_string());
    }
    qb.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    qb
}

fn start_op(id: JobId, n: u32, node: &str, at: DateTime<Utc>, event: &JobEvent) -> Op {
    Op::StartAttempt {
        id: id.to_string(),
        n: i64::from(n),
        node: node.to_owned(),
        at: ms(at),
        event: event_row(event),
    }
}

fn insert_op(job: &NewJob) -> Op {
    Op::InsertJob {
        id: job.id.to_string(),
        workflow: job.workflow.clone(),
        priority: i64::from(job.priority),
        params: json_text(&job.params),
        request: json_text(&job.request),
        key: job.idempotency_key.clone(),
        max_attempts: i64::from(job.max_attempts),
        created_at: ms(job.created_at),
        event: event_row(&job.event),
        start: None,
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_job(&self, job: &NewJob) -> Result<Inserted, StoreError> {
        let applied = self.writer.write(insert_op(job)).await?;
        self.inserted(job, applied).await
    }

    fn claims_with_insert(&self) -> bool {
        true
    }

    async fn insert_and_start(
        &self,
        job: &NewJob,
        start: &FirstStart,
    ) -> Result<(Inserted, bool), StoreError> {
        // One row, inserted running with its first attempt: a key that
        // names another job inserts and starts nothing.
        let mut op = insert_op(job);
        if let Op::InsertJob { start: claim, .. } = &mut op {
            *claim = Some(StartRow {
                n: 1,
                node: start.node.clone(),
                at: ms(start.at),
                event: event_row(&start.event),
            });
        }
        let applied = self.writer.write(op).await?;
        let inserted = self.inserted(job, applied).await?;
        let started = matches!(inserted, Inserted::Created);
        Ok((inserted, started))
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .jobs_where(BY_KEY, &[key.to_owned()], false)
            .await?
            .pop())
    }

    async fn start_attempt(
        &self,
        id: JobId,
        n: u32,
        node: &str,
        at: DateTime<Utc>,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        let op = start_op(id, n, node, at, event);
        match self.writer.write(op).await? {
            Applied::NotQueued => Err(StoreError::NotFound(id)),
            Applied::Done | Applied::KeyTaken => Ok(()),
        }
    }

    async fn set_attempt_pid(&self, id: JobId, n: u32, pid: u32) -> Result<(), StoreError> {
        let op = Op::SetPid {
            id: id.to_string(),
            n: i64::from(n),
            pid: i64::from(pid),
        };
        self.writer.write(op).await.map(drop)
    }

    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.writer.write(append_op(id, events)).await.map(drop)
    }

    async fn complete_attempt_with_events(
        &self,
        id: JobId,
        events: &[JobEvent],
        end: &AttemptEnd,
        next: &AfterAttempt,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        // One operation, one update of the job's row. Should the events
        // not go in (the write fails as a whole), the end is written alone:
        // a job's end is never lost for its events.
        match self
            .writer
            .write(complete_op(id, events, end, next, event))
            .await
        {
            Err(e @ StoreError::Write { .. }) if !events.is_empty() => {
                tracing::warn!(job = %id, error = %e, count = events.len(), "cannot store events");
                self.complete_attempt(id, end, next, event).await
            }
            r => r.map(drop),
        }
    }

    async fn complete_attempt(
        &self,
        id: JobId,
        end: &AttemptEnd,
        next: &AfterAttempt,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        self.writer
            .write(complete_op(id, &[], end, next, event))
            .await
            .map(drop)
    }

    async fn finish_job(
        &self,
        id: JobId,
        finish: &Finish,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        let op = Op::FinishJob {
            id: id.to_string(),
            finish: finish_row(finish),
            event: event_row(event),
        };
        self.writer.write(op).await.map(drop)
    }

    async fn get_job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .jobs_where(select_jobs!("WHERE id = ?"), &[id.to_string()], false)
            .await?
            .pop())
    }

    async fn list_jobs(&self, filter: &ListFilter) -> Result<JobPage, StoreError> {
        let limit = filter.limit.clamp(1, 500);
        let rows = list_query(filter, limit)
            .build()
            .fetch_all(&self.readers)
            .await
            .map_err(StoreError::query("list jobs"))?;
        let mut jobs = rows
            .iter()
            .map(|r| read_job(r, true))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = next_page(&mut jobs, limit);
        Ok(JobPage { jobs, next_cursor })
    }

    async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, ts, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.to_string())
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(StoreError::query("read events"))?;
        rows.iter()
            .map(|r| {
                let g = |source| StoreError::Query {
                    op: "read event row",
                    source,
                };
                let seq: i64 = r.try_get("seq").map_err(g)?;
                let ts: i64 = r.try_get("ts").map_err(g)?;
                let data: String = r.try_get("data").map_err(g)?;
                read_event(id, seq, ts, &data)
            })
            .collect()
    }

    async fn recover_interrupted(&self, _node: &str) -> Result<Vec<JobRecord>, StoreError> {
        // One node per SQLite file: every running job was ours.
        self.jobs_where(RUNNING_JOBS, &[], false).await
    }

    async fn queued_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_where(QUEUED_JOBS, &[], false).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::WriterStopped { op: "ping" });
        }
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(StoreError::query("ping"))?;
        Ok(())
    }

    async fn env_key_fingerprint(&self) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM store_meta WHERE name = ?")
            .bind(ENV_KEY_FINGERPRINT)
            .fetch_optional(&self.readers)
            .await
            .map_err(StoreError::query("read the env key fingerprint"))
    }

    async fn claim_env_key_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError> {
        let op = Op::ClaimMeta {
            name: ENV_KEY_FINGERPRINT,
            value: fingerprint.to_owned(),
        };
        self.writer.write(op).await?;
        // Committed: the readers see the row (ours, or the one before).
        self.env_key_fingerprint().await?.ok_or(StoreError::Query {
            op: "read the env key fingerprint after its claim",
            source: sqlx::Error::RowNotFound,
        })
    }
}

/// Creates the database file `path`, empty and readable by its owner only
/// (0600), unless it exists. SQLite gives its `-wal` and `-shm` files the
/// mode of the database file, so all three stay private: the store holds
/// every job's parameters, results and output. An existing file keeps its
/// mode (`tsbridge check` notes a store a job's user can read).
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::CreateFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Takes the exclusive lock of the store file `db`: a non-blocking
/// `flock` of `<db>-lock` (beside SQLite's `-wal` and `-shm`, created 0600
/// and left in place), named after the store's canonical path so that a
/// symlink or another spelling of it finds the same lock. Two servers on
/// one SQLite store would each recover the other's running jobs as
/// interrupted and number the same jobs' events twice; the second is
/// refused with [`StoreError::InUse`] instead. The kernel lets go of the
/// lock when its holder dies (a SIGKILLed server's restart is not held
/// up), and it is close-on-exec: no job or helper process inherits it.
/// Not the database file itself: closing this descriptor would drop every
/// POSIX lock SQLite holds on that file in this process. Answers the lock
/// and the canonical path.
fn lock_store(db: &Path) -> Result<(std::fs::File, PathBuf), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let canonical = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let mut name = canonical.clone().into_os_string();
    name.push("-lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StoreError::Lock {
            path: path.clone(),
            source,
        })?;
    // std's `try_lock` is a non-blocking `flock(LOCK_EX)` on Linux.
    match file.try_lock() {
        Ok(()) => Ok((file, canonical)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { path: canonical }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SQLite plans for `sql` (with `binds`): its `detail` lines.
    async fn plan(store: &SqliteStore, sql: &str, binds: &[&str]) -> String {
        // Test-only text: the store's own statements, explained.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for b in binds {
            q = q.bind(*b);
        }
        q.fetch_all(&store.readers)
            .await
            .expect("explain query plan")
            .iter()
            .map(|r| r.try_get::<String, _>("detail").expect("detail"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The names a list's rows carry: each column or its `AS` alias.
    fn list_column_names() -> Vec<String> {
        list_columns!()
            .split(", ")
            .map(|c| c.rsplit(" AS ").next().unwrap_or(c).trim().to_owned())
            .collect()
    }

    /// A new store's file, its WAL and its shared-memory index are its
    /// owner's alone, whatever the umask lets through.
    #[tokio::test]
    async fn a_new_store_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        // The migrations have written through the WAL by now.
        let store = SqliteStore::open_path(&db).await.expect("open");
        for name in ["s.db", "s.db-wal", "s.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .expect(name)
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
        }
        store.close().await;
    }

    /// One server per SQLite store: a second open of a store in use is
    /// refused, also through a symlink, and writes nothing; the store is
    /// free again once its holder closes it.
    #[tokio::test]
    async fn a_store_in_use_is_refused_until_its_holder_closes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        let first = SqliteStore::open_path(&db).await.expect("open");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).expect("symlink");
        for path in [&db, &link] {
            match SqliteStore::open_path(path).await {
                Err(StoreError::InUse { path: named }) => {
                    assert_eq!(named, db.canonicalize().expect("canonical"));
                }
                other => panic!("a second open of {} gave {other:?}", path.display()),
            }
        }
        let err = SqliteStore::open_path(&db).await.expect_err("in use");
        assert!(
            err.to_string().contains("in use by another tsbridge"),
            "{err}"
        );
        // The first store still works.
        assert!(first.get_job(JobId::new()).await.expect("read").is_none());
        first.close().await;
        let again = SqliteStore::open_path(&link)
            .await
            .expect("free after close");
        // Either spelling names the store by its canonical path.
        let canonical = db.canonicalize().expect("canonical");
        assert_eq!(first.file(), Some(canonical.as_path()));
        assert_eq!(again.file(), Some(canonical.as_path()));
        again.close().await;
        // An in-memory store has no file and no lock.
        let m1 = SqliteStore::open("sqlite::memory:").await.expect("memory");
        assert_eq!(m1.file(), None);
        m1.close().await;
    }

    /// `list_columns!` names every column of `jobs` (a migration that adds
    /// one must add it there too), with the two streams cut in SQL.
    #[tokio::test]
    async fn list_columns_are_every_column_of_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open_path(&dir.path().join("s.db"))
            .await
            .expect("open");
        let mut table: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('jobs')")
            .fetch_all(&store.readers)
            .await
            .expect("table info")
            .iter()
            .map(|r| r.try_get::<String, _>("name").expect("name"))
            .collect();
        table.extend(["stdout_len".to_owned(), "stderr_len".to_owned()]);
        table.sort();
        let mut listed = list_column_names();
        listed.sort();
        assert_eq!(listed, table);
        assert!(
            list_columns!().contains("substr(stdout,-4096) AS stdout"),
            "the streams are cut in SQL"
        );
    }

    /// `jobs_by_state` is partial (jobs not succeeded): it serves the
    /// start-up queries and lists by every other state only because they
    /// carry its term.
    #[tokio::test]
    async fn lookups_by_state_use_the_partial_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open_path(&dir.path().join("s.db"))
            .await
            .expect("open");
        for sql in [QUEUED_JOBS, RUNNING_JOBS] {
            let p = plan(&store, sql, &[]).await;
            assert!(p.contains("jobs_by_state"), "{sql}: {p}");
        }
        for state in [
            JobState::Queued,
            JobState::Running,
            JobState::Failed,
            JobState::Cancelled,
            JobState::TimedOut,
        ] {
            let filter = ListFilter {
                state: Some(state),
                limit: 50,
                ..ListFilter::default()
            };
            // The binds of `list_query` for this filter: the state, the limit.
            let list = list_query(&filter, 50).sql();
            let p = plan(&store, list.as_str(), &[state.as_str(), "51"]).await;
            assert!(p.contains("jobs_by_state"), "{state:?}: {p}");
        }
        let p = plan(&store, BY_KEY, &["k"]).await;
        assert!(p.contains("jobs_by_idempotency_key"), "{p}");
        // Without the term, the partial index cannot serve the lookup.
        let p = plan(
            &store,
            "SELECT * FROM jobs WHERE state = 'failed' ORDER BY id DESC LIMIT 51",
            &[],
        )
        .await;
        assert!(!p.contains("jobs_by_state"), "{p}");
        store.close().await;
    }
}
