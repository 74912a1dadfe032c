//! The one writer of the SQLite store: a thread that owns the only
//! read-write connection (rusqlite) and applies write operations sent to it
//! over a channel, with **group commit**. Whatever arrives while a
//! transaction is being written goes into the next one, so N concurrent
//! callers cost one `BEGIN IMMEDIATE ... COMMIT` instead of N, and no two
//! connections ever compete for SQLite's write lock (no busy back-off).
//! Each caller waits for its own acknowledgement, which is sent only after
//! the transaction that holds its operation committed: a write returns when
//! it is durable; batching shares the commit, it never skips it.
//!
//! A batch costs one hop to the writer's thread and back, however many
//! statements it runs: the statements are executed synchronously on the
//! thread, each a cached prepared statement over one row, in the order the
//! operations arrived. (Through sqlx, every statement was a round trip to
//! its connection's thread; batches were grouped into multi-row queries to
//! save hops. Here a plain statement per row is cheaper, and simpler.)
//!
//! If a batch fails (any statement, or the commit), it is rolled back and its
//! operations are retried one per transaction, so one bad operation fails
//! only its own caller and every caller gets the error of its own operation.
//!
//! Checkpoints (copying the WAL back into the database file, where the
//! fsyncs of `synchronous = NORMAL` happen) run on a second thread with its
//! own connection, not in the writer's commits: SQLite's automatic
//! checkpoint runs inside the commit that crosses its threshold and holds
//! every caller of that batch for the copy and both fsyncs (tens of
//! milliseconds on a slow disk). The checkpointer runs a `PASSIVE`
//! checkpoint, which never waits for the writer or for readers, a short
//! while after commits happened.
//!
//! SQLite starts the WAL again from its beginning only when a write
//! transaction begins with every frame copied back. Under a steady load the
//! writer always has appended frames the last checkpoint did not see, so the
//! WAL would grow without end (595 MB after 10 s of pooled HTTP load, and
//! every page lookup scans its index). Once the WAL holds more than
//! its restart threshold ([`WalLimits`]; `store.wal_restart`, 64 MiB by
//! default), the checkpointer copies more often, and after a
//! pass that copied all it saw it asks the writer to copy the rest itself
//! between two batches, when no write waits or at most [`RESTART_WAIT`]
//! later (the frames of a few milliseconds, and the fsyncs):
//! with no write in flight that copy is whole, and the next transaction
//! restarts the WAL, which `journal_size_limit` then truncates to twice
//! the threshold.
//!
//! The checkpointer's request depends on its passes keeping up; on a
//! machine where it is starved of CPU they never copy all they saw, and it
//! would never ask (the WAL reached 84 MB with a 4 MiB threshold while two
//! builds shared the cores). So the writer also counts the WAL's pages
//! after each of its commits (SQLite's WAL hook), and once they pass twice
//! the threshold ([`WalLimits::force_pages`]) it copies the rest itself
//! after that commit, whatever the checkpointer did: the WAL never grows
//! much past twice its threshold unless a reader holds an old snapshot.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
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
/// Prepared statements the writer keeps (it uses 12).
const STATEMENT_CACHE: usize = 32;
/// How long after a commit the checkpointer copies the WAL back, at most.
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(200);
/// WAL pages after which a checkpoint that could not copy everything
/// (readers on old snapshots) is logged.
const WAL_PAGES_WARN: i64 = 50_000;
/// The WAL size past which the WAL is restarted from its beginning, unless
/// the config says otherwise (`store.wal_restart`): the checkpointer copies
/// every [`CHECKPOINT_PERIOD_BUSY`] and asks the writer to copy the rest.
///
/// Each restart holds every write for the writer's copy and its two syncs
/// (tens of milliseconds on a virtual disk), so the threshold sets how often
/// writes stall: at 16 MiB, 36-38 restarts per 10 s of pooled HTTP load here
/// (1.1 s of the writer's time in syncs), at 64 MiB 13-15 (0.4-0.6 s; p99
/// 54-68 ms against 63-89), at 256 MiB 3-4 (0.2-0.3 s), whose WAL of up to
/// 256 MiB a crash recovery would read whole (docs/design/job-store.md).
pub const DEFAULT_WAL_RESTART: u64 = 64 * 1024 * 1024;

/// When the WAL restarts, and how much of its file is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WalLimits {
    /// WAL pages past which it is restarted.
    pub restart_pages: i64,
    /// WAL pages past which the writer copies the rest itself after its
    /// commit, without waiting for the checkpointer to ask: twice
    /// `restart_pages`.
    pub force_pages: i64,
    /// The size the WAL file is truncated to when it restarts (bytes):
    /// twice the threshold, so that a WAL restarted before it reached this
    /// keeps its file (and blocks), and the frames after a restart
    /// overwrite blocks the file has rather than allocating new ones.
    pub size_limit: i64,
}

impl WalLimits {
    /// The limits of a restart threshold of `bytes`, in pages of
    /// `page_size` bytes (at least one page).
    pub(super) fn new(bytes: u64, page_size: u64) -> Self {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let page = i64::try_from(page_size.max(512)).unwrap_or(4096);
        let restart_pages = (bytes / page).max(1);
        Self {
            restart_pages,
            force_pages: restart_pages.saturating_mul(2),
            size_limit: bytes.saturating_mul(2),
        }
    }
}

/// How often the checkpointer copies while the WAL is past its restart
/// threshold (so that the rest the writer copies is short).
const CHECKPOINT_PERIOD_BUSY: Duration = Duration::from_millis(5);
/// How long the writer waits for a moment with no write waiting before it
/// copies the rest of a long WAL anyway (the copy and its fsyncs hold the
/// writes that wait).
const RESTART_WAIT: Duration = Duration::from_millis(250);
/// How long a forced copy waits for a checkpointer pass that holds the
/// checkpoint lock to end, at most (the checkpointer starts no new pass
/// meanwhile).
const FORCED_COPY_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    /// Pages in the WAL after the last commit on this thread: set by
    /// [`note_wal_pages`], SQLite's WAL hook on the writer's connection,
    /// which runs in the writer thread's commits.
    static WAL_PAGES: Cell<i64> = const { Cell::new(0) };
}

/// The writer connection's WAL hook: SQLite calls it after each commit
/// with the pages in the WAL (registering it also turns off the automatic
/// checkpoint, which the writer does not use).
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(i64::from(pages)));
    Ok(())
}
/// The database file grows by this much at a time (bytes): see
/// [`grow_in_chunks`].
pub(super) const DB_CHUNK: i32 = 8 * 1024 * 1024;

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

/// The start of an attempt, encoded.
#[derive(Debug)]
pub(super) struct StartRow {
    pub n: i64,
    pub node: String,
    pub at: i64,
    pub event: EventRow,
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
        /// Claimed in the same write: the job is inserted `running`, with
        /// its first attempt started (no `queued` row to rewrite).
        start: Option<StartRow>,
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
        /// The attempt's last events, written before its end (the job's
        /// row is updated once for both).
        events: Vec<EventRow>,
        /// The last progress and result among `events`.
        progress: Option<String>,
        result: Option<String>,
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
    /// A `store_meta` row, unless the name has one already.
    ClaimMeta {
        name: &'static str,
        value: String,
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
            Op::ClaimMeta { .. } => "claim store meta",
        }
    }

    fn event_count(&self) -> usize {
        match self {
            Op::AppendEvents { events, .. } => events.len(),
            Op::CompleteAttempt { events, .. } => events.len() + 1,
            Op::InsertJob { start, .. } => 1 + usize::from(start.is_some()),
            Op::SetPid { .. } | Op::ClaimMeta { .. } => 0,
            _ => 1,
        }
    }
}

/// What an operation did (a refusal is not an error: it wrote nothing and
/// did not spoil its batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Done,
    /// `InsertJob`: the idempotency key names another job (nothing was
    /// inserted, nothing started).
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

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Op(op, _) => f.debug_tuple("Op").field(&op.name()).finish(),
            Msg::Close(_) => f.write_str("Close"),
        }
    }
}

/// The handle callers write through. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::Sender<Msg>,
}

fn closed(op: &'static str) -> StoreError {
    StoreError::WriterStopped { op }
}

fn failed(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Write { op, source }
}

/// Where the writer's connection opens: a file, or the named shared-cache
/// in-memory database the readers (sqlx) use.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub path: std::path::PathBuf,
    pub memory: bool,
}

impl WriterHandle {
    /// Opens the writer's connection and starts its thread; it owns the
    /// connection until [`WriterHandle::close`] or until every handle is
    /// dropped.
    pub(super) async fn spawn(
        target: Target,
        retention: EventRetention,
        wal_restart: u64,
        with_checkpointer: bool,
    ) -> Result<Self, StoreError> {
        let (conn, checkpointer, limits) = tokio::task::spawn_blocking(move || {
            let (conn, limits) = open(&target, wal_restart)?;
            let checkpointer = if target.memory || !with_checkpointer {
                None
            } else {
                Some(Checkpointer::start(&target, limits)?)
            };
            Ok::<_, StoreError>((conn, checkpointer, limits))
        })
        .await
        .map_err(|e| StoreError::WriterStart(e.to_string()))??;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            // At most 15 bytes: the name the kernel keeps (top, ps, perf).
            .name("tsb-store-write".into())
            .spawn(move || {
                Writer {
                    conn,
                    retention,
                    rx,
                    checkpointer,
                    limits,
                    restart_asked: None,
                }
                .run()
            })
            .map_err(|e| StoreError::WriterStart(e.to_string()))?;
        Ok(Self { tx })
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

/// Opens the read-write connection (the schema is migrated already), with
/// the WAL limits of a `wal_restart`-byte threshold in its page size.
fn open(target: &Target, wal_restart: u64) -> Result<(Connection, WalLimits), StoreError> {
    let op = "open the writer";
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if target.memory {
        flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
    }
    let conn = Connection::open_with_flags(&target.path, flags).map_err(failed(op))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(failed(op))?;
    // No automatic checkpoint in the writer's commits: the checkpointer
    // thread does them (see the module's documentation).
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(failed(op))?;
    let limits = WalLimits::new(wal_restart, page_size.unsigned_abs());
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {};",
        limits.size_limit
    ))
    .map_err(failed(op))?;
    if !target.memory {
        // Set by the migrating connection already (it persists in the
        // file); a writer that finds another mode must not write.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(failed(op))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::WriterStart(format!(
                "the journal mode is {mode}, not wal"
            )));
        }
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if !target.memory {
        grow_in_chunks(&conn, op)?;
        // After `wal_autocheckpoint = 0`, which would unset it.
        conn.wal_hook(Some(note_wal_pages));
    }
    Ok((conn, limits))
}

/// Makes `conn` grow the database file [`DB_CHUNK`] at a time
/// (`SQLITE_FCNTL_CHUNK_SIZE`; it applies to this connection's handle of
/// the file, so both connections that copy the WAL into it set it).
///
/// A checkpoint that appends pages to a file of the exact size changes the
/// file's size and allocates its blocks, so each `fdatasync` of the file
/// also commits the file system's journal (ext4: a second flush of the
/// disk's cache, a few milliseconds on a virtual disk). Grown a chunk at a
/// time (SQLite writes a byte into each new block, so the blocks are real,
/// not unwritten extents), the file keeps its size for thousands of jobs
/// and the syncs of the checkpoints write the data only. That matters most
/// to the copy the writer itself makes before the WAL restarts: every
/// write waits for it. The file is up to one chunk larger than its pages.
fn grow_in_chunks(conn: &Connection, op: &'static str) -> Result<(), StoreError> {
    let mut chunk: std::ffi::c_int = DB_CHUNK;
    // SAFETY: `conn` is open and used by this thread only; the file control
    // reads one `int` through the pointer, during the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_CHUNK_SIZE,
            (&raw mut chunk).cast(),
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(StoreError::Write {
            op,
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), None),
        })
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
    /// Adds the operation of `msg` (not a `Close`).
    fn push(&mut self, msg: Msg) {
        if let Msg::Op(op, ack) = msg {
            self.events += op.event_count();
            self.ops.push(*op);
            self.acks.push(ack);
        }
    }
}

struct Writer {
    conn: Connection,
    retention: EventRetention,
    rx: mpsc::Receiver<Msg>,
    /// `None` for an in-memory store (no WAL).
    checkpointer: Option<Checkpointer>,
    limits: WalLimits,
    /// When the checkpointer asked for the rest of the WAL to be copied.
    restart_asked: Option<Instant>,
}

/// What the writer and the checkpointer thread share.
#[derive(Default)]
struct CheckpointState {
    /// Commits so far (written by the writer).
    commits: AtomicU64,
    /// Set by the checkpointer: the WAL is past its restart threshold and
    /// its last pass copied all it saw; the writer copies the rest and
    /// clears it (the checkpointer does not copy meanwhile).
    restart: AtomicBool,
    /// Set when the writer closes.
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The checkpointer thread: a `PASSIVE` checkpoint on its own connection
/// at most [`CHECKPOINT_PERIOD`] after commits happened.
struct Checkpointer {
    state: Arc<CheckpointState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(target: &Target, limits: WalLimits) -> Result<Self, StoreError> {
        let op = "open the checkpointer";
        let conn = Connection::open_with_flags(
            &target.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(failed(op))?;
        // Its checkpoints never wait for a lock (PASSIVE); the timeout
        // only covers opening the WAL index while the writer resets it.
        conn.busy_timeout(Duration::from_secs(1))
            .map_err(failed(op))?;
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(failed(op))?;
        grow_in_chunks(&conn, op)?;
        let state = Arc::new(CheckpointState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("tsb-store-ckpt".into())
            .spawn(move || checkpoint_loop(&conn, &shared, limits))
            .map_err(|e| StoreError::WriterStart(e.to_string()))?;
        Ok(Self {
            state,
            thread: Some(thread),
        })
    }

    fn committed(&self) {
        self.state.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the writer should copy the rest of the WAL now: the
    /// checkpointer waits until [`Checkpointer::rest_copied`].
    fn restart_wanted(&self) -> bool {
        self.state.restart.load(Ordering::Acquire)
    }

    fn rest_copied(&self) {
        self.state.restart.store(false, Ordering::Release);
    }

    /// Takes the WAL copy from the checkpointer: it starts no pass until
    /// [`Checkpointer::rest_copied`].
    fn claim_the_copy(&self) {
        self.state.restart.store(true, Ordering::Release);
    }

    /// Stops the thread after a last checkpoint and waits for it.
    fn stop(&mut self) {
        if let Ok(mut stop) = self.state.stop.lock() {
            *stop = true;
        }
        self.state.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `PRAGMA wal_checkpoint(PASSIVE)` answered.
struct Checkpointed {
    /// 1 if another checkpoint held the lock (nothing was done).
    busy: i64,
    /// Frames in the WAL.
    log: i64,
    /// Frames copied into the database file so far.
    copied: i64,
}

/// A `PASSIVE` checkpoint on `conn`: it never waits for the writer or for
/// readers, and copies what they allow.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<Checkpointed> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Checkpointed {
            busy: r.get(0)?,
            log: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

fn checkpoint_loop(conn: &Connection, state: &CheckpointState, limits: WalLimits) {
    let mut seen = 0;
    let mut period = CHECKPOINT_PERIOD;
    loop {
        let stopping = match state.stop.lock() {
            Ok(guard) => match state.wake.wait_timeout(guard, period) {
                Ok((stop, _)) => *stop,
                Err(_) => true,
            },
            Err(_) => true,
        };
        let commits = state.commits.load(Ordering::Relaxed);
        // While the writer has yet to copy the rest, a pass of ours would
        // only make its checkpoint find the checkpoint lock taken.
        let writers_turn = state.restart.load(Ordering::Acquire) && !stopping;
        if (commits != seen || stopping) && !writers_turn {
            seen = commits;
            match passive_checkpoint(conn) {
                Ok(Checkpointed { log, copied, .. }) => {
                    if log > WAL_PAGES_WARN && copied < log {
                        tracing::warn!(
                            wal_pages = log,
                            copied,
                            "the SQLite WAL keeps growing: a reader holds an old snapshot"
                        );
                    }
                    let long = log >= limits.restart_pages;
                    period = if long {
                        CHECKPOINT_PERIOD_BUSY
                    } else {
                        CHECKPOINT_PERIOD
                    };
                    if long && copied == log {
                        state.restart.store(true, Ordering::Release);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a WAL checkpoint failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

impl Writer {
    fn run(mut self) {
        let mut next: Option<Msg> = None;
        loop {
            let first = match next.take() {
                Some(m) => m,
                None => match self.rx.blocking_recv() {
                    Some(m) => m,
                    None => break,
                },
            };
            let mut batch = Batch::default();
            match first {
                Msg::Close(done) => {
                    self.close();
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
            self.commit(batch.ops, batch.acks);
            self.maybe_copy_the_rest();
        }
        self.close();
    }

    /// Copies the rest of a long WAL when the checkpointer asks for it:
    /// while no write waits, or [`RESTART_WAIT`] after it asked; and at
    /// once, without its asking, when the WAL is past
    /// [`WalLimits::force_pages`].
    fn maybe_copy_the_rest(&mut self) {
        // (A store in memory has no WAL: its page count stays 0.)
        let pages = WAL_PAGES.with(Cell::get);
        if pages >= self.limits.force_pages {
            let c = self.checkpointer.as_ref();
            if let Some(c) = c {
                c.claim_the_copy();
            }
            self.copy_the_rest_forced(pages);
            if let Some(c) = c {
                c.rest_copied();
            }
            self.restart_asked = None;
            return;
        }
        let Some(c) = &self.checkpointer else {
            return;
        };
        if !c.restart_wanted() {
            self.restart_asked = None;
            return;
        }
        let asked = *self.restart_asked.get_or_insert_with(Instant::now);
        // The lock is normally free (the checkpointer starts no pass while
        // it waits); if not, the copy is tried again after the next commit.
        if (self.rx.is_empty() || asked.elapsed() >= RESTART_WAIT) && self.copy_the_rest() {
            c.rest_copied();
            self.restart_asked = None;
        }
    }

    /// Copies what the checkpointer has not (a `PASSIVE` checkpoint on the
    /// writer's own connection, between two transactions: nothing is
    /// appended meanwhile, so it copies everything unless a reader holds an
    /// old snapshot), so that the next transaction restarts the WAL.
    /// Returns whether the checkpoint lock was free (the copy was made).
    fn copy_the_rest(&self) -> bool {
        let started = Instant::now();
        match passive_checkpoint(&self.conn) {
            Ok(Checkpointed { busy, log, copied }) => {
                // Every write waits meanwhile: how long is worth knowing.
                tracing::debug!(
                    busy,
                    wal_pages = log,
                    copied,
                    took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "the writer copied the rest of the WAL"
                );
                busy == 0
            }
            Err(e) => {
                tracing::warn!(error = %e, "a WAL checkpoint failed");
                // Not the lock: trying again would fail the same way.
                true
            }
        }
    }

    /// [`Writer::copy_the_rest`] of a WAL of `pages` past
    /// [`WalLimits::force_pages`], with the copy claimed from the
    /// checkpointer: if a pass of its holds the checkpoint lock, waits for
    /// that pass to end (up to [`FORCED_COPY_WAIT`]; every write waits
    /// too, but the WAL is already twice as long as it should be).
    fn copy_the_rest_forced(&self, pages: i64) {
        tracing::debug!(
            wal_pages = pages,
            force_pages = self.limits.force_pages,
            "the WAL is long: the writer copies it without the checkpointer"
        );
        let started = Instant::now();
        while !self.copy_the_rest() {
            if started.elapsed() >= FORCED_COPY_WAIT {
                tracing::warn!(
                    wal_pages = pages,
                    "a checkpoint held the lock for too long: the WAL restart waits for a later commit"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn close(&mut self) {
        self.rx.close();
        if let Some(mut c) = self.checkpointer.take() {
            c.stop();
        }
        // Ops still queued get an error when their acks drop with `rx`.
        if let Err(e) = self.conn.execute_batch("PRAGMA optimize") {
            tracing::debug!(error = %e, "PRAGMA optimize failed");
        }
    }

    /// Writes `ops` in one transaction and answers every caller.
    fn commit(&mut self, ops: Vec<Op>, acks: Vec<Ack>) {
        match self.transaction(&ops) {
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
            Err(StoreError::Write {
                op: "begin",
                source: rusqlite::Error::SqliteFailure(code, message),
            }) => {
                // The write lock could not be had (another process holds
                // it past the busy timeout): nothing of the batch is at
                // fault, and one retry per operation would wait that
                // timeout again for each. Every caller gets the error.
                tracing::warn!(code = ?code, ops = ops.len(), "cannot begin a write transaction");
                for ack in acks {
                    let _ = ack.send(Err(StoreError::Write {
                        op: "begin",
                        source: rusqlite::Error::SqliteFailure(code, message.clone()),
                    }));
                }
            }
            Err(e) => {
                // Nothing of the batch was written. Retry each operation
                // alone so that only the bad one fails, with its own error.
                tracing::warn!(error = %e, ops = ops.len(), "a group commit failed; writing its operations one by one");
                for (op, ack) in ops.into_iter().zip(acks) {
                    let r = self
                        .transaction(std::slice::from_ref(&op))
                        .map(|a| a.first().copied().unwrap_or(Applied::Done));
                    let _ = ack.send(r);
                }
            }
        }
    }

    /// Writes `ops` in one `BEGIN IMMEDIATE` transaction (IMMEDIATE: the
    /// write lock is taken now, not at the first write, where a deferred
    /// transaction that must upgrade can fail with BUSY at once). On an
    /// error it is rolled back.
    ///
    /// `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK` are cached prepared
    /// statements like the rest: rusqlite's `Transaction` runs them through
    /// `execute_batch`, which parses and compiles them for every batch
    /// (about 5 % of the writer's samples under pooled HTTP load, perf).
    fn transaction(&mut self, ops: &[Op]) -> Result<Vec<Applied>, StoreError> {
        let conn = &self.conn;
        run_cached(conn, "BEGIN IMMEDIATE").map_err(failed("begin"))?;
        let written = apply_all(conn, ops, self.retention).and_then(|applied| {
            run_cached(conn, "COMMIT").map_err(failed("commit"))?;
            Ok(applied)
        });
        match written {
            Ok(applied) => {
                if let Some(c) = &self.checkpointer {
                    c.committed();
                }
                Ok(applied)
            }
            Err(e) => {
                // Still open (a statement failed, or the commit did):
                // nothing of the batch stays.
                if !conn.is_autocommit()
                    && let Err(r) = run_cached(conn, "ROLLBACK")
                {
                    tracing::warn!(error = %r, "cannot roll back a failed write transaction");
                }
                Err(e)
            }
        }
    }
}

/// Runs a statement without parameters or rows (a transaction's
/// `BEGIN`/`COMMIT`/`ROLLBACK`) from the connection's statement cache.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Applies `ops` in order inside the open transaction.
fn apply_all(
    conn: &Connection,
    ops: &[Op],
    retention: EventRetention,
) -> Result<Vec<Applied>, StoreError> {
    let mut applied = Vec::with_capacity(ops.len());
    for op in ops {
        applied.push(apply(conn, op, retention).map_err(failed(op.name()))?);
    }
    Ok(applied)
}

const INSERT_EVENT: &str = "INSERT INTO events (job_id, seq, ts, data) VALUES (?1, ?2, ?3, ?4)";

fn insert_event(tx: &Connection, id: &str, e: &EventRow) -> rusqlite::Result<()> {
    tx.prepare_cached(INSERT_EVENT)?
        .execute(params![id, e.seq, e.ts, e.data])?;
    Ok(())
}

/// Inserts `events` of job `id` and deletes the middle of its stream past
/// the retention: the last `seq` written, if any.
fn insert_events(
    tx: &Connection,
    id: &str,
    events: &[EventRow],
    retention: EventRetention,
) -> rusqlite::Result<Option<i64>> {
    let Some(last) = events.last().map(|e| e.seq) else {
        return Ok(None);
    };
    for e in events {
        insert_event(tx, id, e)?;
    }
    let EventRetention { head, tail } = retention;
    if last as u64 > head + tail {
        tx.prepare_cached("DELETE FROM events WHERE job_id = ?1 AND seq > ?2 AND seq <= ?3")?
            .execute(params![id, head as i64, last - tail as i64])?;
    }
    Ok(Some(last))
}

/// Applies one operation inside the batch's transaction. Refusals (a key
/// that names another job, a claim of a job that is not queued) write
/// nothing and are answered, not raised.
fn apply(tx: &Connection, op: &Op, retention: EventRetention) -> rusqlite::Result<Applied> {
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
            start,
        } => {
            // The key's unique index is partial (keyed jobs only): the
            // conflict target names its condition. With `start`, the row
            // is inserted running, its first attempt in its log.
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO jobs (id, workflow, state, priority, params, request, \
                     idempotency_key, max_attempts, created_at, last_seq, attempts, node, \
                     started_at, attempt_log) \
                     VALUES (?1, ?2, CASE WHEN ?10 IS NULL THEN 'queued' ELSE 'running' END, \
                     ?3, ?4, ?5, ?6, ?7, ?8, MAX(?9, COALESCE(?12, 0)), COALESCE(?10, 0), ?11, ?13, \
                     CASE WHEN ?10 IS NULL THEN NULL \
                     ELSE json_array(json_array(?10, ?13, NULL, NULL, NULL, NULL, NULL, ?11, NULL)) END) \
                     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
                )?
                .execute(params![
                    id,
                    workflow,
                    priority,
                    params,
                    request,
                    key,
                    max_attempts,
                    created_at,
                    event.seq,
                    start.as_ref().map(|s| s.n),
                    start.as_ref().map(|s| s.node.as_str()),
                    start.as_ref().map(|s| s.event.seq),
                    start.as_ref().map(|s| s.at),
                ])?;
            if inserted == 0 {
                return Ok(Applied::KeyTaken);
            }
            insert_event(tx, id, event)?;
            if let Some(s) = start {
                insert_event(tx, id, &s.event)?;
            }
        }
        Op::StartAttempt {
            id,
            n,
            node,
            at,
            event,
        } => {
            let claimed = tx
                .prepare_cached(
                    "UPDATE jobs SET state = 'running', attempts = ?2, node = ?3, \
                     started_at = COALESCE(started_at, ?4), last_seq = MAX(last_seq, ?5), \
                     attempt_log = json_insert(COALESCE(attempt_log, '[]'), '$[#]', \
                     json_array(?2, ?4, NULL, NULL, NULL, NULL, NULL, ?3, NULL)) \
                     WHERE id = ?1 AND state = 'queued'",
                )?
                .execute(params![id, n, node, at, event.seq])?;
            if claimed == 0 {
                return Ok(Applied::NotQueued);
            }
            insert_event(tx, id, event)?;
        }
        // An attempt is the last entry of its job's log while it runs (one
        // attempt runs at a time, and a start appends): an update of an
        // attempt names its `n` and changes the last entry only if it is
        // that attempt.
        Op::SetPid { id, n, pid } => {
            tx.prepare_cached(
                "UPDATE jobs SET process_id = ?3, attempt_log = CASE \
                 WHEN attempt_log ->> '$[#-1][0]' = ?2 \
                 THEN json_set(attempt_log, '$[#-1][6]', ?3) ELSE attempt_log END \
                 WHERE id = ?1",
            )?
            .execute(params![id, n, pid])?;
        }
        Op::AppendEvents {
            id,
            events,
            progress,
            result,
        } => {
            let Some(last) = insert_events(tx, id, events, retention)? else {
                return Ok(Applied::Done);
            };
            tx.prepare_cached(
                "UPDATE jobs SET last_seq = MAX(last_seq, ?2), \
                 progress = COALESCE(?3, progress), result = COALESCE(?4, result) WHERE id = ?1",
            )?
            .execute(params![id, last, progress, result])?;
        }
        Op::CompleteAttempt {
            id,
            events,
            progress,
            result,
            end,
            finish,
            event,
        } => {
            insert_events(tx, id, events, retention)?;
            // A re-queue (`finish` None) keeps the job's finish columns.
            // The result: the end's own, else the last of `events`, else
            // the one stored (an append's rule, then a finish's).
            let fin = finish.is_some();
            tx.prepare_cached(
                "UPDATE jobs SET exit_code = ?2, signal = ?3, process_id = COALESCE(?4, process_id), \
                 stdout = ?5, stderr = ?6, stdout_dropped = ?7, stderr_dropped = ?8, \
                 stdout_truncated = ?9, stderr_truncated = ?10, peak_memory = ?11, cpu_ms = ?12, \
                 wall_ms = ?13, last_seq = MAX(last_seq, ?14), node = NULL, state = ?15, \
                 reason = CASE WHEN ?16 THEN ?17 ELSE reason END, \
                 result = COALESCE(CASE WHEN ?16 THEN ?18 END, ?27, result), \
                 progress = COALESCE(?26, progress), \
                 error = CASE WHEN ?16 THEN ?19 ELSE error END, \
                 finished_at = CASE WHEN ?16 THEN ?20 ELSE finished_at END, \
                 not_before = CASE WHEN ?16 THEN NULL ELSE ?21 END, \
                 attempt_log = CASE WHEN attempt_log ->> '$[#-1][0]' = ?22 \
                 THEN json_set(attempt_log, '$[#-1][2]', ?23, '$[#-1][3]', ?24, \
                 '$[#-1][4]', ?2, '$[#-1][5]', ?3, \
                 '$[#-1][6]', COALESCE(?4, attempt_log ->> '$[#-1][6]'), '$[#-1][8]', ?25) \
                 ELSE attempt_log END \
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                end.exit_code,
                end.signal,
                end.pid,
                end.stdout,
                end.stderr,
                end.stdout_dropped,
                end.stderr_dropped,
                end.stdout_truncated,
                end.stderr_truncated,
                end.peak_memory,
                end.cpu_ms,
                end.wall_ms,
                event.seq,
                finish.as_ref().map_or("queued", |f| f.state),
                fin,
                finish.as_ref().and_then(|f| f.reason),
                finish.as_ref().and_then(|f| f.result.as_deref()),
                finish.as_ref().and_then(|f| f.error.as_deref()),
                finish.as_ref().map(|f| f.finished_at),
                end.not_before,
                end.n,
                end.finished_at,
                end.reason,
                end.error,
                progress,
                result
            ])?;
            insert_event(tx, id, event)?;
        }
        Op::FinishJob { id, finish, event } => {
            tx.prepare_cached(
                "UPDATE jobs SET last_seq = MAX(last_seq, ?2), state = ?3, reason = ?4, \
                 result = COALESCE(?5, result), error = ?6, finished_at = ?7, node = NULL \
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                event.seq,
                finish.state,
                finish.reason,
                finish.result,
                finish.error,
                finish.finished_at
            ])?;
            insert_event(tx, id, event)?;
        }
        Op::ClaimMeta { name, value } => {
            tx.prepare_cached(
                "INSERT INTO store_meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            )?
            .execute(params![name, value])?;
        }
    }
    Ok(Applied::Done)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The SQL of every statement the connection holds prepared (its
    /// statement cache: rusqlite finalizes the others after their use).
    fn prepared_sql(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        // SAFETY: `conn` is open and used by this thread only; each pointer
        // is one SQLite just returned for it, read before the next call and
        // while nothing finalizes a statement.
        unsafe {
            let db = conn.handle();
            let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let sql = rusqlite::ffi::sqlite3_sql(stmt);
                if !sql.is_null() {
                    out.push(std::ffi::CStr::from_ptr(sql).to_string_lossy().into_owned());
                }
                stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
            }
        }
        out
    }

    fn writer(dir: &tempfile::TempDir) -> Writer {
        let target = Target {
            path: dir.path().join("writer.db"),
            memory: false,
        };
        let (conn, limits) = open(&target, DEFAULT_WAL_RESTART).unwrap();
        conn.execute_batch(
            "CREATE TABLE store_meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
        )
        .unwrap();
        let (_tx, rx) = mpsc::channel(1);
        Writer {
            conn,
            retention: EventRetention::default(),
            rx,
            checkpointer: None,
            limits,
            restart_asked: None,
        }
    }

    fn claim(name: &'static str) -> Op {
        Op::ClaimMeta {
            name,
            value: "v".into(),
        }
    }

    /// A transaction's `BEGIN IMMEDIATE` and `COMMIT` stay prepared from one
    /// batch to the next, like its other statements (no parse per batch).
    #[test]
    fn begin_and_commit_stay_prepared_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(&dir);
        for name in ["a", "b", "c"] {
            assert_eq!(w.transaction(&[claim(name)]).unwrap(), vec![Applied::Done]);
        }
        let sql = prepared_sql(&w.conn);
        for wanted in ["BEGIN IMMEDIATE", "COMMIT"] {
            assert!(
                sql.iter().any(|s| s == wanted),
                "{wanted} not kept: {sql:?}"
            );
        }
    }

    /// A batch that fails is rolled back whole (the connection is out of
    /// its transaction, nothing of the batch is written) and the next one
    /// commits.
    #[test]
    fn a_failed_batch_is_rolled_back_and_the_next_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(&dir);
        // No `jobs` table here: the second operation fails.
        let bad = Op::SetPid {
            id: "j".into(),
            n: 1,
            pid: 7,
        };
        assert!(w.transaction(&[claim("a"), bad]).is_err());
        assert!(w.conn.is_autocommit(), "still in the failed transaction");
        let count = |w: &Writer| -> i64 {
            w.conn
                .query_row("SELECT count(*) FROM store_meta", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&w), 0, "the batch's first operation was rolled back");
        w.transaction(&[claim("a")]).unwrap();
        assert_eq!(count(&w), 1);
    }
}
