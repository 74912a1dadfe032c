//! A uid per job, leased from a range tsbridge manages (the idea of
//! systemd's `DynamicUser=`): [`UidRange`] is the range (checked free of
//! the user and group databases when the config is read), [`lease`] hands
//! out one uid of it, with gid = the same number, and [`UidLease`] gives it
//! back when its last clone is dropped. The runtime gives one clone to the
//! job's [`crate::PreparedSandbox`] (dropped after its cgroup was emptied
//! and removed) and one to whatever removes the job's TMPDIR, so a uid goes
//! back only once the job's whole tree and its TMPDIR are gone.
//!
//! Handed out: first every uid of the range this process has not used yet
//! (lowest first), then the least recently released one. Never a uid that
//! any process of the host still has (real, effective, saved or file-system
//! uid, or the same number as a gid: read from `/proc/<pid>/status` at each
//! lease), so a job's process that outlived it (a killed one not reaped yet,
//! a zombie; one that left its cgroup; a host without cgroups) keeps its
//! uid out of circulation until it is gone.
//! The leases are one table per tsbridge process, and each leased uid is
//! also reserved host-wide: an exclusive `flock` of `/run/tsbridge/
//! dynamic-uids/<uid>` ([`DEFAULT_LOCK_DIR`]), held as long as the lease, so
//! two tsbridge processes that share a range never hand out one uid at
//! once (a holder that dies lets go with its descriptors). See
//! `docs/design/sandbox.md`, "A uid per job". Each release of this table
//! wakes those waiting for a uid ([`Leases::released`]); one by another
//! tsbridge wakes nobody.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::{File, TryLockError};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::user::JobUser;

/// systemd's range for dynamic users (`DynamicUser=`): `useradd` never
/// allocates there (login.defs `UID_MAX` is 60000), and `nobody` (65534) and
/// the 16-bit `(uid_t)-1` (65535) lie above it.
pub const DEFAULT_DYNAMIC_UIDS: UidRange = UidRange {
    first: 61184,
    last: 65519,
};

/// Where each leased uid is reserved for the whole host: one file per uid,
/// locked (`flock`, exclusive) while the lease lasts. On the `/run` tmpfs,
/// so it is empty after a boot; root's, mode 0700.
pub const DEFAULT_LOCK_DIR: &str = "/run/tsbridge/dynamic-uids";

/// An inclusive range of uids, written `"FIRST-LAST"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UidRange {
    first: u32,
    last: u32,
}

/// Why a range or a lease cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DynamicUserError {
    /// Not `FIRST-LAST` with FIRST <= LAST.
    #[error("expected a range of uids such as \"61184-65519\" (first-last, first <= last)")]
    Malformed,
    /// uid 0 (root), 65535 or 4294967295 (`(uid_t)-1` of 16 and 32 bits).
    #[error("the range holds uid {0}, which no job may have (root, or a uid that means \"none\")")]
    Reserved(u32),
    /// A uid (or, as the job's gid is the same number, a gid) the system
    /// databases know.
    #[error(
        "the range holds {what} {id} ({name:?}) of the system's {what} database: choose a range no user or group has"
    )]
    Taken {
        what: &'static str,
        id: u32,
        name: String,
    },
    /// Every uid of the range is leased, reserved by another tsbridge of
    /// the host, or still has a process.
    #[error(
        "every uid of the dynamic range {range} is in use ({leased} held by running jobs or workers of this tsbridge, \
         {lingering} by processes still alive or by another tsbridge on this host): widen defaults.dynamic_uids, \
         give each tsbridge of the host a range of its own, or lower the concurrency"
    )]
    Exhausted {
        range: UidRange,
        leased: usize,
        lingering: usize,
    },
    /// The host-wide reservation of a uid could not be made or checked
    /// (its folder is missing and cannot be made, is not root's 0700
    /// folder, or a lock file cannot be opened): no uid is handed out
    /// without one.
    #[error("cannot reserve a dynamic uid for this host in {dir}: {error}")]
    Reserve { dir: String, error: String },
    /// The database could not be read.
    #[error("cannot read the {0} database: {1}")]
    Lookup(&'static str, String),
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = DynamicUserError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .trim()
            .split_once('-')
            .ok_or(DynamicUserError::Malformed)?;
        let first: u32 = a.trim().parse().map_err(|_| DynamicUserError::Malformed)?;
        let last: u32 = b.trim().parse().map_err(|_| DynamicUserError::Malformed)?;
        UidRange::new(first, last)
    }
}

impl UidRange {
    /// `first..=last`; refused when empty or holding a reserved uid.
    pub fn new(first: u32, last: u32) -> Result<Self, DynamicUserError> {
        if first > last {
            return Err(DynamicUserError::Malformed);
        }
        if let Some(r) = [0, 65535, u32::MAX]
            .into_iter()
            .find(|r| (first..=last).contains(r))
        {
            return Err(DynamicUserError::Reserved(r));
        }
        Ok(Self { first, last })
    }

    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn last(&self) -> u32 {
        self.last
    }

    /// How many uids it holds.
    pub fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Never: a range holds at least one uid.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }

    /// Refuses a range that holds a uid of the user database or a gid of
    /// the group database (a job's gid is its uid's number): a job would
    /// otherwise get an account's files. Read by enumeration
    /// (`getpwent_r`, `getgrent_r`), which lists what the NSS modules
    /// enumerate (`files`, systemd's dynamic users; LDAP only when set to).
    pub fn check_free(&self) -> Result<(), DynamicUserError> {
        if let Some((id, name)) = enumerate(Db::Passwd)?
            .into_iter()
            .find(|(id, _)| self.contains(*id))
        {
            return Err(DynamicUserError::Taken {
                what: "user",
                id,
                name,
            });
        }
        if let Some((id, name)) = enumerate(Db::Group)?
            .into_iter()
            .find(|(id, _)| self.contains(*id))
        {
            return Err(DynamicUserError::Taken {
                what: "group",
                id,
                name,
            });
        }
        Ok(())
    }

    /// A uid of the range, as `tsbridge check` judges a dynamic user's
    /// access by: no file of an account has it (the range was checked),
    /// so only "other" bits apply.
    pub fn representative(&self) -> JobUser {
        JobUser {
            uid: self.first,
            gid: self.first,
        }
    }
}

/// One uid of a range, held until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct UidLease(Arc<Held>);

#[derive(Debug)]
struct Held {
    uid: u32,
    table: &'static Leases,
    /// The uid's host-wide reservation (its lock file, locked), let go
    /// when this is dropped: after the table's release, so another
    /// tsbridge cannot take the uid while this table still counts it.
    reserved: Option<File>,
}

impl UidLease {
    /// The uid, with gid = the same number.
    pub fn user(&self) -> JobUser {
        JobUser {
            uid: self.0.uid,
            gid: self.0.uid,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.table.release(self.uid);
        // Let go before the waiters are woken: one woken first would find
        // the uid still reserved, and wait on.
        drop(self.reserved.take());
        self.table.released.notify_waiters();
    }
}

/// Leases a uid of `range` from this process's table ([`Leases::global`]).
pub fn lease(range: UidRange) -> Result<UidLease, DynamicUserError> {
    Leases::global().lease(range, &ids_in_use())
}

/// The lease table of one process.
#[derive(Debug, Default)]
pub struct Leases {
    state: Mutex<State>,
    /// Where uids are reserved for the host ([`DEFAULT_LOCK_DIR`] for the
    /// process's table); `None`: this table's leases only.
    lock_dir: Option<PathBuf>,
    /// Woken at each release: a job waiting for a uid tries again.
    released: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Leased now.
    leased: HashSet<u32>,
    /// Released, least recently first.
    released: VecDeque<u32>,
    /// Per range: the lowest uid not handed out yet.
    fresh: HashMap<UidRange, u64>,
}

static GLOBAL: std::sync::OnceLock<Leases> = std::sync::OnceLock::new();

impl Leases {
    /// This process's table: every executor leases from it, so no uid is
    /// held twice in one tsbridge.
    pub fn global() -> &'static Leases {
        GLOBAL.get_or_init(|| Leases::reserving_in(DEFAULT_LOCK_DIR))
    }

    /// A table whose leases are also reserved for the host in `dir` (made
    /// root's 0700 folder when missing).
    pub fn reserving_in(dir: impl Into<PathBuf>) -> Leases {
        Leases {
            state: Mutex::default(),
            lock_dir: Some(dir.into()),
            released: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is one insert or remove: a poisoned table is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A uid of `range` that is not leased, not in `busy` (the ids some
    /// process has) and not reserved by another table of the host: a fresh
    /// one first, else the least recently released.
    pub fn lease(
        &'static self,
        range: UidRange,
        busy: &HashSet<u32>,
    ) -> Result<UidLease, DynamicUserError> {
        let mut st = self.lock();
        let State {
            leased,
            released,
            fresh,
        } = &mut *st;
        let next = fresh.entry(range).or_insert(u64::from(range.first));
        while *next <= u64::from(range.last) {
            let uid = u32::try_from(*next).unwrap_or(u32::MAX);
            *next += 1;
            if leased.contains(&uid) || released.contains(&uid) {
                continue;
            }
            if !busy.contains(&uid)
                && let Some(reserved) = self.reserve(uid)?
            {
                leased.insert(uid);
                return Ok(self.held(uid, reserved));
            }
            // Someone has it: tried again once released ones are.
            released.push_back(uid);
        }
        let mut i = 0;
        while i < released.len() {
            let uid = released[i];
            if range.contains(uid)
                && !busy.contains(&uid)
                && let Some(reserved) = self.reserve(uid)?
            {
                released.remove(i);
                leased.insert(uid);
                return Ok(self.held(uid, reserved));
            }
            i += 1;
        }
        Err(DynamicUserError::Exhausted {
            range,
            leased: leased.iter().filter(|u| range.contains(**u)).count(),
            lingering: released.iter().filter(|u| range.contains(**u)).count(),
        })
    }

    /// Reserves `uid` for the host: `Ok(None)` when another holder has it.
    /// A table without a lock folder reserves nothing (`Some(None)`).
    fn reserve(&self, uid: u32) -> Result<Option<Option<File>>, DynamicUserError> {
        let Some(dir) = &self.lock_dir else {
            return Ok(Some(None));
        };
        let failed = |error: String| DynamicUserError::Reserve {
            dir: dir.display().to_string(),
            error,
        };
        lock_folder(dir).map_err(failed)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(uid.to_string()))
            .map_err(|e| failed(format!("lock file {uid}: {e}")))?;
        // std's `try_lock` is a non-blocking `flock(LOCK_EX)` on Linux: held
        // by the open file, so a second open (another tsbridge, or another
        // table of this process) is refused, and a holder's death frees it.
        match file.try_lock() {
            Ok(()) => Ok(Some(Some(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(failed(format!("lock file {uid}: {e}"))),
        }
    }

    fn held(&'static self, uid: u32, reserved: Option<File>) -> UidLease {
        UidLease(Arc::new(Held {
            uid,
            table: self,
            reserved,
        }))
    }

    fn release(&self, uid: u32) {
        let mut st = self.lock();
        if st.leased.remove(&uid) {
            st.released.push_back(uid);
        }
    }

    /// Resolves at the next release of a uid of this table (its
    /// reservation let go). Take it (and
    /// [`enable`](tokio::sync::futures::Notified::enable) it) before trying
    /// a lease, so that a release between a failed lease and the wait is
    /// not missed. A uid also comes free when a process outside the table
    /// that had it exits, or another tsbridge lets go of it, which wakes
    /// nobody: a waiter also tries again now and then.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Whether `uid` is leased now.
    pub fn is_leased(&self, uid: u32) -> bool {
        self.lock().leased.contains(&uid)
    }
}

/// How many times this process read the process table for a lease
/// ([`ids_in_use`]).
static SCANS: AtomicU64 = AtomicU64::new(0);

/// How many times this process read the process table for a lease: the
/// cost of waiting for a uid (tests show that a waiter is woken rather
/// than polling).
pub fn process_scans() -> u64 {
    SCANS.load(Ordering::Relaxed)
}

/// Every uid and gid some process of the host has (real, effective, saved,
/// file system), from `/proc/<pid>/status`. A process that is gone between
/// the listing and the read is skipped.
pub fn ids_in_use() -> HashSet<u32> {
    SCANS.fetch_add(1, Ordering::Relaxed);
    let mut ids = HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return ids;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(rest) = line
                .strip_prefix("Uid:")
                .or_else(|| line.strip_prefix("Gid:"))
            {
                ids.extend(
                    rest.split_whitespace()
                        .filter_map(|v| v.parse::<u32>().ok()),
                );
            }
        }
    }
    ids
}

/// Makes `dir` (root's, 0700: nobody else may make or swap its lock
/// files) when missing, and refuses one that is a symlink, not a folder,
/// or open to anyone but its owner, this process's uid.
fn lock_folder(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        " (a tsbridge that is not root needs its parent made for it and \
                         owned by its user, e.g. systemd's RuntimeDirectory=tsbridge)"
                    } else {
                        ""
                    };
                    format!("cannot make it: {e}{hint}")
                })?;
            // `mode` applies to the last folder only (less the umask):
            // made exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot set its mode: {e}"))?;
            lock_folder_checked(dir)
        }
        Err(e) => Err(e.to_string()),
        Ok(_) => lock_folder_checked(dir),
    }
}

fn lock_folder_checked(dir: &Path) -> Result<(), String> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() {
        return Err("it is not a folder (a symlink is refused)".into());
    }
    if m.uid() != me || m.mode() & 0o077 != 0 {
        return Err(format!(
            "it must be a folder of uid {me} with mode 0700 (found uid {}, mode {:o})",
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Db {
    Passwd,
    Group,
}

/// The enumeration state of `getpwent_r`/`getgrent_r` is the process's:
/// one enumeration at a time.
static ENUMERATION: Mutex<()> = Mutex::new(());

/// Every (id, name) of the user or group database.
fn enumerate(db: Db) -> Result<Vec<(u32, String)>, DynamicUserError> {
    let _one = ENUMERATION.lock().unwrap_or_else(PoisonError::into_inner);
    let what = match db {
        Db::Passwd => "user",
        Db::Group => "group",
    };
    // SAFETY: set*ent/end*ent take no arguments; serialized by the lock.
    unsafe {
        match db {
            Db::Passwd => libc::setpwent(),
            Db::Group => libc::setgrent(),
        }
    }
    let mut out = Vec::new();
    let mut size = 4096usize;
    let result = loop {
        let mut buf = vec![0 as libc::c_char; size];
        let (r, found) = match db {
            Db::Passwd => {
                // SAFETY: passwd is plain data; zeroed is a valid value.
                let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
                let mut p: *mut libc::passwd = std::ptr::null_mut();
                // SAFETY: every pointer is live and sized as passed.
                let r = unsafe { libc::getpwent_r(&mut pw, buf.as_mut_ptr(), buf.len(), &mut p) };
                // SAFETY: on success pw_name points into buf, NUL-terminated.
                let found = (!p.is_null() && !pw.pw_name.is_null()).then(|| {
                    let n = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
                    (pw.pw_uid, n.to_string_lossy().into_owned())
                });
                (r, found)
            }
            Db::Group => {
                // SAFETY: group is plain data; zeroed is a valid value.
                let mut gr: libc::group = unsafe { std::mem::zeroed() };
                let mut p: *mut libc::group = std::ptr::null_mut();
                // SAFETY: every pointer is live and sized as passed.
                let r = unsafe { libc::getgrent_r(&mut gr, buf.as_mut_ptr(), buf.len(), &mut p) };
                // SAFETY: on success gr_name points into buf, NUL-terminated.
                let found = (!p.is_null() && !gr.gr_name.is_null()).then(|| {
                    let n = unsafe { std::ffi::CStr::from_ptr(gr.gr_name) };
                    (gr.gr_gid, n.to_string_lossy().into_owned())
                });
                (r, found)
            }
        };
        match (r, found) {
            (0, Some(entry)) => out.push(entry),
            (0, None) | (libc::ENOENT, _) => break Ok(out),
            // The entry did not fit: read it again with a larger buffer.
            (libc::ERANGE, _) if size < (1 << 20) => size *= 4,
            (e, _) => {
                break Err(DynamicUserError::Lookup(
                    what,
                    std::io::Error::from_raw_os_error(e).to_string(),
                ));
            }
        }
    };
    // SAFETY: as above.
    unsafe {
        match db {
            Db::Passwd => libc::endpwent(),
            Db::Group => libc::endgrent(),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static Leases {
        Box::leak(Box::default())
    }

    #[test]
    fn ranges_parse_and_refuse_reserved_uids() {
        assert_eq!("61184-65519".parse::<UidRange>(), Ok(DEFAULT_DYNAMIC_UIDS));
        assert_eq!("7-7".parse::<UidRange>().map(|r| r.len()), Ok(1));
        for bad in ["", "5", "9-5", "a-b", "-5", "5-"] {
            assert_eq!(
                bad.parse::<UidRange>(),
                Err(DynamicUserError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            "0-10".parse::<UidRange>(),
            Err(DynamicUserError::Reserved(0))
        );
        assert_eq!(
            "65000-65535".parse::<UidRange>(),
            Err(DynamicUserError::Reserved(65535))
        );
    }

    /// Every Linux user database has root (uid 0, group 0), which a range
    /// cannot hold; a range far from every account is free.
    #[test]
    fn a_range_holding_an_account_is_refused() {
        let users = enumerate(Db::Passwd).expect("passwd");
        let (uid, name) = users
            .iter()
            .find(|(u, _)| *u != 0 && *u != 65535)
            .cloned()
            .expect("an account besides root");
        let r = UidRange::new(uid, uid).expect("range");
        match r.check_free() {
            Err(DynamicUserError::Taken { what, id, name: n }) => {
                assert_eq!((what, id), ("user", uid));
                assert_eq!(n, name);
            }
            // The group database may be read first on some hosts: not here.
            other => panic!("{other:?}"),
        }
    }

    /// Fresh uids first, lowest first; then the least recently released;
    /// never one some process has; exhausted says so.
    #[test]
    fn leases_take_fresh_then_least_recently_released() {
        let t = table();
        let r = UidRange::new(4_000_000_000, 4_000_000_002).expect("range");
        let none = HashSet::new();
        let a = t.lease(r, &none).expect("a");
        let b = t.lease(r, &none).expect("b");
        let c = t.lease(r, &none).expect("c");
        assert_eq!(
            [a.user().uid, b.user().uid, c.user().uid],
            [4_000_000_000, 4_000_000_001, 4_000_000_002]
        );
        assert_eq!(a.user().gid, a.user().uid);
        match t.lease(r, &none) {
            Err(DynamicUserError::Exhausted {
                leased: 3,
                lingering: 0,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // A clone keeps the uid leased.
        let b2 = b.clone();
        drop(b);
        assert!(t.is_leased(4_000_000_001));
        drop(b2);
        drop(c);
        assert!(!t.is_leased(4_000_000_001));
        // Released b, then c: b comes back first.
        let d = t.lease(r, &none).expect("d");
        assert_eq!(d.user().uid, 4_000_000_001);
        // c is released but a process still has it: not handed out.
        let busy: HashSet<u32> = [4_000_000_002].into();
        match t.lease(r, &busy) {
            Err(DynamicUserError::Exhausted {
                leased: 2,
                lingering: 1,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let e = t.lease(r, &none).expect("e");
        assert_eq!(e.user().uid, 4_000_000_002);
        drop(a);
    }

    /// A fresh uid that some process has is skipped, and handed out once
    /// no process has it.
    #[test]
    fn a_busy_fresh_uid_waits() {
        let t = table();
        let r = UidRange::new(4_000_000_100, 4_000_000_101).expect("range");
        let busy: HashSet<u32> = [4_000_000_100].into();
        let a = t.lease(r, &busy).expect("a");
        assert_eq!(a.user().uid, 4_000_000_101);
        assert!(t.lease(r, &busy).is_err());
        let b = t.lease(r, &HashSet::new()).expect("b");
        assert_eq!(b.user().uid, 4_000_000_100);
    }

    /// Two tsbridge processes on one host (two tables reserving in one
    /// folder: a `flock` is held by its open file, so two opens conflict
    /// in one process as in two) never hold one uid at once; a uid freed
    /// by one goes to the other.
    #[test]
    fn two_tables_of_a_host_never_hold_one_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let locks = dir.path().join("run/tsbridge/dynamic-uids");
        let one: &'static Leases = Box::leak(Box::new(Leases::reserving_in(&locks)));
        let two: &'static Leases = Box::leak(Box::new(Leases::reserving_in(&locks)));
        let r = UidRange::new(4_000_000_200, 4_000_000_201).expect("range");
        let none = HashSet::new();
        let a = one.lease(r, &none).expect("a");
        let b = two.lease(r, &none).expect("b");
        assert_eq!([a.user().uid, b.user().uid], [4_000_000_200, 4_000_000_201]);
        // The other table holds the rest: exhausted, not shared.
        match one.lease(r, &none) {
            Err(DynamicUserError::Exhausted { leased: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(two.lease(r, &none).is_err());
        // Let go by one, taken by the other.
        drop(a);
        let c = two.lease(r, &none).expect("c");
        assert_eq!(c.user().uid, 4_000_000_200);
        assert!(one.lease(r, &none).is_err());
        // The folder was made root's (this uid's) 0700.
        let m = std::fs::metadata(&locks).expect("lock folder");
        assert_eq!(m.mode() & 0o777, 0o700);
        drop((b, c));
    }

    /// A lock folder that another user could write (or a symlink) is
    /// refused: its lock files could be swapped under the leases.
    #[test]
    fn an_open_lock_folder_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        let r = UidRange::new(4_000_000_300, 4_000_000_300).expect("range");
        for bad in [open, link] {
            let t: &'static Leases = Box::leak(Box::new(Leases::reserving_in(&bad)));
            match t.lease(r, &HashSet::new()) {
                Err(e @ DynamicUserError::Reserve { .. }) => {
                    assert!(e.to_string().contains(&bad.display().to_string()), "{e}")
                }
                other => panic!("{}: {other:?}", bad.display()),
            }
            assert!(!t.is_leased(4_000_000_300));
        }
    }

    /// A release wakes a waiter that took its signal before its failed
    /// lease, once the uid's reservation is let go: the waiter, woken on
    /// another thread, gets the uid at its first try.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_wakes_a_waiter_that_then_gets_the_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t: &'static Leases = Box::leak(Box::new(Leases::reserving_in(dir.path().join("l"))));
        let r = UidRange::new(4_000_000_400, 4_000_000_400).expect("range");
        let a = t.lease(r, &HashSet::new()).expect("a");
        let (tried, mut told) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn(async move {
            let mut released = std::pin::pin!(t.released());
            released.as_mut().enable();
            assert!(t.lease(r, &HashSet::new()).is_err());
            let _ = tried.send(());
            released.await;
            t.lease(r, &HashSet::new())
        });
        (&mut told).await.expect("the waiter tried");
        drop(a);
        let b = tokio::time::timeout(std::time::Duration::from_secs(60), waiter)
            .await
            .expect("woken by the release")
            .expect("task")
            .expect("the uid at the first try after the wake-up");
        assert_eq!(b.user().uid, 4_000_000_400);
    }

    /// What the process check of one lease costs: prints the median and
    /// p90 of 200 scans and the number of processes. Run by hand:
    /// `cargo nextest run -p tsbridge-sandbox --lib --run-ignored only
    /// -E 'test(scan_cost)' --no-capture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn scan_cost() {
        let mut times: Vec<std::time::Duration> = (0..200)
            .map(|_| {
                let t = std::time::Instant::now();
                std::hint::black_box(ids_in_use());
                t.elapsed()
            })
            .collect();
        times.sort();
        let procs = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter(|e| {
                e.file_name()
                    .as_encoded_bytes()
                    .iter()
                    .all(u8::is_ascii_digit)
            })
            .count();
        println!(
            "ids_in_use: median {:?}, p90 {:?}, {procs} processes",
            times[100], times[180]
        );
    }

    #[test]
    fn ids_in_use_has_this_process() {
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert!(ids_in_use().contains(&me));
    }
}
