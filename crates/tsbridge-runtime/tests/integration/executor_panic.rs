//! An executor that panics does not wedge the dispatcher: the attempt ends
//! `interrupted`, its slot is freed, and the next job runs.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use serde_json::json;
use tsbridge_proto::{EndReason, JobState};
use tsbridge_runtime::{AttemptIo, AttemptOutcome, AttemptRequest, Executor, RuntimeOptions};

#[derive(Debug)]
struct Panics;

#[async_trait]
impl Executor for Panics {
    async fn run(&self, req: AttemptRequest, _io: AttemptIo) -> AttemptOutcome {
        if req.params.get("panic").is_some() {
            panic!("executor bug");
        }
        let mut o = AttemptOutcome::spawn_failure("", false);
        o.reason = EndReason::Exited;
        o.exit_code = Some(0);
        o.error = None;
        o.result = Some(json!("fine"));
        o
    }
}

#[tokio::test]
async fn a_panicking_attempt_frees_its_slot() {
    let opts = RuntimeOptions {
        executors: BTreeMap::from([("job".to_owned(), Arc::new(Panics) as Arc<dyn Executor>)]),
        ..RuntimeOptions::default()
    };
    let h = start_with(
        &format!("[defaults]\nconcurrency = 1\n{}", workflow("job", "")),
        opts,
    )
    .await;
    let bad = h.submit("job", json!({"panic": true})).await;
    let good = h.submit("job", json!({})).await;
    let v = h.wait(bad).await;
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.reason, Some(EndReason::Interrupted));
    let v = h.wait(good).await;
    assert_eq!(v.state, JobState::Succeeded);
    assert_eq!(v.result, Some(json!("fine")));
}
