//! The same idempotency key returns the same job, before and after it ran;
//! the key reused for other work (another workflow, other parameters or
//! options) is a conflict, never another job's answer.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::{DurationSpec, ErrorType, JobState};
use tsbridge_runtime::ListQuery;

fn keyed(key: &str) -> JobOptions {
    JobOptions {
        idempotency_key: Some(key.into()),
        ..JobOptions::default()
    }
}

#[tokio::test]
async fn same_key_same_job() {
    let h = start(&format!("{}{}", workflow("job", ""), workflow("other", ""))).await;
    let opts = keyed("order-17");
    let first =
        h.rt.submit("job", json!({"result": 1}), opts.clone())
            .await
            .expect("submit");
    assert!(!first.existing);
    let again =
        h.rt.submit("job", json!({"result": 1}), opts.clone())
            .await
            .expect("submit");
    assert!(again.existing);
    assert_eq!(again.job_id, first.job_id);
    let v = h.wait(first.job_id).await;
    assert_eq!(v.result, Some(json!(1)));
    let after =
        h.rt.submit("job", json!({"result": 1}), opts.clone())
            .await
            .expect("submit");
    assert_eq!(after.job_id, first.job_id);
    assert_eq!(after.state, JobState::Succeeded);

    // The key reused for other work: 409 naming the job, nothing stored.
    let other_timeout = JobOptions {
        timeout: Some(DurationSpec::from_millis(5_000)),
        ..opts.clone()
    };
    for (workflow, params, o) in [
        ("job", json!({"result": 2}), opts.clone()),
        ("other", json!({"result": 1}), opts.clone()),
        ("job", json!({"result": 1}), other_timeout),
    ] {
        let e =
            h.rt.submit(workflow, params.clone(), o)
                .await
                .expect_err("conflict");
        assert_eq!(
            e.error_type(),
            ErrorType::Conflict,
            "{workflow} {params}: {e}"
        );
        assert_eq!(e.details(), Some(json!({"jobId": first.job_id})));
    }
    assert_eq!(
        h.rt.list(ListQuery::default())
            .await
            .expect("list")
            .jobs
            .len(),
        1
    );
}
