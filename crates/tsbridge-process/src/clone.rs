//! The engine's own fork + exec of a job, in place of
//! `std::process::Command::spawn`: `clone3(2)`, on x86_64 vfork-style
//! (below), so that a job with a cgroup v2 directory is created
//! inside it (`CLONE_INTO_CGROUP`) instead of moving itself there by writing
//! its pid to `cgroup.procs` between fork and exec. That write takes the
//! kernel's global `cgroup_threadgroup_rwsem` for writing, which waits for an
//! RCU grace period: milliseconds per job, and every spawn on the host waits
//! in line (docs/design/sandbox.md, step 1 "Join the job cgroups").
//!
//! It does what std did for the engine: argv, an exact environment, cwd,
//! stdin null or piped, stdout/stderr piped (O_CLOEXEC pipes or, on
//! request, socketpairs; dup2'd in the child), its own process group, an empty signal mask and SIGPIPE back to
//! SIG_DFL, the caller's pre-exec step, a `PATH` search in the job's own
//! `PATH` (glibc's `execvp` rules, without its `/bin/sh` retry of a file
//! that is not an executable: no shell, ever), and the errno of a failed
//! step or execve sent back through an O_CLOEXEC pipe (the parent then
//! reaps the child and returns the error).
//!
//! Two things std does not do:
//! - No fd beyond 0-2 survives the exec unless the pre-exec step installs
//!   it (the IPC channel's fd 3): once stdio is in place, the child marks
//!   every fd from 3 up close-on-exec (`close_range(3, ~0U,
//!   CLOSE_RANGE_CLOEXEC)`, Linux 5.11), so an fd tsbridge holds without
//!   FD_CLOEXEC (inherited from whoever started it, or opened by a library
//!   without O_CLOEXEC) never reaches a job. Marked, not closed: the
//!   report pipe and the fds the pre-exec step uses (the sandbox's cgroup,
//!   Landlock and namespace fds) work until the exec; an fd the step
//!   installs afterwards (`dup2`, or clearing FD_CLOEXEC) is kept. Without
//!   close_range (ENOSYS, or EINVAL before 5.11, or a seccomp filter), an
//!   `fcntl(F_SETFD, FD_CLOEXEC)` on each number from 3 to the highest fd
//!   open in /proc/self/fd, listed in the parent as the spawn begins.
//! - The parent gets a pidfd of the child from clone3 itself
//!   (`CLONE_PIDFD`): no window in which the pid could be reused before it
//!   is taken, and one syscall less per spawn; `pidfd_open` after a fork.
//!
//! Every C string and pointer array is built before the clone: the child
//! only makes raw syscalls on memory prepared by the parent
//! (async-signal-safe, no allocation, no lock).
//!
//! ## The vfork-style clone (x86_64)
//!
//! As glibc's `posix_spawn`: `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD
//! [| CLONE_INTO_CGROUP])`, the child on a stack of its own (mmap'd once
//! per spawning thread, 64 KiB above a guard page: see
//! `vfork::STACK_SIZE` for the measure), entered through a small
//! `asm!` trampoline (`vfork::clone3_vfork`) at a function that never
//! returns. No page table is copied and the parent takes no
//! copy-on-write fault afterwards: that was a quarter of the server's
//! CPU per spawn job (BENCHMARKS.md, "Where the server's CPU goes per
//! spawn job"), and it grows with the server's memory. Sharing the
//! memory until the exec asks this of the child:
//! - It writes nothing another thread could see: no static, no "log
//!   once" atomic, no heap; only its own stack, and the per-spawn state
//!   of the spawning thread, which the kernel suspends until the child
//!   execs or exits (CLONE_VFORK) — the other threads of the parent run
//!   on. The pre-exec step is an `Fn` (it cannot write what it captured).
//!   The sandbox's hook records a failed step in its `FailureSlot`, a
//!   page of the job's own prepared sandbox (MAP_SHARED, so that a
//!   forked child's record is seen too) read only by the job's spawn
//!   after it returns: per-spawn state, written with atomics, seen by the
//!   parent the same way on every path. The IPC link's child side only
//!   dup2s.
//! - errno: `libc::syscall` and the libc wrappers the child calls write
//!   errno in the TLS of the parent's spawning thread (the child runs
//!   with its TLS pointer). Acceptable only because that thread is
//!   suspended until the exec, and reads errno of its own calls only
//!   after.
//! - Signals: a handler of the parent (tokio's) would run in the child on
//!   the shared memory. So the spawning thread blocks every signal
//!   before the clone (raw `rt_sigprocmask`: glibc's two internal ones
//!   included) and restores its mask when the clone returns; the child,
//!   which inherits the full mask, first sets every signal that has a
//!   handler back to SIG_DFL (raw `rt_sigaction` on 1..=64 but SIGKILL
//!   and SIGSTOP; ignored ones stay ignored, but SIGPIPE, as before), and
//!   only then empties its mask (glibc's `__spawni_child` does the same).
//!   A signal it gets before its exec meets the default action.
//! - What the sandbox sets is per task, not per address space, and so
//!   holds for the exec'd job as after a fork: no_new_privs, seccomp
//!   (installed without TSYNC), Landlock's restrict_self, the raw
//!   `setres*id` and `capset`, rlimits, the parent-death signal, and
//!   `unshare(CLONE_NEWNET)` / `setns` (the network namespace is not
//!   tied to the mm; `unshare(CLONE_NEWUSER)` would be refused to a task
//!   sharing its memory, and nothing does it). rseq is not inherited by
//!   a CLONE_VM child, and without CLONE_SETTLS/CHILD_CLEARTID the kernel
//!   writes nothing of the parent's thread.
//! - CLONE_VFORK suspends the calling thread until the exec: spawns run
//!   on the engine's spawner thread (`spawner`), never a tokio worker.
//!
//! Other architectures keep the fork-like clone3 (chosen at compile
//! time). Any failure of the vfork-style clone3 but ENOSYS falls back to
//! it for that spawn (logged once per process).
//!
//! Fallbacks, each logged once per process: a kernel or seccomp filter
//! without `clone3` (ENOSYS) gets `fork(2)`; a kernel without
//! `CLONE_INTO_CGROUP` (E2BIG, EINVAL), or a directory that is not a v2
//! cgroup (EBADF, EOPNOTSUPP: e.g. the plain directories of a fake
//! cgroupfs), gets the same clone3 without it, and the child is told
//! ([`ChildCtx::in_cgroup`] false) to join on its own as before.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use crate::spec::OutputChannel;
use crate::sys::{self, Pid};

mod init;
#[cfg(target_arch = "x86_64")]
mod vfork;

pub(crate) use init::read_status as read_init_status;

/// glibc's default search path (`confstr(_CS_PATH)`), which `execvp` uses
/// when the environment has no `PATH`.
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// `CLONE_INTO_CGROUP` (Linux 5.7), as the u64 of `clone_args.flags`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `CLONE_PIDFD` (Linux 5.2; with clone3, 5.3), as the u64 of
/// `clone_args.flags`.
const CLONE_PIDFD: u64 = libc::CLONE_PIDFD as u64;

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, Linux 5.7).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The child's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdin {
    /// `/dev/null`, read-only.
    Null,
    /// A pipe whose write end the parent gets.
    Piped,
}

/// What the pre-exec step learns about the child it runs in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildCtx {
    /// The child was created in the cgroup given to [`Command::cgroup`]:
    /// it must not join it again.
    pub(crate) in_cgroup: bool,
    /// The child was forked by the init of a PID namespace of its own
    /// ([`Command::pid_namespace`]): its parent is that init, pid 1 as it
    /// sees it.
    pub(crate) under_init: bool,
}

/// The step run in the child after its stdio, cwd, process group and
/// signals are set, just before exec. It must be async-signal-safe, and
/// (`Fn`, not `FnMut`) it writes nothing it captured: on the vfork path
/// the child shares the parent's memory.
type PreExec = Box<dyn Fn(ChildCtx) -> io::Result<()> + Send>;

/// A program to start: everything the child needs, prepared in the parent.
pub(crate) struct Command {
    program: CString,
    argv: Vec<CString>,
    env: BTreeMap<OsString, OsString>,
    cwd: Option<CString>,
    stdin: Stdin,
    output: OutputChannel,
    cgroup: Option<Arc<OwnedFd>>,
    pre_exec: Option<PreExec>,
    /// Run under an init of its own in a new PID namespace.
    pid_namespace: bool,
    /// What that init does first (its own user namespace's maps where
    /// tsbridge has no privilege, the procfs mount).
    init_setup: tsbridge_sandbox::pidns::InitSetup,
    /// Never share the parent's memory until the exec (no vfork-style
    /// clone): the pre-exec step changes what belongs to the address
    /// space (its dumpable flag).
    own_memory: bool,
    /// The first argument or variable that could not be a C string.
    invalid: Option<&'static str>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("argv", &self.argv)
            .field("cwd", &self.cwd)
            .field("stdin", &self.stdin)
            .field("output", &self.output)
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

fn cstring(s: &OsStr) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

impl Command {
    /// `program` with `argv[0]` = `program`, an empty environment, the
    /// parent's cwd and stdin from `/dev/null`.
    pub(crate) fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let mut invalid = None;
        let c = cstring(program).unwrap_or_else(|| {
            invalid = Some("program");
            CString::default()
        });
        Self {
            argv: vec![c.clone()],
            program: c,
            env: BTreeMap::new(),
            cwd: None,
            stdin: Stdin::Null,
            output: OutputChannel::Pipe,
            cgroup: None,
            pre_exec: None,
            pid_namespace: false,
            init_setup: tsbridge_sandbox::pidns::InitSetup::default(),
            own_memory: false,
            invalid,
        }
    }

    pub(crate) fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            match cstring(a.as_ref()) {
                Some(c) => self.argv.push(c),
                None => self.invalid = self.invalid.or(Some("argument")),
            }
        }
        self
    }

    /// Sets `key` (the last value of a key wins, as with std).
    pub(crate) fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .insert(key.as_ref().to_owned(), value.as_ref().to_owned());
        self
    }

    pub(crate) fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    pub(crate) fn current_dir(&mut self, dir: &Path) -> &mut Self {
        match cstring(dir.as_os_str()) {
            Some(c) => self.cwd = Some(c),
            None => self.invalid = self.invalid.or(Some("cwd")),
        }
        self
    }

    pub(crate) fn stdin(&mut self, stdin: Stdin) -> &mut Self {
        self.stdin = stdin;
        self
    }

    /// Pipes (the default) or socketpairs for stdout and stderr.
    pub(crate) fn output(&mut self, output: OutputChannel) -> &mut Self {
        self.output = output;
        self
    }

    /// A cgroup v2 directory (an `O_DIRECTORY` or `O_PATH` fd) to create
    /// the child in.
    pub(crate) fn cgroup(&mut self, dir: Option<Arc<OwnedFd>>) -> &mut Self {
        self.cgroup = dir;
        self
    }

    /// The step the child runs last before exec.
    pub(crate) fn pre_exec(&mut self, f: PreExec) -> &mut Self {
        self.pre_exec = Some(f);
        self
    }

    /// Start the program in a PID namespace of its own, as the child of a
    /// tiny init (`clone/init.rs`, docs/design/pid-namespace.md): the
    /// [`Child`] is then the init, and its [`Child::init_status`] says how
    /// the program itself ended.
    pub(crate) fn pid_namespace(&mut self, on: bool) -> &mut Self {
        self.pid_namespace = on;
        self
    }

    /// What the init of [`Command::pid_namespace`] does first; with a user
    /// namespace, the init's clone makes one too (`CLONE_NEWUSER`).
    pub(crate) fn init_setup(&mut self, setup: tsbridge_sandbox::pidns::InitSetup) -> &mut Self {
        self.init_setup = setup;
        self
    }

    /// Clone the child with a copy of the memory (fork-like), never the
    /// vfork-style way: for a pre-exec step that changes what belongs to
    /// the address space, such as `PR_SET_DUMPABLE`, which would change
    /// tsbridge's own on a shared one.
    pub(crate) fn own_memory(&mut self, on: bool) -> &mut Self {
        self.own_memory = on;
        self
    }

    /// The paths to try with execve, in order: `program` itself if it names a path, else
    /// each `PATH` entry of the job's environment (glibc's default without
    /// one) joined with it; an empty entry is the child's cwd.
    fn resolve(&self) -> Vec<CString> {
        let prog = self.program.as_bytes();
        if prog.contains(&b'/') {
            return vec![self.program.clone()];
        }
        let path = self
            .env
            .get(OsStr::new("PATH"))
            .map(|p| p.as_bytes())
            .unwrap_or(DEFAULT_PATH);
        path.split(|b| *b == b':')
            .filter_map(|dir| {
                let mut full = Vec::with_capacity(dir.len() + 1 + prog.len());
                if !dir.is_empty() {
                    full.extend_from_slice(dir);
                    full.push(b'/');
                }
                full.extend_from_slice(prog);
                CString::new(full).ok()
            })
            .collect()
    }
}

/// A started child: its pid and the parent's ends of its pipes.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: Pid,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    /// Created in the [`Command::cgroup`] directory (`CLONE_INTO_CGROUP`).
    pub(crate) in_cgroup: bool,
    /// A pidfd of the child (clone3's `CLONE_PIDFD`; `pidfd_open` right
    /// after a fork, `None` if that failed): readable once it has exited.
    pub(crate) pidfd: Option<OwnedFd>,
    /// How it was made.
    pub(crate) via: Via,
    /// With [`Command::pid_namespace`]: the read end (non-blocking) of the
    /// pipe through which the init passes on the program's wait status
    /// ([`read_init_status`] once the init is reaped).
    pub(crate) init_status: Option<OwnedFd>,
}

/// How a child was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `clone3(CLONE_VM | CLONE_VFORK)` on a stack of its own (x86_64).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Vfork,
    /// `clone3` without `CLONE_VM`: a copy of the memory, like fork.
    Clone3,
    /// `fork(2)`.
    Fork,
}

/// An O_CLOEXEC pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the live 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// An O_CLOEXEC Unix stream socketpair for one output stream: (the
/// parent's end, the child's end). The parent's end is shut for writing,
/// so a child that reads its stdout or stderr gets end-of-file instead of
/// waiting forever.
fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into the live 2-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by socketpair and are owned by nobody else.
    let (parent, child) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: shutdown on a socket fd we own.
    if unsafe { libc::shutdown(parent.as_raw_fd(), libc::SHUT_WR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((parent, child))
}

/// One output stream's channel: (the parent's read end, the child's end).
fn output_channel(kind: OutputChannel) -> io::Result<(OwnedFd, OwnedFd)> {
    match kind {
        OutputChannel::Pipe => pipe(),
        OutputChannel::Socket => socketpair(),
    }
}

/// What this process learned about clone3 (each state only moves forward).
const CLONE3_FULL: u8 = 0;
const CLONE3_NO_INTO_CGROUP: u8 = 1;
const CLONE3_MISSING: u8 = 2;
static CLONE3: AtomicU8 = AtomicU8::new(CLONE3_FULL);

/// Logs `what` once per process (per flag).
fn log_once(flag: &AtomicBool, what: &str, e: &io::Error) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::info!(error = %e, "{what}");
    }
}

/// How the child was made.
enum Forked {
    /// In the parent: the child's pid, its pidfd (from clone3, or
    /// `pidfd_open` right after a fork; `None` if that failed), and how it
    /// was made.
    Parent(libc::pid_t, Option<OwnedFd>, Via),
    /// In the child.
    Child,
}

/// How to spawn: what this process learned about its kernel (tests choose
/// the fallbacks).
#[derive(Debug, Clone, Copy)]
struct Method {
    /// Try the vfork-style clone3 first (x86_64 only).
    vfork: bool,
    /// Try clone3 (else fork straight away).
    clone3: bool,
    seal: FdSeal,
}

impl Method {
    fn detect() -> Self {
        Self {
            vfork: cfg!(target_arch = "x86_64"),
            clone3: true,
            seal: FdSeal::detect(),
        }
    }
}

/// How the child keeps the fds it was not given from passing the exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdSeal {
    /// `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)`.
    CloseRange,
    /// `fcntl(F_SETFD, FD_CLOEXEC)` on every number from 3 to `last`.
    EachUpTo { last: RawFd },
}

impl FdSeal {
    /// close_range when this kernel (and seccomp filter) has it with
    /// `CLOSE_RANGE_CLOEXEC`, asked once per process; else the loop.
    fn detect() -> Self {
        static CLOSE_RANGE: OnceLock<bool> = OnceLock::new();
        if *CLOSE_RANGE.get_or_init(close_range_works) {
            Self::CloseRange
        } else {
            Self::each()
        }
    }

    /// The loop, up to the highest fd open now (see [`highest_open_fd`]). An fd another thread opens without
    /// O_CLOEXEC between this and the clone, above that number, is missed.
    fn each() -> Self {
        Self::EachUpTo {
            last: highest_open_fd(),
        }
    }
}

/// Whether `close_range(..., CLOSE_RANGE_CLOEXEC)` works here: asked of a
/// range above any fd, which changes nothing. Logged once when it does not.
fn close_range_works() -> bool {
    let last = libc::c_uint::MAX;
    // SAFETY: close_range with plain integers; the range holds no open fd.
    let r = unsafe { libc::syscall(libc::SYS_close_range, last, last, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return true;
    }
    let e = io::Error::last_os_error();
    tracing::info!(
        error = %e,
        "close_range(CLOSE_RANGE_CLOEXEC) unavailable: each job's child marks its fds close-on-exec one by one"
    );
    false
}

/// The highest fd the kernel allows by default (its `fs.nr_open` less one).
const MAX_FD_DEFAULT: RawFd = (1 << 20) - 1;

/// The highest fd in /proc/self/fd; without /proc, the soft limit of open
/// fds less one, at most [`MAX_FD_DEFAULT`].
fn highest_open_fd() -> RawFd {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        return dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
            .max()
            .unwrap_or(2);
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return MAX_FD_DEFAULT;
    }
    RawFd::try_from(lim.rlim_cur.saturating_sub(1))
        .unwrap_or(MAX_FD_DEFAULT)
        .min(MAX_FD_DEFAULT)
}

/// clone3 (or fork when the kernel has none, or `clone3` is false) into
/// `cgroup` if given, with a pidfd for the parent; on a refusal of the
/// cgroup, again without it. Returns whether the child is in the cgroup.
/// Like fork it returns twice: in the child, the caller may only run
/// async-signal-safe code until it execs or exits.
fn clone_child(cgroup: Option<RawFd>, clone3: bool, ns: u64) -> io::Result<(Forked, bool)> {
    let mut into = cgroup.filter(|_| into_cgroup_works());
    loop {
        if (!clone3 || CLONE3.load(Ordering::Relaxed) == CLONE3_MISSING) && ns != 0 {
            // The init of a PID namespace is made by clone3 only.
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        if !clone3 || CLONE3.load(Ordering::Relaxed) == CLONE3_MISSING {
            // SAFETY: fork is what std's spawn did; the child only runs
            // async-signal-safe code (see `exec_child`).
            let pid = unsafe { libc::fork() };
            return match pid {
                -1 => Err(io::Error::last_os_error()),
                0 => Ok((Forked::Child, false)),
                // Taken at once: the child cannot be reaped before.
                p => {
                    let pidfd = Pid::new(p).and_then(|pid| sys::pidfd_open(pid).ok());
                    Ok((Forked::Parent(p, pidfd, Via::Fork), false))
                }
            };
        }
        let mut pidfd: RawFd = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD | ns,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some(fd) = into {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
        }
        // SAFETY: clone3 without CLONE_VM and without a stack is fork: the
        // child gets a copy of this process's memory and returns here on
        // its copy of this thread's stack. `args` is a live, correctly sized
        // clone_args (the kernel reads `size_of` bytes); its `pidfd` points
        // to the live local `pidfd`, where the kernel writes the parent's
        // new fd (O_CLOEXEC).
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            0 => return Ok((Forked::Child, into.is_some())),
            p if p > 0 => {
                // SAFETY: with CLONE_PIDFD a successful clone3 wrote a new
                // fd of ours, owned by nobody else, into `pidfd`.
                let fd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
                return Ok((
                    Forked::Parent(p as libc::pid_t, fd, Via::Clone3),
                    into.is_some(),
                ));
            }
            _ => {}
        }
        let e = io::Error::last_os_error();
        if !learn_from(&e, &mut into) {
            return Err(e);
        }
    }
}

/// Whether clone3 may be asked for `CLONE_INTO_CGROUP` (not refused yet).
fn into_cgroup_works() -> bool {
    CLONE3.load(Ordering::Relaxed) == CLONE3_FULL
}

/// What a failed clone3 teaches (logged once each): ENOSYS, no clone3
/// (the caller then forks); a refusal of `into`, the cgroup (cleared, for
/// a try without it). Returns whether to try again.
fn learn_from(e: &io::Error, into: &mut Option<RawFd>) -> bool {
    static NO_CLONE3: AtomicBool = AtomicBool::new(false);
    static NO_INTO: AtomicBool = AtomicBool::new(false);
    static NOT_CGROUP: AtomicBool = AtomicBool::new(false);
    match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            log_once(
                &NO_CLONE3,
                "clone3 unavailable: jobs are forked, and a cgroup v2 job joins its cgroup from the child",
                e,
            );
            CLONE3.store(CLONE3_MISSING, Ordering::Relaxed);
            true
        }
        Some(libc::E2BIG | libc::EINVAL) if into.is_some() => {
            log_once(
                &NO_INTO,
                "clone3 cannot create a job in its cgroup (CLONE_INTO_CGROUP): a cgroup v2 job joins its cgroup from the child",
                e,
            );
            // Only raise the state: ENOSYS may have been learnt meanwhile.
            let _ = CLONE3.compare_exchange(
                CLONE3_FULL,
                CLONE3_NO_INTO_CGROUP,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            *into = None;
            true
        }
        Some(libc::EBADF | libc::EOPNOTSUPP) if into.is_some() => {
            log_once(
                &NOT_CGROUP,
                "the job cgroup is not a cgroup v2 directory for clone3: its jobs join it from the child",
                e,
            );
            *into = None;
            true
        }
        _ => false,
    }
}

/// Starts `cmd` (call it on the spawner thread: see `spawner`). Returns
/// once the child has exec'd, or with the errno of the step that failed
/// in it (the child is reaped then).
pub(crate) fn spawn(cmd: &mut Command) -> io::Result<Child> {
    spawn_with(cmd, Method::detect())
}

fn spawn_with(cmd: &mut Command, method: Method) -> io::Result<Child> {
    if let Some(what) = cmd.invalid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the {what} contains a NUL byte"),
        ));
    }
    let candidates = cmd.resolve();
    let envp_strings: Vec<CString> = cmd
        .env
        .iter()
        .filter_map(|(k, v)| {
            let mut kv = Vec::with_capacity(k.len() + 1 + v.len());
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    if envp_strings.len() != cmd.env.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an environment variable contains a NUL byte",
        ));
    }
    let argv = null_terminated(&cmd.argv);
    let envp = null_terminated(&envp_strings);

    let (stdin_child, stdin_parent) = match cmd.stdin {
        Stdin::Null => {
            let f = std::fs::File::open("/dev/null")?;
            (OwnedFd::from(f), None)
        }
        Stdin::Piped => {
            let (r, w) = pipe()?;
            (r, Some(w))
        }
    };
    let (stdout_parent, stdout_child) = output_channel(cmd.output)?;
    let (stderr_parent, stderr_child) = output_channel(cmd.output)?;
    let (report_read, report_write) = pipe()?;

    let plan = ExecPlan {
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        cwd: cmd.cwd.as_deref().map(|c| c.as_ptr()),
        candidates: &candidates,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        report: report_write.as_raw_fd(),
        seal: method.seal,
    };
    let cgroup = cmd.cgroup.as_ref().map(|fd| fd.as_raw_fd());
    let pre_exec = cmd.pre_exec.as_ref();
    let (pid, pidfd, in_cgroup, via, init_status) = if cmd.pid_namespace {
        let (status_read, status_write) = pipe()?;
        sys::set_nonblocking(status_read.as_raw_fd())?;
        // No handler of the server's may run in the init: it inherits this
        // mask and keeps every signal blocked (it takes them with
        // rt_sigtimedwait).
        let blocked = BlockAll::new()?;
        let mut flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
        if cmd.init_setup.user_namespace() {
            flags |= libc::CLONE_NEWUSER as u64;
        }
        let (forked, in_cgroup) = clone_child(cgroup, true, flags)?;
        match forked {
            Forked::Child => {
                // SAFETY: this is the freshly cloned init (a copy of this
                // process, every signal blocked); init_main never returns
                // and runs only async-signal-safe code.
                unsafe {
                    init::init_main(
                        &plan,
                        pre_exec,
                        &cmd.init_setup,
                        in_cgroup,
                        status_write.as_raw_fd(),
                    )
                }
            }
            Forked::Parent(pid, pidfd, via) => {
                drop(blocked);
                drop(status_write);
                (pid, pidfd, in_cgroup, via, Some(status_read))
            }
        }
    } else {
        let method = Method {
            vfork: method.vfork && !cmd.own_memory,
            ..method
        };
        let (pid, pidfd, in_cgroup, via) = match spawn_vfork(method, cgroup, &plan, pre_exec) {
            Some(v) => v,
            None => {
                let (forked, in_cgroup) = clone_child(cgroup, method.clone3, 0)?;
                match forked {
                    Forked::Child => {
                        let ctx = ChildCtx {
                            in_cgroup,
                            under_init: false,
                        };
                        // SAFETY: this is the freshly cloned child; exec_child never
                        // returns and runs only async-signal-safe code on memory the
                        // parent prepared.
                        unsafe { exec_child(&plan, pre_exec, ctx) }
                    }
                    Forked::Parent(pid, pidfd, via) => (pid, pidfd, in_cgroup, via),
                }
            }
        };
        (pid, pidfd, in_cgroup, via, None)
    };
    // The child's ends: closed here, so that the report pipe sees EOF at
    // the exec and the job's pipes at its exit.
    drop((stdin_child, stdout_child, stderr_child, report_write));
    let Some(pid) = Pid::new(pid) else {
        return Err(io::Error::other("clone returned an invalid pid"));
    };
    match read_report(&report_read) {
        Ok(None) => Ok(Child {
            pid,
            stdin: stdin_parent,
            stdout: stdout_parent,
            stderr: stderr_parent,
            in_cgroup,
            pidfd,
            via,
            init_status,
        }),
        Ok(Some(errno)) => {
            let _ = sys::reap_blocking(pid);
            Err(io::Error::from_raw_os_error(errno))
        }
        Err(e) => {
            let _ = sys::kill(pid);
            let _ = sys::reap_blocking(pid);
            Err(e)
        }
    }
}

/// The vfork-style spawn when `method` asks for it and this architecture
/// has it: (pid, pidfd, created in the cgroup, how). `None`: spawn the
/// fork-like way (no clone3 here, or this path failed: logged once).
#[cfg(target_arch = "x86_64")]
fn spawn_vfork(
    method: Method,
    cgroup: Option<RawFd>,
    plan: &ExecPlan<'_>,
    pre_exec: Option<&PreExec>,
) -> Option<(libc::pid_t, Option<OwnedFd>, bool, Via)> {
    static FAILED: AtomicBool = AtomicBool::new(false);
    if !method.vfork || !method.clone3 || CLONE3.load(Ordering::Relaxed) == CLONE3_MISSING {
        return None;
    }
    match vfork::with_stack(|stack| vfork::spawn(stack, cgroup, plan, pre_exec)).and_then(|r| r) {
        Ok(s) => Some((s.pid, s.pidfd, s.in_cgroup, Via::Vfork)),
        // Learnt and logged by `learn_from`: the fork-like path forks.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
        Err(e) => {
            log_once(
                &FAILED,
                "the vfork-style clone3 failed: this job (and any other it fails for) is cloned with a copy of the memory",
                &e,
            );
            None
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn spawn_vfork(
    _: Method,
    _: Option<RawFd>,
    _: &ExecPlan<'_>,
    _: Option<&PreExec>,
) -> Option<(libc::pid_t, Option<OwnedFd>, bool, Via)> {
    None
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// `rt_sigprocmask(how, set, old)` of the calling thread, raw: glibc's
/// wrapper would leave its own two signals (SIGCANCEL, SIGSETXID)
/// unblocked.
fn sigmask(how: libc::c_int, set: u64) -> io::Result<u64> {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask on two live u64 sigsets of the kernel's size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            &set as *const u64,
            &mut old as *mut u64,
            std::mem::size_of::<u64>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

/// Every signal blocked in the calling thread until drop, which restores
/// the mask it had.
pub(crate) struct BlockAll {
    old: u64,
}

impl BlockAll {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            old: sigmask(libc::SIG_SETMASK, !0)?,
        })
    }
}

impl Drop for BlockAll {
    fn drop(&mut self) {
        // Cannot fail: a valid `how` and live sets of the kernel's size.
        let _ = sigmask(libc::SIG_SETMASK, self.old);
    }
}

/// The report the child writes when a step fails: its errno, then a tag.
const REPORT_TAG: [u8; 4] = *b"NOEX";

/// Waits for the child's exec (EOF: `None`) or its failure report (the errno).
fn read_report(fd: &OwnedFd) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the live tail of `buf`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    match got {
        0 => Ok(None),
        8 if buf[4..] == REPORT_TAG => {
            let errno = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            Ok(Some(errno))
        }
        _ => Err(io::Error::other("malformed failure report from the child")),
    }
}

/// What the child uses: raw fds and pointers into memory the parent owns.
struct ExecPlan<'a> {
    /// The fds to become 0, 1 and 2.
    stdio: [RawFd; 3],
    cwd: Option<*const libc::c_char>,
    candidates: &'a [CString],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    report: RawFd,
    seal: FdSeal,
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child's side: stdio, cwd, process group, signals, the pre-exec
/// step, exec. Reports the errno of what failed and exits.
///
/// # Safety
/// Only in the freshly cloned child. Everything here is async-signal-safe:
/// raw syscalls on memory the parent prepared before the clone, writes
/// only to the child's stack (and errno, in the TLS of the parent's
/// thread: see the module's doc).
unsafe fn exec_child(plan: &ExecPlan<'_>, pre_exec: Option<&PreExec>, ctx: ChildCtx) -> ! {
    // SAFETY: forwarded contract.
    let errno = match unsafe { prepare_child(plan, pre_exec, ctx) } {
        Err(e) => e,
        // SAFETY: forwarded contract.
        Ok(()) => unsafe { exec(plan) },
    };
    // SAFETY: forwarded contract.
    unsafe { report_and_exit(plan.report, errno) }
}

/// Writes `errno` to the report pipe and exits.
///
/// # Safety
/// Only in the child (see [`exec_child`]).
unsafe fn report_and_exit(fd: RawFd, errno: i32) -> ! {
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&errno.to_be_bytes());
    report[4..].copy_from_slice(&REPORT_TAG);
    // SAFETY: write of a live stack buffer to the report pipe, then _exit
    // (no atexit handlers, no unwinding): both async-signal-safe.
    unsafe {
        libc::write(fd, report.as_ptr().cast(), report.len());
        libc::_exit(1)
    }
}

/// # Safety
/// See [`exec_child`].
unsafe fn prepare_child(
    plan: &ExecPlan<'_>,
    pre_exec: Option<&PreExec>,
    ctx: ChildCtx,
) -> Result<(), i32> {
    for (target, &fd) in plan.stdio.iter().enumerate() {
        let target = target as RawFd;
        let r = if fd == target {
            // Already in place (a parent started with 0-2 closed): only
            // let it survive the exec.
            // SAFETY: fcntl on a plain fd number.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
        } else {
            // SAFETY: dup2 on fd numbers; the new fd has no CLOEXEC.
            unsafe { libc::dup2(fd, target) }
        };
        if r < 0 {
            return Err(errno());
        }
    }
    // SAFETY: forwarded contract.
    unsafe { seal_fds(plan.seal) }?;
    if let Some(cwd) = plan.cwd {
        // SAFETY: cwd points into a CString the parent keeps alive.
        if unsafe { libc::chdir(cwd) } != 0 {
            return Err(errno());
        }
    }
    // SAFETY: setpgid on ourselves with constant arguments.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(errno());
    }
    // As std: an empty signal mask, and SIGPIPE (which the Rust runtime
    // ignores) back to its default; handlers are reset by the exec itself.
    // SAFETY: sigset_t is plain data; sigemptyset/sigprocmask write only
    // to the live local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(errno());
        }
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(errno());
        }
    }
    if let Some(f) = pre_exec {
        f(ctx).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
    }
    Ok(())
}

/// Marks every fd from 3 up close-on-exec (see the module's doc): what
/// the pre-exec step installs after this is all the child keeps beyond
/// 0-2.
///
/// # Safety
/// See [`exec_child`].
unsafe fn seal_fds(seal: FdSeal) -> Result<(), i32> {
    match seal {
        FdSeal::CloseRange => {
            // SAFETY: close_range with plain integers.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                )
            };
            if r != 0 {
                return Err(errno());
            }
        }
        FdSeal::EachUpTo { last } => {
            for fd in 3..=last {
                // EBADF for a number that is not open: nothing to mark.
                // SAFETY: fcntl on a plain fd number.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
    Ok(())
}

/// execve of each candidate, with glibc's `execvp` rules: go on after
/// ENOENT, ENOTDIR, ESTALE, ENODEV, ETIMEDOUT and EACCES (which is then
/// the result if nothing else ran); stop at any other error. Returns the
/// errno to report.
///
/// # Safety
/// See [`exec_child`].
unsafe fn exec(plan: &ExecPlan<'_>) -> i32 {
    let mut eacces = false;
    let mut last = libc::ENOENT;
    for c in plan.candidates {
        // SAFETY: c, argv and envp point to NUL-terminated strings and
        // null-terminated arrays the parent keeps alive.
        unsafe { libc::execve(c.as_ptr(), plan.argv, plan.envp) };
        last = errno();
        match last {
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return last,
        }
    }
    if eacces { libc::EACCES } else { last }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(30);

    fn sleeper(args: &[&str]) -> Command {
        let mut c = Command::new("/bin/sleep");
        c.args(args).env("PATH", "/usr/bin:/bin");
        c
    }

    /// Kills and reaps a child the test started (its whole group).
    struct Reap(Pid);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.signal_group(rustix::process::Signal::KILL);
            let _ = sys::reap_blocking(self.0);
        }
    }

    fn await_cond<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Awaits the exec of `pid` into `comm` (/proc/<pid>/comm).
    fn await_exec(pid: Pid, comm: &str) {
        await_cond("the exec", || {
            let c = std::fs::read_to_string(format!("/proc/{}/comm", pid.raw())).ok()?;
            (c.trim() == comm).then_some(())
        });
    }

    /// Awaits `pid` asleep in `sleep`'s nanosleep: past its exec AND its
    /// dynamic loader, which opens the libraries at the lowest free fds (a
    /// listing taken just after the exec can see one of them).
    fn await_sleeping(pid: Pid) {
        await_exec(pid, "sleep");
        await_cond("the nanosleep", || {
            let s = std::fs::read_to_string(format!("/proc/{}/syscall", pid.raw())).ok()?;
            let nr: libc::c_long = s.split_whitespace().next()?.parse().ok()?;
            [libc::SYS_clock_nanosleep, libc::SYS_nanosleep]
                .contains(&nr)
                .then_some(())
        });
    }

    fn status_field(pid: Pid, name: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", pid.raw())).unwrap();
        let v = s
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(":"))
            .unwrap();
        u64::from_str_radix(v.trim(), 16).unwrap()
    }

    fn dir_fd(dir: &Path) -> Arc<OwnedFd> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .unwrap();
        Arc::new(OwnedFd::from(f))
    }

    fn v2_line(pid: Pid) -> Option<String> {
        let s = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.raw())).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
    }

    /// The host's cgroup2 mount: (mount point, root of the hierarchy there).
    fn cgroup2_mount() -> Option<(PathBuf, PathBuf)> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        text.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            let f: Vec<&str> = left.split(' ').collect();
            Some((PathBuf::from(f.get(4)?), PathBuf::from(f.get(3)?)))
        })
    }

    /// A directory made for the test under the real cgroup2 mount, removed
    /// (once empty) on drop.
    struct TestCgroup(PathBuf);

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let procs = self.0.join("cgroup.procs");
            let start = Instant::now();
            while std::fs::read_to_string(&procs).is_ok_and(|s| !s.trim().is_empty())
                && start.elapsed() < DEADLINE
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// On a real cgroup2 mount, clone3 creates the child in the job's
    /// directory (the pre-exec step joins nothing), and what it forks is
    /// there too.
    #[test]
    fn a_child_is_created_in_its_v2_cgroup_and_so_are_its_children() {
        let Some((mount, root)) = cgroup2_mount() else {
            eprintln!("SKIP: no cgroup2 mount");
            return;
        };
        let dir = mount.join(format!("tsb-clone3-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("SKIP: cannot create {}: {e}", dir.display());
            return;
        }
        let cg = TestCgroup(dir);
        // timeout(1) forks, and its child execs sleep.
        let mut cmd = Command::new("/usr/bin/timeout");
        cmd.args(["60", "/bin/sleep", "60"])
            .cgroup(Some(dir_fd(&cg.0)))
            .pre_exec(Box::new(|_| Ok(())));
        let child = spawn(&mut cmd).unwrap();
        let _reap = Reap(child.pid);
        assert!(child.in_cgroup, "clone3 fell back");
        let expected = root.join(cg.0.strip_prefix(&mount).unwrap());
        let expected = expected.to_str().unwrap();
        assert_eq!(v2_line(child.pid).as_deref(), Some(expected));
        let grandchild = await_cond("timeout's child", || {
            let pid = child.pid.raw();
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            Pid::new(s.split_whitespace().next()?.parse().ok()?)
        });
        await_exec(grandchild, "sleep");
        assert_eq!(v2_line(grandchild).as_deref(), Some(expected));
    }

    /// A directory that is not a cgroup: clone3 refuses it (EBADF), the
    /// spawn goes on without it, and the child is told to join by itself,
    /// which it does (here: writes its pid to a fake `cgroup.procs`).
    #[test]
    fn a_directory_that_is_not_a_cgroup_falls_back_to_the_child_joining() {
        let dir = tempfile::tempdir().unwrap();
        let procs = std::fs::File::create(dir.path().join("cgroup.procs")).unwrap();
        let procs = OwnedFd::from(procs);
        let mut cmd = Command::new("/bin/true");
        cmd.cgroup(Some(dir_fd(dir.path())))
            .pre_exec(Box::new(move |ctx| {
                if !ctx.in_cgroup {
                    let mut buf = [0u8; 12];
                    // SAFETY: getpid and write on a live stack buffer.
                    let pid = unsafe { libc::getpid() };
                    let digits = fmt_decimal(pid.unsigned_abs(), &mut buf);
                    // SAFETY: as above.
                    unsafe { libc::write(procs.as_raw_fd(), digits.as_ptr().cast(), digits.len()) };
                }
                Ok(())
            }));
        let child = spawn(&mut cmd).unwrap();
        assert!(!child.in_cgroup);
        let status = sys::reap_blocking(child.pid).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let written = std::fs::read_to_string(dir.path().join("cgroup.procs")).unwrap();
        assert_eq!(written, child.pid.raw().to_string());
    }

    fn fmt_decimal(mut v: u32, buf: &mut [u8; 12]) -> &[u8] {
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        &buf[i..]
    }

    /// As std: a missing program is ENOENT, from the child's exec.
    #[test]
    fn a_missing_program_is_enoent() {
        let e = spawn(&mut Command::new("/no/such/program")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let mut c = Command::new("no-such-program-anywhere");
        c.env("PATH", "/usr/bin:/bin");
        let e = spawn(&mut c).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    /// A bare name is searched in the job's PATH (glibc's default without
    /// one), an unexecutable match is EACCES when nothing else runs, and a
    /// file that is not an executable is ENOEXEC: never run by /bin/sh.
    #[test]
    fn path_search_follows_execvp_without_a_shell() {
        let mut c = Command::new("true");
        c.env("PATH", "/nonexistent::/usr/bin:/bin");
        let child = spawn(&mut c).unwrap();
        assert_eq!(sys::reap_blocking(child.pid).unwrap(), 0);
        // No PATH at all: /bin:/usr/bin.
        let child = spawn(&mut Command::new("true")).unwrap();
        assert_eq!(sys::reap_blocking(child.pid).unwrap(), 0);

        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job");
        std::fs::write(&script, "exit 0\n").unwrap();
        let mut c = Command::new("job");
        c.env("PATH", dir.path());
        let e = spawn(&mut c).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "not executable");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let e = spawn(&mut c).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOEXEC),
            "no shebang, no shell"
        );
    }

    /// A failing pre-exec step: its errno comes back, and the child is
    /// already reaped.
    #[test]
    fn a_failing_pre_exec_step_reports_its_errno_and_is_reaped() {
        let (r, w) = pipe().unwrap();
        let mut c = Command::new("/bin/true");
        c.pre_exec(Box::new(move |_| {
            // SAFETY: getpid and write of a live stack buffer.
            let pid = unsafe { libc::getpid() }.to_ne_bytes();
            // SAFETY: as above.
            unsafe { libc::write(w.as_raw_fd(), pid.as_ptr().cast(), pid.len()) };
            Err(io::Error::from_raw_os_error(libc::EXDEV))
        }));
        let e = spawn(&mut c).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        drop(c);
        let mut buf = [0u8; 4];
        std::fs::File::from(r).read_exact(&mut buf).unwrap();
        let pid = i32::from_ne_bytes(buf);
        // SAFETY: waitpid of a specific pid, WNOHANG, status into a local.
        let r = unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) };
        assert_eq!(r, -1);
        assert_eq!(errno(), libc::ECHILD, "the failed child was reaped");
    }

    /// The child starts like std's: empty signal mask and SIGPIPE at its
    /// default even though this thread blocks signals and the Rust runtime
    /// ignores SIGPIPE; its own process group; exact cwd, argv and
    /// environment; stdin /dev/null, stdout and stderr pipes; no other fd.
    #[test]
    fn the_child_starts_as_std_started_it() {
        let me = sys::self_pid();
        let pipe_bit = 1u64 << (libc::SIGPIPE - 1);
        assert_ne!(
            status_field(me, "SigIgn") & pipe_bit,
            0,
            "runtime ignores SIGPIPE"
        );
        let dir = tempfile::tempdir().unwrap();
        let cwd = std::fs::canonicalize(dir.path()).unwrap();
        let child = std::thread::spawn(move || {
            // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset;
            // pthread_sigmask changes only this (test) thread's mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            let mut c = sleeper(&["60"]);
            c.env("B", "2")
                .env("A", "1")
                .env("A", "x y")
                .current_dir(&cwd);
            spawn(&mut c).unwrap()
        })
        .join()
        .unwrap();
        let pid = child.pid;
        let _reap = Reap(pid);
        await_sleeping(pid);
        assert_eq!(status_field(pid, "SigBlk"), 0);
        assert_eq!(status_field(pid, "SigIgn") & pipe_bit, 0);
        assert_eq!(sys::read_stat(pid).unwrap().pgrp, pid.raw());
        let p = format!("/proc/{}", pid.raw());
        assert_eq!(
            std::fs::read_link(format!("{p}/cwd")).unwrap(),
            std::fs::canonicalize(dir.path()).unwrap()
        );
        assert_eq!(
            std::fs::read(format!("{p}/environ")).unwrap(),
            b"A=x y\0B=2\0PATH=/usr/bin:/bin\0"
        );
        assert_eq!(
            std::fs::read(format!("{p}/cmdline")).unwrap(),
            b"/bin/sleep\x0060\0"
        );
        assert_eq!(open_fds(pid), vec![0, 1, 2]);
        assert_eq!(
            std::fs::read_link(format!("{p}/fd/0")).unwrap(),
            Path::new("/dev/null")
        );
        for fd in [1, 2] {
            let l = std::fs::read_link(format!("{p}/fd/{fd}")).unwrap();
            assert!(l.to_string_lossy().starts_with("pipe:"), "{fd}: {l:?}");
        }
        assert!(child.stdin.is_none());
    }

    /// The fds this process holds without FD_CLOEXEC beyond 0-2: inherited
    /// from whoever started the test, or opened by [`leaky_fd`].
    fn inherited_fds() -> Vec<i32> {
        open_fds(sys::self_pid())
            .into_iter()
            // SAFETY: F_GETFD on an fd number; -1 for one closed meanwhile
            // (the read_dir's own fd).
            .filter(|&fd| fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0)
            .collect()
    }

    /// An fd WITHOUT FD_CLOEXEC, as one inherited from tsbridge's own
    /// parent or opened by a library without O_CLOEXEC, at `min` or above
    /// (above the IPC channel's fd 3, so that installing that cannot hide
    /// it). Closed on drop.
    fn leaky_fd(min: RawFd) -> OwnedFd {
        let f = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: F_DUPFD (a copy without close-on-exec) of an open fd.
        let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, min) };
        assert!(fd >= min, "{}", io::Error::last_os_error());
        // SAFETY: fd was just made by F_DUPFD and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        assert!(inherited_fds().contains(&fd.as_raw_fd()));
        fd
    }

    /// What asking for the vfork-style clone gives on this architecture.
    const VFORK: Via = if cfg!(target_arch = "x86_64") {
        Via::Vfork
    } else {
        Via::Clone3
    };

    /// The three paths, as (vfork, clone3) and the one each takes here.
    const PATHS: [(bool, bool, Via); 3] = [
        (true, true, VFORK),
        (false, true, Via::Clone3),
        (false, false, Via::Fork),
    ];

    /// Each way of spawning: vfork-style clone3, clone3 or fork, the child
    /// sealing its fds with close_range (where this kernel has it) or one
    /// by one. Each is made when called, as `spawn` makes its own: the
    /// loop's limit is the highest fd open then.
    fn methods() -> Vec<Box<dyn Fn() -> Method>> {
        let mut seals: Vec<fn() -> FdSeal> = vec![FdSeal::each];
        if close_range_works() {
            seals.push(|| FdSeal::CloseRange);
        } else {
            eprintln!("SKIP (close_range): no close_range(CLOSE_RANGE_CLOEXEC) here");
        }
        seals
            .into_iter()
            .flat_map(|seal| {
                PATHS.map(|(vfork, clone3, _)| -> Box<dyn Fn() -> Method> {
                    Box::new(move || Method {
                        vfork,
                        clone3,
                        seal: seal(),
                    })
                })
            })
            .collect()
    }

    /// A job child gets no fd it was not given: an fd this process holds
    /// without FD_CLOEXEC does not reach it, whichever way it is spawned;
    /// 0-2 and the fd the pre-exec step installs do, and the fds the step
    /// uses (here a pipe it writes to) still work in it.
    #[test]
    fn an_fd_held_without_cloexec_does_not_reach_the_child() {
        for method in methods() {
            let leaky = leaky_fd(40);
            let method = method();
            let (_keep, ipc_child) = pipe().unwrap();
            let ipc_raw = ipc_child.as_raw_fd();
            let (said_r, said_w) = pipe().unwrap();
            let mut c = sleeper(&["60"]);
            c.pre_exec(Box::new(move |_| {
                // SAFETY: write of a static buffer to an open pipe.
                unsafe { libc::write(said_w.as_raw_fd(), b"ok".as_ptr().cast(), 2) };
                crate::ipclink::install_in_child(ipc_raw, crate::ipc::CHILD_FD)
            }));
            let child = spawn_with(&mut c, method).unwrap();
            let _reap = Reap(child.pid);
            drop(c);
            drop(ipc_child);
            await_sleeping(child.pid);
            assert_eq!(
                open_fds(child.pid),
                vec![0, 1, 2, crate::ipc::CHILD_FD],
                "{method:?}: the child has only stdio and the IPC fd (not {})",
                leaky.as_raw_fd()
            );
            let mut said = String::new();
            std::fs::File::from(said_r)
                .read_to_string(&mut said)
                .unwrap();
            assert_eq!(said, "ok", "{method:?}");
            // SAFETY: F_GETFD on an open fd.
            let flags = unsafe { libc::fcntl(leaky.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags, 0, "the parent's fd is left as it was");
        }
    }

    /// The child's pidfd (clone3's CLONE_PIDFD, or pidfd_open after a
    /// fork) names the child: not readable while it runs, readable once it
    /// is killed, and waitid(P_PIDFD) reaps it with its pid and signal.
    #[test]
    fn the_childs_pidfd_names_it_on_every_path() {
        for (vfork, clone3, via) in PATHS {
            let method = Method {
                vfork,
                clone3,
                seal: FdSeal::each(),
            };
            let child = spawn_with(&mut sleeper(&["60"]), method).unwrap();
            assert_eq!(child.via, via);
            let pid = child.pid;
            let _reap = Reap(pid);
            let pidfd = child.pidfd.unwrap();
            await_exec(pid, "sleep");
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll of one live pollfd, no wait.
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0, "{via:?}");
            sys::kill(pid).unwrap();
            // SAFETY: as above, waiting up to the deadline.
            let n = unsafe { libc::poll(&mut pfd, 1, DEADLINE.as_millis() as i32) };
            assert_eq!(n, 1, "{via:?}: readable at the exit");
            // SAFETY: siginfo_t is plain data, written by waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on a live pidfd into the live local.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            // SAFETY: waitid filled a CLD_* siginfo.
            let (got, sig) = unsafe { (info.si_pid(), info.si_status()) };
            assert_eq!((got, sig), (pid.raw(), libc::SIGKILL), "{via:?}");
        }
    }

    fn open_fds(pid: Pid) -> Vec<i32> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{}/fd", pid.raw()))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        fds
    }

    /// Piped stdin reaches the child; an fd the pre-exec step installs
    /// (the IPC channel's way) is the only one beside 0-2.
    #[test]
    fn piped_stdin_and_an_installed_fd_are_all_the_child_gets() {
        let (_keep, ipc_child) = pipe().unwrap();
        let ipc_raw = ipc_child.as_raw_fd();
        let mut c = sleeper(&["60"]);
        c.stdin(Stdin::Piped).pre_exec(Box::new(move |_| {
            crate::ipclink::install_in_child(ipc_raw, crate::ipc::CHILD_FD)
        }));
        let child = spawn(&mut c).unwrap();
        let _reap = Reap(child.pid);
        drop(c);
        drop(ipc_child);
        await_sleeping(child.pid);
        assert_eq!(open_fds(child.pid), vec![0, 1, 2, crate::ipc::CHILD_FD]);
        let l = std::fs::read_link(format!("/proc/{}/fd/0", child.pid.raw())).unwrap();
        assert!(l.to_string_lossy().starts_with("pipe:"), "{l:?}");
        assert!(child.stdin.is_some());
    }

    /// How a thread's spawns go (the engine's spawner path).
    #[cfg(target_arch = "x86_64")]
    fn vfork_method() -> Method {
        Method {
            vfork: true,
            clone3: true,
            seal: FdSeal::detect(),
        }
    }

    /// Reads `fd` to its end.
    fn read_all(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    /// `own_memory` keeps a spawn off the vfork-style path even where the
    /// method would take it: its pre-exec step gets an address space of its
    /// own (a user namespace's maps turn its dumpable flag on for a moment,
    /// which on a shared one would be the server's). The child's dumpable
    /// flag changes, the parent's stays.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn own_memory_spawns_with_a_copy_of_the_memory() {
        // SAFETY: prctl with integer arguments.
        let dumpable = || unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        let before = dumpable();
        let flip = if before == 1 { 0 } else { 1 };
        for own in [false, true] {
            let mut c = Command::new("/bin/true");
            c.own_memory(own);
            let child = spawn_with(&mut c, vfork_method()).unwrap();
            assert_eq!(sys::reap_blocking(child.pid).unwrap(), 0);
            assert_eq!(child.via == Via::Vfork, !own, "own_memory {own}");
        }
        let mut c = Command::new("/bin/true");
        c.own_memory(true).pre_exec(Box::new(move |_| {
            // SAFETY: prctl with integer arguments, in the child.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, flip, 0, 0, 0) };
            Ok(())
        }));
        let child = spawn_with(&mut c, vfork_method()).unwrap();
        assert_eq!(sys::reap_blocking(child.pid).unwrap(), 0);
        assert_eq!(dumpable(), before, "the child changed the parent's flag");
    }

    /// A spawn storm from several threads while others allocate, free and
    /// write memory (the heap the vfork child shares until exec): every
    /// child execs its own argv and environment, prints them, exits 0, and
    /// each took the vfork path.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_spawn_storm_while_other_threads_allocate_gives_every_child_its_own_argv() {
        use std::sync::atomic::AtomicUsize;
        let stop = Arc::new(AtomicBool::new(false));
        let churned = Arc::new(AtomicUsize::new(0));
        let churners: Vec<_> = (0..2)
            .map(|t| {
                let stop = Arc::clone(&stop);
                let churned = Arc::clone(&churned);
                std::thread::spawn(move || {
                    let mut keep: Vec<Vec<u8>> = Vec::new();
                    let mut n: u64 = t;
                    while !stop.load(Ordering::Relaxed) {
                        n = n
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let len = 1 + (n >> 40) as usize % (256 << 10);
                        keep.push(vec![n as u8; len]);
                        if keep.len() > 32 {
                            keep.swap_remove((n >> 20) as usize % keep.len());
                        }
                        churned.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        await_cond("the churners", || {
            (churned.load(Ordering::Relaxed) > 100).then_some(())
        });
        let spawners: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let word = format!("t{t}-{i}");
                        let mut c = Command::new("/bin/sh");
                        c.args(["-c", "printf '%s %s' \"$1\" \"$W\"", "sh", &word])
                            .env("W", format!("{word}-env"));
                        let (_keep, ipc_child) = pipe().unwrap();
                        let ipc_raw = ipc_child.as_raw_fd();
                        c.pre_exec(Box::new(move |_| {
                            crate::ipclink::install_in_child(ipc_raw, crate::ipc::CHILD_FD)
                        }));
                        let child = spawn_with(&mut c, vfork_method()).unwrap();
                        assert_eq!(child.via, Via::Vfork);
                        let out = read_all(child.stdout);
                        assert_eq!(sys::reap_blocking(child.pid).unwrap(), 0, "{word}");
                        assert_eq!(out, format!("{word} {word}-env"));
                    }
                })
            })
            .collect();
        for s in spawners {
            s.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for c in churners {
            c.join().unwrap();
        }
    }

    static TEST_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    static HANDLED_HERE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HANDLED_ELSEWHERE: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    /// Counts where it runs: in this test process, or in another process
    /// sharing its memory (a vfork child).
    extern "C" fn count_handler(_: libc::c_int) {
        // SAFETY: getpid is async-signal-safe.
        if unsafe { libc::getpid() } == TEST_PID.load(Ordering::SeqCst) {
            HANDLED_HERE.fetch_add(1, Ordering::SeqCst);
        } else {
            HANDLED_ELSEWHERE.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn handler() -> libc::sighandler_t {
        count_handler as extern "C" fn(libc::c_int) as libc::sighandler_t
    }

    fn install(sig: libc::c_int, handler: libc::sighandler_t) {
        // SAFETY: sigaction is plain data; installs a handler that only
        // makes async-signal-safe calls and atomic writes.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        }
    }

    /// A signal raised in the vfork child (its mask is emptied before the
    /// pre-exec step) meets the default action, never this process's
    /// handler, which would run on the memory the child shares: SIGCHLD is
    /// ignored (the job runs), SIGUSR1 kills it. Meanwhile another thread
    /// signals this process: its handler runs here, and the spawning
    /// thread's mask is what it was.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_signal_in_the_vfork_child_never_runs_a_handler_of_the_parent() {
        TEST_PID.store(std::process::id() as i32, Ordering::SeqCst);
        install(libc::SIGUSR1, handler());
        install(libc::SIGCHLD, handler());
        let stop = Arc::new(AtomicBool::new(false));
        let pinger = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: kill of this process with a handled signal.
                    unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
                    std::thread::yield_now();
                }
            })
        };
        let me = sys::self_pid();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mask_field = || {
            let s =
                std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", me.raw())).unwrap();
            s.lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .unwrap()
                .trim()
                .to_owned()
        };
        let mask_before = mask_field();
        for i in 0..20 {
            for (sig, killed) in [(libc::SIGCHLD, false), (libc::SIGUSR1, true)] {
                let mut c = Command::new("/bin/true");
                c.pre_exec(Box::new(move |_| {
                    // SAFETY: getpid and kill are async-signal-safe.
                    unsafe { libc::kill(libc::getpid(), sig) };
                    Ok(())
                }));
                let child = spawn_with(&mut c, vfork_method()).unwrap();
                assert_eq!(child.via, Via::Vfork);
                let status = sys::reap_blocking(child.pid).unwrap();
                if killed {
                    assert!(
                        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == sig,
                        "{i}: {status:#x}"
                    );
                } else {
                    assert_eq!(status, 0, "{i}");
                }
                assert_eq!(
                    HANDLED_ELSEWHERE.load(Ordering::SeqCst),
                    0,
                    "{i}: sig {sig}"
                );
            }
        }
        assert_eq!(mask_field(), mask_before);
        await_cond("a handler run here", || {
            (HANDLED_HERE.load(Ordering::SeqCst) > 0).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        pinger.join().unwrap();
    }

    /// The exec'd program starts with an empty mask, no handler, and the
    /// ignored signals of this process still ignored but SIGPIPE, on every
    /// path, though the spawning thread blocks everything and this process
    /// has handlers.
    #[test]
    fn the_exec_d_program_has_an_empty_mask_and_default_dispositions() {
        TEST_PID.store(std::process::id() as i32, Ordering::SeqCst);
        install(libc::SIGUSR2, handler());
        install(libc::SIGWINCH, handler());
        install(libc::SIGHUP, libc::SIG_IGN);
        let me = sys::self_pid();
        let bit = |sig: libc::c_int| 1u64 << (sig - 1);
        let ignored = status_field(me, "SigIgn");
        assert_ne!(ignored & bit(libc::SIGHUP), 0);
        assert_ne!(ignored & bit(libc::SIGPIPE), 0, "runtime ignores SIGPIPE");
        assert_ne!(status_field(me, "SigCgt") & bit(libc::SIGUSR2), 0);
        for (vfork, clone3, via) in PATHS {
            let child = std::thread::spawn(move || {
                // SAFETY: sigset_t is plain data; this (test) thread only.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigfillset(&mut set);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                let method = Method {
                    vfork,
                    clone3,
                    seal: FdSeal::detect(),
                };
                spawn_with(&mut sleeper(&["60"]), method).unwrap()
            })
            .join()
            .unwrap();
            let _reap = Reap(child.pid);
            assert_eq!(child.via, via);
            await_sleeping(child.pid);
            assert_eq!(status_field(child.pid, "SigBlk"), 0, "{via:?}");
            assert_eq!(status_field(child.pid, "SigCgt"), 0, "{via:?}");
            assert_eq!(
                status_field(child.pid, "SigIgn"),
                ignored & !bit(libc::SIGPIPE),
                "{via:?}"
            );
        }
        install(libc::SIGHUP, libc::SIG_DFL);
    }

    /// This thread's minor page faults so far.
    #[cfg(target_arch = "x86_64")]
    fn thread_minor_faults() -> i64 {
        // SAFETY: rusage is plain data, written by getrusage.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage into the live local.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
        ru.ru_minflt
    }

    /// The vfork path copies no page table: after each spawn, writing
    /// every page of a 64 MiB buffer costs this thread (almost) no page
    /// fault, where after a fork-like clone each page is copy-on-write
    /// once more (at least one fault per page).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vfork_path_leaves_the_parents_pages_alone() {
        const LEN: usize = 64 << 20;
        const PAGES: i64 = (LEN / 4096) as i64;
        let mut buf = vec![1u8; LEN];
        // SAFETY: madvise on the live buffer: 4 KiB pages, one fault each.
        unsafe {
            let start = buf.as_mut_ptr() as usize & !4095;
            libc::madvise(
                start as *mut libc::c_void,
                LEN - 4096,
                libc::MADV_NOHUGEPAGE,
            );
        }
        let mut touch = |round: u8| {
            for p in buf.iter_mut().step_by(4096) {
                *p = round;
            }
        };
        touch(2);
        for (vfork, clone3, via) in &PATHS[..2] {
            let method = Method {
                vfork: *vfork,
                clone3: *clone3,
                seal: FdSeal::detect(),
            };
            let mut faults = 0;
            for round in 0..4u8 {
                let child = spawn_with(&mut Command::new("/bin/true"), method).unwrap();
                assert_eq!(child.via, *via);
                assert_eq!(sys::reap_blocking(child.pid).unwrap(), 0);
                let before = thread_minor_faults();
                touch(round);
                faults += thread_minor_faults() - before;
            }
            eprintln!("{via:?}: {faults} faults writing {PAGES} pages 4 times");
            match via {
                Via::Vfork => assert!(faults < PAGES / 8, "{faults}"),
                _ => assert!(faults >= 4 * PAGES / 2, "{faults}"),
            }
        }
    }

    /// A sandbox for the tests below (skipped without one).
    fn sandbox() -> Option<tsbridge_sandbox::Sandbox> {
        let cfg = tsbridge_sandbox::SandboxConfig {
            cgroup_parent_name: format!("tsb-clone-test-{}", std::process::id()),
            ..tsbridge_sandbox::SandboxConfig::default()
        };
        match tsbridge_sandbox::Sandbox::new(cfg) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("SKIP: sandbox unavailable: {e}");
                None
            }
        }
    }

    /// The engine's pre-exec step (see `engine.rs`) with a sandbox hook.
    fn sandboxed(c: &mut Command, hook: tsbridge_sandbox::ChildHook) {
        let parent = sys::self_pid().raw();
        c.pre_exec(Box::new(move |ctx| {
            // SAFETY: async-signal-safe prctl and getppid.
            unsafe {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
            // SAFETY: in the child before exec, the hook's contract.
            unsafe {
                if ctx.in_cgroup {
                    hook.apply_in_cgroup()
                } else {
                    hook.apply()
                }
            }
        }));
    }

    /// A sandbox step failing in the child comes back on every path: the
    /// spawn's errno, and the step in the sandbox's failure slot (a page
    /// the child writes, shared with the parent on each path).
    #[test]
    fn a_sandbox_step_failure_comes_back_with_its_errno_and_step_on_every_path() {
        let Some(sb) = sandbox() else { return };
        for (vfork, clone3, via) in PATHS {
            let prepared = sb
                .prepare(
                    &format!("gone-{via:?}"),
                    &tsbridge_sandbox::SandboxPolicy::default(),
                )
                .unwrap();
            let Some(cg) = prepared.cgroup() else {
                eprintln!("SKIP: no job cgroup");
                return;
            };
            for d in cg.dirs() {
                std::fs::remove_dir(d).unwrap();
            }
            let mut c = Command::new("/bin/true");
            sandboxed(&mut c, prepared.child_hook());
            let method = Method {
                vfork,
                clone3,
                seal: FdSeal::detect(),
            };
            let e = spawn_with(&mut c, method).unwrap_err();
            let f = prepared.take_child_failure().expect("failure recorded");
            assert_eq!(
                f.step,
                tsbridge_sandbox::ChildStep::JoinCgroup,
                "{via:?}: {f}"
            );
            assert_eq!(e.raw_os_error(), Some(f.errno), "{via:?}");
        }
        let _ = sb.remove_parent();
    }

    /// With the heaviest sandbox (own network namespace with lo up,
    /// no_new_privs, seccomp, another user, rlimits) applied by a vfork
    /// child, the exec'd job holds each of them (all per-task: the shared
    /// memory changes none), and the child used less than half its stack
    /// (painted before, looked at after: the measure behind
    /// `vfork::STACK_SIZE`).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_vfork_child_applies_the_whole_sandbox_with_room_to_spare_on_its_stack() {
        const PAINT: u8 = 0xA5;
        let Some(sb) = sandbox() else { return };
        let policy = tsbridge_sandbox::SandboxPolicy {
            network: false,
            user: Some(tsbridge_sandbox::JobUser {
                uid: 65534,
                gid: 65534,
            }),
            rlimits: tsbridge_sandbox::Rlimits {
                nofile: Some(64),
                ..tsbridge_sandbox::Rlimits::default()
            },
            ..tsbridge_sandbox::SandboxPolicy::default()
        };
        let prepared = match sb.prepare("whole", &policy) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("SKIP: cannot prepare: {e}");
                let _ = sb.remove_parent();
                return;
            }
        };
        vfork::with_stack(|s| {
            // SAFETY: this thread's child stack, unused until the spawn below.
            unsafe { std::ptr::write_bytes(s.low(), PAINT, vfork::STACK_SIZE) }
        })
        .unwrap();
        let mut c = sleeper(&["60"]);
        sandboxed(&mut c, prepared.child_hook());
        let child = spawn_with(&mut c, vfork_method()).unwrap();
        let _reap = Reap(child.pid);
        assert_eq!(child.via, Via::Vfork);
        let untouched = vfork::with_stack(|s| {
            // SAFETY: the stack's STACK_SIZE bytes, the child long gone (exec'd).
            let bytes = unsafe { std::slice::from_raw_parts(s.low(), vfork::STACK_SIZE) };
            bytes.iter().take_while(|b| **b == PAINT).count()
        })
        .unwrap();
        let used = vfork::STACK_SIZE - untouched;
        eprintln!(
            "the vfork child used {used} bytes of its {} byte stack",
            vfork::STACK_SIZE
        );
        assert!(used > 0 && used < vfork::STACK_SIZE / 2, "{used}");

        await_sleeping(child.pid);
        let p = child.pid;
        assert_eq!(status_field(p, "NoNewPrivs"), 1);
        assert_eq!(status_field(p, "Seccomp"), 2);
        assert_eq!(status_field(p, "CapEff"), 0);
        assert_eq!(status_field(p, "CapBnd"), 0);
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.raw())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uid.split_whitespace().collect::<Vec<_>>(),
            ["Uid:", "65534", "65534", "65534", "65534"]
        );
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.raw())).unwrap();
        let nofile = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(nofile.split_whitespace().nth(3), Some("64"), "{nofile}");
        let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_ne!(
            ns(p.raw() as u32),
            ns(std::process::id()),
            "own network namespace"
        );
        drop(_reap);
        if let Some(cg) = prepared.into_cgroup() {
            let _ = cg.remove();
        }
        let _ = sb.remove_parent();
    }
}
