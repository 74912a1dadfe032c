//! How the dispatcher runs one attempt: the [`Executor`] trait. The
//! dispatcher knows nothing of processes; an executor turns an
//! [`AttemptRequest`] into a finished [`AttemptOutcome`], streaming the
//! child's events meanwhile. Two implementations: [`crate::spawn::SpawnExecutor`]
//! (a fresh process per attempt, through the process engine) and
//! [`crate::pool_exec::PoolExecutor`] (a warm worker of a `pool::Pool`).
//!
//! Contract, relied on by retries: `run` returns only once no process of the
//! attempt is alive (or, in a pool, once the worker that ran it is idle
//! again or gone), so the next attempt never overlaps the previous one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use tsbridge_proto::api::{OutputView, Resources};
use tsbridge_proto::{ChildEvent, EndReason, JobId};

pub use tsbridge_process::{ProcessControl, StopReason};

use crate::config::WorkflowConfig;

/// One attempt to run.
#[derive(Debug, Clone)]
pub struct AttemptRequest {
    pub job_id: JobId,
    /// 1-based.
    pub attempt: u32,
    pub workflow: Arc<WorkflowConfig>,
    pub params: Value,
    /// The request's own variables, already validated against the workflow.
    pub request_env: BTreeMap<String, String>,
    /// Wall timeout of this attempt (the request's, capped by the workflow's).
    pub timeout: Duration,
}

/// What an attempt reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEvent {
    /// The process (or pool worker) running it.
    Started {
        pid: u32,
    },
    Child(ChildEvent),
}

/// The channels of a running attempt: events out, stop requests in.
#[derive(Debug)]
pub struct AttemptIo {
    /// Bounded: a slow store slows the child's output, nothing is lost.
    pub events: mpsc::Sender<AttemptEvent>,
    /// Cancel (`cancelled`) or shutdown (`shutdown`) requests for this attempt.
    pub control: ProcessControl,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub reason: EndReason,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub pid: Option<u32>,
    /// The child's result, if it gave one.
    pub result: Option<Value>,
    /// A short description of a failure, safe to show (no host paths).
    pub error: Option<String>,
    /// A spawn failure with a transient cause (EAGAIN-like): retryable.
    pub transient: bool,
    /// The end of stderr, for error details.
    pub stderr_tail: String,
    pub output: OutputView,
    pub resources: Resources,
}

impl AttemptOutcome {
    /// Exit code 0 and no stop.
    pub fn succeeded(&self) -> bool {
        self.reason == EndReason::Exited && self.exit_code == Some(0)
    }

    /// An attempt that never started a process.
    pub fn spawn_failure(error: impl Into<String>, transient: bool) -> Self {
        Self {
            reason: EndReason::SpawnFailure,
            exit_code: None,
            signal: None,
            pid: None,
            result: None,
            error: Some(error.into()),
            transient,
            stderr_tail: String::new(),
            output: OutputView::default(),
            resources: Resources::default(),
        }
    }
}

/// Runs attempts of the workflows it serves.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// Whether this executor can run `workflow` on this host (checked at
    /// startup; `Err` marks the workflow unavailable, with the reason).
    fn check(&self, _workflow: &WorkflowConfig) -> Result<(), String> {
        Ok(())
    }

    /// Runs one attempt to its full termination.
    async fn run(&self, req: AttemptRequest, io: AttemptIo) -> AttemptOutcome;

    /// Stops background work (pool workers); attempts are already over.
    async fn shutdown(&self, _grace: Duration) {}

    /// A snapshot of the warm worker pools this executor runs, by workflow
    /// (none for executors without pools).
    fn pools(&self) -> BTreeMap<String, crate::pool::PoolStats> {
        BTreeMap::new()
    }
}
