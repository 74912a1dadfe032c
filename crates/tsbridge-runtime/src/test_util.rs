//! Helpers shared by the crate's tests and benchmarks (feature
//! `test-support`, which the crate's own dev-dependency turns on: never in
//! a release build of the server): the events and attempt ends a test
//! writes to a store as the dispatcher would.

#[cfg(test)]
use std::collections::BTreeMap;

use chrono::Utc;
use tsbridge_proto::api::{OutputView, Resources};
use tsbridge_proto::{EndReason, EventData, JobEvent, JobId, JobState};

use crate::store::AttemptEnd;

/// An environment (name -> value) from pairs.
#[cfg(test)]
pub(crate) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Event `seq` of job `id`, now.
pub fn event(id: JobId, seq: u64, data: EventData) -> JobEvent {
    JobEvent {
        seq,
        job_id: id,
        timestamp: Utc::now(),
        data,
    }
}

/// The `state` event `seq` of job `id`, now: the dispatcher's own.
pub fn state_event(
    id: JobId,
    seq: u64,
    state: JobState,
    reason: Option<EndReason>,
    attempt: Option<u32>,
) -> JobEvent {
    crate::dispatcher::state_event(id, seq, state, reason, attempt)
}

/// The end of attempt `n` for `reason`, now: exit code 0 when it exited,
/// SIGKILL when signalled, nothing else.
pub fn attempt_end(n: u32, reason: EndReason) -> AttemptEnd {
    AttemptEnd {
        n,
        reason,
        exit_code: (reason == EndReason::Exited).then_some(0),
        signal: (reason == EndReason::Signaled).then_some(9),
        process_id: None,
        error: None,
        finished_at: Utc::now(),
        output: OutputView::default(),
        resources: Resources::default(),
        retry_in: None,
    }
}
