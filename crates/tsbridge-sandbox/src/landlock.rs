//! Landlock through raw syscalls: ABI detection and building a ruleset fd in
//! the parent. The child only calls `landlock_restrict_self(fd, 0)`.
//!
//! Raw syscalls rather than the `landlock` crate: the ruleset must be complete
//! before fork, and the child may do nothing but one syscall; the grade
//! (which rights the running kernel can handle) is computed here.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::SandboxError;
use crate::policy::FsPolicy;

pub(crate) const EXECUTE: u64 = 1 << 0;
pub(crate) const WRITE_FILE: u64 = 1 << 1;
pub(crate) const READ_FILE: u64 = 1 << 2;
pub(crate) const READ_DIR: u64 = 1 << 3;
pub(crate) const REMOVE_DIR: u64 = 1 << 4;
pub(crate) const REMOVE_FILE: u64 = 1 << 5;
pub(crate) const MAKE_CHAR: u64 = 1 << 6;
pub(crate) const MAKE_DIR: u64 = 1 << 7;
pub(crate) const MAKE_REG: u64 = 1 << 8;
pub(crate) const MAKE_SOCK: u64 = 1 << 9;
pub(crate) const MAKE_FIFO: u64 = 1 << 10;
pub(crate) const MAKE_BLOCK: u64 = 1 << 11;
pub(crate) const MAKE_SYM: u64 = 1 << 12;
/// ABI 2.
pub(crate) const REFER: u64 = 1 << 13;
/// ABI 3.
pub(crate) const TRUNCATE: u64 = 1 << 14;
/// ABI 5.
pub(crate) const IOCTL_DEV: u64 = 1 << 15;

const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: u32 = 1;

/// Rights that make sense on a non-directory.
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
const READ: u64 = READ_FILE | READ_DIR;
const EXEC: u64 = READ | EXECUTE;
const WRITE: u64 = READ
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_SYM
    | REFER
    | TRUNCATE
    | IOCTL_DEV;

/// First ABI that scopes signals and abstract unix sockets to the domain.
pub(crate) const SCOPE_ABI: u32 = 6;

/// First ABI with the file-system rights we consider complete (truncate).
pub(crate) const FULL_ABI: u32 = 3;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI of the running kernel, `None` when Landlock is unavailable
/// (not built in, or not in the `lsm=` list).
pub(crate) fn abi_version() -> Option<u32> {
    // SAFETY: with a NULL attr, size 0 and the VERSION flag the syscall only
    // returns the ABI number; it reads and writes no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(r).ok().filter(|v| *v >= 1)
}

/// Every file-system right the given ABI knows.
pub(crate) fn handled_fs(abi: u32) -> u64 {
    let mut h = EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        h |= REFER;
    }
    if abi >= 3 {
        h |= TRUNCATE;
    }
    if abi >= 5 {
        h |= IOCTL_DEV;
    }
    h
}

/// A ruleset ready for `landlock_restrict_self`.
#[derive(Debug)]
pub(crate) struct Ruleset {
    pub fd: OwnedFd,
    /// Listed paths that do not exist (skipped, which only removes access).
    pub skipped: Vec<PathBuf>,
    /// Signals and abstract unix sockets are scoped to the job (ABI 6+).
    pub scoped: bool,
    /// TCP bind/connect are denied by Landlock (ABI 4+, only when asked).
    pub tcp_denied: bool,
}

/// The file-system part of a ruleset.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FsRules<'a> {
    /// No file-system right handled.
    None,
    /// Every right handled; only the policy's lists are allowed.
    Allow(&'a FsPolicy),
    /// The host's own files kept from a job that has no lists: the rights
    /// that change the file system and READ_FILE handled, all of them
    /// allowed everywhere except beneath these paths (`/proc`, `/sys`, the
    /// cgroupfs mounts), which stay readable only, and `/dev`'s block
    /// devices, which get nothing. Directory listing and exec stay as they
    /// were. See [`guard_system`].
    SystemGuard(&'a [PathBuf]),
}

/// Rights of [`FsRules::SystemGuard`]: all the ABI handles but listing
/// directories and executing.
fn guard_rights(abi: u32) -> u64 {
    handled_fs(abi) & !(READ_DIR | EXECUTE)
}

/// Build a ruleset with `fs` and, when `deny_tcp`, denying every TCP
/// bind/connect (fallback when no network namespace is available).
pub(crate) fn build(fs: FsRules<'_>, deny_tcp: bool, abi: u32) -> Result<Ruleset, SandboxError> {
    let handled = match fs {
        FsRules::None => 0,
        FsRules::Allow(_) => handled_fs(abi),
        FsRules::SystemGuard(_) => guard_rights(abi),
    };
    let tcp_denied = deny_tcp && abi >= 4;
    let scoped = abi >= SCOPE_ABI;
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: if tcp_denied {
            NET_BIND_TCP | NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if scoped {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    let size = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: attr is a live, initialised struct of at least `size` bytes; the
    // kernel copies it and returns a new O_CLOEXEC fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size,
            0u32,
        )
    };
    if fd < 0 {
        return Err(SandboxError::Landlock {
            step: "landlock_create_ruleset",
            source: io::Error::last_os_error(),
        });
    }
    let fd = i32::try_from(fd).map_err(|_| SandboxError::Landlock {
        step: "landlock_create_ruleset",
        source: io::Error::from_raw_os_error(libc::EBADF),
    })?;
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut skipped = Vec::new();
    if let FsRules::SystemGuard(read_only) = fs {
        guard_system(&fd, Path::new("/"), read_only, handled, &mut skipped);
    }
    if let FsRules::Allow(fs) = fs {
        let lists: [(&[PathBuf], u64); 3] =
            [(&fs.read, READ), (&fs.exec, EXEC), (&fs.write, WRITE)];
        for (paths, rights) in lists {
            for p in paths {
                if !add_path_rule(&fd, p, rights & handled)? {
                    skipped.push(p.clone());
                }
            }
        }
    }
    Ok(Ruleset {
        fd,
        skipped,
        scoped,
        tcp_denied,
    })
}

/// The creation rights: making any kind of entry, and REFER (ABI 2+: a
/// link or a rename into another folder).
fn creation_rights(abi: u32) -> u64 {
    handled_fs(abi)
        & (MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_BLOCK | MAKE_SYM | REFER)
}

/// A second layer for a dynamic uid's job under the system guard: it
/// handles only the creation rights and grants them beneath `own` (its
/// TMPDIR) alone, so the job creates nothing anywhere else, in particular
/// in the shared world-writable folders ([`crate::leftovers::SHARED_DIRS`]),
/// where it would wait for the next job given its uid. Elsewhere such a job
/// (never root) could create nothing anyway: only folders writable by
/// others let it. Opening, writing and removing what exists stay as the
/// first layer and the file modes say. One rule: built for each job
/// (see `docs/design/sandbox.md`, "A uid per job", for its cost).
pub(crate) fn create_only_beneath(own: &Path, abi: u32) -> Result<OwnedFd, SandboxError> {
    let rights = creation_rights(abi);
    let attr = RulesetAttr {
        handled_access_fs: rights,
        handled_access_net: 0,
        scoped: 0,
    };
    // SAFETY: attr is a live, initialised struct; 8 bytes (its fs field)
    // is the size every ABI takes; the kernel copies it and returns a new
    // O_CLOEXEC fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            8usize,
            0u32,
        )
    };
    let fd = i32::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| SandboxError::Landlock {
            step: "landlock_create_ruleset",
            source: io::Error::last_os_error(),
        })?;
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Never the device kinds (no job may make a device node).
    if !add_path_rule(&fd, own, rights & !(MAKE_CHAR | MAKE_BLOCK))? {
        return Err(SandboxError::Landlock {
            step: "open the job's TMPDIR",
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: not found", own.display()),
            ),
        });
    }
    Ok(fd)
}

/// Allow `rights` beneath every entry of `dir`, except: the `read_only`
/// paths get READ_FILE only (an entry that is an ancestor of one is walked
/// into instead), `/dev` is walked into and its block devices get nothing
/// (a root job owns them: raw disk access), symbolic links are skipped
/// (their targets get rules where they really are, and one into a guarded
/// path must not open it). An entry whose rule cannot be added is recorded
/// in `skipped`: that only takes access away.
fn guard_system(
    ruleset: &OwnedFd,
    dir: &Path,
    read_only: &[PathBuf],
    rights: u64,
    skipped: &mut Vec<PathBuf>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        skipped.push(dir.to_path_buf());
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let allowed = if kind.is_symlink() || kind.is_block_device() {
            continue;
        } else if read_only.contains(&path) {
            READ_FILE
        } else if kind.is_dir()
            && (path == Path::new("/dev") || read_only.iter().any(|k| k.starts_with(&path)))
        {
            guard_system(ruleset, &path, read_only, rights, skipped);
            continue;
        } else {
            rights
        };
        if !matches!(add_path_rule(ruleset, &path, allowed & rights), Ok(true)) {
            skipped.push(path);
        }
    }
}

/// `landlock_add_rule` of one path-beneath rule for the file `parent` (an
/// open fd) with `allowed`; false on failure (errno says why). No
/// allocation: a pre-exec step may call it.
fn add_rule_raw(ruleset: &OwnedFd, parent: i32, allowed: u64) -> bool {
    let attr = PathBeneathAttr {
        allowed_access: allowed,
        parent_fd: parent,
    };
    // SAFETY: both fds are open for the duration of the call (`parent` by
    // the caller); attr is a live packed struct matching
    // `struct landlock_path_beneath_attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    r == 0
}

/// Add one path-beneath rule; `Ok(false)` when the path does not exist.
fn add_path_rule(ruleset: &OwnedFd, path: &Path, rights: u64) -> Result<bool, SandboxError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(SandboxError::Landlock {
                step: "open rule path",
                source: io::Error::new(e.kind(), format!("{}: {e}", path.display())),
            });
        }
    };
    let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
    let allowed = if is_dir { rights } else { rights & FILE_RIGHTS };
    if allowed == 0 {
        return Ok(true);
    }
    if !add_rule_raw(ruleset, file.as_raw_fd(), allowed) {
        return Err(SandboxError::Landlock {
            step: "landlock_add_rule",
            source: io::Error::new(
                io::Error::last_os_error().kind(),
                format!("{}: {}", path.display(), io::Error::last_os_error()),
            ),
        });
    }
    Ok(true)
}

/// The rules `fs` has for `/proc` and paths beneath it, as (path, rights):
/// what a job with a procfs of its own adds on it
/// ([`add_rule_in_child`]). The system guard's is `/proc` with READ_FILE;
/// an allow-list's, each listed path beneath `/proc` with the rights of
/// its list (`/proc/self` then names the job itself).
pub(crate) fn proc_rules(fs: FsRules<'_>, abi: u32) -> Vec<(CString, u64)> {
    let under_proc = |p: &Path| p.starts_with("/proc");
    let rule = |p: &Path, rights: u64| {
        CString::new(p.as_os_str().as_bytes())
            .ok()
            .map(|c| (c, rights))
    };
    match fs {
        FsRules::None => Vec::new(),
        FsRules::SystemGuard(read_only) => read_only
            .iter()
            .filter(|p| under_proc(p))
            .filter_map(|p| rule(p, READ_FILE & guard_rights(abi)))
            .collect(),
        FsRules::Allow(fs) => {
            let handled = handled_fs(abi);
            let lists: [(&[PathBuf], u64); 3] =
                [(&fs.read, READ), (&fs.exec, EXEC), (&fs.write, WRITE)];
            lists
                .iter()
                .flat_map(|(paths, rights)| {
                    paths
                        .iter()
                        .filter(|p| under_proc(p))
                        .filter_map(move |p| rule(p, rights & handled))
                })
                .collect()
        }
    }
}

/// Adds one path-beneath rule for `path` to `ruleset` from a child before
/// exec (no allocation): a path that does not exist is skipped (that only
/// takes access away); rights that make no sense on a file are dropped
/// for one. Returns the errno of what failed.
///
/// # Safety
/// Raw syscalls on a live C string and a stack buffer: async-signal-safe.
pub(crate) unsafe fn add_rule_in_child(
    ruleset: &OwnedFd,
    path: &std::ffi::CStr,
    rights: u64,
) -> Result<(), i32> {
    // SAFETY: open of a live C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return if e == libc::ENOENT { Ok(()) } else { Err(e) };
    }
    // SAFETY: stat is plain data; fstat writes into the live local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on the fd just opened.
    let is_dir =
        unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let allowed = if is_dir { rights } else { rights & FILE_RIGHTS };
    let added = add_rule_raw(ruleset, fd, allowed);
    let e = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    // SAFETY: close of the fd opened above.
    unsafe { libc::close(fd) };
    if !added && allowed != 0 {
        Err(e)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_rights_grow_with_abi() {
        assert_eq!(handled_fs(1), (1 << 13) - 1);
        assert_eq!(handled_fs(2) & REFER, REFER);
        assert_eq!(handled_fs(3) & TRUNCATE, TRUNCATE);
        assert_eq!(handled_fs(4) & IOCTL_DEV, 0);
        assert_eq!(handled_fs(5) & IOCTL_DEV, IOCTL_DEV);
        assert_eq!(handled_fs(7), (1 << 16) - 1);
    }

    #[test]
    fn write_never_grants_device_creation() {
        assert_eq!(WRITE & (MAKE_CHAR | MAKE_BLOCK), 0);
        assert_eq!(EXEC & WRITE_FILE, 0);
    }

    #[test]
    fn ruleset_builds_and_skips_missing_paths_when_supported() {
        let Some(abi) = abi_version() else {
            eprintln!("landlock unavailable: skipped");
            return;
        };
        let p = FsPolicy {
            read: vec![PathBuf::from("/usr"), PathBuf::from("/nonexistent/x")],
            write: vec![PathBuf::from("/dev/null")],
            exec: vec![],
        };
        let r = build(FsRules::Allow(&p), false, abi).expect("ruleset");
        assert_eq!(r.skipped, vec![PathBuf::from("/nonexistent/x")]);
    }
}
