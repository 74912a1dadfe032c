//! `POST /workflow/:type/execute` (run and wait) and `POST /workflow/batch`,
//! and how a finished job becomes a success body or the error of its end
//! reason.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use futures::future::join_all;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tsbridge_proto::api::{
    BatchItem, BatchOptions, BatchRequest, BatchResponse, BatchResult, ExecuteRequest,
    ExecuteResponse, JobOptions, JobView, Success,
};
use tsbridge_proto::{EndReason, ErrorType, JobId, JobState};

use crate::backend::Backend;
use crate::errors::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// The most items one batch may have.
pub const MAX_BATCH: usize = 10;
/// How much of stderr's end an `ExecutionError` carries.
const STDERR_TAIL_BYTES: usize = 4096;

/// Cancels the jobs it holds when dropped armed: a client that hangs up on
/// a synchronous run does not leave its jobs running for nobody.
struct CancelOnDrop {
    backend: Arc<dyn Backend>,
    jobs: Arc<Mutex<Vec<JobId>>>,
    armed: bool,
}

impl CancelOnDrop {
    fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            jobs: Arc::default(),
            armed: true,
        }
    }

    fn hold(&self, id: JobId) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.push(id);
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let jobs = self.jobs.lock().map(|j| j.clone()).unwrap_or_default();
        if jobs.is_empty() {
            return;
        }
        let backend = self.backend.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for id in jobs {
                    // Conflict (already finished) is fine.
                    let _ = backend.cancel(id).await;
                }
            });
        }
    }
}

/// Run a workflow and wait for its end.
#[utoipa::path(
    post,
    path = "/workflow/{type}/execute",
    tag = "workflows",
    params(("type" = String, Path, description = "The workflow's name")),
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "The job succeeded", body = crate::openapi::ExecuteEnvelope),
        (status = 400, description = "Invalid body or parameters", body = tsbridge_proto::api::Failure),
        (status = 403, description = "A path or env name is refused", body = tsbridge_proto::api::Failure),
        (status = 404, description = "No such workflow", body = tsbridge_proto::api::Failure),
        (status = 408, description = "The job timed out", body = tsbridge_proto::api::Failure),
        (status = 409, description = "The job was cancelled", body = tsbridge_proto::api::Failure),
        (status = 413, description = "A resource limit ended the job, or the body is too large", body = tsbridge_proto::api::Failure),
        (status = 429, description = "The queue is full", body = tsbridge_proto::api::Failure),
        (status = 500, description = "The program failed (exit code, signal, stderr tail in details)", body = tsbridge_proto::api::Failure),
        (status = 503, description = "The workflow is unavailable on this host, or shutting down", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn execute(
    State(state): State<AppState>,
    Path(workflow): Path<String>,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Json<Success<ExecuteResponse>>, ApiError> {
    let backend = state.backend_arc();
    let options = req.options.unwrap_or_default();
    // A job named by an idempotency key is meant to outlive this request.
    let durable = options.idempotency_key.is_some();
    let submitted = backend.submit(&workflow, req.parameters, options).await?;
    let guard = CancelOnDrop::new(backend.clone());
    if !durable {
        guard.hold(submitted.job_id);
    }
    let view = backend.wait(submitted.job_id).await;
    guard.disarm();
    Ok(Json(Success::new(job_outcome(view?)?)))
}

/// A finished job as the execute route answers it: the success body, or the
/// error of its end reason with the job id (and exit code, signal, stderr
/// tail) in `details`. Its result and resources move to the answer.
pub fn job_outcome(mut view: JobView) -> Result<ExecuteResponse, ApiError> {
    if view.state == JobState::Succeeded {
        return Ok(ExecuteResponse {
            job_id: view.job_id,
            success: true,
            execution_time: execution_time_ms(&view),
            result: view.result.take().unwrap_or(Value::Null),
            process_id: view.process_id,
            exit_code: view.exit_code,
            attempts: u32::try_from(view.attempts.len()).unwrap_or(u32::MAX),
            resources: std::mem::take(&mut view.resources),
        });
    }
    Err(job_error(&view))
}

fn execution_time_ms(view: &JobView) -> u64 {
    view.resources
        .wall_time_ms
        .unwrap_or_else(|| match (view.started_at, view.finished_at) {
            (Some(s), Some(f)) => u64::try_from((f - s).num_milliseconds()).unwrap_or(0),
            _ => 0,
        })
}

/// The error a job that did not succeed answers with.
pub fn job_error(view: &JobView) -> ApiError {
    let kind = ErrorType::for_end(view.state, view.reason).unwrap_or(ErrorType::InternalError);
    let message = view
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| default_message(view));
    let mut details = Map::new();
    if let Some(Value::Object(d)) = view.error.as_ref().and_then(|e| e.details.clone()) {
        details.extend(d);
    }
    details.insert("jobId".into(), json!(view.job_id));
    details.insert("state".into(), json!(view.state));
    details.insert("reason".into(), json!(view.reason));
    details.insert("exitCode".into(), json!(view.exit_code));
    details.insert("signal".into(), json!(view.signal));
    // The same names as the job's own view (`JobView::signal_name`).
    if let Some(name) = view.signal_name() {
        details.insert("signalName".into(), json!(name));
    }
    details.insert(
        "attempts".into(),
        json!(u32::try_from(view.attempts.len()).unwrap_or(u32::MAX)),
    );
    if kind == ErrorType::ExecutionError || kind == ErrorType::ResourceLimitError {
        details.insert(
            "stderr".into(),
            json!(tail(&view.output.stderr, STDERR_TAIL_BYTES)),
        );
    }
    let mut err = ApiError::new(kind, message)
        .with_details(Value::Object(details))
        .job_end();
    if kind == ErrorType::Unavailable {
        err.message = format!("job {} was stopped: tsbridge is shutting down", view.job_id);
    }
    err
}

fn default_message(view: &JobView) -> String {
    let id = view.job_id;
    match (view.state, view.reason) {
        (JobState::TimedOut, _) | (_, Some(EndReason::Timeout)) => {
            format!("job {id} timed out")
        }
        (JobState::Cancelled, _) | (_, Some(EndReason::Cancelled)) => {
            format!("job {id} was cancelled")
        }
        (_, Some(EndReason::MemoryLimit)) => format!("job {id} hit its memory limit"),
        (_, Some(EndReason::PidsLimit)) => format!("job {id} hit its pids limit"),
        (_, Some(EndReason::CpuLimit)) => format!("job {id} hit its CPU limit"),
        (_, Some(EndReason::Signaled)) => match view.signal {
            Some(s) => format!(
                "job {id} was killed by signal {}",
                tsbridge_proto::api::describe_signal(s)
            ),
            None => format!("job {id} was killed by a signal"),
        },
        (_, Some(EndReason::Exited)) => match view.exit_code {
            Some(c) => format!("job {id} exited with code {c}"),
            None => format!("job {id} failed"),
        },
        (_, Some(EndReason::SpawnFailure)) => format!("job {id} could not be started"),
        (_, Some(EndReason::Interrupted)) => format!("job {id} was interrupted"),
        (_, Some(EndReason::Shutdown)) => format!("job {id} was stopped by shutdown"),
        (state, None) => format!("job {id} ended {state}"),
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The batch answer: SPEC's `results` at the top level (as the design brief
/// answers), and the same inside `data` (as every other route answers).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchEnvelope {
    pub success: bool,
    pub data: BatchResponse,
    pub results: Vec<BatchResult>,
}

/// Run 1..10 workflows, at most `batch_concurrency` at once.
#[utoipa::path(
    post,
    path = "/workflow/batch",
    tag = "workflows",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Every item's outcome, in input order", body = BatchEnvelope),
        (status = 400, description = "Not 1..10 items, or an invalid body", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn batch(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<Json<BatchEnvelope>, ApiError> {
    let n = req.workflows.len();
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::validation(format!(
            "workflows must have 1 to {MAX_BATCH} items, got {n}"
        ))
        .with_details(json!({"field": "workflows", "min": 1, "max": MAX_BATCH, "got": n})));
    }
    let options = req.options.unwrap_or_default();
    let backend = state.backend_arc();
    let run = BatchRun {
        backend: backend.clone(),
        permits: Semaphore::new(state.settings().batch_concurrency.max(1)),
        fail_fast: CancellationToken::new(),
        options,
        guard: CancelOnDrop::new(backend),
    };
    let results = join_all(
        req.workflows
            .into_iter()
            .enumerate()
            .map(|(i, item)| run.item(i, item)),
    )
    .await;
    run.guard.disarm();
    Ok(Json(BatchEnvelope {
        success: true,
        data: BatchResponse {
            results: results.clone(),
        },
        results,
    }))
}

struct BatchRun {
    backend: Arc<dyn Backend>,
    permits: Semaphore,
    /// Cancelled on the first failure when `failFast` is set.
    fail_fast: CancellationToken,
    options: BatchOptions,
    guard: CancelOnDrop,
}

impl BatchRun {
    fn failed(&self) {
        if self.options.fail_fast {
            self.fail_fast.cancel();
        }
    }

    async fn item(&self, index: usize, item: BatchItem) -> BatchResult {
        let workflow_id = item
            .id
            .clone()
            .unwrap_or_else(|| format!("workflow_{index}"));
        let skipped = |workflow_id: String| BatchResult {
            workflow_id,
            job_id: None,
            success: false,
            result: None,
            error: Some(
                ApiError::new(
                    ErrorType::Conflict,
                    "not run: an earlier item failed and failFast is set",
                )
                .public_body(),
            ),
        };
        let _permit = tokio::select! {
            biased;
            _ = self.fail_fast.cancelled() => return skipped(workflow_id),
            p = self.permits.acquire() => match p {
                Ok(p) => p,
                Err(_) => return skipped(workflow_id),
            },
        };
        if self.fail_fast.is_cancelled() {
            return skipped(workflow_id);
        }
        let options = JobOptions {
            timeout: self.options.timeout,
            priority: item.priority,
            ..JobOptions::default()
        };
        let submitted = match self
            .backend
            .submit(&item.workflow, item.parameters, options)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.failed();
                return BatchResult {
                    workflow_id,
                    job_id: None,
                    success: false,
                    result: None,
                    error: Some(ApiError::from(e).public_body()),
                };
            }
        };
        let id = submitted.job_id;
        self.guard.hold(id);
        let view = tokio::select! {
            v = self.backend.wait(id) => v,
            _ = self.fail_fast.cancelled() => {
                let _ = self.backend.cancel(id).await;
                self.backend.wait(id).await
            }
        };
        let outcome = view.map_err(ApiError::from).and_then(job_outcome);
        match outcome {
            Ok(r) => BatchResult {
                workflow_id,
                job_id: Some(id),
                success: true,
                result: Some(r.result),
                error: None,
            },
            Err(e) => {
                self.failed();
                BatchResult {
                    workflow_id,
                    job_id: Some(id),
                    success: false,
                    result: None,
                    error: Some(e.public_body()),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tails_cut_at_char_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
