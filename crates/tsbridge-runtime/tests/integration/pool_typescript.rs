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
