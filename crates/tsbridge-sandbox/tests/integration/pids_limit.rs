//! A fork bomb under pids.max = 64 is contained, reported, and fully killed.

use crate::common;

use std::time::Duration;

use common::*;
use tsbridge_sandbox::{LimitBreach, SandboxPolicy};

#[test]
fn fork_bomb_is_contained_and_killed() {
    let host = Host::new("pids");
    if skip_without_cgroups(&host) {
        return;
    }
    assert!(
        host.sandbox.capabilities().pids,
        "pids controller expected here"
    );
    let policy = SandboxPolicy {
        pids: Some(64),
        memory: Some(256 << 20),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("bomb", &policy);
    let mut cmd = base_command("/bin/sh");
    cmd.arg(fixture("forkbomb.sh"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    sandboxed(&mut cmd, &prepared);
    let mut child = cmd.spawn().expect("spawn");
    let job = JobGuard(prepared.into_cgroup());

    poll_until("pids.events max > 0", Duration::from_secs(30), || {
        job.cg().stats().pids_max_events.unwrap_or(0) > 0
    });
    let stats = job.cg().stats();
    if let Some(peak) = stats.pids_peak {
        assert!(peak <= 64, "pids.peak {peak} above pids.max");
    }
    assert!(stats.pids_current.unwrap_or(0) <= 64, "{stats:?}");
    let members = job.cg().pids().expect("pids");
    assert!(!members.is_empty() && members.len() <= 64, "{members:?}");
    assert_eq!(stats.breach(&policy, None), Some(LimitBreach::Pids));

    // The job's cgroup as a member's /proc/<pid>/cgroup names it.
    let job_dir = format!(
        "/{}",
        job.cg().dirs()[0].file_name().unwrap().to_str().unwrap()
    );
    assert!(
        job_dir.starts_with("/job-") && job_dir.ends_with("-bomb"),
        "{job_dir}"
    );
    job.cg().kill_all().expect("kill_all");
    let _ = wait_status(&mut child, Duration::from_secs(10));
    assert!(job.cg().pids().expect("pids").is_empty());
    // Every process we saw is gone (or a zombie waiting for its reaper).
    let survivors: Vec<i32> = members.iter().copied().filter(|p| alive(*p)).collect();
    // A pid may have been reused by an unrelated process: it must not be in our job.
    for p in &survivors {
        let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
        assert!(!cg.contains(&job_dir), "pid {p} of the bomb survived: {cg}");
    }
    let dirs: Vec<std::path::PathBuf> = job.cg().dirs().iter().map(|d| d.to_path_buf()).collect();
    job.remove();
    for d in dirs {
        assert!(!d.exists(), "{} not removed", d.display());
    }
}
