//! TypeScript pool modules: a default export (found as mod.default.default
//! after CommonJS interop) and a named export per workflow, through tsx's
//! loader and through ts-node's require hook.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_proto::ChildEvent;
use tsbridge_runtime::pool::{HostScript, PoolJob, WorkerSpec};

fn ts_spec(dir: &std::path::Path) -> WorkerSpec {
    let mut s = WorkerSpec::node("greet", fixtures().join("handler.ts"));
    s.host = HostScript::EmbeddedIn(dir.to_owned());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_named_exports_through_tsx() {
    let Some(tsx) = tsx_loader() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pool = start(ts_spec(dir.path()).with_import(tsx), config(1, 1))
        .await
        .unwrap();
    let (tx, mut rx) = sink();
    let o = pool
        .run(PoolJob::new("greet-flow", json!({"name": "ts"})), tx)
        .await;
    let v = o.result.unwrap();
    assert_eq!(v["text"], "hello ts");
    assert_eq!(v["kind"], "greeting", "the enum was transpiled");
    assert_eq!(v["workflow"], "greet-flow");
    let events = child_events(&mut rx);
    assert!(
        matches!(events.first(), Some(ChildEvent::Progress(p)) if p.message == "typed"),
        "{events:?}"
    );
    let o = pool
        .run(PoolJob::new("sum-numbers", json!({"n": 10})), sink().0)
        .await;
    assert_eq!(o.result.unwrap(), json!(55));
    pool.shutdown(Duration::from_secs(10)).await;
}

/// Every job imports a TypeScript module of its own: tsx transpiles each
/// through the esbuild service it started while the worker loaded, which
/// the per-job sweep must leave running (it killed it after the first job,
/// and every later job failed with "The service is no longer running").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_jobs_import_typescript_through_tsx() {
    let Some(tsx) = tsx_loader() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = tsx_worker("fresh", "imports-fresh.ts", tsx, dir.path());
    let pool = start(spec, config(1, 1)).await.unwrap();
    let params = json!({"dir": dir.path()});
    let mut worker = None;
    for n in 1..=3 {
        let o = pool
            .run(PoolJob::new("fresh", params.clone()), sink().0)
            .await;
        let v = o.result.unwrap_or_else(|e| panic!("job {n} failed: {e:?}"));
        assert_eq!(v["v"], n, "job {n} imported its own module");
        assert_eq!(
            *worker.get_or_insert(v["pid"].clone()),
            v["pid"],
            "one worker"
        );
    }
    pool.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_export_through_ts_node() {
    let Some(hook) = ts_node_register() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ts_spec(dir.path()).with_require(hook);
    spec.env.insert(
        "TS_NODE_PROJECT".into(),
        fixtures().join("tsconfig.json").display().to_string(),
    );
    let pool = start(spec, config(1, 1)).await.unwrap();
    let o = pool
        .run(
            PoolJob::new("greet-flow", json!({"name": "ts-node"})),
            sink().0,
        )
        .await;
    assert_eq!(o.result.unwrap()["text"], "hello ts-node");
    pool.shutdown(Duration::from_secs(10)).await;
}
