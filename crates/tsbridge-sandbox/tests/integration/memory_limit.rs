//! A job allocating and touching 2 GiB under a 256 MiB limit is SIGKILLed by
//! the cgroup OOM killer, and the stats say so.

use crate::common;

use std::os::unix::process::ExitStatusExt;

use common::*;
use tsbridge_sandbox::{LimitBreach, SandboxPolicy};

#[test]
fn allocation_beyond_the_memory_limit_is_oom_killed_and_reported() {
    let host = Host::new("mem");
    if skip_without_cgroups(&host) {
        return;
    }
    assert!(
        host.sandbox.capabilities().memory,
        "memory controller expected here"
    );
    let limit = 256u64 << 20;
    let policy = SandboxPolicy {
        memory: Some(limit),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("oom", &policy);
    let mut cmd = base_command(python());
    cmd.arg(fixture("alloc.py")).arg("2048");
    let out = run(cmd, Some(&prepared));
    let job = JobGuard(prepared.into_cgroup());

    let so = stdout(&out);
    assert!(
        !so.contains("done"),
        "allocated 2 GiB under a 256 MiB limit: {so}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "status {:?}, stdout {so}",
        out.status
    );

    let stats = job.cg().stats();
    assert!(stats.oom_kills.unwrap_or(0) >= 1, "{stats:?}");
    let peak = stats.memory_peak.expect("peak reported");
    assert!(peak > limit / 2 && peak <= limit + (1 << 20), "peak {peak}");
    assert_eq!(
        stats.breach(&policy, out.status.signal()),
        Some(LimitBreach::Memory)
    );
    job.remove();
}

#[test]
fn the_same_program_under_its_limit_is_not_a_breach() {
    let host = Host::new("memok");
    if skip_without_cgroups(&host) {
        return;
    }
    let policy = SandboxPolicy {
        memory: Some(256 << 20),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("fits", &policy);
    let mut cmd = base_command(python());
    cmd.arg(fixture("alloc.py")).arg("64");
    let out = run(cmd, Some(&prepared));
    let job = JobGuard(prepared.into_cgroup());
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("done"));
    let stats = job.cg().stats();
    assert_eq!(stats.oom_kills, Some(0));
    assert_eq!(stats.breach(&policy, out.status.signal()), None);
    job.remove();
}

#[test]
fn v8_heap_oom_below_the_cgroup_limit_is_a_memory_breach() {
    let host = Host::new("v8oom");
    if skip_without_cgroups(&host) || !std::path::Path::new("/usr/bin/node").exists() {
        return;
    }
    let policy = SandboxPolicy {
        memory: Some(256 << 20),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("v8", &policy);
    let mut cmd = base_command("/usr/bin/node");
    // --max-old-space-size at ~75% of the limit: V8 gives up (SIGABRT) first.
    cmd.arg("--max-old-space-size=192")
        .arg("-e")
        .arg("const a = []; for (;;) { a.push(new Array(1 << 20).fill(1.5)); }");
    let out = run(cmd, Some(&prepared));
    let job = JobGuard(prepared.into_cgroup());
    let stats = job.cg().stats();
    let err = stderr(&out);
    assert!(err.contains(tsbridge_sandbox::V8_HEAP_OOM_MARKER), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{:?}", out.status);
    assert_eq!(stats.oom_kills, Some(0), "{stats:?}");
    assert_eq!(
        stats.breach(&policy, out.status.signal()),
        Some(LimitBreach::Memory),
        "{stats:?}"
    );
    job.remove();
}
