//! Hostile test of the default Landlock ruleset of path parameters: a job of
//! a workflow that takes a path parameter but lists no `limits.read` or
//! `limits.write` is given a legitimate path and tries to read a file
//! outside its root and outside the parameter (a shadow-like file), and to
//! write outside. Where the host has Landlock both fail with EACCES; the
//! legitimate path still reads.

use crate::common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_proto::api::JobOptions;
use tsbridge_runtime::{JobStore, Runtime, RuntimeOptions};
use tsbridge_sandbox::{Sandbox, SandboxConfig};

#[tokio::test]
async fn a_job_given_a_path_cannot_read_beside_it_without_read_lists() {
    let sandbox = match Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsbridge-ll-{}", std::process::id()),
        ..SandboxConfig::default()
    }) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("SKIP: no sandbox on this host: {e}");
            return;
        }
    };
    // Goes last, after the runtime's shutdown.
    let _parent = OwnParent(sandbox.clone());
    if !sandbox.capabilities().landlock.is_available() {
        eprintln!("SKIP: no Landlock on this host");
        return;
    }
    // Outside the workflow's root and outside the job's TMPDIR.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("shadow");
    std::fs::write(&secret, "root:$6$not-for-jobs:19000:0:99999:7:::\n").unwrap();
    let drop = outside.path().join("dropped");

    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[workflows.reader]\nroot = \"{}\"\nscript = \"path-escape.js\"\nruntime = \"node\"\n\
         path_params = [\"inputPath\"]\n",
        fixtures().display()
    );
    let rt = Runtime::start(
        config(&toml),
        open_store(dir.path()).await as Arc<dyn JobStore>,
        RuntimeOptions {
            sandbox: Some(sandbox),
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("start");
    let id = rt
        .submit(
            "reader",
            json!({"inputPath": "job.js", "secret": secret, "drop": drop}),
            JobOptions::default(),
        )
        .await
        .expect("a legitimate path is accepted")
        .job_id;
    let v = tokio::time::timeout(SOON, rt.wait(id))
        .await
        .expect("ends in time")
        .expect("wait");
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let r = v.result.expect("a result");
    assert_eq!(r["input"], "ok", "the legitimate path reads: {r}");
    assert_eq!(r["secret"], "EACCES", "a file beside the parameter: {r}");
    assert_eq!(r["drop"], "EACCES", "a write outside: {r}");
    assert!(!drop.exists());
    rt.shutdown(std::time::Duration::ZERO).await;
}
