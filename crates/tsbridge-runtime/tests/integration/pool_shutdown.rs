//! Shutdown drains: running jobs may finish within the grace, then workers
//! end; new jobs are refused; no worker process and no host file remain.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_runtime::pool::PoolJobError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_then_kill_then_clean() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(2, 2)).await.unwrap();
    let host_dirs = || std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(host_dirs(), 1, "the embedded host was written once");
    let short = {
        let p = pool.clone();
        tokio::spawn(async move { run(&p, json!({"mode": "sleep", "ms": 200})).await })
    };
    let stuck = {
        let p = pool.clone();
        tokio::spawn(async move { run(&p, json!({"mode": "ignore-abort"})).await })
    };
    pool.wait_stats(|s| s.busy == 2).await;
    pool.shutdown(Duration::from_secs(3)).await;
    let short = short.await.unwrap();
    let short_pid = pid_of(&short);
    let stuck = stuck.await.unwrap();
    assert!(
        matches!(stuck.result, Err(PoolJobError::ShuttingDown)),
        "{:?}",
        stuck.result
    );
    assert!(!alive(short_pid as u32));
    if let Some(pid) = stuck.pid {
        assert!(!alive(pid));
    }
    assert!(matches!(
        run(&pool, json!({"mode": "echo"})).await.result,
        Err(PoolJobError::ShuttingDown)
    ));
    assert_eq!(pool.stats().size, 0);
    assert_eq!(host_dirs(), 0, "the host script's private dir was removed");
}
