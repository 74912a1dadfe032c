//! Errors of the pool, one enum per operation: preparing the host script,
//! starting the pool, starting one worker, running one job. Messages are
//! lowercase; causes are in `#[source]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tsbridge_proto::WorkerId;
use tsbridge_sandbox::LimitBreach;

/// Writing (or finding) the worker host script.
#[derive(Debug, thiserror::Error)]
pub enum HostScriptError {
    #[error("cannot create a private directory for the worker host under {base:?}")]
    CreateDir {
        base: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the worker host to {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker host script {path:?} not found")]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A pool config that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    #[error("pool max must be at least 1")]
    ZeroMax,
    #[error("pool min ({min}) is larger than max ({max})")]
    MinAboveMax { min: usize, max: usize },
    #[error("pool {what} must be greater than zero")]
    Zero { what: &'static str },
}

/// [`super::Pool::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolStartError {
    #[error("invalid pool config")]
    Config(#[source] PoolConfigError),
    #[error("cannot prepare the worker host script")]
    HostScript(#[source] HostScriptError),
    #[error("warmup failed: worker {worker} did not become ready")]
    Warmup {
        worker: WorkerId,
        #[source]
        source: WorkerStartError,
    },
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ended because it hit a limit of its sandbox (the kernel's OOM kill
    /// at the memory limit, a fork refused at the pids limit, ...), with how
    /// it then ended. Told apart from a plain crash so that the job it ran
    /// ends with `ResourceLimitError` naming the limit, as in spawn mode
    /// (SPEC §5).
    Limit {
        limit: LimitBreach,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// It ended, and nothing more is known (the wait failed).
    Unknown,
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Code(c) => write!(f, "exit code {c}"),
            WorkerExit::Signal(s) => write!(f, "killed by signal {s}"),
            WorkerExit::Limit {
                limit,
                code,
                signal,
            } => {
                write!(f, "hit its {limit} limit")?;
                match (code, signal) {
                    (_, Some(s)) => write!(f, ", killed by signal {s}"),
                    (Some(c), None) => write!(f, ", exit code {c}"),
                    (None, None) => Ok(()),
                }
            }
            WorkerExit::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// One worker could not be brought to ready.
#[derive(Debug, thiserror::Error)]
pub enum WorkerStartError {
    #[error("cannot spawn the worker process")]
    Spawn(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The host could not load the module or found no handler in it.
    #[error("the worker host failed to load the module: {message}")]
    Fatal { message: String },
    /// The last error the process logged, if any, is in `last_error`.
    #[error("the worker exited before it was ready ({exit})")]
    ExitedEarly {
        exit: WorkerExit,
        last_error: Option<String>,
    },
    #[error("the worker was not ready within {0:?}")]
    ReadyTimeout(Duration),
    #[error("the pool is shutting down")]
    ShuttingDown,
}

/// Why one pooled job did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum PoolJobError {
    /// The handler threw or rejected; the worker is kept.
    #[error("handler failed: {message}")]
    Handler {
        message: String,
        /// The error's `name` (`TypeError`, ...).
        name: String,
        /// Only in dev mode.
        stack: Option<String>,
    },
    /// The handler failed after its job hit a limit of the worker's sandbox
    /// (a fork refused at the pids limit, a process of its OOM-killed): the
    /// job ends with that limit (SPEC §5: "a job that hit its pids limit
    /// and then failed ends with it too"); the worker is kept.
    #[error("the job hit its {limit} limit; handler failed: {message}")]
    LimitHit { limit: LimitBreach, message: String },
    /// The worker process died while it ran the job; it is replaced.
    #[error("worker {worker} died while running the job ({exit})")]
    WorkerCrashed { worker: WorkerId, exit: WorkerExit },
    /// The job's timeout expired. `killed`: the handler ignored its
    /// AbortSignal for the kill grace, so the worker was killed and replaced.
    #[error("job timed out after {after:?}")]
    Timeout { after: Duration, killed: bool },
    /// The job was cancelled (before or while it ran).
    #[error("job cancelled")]
    Cancelled { killed: bool },
    /// No worker became free within the acquire timeout.
    #[error("no pool worker became free within {0:?}")]
    AcquireTimeout(Duration),
    /// Too many jobs are already waiting for a worker.
    #[error("pool queue is full ({0} jobs waiting)")]
    QueueFull(usize),
    /// The pool is shutting down (or was shut down while the job ran).
    #[error("pool is shutting down")]
    ShuttingDown,
    /// No worker could be started for this job.
    #[error("cannot start a pool worker")]
    WorkerStart(#[source] WorkerStartError),
}

impl PoolJobError {
    /// Whether a retry of the job could succeed without any change (the
    /// failure was the pool's or the process's, not the handler's).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PoolJobError::WorkerCrashed { .. }
                | PoolJobError::Timeout { .. }
                | PoolJobError::AcquireTimeout(_)
                | PoolJobError::QueueFull(_)
        )
    }
}
