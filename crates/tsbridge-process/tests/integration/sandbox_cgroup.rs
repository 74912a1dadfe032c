//! With a prepared sandbox, the engine applies it in the child and uses the
//! job's cgroup: a memory-limit breach ends the job with reason MemoryLimit
//! (peak memory from the cgroup), and a timeout kills the whole tree through
//! the cgroup, setsid escapee included, without the subreaper. Skipped (with
//! a message) on hosts without usable cgroups.

use crate::common::{self, attach};

use std::sync::Arc;
use std::time::Duration;

use tsbridge_process::{SandboxAttachment, run};
use tsbridge_proto::EndReason;
use tsbridge_sandbox::{Sandbox, SandboxConfig, SandboxPolicy};

fn sandbox() -> Option<Sandbox> {
    let cfg = SandboxConfig {
        cgroup_parent_name: format!("tsb-engine-test-{}", std::process::id()),
        ..SandboxConfig::default()
    };
    match Sandbox::new(cfg) {
        Ok(s) if s.capabilities().memory && s.capabilities().pids => Some(s),
        Ok(s) => {
            eprintln!("SKIP: no memory/pids cgroups: {:?}", s.capabilities().notes);
            // It made its parent on the hierarchies it has (a host with
            // pids and cpu on v2 and memory on v1 left it there).
            let _ = s.remove_parent();
            None
        }
        Err(e) => {
            eprintln!("SKIP: sandbox unavailable: {e}");
            None
        }
    }
}

fn remove(a: SandboxAttachment) {
    if let Ok(p) = Arc::try_unwrap(a.prepared)
        && let Some(cg) = p.into_cgroup()
    {
        let _ = cg.remove();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_breach_and_cgroup_tree_kill() {
    let Some(sb) = sandbox() else { return };

    // 1. Memory: allocate until the cgroup's OOM killer ends it.
    let policy = SandboxPolicy {
        memory: Some(128 << 20),
        ..SandboxPolicy::default()
    };
    let a = attach(&sb, "mem-1", policy);
    let spec = tsbridge_process::JobSpec::builder(common::node())
        .args([
            "-e",
            "const a = []; for (;;) a.push(Buffer.alloc(16 << 20, 1));",
        ])
        .envs(common::base_env())
        .sandbox(Some(a.clone()))
        .timeout(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert_eq!(o.reason, EndReason::MemoryLimit, "{o:?}");
    assert!(o.exit.signal().is_some() || o.exit.code() != Some(0));
    assert!(o.peak_rss.unwrap_or(0) > 64 << 20, "peak {:?}", o.peak_rss);
    remove(a);

    // 2. Timeout: the cgroup finds the setsid escapee even without the subreaper.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids.json");
    let a = attach(&sb, "tree-1", SandboxPolicy::default());
    let spec = common::node_fixture("tree.js")
        .arg(&pidfile)
        .sandbox(Some(a.clone()))
        .timeout(Some(Duration::from_secs(8)))
        .kill_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let job = tokio::spawn(run(spec));
    let pids = common::read_pidfile(&pidfile).await;
    let o = job.await.unwrap().unwrap();
    assert_eq!(o.reason, EndReason::Timeout);
    for k in ["leader", "grandchild", "escapee"] {
        let p = pids[k].as_i64().unwrap() as i32;
        assert!(!common::alive(p), "{k} {p} survived");
    }
    let cg_pids = a
        .prepared
        .cgroup()
        .map(|c| c.pids().unwrap_or_default())
        .unwrap_or_default();
    let live: Vec<i32> = cg_pids.into_iter().filter(|p| common::alive(*p)).collect();
    assert!(live.is_empty(), "cgroup still has {live:?}");
    // The killed grandchild and escapee were orphans (no subreaper here):
    // they leave the job's cgroup once whoever adopted them reaped them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for k in ["grandchild", "escapee"] {
        let proc_dir = format!("/proc/{}", pids[k]);
        while std::path::Path::new(&proc_dir).exists() {
            assert!(std::time::Instant::now() < deadline, "{k} never reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    remove(a);
    sb.remove_parent()
        .expect("the test's parent cgroup is removed");
}
