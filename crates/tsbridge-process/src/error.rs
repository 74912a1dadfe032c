//! Errors of the process engine, one enum per operation (validating a spec,
//! resolving a script to an invocation, spawning), plus [`JobError`], the
//! classification of a finished [`Outcome`] that the CLI, the runtime and the
//! retry policy act on.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tsbridge_proto::EndReason;

use crate::engine::{ExitKind, Outcome};

/// A [`crate::spec::JobSpec`] that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("the program path is empty")]
    EmptyProgram,
    #[error("the program path contains a NUL byte")]
    ProgramHasNul,
    #[error("argument {index} contains a NUL byte")]
    ArgHasNul { index: usize },
    #[error("working directory {path:?} does not exist or cannot be resolved")]
    CwdMissing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("working directory {path:?} is not a directory")]
    CwdNotDirectory { path: PathBuf },
    #[error("environment variable name {name:?} is invalid (empty, or contains '=' or NUL)")]
    EnvNameInvalid { name: String },
    #[error("environment variable {name:?} has a value containing a NUL byte")]
    EnvValueHasNul { name: String },
    #[error("environment variable {name:?} is reserved for tsbridge")]
    EnvReserved { name: String },
    #[error("max_output must be at least 1 byte")]
    ZeroMaxOutput,
    #[error("max_line must be at least 1 byte")]
    ZeroMaxLine,
    #[error("timeout must be greater than zero")]
    ZeroTimeout,
    #[error("job key {key:?} is invalid (1..=128 characters of [A-Za-z0-9._:-])")]
    JobKeyInvalid { key: String },
}

/// Where in the spawn a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpawnStage {
    /// Creating the IPC channel or a private TMPDIR before the fork.
    Prepare,
    /// fork/exec itself (the program is missing, not executable, EAGAIN, ...).
    Exec,
    /// Wiring the child's pipes or pidfd into the async runtime.
    Wire,
    /// The engine's spawner thread is gone (the process is exiting).
    SpawnerGone,
}

/// The child could not be started. `kind`/`errno` say why; an EAGAIN-like
/// cause (EAGAIN, ENOMEM, EMFILE, ENFILE, ETXTBSY) is [`SpawnError::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program:?} ({stage:?})")]
pub struct SpawnError {
    pub program: PathBuf,
    pub stage: SpawnStage,
    pub kind: io::ErrorKind,
    pub errno: Option<i32>,
    #[source]
    pub source: io::Error,
}

impl SpawnError {
    pub(crate) fn new(program: PathBuf, stage: SpawnStage, source: io::Error) -> Self {
        Self {
            program,
            stage,
            kind: source.kind(),
            errno: source.raw_os_error(),
            source,
        }
    }

    /// A copy (io::Error is not Clone): same program, stage, kind and errno.
    pub fn duplicate(&self) -> Self {
        let source = match self.errno {
            Some(n) => io::Error::from_raw_os_error(n),
            None => io::Error::new(self.kind, self.source.to_string()),
        };
        Self::new(self.program.clone(), self.stage, source)
    }

    /// Whether trying again later may succeed (resource exhaustion, not a
    /// missing or broken program).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.errno,
            Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::ETXTBSY)
        ) || matches!(
            self.kind,
            io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
        )
    }
}

/// A script that cannot be turned into an invocation.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("script {path:?} does not exist or cannot be resolved")]
    ScriptMissing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("runtime {runtime} not found (looked in {looked_in:?}); hint: {hint}")]
    RuntimeNotFound {
        runtime: &'static str,
        looked_in: Vec<PathBuf>,
        hint: &'static str,
    },
    #[error("node executable not found (looked in {looked_in:?})")]
    NodeNotFound { looked_in: Vec<PathBuf> },
}

/// A transpile-cache failure. The engine falls back to `node --import tsx`
/// when this happens; it is only surfaced to say why.
#[derive(Debug, thiserror::Error)]
pub enum TranspileError {
    #[error("esbuild not found in {looked_in:?}")]
    EsbuildNotFound { looked_in: Vec<PathBuf> },
    #[error("cannot use cache dir {path:?}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run esbuild {esbuild:?}")]
    EsbuildSpawn {
        esbuild: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("esbuild failed on {entry:?} (status {status}): {stderr}")]
    EsbuildFailed {
        entry: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("cannot read {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("esbuild metafile {path:?} is invalid")]
    Metafile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Which kernel-enforced limit ended a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceLimit {
    Memory,
    Pids,
    Cpu,
}

impl std::fmt::Display for ResourceLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResourceLimit::Memory => "memory",
            ResourceLimit::Pids => "pids",
            ResourceLimit::Cpu => "cpu",
        })
    }
}

/// The classes of failure a retry policy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// A spawn failure with an EAGAIN-like cause.
    SpawnRetryable,
    /// Any other spawn failure (missing program, permission denied, ...).
    Spawn,
    /// The wall-clock timeout expired.
    Timeout,
    /// The process died by a signal nobody in tsbridge sent.
    Signal,
    /// The process exited with a non-zero code.
    Execution,
    /// A kernel-enforced resource limit ended the job.
    ResourceLimit,
    /// A user cancelled the job.
    Cancelled,
    /// tsbridge was shutting down.
    Shutdown,
}

/// Why a job did not succeed, as the CLI and the runtime report it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("process failed ({})", describe_exit(*.exit_code, *.signal))]
    Execution {
        exit_code: Option<i32>,
        signal: Option<i32>,
        /// The end of stderr (masked), for the error's details.
        stderr_tail: String,
    },
    #[error("process timed out after {after:?}")]
    Timeout { after: Duration },
    #[error("process was cancelled")]
    Cancelled,
    #[error("process was stopped because tsbridge is shutting down")]
    Shutdown,
    #[error("process hit its {limit} limit")]
    ResourceLimit { limit: ResourceLimit },
    #[error("process could not be started")]
    Spawn(#[source] SpawnError),
}

/// How many bytes of stderr go into [`JobError::Execution`].
pub const STDERR_TAIL_BYTES: usize = 4096;

impl JobError {
    /// Classifies an outcome: `None` when the job succeeded (exit code 0 and
    /// no stop was requested).
    pub fn from_outcome(o: &Outcome) -> Option<JobError> {
        match o.reason {
            EndReason::Exited => match o.exit {
                ExitKind::Code(0) => None,
                ExitKind::Code(c) => Some(JobError::Execution {
                    exit_code: Some(c),
                    signal: None,
                    stderr_tail: crate::engine::tail_text(&o.stderr, STDERR_TAIL_BYTES),
                }),
                ExitKind::Signal(s) => Some(JobError::Execution {
                    exit_code: None,
                    signal: Some(s),
                    stderr_tail: crate::engine::tail_text(&o.stderr, STDERR_TAIL_BYTES),
                }),
            },
            EndReason::Signaled | EndReason::SpawnFailure | EndReason::Interrupted => {
                Some(JobError::Execution {
                    exit_code: o.exit.code(),
                    signal: o.exit.signal(),
                    stderr_tail: crate::engine::tail_text(&o.stderr, STDERR_TAIL_BYTES),
                })
            }
            EndReason::Timeout => Some(JobError::Timeout { after: o.wall }),
            EndReason::Cancelled => Some(JobError::Cancelled),
            EndReason::Shutdown => Some(JobError::Shutdown),
            EndReason::MemoryLimit => Some(JobError::ResourceLimit {
                limit: ResourceLimit::Memory,
            }),
            EndReason::PidsLimit => Some(JobError::ResourceLimit {
                limit: ResourceLimit::Pids,
            }),
            EndReason::CpuLimit => Some(JobError::ResourceLimit {
                limit: ResourceLimit::Cpu,
            }),
        }
    }

    /// The retry class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::Execution {
                signal: Some(_), ..
            } => ErrorKind::Signal,
            JobError::Execution { .. } => ErrorKind::Execution,
            JobError::Timeout { .. } => ErrorKind::Timeout,
            JobError::Cancelled => ErrorKind::Cancelled,
            JobError::Shutdown => ErrorKind::Shutdown,
            JobError::ResourceLimit { .. } => ErrorKind::ResourceLimit,
            JobError::Spawn(e) if e.is_retryable() => ErrorKind::SpawnRetryable,
            JobError::Spawn(_) => ErrorKind::Spawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eagain_is_retryable_enoent_is_not() {
        let e = SpawnError::new(
            "x".into(),
            SpawnStage::Exec,
            io::Error::from_raw_os_error(libc::EAGAIN),
        );
        assert!(e.is_retryable());
        assert_eq!(JobError::Spawn(e).kind(), ErrorKind::SpawnRetryable);
        let e = SpawnError::new(
            "x".into(),
            SpawnStage::Exec,
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert!(!e.is_retryable());
        assert_eq!(e.kind, io::ErrorKind::NotFound);
        assert_eq!(JobError::Spawn(e).kind(), ErrorKind::Spawn);
    }

    #[test]
    fn messages_are_lowercase() {
        let e = ValidationError::ZeroMaxOutput.to_string();
        assert!(e.starts_with(char::is_lowercase));
        let e = JobError::Cancelled.to_string();
        assert!(e.starts_with(char::is_lowercase));
    }
}

/// `exit code 3`, `killed by signal 11 (SIGSEGV)`.
fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => match signal_name(sig) {
            Some(name) => format!("killed by signal {sig} ({name})"),
            None => format!("killed by signal {sig}"),
        },
        (Some(c), None) => format!("exit code {c}"),
        (None, None) => "no exit status".to_owned(),
    }
}

/// The name of a common signal.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    #[test]
    fn exits_read_like_a_shell_would_say_them() {
        assert_eq!(describe_exit(Some(3), None), "exit code 3");
        assert_eq!(
            describe_exit(None, Some(libc::SIGSEGV)),
            "killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(describe_exit(None, Some(64)), "killed by signal 64");
    }
}
