//! The seccomp deny-list, compiled to classic BPF in the parent. Everything
//! not listed is allowed; listed calls fail with EPERM (or ENOSYS where a
//! caller is expected to fall back: clone3, io_uring). A foreign syscall ABI
//! (i386 on x86_64) kills the process; x32 syscalls get ENOSYS.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use crate::error::SandboxError;

/// One compiled program, in the kernel's `struct sock_filter` layout.
pub(crate) type Program = Vec<libc::sock_filter>;

/// Namespace-creating clone/unshare flags.
const NS_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// Syscalls denied outright with EPERM.
pub(crate) const DENIED: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("modify_ldt", libc::SYS_modify_ldt),
];

/// Syscalls answered with ENOSYS so that callers fall back (glibc retries
/// clone3 as clone, whose flags the filter can inspect; libuv drops io_uring).
pub(crate) const ENOSYS: &[(&str, i64)] = &[
    ("clone3", libc::SYS_clone3),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

fn target_arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn err(e: seccompiler::BackendError) -> SandboxError {
    SandboxError::Seccomp(e.to_string())
}

fn to_kernel(p: seccompiler::BpfProgram) -> Program {
    p.into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// Rules matching a call whose argument `arg` has any namespace flag set.
fn any_ns_flag(arg: u8) -> Result<Vec<SeccompRule>, SandboxError> {
    NS_FLAGS
        .iter()
        .map(|f| {
            SeccompRule::new(vec![
                SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*f), *f)
                    .map_err(err)?,
            ])
            .map_err(err)
        })
        .collect()
}

/// The programs of a `network = false` job: the deny-list's, then one that
/// refuses `socket(AF_UNIX, ...)` with EACCES. A network namespace holds no
/// file system, and Landlock (up to ABI 7) has no right for `connect()` to a
/// socket file: without this a job with no network still reaches
/// `/var/run/docker.sock` or a database's socket that its uid may open.
/// `socketpair` (how Node and libuv make a child's stdio) stays allowed, and
/// so do the sockets a job inherits (its output, Node's IPC channel).
pub(crate) fn compile_offline(base: &[Program]) -> Result<Vec<Program>, SandboxError> {
    let arch = target_arch()?;
    let rule = SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )
        .map_err(err)?,
    ])
    .map_err(err)?;
    let unix = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_socket, vec![rule])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(err)?;
    let mut programs = base.to_vec();
    programs.push(to_kernel(unix.try_into().map_err(err)?));
    Ok(programs)
}

/// Compile the deny-list into the programs to install, in order.
pub(crate) fn compile() -> Result<Vec<Program>, SandboxError> {
    let arch = target_arch()?;
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    eperm.insert(libc::SYS_unshare, any_ns_flag(0)?);
    // clone(flags, ...) takes the flags first on x86_64 and aarch64.
    eperm.insert(libc::SYS_clone, any_ns_flag(0)?);
    // TIOCSTI (push input into a terminal), TIOCLINUX: same numbers on x86_64 and aarch64.
    let ioctl_rules = [0x5412u64, 0x541Cu64]
        .iter()
        .map(|req| {
            SeccompRule::new(vec![
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req)
                    .map_err(err)?,
            ])
            .map_err(err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    eperm.insert(libc::SYS_ioctl, ioctl_rules);

    let eperm = SeccompFilter::new(
        eperm,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    let enosys = SeccompFilter::new(
        ENOSYS.iter().map(|(_, nr)| (*nr, Vec::new())).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    let mut programs = vec![
        to_kernel(eperm.try_into().map_err(err)?),
        to_kernel(enosys.try_into().map_err(err)?),
    ];
    #[cfg(target_arch = "x86_64")]
    programs.push(x32_filter());
    Ok(programs)
}

/// x32 syscalls share AUDIT_ARCH_X86_64 but have bit 30 set in the number, so
/// the exact-number rules above would miss them: refuse them all.
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> Program {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_BIT: u32 = 0x4000_0000;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    let ld_abs_w = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let jge = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    vec![
        stmt(ld_abs_w, 4), // seccomp_data.arch
        jump(jeq, AUDIT_ARCH_X86_64, 0, 3),
        stmt(ld_abs_w, 0), // seccomp_data.nr
        jump(jge, X32_BIT, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_list_compiles() {
        let progs = compile().expect("compile");
        assert!(progs.len() >= 2);
        assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        let offline = compile_offline(&progs).expect("compile offline");
        assert_eq!(offline.len(), progs.len() + 1);
    }
}
