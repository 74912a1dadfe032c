//! process.exit(1) inside a handler fails its job; the next job succeeds on a NEW worker.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_runtime::pool::{PoolJobError, WorkerExit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_in_a_handler_fails_its_job_and_the_worker_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    let first = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    let crashed = run(&pool, json!({"mode": "exit"})).await;
    assert!(
        matches!(
            crashed.result,
            Err(PoolJobError::WorkerCrashed {
                exit: WorkerExit::Code(1),
                ..
            })
        ),
        "{:?}",
        crashed.result
    );
    eventually("the crashed worker is gone", || !alive(first as u32)).await;
    let next = run(&pool, json!({"mode": "echo"})).await;
    let second = pid_of(&next);
    assert_ne!(first, second, "the next job ran on a new worker");
    let s = pool.wait_stats(|s| s.crashed_total == 1).await;
    assert_eq!(s.started_total, 2, "{s:?}");
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_crashing_job_fails_among_concurrent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(2, 2)).await.unwrap();
    let slow = {
        let p = pool.clone();
        tokio::spawn(async move { run(&p, json!({"mode": "sleep", "ms": 300})).await })
    };
    let crashed = run(&pool, json!({"mode": "exit"})).await;
    assert!(matches!(
        crashed.result,
        Err(PoolJobError::WorkerCrashed { .. })
    ));
    assert!(
        slow.await.unwrap().result.is_ok(),
        "the other worker's job was untouched"
    );
    pool.shutdown(Duration::from_secs(10)).await;
}
