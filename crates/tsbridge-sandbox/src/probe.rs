//! The startup probes' common part: run a few raw syscalls in a throw-away
//! fork-like child (namespaces are made there, never in tsbridge itself)
//! and learn how it ended.

use std::io;

/// How a probe's child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// `_exit(code)`.
    Exited(i32),
    /// Anything else: the raw wait status.
    Other(libc::c_int),
}

/// Clones a fork-like child with `flags` (namespace flags; `SIGCHLD` is
/// added) that runs `child` and `_exit`s with what it returns; waits for
/// it.
///
/// `child` runs in the freshly cloned copy of this process (single
/// threaded, its own memory): it may only make async-signal-safe calls on
/// memory prepared before (no allocation, no lock).
pub(crate) fn in_forked_child(
    flags: libc::c_int,
    child: impl FnOnce() -> i32,
) -> io::Result<Ended> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a fork-like clone (no CLONE_VM, no stack: the child runs on
    // its copy of this thread's stack). The child runs `child`, which the
    // caller keeps to async-signal-safe calls, and `_exit`s.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = child();
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(code) }
    }
    let pid = pid as libc::pid_t;
    let mut status = 0;
    loop {
        // SAFETY: waitpid of our own child into a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        Ended::Exited(libc::WEXITSTATUS(status))
    } else {
        Ended::Other(status)
    })
}
