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
//!    the server's fd table: the job's pipes, the report pipe, listeners),
//!    and unmaps the server's writable memory ([`shed_memory`]);
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
    setup: &tsbridge_sandbox::pidns::InitSetup,
    in_cgroup: bool,
    status: RawFd,
) -> ! {
    // SAFETY: forwarded contract.
    let started = match unsafe { start(plan, pre_exec, setup, in_cgroup, status) } {
        Ok(s) => s,
        // SAFETY: forwarded contract.
        Err(errno) => unsafe { super::report_and_exit(plan.report, errno) },
    };
    // Before the fds are closed: the engine's spawn returns once the
    // init's copy of the report pipe is, and the init has shed the
    // server's memory by then.
    let seal = plan.seal;
    // SAFETY: forwarded contract; only `close_all_but` and `supervise` run
    // after it.
    unsafe { shed_memory(started.args) };
    // SAFETY: forwarded contract.
    unsafe { close_all_but(status, seal) };
    // SAFETY: forwarded contract.
    unsafe { supervise(started.job, status) }
}

/// What [`start`] leaves the rest of the init.
struct Started {
    /// The job's pid, as the init sees it.
    job: libc::pid_t,
    /// The address of the init's command line (kept by [`shed_memory`]).
    args: Option<usize>,
}

/// Steps 1 to 5, or the errno of the step that failed.
///
/// # Safety
/// See [`init_main`].
unsafe fn start(
    plan: &ExecPlan<'_>,
    pre_exec: Option<&PreExec>,
    setup: &tsbridge_sandbox::pidns::InitSetup,
    in_cgroup: bool,
    status: RawFd,
) -> Result<Started, i32> {
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
    let args = unsafe { set_cmdline() };
    // SAFETY: setpgid on ourselves with constant arguments.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(super::errno());
    }
    // SAFETY: the init: PID 1 of its namespace, in a mount namespace (and,
    // without privilege, a user namespace) of its own, a fork-like copy
    // with its own memory.
    unsafe { setup.apply() }?;
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
        p if p > 0 => Ok(Started {
            job: p as libc::pid_t,
            args,
        }),
        _ => Err(super::errno()),
    }
}

/// Overwrites the command line the init inherited from the server (the
/// server's arguments, which `/proc/1/cmdline` would show the job) with
/// [`INIT_NAME`], NUL-padded: its bounds are fields 48 and 49 of
/// `/proc/self/stat` (the fresh procfs: the init is mounted there). Best
/// effort: the init runs the same without it. (`PR_SET_MM` would move the
/// bounds instead, but needs CAP_SYS_RESOURCE.) Returns the address of the
/// command line once it is the init's.
///
/// # Safety
/// See [`init_main`]; the range is the init's own copy of the server's
/// argument strings, which nothing reads in the init.
unsafe fn set_cmdline() -> Option<usize> {
    let mut buf = [0u8; 1024];
    // SAFETY: open of a static C string, read into a live stack buffer,
    // close of the fd opened.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let stat = usize::try_from(n).ok().and_then(|n| buf.get(..n))?;
    let (start, end) = arg_bounds(stat)?;
    let name = INIT_NAME.to_bytes_with_nul();
    if end <= start || end - start < name.len() {
        return None;
    }
    for i in 0..end - start {
        let b = name.get(i).copied().unwrap_or(0);
        // SAFETY: [start, end) is this process's argument area (mapped,
        // writable: the main thread's stack), see the contract.
        unsafe { std::ptr::write_volatile((start + i) as *mut u8, b) };
    }
    Some(start)
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

/// Closes every fd but `keep` (raw syscalls: it runs after
/// [`shed_memory`]).
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
        let r =
            unsafe { raw::syscall4(libc::SYS_close_range, first as usize, last as usize, 0, 0) };
        if r == 0 {
            continue;
        }
        let top = match seal {
            super::FdSeal::EachUpTo { last } => last as libc::c_uint,
            super::FdSeal::CloseRange => 4095,
        };
        for fd in first..=last.min(top) {
            // SAFETY: close of a plain fd number (EBADF when not open).
            unsafe { raw::syscall4(libc::SYS_close, fd as usize, 0, 0, 0) };
        }
    }
}

/// Step 7: forwards signals and reaps until the job's main process is
/// reaped, then reports its wait status and exits. Raw syscalls only
/// ([`raw`]): after [`shed_memory`] nothing but the stack, the thread's
/// TLS and the read-only mappings are left.
///
/// # Safety
/// See [`init_main`].
unsafe fn supervise(job: libc::pid_t, status: RawFd) -> ! {
    let set: u64 = ALL_SIGNALS;
    // SAFETY: siginfo_t is plain data; zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: rt_sigtimedwait on a live set of the kernel's size, a
        // live siginfo, no timeout (waits for one).
        let sig = unsafe {
            raw::syscall4(
                libc::SYS_rt_sigtimedwait,
                &set as *const u64 as usize,
                &mut info as *mut libc::siginfo_t as usize,
                0,
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
                if raw::syscall4(libc::SYS_kill, (-job) as usize, sig as usize, 0, 0) != 0 {
                    raw::syscall4(libc::SYS_kill, job as usize, sig as usize, 0, 0);
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
        let mut st: libc::c_int = 0;
        // SAFETY: wait4 into a live local, no rusage; __WALL: clone
        // children too.
        let r = unsafe {
            raw::syscall4(
                libc::SYS_wait4,
                -1isize as usize,
                &mut st as *mut libc::c_int as usize,
                (libc::WNOHANG | libc::__WALL) as usize,
                0,
            )
        };
        if r <= 0 {
            return job_status;
        }
        if r == job as isize {
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
    let [a, b, c, d] = st.to_be_bytes();
    let [e, f, g, h] = STATUS_TAG;
    let rec = [a, b, c, d, e, f, g, h];
    let code = if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        libc::WEXITSTATUS(st)
    };
    // SAFETY: write of a live stack buffer (EPIPE, not SIGPIPE, when the
    // engine is gone: every signal is blocked), then exit_group.
    unsafe {
        raw::syscall4(
            libc::SYS_write,
            status as usize,
            rec.as_ptr() as usize,
            rec.len(),
            0,
        );
        raw::syscall4(libc::SYS_exit_group, code as usize, 0, 0, 0);
    }
    // exit_group does not return; should it, the kernel ends the init by
    // the fault (every signal is blocked), which ends the namespace too.
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Step 7b: gives back the server's memory. The init is a copy of the
/// server: until it exits it would keep every page the server had at the
/// clone (the server's later writes copy them, and the init keeps the
/// old ones: up to the server's whole resident memory per init, measured
/// in `pid_namespace_cost`). Once the job is forked (it has its own copy
/// until its exec), the init unmaps every writable mapping but its stack
/// and its thread's TLS (the mappings holding the stack pointer, `errno`
/// and the thread descriptor), and the one with the command line `args`
/// (the main thread's stack); what runs afterwards ([`supervise`]) makes
/// raw syscalls ([`raw`]) on its stack only, and reads code and read-only
/// data (the binary is linked with full RELRO, Rust's default: its GOT is
/// read-only). The mappings come from `/proc/self/maps` (the fresh
/// procfs), read in full before any is unmapped, in batches.
///
/// # Safety
/// See [`init_main`]; after it, only [`supervise`] may run.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn shed_memory(args: Option<usize>) {
    let here = 0u8;
    let keep = [
        std::ptr::addr_of!(here) as usize,
        args.unwrap_or(0),
        // SAFETY: __errno_location has no preconditions.
        unsafe { libc::__errno_location() } as usize,
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_self() } as usize,
    ];
    const BATCH: usize = 64;
    loop {
        let mut batch = [(0usize, 0usize); BATCH];
        let mut n = 0;
        // SAFETY: open of a static C string.
        let fd = unsafe {
            libc::open(
                c"/proc/self/maps".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        // Longer than any line (an address range, flags and a path of at
        // most PATH_MAX).
        let mut buf = [0u8; 8192];
        let mut have = 0;
        while let Some(free) = buf.get_mut(have..) {
            // SAFETY: read into the live tail of `buf`.
            let r = unsafe { libc::read(fd, free.as_mut_ptr().cast(), free.len()) };
            if r <= 0 {
                break;
            }
            have += r as usize;
            let mut start = 0;
            while let Some(line_len) = buf
                .get(start..have)
                .and_then(|t| t.iter().position(|b| *b == b'\n'))
            {
                if let Some((lo, hi)) = buf.get(start..start + line_len).and_then(writable_range)
                    && !keep.iter().any(|k| lo <= *k && *k < hi)
                    && let Some(slot) = batch.get_mut(n)
                {
                    *slot = (lo, hi);
                    n += 1;
                }
                start += line_len + 1;
            }
            if start == 0 && have == buf.len() {
                break;
            }
            buf.copy_within(start..have, 0);
            have -= start;
        }
        // SAFETY: close of the fd opened above.
        unsafe { libc::close(fd) };
        for &(lo, hi) in batch.iter().take(n) {
            // SAFETY: a writable mapping of this process that holds
            // nothing the init uses from here on (see the doc).
            unsafe { libc::munmap(lo as *mut libc::c_void, hi - lo) };
        }
        if n < BATCH {
            return;
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn shed_memory(_: Option<usize>) {}

/// The range of a `/proc/<pid>/maps` line (`lo-hi perms ...`) if its
/// mapping is writable.
fn writable_range(line: &[u8]) -> Option<(usize, usize)> {
    let mut parts = line.split(|b| *b == b' ');
    let range = parts.next()?;
    let perms = parts.next()?;
    if perms.get(1) != Some(&b'w') {
        return None;
    }
    let dash = range.iter().position(|b| *b == b'-')?;
    let hex = |s: &[u8]| -> Option<usize> {
        let mut v: usize = 0;
        for c in s {
            let d = (*c as char).to_digit(16)?;
            v = v.checked_mul(16)?.checked_add(d as usize)?;
        }
        Some(v)
    };
    Some((hex(range.get(..dash)?)?, hex(range.get(dash + 1..)?)?))
}

/// Raw syscalls that touch neither `errno` nor anything but registers
/// (and, on other architectures, libc's `syscall`): what the init may make
/// once it has shed the server's memory.
mod raw {
    /// `syscall(nr, a, b, c, d)`: the result, or `-errno`.
    ///
    /// # Safety
    /// As the syscall it makes.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn syscall4(
        nr: libc::c_long,
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    ) -> isize {
        let ret: isize;
        // SAFETY: the kernel's x86_64 syscall convention: rcx and r11 are
        // clobbered, rax gets the result; no stack use.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// See the x86_64 one.
    ///
    /// # Safety
    /// As the syscall it makes.
    #[cfg(target_arch = "aarch64")]
    pub(super) unsafe fn syscall4(
        nr: libc::c_long,
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    ) -> isize {
        let ret: isize;
        // SAFETY: the kernel's aarch64 syscall convention: x8 the number,
        // x0-x3 the arguments, x0 the result; no stack use.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") nr,
                inlateout("x0") a as isize => ret,
                in("x1") b,
                in("x2") c,
                in("x3") d,
                options(nostack),
            );
        }
        ret
    }

    /// See the x86_64 one (libc's `syscall`, which sets errno: the init
    /// sheds no memory on these architectures).
    ///
    /// # Safety
    /// As the syscall it makes.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(super) unsafe fn syscall4(
        nr: libc::c_long,
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    ) -> isize {
        // SAFETY: forwarded contract.
        let r = unsafe { libc::syscall(nr, a, b, c, d) } as isize;
        if r < 0 {
            -(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO) as isize)
        } else {
            r
        }
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

    #[test]
    fn writable_ranges_are_read_from_maps_lines() {
        let rw = b"7f00aa000000-7f00aa021000 rw-p 00000000 00:00 0          [heap]";
        assert_eq!(
            writable_range(rw),
            Some((0x7f00_aa00_0000, 0x7f00_aa02_1000))
        );
        let rx = b"55d0c0000000-55d0c0100000 r-xp 00001000 fe:01 1234   /usr/bin/x";
        assert_eq!(writable_range(rx), None);
        assert_eq!(writable_range(b"garbage"), None);
    }
}
