//! What runs in the child between fork and exec. Everything here is
//! async-signal-safe: raw syscalls on data prepared before fork, no
//! allocation, no locks, no formatting machinery, no panics.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use serde::Serialize;

use crate::cgroup::JoinBy;
use crate::seccomp::Program;
use crate::user::JobUser;

#[cfg(target_env = "gnu")]
pub(crate) type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub(crate) type RlimitResource = libc::c_int;

/// How the child gets its network.
#[derive(Debug)]
pub(crate) enum NetPlan {
    /// The host's network namespace.
    Host,
    /// A new namespace of its own, with `lo` brought up.
    Unshare,
    /// Join the shared empty namespace held open by the `Sandbox`.
    Setns(Arc<OwnedFd>),
    /// A user namespace of its own (mapping the job's ids to themselves)
    /// and a network namespace owned by it: an unprivileged tsbridge.
    UserNs(Arc<crate::netns::SelfMaps>),
}

/// The step of [`crate::PreparedSandbox::apply_in_child`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(i32)]
pub enum ChildStep {
    JoinCgroup = 1,
    Rlimit = 2,
    ParentDeathSignal = 3,
    NetworkNamespace = 4,
    Loopback = 5,
    NoNewPrivs = 6,
    Landlock = 7,
    Seccomp = 8,
    Capabilities = 9,
    SwitchUser = 10,
    IpcNamespace = 11,
    UserNamespace = 12,
}

impl ChildStep {
    pub(crate) fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::JoinCgroup,
            2 => Self::Rlimit,
            3 => Self::ParentDeathSignal,
            4 => Self::NetworkNamespace,
            5 => Self::Loopback,
            6 => Self::NoNewPrivs,
            7 => Self::Landlock,
            8 => Self::Seccomp,
            9 => Self::Capabilities,
            10 => Self::SwitchUser,
            11 => Self::IpcNamespace,
            12 => Self::UserNamespace,
            _ => return None,
        })
    }
}

impl fmt::Display for ChildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::JoinCgroup => "joining the job cgroup",
            Self::Rlimit => "setting rlimits",
            Self::ParentDeathSignal => "setting the parent-death signal",
            Self::NetworkNamespace => "entering a network namespace",
            Self::Loopback => "bringing up lo",
            Self::NoNewPrivs => "setting no_new_privs",
            Self::Landlock => "applying landlock",
            Self::Seccomp => "installing seccomp",
            Self::Capabilities => "dropping capabilities",
            Self::SwitchUser => "switching to the job's user",
            Self::IpcNamespace => "entering an IPC namespace",
            Self::UserNamespace => "mapping the job's ids in its user namespace",
        })
    }
}

/// Which sandbox step failed in the child, and its errno (the spawn itself
/// returns only the errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChildFailure {
    pub step: ChildStep,
    pub errno: i32,
}

impl fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sandbox setup failed while {}: {}",
            self.step,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// A page shared between parent and children (MAP_SHARED), where a child
/// records the step that failed before exec.
#[derive(Debug)]
pub(crate) struct FailureSlot {
    page: NonNull<AtomicI32>,
}

// SAFETY: the page is only accessed through atomics and lives until Drop.
unsafe impl Send for FailureSlot {}
// SAFETY: as above; all access is atomic.
unsafe impl Sync for FailureSlot {}

const PAGE: usize = 4096;

impl FailureSlot {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: anonymous shared mapping of one page; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast::<AtomicI32>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { page })
    }

    fn cell(&self, i: usize) -> &AtomicI32 {
        // SAFETY: the mapping is PAGE bytes, zero-filled, page-aligned; i < 2
        // stays inside it, and AtomicI32 has the layout of i32.
        unsafe { &*self.page.as_ptr().add(i) }
    }

    fn record(&self, step: ChildStep, errno: i32) {
        self.cell(1).store(errno, Ordering::SeqCst);
        self.cell(0).store(step as i32, Ordering::SeqCst);
    }

    pub(crate) fn take(&self) -> Option<ChildFailure> {
        let step = ChildStep::from_i32(self.cell(0).swap(0, Ordering::SeqCst))?;
        Some(ChildFailure {
            step,
            errno: self.cell(1).load(Ordering::SeqCst),
        })
    }
}

impl Drop for FailureSlot {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this size and is unmapped once.
        unsafe {
            libc::munmap(self.page.as_ptr().cast(), PAGE);
        }
    }
}

/// The job cgroup files the child writes to join, and how; on v2 also the
/// job's directory, to create the child in it instead.
#[derive(Debug)]
pub(crate) struct CgroupJoin {
    pub fds: Vec<OwnedFd>,
    pub by: JoinBy,
    /// v2: the job's directory (`O_PATH`), for `clone3(CLONE_INTO_CGROUP)`.
    pub v2_dir: Option<Arc<OwnedFd>>,
}

impl CgroupJoin {
    /// No cgroup to join.
    pub(crate) fn none() -> Self {
        Self {
            fds: Vec::new(),
            by: JoinBy::ProcsPid,
            v2_dir: None,
        }
    }
}

/// Everything the child needs, prepared before fork.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    pub cgroup_join: CgroupJoin,
    pub rlimits: Vec<(RlimitResource, libc::rlimit)>,
    pub parent_death_signal: Option<i32>,
    pub parent_pid: libc::pid_t,
    pub net: NetPlan,
    /// Enter an IPC namespace of its own (a dynamic uid's job: its System V
    /// IPC objects and POSIX message queues die with it).
    pub new_ipc: bool,
    pub no_new_privs: bool,
    /// The uid and gid to switch to (no supplementary groups).
    pub user: Option<JobUser>,
    pub landlock: Option<OwnedFd>,
    /// A second Landlock layer, applied after `landlock` (a dynamic uid's
    /// job: it creates nothing but beneath its TMPDIR).
    pub landlock_own: Option<OwnedFd>,
    /// Rules for paths beneath `/proc` (the path and its rights), added to
    /// `landlock` by a job under an init of its own
    /// ([`crate::SandboxPolicy::pid_namespace`]) once its fresh procfs is
    /// mounted: the rules made for the host's `/proc` do not cover it.
    pub proc_rules: Vec<(std::ffi::CString, u64)>,
    /// The job runs under an init in a PID namespace of its own (its
    /// policy asks for it and the host can).
    pub pid_namespace: bool,
    /// What the init does first (its own user namespace's maps, the
    /// procfs mount).
    pub init_setup: crate::pidns::InitSetup,
    pub seccomp: Arc<Vec<Program>>,
    pub failure: FailureSlot,
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Decimal digits of `v` into `buf`; returns the used tail.
fn fmt_pid(mut v: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// `struct ifreq` with the flags member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfreqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl ChildPlan {
    /// Apply the plan to the calling process; `in_cgroup`: the child was
    /// created in the job's v2 directory (`CLONE_INTO_CGROUP`), so it skips
    /// step 1; `under_init`: the child was forked by the init of a PID
    /// namespace of its own (`docs/design/pid-namespace.md`), so its parent,
    /// which the parent-death checks compare against, is that init: pid 1
    /// as the child sees it, not tsbridge.
    ///
    /// # Safety
    /// Call only in a freshly forked child before exec (it moves the process
    /// into the job's cgroups and restricts it irreversibly). It is
    /// async-signal-safe: it only reads `self` and makes raw syscalls.
    pub(crate) unsafe fn apply(&self, in_cgroup: bool, under_init: bool) -> io::Result<()> {
        let parent_pid = if under_init { 1 } else { self.parent_pid };
        let fail = |step: ChildStep| {
            let e = errno();
            self.failure.record(step, e);
            io::Error::from_raw_os_error(e)
        };
        let fail_with = |step: ChildStep, e: i32| {
            self.failure.record(step, e);
            io::Error::from_raw_os_error(e)
        };

        // 1. Join the job cgroups first, so everything after is accounted and
        //    every later fork lands in the job.
        //    v1: "0" to `tasks` (this thread, the whole process here:
        //    no global lock in the kernel, see JoinBy); v2: nothing when the
        //    child was created in the job's directory, else the pid to
        //    `cgroup.procs`.
        if !in_cgroup && !self.cgroup_join.fds.is_empty() {
            let mut buf = [0u8; 12];
            let digits: &[u8] = match self.cgroup_join.by {
                JoinBy::TasksSelf => b"0",
                JoinBy::ProcsPid => {
                    // SAFETY: getpid has no preconditions.
                    let pid = unsafe { libc::getpid() };
                    fmt_pid(pid.unsigned_abs(), &mut buf)
                }
            };
            for fd in &self.cgroup_join.fds {
                // SAFETY: fd is open (owned by the plan), digits is a live buffer.
                let n =
                    unsafe { libc::write(fd.as_raw_fd(), digits.as_ptr().cast(), digits.len()) };
                if n < 0 {
                    return Err(fail(ChildStep::JoinCgroup));
                }
                if n as usize != digits.len() {
                    return Err(fail_with(ChildStep::JoinCgroup, libc::EIO));
                }
            }
        }

        // 2. Resource limits.
        for (res, lim) in &self.rlimits {
            // SAFETY: lim points to a live rlimit.
            if unsafe { libc::setrlimit(*res, lim) } != 0 {
                return Err(fail(ChildStep::Rlimit));
            }
        }

        // 3. Parent-death signal (then make sure the parent did not die already).
        if let Some(sig) = self.parent_death_signal {
            // SAFETY: plain prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } != 0 {
                return Err(fail(ChildStep::ParentDeathSignal));
            }
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent_pid {
                return Err(fail_with(ChildStep::ParentDeathSignal, libc::ESRCH));
            }
        }

        // 4. Network namespace (needs privileges that no_new_privs/landlock/seccomp
        //    would not take away, but do it before them anyway).
        match &self.net {
            NetPlan::Host => {}
            NetPlan::Unshare => {
                // SAFETY: unshare with a constant flag.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(fail(ChildStep::NetworkNamespace));
                }
                // SAFETY: called in the child, as required by loopback_up.
                if let Err(e) = unsafe { loopback_up() } {
                    return Err(fail_with(ChildStep::Loopback, e));
                }
            }
            NetPlan::Setns(fd) => {
                // SAFETY: fd is an open network-namespace fd.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(fail(ChildStep::NetworkNamespace));
                }
            }
            NetPlan::UserNs(maps) => {
                // SAFETY: in the child before its exec; the plan keeps
                // `maps` alive.
                if let Err((step, e)) = unsafe { crate::netns::enter_own_user_and_net_ns(maps) } {
                    return Err(fail_with(step, e));
                }
            }
        }

        // 4b. An IPC namespace of its own (needs CAP_SYS_ADMIN, dropped below).
        // SAFETY: unshare with a constant flag.
        if self.new_ipc && unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
            return Err(fail(ChildStep::IpcNamespace));
        }

        // 5. Capabilities tsbridge may hold as ambient (e.g. CAP_SYS_ADMIN for
        //    netns under systemd) must not pass to the job's program on exec.
        //    EINVAL = kernel without ambient capabilities: nothing to clear.
        // SAFETY: plain prctl with integer arguments.
        if unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        } != 0
            && errno() != libc::EINVAL
        {
            return Err(fail(ChildStep::NoNewPrivs));
        }

        // 6. no_new_privs (also what lets an unprivileged process use landlock/seccomp),
        //    and no capabilities after exec: a job run as root would otherwise
        //    get them all back on exec (CAP_SYS_PTRACE reads tsbridge's
        //    /proc/<pid>/environ and mem even though tsbridge is not dumpable,
        //    CAP_KILL signals anything, CAP_DAC_OVERRIDE reads any file).
        if self.no_new_privs {
            // SAFETY: async-signal-safe raw syscalls on stack data.
            if let Err(e) = unsafe { drop_capabilities_on_exec() } {
                return Err(fail_with(ChildStep::Capabilities, e));
            }
        }

        // 6b. The job's own user, once nothing after needs privilege (the
        //     cgroup was joined, the namespace entered, the bounding set
        //     emptied; Landlock and seccomp need only no_new_privs, which
        //     a policy with a user always has).
        if let Some(user) = self.user {
            // SAFETY: async-signal-safe raw syscalls on stack data.
            if let Err(e) = unsafe { switch_user(user, parent_pid) } {
                return Err(fail_with(ChildStep::SwitchUser, e));
            }
        }
        if self.no_new_privs {
            // SAFETY: plain prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(fail(ChildStep::NoNewPrivs));
            }
        }

        // 7. Landlock (each layer narrows what the ones before allow). Under
        //    an init of its own, first the rules for the fresh /proc.
        if under_init && let Some(fd) = &self.landlock {
            for (path, rights) in &self.proc_rules {
                // SAFETY: raw syscalls on a C string the plan owns.
                if let Err(e) = unsafe { crate::landlock::add_rule_in_child(fd, path, *rights) } {
                    return Err(fail_with(ChildStep::Landlock, e));
                }
            }
        }
        for fd in self.landlock.iter().chain(&self.landlock_own) {
            // SAFETY: fd is an open ruleset fd; flags 0.
            let r =
                unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) };
            if r != 0 {
                return Err(fail(ChildStep::Landlock));
            }
        }

        // 8. seccomp last: it may deny calls the steps above needed.
        for prog in self.seccomp.iter() {
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                filter: prog.as_ptr().cast_mut(),
            };
            // SAFETY: fprog points to a live program; the kernel copies it.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0u32,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if r != 0 {
                return Err(fail(ChildStep::Seccomp));
            }
        }
        Ok(())
    }
}

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): two data structs, 64 capabilities.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Both data structs of [`CapData`] with every set empty.
const NO_CAPABILITIES: [CapData; 2] = [CapData {
    effective: 0,
    permitted: 0,
    inheritable: 0,
}; 2];

/// Make the coming `exec` grant no capability, whatever the uid: empty the
/// bounding set (root's exec gets `inheritable | bounding` as its permitted
/// set) and the inheritable set. The current process keeps its effective
/// capabilities until exec, for the steps after this one. Without
/// CAP_SETPCAP (a non-root tsbridge) the bounding set cannot shrink and needs
/// not: such a process's exec gains nothing (no_new_privs also stops file
/// capabilities). Returns the errno of a call that failed otherwise.
///
/// # Safety
/// Only raw syscalls on stack data: async-signal-safe. Changes the calling
/// process's capability sets.
pub(crate) unsafe fn drop_capabilities_on_exec() -> Result<(), i32> {
    for cap in 0..64 {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            match errno() {
                // Past the kernel's last capability: done.
                libc::EINVAL => break,
                // No CAP_SETPCAP: nothing an exec could gain (see above).
                libc::EPERM => break,
                e => return Err(e),
            }
        }
    }
    let mut data = NO_CAPABILITIES;
    capability_sets(libc::SYS_capget, &mut data)?;
    if data.iter().all(|d| d.inheritable == 0) {
        return Ok(());
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // Lowering the inheritable set needs no privilege.
    capability_sets(libc::SYS_capset, &mut data)
}

/// Become `user` for good: no supplementary groups, then the gid, then
/// the uid (real, effective and saved: no way back), each checked. Raw
/// syscalls, not glibc's wrappers: those apply a credential change to
/// every thread glibc believes the process has, by signalling them and
/// waiting, and a child made by a raw clone still lists its parent's
/// threads (it would wait forever). Then every capability set is emptied
/// (leaving uid 0 clears them anyway, but a non-root tsbridge granted
/// CAP_SETUID would keep its permitted set) and the parent-death signal,
/// which the kernel clears on a credential change, is set again, followed
/// by the check that the parent did not die meanwhile (`parent`).
///
/// # Safety
/// Only raw syscalls on stack data: async-signal-safe. Changes the calling
/// thread's credentials (the whole process: call it single-threaded).
pub(crate) unsafe fn switch_user(user: JobUser, parent: libc::pid_t) -> Result<(), i32> {
    let mut death_signal: libc::c_int = 0;
    // SAFETY: prctl writes one int to a live stack variable.
    if unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut death_signal as *mut libc::c_int as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(errno());
    }
    let groups: *const libc::gid_t = std::ptr::null();
    // SAFETY: raw syscalls with integer arguments (an empty group list).
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0 as libc::size_t, groups) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) != 0 {
            return Err(errno());
        }
    }
    let mut none = NO_CAPABILITIES;
    capability_sets(libc::SYS_capset, &mut none)?;
    if death_signal != 0 {
        // SAFETY: plain prctl with integer arguments; getppid has no preconditions.
        unsafe {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(errno());
            }
            if libc::getppid() != parent {
                return Err(libc::ESRCH);
            }
        }
    }
    Ok(())
}

/// The calling thread's effective capability set (bit n = capability n).
pub(crate) fn effective_capabilities() -> Result<u64, i32> {
    let mut data = NO_CAPABILITIES;
    capability_sets(libc::SYS_capget, &mut data)?;
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// `capget` or `capset` (`call`) of the calling process's sets, version 3.
/// Raw syscall on stack data: async-signal-safe.
fn capability_sets(call: libc::c_long, data: &mut [CapData; 2]) -> Result<(), i32> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and data are live and sized for version 3 (two data
    // structs); capget writes data, capset reads it.
    let r = unsafe { libc::syscall(call, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    if r != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Bring `lo` up in the current network namespace; returns the errno on failure.
///
/// # Safety
/// Only raw syscalls on stack data: async-signal-safe. Changes the current
/// namespace's loopback device.
pub(crate) unsafe fn loopback_up() -> Result<(), i32> {
    // SAFETY: socket() with constant arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(errno());
    }
    let mut ifr = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    ifr.name[0] = b'l' as libc::c_char;
    ifr.name[1] = b'o' as libc::c_char;
    // SAFETY: ifr is a live, correctly sized ifreq; s is our socket.
    let mut r = unsafe { libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr as *mut IfreqFlags) };
    if r == 0 {
        ifr.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: as above.
        r = unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr as *const IfreqFlags) };
    }
    let e = if r != 0 { Some(errno()) } else { None };
    // SAFETY: s is our socket, closed once.
    unsafe { libc::close(s) };
    match e {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_formatting() {
        let mut b = [0u8; 12];
        assert_eq!(fmt_pid(0, &mut b), b"0");
        assert_eq!(fmt_pid(4_194_304, &mut b), b"4194304");
        assert_eq!(fmt_pid(u32::MAX, &mut b), b"4294967295");
    }

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfreqFlags>(), 40);
    }

    #[test]
    fn failure_slot_round_trip() {
        let s = FailureSlot::new().expect("mmap");
        assert_eq!(s.take(), None);
        s.record(ChildStep::Landlock, libc::EPERM);
        assert_eq!(
            s.take(),
            Some(ChildFailure {
                step: ChildStep::Landlock,
                errno: libc::EPERM
            })
        );
        assert_eq!(s.take(), None);
    }
}
