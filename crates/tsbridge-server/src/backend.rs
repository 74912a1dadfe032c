//! The narrow interface the API needs from the job runtime ([`Backend`]), and
//! the few types it speaks besides tsbridge-proto's. The real implementation
//! is `tsbridge_runtime::Runtime` (see `runtime_backend`); tests may use a
//! double.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde_json::Value;
use tsbridge_proto::api::{JobList, JobOptions, JobView};
use tsbridge_proto::service::{Readiness, WorkflowInfo};
use tsbridge_proto::{ErrorType, JobEvent, JobId, JobState};

/// A job accepted by [`Backend::submit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub job_id: JobId,
    pub state: JobState,
    /// The idempotency key named a job that already existed.
    pub existing: bool,
}

/// `GET /v1/jobs` filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub state: Option<JobState>,
    pub workflow: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Point-in-time counters of the runtime, exported as gauges on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub queued: u64,
    pub running: u64,
    pub running_by_workflow: BTreeMap<String, u64>,
    /// The warm worker pools, by workflow.
    pub pools: BTreeMap<String, PoolGauges>,
}

/// One worker pool, as `/metrics` exports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    /// Workers starting, idle or busy.
    pub workers: u64,
    pub idle: u64,
    pub busy: u64,
    pub starting: u64,
    /// Jobs waiting for a worker.
    pub waiting: u64,
    /// Worker processes started since the pool started.
    pub started_total: u64,
    /// Workers retired on purpose (max_jobs, max_age, idle_timeout, RSS).
    pub recycled_total: u64,
    /// Workers that died without being asked to.
    pub crashed_total: u64,
}

/// Why the backend could not serve a request: an API error type, a message
/// safe to show (5xx messages never carry host paths or SQL), details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub kind: ErrorType,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<Duration>,
}

impl BackendError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }
}

/// Live events of one job, in `seq` order. Ends (`None`) when the job's
/// events are over or when the subscriber fell behind and was dropped; the
/// consumer then catches up from [`Backend::events_after`].
pub type EventFeed = BoxStream<'static, JobEvent>;

/// What the API asks of the runtime.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn submit(
        &self,
        workflow: &str,
        parameters: Value,
        options: JobOptions,
    ) -> Result<Submitted, BackendError>;
    async fn get(&self, id: JobId) -> Result<JobView, BackendError>;
    async fn list(&self, query: ListQuery) -> Result<JobList, BackendError>;
    /// Cancels and returns the job's final view; `Conflict` if it had
    /// already finished.
    async fn cancel(&self, id: JobId) -> Result<JobView, BackendError>;
    /// Waits until the job is terminal.
    async fn wait(&self, id: JobId) -> Result<JobView, BackendError>;
    /// Stored events with `seq > after_seq`, in order.
    async fn events_after(&self, id: JobId, after_seq: u64) -> Result<Vec<JobEvent>, BackendError>;
    /// Live events from now on. Subscribe first, then read
    /// [`Backend::events_after`], and skip what was already seen.
    fn subscribe(&self, id: JobId) -> EventFeed;
    fn workflows(&self) -> Vec<WorkflowInfo>;
    async fn readiness(&self) -> Readiness;
    fn stats(&self) -> Stats;
    /// Stops taking work, lets running jobs finish for `drain`, ends the rest.
    async fn shutdown(&self, drain: Duration);
}
