//! Recycling: after max_jobs jobs, after max_age, and past max_rss the
//! worker process is replaced (pids change); idle workers shrink to min.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::collections::BTreeSet;
use std::time::Duration;

use pool_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_jobs_recycles_after_n_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1, 1);
    cfg.max_jobs = Some(5);
    let pool = start(js_spec(dir.path()), cfg).await.unwrap();
    let mut pids = Vec::new();
    for _ in 0..12 {
        pids.push(pid_of(&run(&pool, json!({"mode": "echo"})).await));
    }
    assert!(pids[..5].iter().all(|p| *p == pids[0]), "{pids:?}");
    assert!(pids[5..10].iter().all(|p| *p == pids[5]), "{pids:?}");
    assert_ne!(pids[0], pids[5]);
    assert_ne!(pids[5], pids[10]);
    assert_eq!(pids.iter().collect::<BTreeSet<_>>().len(), 3);
    let s = pool.stats();
    assert_eq!(s.recycled_total, 2, "{s:?}");
    assert_eq!(s.crashed_total, 0);
    eventually("recycled workers have exited", || {
        !alive(pids[0] as u32) && !alive(pids[5] as u32)
    })
    .await;
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_recycles() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1, 1);
    cfg.max_age = Some(Duration::from_millis(300));
    let pool = start(js_spec(dir.path()), cfg).await.unwrap();
    let first = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    // The worker that ran it ages out and is replaced (min = 1). On a loaded
    // machine the warm worker may already have aged out before the first job
    // (then `first` ran on its replacement): count recycles from here.
    let before = pool.stats().recycled_total;
    pool.wait_stats(|s| s.recycled_total > before && s.idle == 1)
        .await;
    let second = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    assert_ne!(first, second);
    eventually("the aged worker has exited", || !alive(first as u32)).await;
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_above_the_limit_recycles() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1, 1);
    // A fresh node is ~40-60 MiB; a handler that keeps 64 MiB alive is over.
    cfg.max_rss = Some(100 * 1024 * 1024);
    cfg.health_interval = Some(Duration::from_millis(100));
    let pool = start(js_spec(dir.path()), cfg).await.unwrap();
    let grown = run(&pool, json!({"mode": "grow"})).await;
    let first = pid_of(&grown);
    pool.wait_stats(|s| s.recycled_total >= 1).await;
    let next = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    assert_ne!(first, next);
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_shrink_to_min() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1, 3);
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let pool = start(js_spec(dir.path()), cfg).await.unwrap();
    // Three jobs held busy until all three run at once: three workers.
    let go = dir.path().join("go");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let p = pool.clone();
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            run(&p, json!({"mode": "until-file", "file": go})).await
        }));
    }
    pool.wait_stats(|s| s.busy == 3).await;
    std::fs::write(&go, b"").unwrap();
    let mut pids = BTreeSet::new();
    for t in tasks {
        pids.insert(pid_of(&t.await.unwrap()));
    }
    assert_eq!(pids.len(), 3, "three workers served three concurrent jobs");
    let s = pool.wait_stats(|s| s.size == 1 && s.idle == 1).await;
    assert_eq!(s.recycled_total, 2, "{s:?}");
    eventually("two of the three workers exited", || {
        pids.iter().filter(|p| alive(**p as u32)).count() == 1
    })
    .await;
    pool.shutdown(Duration::from_secs(10)).await;
}
