//! A pooled job that breaks its workflow's sandbox limits ends with that
//! limit as its reason (`ResourceLimitError`), as a spawned job does
//! (SPEC §5), not as a plain crash of its worker: the memory limit's OOM
//! kill, and a fork refused at the pids limit whether the handler lets the
//! error end its worker or throws it. The next job gets a working worker.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tsbridge_proto::{EndReason, JobState};
use tsbridge_runtime::{JobStore, Runtime, RuntimeOptions};
use tsbridge_sandbox::{Sandbox, SandboxConfig};

/// A runtime whose `limited` pool workflow has a memory and a pids limit;
/// `None` (the test is skipped) where the host cannot enforce them.
/// The sandbox's parent cgroups go when the [`OwnParent`] drops: shut the
/// runtime down first.
async fn start_limited(dir: &std::path::Path) -> Option<(Runtime, OwnParent)> {
    let sandbox = match Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsbridge-pl-{}", std::process::id()),
        ..SandboxConfig::default()
    }) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("SKIP: no sandbox on this host: {e}");
            return None;
        }
    };
    let parent = OwnParent(sandbox.clone());
    let caps = sandbox.capabilities();
    if !caps.memory || !caps.pids {
        eprintln!("SKIP: no memory or pids limit on this host");
        return None;
    }
    let toml = format!(
        "[workflows.limited]\nroot = \"{}\"\nscript = \"limits-handler.mjs\"\nruntime = \"node\"\n\
         mode = \"pool\"\nlimits = {{ memory = \"160MiB\", pids = 24 }}\n\
         pool = {{ min = 1, max = 1 }}\n",
        fixtures().display()
    );
    let rt = Runtime::start(
        config(&toml),
        open_store(dir).await as Arc<dyn JobStore>,
        RuntimeOptions {
            sandbox: Some(sandbox),
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("start");
    Some((rt, parent))
}

async fn run(rt: &Runtime, params: Value) -> tsbridge_proto::api::JobView {
    let id = rt
        .submit("limited", params, Default::default())
        .await
        .expect("submit")
        .job_id;
    tokio::time::timeout(SOON, rt.wait(id))
        .await
        .expect("the job ends in time")
        .expect("wait")
}

async fn assert_next_job_succeeds(rt: &Runtime) {
    let v = run(rt, json!({})).await;
    assert_eq!(v.state, JobState::Succeeded, "a replacement worker: {v:?}");
}

#[tokio::test]
async fn a_pooled_job_over_its_memory_limit_ends_with_memory_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((rt, _parent)) = start_limited(dir.path()).await else {
        return;
    };
    let v = run(&rt, json!({"mem": true})).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::MemoryLimit), "{v:?}");
    let error = v.error.as_ref().expect("an error");
    assert_eq!(
        serde_json::to_value(error.kind).expect("json"),
        "ResourceLimitError",
        "{v:?}"
    );
    assert!(error.message.contains("memory limit"), "{v:?}");
    assert_next_job_succeeds(&rt).await;
    rt.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_pooled_job_whose_fork_was_refused_ends_with_pids_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((rt, _parent)) = start_limited(dir.path()).await else {
        return;
    };
    // Uncaught: the refused fork's error event ends the worker.
    let v = run(&rt, json!({"forks": 64})).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::PidsLimit), "uncaught: {v:?}");
    assert_next_job_succeeds(&rt).await;
    // Caught: the handler throws; its worker lives on.
    let v = run(&rt, json!({"forks": 64, "catch": true})).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::PidsLimit), "caught: {v:?}");
    assert_next_job_succeeds(&rt).await;
    rt.shutdown(Duration::ZERO).await;
}
