//! Hostile jobs against their parent (tsbridge), SPEC §5: a job run as root
//! gets no capabilities on exec, so a non-dumpable parent's `/proc` files
//! (environ, mem, fd) stay closed to it (before, CAP_SYS_PTRACE opened
//! them); and a job with no file-system policy still cannot signal its
//! parent (a scope-only Landlock domain, ABI 6+), while its own processes
//! stay reachable. The fixture `proc_peek.py` makes the attempts.

use crate::common;

use common::*;
use tsbridge_sandbox::SandboxPolicy;

fn peek(host: &Host, key: &str) -> String {
    let prepared = host.prepare(key, &SandboxPolicy::default());
    let mut cmd = base_command(python());
    cmd.arg(fixture("proc_peek.py"));
    let out = run(cmd, Some(&prepared));
    drop(JobGuard(prepared.into_cgroup()));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[test]
fn a_root_job_gets_no_capabilities_and_cannot_read_a_non_dumpable_parent() {
    if !is_root() {
        eprintln!("skipped: needs root (a non-root job has no capabilities anyway)");
        return;
    }
    // The parent plays tsbridge, which makes itself non-dumpable in main.
    // SAFETY: plain prctl with integer arguments (this test's own process).
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, 0);
    let host = Host::new("parentattack");
    let out = peek(&host, "caps");
    for set in ["capeff", "capprm", "capinh", "capbnd", "capamb"] {
        assert_eq!(field(&out, set), "0000000000000000", "{set}: {out}");
    }
    for attempt in ["environ", "mem", "fd"] {
        let r = field(&out, attempt);
        assert!(
            r == "EACCES" || r == "EPERM",
            "{attempt} of the parent: {out}"
        );
    }
}

#[test]
fn a_job_without_fs_policy_cannot_signal_its_parent() {
    let host = Host::new("parentsignal");
    let abi = landlock_abi(&host);
    if abi < 6 || !host.sandbox.capabilities().no_new_privs {
        eprintln!("skipped: Landlock scopes signals from ABI 6 (this kernel: {abi})");
        return;
    }
    let out = peek(&host, "signal");
    assert_eq!(field(&out, "kill"), "EPERM", "{out}");
    assert_eq!(field(&out, "kill_own"), "ok", "{out}");
}
