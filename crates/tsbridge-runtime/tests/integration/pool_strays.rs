//! No process a pool job started outlives the job: a detached child left
//! running by a handler is killed before the job's end is reported, and the
//! worker itself stays warm for the next job.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_runtime::pool::{HostScript, WorkerSpec};

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

/// What the worker started while it loaded, before any job (tsx's esbuild
/// service is one: killed, every later import of a .ts module failed with
/// "The service is no longer running"), is the worker's own: the per-job
/// sweep leaves it, still kills what a job leaves, and the helper dies with
/// its worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_the_worker_started_while_loading_is_not_a_jobs_stray() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = WorkerSpec::node("pool-test", fixtures().join("helper-at-load.mjs"));
    spec.host = HostScript::EmbeddedIn(dir.path().to_owned());
    let pool = start(spec, config(1, 1)).await.unwrap();
    let first = run(&pool, json!({})).await;
    let worker = pid_of(&first);
    let result = |o: &tsbridge_runtime::pool::PoolOutcome, key: &str| {
        o.result.as_ref().unwrap()[key].clone()
    };
    let helper = result(&first, "helper").as_u64().unwrap() as u32;
    assert_eq!(result(&first, "alive"), json!(true));
    // The first job's end swept the worker: its helper is still there.
    assert!(alive(helper), "the worker's helper was killed after a job");

    let second = run(&pool, json!({"mode": "stray"})).await;
    let stray = result(&second, "stray").as_u64().unwrap() as u32;
    eventually("the second job's stray is gone", || !alive(stray)).await;
    assert_eq!(pid_of(&second), worker, "the same worker");
    assert_eq!(result(&second, "helper").as_u64(), Some(u64::from(helper)));
    assert_eq!(result(&second, "alive"), json!(true));

    let third = run(&pool, json!({})).await;
    assert_eq!(result(&third, "alive"), json!(true));
    assert!(alive(helper));

    pool.shutdown(Duration::from_secs(10)).await;
    eventually("the helper dies with its worker", || !alive(helper)).await;
}
