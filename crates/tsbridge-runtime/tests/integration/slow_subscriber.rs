//! A subscriber that never reads is dropped when its buffer is full; the job
//! is not slowed and still finishes, and its events are all stored.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_runtime::RuntimeOptions;

#[tokio::test]
async fn slow_subscriber_is_dropped_and_the_job_finishes() {
    let opts = RuntimeOptions {
        subscriber_buffer: Some(8),
        ..RuntimeOptions::default()
    };
    let h = start_with(
        &format!("[defaults]\nconcurrency = 1\n{}", workflow("job", "")),
        opts,
    )
    .await;
    let blocker = h.submit("job", json!({"hang": true})).await;
    let id = h.submit("job", json!({"lines": 500})).await;
    // Subscribe while it is queued, then never read until it is over.
    let mut slow = h.rt.subscribe(id);
    h.rt.cancel(blocker).await.expect("cancel");
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded);
    let mut got = 0;
    while slow.recv().await.is_some() {
        got += 1;
    }
    assert!(slow.lagged(), "the slow subscriber was dropped");
    assert!(got <= 8, "it got only its buffer: {got}");
    let stored = h.rt.events_after(id, 0).await.expect("events");
    assert!(
        stored.len() >= 500 + 3,
        "all events stored: {}",
        stored.len()
    );
}
