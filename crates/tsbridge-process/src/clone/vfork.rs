//! The vfork-style spawn (x86_64): `clone3(CLONE_VM | CLONE_VFORK |
//! CLONE_PIDFD [| CLONE_INTO_CGROUP])`, the child on a stack of its own,
//! as glibc's `posix_spawn` does. See the parent module's doc for what
//! sharing the memory asks of the child.

use std::cell::Cell;
use std::ffi::c_void;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::{ChildCtx, CloneArgs, ExecPlan, PreExec};

/// `CLONE_VM`, as the u64 of `clone_args.flags`.
const CLONE_VM: u64 = libc::CLONE_VM as u64;
/// `CLONE_VFORK`, as the u64 of `clone_args.flags`.
const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;

/// The child's stack, guard page excluded. The child side (signal
/// reset, stdio, fd seal, cwd, the engine's pre-exec step with the
/// heaviest sandbox hook: own network namespace with lo up, capabilities,
/// user switch, seccomp; the exec loop) used 1.3 KiB in a debug build
/// (`a_vfork_child_applies_the_whole_sandbox_with_room_to_spare_on_its_stack`
/// paints the stack and looks how deep the child wrote; the test fails
/// past half of it). 64 KiB leaves room for a bigger step or a libc whose
/// wrappers use more; only the pages the child touches are ever backed,
/// once per thread (the stack is kept).
pub(super) const STACK_SIZE: usize = 64 << 10;

/// One page below the stack, `PROT_NONE`: an overflow faults there (the
/// child, whose signals are all blocked, is killed by the kernel) instead
/// of writing over the parent's memory.
const GUARD: usize = 4096;

/// An mmap'd child stack with its guard page.
pub(super) struct Stack {
    base: *mut c_void,
}

impl Stack {
    fn new() -> io::Result<Self> {
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                GUARD + STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base };
        // SAFETY: the first page of the mapping just made.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The lowest usable byte (above the guard page).
    pub(super) fn low(&self) -> *mut u8 {
        // SAFETY: GUARD is inside the mapping.
        unsafe { self.base.cast::<u8>().add(GUARD) }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base, GUARD + STACK_SIZE) };
    }
}

thread_local! {
    /// This thread's child stack, kept between spawns: a spawn blocks its
    /// thread until the child execs or exits, so one per thread suffices.
    static STACK: Cell<Option<Stack>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's child stack (made on first use).
pub(super) fn with_stack<T>(f: impl FnOnce(&Stack) -> T) -> io::Result<T> {
    let stack = match STACK.with(Cell::take) {
        Some(s) => s,
        None => Stack::new()?,
    };
    let r = f(&stack);
    STACK.with(|c| c.set(Some(stack)));
    Ok(r)
}

/// What the child's entry point gets: pointers into the spawning thread's
/// frame, which stays put while it is suspended (CLONE_VFORK).
struct Entry<'a, 'p> {
    plan: &'a ExecPlan<'p>,
    pre_exec: Option<&'a PreExec>,
    ctx: ChildCtx,
}

/// The child's entry, on its own stack. Reads `Entry`, writes nothing
/// outside its own stack and the kernel's view of the child.
extern "C" fn child_main(arg: *mut c_void) -> ! {
    // SAFETY: `arg` is the `Entry` in the suspended parent thread's frame
    // (see `clone3_vfork`); it is only read.
    let entry = unsafe { &*arg.cast::<Entry<'_, '_>>() };
    // SAFETY: this is the freshly cloned child, sharing the parent's
    // memory; both only make raw syscalls on the child's stack and on
    // memory the parent prepared.
    unsafe {
        if let Err(e) = default_handlers() {
            super::report_and_exit(entry.plan.report, e)
        }
        super::exec_child(entry.plan, entry.pre_exec, entry.ctx)
    }
}

/// The kernel's `struct sigaction` on x86_64 (`rt_sigaction(2)`).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Every signal with a handler back to SIG_DFL, and SIGPIPE too; other
/// ignored signals stay ignored (glibc's `posix_spawn` does the same, in
/// `__spawni_child`). A handler of the parent (tokio's) would otherwise
/// run in the child on the parent's memory: it sees a signal once the
/// child empties its mask. Raw `rt_sigaction` (the child's own table:
/// no CLONE_SIGHAND).
///
/// # Safety
/// Only in the vfork child, whose signals are all blocked.
unsafe fn default_handlers() -> Result<(), i32> {
    const NSIG: libc::c_int = 64;
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=NSIG {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: rt_sigaction reading into a live, kernel-sized struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<KernelSigaction>(),
                &mut old as *mut KernelSigaction,
                std::mem::size_of::<u64>(),
            )
        };
        if r != 0 {
            return Err(super::errno());
        }
        let keep =
            old.handler == libc::SIG_DFL || (old.handler == libc::SIG_IGN && sig != libc::SIGPIPE);
        if keep {
            continue;
        }
        // SAFETY: rt_sigaction from a live, kernel-sized struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
        if r != 0 {
            return Err(super::errno());
        }
    }
    Ok(())
}

/// A vfork-style child: its pid, its pidfd, and whether it was created in
/// the cgroup.
pub(super) struct Spawned {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) in_cgroup: bool,
}

/// Clones the child sharing this process's memory, on `stack`, into
/// `cgroup` if given (again without it on a refusal
/// [`super::learn_from`] accepts). Returns once the child has
/// exec'd or exited (CLONE_VFORK); its report is then in the pipe.
pub(super) fn spawn(
    stack: &Stack,
    cgroup: Option<RawFd>,
    plan: &ExecPlan<'_>,
    pre_exec: Option<&PreExec>,
) -> io::Result<Spawned> {
    let mut into = cgroup.filter(|_| super::into_cgroup_works());
    loop {
        let mut pidfd: RawFd = -1;
        let mut args = CloneArgs {
            flags: CLONE_VM | CLONE_VFORK | super::CLONE_PIDFD,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.low() as u64,
            stack_size: STACK_SIZE as u64,
            ..CloneArgs::default()
        };
        if let Some(fd) = into {
            args.flags |= super::CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
        }
        let entry = Entry {
            plan,
            pre_exec,
            ctx: ChildCtx {
                in_cgroup: into.is_some(),
                under_init: false,
            },
        };
        // No handler of ours may run in the child: every signal stays
        // blocked from before the clone until the child has reset the
        // handlers (it inherits this mask), and in this thread until the
        // child has exec'd.
        let blocked = super::BlockAll::new()?;
        // SAFETY: `args` is a live clone_args with a stack of our own,
        // unused by anyone else while this thread is suspended; `entry`
        // lives in this frame until the call returns, which is after the
        // child has exec'd or exited.
        let r = unsafe { clone3_vfork(&args, &entry as *const Entry<'_, '_> as *mut c_void) };
        drop(blocked);
        if r > 0 {
            // SAFETY: with CLONE_PIDFD a successful clone3 wrote a new fd
            // of ours, owned by nobody else, into `pidfd`.
            let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
            return Ok(Spawned {
                pid: r as libc::pid_t,
                pidfd,
                in_cgroup: into.is_some(),
            });
        }
        let e = io::Error::from_raw_os_error((-r) as i32);
        // ENOSYS is learnt there too; the caller then forks.
        if !super::learn_from(&e, &mut into) || e.raw_os_error() == Some(libc::ENOSYS) {
            return Err(e);
        }
    }
}

/// The `clone3` syscall whose child calls [`child_main`]`(arg)` on the
/// stack in `args` and never comes back here. Returns the child's pid or
/// `-errno`.
///
/// As glibc's `clone3` (sysdeps/unix/sysv/linux/x86_64/clone3.S) and
/// musl's `__clone` (src/thread/x86_64/clone.s): the function and its
/// argument ride in registers that `syscall` preserves (only rcx and r11
/// are clobbered, rax gets the result); in the child (rax 0) the kernel
/// has set rsp to the top of the new stack (16-byte aligned: `call`
/// pushes the return address as the ABI expects), rbp is cleared to end
/// the frame chain, and the function is called; `ud2` would trap if it
/// ever returned. A `libc::syscall(SYS_clone3, ..)` could not do this: the
/// child would return into the C wrapper on a stack without its frame.
///
/// # Safety
/// `args` must describe a stack only the child uses, and CLONE_VFORK, so
/// that `arg` stays valid until the child has exec'd or exited.
unsafe fn clone3_vfork(args: &CloneArgs, arg: *mut c_void) -> isize {
    let entry: extern "C" fn(*mut c_void) -> ! = child_main;
    let ret: isize;
    // SAFETY: see above; in the parent the block is a plain syscall.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r8",
            "call rdx",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("rdx") entry,
            in("r8") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}
