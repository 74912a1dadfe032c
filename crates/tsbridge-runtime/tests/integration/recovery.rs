//! Restart after a crash: jobs the store shows `running` (as a SIGKILLed
//! server leaves them) are re-queued if attempts remain, else failed with
//! reason `interrupted`; queued jobs resume. Every job ends.

use crate::common;

use std::sync::Arc;

use chrono::Utc;
use common::*;
use serde_json::json;
use tsbridge_proto::{EndReason, JobEvent, JobId, JobState};
use tsbridge_runtime::store::{JobStore, NewJob, StoredRequest};
use tsbridge_runtime::{Runtime, RuntimeOptions};

/// A `state` event without a reason.
fn state(id: JobId, seq: u64, s: JobState, attempt: Option<u32>) -> JobEvent {
    tsbridge_runtime::test_util::state_event(id, seq, s, None, attempt)
}

async fn insert(store: &dyn JobStore, max_attempts: u32, running: bool) -> JobId {
    let id = JobId::new();
    store
        .insert_job(&NewJob {
            id,
            workflow: "job".into(),
            priority: 0,
            params: json!({"result": "done"}),
            request: StoredRequest::default(),
            idempotency_key: None,
            max_attempts,
            created_at: Utc::now(),
            event: state(id, 1, JobState::Queued, None),
        })
        .await
        .expect("insert");
    if running {
        store
            .start_attempt(
                id,
                1,
                "dead-node",
                Utc::now(),
                &state(id, 2, JobState::Running, Some(1)),
            )
            .await
            .expect("start");
    }
    id
}

#[tokio::test]
async fn every_accepted_job_ends_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path()).await;
    let retryable = insert(store.as_ref(), 2, true).await;
    let exhausted = insert(store.as_ref(), 1, true).await;
    let queued = insert(store.as_ref(), 1, false).await;

    let rt = Runtime::start(
        config(&workflow("job", "")),
        store.clone() as Arc<dyn JobStore>,
        RuntimeOptions::default(),
    )
    .await
    .expect("start");
    let wait = |id| {
        let rt = rt.clone();
        async move {
            tokio::time::timeout(SOON, rt.wait(id))
                .await
                .expect("in time")
                .expect("wait")
        }
    };

    let v = wait(retryable).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.attempts.len(), 2);
    assert_eq!(v.attempts[0].reason, Some(EndReason::Interrupted));
    assert_eq!(v.result, Some(json!("done")));

    let v = wait(exhausted).await;
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.reason, Some(EndReason::Interrupted));
    assert_eq!(v.attempts.len(), 1);
    assert_eq!(v.attempts[0].reason, Some(EndReason::Interrupted));

    let v = wait(queued).await;
    assert_eq!(v.state, JobState::Succeeded);

    // Events stay numbered without gaps across the crash.
    let events = rt.events_after(retryable, 0).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}
