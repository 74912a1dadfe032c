//! rlimits are visible in the child's /proc/self/limits.

use crate::common;

use common::*;
use tsbridge_sandbox::{Rlimits, SandboxPolicy};

fn limit_line<'a>(limits: &'a str, name: &str) -> Vec<&'a str> {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    line[name.len()..].split_whitespace().collect()
}

#[test]
fn rlimits_are_applied() {
    let host = Host::new("rlimits");
    let policy = SandboxPolicy {
        rlimits: Rlimits {
            nofile: Some(256),
            fsize: Some(64 << 20),
            core: Some(0),
            cpu_seconds: Some(100),
            address_space: Some(4 << 30),
        },
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("limits", &policy);
    let out = run(
        base_command("/bin/cat").tap_arg("/proc/self/limits"),
        Some(&prepared),
    );
    drop(JobGuard(prepared.into_cgroup()));
    assert!(out.status.success());
    let l = stdout(&out);
    assert_eq!(limit_line(&l, "Max open files")[..2], ["256", "256"]);
    assert_eq!(
        limit_line(&l, "Max file size")[..2],
        ["67108864", "67108864"]
    );
    assert_eq!(limit_line(&l, "Max core file size")[..2], ["0", "0"]);
    assert_eq!(limit_line(&l, "Max cpu time")[..2], ["100", "102"]);
    assert_eq!(
        limit_line(&l, "Max address space")[..2],
        ["4294967296", "4294967296"]
    );
}

#[test]
fn fsize_limit_stops_big_writes() {
    let host = Host::new("fsize");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = SandboxPolicy {
        rlimits: Rlimits {
            fsize: Some(1 << 20),
            ..Rlimits::default()
        },
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("fsize", &policy);
    let target = dir.path().join("big");
    let out = run(
        base_command("/bin/sh").tap_args(&[
            "-c",
            &format!("head -c 4194304 /dev/zero > {}", target.display()),
        ]),
        Some(&prepared),
    );
    drop(JobGuard(prepared.into_cgroup()));
    assert!(!out.status.success(), "wrote past RLIMIT_FSIZE");
    let len = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    assert!(len <= 1 << 20, "file is {len} bytes");
}

trait Tap {
    fn tap_arg(self, a: &str) -> Self;
    fn tap_args(self, a: &[&str]) -> Self;
}

impl Tap for std::process::Command {
    fn tap_arg(mut self, a: &str) -> Self {
        self.arg(a);
        self
    }
    fn tap_args(mut self, a: &[&str]) -> Self {
        self.args(a);
        self
    }
}
