//! A double-forking setsid daemon started by the job is still a member of the
//! job cgroup, and kill_all kills it.

use crate::common;

use std::time::Duration;

use common::*;
use tsbridge_sandbox::SandboxPolicy;

fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn setsid_daemon_is_found_and_killed() {
    let host = Host::new("daemon");
    if skip_without_cgroups(&host) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("daemon.pid");
    let prepared = host.prepare("daemon", &SandboxPolicy::default());
    let mut cmd = base_command(python());
    cmd.arg(fixture("daemonize.py")).arg(&pidfile);
    let out = run(cmd, Some(&prepared));
    let job = JobGuard(prepared.into_cgroup());
    assert!(out.status.success(), "{out:?}");

    poll_until("daemon pid file", Duration::from_secs(20), || {
        pidfile.exists()
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("read")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid), "daemon not running");
    // SAFETY: getsid(0) has no preconditions.
    let our_session = unsafe { libc::getsid(0) };
    assert_ne!(session_of(pid), Some(our_session), "daemon did not setsid");

    assert!(
        job.cg().pids().expect("pids").contains(&pid),
        "daemon not listed"
    );
    job.cg().kill_all().expect("kill_all");
    poll_until("daemon dead", Duration::from_secs(10), || !alive(pid));
    assert!(job.cg().pids().expect("pids").is_empty());
    job.remove();
}

#[test]
fn signal_all_reaches_every_member() {
    let host = Host::new("sig");
    if skip_without_cgroups(&host) {
        return;
    }
    let prepared = host.prepare("sig", &SandboxPolicy::default());
    let mut cmd = base_command("/bin/sh");
    cmd.arg("-c").arg("sleep 1000 & setsid sleep 1001 & wait");
    sandboxed(&mut cmd, &prepared);
    let mut child = cmd.spawn().expect("spawn");
    let job = JobGuard(prepared.into_cgroup());
    poll_until("3 members", Duration::from_secs(20), || {
        job.cg().pids().map(|p| p.len() >= 3).unwrap_or(false)
    });
    job.cg().signal_all(libc::SIGTERM).expect("signal");
    let _ = wait_status(&mut child, Duration::from_secs(20));
    poll_until("all exited", Duration::from_secs(20), || {
        job.cg().pids().map(|p| p.is_empty()).unwrap_or(false)
    });
    job.remove();
}
