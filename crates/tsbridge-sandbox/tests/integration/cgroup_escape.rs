//! Hostile job (SPEC §5): a root job with no file-system policy goes after
//! its own cgroups: lift its pids limit, make a sub-cgroup, move itself
//! into the parent (leaving the job: with an empty environment it then
//! outlived the job and a SIGKILLed server). It has no capability, but uid
//! 0 owns cgroupfs's files; a Landlock domain that leaves every cgroupfs
//! mount read-only (Landlock ABI 2+) is what refuses it now. Before, all
//! three worked. The fixture `cgroup_escape.py` makes the attempts.

use crate::common;

use common::*;
use tsbridge_sandbox::SandboxPolicy;

#[test]
fn a_root_job_without_fs_policy_cannot_write_cgroupfs() {
    let host = Host::new("cgescape");
    if skip_without_cgroups(&host) {
        return;
    }
    let abi = landlock_abi(&host);
    if !is_root() || abi < 2 {
        eprintln!("skipped: needs root (which owns cgroupfs) and Landlock ABI 2+ ({abi})");
        return;
    }
    let policy = SandboxPolicy {
        pids: Some(64),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("escape", &policy);
    let dirs: Vec<_> = prepared
        .cgroup()
        .map(|cg| cg.dirs().iter().map(|d| d.to_path_buf()).collect())
        .unwrap_or_default();
    let mut cmd = base_command(python());
    cmd.arg(fixture("cgroup_escape.py")).args(&dirs);
    let out = run(cmd, Some(&prepared));
    let job = JobGuard(prepared.into_cgroup());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = stdout(&out);
    for attempt in ["raise", "mkdir", "escape"] {
        assert!(
            out.contains(&format!("{attempt}=EACCES")),
            "{attempt}: {out} ({dirs:?})"
        );
    }
    job.remove();
}
