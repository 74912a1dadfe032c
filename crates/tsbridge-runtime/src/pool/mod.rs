//! Warm worker pools (SPEC §3): long-lived Node processes running the worker
//! host (`js/worker-host.mjs`, embedded as [`WORKER_HOST_JS`]) that load a
//! workflow's module once and serve one job at a time over Node's IPC channel.
//!
//! A [`Pool`] is a handle to one owner task (`dispatcher`) that holds every
//! worker's state and linearizes job requests, worker reports and timers
//! through one `select!`; each worker is its own async state machine
//! (`worker`) over a process started by a [`Launcher`] (the engine in
//! production: `launch`). The protocol, the lifecycle, recycling,
//! cancellation and crash handling are described in docs/design/pool.md.

mod config;
mod dispatcher;
mod errors;
mod executor;
mod host_script;
mod launch;
mod protocol;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tsbridge_proto::{ChildEvent, JobId, WorkerId};

pub use config::{PoolConfig, WorkerSandbox, WorkerSpec};
pub use errors::{
    HostScriptError, PoolConfigError, PoolJobError, PoolStartError, WorkerExit, WorkerStartError,
};
pub use executor::PoolExecutor;
pub use host_script::{HostFile, HostScript, WORKER_HOST_JS};
pub use launch::EngineLauncher;
pub use protocol::AbortReason;
pub use worker::{HostLink, Launcher, LinkError, WorkerIo};

use dispatcher::{Command, Dispatcher};

/// What a pooled job reports while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolEvent {
    /// A worker took the job (sent before anything else of the job).
    Started { worker: WorkerId, pid: Option<u32> },
    /// Progress, a log line (`ctx.log`, `console.*`), or stray output.
    Child(ChildEvent),
}

/// Where a running job's events go. Bounded: a slow consumer slows the
/// worker's channel, nothing is dropped.
pub type EventSink = mpsc::Sender<PoolEvent>;

/// One job for a pool.
#[derive(Debug, Clone)]
pub struct PoolJob {
    pub job_id: JobId,
    /// The workflow name: picks a named export (camelCase, then exact) before
    /// the default export, and is passed to the handler as `ctx.workflow`.
    pub workflow: String,
    pub params: Value,
    /// Wall timeout of the run on a worker (not counting the wait for one);
    /// the pool's `job_timeout` is the ceiling.
    pub timeout: Option<Duration>,
    /// Cancelling it withdraws a waiting job, or aborts a running one
    /// (AbortSignal first, kill after the grace).
    pub cancel: CancellationToken,
}

impl PoolJob {
    pub fn new(workflow: impl Into<String>, params: Value) -> Self {
        Self {
            job_id: JobId::new(),
            workflow: workflow.into(),
            params,
            timeout: None,
            cancel: CancellationToken::new(),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How one pooled job ended.
#[derive(Debug)]
pub struct PoolOutcome {
    /// The handler's value, or why there is none.
    pub result: Result<Value, PoolJobError>,
    /// The worker that ran it (none if it never reached one).
    pub worker: Option<WorkerId>,
    pub pid: Option<u32>,
    /// Time spent waiting for a worker.
    pub queued: Duration,
    /// Time on the worker.
    pub ran: Duration,
}

impl PoolOutcome {
    pub(crate) fn failed(error: PoolJobError, queued: Duration) -> Self {
        Self {
            result: Err(error),
            worker: None,
            pid: None,
            queued,
            ran: Duration::ZERO,
        }
    }
}

/// A snapshot of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Workers starting, idle or busy (not those being retired).
    pub size: usize,
    pub idle: usize,
    pub busy: usize,
    pub starting: usize,
    /// Jobs waiting for a worker.
    pub waiting: usize,
    /// Worker processes started since the pool started.
    pub started_total: u64,
    /// Workers retired on purpose (max_jobs, max_age, idle_timeout, RSS).
    pub recycled_total: u64,
    /// Workers that died without being asked to (crash, exit, killed by a timeout or cancel).
    pub crashed_total: u64,
    /// Worker starts that failed (module load error, spawn failure, ...).
    pub start_failures_total: u64,
    /// Jobs that reached a worker and ended.
    pub jobs_total: u64,
}

/// A pool of warm workers for one workflow. Cheap to clone; when the last
/// clone is dropped the pool ends its workers at once (prefer [`Pool::shutdown`]).
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    commands: mpsc::UnboundedSender<Command>,
    stats: watch::Receiver<PoolStats>,
    next_ticket: AtomicU64,
}

impl Pool {
    /// Starts a pool whose workers run `spec` through the process engine.
    /// With `config.warmup`, returns once `min` workers are proven ready.
    pub async fn start(spec: WorkerSpec, config: PoolConfig) -> Result<Pool, PoolStartError> {
        config.validate().map_err(PoolStartError::Config)?;
        let name = spec.name.clone();
        let launcher = EngineLauncher::new(spec, &config).map_err(PoolStartError::HostScript)?;
        Self::start_with(name, Arc::new(launcher), config).await
    }

    /// Starts a pool over any [`Launcher`].
    pub async fn start_with(
        name: impl Into<String>,
        launcher: Arc<dyn Launcher>,
        config: PoolConfig,
    ) -> Result<Pool, PoolStartError> {
        config.validate().map_err(PoolStartError::Config)?;
        let name = name.into();
        let cfg = Arc::new(config);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (stats_tx, stats) = watch::channel(PoolStats::default());
        let mut dispatcher =
            Dispatcher::new(name.clone(), cfg.clone(), launcher, commands_rx, stats_tx);
        let warm = if cfg.warmup && cfg.min > 0 {
            let (tx, rx) = oneshot::channel();
            dispatcher.warm_up(tx);
            Some(rx)
        } else {
            None
        };
        tokio::spawn(dispatcher.run());
        let pool = Pool {
            inner: Arc::new(Inner {
                name,
                commands,
                stats,
                next_ticket: AtomicU64::new(1),
            }),
        };
        if let Some(rx) = warm {
            let failed = match rx.await {
                Ok(Ok(())) => None,
                Ok(Err((worker, source))) => Some(PoolStartError::Warmup { worker, source }),
                Err(_) => Some(PoolStartError::Warmup {
                    worker: WorkerId(0),
                    source: WorkerStartError::ShuttingDown,
                }),
            };
            if let Some(e) = failed {
                pool.shutdown(Duration::ZERO).await;
                return Err(e);
            }
        }
        // Without warmup the owner task brings the pool to `min` on its first tick.
        Ok(pool)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs one job on a worker (waiting for one up to the acquire timeout),
    /// sending its events to `sink` while it runs.
    pub async fn run(&self, job: PoolJob, sink: EventSink) -> PoolOutcome {
        let ticket = self.inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        let cancel = job.cancel.clone();
        let (reply, mut rx) = oneshot::channel();
        let cmd = Command::Run {
            ticket,
            job,
            sink,
            reply,
        };
        if self.inner.commands.send(cmd).is_err() {
            return PoolOutcome::failed(PoolJobError::ShuttingDown, Duration::ZERO);
        }
        let gone = || PoolOutcome::failed(PoolJobError::ShuttingDown, Duration::ZERO);
        tokio::select! {
            r = &mut rx => r.unwrap_or_else(|_| gone()),
            _ = cancel.cancelled() => {
                // Withdraw it if it still waits; a running job is aborted by
                // its worker, which watches the same token. Either way the
                // outcome comes back on `rx`.
                let _ = self.inner.commands.send(Command::Withdraw { ticket });
                rx.await.unwrap_or_else(|_| gone())
            }
        }
    }

    /// The pool as of its owner task's last step.
    pub fn stats(&self) -> PoolStats {
        *self.inner.stats.borrow()
    }

    /// Waits until `pred` holds for the stats (or the pool is gone).
    pub async fn wait_stats(&self, mut pred: impl FnMut(&PoolStats) -> bool) -> PoolStats {
        let mut rx = self.inner.stats.clone();
        let seen = rx.wait_for(|s| pred(s)).await.map(|s| *s);
        seen.unwrap_or_else(|_| *rx.borrow())
    }

    /// Drains the pool: refuses new jobs and fails waiting ones
    /// (`ShuttingDown`), lets running jobs finish for up to `grace`, then
    /// ends the workers (their jobs fail with `ShuttingDown`; each worker's
    /// tree gets TERM, the kill grace, KILL). Returns when every worker
    /// process has ended. The embedded host script is removed when the last
    /// handle is dropped.
    pub async fn shutdown(&self, grace: Duration) {
        let (done, rx) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Shutdown { grace, done })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}
