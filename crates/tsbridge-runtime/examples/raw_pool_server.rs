//! The raw limit of pooled HTTP on this machine (BENCHMARKS.md "Raw limit of
//! pooled HTTP", issue #5): the least a correct pooled sync execute needs,
//! with none of tsbridge's runtime in between, to compare tsbridge and the
//! Node fork pool against in the same run (bench/http/raw-limit.sh).
//!
//! - 4 Node workers started as tsbridge's pool starts them:
//!   `node --import <tsx loader> js/worker-host.mjs bench/http/trivial-handler.ts`,
//!   Node's IPC channel on fd 3 (`NODE_CHANNEL_FD=3`, JSON lines;
//!   docs/design/ipc.md), an empty environment but PATH and HOME;
//! - `POST /workflow/video-generation-pool/execute` (axum, as tsbridge):
//!   parse the JSON body, take an idle worker (queue when none), send the
//!   host's `run` request, collect the job's progress/log envelopes and its
//!   answer, answer `{"success":true,"data":{...}}`;
//! - `--store sqlite:PATH`: a durable insert of the job row (state running)
//!   before dispatch, and after the answer an update (state, result, last
//!   progress) plus one event row per progress/log envelope; both through
//!   ONE writer thread with group commit (what is queued when a transaction
//!   starts goes into it; WAL, synchronous = NORMAL, as tsbridge's store).
//!   The answer waits for the second commit, as tsbridge's does.
//! - `--threads N`: tokio worker threads (default 2).
//!
//! Not there on purpose (what tsbridge does beyond the minimum): no worker
//! restart, timeout, cancel, recycling, sandbox, output capture, event bus,
//! metrics, auth, request validation beyond "parameters is an object";
//! SQLite's own automatic checkpoint inside the commit (tsbridge
//! checkpoints on a second thread). The allocator is mimalloc, as
//! tsbridge's binary's (BENCHMARKS.md "Allocator").
//!
//! cargo build --release -p tsbridge-runtime --example raw_pool_server
//! raw_pool_server [--bind 127.0.0.1:8815] [--threads 2] [--workers 4]
//!                 [--store sqlite:/tmp/raw.db] [--root REPO]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rusqlite::{Connection, params};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc, oneshot};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The only workflow served.
const WORKFLOW: &str = "video-generation-pool";
/// Operations per transaction, at most (tsbridge's writer: 256).
const MAX_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
enum RawError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store failed: {0}")]
    Store(Arc<rusqlite::Error>),
    #[error("the store's writer is gone")]
    StoreGone,
    #[error("worker {pid}: {message}")]
    Worker { pid: u32, message: String },
    #[error("the pool is gone")]
    PoolGone,
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RawError {
    let what = what.into();
    move |source| RawError::Io { what, source }
}

#[derive(Debug)]
struct Args {
    bind: SocketAddr,
    threads: usize,
    workers: usize,
    store: Option<PathBuf>,
    root: PathBuf,
}

fn parse_args() -> Result<Args, RawError> {
    let mut a = Args {
        bind: SocketAddr::from(([127, 0, 0, 1], 8815)),
        threads: 2,
        workers: 4,
        store: None,
        root: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| RawError::Usage(format!("{flag} needs a value")))?;
        let bad = |_| RawError::Usage(format!("bad value for {flag}: {value}"));
        match flag.as_str() {
            "--bind" => a.bind = value.parse().map_err(|_| bad(()))?,
            "--threads" => a.threads = value.parse().map_err(|_| bad(()))?,
            "--workers" => a.workers = value.parse().map_err(|_| bad(()))?,
            "--root" => a.root = PathBuf::from(&value),
            "--store" => match value.strip_prefix("sqlite:") {
                Some(p) => a.store = Some(PathBuf::from(p)),
                None => return Err(bad(())),
            },
            _ => return Err(RawError::Usage(format!("unknown flag {flag}"))),
        }
    }
    if a.threads == 0 || a.workers == 0 {
        return Err(RawError::Usage(
            "--threads and --workers must be > 0".into(),
        ));
    }
    Ok(a)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------- workers

/// One envelope from the worker host (SPEC §2.3).
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Value,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

/// A job handed to the pool.
#[derive(Debug)]
struct PoolJob {
    job_id: String,
    params: Value,
    reply: oneshot::Sender<Result<Done, RawError>>,
}

/// A job's answer: the handler's value, and its progress/log payloads.
#[derive(Debug)]
struct Done {
    value: Value,
    events: Vec<Value>,
    pid: u32,
}

#[derive(Debug)]
struct Worker {
    pid: u32,
    next_id: u64,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
    out: Vec<u8>,
    _child: tokio::process::Child,
}

/// `fd` at [`CHILD_FD`] in the child, without close-on-exec (async-signal-safe).
fn install_at_3(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fd syscalls on fds this process owns, between fork and exec.
    unsafe {
        if fd == 3 {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(fd, 3) < 0 {
            return Err(io::Error::last_os_error());
        }
        // The worker goes when this server goes (tsbridge sets it too).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Worker {
    async fn start(root: &Path) -> Result<Self, RawError> {
        let http = root.join("bench/http");
        let loader = root.join("node_modules/tsx/dist/loader.mjs");
        let loader =
            std::fs::canonicalize(&loader).map_err(io_err(loader.display().to_string()))?;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(io_err("socketpair"))?;
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg("--import")
            .arg(format!("file://{}", loader.display()))
            .arg(root.join("js/worker-host.mjs"))
            .arg(http.join("trivial-handler.ts"))
            .current_dir(&http)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", "/tmp")
            .env("NODE_CHANNEL_FD", "3")
            .env("NODE_CHANNEL_SERIALIZATION_MODE", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: the closure only makes async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || install_at_3(theirs_fd));
        }
        let child = cmd.spawn().map_err(io_err("spawn node"))?;
        // Our copy of the child's end must go, or we never read EOF.
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        ours.set_nonblocking(true).map_err(io_err("nonblocking"))?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(io_err("unix stream"))?;
        let (r, w) = stream.into_split();
        let mut worker = Self {
            pid,
            next_id: 0,
            reader: BufReader::with_capacity(64 * 1024, r),
            writer: w,
            line: String::new(),
            out: Vec::with_capacity(1024),
            _child: child,
        };
        // The first pong means "module loaded, serving".
        worker
            .exchange(json!({"op": "ping"}), &mut Vec::new())
            .await?;
        Ok(worker)
    }

    /// One request and its answer; the progress/log payloads of the same id
    /// (they travel on the same socket, before the answer) go to `events`.
    async fn exchange(
        &mut self,
        payload: Value,
        events: &mut Vec<Value>,
    ) -> Result<Value, RawError> {
        self.next_id += 1;
        let id = self.next_id;
        self.out.clear();
        serde_json::to_writer(
            &mut self.out,
            &json!({"id": id, "type": "request", "payload": payload, "timestamp": now_ms()}),
        )?;
        self.out.push(b'\n');
        let pid = self.pid;
        self.writer
            .write_all(&self.out)
            .await
            .map_err(|e| RawError::Worker {
                pid,
                message: e.to_string(),
            })?;
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_line(&mut self.line)
                .await
                .map_err(|e| RawError::Worker {
                    pid,
                    message: e.to_string(),
                })?;
            if n == 0 {
                return Err(RawError::Worker {
                    pid,
                    message: "channel closed".into(),
                });
            }
            let env: Envelope = serde_json::from_str(&self.line)?;
            if env.id.as_u64() != Some(id) {
                if env.kind == "log" && env.payload.get("fatal").is_some() {
                    return Err(RawError::Worker {
                        pid,
                        message: env.payload.to_string(),
                    });
                }
                continue;
            }
            match env.kind.as_str() {
                "progress" | "log" => events.push(env.payload),
                "response" => return Ok(env.payload),
                "error" => {
                    return Err(RawError::Worker {
                        pid,
                        message: env.payload.to_string(),
                    });
                }
                _ => {}
            }
        }
    }

    async fn run(&mut self, job: &PoolJob) -> Result<Done, RawError> {
        let mut events = Vec::with_capacity(4);
        let payload =
            json!({"op": "run", "jobId": job.job_id, "workflow": WORKFLOW, "params": job.params});
        let mut answer = self.exchange(payload, &mut events).await?;
        let value = answer
            .get_mut("value")
            .map(Value::take)
            .unwrap_or(Value::Null);
        Ok(Done {
            value,
            events,
            pid: self.pid,
        })
    }
}

/// Serves jobs one at a time: whichever worker is idle takes the next job.
async fn serve_worker(mut w: Worker, jobs: Arc<Mutex<mpsc::Receiver<PoolJob>>>) {
    loop {
        let job = jobs.lock().await.recv().await;
        let Some(job) = job else { return };
        let out = w.run(&job).await;
        let dead = matches!(out, Err(RawError::Worker { .. }));
        if let Err(e) = &out {
            eprintln!("raw_pool_server: job {}: {e}", job.job_id);
        }
        let _ = job.reply.send(out);
        if dead {
            // A bench server: no restart; the other workers carry on.
            return;
        }
    }
}

// ---------------------------------------------------------------- store

#[derive(Debug)]
enum Op {
    Insert {
        id: String,
        params: String,
        request: String,
        at: i64,
    },
    Finish {
        id: String,
        result: String,
        progress: Option<String>,
        events: Vec<String>,
        at: i64,
    },
}

#[derive(Debug)]
struct Queued {
    op: Op,
    ack: oneshot::Sender<Result<(), RawError>>,
}

#[derive(Clone, Debug)]
struct Store {
    tx: mpsc::Sender<Queued>,
}

impl Store {
    fn open(path: &Path) -> Result<Self, RawError> {
        let conn = Connection::open(path)?;
        // tsbridge's writer: WAL, synchronous = NORMAL (store/sqlite/writer.rs).
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(RawError::Usage(format!("journal_mode is {mode}, not wal")));
        }
        // The schema of tsbridge's store, reduced to the columns written here
        // (benches/store.rs bare_rusqlite; migrations/sqlite/0004).
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY NOT NULL, workflow TEXT NOT NULL,
                state TEXT NOT NULL, params TEXT NOT NULL, request TEXT NOT NULL,
                created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
                result TEXT, progress TEXT, last_seq INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id) WHERE state <> 'succeeded';
             CREATE INDEX IF NOT EXISTS jobs_by_workflow ON jobs (workflow, id);
             CREATE TABLE IF NOT EXISTS events (job_id TEXT NOT NULL, seq INTEGER NOT NULL,
                ts INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, seq)) WITHOUT ROWID;",
        )?;
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("raw-store-writer".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(io_err("writer thread"))?;
        Ok(Self { tx })
    }

    /// Queues `op` and waits until the transaction holding it committed.
    async fn write(&self, op: Op) -> Result<(), RawError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Queued { op, ack })
            .await
            .map_err(|_| RawError::StoreGone)?;
        done.await.map_err(|_| RawError::StoreGone)?
    }
}

/// The writer thread: group commit (whatever is queued when a transaction
/// starts goes into it, up to [`MAX_BATCH`]), then every caller's ack.
fn write_loop(conn: Connection, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let outcome = apply(&conn, &batch).map_err(Arc::new);
        if outcome.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for q in batch.drain(..) {
            let _ = q.ack.send(outcome.clone().map_err(RawError::Store));
        }
    }
}

fn apply(conn: &Connection, batch: &[Queued]) -> Result<(), rusqlite::Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for q in batch {
        match &q.op {
            Op::Insert {
                id,
                params,
                request,
                at,
            } => {
                conn.prepare_cached(
                    "INSERT INTO jobs (id, workflow, state, params, request, created_at, started_at, last_seq)
                     VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?5, 0)",
                )?
                .execute(params![id, WORKFLOW, params, request, at])?;
            }
            Op::Finish {
                id,
                result,
                progress,
                events,
                at,
            } => {
                let mut ev = conn.prepare_cached(
                    "INSERT INTO events (job_id, seq, ts, data) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (seq, data) in (1_i64..).zip(events) {
                    ev.execute(params![id, seq, at, data])?;
                }
                let last = i64::try_from(events.len()).unwrap_or(i64::MAX);
                conn.prepare_cached(
                    "UPDATE jobs SET state = 'succeeded', finished_at = ?2, result = ?3, progress = ?4,
                     last_seq = ?5 WHERE id = ?1",
                )?
                .execute(params![id, at, result, progress, last])?;
            }
        }
    }
    conn.execute_batch("COMMIT")
}

// ---------------------------------------------------------------- http

#[derive(Debug)]
struct App {
    jobs: mpsc::Sender<PoolJob>,
    store: Option<Store>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "error": {"message": message}})),
    )
        .into_response()
}

async fn execute(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    if name != WORKFLOW {
        return error(StatusCode::NOT_FOUND, "no such workflow");
    }
    let mut req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let params = match req.get_mut("parameters").map(Value::take) {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return error(StatusCode::BAD_REQUEST, "parameters must be an object"),
    };
    match run(&app, params, &body).await {
        Ok(data) => axum::Json(json!({"success": true, "data": data})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn run(app: &App, params: Value, body: &[u8]) -> Result<Value, RawError> {
    let started = Instant::now();
    let job_id = uuid::Uuid::now_v7().to_string();
    if let Some(store) = &app.store {
        store
            .write(Op::Insert {
                id: job_id.clone(),
                params: params.to_string(),
                request: String::from_utf8_lossy(body).into_owned(),
                at: now_ms(),
            })
            .await?;
    }
    let (reply, answer) = oneshot::channel();
    app.jobs
        .send(PoolJob {
            job_id: job_id.clone(),
            params,
            reply,
        })
        .await
        .map_err(|_| RawError::PoolGone)?;
    let done = answer.await.map_err(|_| RawError::PoolGone)??;
    if let Some(store) = &app.store {
        let events: Vec<String> = done.events.iter().map(Value::to_string).collect();
        store
            .write(Op::Finish {
                id: job_id.clone(),
                result: done.value.to_string(),
                progress: events.last().cloned(),
                events,
                at: now_ms(),
            })
            .await?;
    }
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(json!({
        "jobId": job_id,
        "success": true,
        "result": done.value,
        "executionTime": ms,
        "processId": done.pid,
        "exitCode": null,
        "attempts": 1,
    }))
}

async fn serve(args: Args) -> Result<(), RawError> {
    let root =
        std::fs::canonicalize(&args.root).map_err(io_err(args.root.display().to_string()))?;
    let store = args.store.as_deref().map(Store::open).transpose()?;
    let (tx, rx) = mpsc::channel(100_000);
    let rx = Arc::new(Mutex::new(rx));
    let started =
        futures::future::try_join_all((0..args.workers).map(|_| Worker::start(&root))).await?;
    for w in started {
        tokio::spawn(serve_worker(w, rx.clone()));
    }
    let app = Arc::new(App { jobs: tx, store });
    let router = Router::new()
        .route("/workflow/{name}/execute", post(execute))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(io_err(format!("bind {}", args.bind)))?;
    eprintln!(
        "raw_pool_server: {} workers, {} threads, store {:?}, on {}",
        args.workers, args.threads, args.store, args.bind
    );
    axum::serve(listener, router).await.map_err(io_err("serve"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("raw_pool_server: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raw_pool_server: runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_pool_server: {e}");
            ExitCode::FAILURE
        }
    }
}
