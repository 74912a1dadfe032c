//! The example app (examples/omega-workflow) through its own tsbridge.toml:
//! TypeScript run by tsx, a JSON Schema, path parameters, and limits that
//! need the kernel sandbox (unavailable without one, enforced with one).

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use serde_json::json;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::{ErrorType, EventData, JobState};
use tsbridge_runtime::{Config, Runtime, RuntimeOptions};
use tsbridge_sandbox::{Sandbox, SandboxConfig};

fn example_config() -> Option<Arc<Config>> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/omega-workflow/tsbridge.toml");
    let nm = p.parent()?.join("node_modules/tsx");
    if !nm.exists() {
        eprintln!("examples/omega-workflow has no node_modules: run npm ci there");
        return None;
    }
    Some(Arc::new(Config::load(&p).unwrap_or_else(|e| panic!("{e}"))))
}

#[tokio::test]
async fn limits_without_a_sandbox_make_the_workflow_unavailable() {
    let Some(config) = example_config() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(
        config,
        open_store(dir.path()).await,
        RuntimeOptions::default(),
    )
    .await
    .expect("start");
    let e = rt
        .submit(
            "data-analysis",
            json!({"inputPath": "data/sample.csv"}),
            JobOptions::default(),
        )
        .await
        .expect_err("unavailable");
    assert_eq!(e.error_type(), ErrorType::Unavailable);
    assert!(e.to_string().contains("sandbox"), "{e}");
}

#[tokio::test]
async fn data_analysis_runs_in_its_sandbox() {
    let Some(config) = example_config() else {
        return;
    };
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            cgroup_parent_name: format!("tsbridge-rt-test-{}", std::process::id()),
            ..SandboxConfig::default()
        })
        .expect("sandbox"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = RuntimeOptions {
        sandbox: Some(sandbox.clone()),
        ..RuntimeOptions::default()
    };
    let rt = Runtime::start(config, open_store(dir.path()).await, opts)
        .await
        .expect("start");
    match rt.availability("data-analysis").expect("configured") {
        Err(why) => {
            // A host without the mechanisms: the workflow says why.
            assert!(
                why.contains("cannot enforce") || why.contains("sandbox"),
                "{why}"
            );
        }
        Ok(()) => {
            let s = rt
                .submit(
                    "data-analysis",
                    json!({"inputPath": "data/sample.csv"}),
                    JobOptions::default(),
                )
                .await
                .expect("submit");
            let v = tokio::time::timeout(SOON, rt.wait(s.job_id))
                .await
                .expect("in time")
                .expect("wait");
            assert_eq!(v.state, JobState::Succeeded, "{v:?}");
            let result = v.result.expect("result");
            assert!(result.is_object(), "{result}");
            let events = rt.events_after(s.job_id, 0).await.expect("events");
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e.data, EventData::Progress(_)))
            );

            // The schema is enforced before anything runs.
            let e = rt
                .submit(
                    "data-analysis",
                    json!({"inputPath": 7}),
                    JobOptions::default(),
                )
                .await
                .expect_err("schema");
            assert_eq!(e.error_type(), ErrorType::ValidationError);
            let e = rt
                .submit(
                    "data-analysis",
                    json!({"inputPath": "../../etc/passwd"}),
                    JobOptions::default(),
                )
                .await
                .expect_err("outside");
            assert_eq!(e.error_type(), ErrorType::SecurityError);
        }
    }
    rt.shutdown(std::time::Duration::ZERO).await;
    let _ = sandbox.sweep_stale();
    let _ = sandbox.remove_parent();
}
