//! Cancellation and timeouts: the AbortSignal first; a handler that ignores
//! it is killed (its whole worker) after the kill grace and replaced.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_runtime::pool::{Pool, PoolJob, PoolJobError, PoolOutcome};

/// Runs a job of `mode` and cancels it once it started: its outcome.
async fn cancel_once_started(pool: &Pool, mode: &str) -> PoolOutcome {
    let job = PoolJob::new("pool-test", json!({"mode": mode}));
    let token = job.cancel.clone();
    let (tx, mut rx) = sink();
    let running = {
        let p = pool.clone();
        tokio::spawn(async move { p.run(job, tx).await })
    };
    wait_started(&mut rx).await;
    token.cancel();
    running.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_cancel_kills_and_replaces_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    let before = pid_of(&run(&pool, json!({"mode": "echo"})).await) as u32;
    let o = cancel_once_started(&pool, "ignore-abort").await;
    assert!(
        matches!(o.result, Err(PoolJobError::Cancelled { killed: true })),
        "{:?}",
        o.result
    );
    eventually("the killed worker is gone", || !alive(before)).await;
    let after = pid_of(&run(&pool, json!({"mode": "echo"})).await) as u32;
    assert_ne!(before, after);
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honoured_cancel_keeps_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    let before = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    let o = cancel_once_started(&pool, "abortable").await;
    assert!(
        matches!(o.result, Err(PoolJobError::Cancelled { killed: false })),
        "{:?}",
        o.result
    );
    assert_eq!(pid_of(&run(&pool, json!({"mode": "echo"})).await), before);
    assert_eq!(pool.stats().started_total, 1);
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_aborts_then_kills() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    let o = pool
        .run(
            PoolJob::new("pool-test", json!({"mode": "abortable"}))
                .with_timeout(Duration::from_millis(200)),
            sink().0,
        )
        .await;
    assert!(
        matches!(o.result, Err(PoolJobError::Timeout { killed: false, .. })),
        "{:?}",
        o.result
    );
    let o = pool
        .run(
            PoolJob::new("pool-test", json!({"mode": "ignore-abort"}))
                .with_timeout(Duration::from_millis(200)),
            sink().0,
        )
        .await;
    assert!(
        matches!(o.result, Err(PoolJobError::Timeout { killed: true, .. })),
        "{:?}",
        o.result
    );
    assert!(run(&pool, json!({"mode": "echo"})).await.result.is_ok());
    pool.shutdown(Duration::from_secs(10)).await;
}
