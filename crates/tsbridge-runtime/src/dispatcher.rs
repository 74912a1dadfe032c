//! The dispatcher: the one task that owns the state of live jobs and
//! linearizes everything that changes it through one `select!` loop:
//! submissions, cancel requests, attempt completions, retry timers and
//! shutdown. It keeps the ready queue (priority, then FIFO), enforces the
//! global and per-workflow concurrency limits and the queue limit, decides
//! retries, and writes every state change to the store (with its `state`
//! event) before publishing that event on the bus.
//!
//! Each attempt runs in a task of its own ([`run_attempt`]) that owns the
//! job's event numbering while the attempt runs: it numbers the child's
//! events, writes them to the store in batches, publishes them, and hands
//! the last number back with the outcome. Before and after an attempt, the
//! dispatcher numbers the job's events; so exactly one writer numbers a job's
//! events at any time and `seq` has no gaps or duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tsbridge_proto::api::ApiErrorBody;
use tsbridge_proto::{EndReason, ErrorType, EventData, JobEvent, JobId, JobState};

use crate::bus::Bus;
use crate::config::{Config, RetryOn, WorkflowConfig};
use crate::errors::RuntimeError;
use crate::executor::{
    AttemptEvent, AttemptIo, AttemptOutcome, AttemptRequest, Executor, ProcessControl,
};
use crate::queue::ReadyQueue;
use crate::stats::RuntimeStats;
use crate::store::{
    AfterAttempt, AttemptEnd, Finish, Inserted, JobRecord, JobStore, NewJob, StoredRequest,
};

/// Child events written to the store per transaction, at most.
const EVENT_BATCH: usize = 512;
/// Longest text of one event (a longer line is cut).
const MAX_EVENT_TEXT: usize = 64 * 1024;

/// What the dispatcher and the facade share (read-only, or atomics and
/// short-held locks).
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub workflows: BTreeMap<String, Arc<WorkflowConfig>>,
    /// Per workflow: `Ok` or why it cannot run here.
    pub availability: BTreeMap<String, Result<(), String>>,
    pub executors: BTreeMap<String, Arc<dyn Executor>>,
    pub store: Arc<dyn JobStore>,
    pub bus: Bus,
    pub accepting: AtomicBool,
    pub stats: Mutex<RuntimeStats>,
    pub node_id: String,
    pub sandbox: Option<Arc<tsbridge_sandbox::Sandbox>>,
}

/// A job accepted by the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub job_id: JobId,
    pub state: JobState,
    /// The idempotency key named a job that already existed.
    pub existing: bool,
}

pub(crate) enum Command {
    Submit {
        job: Box<NewJob>,
        reply: oneshot::Sender<Result<Submitted, RuntimeError>>,
    },
    Cancel {
        id: JobId,
        reply: oneshot::Sender<Result<(), RuntimeError>>,
    },
    Shutdown {
        drain: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// A finished attempt, reported by its task.
struct AttemptDone {
    id: JobId,
    attempt: u32,
    outcome: AttemptOutcome,
    last_seq: u64,
}

/// What the dispatcher keeps of a live job.
#[derive(Debug)]
struct LiveJob {
    workflow: String,
    priority: i32,
    params: serde_json::Value,
    request: StoredRequest,
    max_attempts: u32,
    attempts_started: u32,
    last_seq: u64,
    slot: Slot,
}

#[derive(Debug)]
enum Slot {
    /// In the ready queue.
    Ready,
    /// Waiting for its retry delay.
    Backoff { until: Instant },
    Running {
        attempt: u32,
        control: ProcessControl,
        started: Instant,
        cancel_waiters: Vec<oneshot::Sender<Result<(), RuntimeError>>>,
    },
}

#[derive(Debug)]
enum Phase {
    Accepting,
    Draining {
        deadline: Instant,
        stopped: bool,
        waiters: Vec<oneshot::Sender<()>>,
    },
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::UnboundedSender<AttemptDone>,
    done_rx: mpsc::UnboundedReceiver<AttemptDone>,
    jobs: HashMap<JobId, LiveJob>,
    ready: ReadyQueue,
    backoff: BTreeSet<(Instant, JobId)>,
    running: usize,
    running_by_workflow: HashMap<String, usize>,
    phase: Phase,
    /// Moving average of attempt wall time, for Retry-After.
    avg_secs: f64,
}

impl Dispatcher {
    pub(crate) fn new(shared: Arc<Shared>, commands: mpsc::Receiver<Command>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            shared,
            commands,
            done_tx,
            done_rx,
            jobs: HashMap::new(),
            ready: ReadyQueue::new(),
            backoff: BTreeSet::new(),
            running: 0,
            running_by_workflow: HashMap::new(),
            phase: Phase::Accepting,
            avg_secs: 1.0,
        }
    }

    /// Takes over queued jobs found in the store at startup.
    pub(crate) fn adopt(&mut self, rec: JobRecord) {
        if self.jobs.contains_key(&rec.id) || rec.state != JobState::Queued {
            return;
        }
        self.shared.bus.open(rec.id);
        self.ready.push(rec.id, &rec.workflow, rec.priority);
        self.jobs.insert(
            rec.id,
            LiveJob {
                workflow: rec.workflow,
                priority: rec.priority,
                params: rec.params,
                request: rec.request,
                max_attempts: rec.max_attempts.max(1),
                attempts_started: rec.attempts_started,
                last_seq: rec.last_seq,
                slot: Slot::Ready,
            },
        );
    }

    pub(crate) async fn run(mut self) {
        self.dispatch().await;
        self.publish_stats();
        loop {
            let next_retry = self.backoff.first().map(|(t, _)| *t);
            let stop_at = match &self.phase {
                Phase::Draining {
                    deadline,
                    stopped: false,
                    ..
                } => Some(*deadline),
                _ => None,
            };
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.on_done(done).await,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Submit { job, reply }) => {
                        let r = self.on_submit(*job).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Cancel { id, reply }) => self.on_cancel(id, reply).await,
                    Some(Command::Shutdown { drain, reply }) => self.on_shutdown(drain, Some(reply)),
                    // Every handle is gone: end the running jobs.
                    None => self.on_shutdown(Duration::ZERO, None),
                },
                _ = sleep_until(next_retry), if next_retry.is_some() => self.on_retry_timer(),
                _ = sleep_until(stop_at), if stop_at.is_some() => self.stop_running(),
            }
            self.dispatch().await;
            self.publish_stats();
            if matches!(self.phase, Phase::Draining { .. }) && self.running == 0 {
                self.finish_shutdown().await;
                return;
            }
        }
    }

    fn accepting(&self) -> bool {
        matches!(self.phase, Phase::Accepting)
    }

    fn waiting(&self) -> usize {
        self.ready.len() + self.backoff.len()
    }

    async fn on_submit(&mut self, job: NewJob) -> Result<Submitted, RuntimeError> {
        if !self.accepting() {
            return Err(RuntimeError::ShuttingDown);
        }
        let store = self.shared.store.clone();
        if let Some(key) = &job.idempotency_key
            && let Some(rec) = store.find_by_idempotency_key(key).await?
        {
            return Ok(Submitted {
                job_id: rec.id,
                state: rec.state,
                existing: true,
            });
        }
        let limit = self.shared.config.defaults.queue_limit;
        if self.waiting() >= limit {
            return Err(RuntimeError::QueueFull {
                limit,
                retry_after: self.retry_after_estimate(),
            });
        }
        // Open the channel first: the id is unknown to clients until we reply.
        self.shared.bus.open(job.id);
        match store.insert_job(&job).await {
            Ok(Inserted::Created) => {}
            Ok(Inserted::Existing(rec)) => {
                self.shared.bus.close(job.id);
                return Ok(Submitted {
                    job_id: rec.id,
                    state: rec.state,
                    existing: true,
                });
            }
            Err(e) => {
                self.shared.bus.close(job.id);
                return Err(e.into());
            }
        }
        self.shared.bus.publish(&job.event);
        self.ready.push(job.id, &job.workflow, job.priority);
        self.jobs.insert(
            job.id,
            LiveJob {
                workflow: job.workflow,
                priority: job.priority,
                params: job.params,
                request: job.request,
                max_attempts: job.max_attempts,
                attempts_started: 0,
                last_seq: job.event.seq,
                slot: Slot::Ready,
            },
        );
        Ok(Submitted {
            job_id: job.id,
            state: JobState::Queued,
            existing: false,
        })
    }

    fn retry_after_estimate(&self) -> Duration {
        let conc = self.shared.config.defaults.concurrency.max(1) as f64;
        let secs = (self.waiting() as f64 / conc + 1.0) * self.avg_secs;
        Duration::from_secs_f64(secs.clamp(1.0, 3600.0))
    }

    /// Starts queued jobs while there is room.
    async fn dispatch(&mut self) {
        while self.accepting() && self.running < self.shared.config.defaults.concurrency.max(1) {
            let (workflows, running) = (&self.shared.workflows, &self.running_by_workflow);
            // Unknown workflows (removed from the config) have room: they fail at start.
            let has_room = |wf: &str| {
                let limit = workflows
                    .get(wf)
                    .and_then(|w| w.concurrency)
                    .unwrap_or(usize::MAX);
                running.get(wf).copied().unwrap_or(0) < limit
            };
            let Some((id, _)) = self.ready.pop(has_room) else {
                break;
            };
            self.start(id).await;
        }
    }

    async fn start(&mut self, id: JobId) {
        let shared = self.shared.clone();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let wf = shared.workflows.get(&job.workflow).cloned();
        let executor = shared.executors.get(&job.workflow).cloned();
        let available = shared
            .availability
            .get(&job.workflow)
            .cloned()
            .unwrap_or_else(|| Err("no such workflow in the config".into()));
        let (wf, executor) = match (wf, executor, available) {
            (Some(wf), Some(ex), Ok(())) => (wf, ex),
            (_, _, Err(why)) => {
                self.fail_unstartable(id, &why).await;
                return;
            }
            _ => {
                self.fail_unstartable(id, "no executor serves it").await;
                return;
            }
        };
        let n = job.attempts_started + 1;
        let seq = job.last_seq + 1;
        let event = state_event(id, seq, JobState::Running, None, Some(n));
        if let Err(e) = shared
            .store
            .start_attempt(id, n, &shared.node_id, Utc::now(), &event)
            .await
        {
            // It stays queued in the store; a restart picks it up.
            tracing::error!(job = %id, error = %e, "cannot record the start of an attempt");
            self.jobs.remove(&id);
            shared.bus.close(id);
            return;
        }
        job.attempts_started = n;
        job.last_seq = seq;
        shared.bus.publish(&event);
        let timeout = job
            .request
            .timeout()
            .map_or(wf.timeout, |t| t.min(wf.timeout));
        let control = ProcessControl::new();
        let req = AttemptRequest {
            job_id: id,
            attempt: n,
            workflow: wf.clone(),
            params: job.params.clone(),
            request_env: job.request.env.clone(),
            timeout,
        };
        job.slot = Slot::Running {
            attempt: n,
            control: control.clone(),
            started: Instant::now(),
            cancel_waiters: Vec::new(),
        };
        self.running += 1;
        *self.running_by_workflow.entry(wf.name.clone()).or_default() += 1;
        let task = tokio::spawn(run_attempt(
            executor,
            req,
            control,
            shared.store.clone(),
            shared.bus.clone(),
            seq,
            self.done_tx.clone(),
        ));
        // If the attempt's task panics, its slot must still be freed: report
        // the attempt as interrupted (its process was killed when the
        // engine's handle was dropped), numbering on from the store.
        let done = self.done_tx.clone();
        let store = shared.store.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(job = %id, attempt = n, "an attempt's task panicked");
                let last_seq = match store.get_job(id).await {
                    Ok(Some(r)) => r.last_seq,
                    _ => seq,
                };
                let mut outcome =
                    AttemptOutcome::spawn_failure("internal error while the job ran", false);
                outcome.reason = EndReason::Interrupted;
                let _ = done.send(AttemptDone {
                    id,
                    attempt: n,
                    outcome,
                    last_seq,
                });
            }
        });
    }

    /// A queued job whose workflow cannot run here fails at once.
    async fn fail_unstartable(&mut self, id: JobId, why: &str) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        let seq = job.last_seq + 1;
        let event = state_event(
            id,
            seq,
            JobState::Failed,
            Some(EndReason::SpawnFailure),
            None,
        );
        let finish = Finish {
            state: JobState::Failed,
            reason: Some(EndReason::SpawnFailure),
            result: None,
            error: Some(ApiErrorBody {
                kind: ErrorType::Unavailable,
                message: format!("workflow {:?} is unavailable: {why}", job.workflow),
                details: Some(json!({ "jobId": id })),
            }),
            finished_at: Utc::now(),
        };
        if let Err(e) = self.shared.store.finish_job(id, &finish, &event).await {
            tracing::error!(job = %id, error = %e, "cannot record a job's end");
        }
        self.shared.bus.publish(&event);
        self.shared.bus.close(id);
        count_finished(&self.shared, &job.workflow, JobState::Failed, None);
        metrics::counter!("tsbridge_spawn_failures_total", "workflow" => job.workflow.clone())
            .increment(1);
    }

    async fn on_done(&mut self, done: AttemptDone) {
        let shared = self.shared.clone();
        let accepting = self.accepting();
        let Some(job) = self.jobs.get_mut(&done.id) else {
            return;
        };
        let Slot::Running {
            attempt,
            control,
            started,
            cancel_waiters,
        } = std::mem::replace(&mut job.slot, Slot::Ready)
        else {
            return;
        };
        debug_assert_eq!(attempt, done.attempt);
        self.running = self.running.saturating_sub(1);
        if let Some(c) = self.running_by_workflow.get_mut(&job.workflow) {
            *c = c.saturating_sub(1);
        }
        let wall = started.elapsed().as_secs_f64();
        self.avg_secs = 0.8 * self.avg_secs + 0.2 * wall.max(0.01);
        job.last_seq = done.last_seq;

        let o = done.outcome;
        if o.reason == EndReason::SpawnFailure {
            metrics::counter!("tsbridge_spawn_failures_total", "workflow" => job.workflow.clone())
                .increment(1);
        }
        let (state, reason) = classify(&o);
        let stop_requested = control.request().is_some();
        let retry_cfg = shared.workflows.get(&job.workflow).map(|w| &w.retry);
        let retry = state != JobState::Succeeded
            && !stop_requested
            && job.attempts_started < job.max_attempts
            && retry_cfg.is_some_and(|r| retryable(&r.retry_on, &o));
        let end = AttemptEnd {
            n: attempt,
            reason: o.reason,
            exit_code: o.exit_code,
            signal: o.signal,
            process_id: o.pid,
            error: o.error.clone(),
            finished_at: Utc::now(),
            output: o.output.clone(),
            resources: o.resources.clone(),
        };
        job.last_seq += 1;
        let seq = job.last_seq;
        if retry {
            let event = state_event(
                done.id,
                seq,
                JobState::Queued,
                Some(o.reason),
                Some(attempt),
            );
            if let Err(e) = shared
                .store
                .complete_attempt(done.id, &end, &AfterAttempt::Requeue, &event)
                .await
            {
                tracing::error!(job = %done.id, error = %e, "cannot record an attempt's end");
            }
            shared.bus.publish(&event);
            for w in cancel_waiters {
                let _ = w.send(Ok(()));
            }
            if accepting {
                let delay = retry_cfg.map_or(Duration::ZERO, |r| r.delay(attempt + 1));
                let until = Instant::now() + delay;
                job.slot = Slot::Backoff { until };
                self.backoff.insert((until, done.id));
                tracing::info!(job = %done.id, attempt, ?delay, "retrying");
            } else {
                // Shutting down: it stays queued in the store.
                self.jobs.remove(&done.id);
                shared.bus.close(done.id);
            }
            return;
        }

        let error =
            (state != JobState::Succeeded).then(|| error_body(done.id, attempt, state, reason, &o));
        let finish = Finish {
            state,
            reason: Some(reason),
            result: o.result.clone(),
            error,
            finished_at: Utc::now(),
        };
        let event = state_event(done.id, seq, state, Some(reason), Some(attempt));
        if let Err(e) = shared
            .store
            .complete_attempt(done.id, &end, &AfterAttempt::Finish(finish), &event)
            .await
        {
            tracing::error!(job = %done.id, error = %e, "cannot record a job's end");
        }
        shared.bus.publish(&event);
        shared.bus.close(done.id);
        let workflow = job.workflow.clone();
        self.jobs.remove(&done.id);
        count_finished(&shared, &workflow, state, Some(wall));
        for w in cancel_waiters {
            let _ = w.send(Ok(()));
        }
    }

    async fn on_cancel(&mut self, id: JobId, reply: oneshot::Sender<Result<(), RuntimeError>>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            let r = match self.shared.store.get_job(id).await {
                Ok(Some(rec)) if rec.state.is_terminal() => Err(RuntimeError::AlreadyFinished {
                    id,
                    state: rec.state,
                }),
                Ok(Some(_)) => Err(RuntimeError::ShuttingDown),
                Ok(None) => Err(RuntimeError::JobNotFound(id)),
                Err(e) => Err(e.into()),
            };
            let _ = reply.send(r);
            return;
        };
        match &mut job.slot {
            Slot::Running {
                control,
                cancel_waiters,
                ..
            } => {
                control.cancel();
                cancel_waiters.push(reply);
            }
            Slot::Ready | Slot::Backoff { .. } => {
                if let Slot::Backoff { until } = job.slot {
                    self.backoff.remove(&(until, id));
                }
                self.ready.remove(id);
                let seq = job.last_seq + 1;
                let workflow = job.workflow.clone();
                self.jobs.remove(&id);
                let event = state_event(
                    id,
                    seq,
                    JobState::Cancelled,
                    Some(EndReason::Cancelled),
                    None,
                );
                let finish = Finish {
                    state: JobState::Cancelled,
                    reason: Some(EndReason::Cancelled),
                    result: None,
                    error: Some(ApiErrorBody {
                        kind: ErrorType::Conflict,
                        message: "the job was cancelled".into(),
                        details: Some(json!({ "jobId": id })),
                    }),
                    finished_at: Utc::now(),
                };
                let r = self
                    .shared
                    .store
                    .finish_job(id, &finish, &event)
                    .await
                    .map_err(RuntimeError::from);
                self.shared.bus.publish(&event);
                self.shared.bus.close(id);
                count_finished(&self.shared, &workflow, JobState::Cancelled, None);
                let _ = reply.send(r);
            }
        }
    }

    fn on_retry_timer(&mut self) {
        let now = Instant::now();
        while let Some(&(until, id)) = self.backoff.first() {
            if until > now {
                break;
            }
            self.backoff.remove(&(until, id));
            if let Some(job) = self.jobs.get_mut(&id) {
                job.slot = Slot::Ready;
                self.ready.push(id, &job.workflow, job.priority);
            }
        }
    }

    fn on_shutdown(&mut self, drain: Duration, reply: Option<oneshot::Sender<()>>) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + drain;
        match &mut self.phase {
            Phase::Accepting => {
                // Queued and backing-off jobs stay queued in the store.
                let waiting: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| !matches!(j.slot, Slot::Running { .. }))
                    .map(|(id, _)| *id)
                    .collect();
                for id in waiting {
                    self.jobs.remove(&id);
                    self.ready.remove(id);
                    self.shared.bus.close(id);
                }
                self.backoff.clear();
                self.phase = Phase::Draining {
                    deadline,
                    stopped: false,
                    waiters: reply.into_iter().collect(),
                };
            }
            Phase::Draining {
                deadline: d,
                waiters,
                ..
            } => {
                if deadline < *d {
                    *d = deadline;
                }
                waiters.extend(reply);
            }
        }
        tracing::info!(running = self.running, ?drain, "shutting down");
    }

    /// The drain time is over: stop every running attempt (TERM, grace, KILL).
    fn stop_running(&mut self) {
        if let Phase::Draining { stopped, .. } = &mut self.phase {
            *stopped = true;
        }
        for job in self.jobs.values() {
            if let Slot::Running { control, .. } = &job.slot {
                control.shutdown();
            }
        }
    }

    async fn finish_shutdown(&mut self) {
        let grace = self.shared.config.defaults.kill_grace;
        let mut seen = Vec::new();
        for ex in self.shared.executors.values() {
            // Several workflows may share one executor.
            let ptr = Arc::as_ptr(ex) as *const () as usize;
            if !seen.contains(&ptr) {
                seen.push(ptr);
                ex.shutdown(grace).await;
            }
        }
        self.shared.bus.close_all();
        self.publish_stats();
        if let Phase::Draining { waiters, .. } = &mut self.phase {
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn publish_stats(&self) {
        let queued = self.waiting() as u64;
        let running = self.running as u64;
        metrics::gauge!("tsbridge_queue_depth").set(queued as f64);
        metrics::gauge!("tsbridge_jobs_running").set(running as f64);
        let mut s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.queued = queued;
        s.running = running;
        s.running_by_workflow = self
            .running_by_workflow
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(w, n)| (w.clone(), *n as u64))
            .collect();
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn state_event(
    id: JobId,
    seq: u64,
    state: JobState,
    reason: Option<EndReason>,
    attempt: Option<u32>,
) -> JobEvent {
    JobEvent {
        seq,
        job_id: id,
        timestamp: Utc::now(),
        data: EventData::State {
            state,
            reason,
            attempt,
        },
    }
}

fn count_finished(shared: &Shared, workflow: &str, state: JobState, wall: Option<f64>) {
    metrics::counter!("tsbridge_jobs_total", "workflow" => workflow.to_owned(), "state" => state.as_str())
        .increment(1);
    if let Some(w) = wall {
        metrics::histogram!("tsbridge_job_duration_seconds", "workflow" => workflow.to_owned())
            .record(w);
    }
    let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    *s.finished
        .entry(workflow.to_owned())
        .or_default()
        .entry(state.as_str().to_owned())
        .or_default() += 1;
}

/// The job state and reason an attempt's outcome means (before retries).
pub(crate) fn classify(o: &AttemptOutcome) -> (JobState, EndReason) {
    let state = match o.reason {
        EndReason::Exited if o.exit_code == Some(0) => JobState::Succeeded,
        EndReason::Timeout => JobState::TimedOut,
        EndReason::Cancelled => JobState::Cancelled,
        _ => JobState::Failed,
    };
    (state, o.reason)
}

/// Whether the workflow's retry policy covers this outcome.
pub(crate) fn retryable(on: &[RetryOn], o: &AttemptOutcome) -> bool {
    let class = match o.reason {
        EndReason::SpawnFailure if o.transient => RetryOn::SpawnFailure,
        EndReason::Timeout => RetryOn::Timeout,
        EndReason::Signaled => RetryOn::Signaled,
        EndReason::Exited if o.exit_code != Some(0) => RetryOn::Exited,
        EndReason::MemoryLimit => RetryOn::MemoryLimit,
        EndReason::CpuLimit => RetryOn::CpuLimit,
        EndReason::PidsLimit => RetryOn::PidsLimit,
        _ => return false,
    };
    on.contains(&class)
}

fn error_body(
    id: JobId,
    attempt: u32,
    state: JobState,
    reason: EndReason,
    o: &AttemptOutcome,
) -> ApiErrorBody {
    let kind = ErrorType::for_end(state, Some(reason)).unwrap_or(ErrorType::ExecutionError);
    let message = o
        .error
        .clone()
        .unwrap_or_else(|| format!("the job ended: {reason}"));
    let mut details = json!({ "jobId": id, "attempt": attempt, "reason": reason });
    if let Some(c) = o.exit_code {
        details["exitCode"] = json!(c);
    }
    if let Some(s) = o.signal {
        details["signal"] = json!(s);
    }
    if !o.stderr_tail.is_empty() {
        details["stderrTail"] = json!(o.stderr_tail);
    }
    ApiErrorBody {
        kind,
        message,
        details: Some(details),
    }
}

fn cap_text(mut s: String) -> String {
    if s.len() > MAX_EVENT_TEXT {
        let mut end = MAX_EVENT_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("…[cut]");
    }
    s
}

fn event_data(e: tsbridge_proto::ChildEvent) -> EventData {
    match EventData::from(e) {
        EventData::Log { level, message } => EventData::Log {
            level,
            message: cap_text(message),
        },
        EventData::Stdout { line } => EventData::Stdout {
            line: cap_text(line),
        },
        EventData::Stderr { line } => EventData::Stderr {
            line: cap_text(line),
        },
        other => other,
    }
}

/// Runs one attempt: the executor, and beside it the numbering, storing and
/// publishing of the child's events. Reports to the dispatcher at the end.
async fn run_attempt(
    executor: Arc<dyn Executor>,
    req: AttemptRequest,
    control: ProcessControl,
    store: Arc<dyn JobStore>,
    bus: Bus,
    mut last_seq: u64,
    done: mpsc::UnboundedSender<AttemptDone>,
) {
    let id = req.job_id;
    let n = req.attempt;
    let (tx, mut rx) = mpsc::channel::<AttemptEvent>(EVENT_BATCH * 2);
    let run = executor.run(
        req,
        AttemptIo {
            events: tx,
            control,
        },
    );
    tokio::pin!(run);
    let mut batch: Vec<JobEvent> = Vec::new();
    let outcome = loop {
        tokio::select! {
            biased;
            Some(first) = rx.recv() => {
                handle(&store, id, n, first, &mut last_seq, &mut batch).await;
                while batch.len() < EVENT_BATCH {
                    match rx.try_recv() {
                        Ok(e) => handle(&store, id, n, e, &mut last_seq, &mut batch).await,
                        Err(_) => break,
                    }
                }
                flush(&store, &bus, id, &mut batch).await;
            }
            o = &mut run => break o,
        }
    };
    while let Ok(e) = rx.try_recv() {
        handle(&store, id, n, e, &mut last_seq, &mut batch).await;
        if batch.len() >= EVENT_BATCH {
            flush(&store, &bus, id, &mut batch).await;
        }
    }
    flush(&store, &bus, id, &mut batch).await;
    let _ = done.send(AttemptDone {
        id,
        attempt: n,
        outcome,
        last_seq,
    });
}

async fn handle(
    store: &Arc<dyn JobStore>,
    id: JobId,
    n: u32,
    e: AttemptEvent,
    last_seq: &mut u64,
    batch: &mut Vec<JobEvent>,
) {
    match e {
        AttemptEvent::Started { pid } => {
            if let Err(err) = store.set_attempt_pid(id, n, pid).await {
                tracing::warn!(job = %id, error = %err, "cannot record the pid");
            }
        }
        AttemptEvent::Child(ce) => {
            *last_seq += 1;
            batch.push(JobEvent {
                seq: *last_seq,
                job_id: id,
                timestamp: Utc::now(),
                data: event_data(ce),
            });
        }
    }
}

async fn flush(store: &Arc<dyn JobStore>, bus: &Bus, id: JobId, batch: &mut Vec<JobEvent>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.append_events(id, batch).await {
        tracing::warn!(job = %id, error = %e, count = batch.len(), "cannot store events");
    }
    for e in batch.drain(..) {
        bus.publish(&e);
    }
}
