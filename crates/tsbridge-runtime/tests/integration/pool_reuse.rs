//! 1000 sequential pooled jobs on a pool of max 2 start only 2 processes at most.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::collections::BTreeSet;
use std::time::Duration;

use pool_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sequential_jobs_use_at_most_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(0, 2)).await.unwrap();
    let mut pids = BTreeSet::new();
    for i in 0..1000 {
        let o = run(&pool, json!({"mode": "echo", "i": i})).await;
        assert_eq!(o.result.as_ref().unwrap()["params"]["i"], i);
        pids.insert(pid_of(&o));
        assert_eq!(
            o.pid.map(u64::from),
            Some(pid_of(&o)),
            "outcome pid is the worker's"
        );
    }
    assert!(pids.len() <= 2, "pids: {pids:?}");
    // The owner task counts a job after its caller has the outcome.
    let s = pool.wait_stats(|s| s.jobs_total == 1000).await;
    assert!(s.started_total <= 2, "{s:?}");
    assert_eq!(s.crashed_total, 0);
    pool.shutdown(Duration::from_secs(10)).await;
    for pid in pids {
        assert!(!alive(pid as u32), "worker {pid} outlived the pool");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_are_spread_over_max_workers() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(0, 2)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            run(&p, json!({"mode": "sleep", "ms": 20, "i": i})).await
        }));
    }
    let mut pids = BTreeSet::new();
    for t in tasks {
        pids.insert(pid_of(&t.await.unwrap()));
    }
    assert!(pids.len() <= 2, "{pids:?}");
    assert!(pool.stats().started_total <= 2);
    pool.shutdown(Duration::from_secs(10)).await;
}
