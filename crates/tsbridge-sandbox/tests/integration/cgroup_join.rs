//! A sandboxed child, and what it forks, are in every cgroup of its job
//! (v1: every hierarchy, joined through `tasks`; v2: the one directory).

use crate::common;

use common::*;
use tsbridge_sandbox::SandboxPolicy;

#[test]
fn the_child_and_its_children_are_in_every_job_cgroup() {
    let host = Host::new("join");
    if skip_without_cgroups(&host) {
        return;
    }
    let prepared = host.prepare("join", &SandboxPolicy::default());
    let dirs = prepared.cgroup().expect("cgroup").dirs().len();
    // `; true` makes the shell fork cat instead of exec'ing it.
    let mut cmd = base_command("/bin/sh");
    cmd.args(["-c", "cat /proc/self/cgroup; cat /proc/$$/cgroup; true"]);
    let out = run(cmd, Some(&prepared));
    drop(JobGuard(prepared.into_cgroup()));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let name = format!("/{}join", tsbridge_sandbox::job_cgroup_prefix());
    let in_job = text.lines().filter(|l| l.ends_with(&name)).count();
    // Each of the two processes lists every directory of the job.
    assert_eq!(
        in_job,
        2 * dirs,
        "{dirs} job dirs expected twice in:\n{text}"
    );
}
