//! A pool workflow whose pool fails to start is unavailable only until a
//! retry starts it: no restart of the server is needed once the cause is
//! gone (here, a file its module needs at load). A shutdown ends the
//! retries, and no pool starts after it.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_runtime::RuntimeOptions;
use tsbridge_runtime::errors::RuntimeError;

/// A handler whose module throws at load until `ready` exists beside it.
const LATE_HANDLER: &str = r#"
import { existsSync } from 'node:fs';
if (!existsSync(new URL('./ready', import.meta.url))) {
  throw new Error('not ready yet: ./ready is missing');
}
export default async function handler(params) {
  return { pid: process.pid, ok: true };
}
"#;

fn late_workflow(root: &Path) -> String {
    std::fs::write(root.join("late.mjs"), LATE_HANDLER).unwrap();
    format!(
        "[workflows.late]\nroot = \"{}\"\nscript = \"late.mjs\"\nruntime = \"node\"\nmode = \"pool\"\n\
         pool = {{ min = 1, max = 1 }}\n",
        root.display()
    )
}

fn retrying_every(first: Duration) -> RuntimeOptions {
    RuntimeOptions {
        pool_retry: Some(first),
        ..RuntimeOptions::default()
    }
}

/// Polls `f` until it holds, within [`SOON`].
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_pool_that_failed_to_start_becomes_available_once_a_retry_starts_it() {
    let root = tempfile::tempdir().unwrap();
    let h = start_with(
        &late_workflow(root.path()),
        retrying_every(Duration::from_millis(200)),
    )
    .await;
    let why = match h.rt.availability("late") {
        Some(Err(why)) => why,
        other => panic!("the pool cannot start yet, so the workflow is unavailable: {other:?}"),
    };
    assert!(why.contains("worker pool failed to start"), "{why}");
    match h.rt.submit("late", json!({}), Default::default()).await {
        Err(RuntimeError::WorkflowUnavailable { .. }) => {}
        other => panic!("a job for it is refused: {other:?}"),
    }

    // The cause goes away: a retry starts the pool, without a restart.
    std::fs::write(root.path().join("ready"), b"").unwrap();
    until("the workflow is available", || {
        h.rt.availability("late") == Some(Ok(()))
    })
    .await;
    let readiness = h.rt.readiness().await;
    assert_eq!(
        readiness.workflows.get("late").map(String::as_str),
        Some("available")
    );
    let id = h.submit("late", json!({})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(
        v.result.as_ref().map(|r| r["ok"].clone()),
        Some(json!(true))
    );
    tokio::time::timeout(SOON, h.rt.shutdown(Duration::ZERO))
        .await
        .expect("shutdown ends");
}

#[tokio::test]
async fn no_pool_starts_after_the_shutdown() {
    let root = tempfile::tempdir().unwrap();
    let h = start_with(
        &late_workflow(root.path()),
        retrying_every(Duration::from_millis(300)),
    )
    .await;
    assert!(matches!(h.rt.availability("late"), Some(Err(_))));
    tokio::time::timeout(SOON, h.rt.shutdown(Duration::ZERO))
        .await
        .expect("shutdown ends");
    // The cause goes away after the shutdown: the retries have ended, and
    // no worker of the pool starts (it would load the module, which
    // records its pid).
    std::fs::write(
        root.path().join("late.mjs"),
        format!(
            "import {{ appendFileSync }} from 'node:fs';\n\
             appendFileSync(new URL('./loaded', import.meta.url), `${{process.pid}}\\n`);\n{LATE_HANDLER}"
        ),
    )
    .unwrap();
    std::fs::write(root.path().join("ready"), b"").unwrap();
    // Well past several retries' times (0.3 + 0.6 + 1.2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !root.path().join("loaded").exists(),
        "a worker started after the shutdown"
    );
    assert!(matches!(h.rt.availability("late"), Some(Err(_))));
}
