//! Warmup proves readiness: start() returns with `min` live, idle workers
//! that answered a ping; a module that does not load fails start() (warmup)
//! or the job (no warmup) with the host's message.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_runtime::pool::{
    HostScript, PoolJobError, PoolStartError, WorkerSpec, WorkerStartError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_starts_min_ready_workers() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(2, 4)).await.unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.size, s.idle, s.busy, s.starting, s.started_total),
        (2, 2, 0, 0, 2),
        "{s:?}"
    );
    // The first jobs need no start: both run on the warm workers.
    let a = pid_of(&run(&pool, json!({"mode": "echo"})).await);
    assert!(alive(a as u32));
    assert_eq!(pool.stats().started_total, 2);
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_warmup_min_is_reached_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(2, 4);
    cfg.warmup = false;
    let pool = start(js_spec(dir.path()), cfg).await.unwrap();
    pool.wait_stats(|s| s.idle == 2).await;
    pool.shutdown(Duration::from_secs(10)).await;
}

fn broken_spec(dir: &std::path::Path, module: &str) -> WorkerSpec {
    let mut s = WorkerSpec::node("broken", fixtures().join(module));
    s.host = HostScript::EmbeddedIn(dir.to_owned());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_does_not_load_fails_warmup() {
    let dir = tempfile::tempdir().unwrap();
    let e = start(broken_spec(dir.path(), "does-not-exist.mjs"), config(1, 1))
        .await
        .unwrap_err();
    match e {
        PoolStartError::Warmup {
            source: WorkerStartError::Fatal { message, .. },
            ..
        } => {
            assert!(message.contains("cannot load"), "{message}");
            assert!(message.contains("does-not-exist.mjs"), "{message}");
        }
        other => panic!("expected a fatal warmup error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_does_not_load_fails_the_job_fast() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(broken_spec(dir.path(), "does-not-exist.mjs"), config(0, 1))
        .await
        .unwrap();
    let o = run(&pool, json!({})).await;
    assert!(
        matches!(&o.result, Err(PoolJobError::WorkerStart(WorkerStartError::Fatal { message, .. })) if message.contains("cannot load")),
        "{:?}",
        o.result
    );
    pool.wait_stats(|s| s.start_failures_total >= 1).await;
    pool.shutdown(Duration::from_secs(10)).await;
}

/// A worker is masked from its very start: a module that fails to load with
/// a secret in its error reports that error with the secret masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_load_error_is_masked() {
    const SECRET: &str = "sk-load-time-3f9a1c";
    let dir = tempfile::tempdir().unwrap();
    let mut spec = broken_spec(dir.path(), "secret-at-load.mjs");
    spec.env.insert("API_SECRET".into(), SECRET.into());
    spec.masker = std::sync::Arc::new(tsbridge_process::mask::Masker::new(
        [SECRET.to_owned()],
        &[],
    ));
    let e = start(spec, config(1, 1)).await.unwrap_err();
    let shown = format!("{e:?} {e}");
    assert!(shown.contains("cannot start with key"), "{shown}");
    assert!(!shown.contains(SECRET), "the secret leaked: {shown}");
    assert!(shown.contains("[REDACTED]"), "{shown}");
}
