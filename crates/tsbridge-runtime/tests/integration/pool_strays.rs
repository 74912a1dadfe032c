//! No process a pool job started outlives the job: a detached child left
//! running by a handler is killed before the job's end is reported, and the
//! worker itself stays warm for the next job.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_child_left_by_a_job_dies_with_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    let out = run(&pool, json!({"mode": "daemon"})).await;
    let worker = pid_of(&out);
    let daemon = out.result.as_ref().unwrap()["daemon"].as_u64().unwrap() as u32;
    // SIGKILLed before the outcome came back; at most a zombie for a moment.
    eventually("the job's detached child is gone", || !alive(daemon)).await;
    assert!(alive(worker as u32), "the worker stays warm");
    let next = run(&pool, json!({"mode": "echo"})).await;
    assert_eq!(pid_of(&next), worker, "the next job ran on the same worker");
    pool.shutdown(Duration::from_secs(10)).await;
}
