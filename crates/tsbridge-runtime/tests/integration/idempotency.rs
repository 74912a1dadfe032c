//! The same idempotency key returns the same job, before and after it ran.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_proto::api::JobOptions;
use tsbridge_runtime::ListQuery;

#[tokio::test]
async fn same_key_same_job() {
    let h = start(&workflow("job", "")).await;
    let opts = JobOptions {
        idempotency_key: Some("order-17".into()),
        ..JobOptions::default()
    };
    let first =
        h.rt.submit("job", json!({"result": 1}), opts.clone())
            .await
            .expect("submit");
    assert!(!first.existing);
    let again =
        h.rt.submit("job", json!({"result": 2}), opts.clone())
            .await
            .expect("submit");
    assert!(again.existing);
    assert_eq!(again.job_id, first.job_id);
    let v = h.wait(first.job_id).await;
    assert_eq!(v.result, Some(json!(1)));
    let after = h.rt.submit("job", json!({}), opts).await.expect("submit");
    assert_eq!(after.job_id, first.job_id);
    assert_eq!(after.state, JobState::Succeeded);
    assert_eq!(
        h.rt.list(ListQuery::default())
            .await
            .expect("list")
            .jobs
            .len(),
        1
    );
}
