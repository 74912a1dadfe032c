//! PID namespaces: whether this host lets tsbridge give a job one of its
//! own with a fresh `/proc` (the probe behind [`crate::Capabilities::pid_ns`]).
//! The namespace itself is made by the process engine's spawn
//! (`tsbridge-process`, `clone/init.rs`); see `docs/design/pid-namespace.md`.

use std::io;

use crate::probe::Ended;

/// What a job's init does first in its new PID and mount namespaces: make
/// the mount tree private (`MS_REC | MS_PRIVATE` on `/`: nothing mounted
/// here reaches the host's namespace) and mount a fresh procfs on `/proc`
/// (which shows the processes of the caller's PID namespace). Returns the
/// step that failed and its errno.
///
/// # Safety
/// Only in a child of a fork-like clone with `CLONE_NEWNS` (else it changes
/// the caller's mount namespace), PID 1 of its new PID namespace. Raw
/// syscalls with static arguments: async-signal-safe.
pub unsafe fn mount_private_proc() -> Result<(), (MountStep, i32)> {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: mount with static C strings and null pointers.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err((MountStep::Private, errno()));
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err((MountStep::Proc, errno()));
        }
    }
    Ok(())
}

/// What a job's init does first, as its sandbox needs it: without
/// privilege (its PID and mount namespaces then belong to a user namespace
/// of its own, made by the same clone: [`InitSetup::user_namespace`]), map
/// the job's uid and gid to themselves there; then [`mount_private_proc`].
/// Made by [`crate::PreparedSandbox::init_setup`].
#[derive(Debug, Clone, Default)]
pub struct InitSetup {
    maps: Option<std::sync::Arc<crate::netns::SelfMaps>>,
}

impl InitSetup {
    pub(crate) fn in_user_namespace(maps: std::sync::Arc<crate::netns::SelfMaps>) -> Self {
        Self { maps: Some(maps) }
    }

    /// Whether the init's clone must also make a user namespace
    /// (`CLONE_NEWUSER`): tsbridge has no CAP_SYS_ADMIN.
    pub fn user_namespace(&self) -> bool {
        self.maps.is_some()
    }

    /// The init's first steps: the maps (with [`Self::user_namespace`]),
    /// then [`mount_private_proc`]. Returns the errno of the step that
    /// failed.
    ///
    /// # Safety
    /// Only in the init, a child of a fork-like clone with `CLONE_NEWPID |
    /// CLONE_NEWNS` (and `CLONE_NEWUSER` with [`Self::user_namespace`]),
    /// with an address space of its own: raw syscalls on memory prepared
    /// before the clone, async-signal-safe.
    pub unsafe fn apply(&self) -> Result<(), i32> {
        if let Some(maps) = &self.maps {
            // SAFETY: forwarded contract.
            unsafe { crate::netns::write_self_maps(maps) }?;
        }
        // SAFETY: forwarded contract.
        unsafe { mount_private_proc() }.map_err(|(_, e)| e)
    }
}

/// A step of [`mount_private_proc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountStep {
    /// `MS_REC | MS_PRIVATE` on `/`.
    Private,
    /// The procfs on `/proc`.
    Proc,
}

/// Exit codes of the probe's child, one per step that failed.
const FAILED_PRIVATE: i32 = 10;
const FAILED_PROC: i32 = 11;

/// Clones a child into a new PID and mount namespace, as a job's init is
/// made, and has it do what the init does first ([`mount_private_proc`]).
/// `Ok` when all of it works.
pub(crate) fn probe() -> io::Result<()> {
    #[cfg(test)]
    PROBES.with(|n| n.set(n.get() + 1));
    let ended = crate::probe::in_forked_child(libc::CLONE_NEWPID | libc::CLONE_NEWNS, || {
        // SAFETY: the freshly cloned child, PID 1 of its namespace, in a
        // mount namespace of its own; raw syscalls with constant arguments.
        match unsafe { mount_private_proc() } {
            Ok(()) => 0,
            Err((MountStep::Private, _)) => FAILED_PRIVATE,
            Err((MountStep::Proc, _)) => FAILED_PROC,
        }
    })?;
    match ended {
        Ended::Exited(0) => Ok(()),
        Ended::Exited(FAILED_PRIVATE) => Err(io::Error::other(
            "cannot make the mount tree private in a new mount namespace",
        )),
        Ended::Exited(FAILED_PROC) => Err(io::Error::other(
            "cannot mount a procfs in a new PID namespace",
        )),
        Ended::Exited(code) => Err(io::Error::other(format!(
            "the probe's child exited with code {code}"
        ))),
        Ended::Other(status) => Err(io::Error::other(format!(
            "the probe's child ended with wait status {status:#x}"
        ))),
    }
}

/// [`probe`] without privilege: the same clone with a user namespace of
/// its own (`CLONE_NEWUSER`), whose maps the child writes first
/// ([`InitSetup::apply`]), as a job's init is made by a tsbridge without
/// CAP_SYS_ADMIN where unprivileged user namespaces are allowed.
pub(crate) fn probe_in_user_ns(maps: &std::sync::Arc<crate::netns::SelfMaps>) -> io::Result<()> {
    let setup = InitSetup::in_user_namespace(maps.clone());
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS;
    let ended = crate::probe::in_forked_child(flags, || {
        // SAFETY: the freshly cloned child, PID 1 of its namespace, in
        // user and mount namespaces of its own, with its own memory.
        match unsafe { setup.apply() } {
            Ok(()) => 0,
            Err(_) => FAILED_PROC,
        }
    })?;
    match ended {
        Ended::Exited(0) => Ok(()),
        Ended::Exited(_) => Err(io::Error::other(
            "cannot map the ids or mount a procfs in new user, PID and mount namespaces",
        )),
        Ended::Other(status) => Err(io::Error::other(format!(
            "the probe's child ended with wait status {status:#x}"
        ))),
    }
}

#[cfg(test)]
thread_local! {
    /// How many probes this thread made (tests: the probe runs on the
    /// caller's thread).
    static PROBES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// How many probes this thread has made.
#[cfg(test)]
pub(crate) fn probes_here() -> u32 {
    PROBES.with(|n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root (this test host), the probe succeeds; without privilege it
    /// says EPERM, never anything else.
    #[test]
    fn the_probe_works_as_root_and_says_eperm_otherwise() {
        match probe() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eprintln!("no privilege: skipped"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    /// `Sandbox::new` does not probe (a fork-like clone of the whole
    /// process and a procfs mount); neither do a prediction and a prepare
    /// of a policy without a PID namespace, nor the startup table (which
    /// says "not probed yet"). The first `capabilities()` (tsbridge check,
    /// /readyz) or policy that asks for one probes, once; the answer is the
    /// probe's.
    #[test]
    fn the_probe_runs_at_the_first_use_only() {
        let sb = crate::Sandbox::new(crate::SandboxConfig {
            use_cgroups: false,
            ..crate::SandboxConfig::default()
        })
        .unwrap();
        assert_eq!(probes_here(), 0, "Sandbox::new probed");
        let so_far = sb.capabilities_so_far();
        assert!(!so_far.pid_ns_probed && !so_far.pid_ns);
        assert!(
            so_far
                .to_string()
                .contains("pid namespace      not probed yet"),
            "{so_far}"
        );
        let plain = crate::SandboxPolicy::default();
        assert_eq!(
            sb.predict(&plain).pid_namespace,
            crate::Enforcement::NotRequested
        );
        drop(sb.prepare("lazy-probe", &plain).unwrap());
        assert_eq!(probes_here(), 0, "a job without a PID namespace probed");

        let caps = sb.capabilities().clone();
        assert_eq!(probes_here(), 1);
        assert!(caps.pid_ns_probed);
        assert!(!caps.to_string().contains("not probed"), "{caps}");
        let own = crate::SandboxPolicy {
            pid_namespace: true,
            ..crate::SandboxPolicy::default()
        };
        let graded = sb.predict(&own).pid_namespace;
        assert_eq!(sb.capabilities_so_far(), &caps);
        assert_eq!(probes_here(), 1, "probed once");
        assert_eq!(caps.pid_ns, probe().is_ok());
        assert_eq!(caps.pid_ns, graded == crate::Enforcement::Enforced);
    }
}
