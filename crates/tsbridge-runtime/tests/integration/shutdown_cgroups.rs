//! A returned shutdown leaves no job cgroup: the cgroups of the attempts it
//! stopped and of its pool workers are removed before `shutdown` returns, so
//! the sandbox's parent can be removed at once (nothing is left in cgroupfs).
//! Before, a job's cgroup was removed when its supervision let go of it,
//! which could be after the shutdown had returned. Skipped (said) on a host
//! without cgroups.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_runtime::RuntimeOptions;
use tsbridge_sandbox::{CgroupVersion, Sandbox, SandboxConfig};

/// The `job-*` directories under `parents`.
fn job_dirs(parents: &[std::path::PathBuf]) -> Vec<String> {
    parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains("/job-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_once_the_job_cgroups_are_gone() {
    for round in 0..4 {
        let sandbox = match Sandbox::new(SandboxConfig {
            cgroup_parent_name: format!("tsbridge-sc-{}-{round}", std::process::id()),
            ..SandboxConfig::default()
        }) {
            Ok(s) if s.capabilities().cgroups != CgroupVersion::None => Arc::new(s),
            Ok(s) => {
                eprintln!("SKIP: no cgroups here: {:?}", s.capabilities().notes);
                return;
            }
            Err(e) => {
                eprintln!("SKIP: no sandbox on this host: {e}");
                return;
            }
        };
        let parents = sandbox.cgroup_parents();
        let toml = format!(
            "{}[workflows.pooled]\nroot = \"{}\"\nscript = \"handler.mjs\"\nruntime = \"node\"\n\
             mode = \"pool\"\npool = {{ min = 1, max = 1 }}\n",
            workflow("spawned", "kill_grace = \"1s\""),
            fixtures().display()
        );
        let h = start_with(
            &toml,
            RuntimeOptions {
                sandbox: Some(sandbox.clone()),
                ..RuntimeOptions::default()
            },
        )
        .await;
        let spawned = h.submit("spawned", json!({"hang": true})).await;
        let pooled = h.submit("pooled", json!({"hang": true})).await;
        for id in [spawned, pooled] {
            h.until_state(id, JobState::Running).await;
        }
        assert!(
            !job_dirs(&parents).is_empty(),
            "round {round}: the running jobs have no cgroups under {parents:?}"
        );
        tokio::time::timeout(SOON, h.rt.shutdown(Duration::ZERO))
            .await
            .expect("the shutdown returns");
        let left = job_dirs(&parents);
        let removed = sandbox.remove_parent();
        assert!(
            left.is_empty(),
            "round {round}: job cgroups left after shutdown: {left:?}"
        );
        removed.unwrap_or_else(|e| panic!("round {round}: the parent stays: {e}"));
    }
}
