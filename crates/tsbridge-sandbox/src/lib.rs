//! tsbridge-sandbox: one policy applied to a child between fork and exec.
//!
//! - [`Sandbox`]: host-wide; detects [`Capabilities`] once, owns tsbridge's
//!   parent cgroup(s), sweeps job cgroups left by a crash.
//! - [`Sandbox::prepare`] -> [`PreparedSandbox`]: one job's cgroup(s) with
//!   limits, Landlock ruleset, seccomp filter, rlimits; applied in the child by
//!   [`PreparedSandbox::apply_in_child`] (async-signal-safe).
//! - [`JobCgroup`]: membership, stats, whole-tree kill, removal.
//! - [`env`] and [`paths`]: pure request validation (HTTP 403 `SecurityError`).
//!
//! Design notes: `docs/design/sandbox.md`.

#![cfg(target_os = "linux")]

mod cgroup;
mod child;
pub mod dynamic;
pub mod env;
mod error;
mod instance;
mod landlock;
pub mod leftovers;
mod netns;
pub mod paths;
pub mod pidns;
mod policy;
mod probe;
mod report;
mod sandbox;
mod seccomp;
pub mod user;

pub use cgroup::{
    CgroupStats, CgroupVersion, Controller, JobCgroup, LimitBreach, LimitEvents,
    V8_HEAP_OOM_MARKER, job_cgroup_prefix,
};
pub use child::{ChildFailure, ChildStep};
pub use dynamic::{DynamicUserError, UidLease, UidRange};
pub use error::{SandboxError, SecurityError};
pub use instance::instance_tag;
pub use policy::{FsPolicy, Rlimits, SandboxPolicy};
pub use report::{Capabilities, Enforcement, EnforcementReport, KillMethod, LandlockSupport};
pub use sandbox::{ChildHook, PreparedSandbox, Sandbox, SandboxConfig};
pub use user::{JobUser, RunAs, UserError};

/// Names of the syscalls the seccomp deny-list refuses (EPERM), for docs and `tsbridge check`.
pub fn seccomp_denied_syscalls() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = seccomp::DENIED.iter().map(|(n, _)| *n).collect();
    v.extend([
        "unshare (namespace flags)",
        "clone (namespace flags)",
        "ioctl (TIOCSTI, TIOCLINUX)",
    ]);
    v
}

/// Make the calling process a child subreaper (`PR_SET_CHILD_SUBREAPER`):
/// orphaned descendants of its children are reparented to it instead of PID 1.
/// The caller must then reap them, or they pile up as zombies (which count
/// against `pids.max`). Call once at tsbridge startup if the engine reaps.
pub fn set_child_subreaper() -> std::io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Make the calling process not dumpable (`PR_SET_DUMPABLE` 0): its
/// `/proc/<pid>` files (`environ` with tsbridge's tokens and secrets, `mem`,
/// `fd/*` with the store's SQLite file) then belong to root and open only
/// to a process with CAP_SYS_PTRACE, which a job never has (its exec gets no
/// capabilities, [`SandboxPolicy::no_new_privs`]); ptrace needs the same. A
/// fork (the death watchdog) inherits it; a job's exec gets its own dumpable
/// flag back. Also: no core dumps, which would hold the same secrets. Call
/// first thing in `main`.
pub fn set_not_dumpable() -> std::io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
