//! Under tsx, the worker host starts tsx's esbuild services while it loads,
//! before it answers `ready` (it transpiles the two tiny modules written
//! beside it): a plain `.mjs` handler that imports TypeScript only inside
//! its jobs would otherwise start them in its first job, the per-job sweep
//! would kill them as that job's strays, and every later job's import would
//! fail with "The service is no longer running".
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_proto::ChildEvent;
use tsbridge_runtime::pool::PoolJob;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mjs_handler_imports_typescript_in_every_job() {
    let Some(tsx) = tsx_loader() else { return };
    let dir = tempfile::tempdir().unwrap();
    let modules = tempfile::tempdir().unwrap();
    let spec = tsx_worker("lazy", "lazy-ts.mjs", tsx, dir.path());
    let pool = start(spec, config(1, 1)).await.unwrap();
    let params = json!({"dir": modules.path()});
    let mut worker = None;
    for n in 1..=3 {
        let (tx, mut rx) = sink();
        let o = pool.run(PoolJob::new("lazy", params.clone()), tx).await;
        let v = o.result.unwrap_or_else(|e| panic!("job {n} failed: {e:?}"));
        assert_eq!(
            v["values"],
            json!([n, n, n]),
            "job {n} imported its modules"
        );
        assert_eq!(
            *worker.get_or_insert(v["pid"].clone()),
            v["pid"],
            "one worker"
        );
        let swept: Vec<_> = child_events(&mut rx)
            .into_iter()
            .filter(|e| matches!(e, ChildEvent::Log { message, .. } if message.contains("left running")))
            .collect();
        assert!(swept.is_empty(), "job {n}: {swept:?}");
    }
    pool.shutdown(Duration::from_secs(10)).await;
}
