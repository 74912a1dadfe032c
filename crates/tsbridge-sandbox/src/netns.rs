//! Network namespaces: probing whether tsbridge may create them, and creating
//! the one shared empty namespace (only `lo`, up) that jobs can `setns` into.
//!
//! A tsbridge without CAP_SYS_ADMIN (a non-root service, a developer's
//! `tsbridge run`) cannot make a network namespace in the host's user
//! namespace. Where the kernel lets unprivileged users make user
//! namespaces, each job then makes its own pair instead
//! ([`enter_own_user_and_net_ns`]): a user namespace that maps only the
//! job's uid and gid to themselves (so file ownership and every permission
//! check on the host are unchanged), and a network namespace owned by it.
//! The capabilities the job holds in its user namespace bring `lo` up and
//! are then dropped like any others (bounding set emptied, no capability
//! after the exec of a non-zero uid); the seccomp filter refuses the job
//! any namespace of its own making, and Landlock keeps it from changing
//! the mount tree.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use crate::child::{ChildStep, loopback_up};
use crate::probe::Ended;

/// Create a fresh network namespace on a short-lived thread (namespaces are
/// per thread, so tsbridge itself stays in the host namespace), bring `lo` up
/// and return an fd that keeps it alive.
pub(crate) fn create_empty_netns() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("tsbridge-netns".into())
        .spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's namespace;
            // the thread ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain syscalls on stack data, in this thread's new namespace.
            unsafe { loopback_up() }.map_err(io::Error::from_raw_os_error)?;
            Ok(OwnedFd::from(File::open("/proc/thread-self/ns/net")?))
        })?
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// The uid and gid maps of a job's own user namespace: its user and group
/// (tsbridge's effective ones) mapped to themselves, one id each. Made in
/// the parent: the child only writes them.
#[derive(Debug)]
pub(crate) struct SelfMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl SelfMaps {
    /// The maps for the calling process's effective uid and gid.
    pub(crate) fn current() -> Self {
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Self {
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Opens `path` for writing.
///
/// # Safety
/// A raw syscall on a C string the caller keeps alive: async-signal-safe.
unsafe fn open_w(path: &std::ffi::CStr) -> Result<libc::c_int, i32> {
    // SAFETY: a live C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

/// Writes `data` to `fd` in one write, then closes it.
///
/// # Safety
/// Raw syscalls on an fd the caller owns and hands over: async-signal-safe.
unsafe fn write_close(fd: libc::c_int, data: &[u8]) -> Result<(), i32> {
    // SAFETY: fd is the caller's; data is live for the call.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let e = if n < 0 {
        Some(errno())
    } else if n as usize != data.len() {
        Some(libc::EIO)
    } else {
        None
    };
    // SAFETY: fd is ours now, closed once.
    unsafe { libc::close(fd) };
    e.map_or(Ok(()), Err)
}

/// Sets the address space's dumpable flag.
///
/// # Safety
/// A raw prctl: async-signal-safe. Only on an address space of the
/// caller's own (it is per address space, not per task).
unsafe fn set_dumpable(on: bool) -> Result<(), i32> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on), 0, 0, 0) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Moves the caller into a user namespace of its own that maps only
/// `maps`' ids to themselves, and a network namespace owned by it with `lo`
/// up. Returns the step that failed and its errno.
///
/// The maps are the process's own `/proc/self/{setgroups,uid_map,gid_map}`,
/// which a non-dumpable process (tsbridge is one, and its children until
/// their exec) cannot open unless privileged: their owner is then root. So
/// the address space is made dumpable for the three opens and non-dumpable
/// again before the writes; the exec sets the flag as for any program.
/// The copy of tsbridge's memory in the child is open to a ptrace by a
/// process of the same uid outside any Landlock domain for those three
/// system calls (jobs are in a domain: Landlock keeps them from tracing
/// it). Such a process can read tsbridge's config and store anyway.
///
/// # Safety
/// In a child of a fork-like clone, with an address space of its own
/// (never a vfork child: the dumpable flag would be tsbridge's), before its
/// exec: it changes the calling task's namespaces and credentials. Raw
/// syscalls on static C strings and on `maps`, which the parent keeps
/// alive; async-signal-safe.
pub(crate) unsafe fn enter_own_user_and_net_ns(maps: &SelfMaps) -> Result<(), (ChildStep, i32)> {
    // SAFETY: unshare with constant flags.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        return Err((ChildStep::NetworkNamespace, errno()));
    }
    // SAFETY: forwarded contract.
    unsafe { write_self_maps(maps) }.map_err(|e| (ChildStep::UserNamespace, e))?;
    // SAFETY: called in the child, as required by loopback_up.
    unsafe { loopback_up() }.map_err(|e| (ChildStep::Loopback, e))
}

/// Writes `maps` as the caller's uid and gid maps (`setgroups` denied
/// first), the caller having just entered a new user namespace of its own
/// (unshare or clone with `CLONE_NEWUSER`). Opens the three files with the
/// address space dumpable for a moment (see [`enter_own_user_and_net_ns`]).
///
/// # Safety
/// In a child of a fork-like clone with an address space of its own,
/// before its exec; raw syscalls on static C strings and on `maps`:
/// async-signal-safe.
pub(crate) unsafe fn write_self_maps(maps: &SelfMaps) -> Result<(), i32> {
    // SAFETY: this child's own address space (see above); static C strings.
    let fds = unsafe {
        set_dumpable(true)?;
        let fds = open_w(c"/proc/self/setgroups").and_then(|s| {
            open_w(c"/proc/self/uid_map")
                .and_then(|u| {
                    open_w(c"/proc/self/gid_map")
                        .map(|g| (s, u, g))
                        .inspect_err(|_| {
                            libc::close(u);
                        })
                })
                .inspect_err(|_| {
                    libc::close(s);
                })
        });
        let undumpable = set_dumpable(false);
        let fds = fds?;
        if let Err(e) = undumpable {
            libc::close(fds.0);
            libc::close(fds.1);
            libc::close(fds.2);
            return Err(e);
        }
        fds
    };
    // An unprivileged process may map its own gid only once setgroups is
    // denied (no dropping of supplementary groups in the namespace).
    // SAFETY: the fds opened above, each written and closed once.
    unsafe {
        let r = write_close(fds.0, b"deny");
        let r = r.and(write_close(fds.1, &maps.uid_map));
        r.and(write_close(fds.2, &maps.gid_map))
    }
}

/// Exit codes of the probe's child: a failed step's number (`ChildStep`).
const PROBE_OK: i32 = 0;

/// Whether this process can give a job a user namespace and a network
/// namespace of its own ([`enter_own_user_and_net_ns`]), tried in a
/// fork-like child that exits at once.
pub(crate) fn probe_user_netns(maps: &SelfMaps) -> io::Result<()> {
    let ended = crate::probe::in_forked_child(0, || {
        // SAFETY: the freshly cloned child (single-threaded, its own
        // memory); raw syscalls on `maps`, prepared before.
        match unsafe { enter_own_user_and_net_ns(maps) } {
            Ok(()) => PROBE_OK,
            Err((step, _)) => step as i32,
        }
    })?;
    match ended {
        Ended::Exited(PROBE_OK) => Ok(()),
        Ended::Exited(code) => Err(io::Error::other(match ChildStep::from_i32(code) {
            Some(step) => format!("{step} failed in the probe's child"),
            None => format!("the probe's child exited with code {code}"),
        })),
        Ended::Other(status) => Err(io::Error::other(format!(
            "the probe's child ended with wait status {status:#x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_maps_map_the_effective_ids_to_themselves() {
        let m = SelfMaps::current();
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(m.uid_map, format!("{uid} {uid} 1\n").into_bytes());
        assert_eq!(m.gid_map, format!("{gid} {gid} 1\n").into_bytes());
    }

    /// Root can make user namespaces too (this test host): the probe
    /// works; elsewhere it fails only for want of user namespaces.
    #[test]
    fn the_user_netns_probe_works_where_user_namespaces_do() {
        match probe_user_netns(&SelfMaps::current()) {
            Ok(()) => {}
            Err(e) => eprintln!("no user namespaces here: {e}"),
        }
    }

    #[test]
    fn shared_netns_is_created_when_privileged() {
        match create_empty_netns() {
            Ok(_fd) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eprintln!("no privilege: skipped"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}
