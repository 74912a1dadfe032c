//! Errors of this crate: one small enum per operation. Messages are lowercase
//! and never repeat their cause, which is in `#[source]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tsbridge_proto::{ErrorType, JobId};

/// One problem found in a config file: the dotted key, the line, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    /// 1-based; `None` when the problem has no place in the file (e.g. a missing section).
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: `{}`: {}", self.key, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "`{}`: {}", self.key, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Loading a config file failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in file order.
    #[error("invalid config file {path}:{}", render_issues(.issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The problems found (empty for a read error).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { issues, .. } => issues,
        }
    }
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    let mut s = String::new();
    for i in issues {
        s.push_str("\n  ");
        s.push_str(&i.to_string());
    }
    s
}

/// A job store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store url {url:?}")]
    BadUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("unsupported store url {url:?}: expected {expected}")]
    UnsupportedUrl { url: String, expected: &'static str },
    #[error("cannot create the store's folder {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the store's file {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the job store {path} is in use by another tsbridge: a SQLite store serves one server at a time \
         (servers that share a queue use a PostgreSQL store)"
    )]
    InUse { path: PathBuf },
    #[error("cannot lock the job store {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the job store")]
    Open(#[source] sqlx::Error),
    #[error("job store migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("job store query failed: {op}")]
    Query {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite store's writer (rusqlite) failed.
    #[error("job store write failed: {op}")]
    Write {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The SQLite store's writer is not running (closed, or it stopped).
    #[error("job store write failed: {op}: the writer has stopped")]
    WriterStopped { op: &'static str },
    /// The SQLite store's writer could not start.
    #[error("the job store's writer cannot start: {0}")]
    WriterStart(String),
    #[error("stored job {job} is corrupt: {what}")]
    Corrupt { job: String, what: String },
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("invalid cursor")]
    BadCursor,
}

impl StoreError {
    pub(crate) fn query(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { op, source }
    }
}

/// What the runtime answers when a request cannot be served. Maps to the API's
/// error types; 5xx messages never carry host paths or SQL.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no workflow named {0:?}")]
    WorkflowNotFound(String),
    #[error("no job {0}")]
    JobNotFound(JobId),
    #[error("workflow {workflow:?} is unavailable on this host: {why}")]
    WorkflowUnavailable { workflow: String, why: String },
    #[error("tsbridge is shutting down")]
    ShuttingDown,
    #[error("parameters do not match the workflow's schema")]
    Validation { details: Value },
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Security(String),
    /// The request is valid but too large to run (e.g. parameters that do
    /// not fit one command-line argument).
    #[error("{0}")]
    TooLarge(String),
    /// An idempotency key that names a job with another workflow, other
    /// parameters or other options.
    #[error(
        "idempotencyKey already names job {job_id}, submitted with another workflow, other parameters or other options"
    )]
    IdempotencyConflict { job_id: JobId },
    #[error("the queue is full ({limit} jobs)")]
    QueueFull { limit: usize, retry_after: Duration },
    #[error("job {id} already finished ({state})")]
    AlreadyFinished {
        id: JobId,
        state: tsbridge_proto::JobState,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Request env cannot be sealed or opened: its key is missing, unreadable
    /// or not the one it was sealed with (at start: the runtime refuses to
    /// start rather than run jobs without their env).
    #[error("request env cannot be sealed or opened")]
    EnvKey(#[from] crate::sealed::SealError),
}

impl RuntimeError {
    pub fn error_type(&self) -> ErrorType {
        match self {
            RuntimeError::WorkflowNotFound(_) | RuntimeError::JobNotFound(_) => ErrorType::NotFound,
            RuntimeError::WorkflowUnavailable { .. } | RuntimeError::ShuttingDown => {
                ErrorType::Unavailable
            }
            RuntimeError::Validation { .. } | RuntimeError::BadRequest(_) => {
                ErrorType::ValidationError
            }
            RuntimeError::Security(_) => ErrorType::SecurityError,
            RuntimeError::QueueFull { .. } => ErrorType::QueueFull,
            RuntimeError::AlreadyFinished { .. } | RuntimeError::IdempotencyConflict { .. } => {
                ErrorType::Conflict
            }
            RuntimeError::TooLarge(_) => ErrorType::PayloadTooLarge,
            RuntimeError::Store(_) | RuntimeError::EnvKey(_) => ErrorType::InternalError,
        }
    }

    /// Structured details for the API body (`error.details`).
    pub fn details(&self) -> Option<Value> {
        match self {
            RuntimeError::Validation { details } => Some(details.clone()),
            RuntimeError::QueueFull { limit, retry_after } => Some(serde_json::json!({
                "limit": limit,
                "retryAfterSeconds": retry_after_secs(*retry_after),
            })),
            RuntimeError::AlreadyFinished { id, state } => {
                Some(serde_json::json!({"jobId": id, "state": state}))
            }
            RuntimeError::IdempotencyConflict { job_id } => {
                Some(serde_json::json!({"jobId": job_id}))
            }
            _ => None,
        }
    }

    /// For 429: how long a client should wait, in whole seconds (rounded
    /// up, at least 1), the same as `details.retryAfterSeconds`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RuntimeError::QueueFull { retry_after, .. } => {
                Some(Duration::from_secs(retry_after_secs(*retry_after)))
            }
            _ => None,
        }
    }
}

/// Whole seconds of a Retry-After: rounded up, never 0.
fn retry_after_secs(d: Duration) -> u64 {
    let up = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    up.max(1)
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;

    fn full(ms: u64) -> RuntimeError {
        RuntimeError::QueueFull {
            limit: 1,
            retry_after: Duration::from_millis(ms),
        }
    }

    #[test]
    fn header_and_details_agree_rounded_up_never_zero() {
        for (ms, want) in [
            (0, 1),
            (1, 1),
            (999, 1),
            (1000, 1),
            (1001, 2),
            (1500, 2),
            (2000, 2),
        ] {
            let e = full(ms);
            let header = e.retry_after().map(|d| d.as_secs_f64().ceil() as u64);
            let details = e.details().and_then(|d| d["retryAfterSeconds"].as_u64());
            assert_eq!(header, Some(want), "{ms} ms");
            assert_eq!(details, Some(want), "{ms} ms");
        }
    }
}

/// An error and each of its sources, joined by ": ": what a log line
/// needs (an error's own `Display` leaves its causes to `source()`, so
/// `%e` alone says "job store write failed: commit" and drops "database or
/// disk is full").
#[derive(Debug)]
pub struct Causes<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
