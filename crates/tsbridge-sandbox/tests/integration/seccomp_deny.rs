//! The seccomp deny-list: ptrace, mount, namespace creation and keyctl get
//! EPERM; the same calls are not EPERM without it (as root). node still
//! runs and spawns children under it.

use crate::common;

use common::*;
use tsbridge_sandbox::{Enforcement, SandboxPolicy};

/// `seccomp: false` is the control, which also keeps no_new_privs off: with
/// it a root job execs without capabilities, and the calls would fail for
/// lack of them rather than reach the kernel's checks.
fn probe(host: &Host, key: &str, seccomp: bool) -> String {
    let policy = SandboxPolicy {
        seccomp,
        no_new_privs: seccomp,
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare(key, &policy);
    if seccomp {
        assert_eq!(prepared.report().seccomp, Enforcement::Enforced);
    }
    let mut cmd = base_command(python());
    cmd.arg(fixture("seccomp_probe.py"));
    let out = run(cmd, Some(&prepared));
    let _job = JobGuard(prepared.into_cgroup());
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn dangerous_syscalls_get_eperm() {
    let host = Host::new("seccomp");
    if !host.sandbox.capabilities().seccomp {
        eprintln!("skipped: no seccomp");
        return;
    }
    let out = probe(&host, "on", true);
    for call in ["ptrace", "mount", "unshare_net", "unshare_user", "keyctl"] {
        assert!(out.contains(&format!("{call}=EPERM")), "{call}: {out}");
    }
    if is_root() {
        // Control: as root without the filter these are not EPERM.
        let out = probe(&host, "off", false);
        assert!(out.contains("ptrace=ok"), "{out}");
        assert!(out.contains("unshare_net=ok"), "{out}");
        assert!(!out.contains("mount=EPERM"), "{out}");
    }
}

#[test]
fn unshare_command_fails_under_seccomp() {
    let host = Host::new("seccompunshare");
    if !host.sandbox.capabilities().seccomp || !is_root() {
        eprintln!("skipped: needs seccomp and root");
        return;
    }
    let policy = SandboxPolicy::default();
    let prepared = host.prepare("unshare", &policy);
    let mut cmd = base_command("/usr/bin/unshare");
    cmd.args(["-n", "true"]);
    let out = run(cmd, Some(&prepared));
    drop(JobGuard(prepared.into_cgroup()));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );

    let control = host.prepare(
        "unshare-ctl",
        &SandboxPolicy {
            seccomp: false,
            // Else a root job execs without the capability unshare needs.
            no_new_privs: false,
            ..policy
        },
    );
    let mut cmd = base_command("/usr/bin/unshare");
    cmd.args(["-n", "true"]);
    let out = run(cmd, Some(&control));
    drop(JobGuard(control.into_cgroup()));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn node_runs_and_spawns_under_seccomp() {
    let host = Host::new("seccompnode");
    if !host.sandbox.capabilities().seccomp || !std::path::Path::new("/usr/bin/node").exists() {
        eprintln!("skipped");
        return;
    }
    let prepared = host.prepare("node", &SandboxPolicy::default());
    let mut cmd = base_command("/usr/bin/node");
    cmd.arg("-e").arg(
        "const cp=require('child_process'); \
         const r=cp.spawnSync('/bin/sh',['-c','echo child']); \
         require('fs').readFile(__filename.length ? '/etc/hostname' : '', () => {}); \
         console.log('out=' + r.stdout.toString().trim() + ' status=' + r.status);",
    );
    let out = run(cmd, Some(&prepared));
    drop(JobGuard(prepared.into_cgroup()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("out=child status=0"),
        "{}",
        stdout(&out)
    );
}
