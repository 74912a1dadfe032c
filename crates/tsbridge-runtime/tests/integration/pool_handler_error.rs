//! A throwing handler fails only its job; the next job runs on the SAME worker.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_runtime::pool::PoolJobError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throw_fails_only_its_job_and_keeps_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    let before = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    let failed = run(&pool, json!({"mode": "throw", "what": "nope"})).await;
    match &failed.result {
        Err(PoolJobError::Handler {
            message,
            name,
            stack,
        }) => {
            assert_eq!(message, "bad input: nope");
            assert_eq!(name, "TypeError");
            assert!(stack.is_none(), "no stack outside dev mode");
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    assert_eq!(failed.pid.map(u64::from), Some(before));
    let after = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    assert_eq!(before, after, "the next job ran on the same worker");
    let s = pool.stats();
    assert_eq!((s.started_total, s.crashed_total), (1, 0), "{s:?}");
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_keeps_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1, 1);
    cfg.dev_mode = true;
    let pool = start(js_spec(dir.path()), cfg).await.unwrap();
    let failed = run(&pool, json!({"mode": "throw"})).await;
    match &failed.result {
        Err(PoolJobError::Handler {
            stack: Some(stack), ..
        }) => {
            assert!(stack.contains("TypeError: bad input: x"), "{stack}");
            assert!(stack.contains("handlers.mjs"), "{stack}");
        }
        other => panic!("expected a handler error with a stack, got {other:?}"),
    }
    pool.shutdown(Duration::from_secs(10)).await;
}
