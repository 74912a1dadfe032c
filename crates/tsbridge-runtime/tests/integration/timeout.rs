//! Timeouts: the workflow's timeout ends a job `timed_out`; a request can
//! lower it but never raise it above the workflow's.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::{DurationSpec, EndReason, ErrorType, JobState};

#[tokio::test]
async fn workflow_and_request_timeouts() {
    let h = start(&format!(
        "[defaults]\nkill_grace = \"200ms\"\n{}{}",
        workflow("short", "timeout = \"500ms\""),
        workflow("long", "timeout = \"10m\"")
    ))
    .await;
    let id = h.submit("short", json!({"hang": true})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::TimedOut);
    assert_eq!(v.reason, Some(EndReason::Timeout));
    assert_eq!(
        v.error.as_ref().map(|e| e.kind),
        Some(ErrorType::TimeoutError)
    );

    // The request lowers the limit.
    let lowered = JobOptions {
        timeout: Some(DurationSpec::from_millis(400)),
        ..JobOptions::default()
    };
    let id = h.submit_opts("long", json!({"hang": true}), lowered).await;
    assert_eq!(h.wait(id).await.state, JobState::TimedOut);

    // It cannot raise it: 500ms stays the ceiling although 10 minutes were asked.
    let raised = JobOptions {
        timeout: Some(DurationSpec::from_millis(600_000)),
        ..JobOptions::default()
    };
    let id = h.submit_opts("short", json!({"hang": true}), raised).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::TimedOut);
    let wall = v.resources.wall_time_ms.expect("wall");
    assert!(
        wall < 60_000,
        "the workflow's 500ms was the ceiling, ran {wall}ms"
    );
}
