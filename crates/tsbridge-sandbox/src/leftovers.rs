//! What a dynamic uid ([`crate::dynamic`]) may still own from an earlier
//! holder, removed before it is used again (systemd's `RemoveIPC=` and
//! the clean-up of its `PrivateTmp=`, done at the lease).
//!
//! Where the sandbox confines dynamic jobs (Landlock ABI 2+: the shared
//! world-writable folders are read-only to them but for their TMPDIR; an
//! IPC namespace of their own), they leave nothing there, and each uid is
//! swept once, at its first lease in this process: what an older tsbridge,
//! or one that crashed, left. Where it does not, every lease is swept.
//! A uid whose leftovers cannot all be removed is kept out of circulation
//! (see [`crate::RunAs::for_job`]).
//!
//! The sweep removes, beneath each of [`SHARED_DIRS`], every entry the uid
//! owns, going into the folders it owns and into the world-writable ones
//! (their entries of other owners stay), without following a symbolic link
//! (`openat` with `O_NOFOLLOW`, `unlinkat`; the link itself is removed when
//! the uid owns it); and the System V shared-memory segments, message
//! queues and semaphore sets it owns or created (`/proc/sysvipc`). POSIX
//! message queues are swept where the mqueue file system is mounted
//! (`/dev/mqueue`).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// The folders any uid may create files in, where one job's files would
/// wait for the next job given its uid.
pub const SHARED_DIRS: [&str; 5] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"];

/// How deep the sweep goes into folders; an owned folder deeper than this
/// is not removed (and its uid is kept out of circulation).
const MAX_DEPTH: usize = 32;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Entries and IPC objects removed.
    pub removed: usize,
    /// What the uid still owns (or holds a folder of: entries of another
    /// owner inside) that could not be removed, each with the error.
    pub kept: Vec<String>,
}

/// Whether every lease is swept (the host cannot confine dynamic jobs).
static EVERY_LEASE: AtomicBool = AtomicBool::new(false);

/// The uids swept clean by this process.
static SWEPT: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Set by [`crate::Sandbox::new`]: `true` where dynamic jobs are not
/// confined (no Landlock ABI 2+, or no IPC namespace), so that anything
/// they leave is removed before their uid is used again.
pub(crate) fn sweep_every_lease(every: bool) {
    EVERY_LEASE.store(every, Ordering::Relaxed);
}

/// Before a just-leased `uid` is used (no process has it: the lease checked
/// that): removes what it owns in [`SHARED_DIRS`] and its System V IPC
/// objects, on its first lease in this process, or on every lease where
/// dynamic jobs are not confined. `Err`: what it still owns.
pub(crate) fn clear_for_lease(uid: u32) -> Result<Swept, Vec<String>> {
    let every = EVERY_LEASE.load(Ordering::Relaxed);
    let done = || {
        SWEPT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|s| s.contains(&uid))
    };
    if !every && done() {
        return Ok(Swept::default());
    }
    let roots: Vec<&Path> = SHARED_DIRS.iter().map(Path::new).collect();
    let mut swept = sweep(uid, &roots);
    sweep_ipc(uid, &mut swept);
    if !swept.kept.is_empty() {
        return Err(swept.kept);
    }
    if swept.removed > 0 {
        tracing::info!(
            uid,
            removed = swept.removed,
            "removed what a dynamic uid left in the shared folders and System V IPC"
        );
    }
    SWEPT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(uid);
    Ok(swept)
}

/// Removes what `uid` owns beneath each of `roots` (see the module doc).
/// A root that does not exist is skipped.
pub fn sweep(uid: u32, roots: &[&Path]) -> Swept {
    let mut out = Swept::default();
    for root in roots {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::open(*root, flags, Mode::empty()) {
            Ok(fd) => sweep_dir(&fd, root, uid, 0, &mut out),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {}
            Err(e) => out.kept.push(format!("{}: {e}", root.display())),
        }
    }
    out
}

/// The names in the folder `dir`, but `.` and `..`.
fn names(dir: &OwnedFd) -> rustix::io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            out.push(name);
        }
    }
    Ok(out)
}

/// Removes what `uid` owns in the folder `dir` (named `path` in messages),
/// going first into the folders it owns and the world-writable ones.
fn sweep_dir(dir: &OwnedFd, path: &Path, uid: u32, depth: usize, out: &mut Swept) {
    let names = match names(dir) {
        Ok(n) => n,
        Err(e) => {
            out.kept.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    for name in names {
        let child = path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        // Never follows a link: a symbolic link is an entry like another.
        let Ok(st) = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let owned = st.st_uid == uid;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && (owned || st.st_mode & 0o002 != 0) {
            if depth >= MAX_DEPTH {
                if owned {
                    out.kept
                        .push(format!("{}: deeper than {MAX_DEPTH}", child.display()));
                }
                continue;
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty()) {
                // The very folder that was looked at (not one swapped in).
                Ok(sub) => match rustix::fs::fstat(&sub) {
                    Ok(now) if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) => {
                        sweep_dir(&sub, &child, uid, depth + 1, out);
                    }
                    _ => continue,
                },
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => {
                    if owned {
                        out.kept.push(format!("{}: {e}", child.display()));
                    }
                    continue;
                }
            }
        }
        if !owned {
            continue;
        }
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(dir, name.as_c_str(), flags) {
            Ok(()) => out.removed += 1,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => out.kept.push(format!("{}: {e}", child.display())),
        }
    }
}

/// The System V IPC kinds: their `/proc/sysvipc` file and id column.
const IPC_KINDS: [(&str, &str); 3] = [("shm", "shmid"), ("msg", "msqid"), ("sem", "semid")];

/// Removes the System V IPC objects of tsbridge's IPC namespace that `uid`
/// owns or created.
fn sweep_ipc(uid: u32, out: &mut Swept) {
    for (kind, id_column) in IPC_KINDS {
        let Ok(table) = std::fs::read_to_string(format!("/proc/sysvipc/{kind}")) else {
            continue;
        };
        for id in owned_ipc_ids(&table, id_column, uid) {
            // SAFETY: IPC_RMID takes no buffer (null) and acts on the id only.
            let r = unsafe {
                match kind {
                    "shm" => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    "msg" => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    _ => libc::semctl(id, 0, libc::IPC_RMID),
                }
            };
            let e = std::io::Error::last_os_error();
            match (r, e.raw_os_error()) {
                (0, _) => out.removed += 1,
                // Gone meanwhile.
                (_, Some(libc::EINVAL | libc::EIDRM)) => {}
                _ => out.kept.push(format!("{kind} {id}: {e}")),
            }
        }
    }
}

/// The ids of a `/proc/sysvipc` table (`id_column` names the id) whose
/// `uid` or `cuid` is `uid`.
fn owned_ipc_ids(table: &str, id_column: &str, uid: u32) -> Vec<i32> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let column = |name: &str| header.split_whitespace().position(|c| c == name);
    let (Some(id), Some(owner), Some(creator)) = (column(id_column), column("uid"), column("cuid"))
    else {
        return Vec::new();
    };
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u32>().ok());
            let mine = field(owner) == Some(uid) || field(creator) == Some(uid);
            mine.then(|| fields.get(id)?.parse::<i32>().ok()).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    const SHM_TABLE: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
         0         32  1600                524288  1234  1234      2  1000  1000  1000  1000 1700000000          0 1700000000                  4096                     0
  12345678         33   600                  4096  1300  1300      0  4000  4000     0     0          0          0 1700000000                     0                     0
  12345679         34   600                  4096  1301  1301      0     0     0  4000  4000          0          0 1700000000                     0                     0
";

    #[test]
    fn ipc_tables_are_read_by_their_header() {
        assert_eq!(owned_ipc_ids(SHM_TABLE, "shmid", 4000), vec![33, 34]);
        assert_eq!(owned_ipc_ids(SHM_TABLE, "shmid", 1000), vec![32]);
        assert_eq!(owned_ipc_ids(SHM_TABLE, "shmid", 7), Vec::<i32>::new());
        assert_eq!(owned_ipc_ids("", "shmid", 7), Vec::<i32>::new());
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n\
                   \x20 1 44 600 1 4000 4000 4000 4000 0 0\n";
        assert_eq!(owned_ipc_ids(sem, "semid", 4000), vec![44]);
    }

    /// What one sweep of a uid that owns nothing costs (the first lease
    /// of each uid; every lease where dynamic jobs are not confined):
    /// prints the median and p90 of 100 sweeps and the number of entries
    /// in `/tmp`. Run by hand: `cargo nextest run --release -p
    /// tsbridge-sandbox --lib --run-ignored only -E 'test(sweep_cost)'
    /// --no-capture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn sweep_cost() {
        let roots: Vec<&Path> = SHARED_DIRS.iter().map(Path::new).collect();
        let mut t: Vec<std::time::Duration> = (0..100)
            .map(|_| {
                let start = std::time::Instant::now();
                let mut s = sweep(3_910_000_999, &roots);
                sweep_ipc(3_910_000_999, &mut s);
                assert_eq!(s, Swept::default());
                start.elapsed()
            })
            .collect();
        t.sort();
        let n = std::fs::read_dir("/tmp").map(|d| d.count()).unwrap_or(0);
        println!(
            "sweep: median {:?}, p90 {:?}, {n} entries in /tmp",
            t[50], t[90]
        );
    }

    fn chown(p: &Path, uid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(uid)).expect("lchown");
    }

    /// A folder with entries of the swept uid and of others, symbolic
    /// links among them: only what the uid owns goes, links are removed
    /// and never followed, folders of others stay, a folder of the uid
    /// holding another owner's file stays and is reported.
    #[test]
    fn sweep_removes_what_the_uid_owns_and_nothing_else() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: needs root (files of several owners)");
            return;
        }
        const UID: u32 = 3_910_000_900;
        const OTHER: u32 = 3_910_000_901;
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("shared");
        let outside = t.path().join("outside");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let file = |p: &Path, uid: u32| {
            std::fs::write(p, "x").expect("write");
            chown(p, uid);
        };
        let dir = |p: &Path, uid: u32, mode: u32| {
            std::fs::create_dir(p).expect("mkdir");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            chown(p, uid);
        };
        // Targets outside, owned by the uid: links to them must not reach them.
        let target_file = outside.join("target");
        file(&target_file, UID);
        let target_dir = outside.join("dir");
        dir(&target_dir, UID, 0o700);
        file(&target_dir.join("inner"), UID);

        file(&root.join("mine"), UID);
        file(&root.join("theirs"), OTHER);
        file(&root.join("roots"), 0);
        symlink(&target_file, root.join("my-link")).expect("symlink");
        chown(&root.join("my-link"), UID);
        symlink(&target_dir, root.join("their-link")).expect("symlink");
        chown(&root.join("their-link"), OTHER);
        // A tree of the uid: all of it goes.
        dir(&root.join("tree"), UID, 0o700);
        dir(&root.join("tree/sub"), UID, 0o700);
        file(&root.join("tree/sub/f"), UID);
        symlink(&target_dir, root.join("tree/link-to-dir")).expect("symlink");
        chown(&root.join("tree/link-to-dir"), UID);
        // A folder of the uid with another owner's file in it: stays.
        dir(&root.join("mixed"), UID, 0o755);
        file(&root.join("mixed/mine"), UID);
        file(&root.join("mixed/theirs"), OTHER);
        // A world-writable folder of another owner: gone into.
        dir(&root.join("public"), 0, 0o1777);
        file(&root.join("public/mine"), UID);
        file(&root.join("public/theirs"), OTHER);
        // A private folder of another owner: not gone into.
        dir(&root.join("private"), OTHER, 0o700);
        file(&root.join("private/mine"), UID);

        let swept = sweep(UID, &[root.as_path(), Path::new("/nonexistent-tsbridge")]);

        let left = |p: &str| root.join(p).symlink_metadata().is_ok();
        for gone in ["mine", "my-link", "tree", "mixed/mine", "public/mine"] {
            assert!(!left(gone), "{gone} was not removed: {swept:?}");
        }
        for kept in [
            "theirs",
            "roots",
            "their-link",
            "mixed",
            "mixed/theirs",
            "public",
            "public/theirs",
            "private/mine",
        ] {
            assert!(left(kept), "{kept} was removed: {swept:?}");
        }
        assert!(target_file.exists() && target_dir.join("inner").exists());
        assert_eq!(std::fs::metadata(&target_file).expect("target").uid(), UID);
        // mine, my-link, tree/sub/f, tree/sub, tree/link-to-dir, tree,
        // mixed/mine, public/mine.
        assert_eq!(swept.removed, 8, "{swept:?}");
        assert_eq!(swept.kept.len(), 1, "{swept:?}");
        assert!(swept.kept[0].contains("mixed"), "{swept:?}");
    }
}
