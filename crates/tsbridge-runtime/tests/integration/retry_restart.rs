//! A retry's backoff is stored with its re-queue (`not_before`): a server
//! restarted while a job waits for its retry waits out the rest of the
//! backoff before the next attempt (it started it at once before).

use std::time::Duration;

use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_runtime::store::JobStore;
use tsbridge_runtime::{Runtime, RuntimeOptions};

use crate::common::{self, SOON};

#[tokio::test]
async fn a_restart_waits_out_a_stored_retry_delay() {
    let toml = common::workflow(
        "job",
        "retry = { attempts = 2, backoff = \"5s\", multiplier = 1.0, jitter = 0.0 }",
    );
    let h = common::start(&toml).await;
    let counter = h.path("counter");
    // Attempt 1 kills itself (retried after 5 s); attempt 2 succeeds.
    let id = h
        .submit(
            "job",
            json!({"failTimes": 1, "counter": counter, "result": "second"}),
        )
        .await;
    let deadline = tokio::time::Instant::now() + SOON;
    let requeued = loop {
        let r = h.store.get_job(id).await.expect("get").expect("job");
        if r.state == JobState::Queued
            && r.attempts.first().is_some_and(|a| a.finished_at.is_some())
        {
            break r;
        }
        assert!(!r.state.is_terminal(), "ended early: {r:?}");
        assert!(tokio::time::Instant::now() < deadline, "never re-queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The server stops while the job waits for its retry: it stays queued.
    h.rt.shutdown(Duration::ZERO).await;
    let r = h.store.get_job(id).await.expect("get").expect("job");
    assert_eq!(r.state, JobState::Queued);
    assert_eq!(
        r.attempts.len(),
        1,
        "the retry did not start before the stop (a loaded machine took 5 s?): {r:?}"
    );
    let not_before = requeued.not_before.expect("the retry's start is stored");
    // A restart on the same store.
    let rt = Runtime::start(h.config.clone(), h.store.clone(), RuntimeOptions::default())
        .await
        .expect("runtime starts again");
    let v = tokio::time::timeout(SOON, rt.wait(id))
        .await
        .expect("job finishes in time")
        .expect("wait");
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.attempts.len(), 2);
    assert!(
        v.attempts[1].started_at >= not_before,
        "attempt 2 started at {}, before its stored start {not_before}",
        v.attempts[1].started_at
    );
    rt.shutdown(Duration::ZERO).await;
}
