//! A returned shutdown leaves no job cgroup: the cgroups of the attempts it
//! stopped and of its pool workers are removed before `shutdown` returns, so
//! the sandbox's parent can be removed at once (nothing is left in cgroupfs).
//! Before, a job's cgroup was removed when its supervision let go of it,
//! which could be after the shutdown had returned. On the host's own
//! hierarchy, and on cgroup v2 through the kernel (the test process's
//! cgroup2 directory: controller-less on a hybrid host). Skipped (said) on a
//! host without cgroups.

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
        shutdown_leaves_no_job_cgroup(sandbox, round).await;
    }
}

/// The same on cgroup v2, whatever the host's own choice: each job's
/// processes are in its v2 cgroup while it runs (a spawned job's and a pool
/// worker's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cgroup_v2_shutdown_returns_once_the_job_cgroups_are_gone() {
    let Some(own) = Sandbox::own_cgroup_v2_dir() else {
        eprintln!("SKIP: no cgroup2 mount");
        return;
    };
    for round in 0..2 {
        let config = SandboxConfig {
            cgroup_parent_name: format!("tsbridge-sc2-{}-{round}", std::process::id()),
            // Not the test process: it shares its cgroup with other tests.
            v2_move_self_to_leaf: false,
            ..SandboxConfig::default()
        };
        let sandbox = match Sandbox::on_cgroup_v2_dir(config, &own) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("SKIP: cannot use {}: {e}", own.display());
                return;
            }
        };
        assert_eq!(sandbox.capabilities().cgroups, CgroupVersion::V2);
        shutdown_leaves_no_job_cgroup(sandbox, round).await;
    }
}

async fn shutdown_leaves_no_job_cgroup(sandbox: Arc<Sandbox>, round: u32) {
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
    let dirs = job_dirs(&parents);
    assert!(
        !dirs.is_empty(),
        "round {round}: the running jobs have no cgroups under {parents:?}"
    );
    if sandbox.capabilities().cgroups == CgroupVersion::V2 {
        for id in [spawned, pooled] {
            // The pid is written a moment after the start.
            let start = std::time::Instant::now();
            let pid = loop {
                if let Some(pid) = h.rt.get(id).await.expect("get").process_id {
                    break pid;
                }
                assert!(start.elapsed() < SOON, "round {round}: job {id} has no pid");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            let rel = cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::/"))
                .unwrap_or_default();
            assert!(
                rel.contains("/job-") && dirs.iter().any(|d| d.ends_with(rel)),
                "round {round}: job {id} (pid {pid}) is in {rel:?}, not one of {dirs:?}"
            );
        }
    }
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
