//! The init of a job's own PID namespace (`Command::pid_namespace`; the
//! decision and the alternatives are in docs/design/pid-namespace.md).
//!
//! The parent clones it fork-like (a copy of the memory, never `CLONE_VM`:
//! it outlives the spawn) with `CLONE_NEWPID | CLONE_NEWNS`, so it is PID 1
//! of a new PID namespace, in a mount namespace of its own. There it:
//! 1. sets every handled signal back to SIG_DFL (all stay blocked: it
//!    takes them with `rt_sigtimedwait`, so no handler of the server's ever
//!    runs in it, and the job inherits none);
//! 2. takes `PR_SET_PDEATHSIG(SIGKILL)` and checks that the engine did not
//!    die meanwhile (the status pipe's read end is gone: `POLLERR`);
//! 3. leads a process group of its own (the engine's `killpg` reaches it,
//!    as it reached the job before);
//! 4. makes its mount tree private (`MS_REC | MS_PRIVATE` on `/`: nothing it
//!    mounts reaches the host) and mounts a fresh procfs on `/proc`, which
//!    shows the processes of its namespace only;
//! 5. forks the job, which runs the usual steps (`exec_child`: stdio, its
//!    own process group, the pre-exec step with [`ChildCtx::under_init`])
//!    and execs;
//! 6. closes every fd but the status pipe's write end (it holds a copy of
//!    the server's fd table: the job's pipes, the report pipe, listeners);
//! 7. loops: SIGCHLD reaps every child (`waitpid(-1)`: it is the
//!    namespace's init, everything it can wait for is the job's); any other
//!    signal is forwarded to the job's process group (to the job itself
//!    before it leads one). When the job's main process is reaped, its wait
//!    status goes to the engine through the status pipe, unambiguous where
//!    an exit code is not (a PID 1 cannot die of a signal it sends itself),
//!    and the init exits with the shell's encoding of it. The kernel then
//!    SIGKILLs whatever is left in the namespace before the engine can reap
//!    the init.
//!
//! A failure before the job's exec goes back through the report pipe as
//! any other spawn step's. Everything here is raw syscalls on the stack
//! and on memory the parent prepared (the fork-like copy has one thread).

use std::os::fd::RawFd;

use super::{ChildCtx, ExecPlan, PreExec};

/// The record the init writes when the job's main process is reaped: its
/// wait status (big endian), then this tag.
pub(crate) const STATUS_TAG: [u8; 4] = *b"JOBW";

/// The init's name (`comm`), as `ps` shows it, and its command line: it is
/// a copy of the server, whose own would show in the job's `/proc/1`.
const INIT_NAME: &std::ffi::CStr = c"tsbridge-init";

/// Every signal (the kernel's 64-bit set).
const ALL_SIGNALS: u64 = !0;

/// The kernel's sigset size.
const SIGSET_SIZE: usize = std::mem::size_of::<u64>();

/// Signals that are the init's own business, never forwarded: SIGCHLD
/// (its children), and the faults that only the kernel sends to a task
/// that caused them (blocked, they kill the init, which ends the
/// namespace: nothing is left without its init).
fn forwarded(sig: libc::c_int) -> bool {
    !matches!(
        sig,
        libc::SIGCHLD
            | libc::SIGSEGV
            | libc::SIGBUS
            | libc::SIGILL
            | libc::SIGFPE
            | libc::SIGTRAP
            | libc::SIGSYS
    )
}

/// The init: never returns. See the module doc.
///
/// # Safety
/// Only in the freshly cloned (fork-like, PID 1 of its namespace) child,
/// with every signal blocked since before the clone. Async-signal-safe.
pub(super) unsafe fn init_main(
    plan: &ExecPlan<'_>,
    pre_exec: Option<&PreExec>,
    in_cgroup: bool,
    status: RawFd,
) -> ! {
    // SAFETY: forwarded contract.
    let job = match unsafe { start(plan, pre_exec, in_cgroup, status) } {
        Ok(job) => job,
        // SAFETY: forwarded contract.
        Err(errno) => unsafe { super::report_and_exit(plan.report, errno) },
    };
    // SAFETY: forwarded contract.
    unsafe { close_all_but(status, plan.seal) };
    // SAFETY: forwarded contract.
    unsafe { supervise(job, status) }
}

/// Steps 1 to 5: the job's pid (as the init sees it) or the errno of the
/// step that failed.
///
/// # Safety
/// See [`init_main`].
unsafe fn start(
    plan: &ExecPlan<'_>,
    pre_exec: Option<&PreExec>,
    in_cgroup: bool,
    status: RawFd,
) -> Result<libc::pid_t, i32> {
    // SAFETY: raw syscalls on stack data.
    unsafe { default_handlers() };
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(super::errno());
    }
    // The engine may have died before the prctl: its end of the status
    // pipe is then closed (POLLERR on ours), and there is nobody to run a
    // job for.
    let mut pfd = libc::pollfd {
        fd: status,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll of one live pollfd, no wait.
    if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 && pfd.revents & libc::POLLERR != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(1) };
    }
    // Not dumpable (as the server is: its /proc/1/environ and mem are
    // then closed to the job, which has no CAP_SYS_PTRACE), named
    // tsbridge-init, with that as its command line.
    // SAFETY: prctl with integer arguments, and a static C string (at most
    // 16 bytes are read).
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, INIT_NAME.as_ptr(), 0, 0, 0);
    }
    // SAFETY: forwarded contract.
    unsafe { set_cmdline() };
    // SAFETY: setpgid on ourselves with constant arguments.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(super::errno());
    }
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
            return Err(super::errno());
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err(super::errno());
        }
    }
    // A fork-like clone of this single-threaded copy: the job returns here
    // on its own copy of the stack.
    let flags = libc::SIGCHLD as libc::c_ulong;
    // SAFETY: see above; all other arguments zero (no stack, no tids).
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        0 => {
            let ctx = ChildCtx {
                in_cgroup,
                under_init: true,
            };
            // SAFETY: the freshly forked job: exec_child never returns and
            // runs only async-signal-safe code on memory prepared before
            // the first clone.
            unsafe { super::exec_child(plan, pre_exec, ctx) }
        }
        p if p > 0 => Ok(p as libc::pid_t),
        _ => Err(super::errno()),
    }
}

/// Overwrites the command line the init inherited from the server (the
/// server's arguments, which `/proc/1/cmdline` would show the job) with
/// [`INIT_NAME`], NUL-padded: its bounds are fields 48 and 49 of
/// `/proc/self/stat` (the fresh procfs: the init is mounted there). Best
/// effort: the init runs the same without it. (`PR_SET_MM` would move the
/// bounds instead, but needs CAP_SYS_RESOURCE.)
///
/// # Safety
/// See [`init_main`]; the range is the init's own copy of the server's
/// argument strings, which nothing reads in the init.
unsafe fn set_cmdline() {
    let mut buf = [0u8; 1024];
    // SAFETY: open of a static C string, read into a live stack buffer,
    // close of the fd opened.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Some(stat) = usize::try_from(n).ok().and_then(|n| buf.get(..n)) else {
        return;
    };
    let Some((start, end)) = arg_bounds(stat) else {
        return;
    };
    let name = INIT_NAME.to_bytes_with_nul();
    if end <= start || end - start < name.len() {
        return;
    }
    for i in 0..end - start {
        let b = name.get(i).copied().unwrap_or(0);
        // SAFETY: [start, end) is this process's argument area (mapped,
        // writable: the main thread's stack), see the contract.
        unsafe { std::ptr::write_volatile((start + i) as *mut u8, b) };
    }
}

/// `arg_start` and `arg_end` (fields 48 and 49) of a `/proc/<pid>/stat`
/// line: counted after the command name's closing parenthesis (field 2,
/// which may hold spaces), where field 3 starts.
fn arg_bounds(stat: &[u8]) -> Option<(usize, usize)> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let mut fields = stat.get(close + 2..)?.split(|b| *b == b' ');
    let mut num = |skip: usize| -> Option<usize> {
        let f = fields.nth(skip)?;
        let mut v: usize = 0;
        for d in f {
            v = v
                .checked_mul(10)?
                .checked_add(usize::from(d.checked_sub(b'0').filter(|d| *d < 10)?))?;
        }
        Some(v)
    };
    let start = num(48 - 3)?;
    let end = num(0)?;
    Some((start, end))
}

/// Every handled signal back to SIG_DFL (ignored ones stay ignored but
/// SIGPIPE, as the vfork child does). Failures are skipped: the signals
/// glibc reserves (32, 33) refuse, and none of them has a handler here.
///
/// # Safety
/// See [`init_main`]: every signal is blocked.
unsafe fn default_handlers() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction is plain data; zeroed is a valid value.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: sigaction reading into a live local.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        let keep = old.sa_sigaction == libc::SIG_DFL
            || (old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGPIPE);
        if keep {
            continue;
        }
        // SAFETY: as above.
        let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: sigaction from a live local.
        unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
    }
}

/// Closes every fd but `keep`.
///
/// # Safety
/// See [`init_main`].
unsafe fn close_all_but(keep: RawFd, seal: super::FdSeal) {
    let keep = keep as libc::c_uint;
    let ranges = [
        (0, keep.checked_sub(1)),
        (keep + 1, Some(libc::c_uint::MAX)),
    ];
    for (first, last) in ranges {
        let Some(last) = last else { continue };
        // SAFETY: close_range with plain integers.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r == 0 {
            continue;
        }
        let top = match seal {
            super::FdSeal::EachUpTo { last } => last as libc::c_uint,
            super::FdSeal::CloseRange => 4095,
        };
        for fd in first..=last.min(top) {
            // SAFETY: close of a plain fd number (EBADF when not open).
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// Step 7: forwards signals and reaps until the job's main process is
/// reaped, then reports its wait status and exits.
///
/// # Safety
/// See [`init_main`].
unsafe fn supervise(job: libc::pid_t, status: RawFd) -> ! {
    let set: u64 = ALL_SIGNALS;
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: rt_sigtimedwait on a live set of the kernel's size, a
        // live siginfo, no timeout (waits for one).
        let sig = unsafe {
            libc::syscall(
                libc::SYS_rt_sigtimedwait,
                &set as *const u64,
                &mut info as *mut libc::siginfo_t,
                std::ptr::null::<libc::timespec>(),
                SIGSET_SIZE,
            )
        };
        if sig <= 0 {
            continue;
        }
        let sig = sig as libc::c_int;
        if sig == libc::SIGCHLD {
            // SAFETY: forwarded contract.
            if let Some(st) = unsafe { reap_all(job) } {
                // SAFETY: forwarded contract.
                unsafe { report_and_exit(status, st) }
            }
        } else if forwarded(sig) {
            // SAFETY: kill with plain integers: the job's group, or the job
            // itself before it has made one (ESRCH).
            unsafe {
                if libc::kill(-job, sig) != 0 {
                    libc::kill(job, sig);
                }
            }
        }
    }
}

/// Reaps every child that has ended; the job's wait status if it was one.
///
/// # Safety
/// See [`init_main`].
unsafe fn reap_all(job: libc::pid_t) -> Option<i32> {
    let mut job_status = None;
    loop {
        let mut st = 0;
        // SAFETY: waitpid into a live local; __WALL: clone children too.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) };
        if r <= 0 {
            return job_status;
        }
        if r == job {
            job_status = Some(st);
        }
    }
}

/// Writes the job's wait status to the engine and exits with the shell's
/// encoding of it (its code, or 128 + its signal).
///
/// # Safety
/// See [`init_main`].
unsafe fn report_and_exit(status: RawFd, st: i32) -> ! {
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&st.to_be_bytes());
    rec[4..].copy_from_slice(&STATUS_TAG);
    let code = if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        libc::WEXITSTATUS(st)
    };
    // SAFETY: write of a live stack buffer (EPIPE, not SIGPIPE, when the
    // engine is gone: every signal is blocked), then _exit.
    unsafe {
        libc::write(status, rec.as_ptr().cast(), rec.len());
        libc::_exit(code)
    }
}

/// Reads the job's wait status from the read end of the status pipe (set
/// non-blocking), once the init has been reaped: `None` when the init
/// ended without one (killed: SIGKILL from the engine's stop, or the
/// job's spawn failed).
pub(crate) fn read_status(fd: RawFd) -> Option<i32> {
    let mut rec = [0u8; 8];
    // SAFETY: read into a live stack buffer.
    let n = unsafe { libc::read(fd, rec.as_mut_ptr().cast(), rec.len()) };
    (n == 8 && rec[4..] == STATUS_TAG).then(|| i32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_bounds_are_fields_48_and_49_whatever_the_name() {
        let mut line = String::from("7 (a) b) c) S");
        for f in 4..=52 {
            line.push_str(&format!(" {f}"));
        }
        assert_eq!(arg_bounds(line.as_bytes()), Some((48, 49)));
        let own = std::fs::read("/proc/self/stat").unwrap();
        let (start, end) = arg_bounds(&own).unwrap();
        assert!(start < end, "{start} {end}");
        assert_eq!(arg_bounds(b"7 (x) S 1 2"), None);
    }
}
