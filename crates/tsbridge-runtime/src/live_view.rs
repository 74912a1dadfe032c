//! The view of a live job, kept by the dispatcher beside the writes it has
//! the store do: each function here applies to a [`JobView`] the change a
//! store write makes to the job's row (the same columns, the same
//! `COALESCE`s, times cut to the store's milliseconds). When the job's end
//! is written, the view is what reading the job back would give, so a
//! waiter (`Runtime::wait`, and so the sync execute route) is answered
//! from it without a read of the store.
//!
//! The store stays the truth: a view is handed out only with a job's end
//! that was written, and only by the node that wrote it (a failed write, a
//! shutdown, or a job ended by another node is read back from the store).
//! `live_view_matches_the_store` (tests/integration) holds the two equal.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tsbridge_proto::api::{AttemptView, JobView, OutputView, Resources};
use tsbridge_proto::{JobState, Progress};

use crate::store::{AfterAttempt, AttemptEnd, Finish, NewJob};

/// A time as the store keeps it (Unix milliseconds).
fn stored(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// A submission, as `insert_job` writes it.
pub(crate) fn queued(job: &NewJob) -> JobView {
    JobView {
        job_id: job.id,
        workflow: job.workflow.clone(),
        state: JobState::Queued,
        reason: None,
        priority: job.priority,
        created_at: stored(job.created_at),
        started_at: None,
        finished_at: None,
        attempts: Vec::new(),
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

/// `start_attempt`: attempt `n` claimed at `at`.
pub(crate) fn started(view: &mut JobView, n: u32, at: DateTime<Utc>) {
    let at = stored(at);
    view.state = JobState::Running;
    view.started_at.get_or_insert(at);
    view.attempts.push(AttemptView {
        n,
        started_at: at,
        finished_at: None,
        reason: None,
        exit_code: None,
        signal: None,
        process_id: None,
    });
}

/// A claim the store failed: [`started`] undone (nothing was written).
pub(crate) fn unstarted(view: &mut JobView) {
    view.attempts.pop();
    if view.attempts.is_empty() {
        view.started_at = None;
    }
    view.state = JobState::Queued;
}

/// `append_events` and `set_attempt_pid`: the last progress and result
/// events written, and the pid.
pub(crate) fn reported(
    view: &mut JobView,
    progress: Option<Progress>,
    result: Option<Value>,
    pid: Option<u32>,
) {
    if progress.is_some() {
        view.progress = progress;
    }
    if result.is_some() {
        view.result = result;
    }
    if let Some(pid) = pid {
        view.process_id = Some(pid);
        if let Some(a) = view.attempts.last_mut() {
            a.process_id = Some(pid);
        }
    }
}

/// `complete_attempt`: the attempt's end, then the job re-queued or ended.
pub(crate) fn attempt_ended(view: &mut JobView, end: &AttemptEnd, next: &AfterAttempt) {
    if let Some(a) = view.attempts.iter_mut().rev().find(|a| a.n == end.n) {
        a.finished_at = Some(stored(end.finished_at));
        a.reason = Some(end.reason);
        a.exit_code = end.exit_code;
        a.signal = end.signal;
        a.process_id = end.process_id.or(a.process_id);
    }
    view.exit_code = end.exit_code;
    view.signal = end.signal;
    view.process_id = end.process_id.or(view.process_id);
    view.output = end.output.clone();
    view.resources = end.resources.clone();
    match next {
        AfterAttempt::Requeue => view.state = JobState::Queued,
        AfterAttempt::Finish(f) => finished(view, f),
    }
}

/// `finish_job` (and the finishing half of `complete_attempt`).
pub(crate) fn finished(view: &mut JobView, f: &Finish) {
    view.state = f.state;
    view.reason = f.reason;
    if f.result.is_some() {
        view.result = f.result.clone();
    }
    view.error = f.error.clone();
    view.finished_at = Some(stored(f.finished_at));
}
