//! An in-memory [`Backend`] double with scripted workflows, so every error
//! type and stream shape can be provoked deterministically. The same routes
//! are also tested against the real runtime (see `real_*.rs`).

#![allow(dead_code, clippy::collapsible_if)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tsbridge_proto::api::{
    ApiErrorBody, AttemptView, JobList, JobOptions, JobView, OutputView, Resources,
};
use tsbridge_proto::service::{Isolation, Readiness, WorkflowInfo};
use tsbridge_proto::{EndReason, ErrorType, EventData, JobEvent, JobId, JobState, Progress};
use tsbridge_server::{Backend, BackendError, EventFeed, ListQuery, Stats, Submitted};

/// Events one `events_after` call returns, at most.
const MAX_READ: usize = 50;

/// One step of a scripted job.
#[derive(Clone, Debug)]
pub enum Step {
    Progress(u64, u64, &'static str),
    Log(&'static str),
    Sleep(u64),
    Result(Value),
    /// Runs until cancelled.
    Hang,
    /// `n` log events of about 1 KiB each, as fast as possible.
    Flood(u64),
    /// Ends the job (state, reason, exit code, signal, stderr).
    End(
        JobState,
        Option<EndReason>,
        Option<i32>,
        Option<i32>,
        &'static str,
    ),
}

struct FakeJob {
    view: JobView,
    events: Vec<JobEvent>,
    tx: broadcast::Sender<JobEvent>,
    done: watch::Sender<bool>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<JobId, FakeJob>,
    keys: HashMap<String, JobId>,
    shut: bool,
}

#[derive(Clone, Default)]
pub struct FakeBackend {
    inner: Arc<Mutex<Inner>>,
    /// Live-feed capacity (small values exercise the lagging path).
    pub feed_capacity: usize,
}

fn script(workflow: &str, params: &Value) -> Result<Vec<Step>, BackendError> {
    use Step::*;
    let err = |k, m: &str| Err(BackendError::new(k, m));
    Ok(match workflow {
        "echo" => vec![
            Progress(1, 2, "half"),
            Progress(2, 2, "done"),
            Result(json!({"echo": params})),
            End(
                JobState::Succeeded,
                Some(EndReason::Exited),
                Some(0),
                None,
                "",
            ),
        ],
        "slow" => {
            let steps = params.get("steps").and_then(Value::as_u64).unwrap_or(5);
            let ms = params.get("ms").and_then(Value::as_u64).unwrap_or(100);
            let mut v = Vec::new();
            for i in 1..=steps {
                v.push(Sleep(ms));
                v.push(Progress(i, steps, "step"));
                v.push(Log("tick"));
            }
            v.push(Result(json!({"steps": steps})));
            v.push(End(
                JobState::Succeeded,
                Some(EndReason::Exited),
                Some(0),
                None,
                "",
            ));
            v
        }
        "hang" => vec![Progress(1, 4, "started"), Hang],
        "flood" => vec![
            Sleep(params.get("ms").and_then(Value::as_u64).unwrap_or(0)),
            Flood(params.get("n").and_then(Value::as_u64).unwrap_or(10_000)),
            End(
                JobState::Succeeded,
                Some(EndReason::Exited),
                Some(0),
                None,
                "",
            ),
        ],
        "fail" => vec![
            Sleep(params.get("ms").and_then(Value::as_u64).unwrap_or(0)),
            End(
                JobState::Failed,
                Some(EndReason::Exited),
                Some(3),
                None,
                "boom: something broke\n",
            ),
        ],
        "signal" => vec![End(
            JobState::Failed,
            Some(EndReason::Signaled),
            None,
            Some(
                params
                    .get("signal")
                    .and_then(Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(9),
            ),
            "",
        )],
        "timeout" => vec![End(
            JobState::TimedOut,
            Some(EndReason::Timeout),
            None,
            Some(15),
            "",
        )],
        "oom" => vec![End(
            JobState::Failed,
            Some(EndReason::MemoryLimit),
            None,
            Some(9),
            "heap",
        )],
        "interrupted" => vec![End(
            JobState::Failed,
            Some(EndReason::Interrupted),
            None,
            None,
            "",
        )],
        "spawnfail" => vec![End(
            JobState::Failed,
            Some(EndReason::SpawnFailure),
            None,
            None,
            "",
        )],
        "secure" => return err(ErrorType::SecurityError, "path escapes the workflow root"),
        "full" => {
            return Err(BackendError {
                kind: ErrorType::QueueFull,
                message: "the queue is full (1 jobs)".into(),
                details: Some(json!({"limit": 1})),
                retry_after: Some(Duration::from_millis(2500)),
            });
        }
        "unavail" => {
            return err(
                ErrorType::Unavailable,
                "workflow \"unavail\" is unavailable on this host: no cgroup",
            );
        }
        "broken" => {
            return err(
                ErrorType::InternalError,
                "query failed: SELECT * FROM jobs at /var/lib/tsbridge.db",
            );
        }
        "schema" => {
            if params.get("n").and_then(Value::as_u64).is_none() {
                return Err(BackendError {
                    kind: ErrorType::ValidationError,
                    message: "parameters do not match the workflow's schema".into(),
                    details: Some(
                        json!([{"path": "/n", "message": "\"n\" is a required property"}]),
                    ),
                    retry_after: None,
                });
            }
            vec![
                Result(json!(params["n"])),
                End(
                    JobState::Succeeded,
                    Some(EndReason::Exited),
                    Some(0),
                    None,
                    "",
                ),
            ]
        }
        other => return err(ErrorType::NotFound, &format!("no workflow named {other:?}")),
    })
}

fn new_view(id: JobId, workflow: &str, priority: i32) -> JobView {
    JobView {
        job_id: id,
        workflow: workflow.to_owned(),
        state: JobState::Queued,
        reason: None,
        priority,
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        attempts: vec![],
        progress: None,
        result: None,
        error: None,
        exit_code: None,
        signal: None,
        process_id: None,
        output: OutputView::default(),
        resources: Resources::default(),
    }
}

impl FakeBackend {
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            feed_capacity: 256,
        }
    }

    pub fn with_feed_capacity(n: usize) -> Self {
        Self {
            inner: Arc::default(),
            feed_capacity: n,
        }
    }

    /// Records an event and applies it to the view.
    fn emit(&self, id: JobId, data: EventData) {
        let mut g = self.inner.lock().unwrap();
        let Some(job) = g.jobs.get_mut(&id) else {
            return;
        };
        let e = JobEvent {
            seq: job.events.len() as u64 + 1,
            job_id: id,
            timestamp: Utc::now(),
            data: data.clone(),
        };
        match &data {
            EventData::Progress(p) => job.view.progress = Some(p.clone()),
            EventData::Result { value } => job.view.result = Some(value.clone()),
            EventData::State { state, reason, .. } => {
                job.view.state = *state;
                job.view.reason = *reason;
            }
            _ => {}
        }
        job.events.push(e.clone());
        let _ = job.tx.send(e);
    }

    fn finish(
        &self,
        id: JobId,
        state: JobState,
        reason: Option<EndReason>,
        exit: Option<i32>,
        signal: Option<i32>,
        stderr: &str,
    ) {
        {
            let mut g = self.inner.lock().unwrap();
            let Some(job) = g.jobs.get_mut(&id) else {
                return;
            };
            let now = Utc::now();
            job.view.finished_at = Some(now);
            job.view.exit_code = exit;
            job.view.signal = signal;
            job.view.output.stderr = stderr.to_owned();
            job.view.resources.wall_time_ms = Some(12);
            if let Some(a) = job.view.attempts.last_mut() {
                a.finished_at = Some(now);
                a.reason = reason;
                a.exit_code = exit;
                a.signal = signal;
            }
            if state == JobState::Failed && reason == Some(EndReason::Exited) {
                job.view.error = Some(ApiErrorBody {
                    kind: ErrorType::ExecutionError,
                    message: format!("process exited with code {}", exit.unwrap_or(-1)),
                    details: None,
                });
            }
        }
        self.emit(
            id,
            EventData::State {
                state,
                reason,
                attempt: Some(1),
            },
        );
        let g = self.inner.lock().unwrap();
        if let Some(job) = g.jobs.get(&id) {
            let _ = job.done.send(true);
        }
    }

    async fn run(self, id: JobId, steps: Vec<Step>, cancel: CancellationToken) {
        {
            let mut g = self.inner.lock().unwrap();
            if let Some(job) = g.jobs.get_mut(&id) {
                let now = Utc::now();
                job.view.started_at = Some(now);
                job.view.process_id = Some(4242);
                job.view.attempts.push(AttemptView {
                    n: 1,
                    started_at: now,
                    finished_at: None,
                    reason: None,
                    exit_code: None,
                    signal: None,
                    process_id: Some(4242),
                });
            }
        }
        self.emit(
            id,
            EventData::State {
                state: JobState::Running,
                reason: None,
                attempt: Some(1),
            },
        );
        for step in steps {
            let cancelled = match step {
                Step::Progress(c, t, m) => {
                    self.emit(id, EventData::Progress(Progress::new(c, t, m)));
                    cancel.is_cancelled()
                }
                Step::Log(m) => {
                    self.emit(
                        id,
                        EventData::Log {
                            level: tsbridge_proto::LogLevel::Info,
                            message: m.into(),
                        },
                    );
                    cancel.is_cancelled()
                }
                Step::Result(v) => {
                    self.emit(id, EventData::Result { value: v });
                    cancel.is_cancelled()
                }
                Step::Sleep(ms) => tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => false,
                    _ = cancel.cancelled() => true,
                },
                Step::Flood(n) => {
                    let line = "x".repeat(1024);
                    for _ in 0..n {
                        self.emit(
                            id,
                            EventData::Log {
                                level: tsbridge_proto::LogLevel::Info,
                                message: line.clone(),
                            },
                        );
                        tokio::task::yield_now().await;
                    }
                    cancel.is_cancelled()
                }
                Step::Hang => {
                    cancel.cancelled().await;
                    true
                }
                Step::End(state, reason, exit, signal, stderr) => {
                    self.finish(id, state, reason, exit, signal, stderr);
                    return;
                }
            };
            if cancelled {
                break;
            }
        }
        self.finish(
            id,
            JobState::Cancelled,
            Some(EndReason::Cancelled),
            None,
            Some(15),
            "",
        );
    }

    pub fn job_count(&self) -> usize {
        self.inner.lock().unwrap().jobs.len()
    }

    pub fn states(&self) -> Vec<JobState> {
        self.inner
            .lock()
            .unwrap()
            .jobs
            .values()
            .map(|j| j.view.state)
            .collect()
    }
}

fn not_found(id: JobId) -> BackendError {
    BackendError::new(ErrorType::NotFound, format!("no job {id}"))
}

#[async_trait]
impl Backend for FakeBackend {
    async fn submit(
        &self,
        workflow: &str,
        parameters: Value,
        options: JobOptions,
    ) -> Result<Submitted, BackendError> {
        if self.inner.lock().unwrap().shut {
            return Err(BackendError::new(
                ErrorType::Unavailable,
                "tsbridge is shutting down",
            ));
        }
        if let Some(env) = &options.env {
            if let Some(bad) = env
                .keys()
                .find(|k| k.starts_with("LD_") || *k == "NODE_OPTIONS")
            {
                return Err(BackendError::new(
                    ErrorType::SecurityError,
                    format!("env {bad} may not be set by a request"),
                ));
            }
        }
        if let Some(p) = parameters.get("inputPath").and_then(Value::as_str) {
            if p.contains("..") || p.starts_with('/') {
                return Err(BackendError::new(
                    ErrorType::SecurityError,
                    format!("inputPath {p:?} is outside the allowed roots"),
                ));
            }
        }
        let steps = script(workflow, &parameters)?;
        let id = {
            let mut g = self.inner.lock().unwrap();
            if let Some(key) = &options.idempotency_key {
                if let Some(id) = g.keys.get(key) {
                    let state = g.jobs[id].view.state;
                    return Ok(Submitted {
                        job_id: *id,
                        state,
                        existing: true,
                    });
                }
            }
            let id = JobId::new();
            let (tx, _) = broadcast::channel(self.feed_capacity.max(1));
            let (done, _) = watch::channel(false);
            g.jobs.insert(
                id,
                FakeJob {
                    view: new_view(id, workflow, options.priority.unwrap_or(0)),
                    events: vec![],
                    tx,
                    done,
                    cancel: CancellationToken::new(),
                },
            );
            if let Some(key) = options.idempotency_key {
                g.keys.insert(key, id);
            }
            id
        };
        self.emit(
            id,
            EventData::State {
                state: JobState::Queued,
                reason: None,
                attempt: None,
            },
        );
        let cancel = self.inner.lock().unwrap().jobs[&id].cancel.clone();
        tokio::spawn(self.clone().run(id, steps, cancel));
        Ok(Submitted {
            job_id: id,
            state: JobState::Queued,
            existing: false,
        })
    }

    async fn get(&self, id: JobId) -> Result<JobView, BackendError> {
        let g = self.inner.lock().unwrap();
        g.jobs
            .get(&id)
            .map(|j| j.view.clone())
            .ok_or_else(|| not_found(id))
    }

    async fn list(&self, q: ListQuery) -> Result<JobList, BackendError> {
        let g = self.inner.lock().unwrap();
        let mut jobs: Vec<JobView> = g
            .jobs
            .values()
            .map(|j| j.view.clone())
            .filter(|v| q.state.is_none_or(|s| v.state == s))
            .filter(|v| q.workflow.as_deref().is_none_or(|w| v.workflow == w))
            .collect();
        jobs.sort_by_key(|v| std::cmp::Reverse(v.job_id));
        if let Some(c) = &q.cursor {
            let c: JobId = c
                .parse()
                .map_err(|_| BackendError::new(ErrorType::ValidationError, "invalid cursor"))?;
            jobs.retain(|v| v.job_id < c);
        }
        let limit = q.limit.unwrap_or(50) as usize;
        let next_cursor = (jobs.len() > limit).then(|| jobs[limit - 1].job_id.to_string());
        jobs.truncate(limit);
        Ok(JobList { jobs, next_cursor })
    }

    async fn cancel(&self, id: JobId) -> Result<JobView, BackendError> {
        let (token, state) = {
            let g = self.inner.lock().unwrap();
            let j = g.jobs.get(&id).ok_or_else(|| not_found(id))?;
            (j.cancel.clone(), j.view.state)
        };
        if state.is_terminal() {
            return Err(BackendError {
                kind: ErrorType::Conflict,
                message: format!("job {id} already finished ({state})"),
                details: Some(json!({"jobId": id, "state": state})),
                retry_after: None,
            });
        }
        token.cancel();
        self.wait(id).await
    }

    async fn wait(&self, id: JobId) -> Result<JobView, BackendError> {
        let mut rx = {
            let g = self.inner.lock().unwrap();
            g.jobs
                .get(&id)
                .ok_or_else(|| not_found(id))?
                .done
                .subscribe()
        };
        let _ = rx.wait_for(|d| *d).await;
        self.get(id).await
    }

    async fn events_after(&self, id: JobId, after: u64) -> Result<Vec<JobEvent>, BackendError> {
        let g = self.inner.lock().unwrap();
        let j = g.jobs.get(&id).ok_or_else(|| not_found(id))?;
        // Bounded reads, like the real store's.
        Ok(j.events
            .iter()
            .filter(|e| e.seq > after)
            .take(MAX_READ)
            .cloned()
            .collect())
    }

    fn subscribe(&self, id: JobId) -> EventFeed {
        let g = self.inner.lock().unwrap();
        match g.jobs.get(&id) {
            Some(j) if !j.view.state.is_terminal() => BroadcastStream::new(j.tx.subscribe())
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(|r| futures::future::ready(r.ok()))
                .boxed(),
            _ => futures::stream::empty().boxed(),
        }
    }

    fn workflows(&self) -> Vec<WorkflowInfo> {
        ["echo", "slow", "hang", "fail"]
            .iter()
            .map(|n| WorkflowInfo {
                name: (*n).into(),
                mode: "spawn".into(),
                runtime: "node".into(),
                status: "available".into(),
                params_schema: None,
                path_params: vec![],
                concurrency: Some(4),
                priority: 0,
            })
            .collect()
    }

    async fn readiness(&self) -> Readiness {
        let shut = self.inner.lock().unwrap().shut;
        Readiness {
            ready: !shut,
            store: "ok".into(),
            isolation: Isolation {
                cgroups: "v1".into(),
                memory: true,
                pids: true,
                cpu: true,
                network: true,
                landlock: "full".into(),
                seccomp: true,
                pid_namespace: true,
            },
            workflows: [
                ("echo".to_owned(), "available".to_owned()),
                ("unavail".to_owned(), "unavailable: no cgroup".to_owned()),
            ]
            .into(),
        }
    }

    fn stats(&self) -> Stats {
        let g = self.inner.lock().unwrap();
        Stats {
            queued: g
                .jobs
                .values()
                .filter(|j| j.view.state == JobState::Queued)
                .count() as u64,
            running: g
                .jobs
                .values()
                .filter(|j| j.view.state == JobState::Running)
                .count() as u64,
            running_by_workflow: Default::default(),
            pools: [(
                "pooled".to_owned(),
                tsbridge_server::PoolGauges {
                    workers: 2,
                    idle: 1,
                    busy: 1,
                    started_total: 3,
                    crashed_total: 1,
                    ..Default::default()
                },
            )]
            .into(),
        }
    }

    async fn shutdown(&self, _drain: Duration) {
        let tokens: Vec<_> = {
            let mut g = self.inner.lock().unwrap();
            g.shut = true;
            g.jobs.values().map(|j| j.cancel.clone()).collect()
        };
        for t in tokens {
            t.cancel();
        }
    }
}
