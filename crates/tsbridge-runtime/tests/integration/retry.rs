//! Retries: each attempt is recorded; the next starts only after the
//! previous attempt's process is gone (their start/end lines never
//! interleave); a non-retryable end is final.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::{EndReason, JobState};

#[tokio::test]
async fn retries_are_recorded_and_never_overlap() {
    let h = start(&workflow(
        "job",
        "retry = { attempts = 3, backoff = \"50ms\", multiplier = 2.0, jitter = 0.0 }",
    ))
    .await;
    let log = h.path("attempts.log");
    let counter = h.path("counter");
    let id = h
        .submit(
            "job",
            json!({"log": log, "failTimes": 2, "counter": counter, "sleepMs": 100, "result": "ok"}),
        )
        .await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.attempts.len(), 3);
    assert_eq!(
        v.attempts.iter().map(|a| a.n).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(v.attempts[0].reason, Some(EndReason::Signaled));
    assert_eq!(v.attempts[1].reason, Some(EndReason::Signaled));
    assert_eq!(v.attempts[2].reason, Some(EndReason::Exited));
    for w in v.attempts.windows(2) {
        let prev_end = w[0].finished_at.expect("finished");
        assert!(
            w[1].started_at >= prev_end,
            "attempt {} started before {} ended",
            w[1].n,
            w[0].n
        );
    }
    let lines = h.log_lines("attempts.log");
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["start", "end", "start", "end", "start", "end"],
        "{lines:?}"
    );

    // A non-zero exit is not retried by default.
    let id = h.submit("job", json!({"exit": 2})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.attempts.len(), 1);
}
