//! The queue limit: past it, submit answers QueueFull with a Retry-After
//! estimate and stores nothing.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::{ErrorType, JobState};
use tsbridge_runtime::ListQuery;

#[tokio::test]
async fn queue_full_stores_nothing() {
    let h = start(&format!(
        "[defaults]\nconcurrency = 1\nqueue_limit = 2\n{}",
        workflow("job", "")
    ))
    .await;
    let running = h.submit("job", json!({"hang": true})).await;
    h.until_state(running, JobState::Running).await;
    let q1 = h.submit("job", json!({})).await;
    let q2 = h.submit("job", json!({})).await;
    let e =
        h.rt.submit("job", json!({}), JobOptions::default())
            .await
            .expect_err("full");
    assert_eq!(e.error_type(), ErrorType::QueueFull);
    let ra = e.retry_after().expect("retry after");
    assert!(ra.as_secs() >= 1, "{ra:?}");
    let list = h.rt.list(ListQuery::default()).await.expect("list");
    let mut ids: Vec<_> = list.jobs.iter().map(|j| j.job_id).collect();
    ids.sort();
    let mut expected = vec![running, q1, q2];
    expected.sort();
    assert_eq!(ids, expected, "the refused job was not stored");
    h.rt.cancel(running).await.expect("cancel");
    h.wait(q2).await;
    // Room again.
    let more = h.submit("job", json!({})).await;
    assert_eq!(h.wait(more).await.state, JobState::Succeeded);
}
