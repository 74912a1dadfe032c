//! `Runtime::wait` answers from the dispatcher's own view of a job whose
//! end it wrote (no read of the store); that view must be exactly what
//! reading the job back gives, for every way a job ends.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_proto::api::{JobOptions, JobView};

/// Waits for `id`, then checks the answer against the store's.
async fn same_as_stored(h: &Harness, id: tsbridge_proto::JobId) -> JobView {
    let waited = h.wait(id).await;
    let stored = h.rt.get(id).await.expect("get");
    assert_eq!(waited, stored, "wait's view differs from the stored job");
    waited
}

#[tokio::test]
async fn the_view_wait_answers_is_the_stored_job() {
    let h = start(&format!(
        "{}{}",
        workflow(
            "job",
            "retry = { attempts = 3, backoff = \"20ms\", multiplier = 1.0, jitter = 0.0 }"
        ),
        workflow("one", "concurrency = 1"),
    ))
    .await;

    // Progress, a result, output.
    let id = h
        .submit(
            "job",
            json!({"progress": 3, "lines": 2, "result": {"ok": 1}}),
        )
        .await;
    let v = same_as_stored(&h, id).await;
    assert_eq!(v.state, JobState::Succeeded);
    assert!(v.progress.is_some() && v.result.is_some() && v.process_id.is_some());

    // Two failed attempts, then a success: three attempts, their pids.
    let counter = h.path("counter");
    let id = h
        .submit(
            "job",
            json!({"failTimes": 2, "counter": counter, "progress": 1, "result": "third"}),
        )
        .await;
    let v = same_as_stored(&h, id).await;
    assert_eq!((v.state, v.attempts.len()), (JobState::Succeeded, 3));

    // A non-zero exit (not retried): the error body, the exit code.
    let id = h.submit("job", json!({"exit": 3})).await;
    let v = same_as_stored(&h, id).await;
    assert_eq!((v.state, v.exit_code), (JobState::Failed, Some(3)));

    // A timeout (SIGTERM, grace, SIGKILL).
    let id = h
        .submit_opts(
            "job",
            json!({"hang": true, "ignoreTerm": true}),
            JobOptions {
                timeout: Some(tsbridge_proto::units::DurationSpec(
                    std::time::Duration::from_millis(300),
                )),
                ..Default::default()
            },
        )
        .await;
    let v = same_as_stored(&h, id).await;
    assert_eq!(v.state, JobState::TimedOut);

    // Cancelled while running, and cancelled while queued (never started:
    // the end is written without an attempt).
    let running = h.submit("one", json!({"hang": true})).await;
    h.until_state(running, JobState::Running).await;
    let queued = h.submit("one", json!({"result": 1})).await;
    h.rt.cancel(queued).await.expect("cancel the queued job");
    h.rt.cancel(running).await.expect("cancel the running job");
    for id in [queued, running] {
        let v = same_as_stored(&h, id).await;
        assert_eq!(v.state, JobState::Cancelled);
    }
}

#[tokio::test]
async fn the_view_of_a_pooled_job_is_the_stored_job() {
    let h = start(&format!(
        "[workflows.pooled]\nroot = \"{}\"\nscript = \"handler.mjs\"\nruntime = \"node\"\n\
         mode = \"pool\"\npool = {{ min = 1, max = 1 }}\n",
        fixtures().display()
    ))
    .await;
    for params in [json!({"i": 1, "progress": 2}), json!({"i": 2})] {
        let id = h.submit("pooled", params).await;
        let v = same_as_stored(&h, id).await;
        assert_eq!(v.state, JobState::Succeeded, "{v:?}");
        assert!(v.result.is_some());
    }
}
