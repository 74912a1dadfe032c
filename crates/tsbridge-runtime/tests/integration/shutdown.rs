//! Shutdown: submissions are refused at once; running jobs get the drain
//! time to finish; the rest are ended (TERM, grace, KILL) and recorded
//! `failed` with reason `shutdown`; queued jobs stay queued in the store.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::{EndReason, ErrorType, JobState};

#[tokio::test]
async fn running_jobs_fail_with_shutdown_queued_stay_queued() {
    let h = start(&format!(
        "[defaults]\nconcurrency = 1\nkill_grace = \"300ms\"\n{}",
        workflow("job", "")
    ))
    .await;
    let running = h
        .submit("job", json!({"hang": true, "ignoreTerm": true}))
        .await;
    let queued = h.submit("job", json!({})).await;
    h.until_state(running, JobState::Running).await;

    tokio::time::timeout(SOON, h.rt.shutdown(Duration::ZERO))
        .await
        .expect("shutdown ends");

    let v = h.rt.get(running).await.expect("get");
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.reason, Some(EndReason::Shutdown));
    assert_eq!(v.attempts[0].reason, Some(EndReason::Shutdown));
    let q = h.rt.get(queued).await.expect("get");
    assert_eq!(q.state, JobState::Queued);
    assert!(q.attempts.is_empty());

    let e =
        h.rt.submit("job", json!({}), JobOptions::default())
            .await
            .expect_err("refused");
    assert_eq!(e.error_type(), ErrorType::Unavailable);
    assert!(!h.rt.readiness().await.ready);
}

#[tokio::test]
async fn running_jobs_may_finish_within_the_drain_time() {
    let h = start(&workflow("job", "")).await;
    let id = h
        .submit("job", json!({"sleepMs": 300, "result": "finished"}))
        .await;
    h.until_state(id, JobState::Running).await;
    tokio::time::timeout(SOON, h.rt.shutdown(Duration::from_secs(30)))
        .await
        .expect("shutdown ends");
    let v = h.rt.get(id).await.expect("get");
    assert_eq!(v.state, JobState::Succeeded);
    assert_eq!(v.result, Some(json!("finished")));
}
