//! The sandbox fails closed: if a step cannot be applied in the child, the
//! spawn fails (nothing runs) and the parent learns which step failed.

use crate::common;

use std::process::Stdio;

use common::*;
use tsbridge_sandbox::{ChildStep, SandboxPolicy};

#[test]
fn spawn_fails_when_the_job_cgroup_is_gone() {
    let host = Host::new("fail");
    if skip_without_cgroups(&host) {
        return;
    }
    let prepared = host.prepare("gone", &SandboxPolicy::default());
    // Remove the job cgroup behind the prepared sandbox's back: joining it
    // through the already-open cgroup.procs fds now fails (ENODEV).
    for d in prepared.cgroup().expect("cgroup").dirs() {
        std::fs::remove_dir(d).expect("rmdir");
    }
    let mut cmd = base_command("/bin/true");
    cmd.stdout(Stdio::null());
    sandboxed(&mut cmd, &prepared);
    let err = cmd.spawn().expect_err("spawn must fail");
    let failure = prepared.take_child_failure().expect("failure recorded");
    assert_eq!(failure.step, ChildStep::JoinCgroup, "{failure} / {err}");
    assert_eq!(err.raw_os_error(), Some(failure.errno));
    assert!(failure.to_string().contains("joining the job cgroup"));
    assert_eq!(prepared.take_child_failure(), None, "take clears");
}
