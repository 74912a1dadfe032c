//! HTTP bodies (SPEC §8). Success is `{"success": true, "data": ...}`;
//! failure is `{"success": false, "error": {"type", "message", "details"?}}`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Progress;
use crate::ids::JobId;
use crate::job::{EndReason, JobState};
use crate::units::DurationSpec;

/// The error types of the API, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ErrorType {
    ValidationError,
    Unauthorized,
    SecurityError,
    NotFound,
    TimeoutError,
    Conflict,
    ResourceLimitError,
    PayloadTooLarge,
    QueueFull,
    ExecutionError,
    InternalError,
    Unavailable,
}

impl ErrorType {
    pub fn status(self) -> u16 {
        match self {
            ErrorType::ValidationError => 400,
            ErrorType::Unauthorized => 401,
            ErrorType::SecurityError => 403,
            ErrorType::NotFound => 404,
            ErrorType::TimeoutError => 408,
            ErrorType::Conflict => 409,
            ErrorType::ResourceLimitError | ErrorType::PayloadTooLarge => 413,
            ErrorType::QueueFull => 429,
            ErrorType::ExecutionError | ErrorType::InternalError => 500,
            ErrorType::Unavailable => 503,
        }
    }

    /// The error a job that ended this way answers with (SPEC §8).
    pub fn for_end(state: JobState, reason: Option<EndReason>) -> Option<Self> {
        match (state, reason) {
            (JobState::Succeeded, _) | (JobState::Queued, _) | (JobState::Running, _) => None,
            (JobState::TimedOut, _) | (_, Some(EndReason::Timeout)) => {
                Some(ErrorType::TimeoutError)
            }
            (JobState::Cancelled, _) | (_, Some(EndReason::Cancelled)) => Some(ErrorType::Conflict),
            (_, Some(r)) if r.is_resource_limit() => Some(ErrorType::ResourceLimitError),
            (_, Some(EndReason::Shutdown)) => Some(ErrorType::Unavailable),
            (_, Some(EndReason::SpawnFailure)) | (_, Some(EndReason::Interrupted)) => {
                Some(ErrorType::InternalError)
            }
            _ => Some(ErrorType::ExecutionError),
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The `error` object of a failure body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// `{"success": false, "error": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub success: bool,
    pub error: ApiErrorBody,
}

impl Failure {
    pub fn new(kind: ErrorType, message: impl Into<String>, details: Option<Value>) -> Self {
        Self {
            success: false,
            error: ApiErrorBody {
                kind,
                message: message.into(),
                details,
            },
        }
    }
}

/// `{"success": true, "data": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Success<T> {
    pub success: bool,
    pub data: T,
}

impl<T> Success<T> {
    pub fn new(data: T) -> Self {
        Self {
            success: true,
            data,
        }
    }
}

/// Options a request may give; each can only lower the workflow's own limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobOptions {
    /// Milliseconds, or a string such as "2s".
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<DurationSpec>,
    #[serde(default)]
    pub priority: Option<i32>,
    /// Only names the workflow's `env.request` allows.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `POST /workflow/:type/execute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteRequest {
    #[serde(default)]
    pub parameters: Value,
    #[serde(default)]
    pub options: Option<JobOptions>,
}

/// `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitRequest {
    pub workflow: String,
    #[serde(default)]
    pub parameters: Value,
    #[serde(default)]
    pub options: Option<JobOptions>,
}

/// 202 answer of `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubmitResponse {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub state: JobState,
}

/// One item of `POST /workflow/batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchItem {
    #[serde(rename = "type")]
    pub workflow: String,
    #[serde(default)]
    pub parameters: Value,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchOptions {
    #[serde(default)]
    pub fail_fast: bool,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<DurationSpec>,
}

/// `POST /workflow/batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    pub workflows: Vec<BatchItem>,
    #[serde(default)]
    pub options: Option<BatchOptions>,
}

/// One result of a batch, in input order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    /// The item's `id`, or its index as a string when it had none.
    pub workflow_id: String,
    #[schema(value_type = Option<String>)]
    pub job_id: Option<JobId>,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiErrorBody>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// Resource usage of a job (its last attempt).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    pub wall_time_ms: Option<u64>,
}

/// 200 answer of `POST /workflow/:type/execute`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub success: bool,
    pub result: Value,
    /// Wall time in milliseconds.
    pub execution_time: u64,
    pub process_id: Option<u32>,
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub resources: Resources,
}

/// One attempt of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub n: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub reason: Option<EndReason>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub process_id: Option<u32>,
}

/// Captured output, bounded: head and tail kept, the middle dropped and counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputView {
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub stdout_dropped_bytes: u64,
    pub stderr_dropped_bytes: u64,
}

/// A job as `GET /v1/jobs/:id` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub workflow: String,
    pub state: JobState,
    pub reason: Option<EndReason>,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptView>,
    pub progress: Option<Progress>,
    pub result: Option<Value>,
    pub error: Option<ApiErrorBody>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub process_id: Option<u32>,
    pub output: OutputView,
    pub resources: Resources,
}

/// `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ErrorType::QueueFull.status(), 429);
        assert_eq!(ErrorType::PayloadTooLarge.status(), 413);
        assert_eq!(
            ErrorType::for_end(JobState::TimedOut, Some(EndReason::Timeout)),
            Some(ErrorType::TimeoutError)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Failed, Some(EndReason::MemoryLimit)),
            Some(ErrorType::ResourceLimitError)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Failed, Some(EndReason::Exited)),
            Some(ErrorType::ExecutionError)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Cancelled, Some(EndReason::Cancelled)),
            Some(ErrorType::Conflict)
        );
        assert_eq!(ErrorType::for_end(JobState::Succeeded, None), None);
    }

    #[test]
    fn failure_shape() {
        let f = Failure::new(ErrorType::NotFound, "no such job", None);
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"success": false, "error": {"type": "NotFound", "message": "no such job"}})
        );
    }

    #[test]
    fn request_timeout_in_ms_or_string() {
        let r: ExecuteRequest =
            serde_json::from_str(r#"{"parameters":{"a":1},"options":{"timeout":1500}}"#).unwrap();
        assert_eq!(r.options.unwrap().timeout.unwrap().0.as_millis(), 1500);
        let r: ExecuteRequest =
            serde_json::from_str(r#"{"parameters":{},"options":{"timeout":"2s"}}"#).unwrap();
        assert_eq!(r.options.unwrap().timeout.unwrap().0.as_secs(), 2);
        assert!(serde_json::from_str::<ExecuteRequest>(r#"{"parameters":{},"bogus":1}"#).is_err());
    }
}
