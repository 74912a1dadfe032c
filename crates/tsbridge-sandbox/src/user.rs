//! The user a job runs as ([`JobUser`]): resolved once from the system's
//! user and group databases (at config load), switched to in the child
//! after the steps that need privilege (see `docs/design/sandbox.md`,
//! "Own uid"). The job keeps no supplementary group: the uid and one gid,
//! so what it may open is decided by a file's owner, its group and its
//! other bits alone.

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A uid and the gid a job runs with (no supplementary groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobUser {
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for JobUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// Whom a workflow's jobs run as, when not as tsbridge itself: one user
/// for all of them, or a uid per job leased from a range
/// ([`crate::dynamic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunAs {
    /// Every job (and pool worker) as this user.
    User(JobUser),
    /// Each job attempt (and each pool worker) as a uid of its own from
    /// this range, gid = the same number.
    Dynamic(crate::dynamic::UidRange),
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunAs::User(u) => u.fmt(f),
            RunAs::Dynamic(r) => write!(f, "a dynamic uid of {r}"),
        }
    }
}

impl RunAs {
    /// The user to judge file access by (`tsbridge check`): the user, or
    /// [`crate::dynamic::UidRange::representative`].
    pub fn judged_as(&self) -> JobUser {
        match self {
            RunAs::User(u) => *u,
            RunAs::Dynamic(r) => r.representative(),
        }
    }

    /// The user of one job or worker, and the lease that holds its uid
    /// (dynamic only): keep the lease until the job's tree and TMPDIR are
    /// gone. A dynamic uid comes without what an earlier holder left in the
    /// shared folders or System V IPC ([`crate::leftovers`]); one that
    /// still owns something there that cannot be removed is kept out of
    /// circulation (its lease is never given back) and another is leased.
    /// Blocks (reads `/proc`, may sweep folders): call it off async threads.
    pub fn for_job(
        &self,
    ) -> Result<(JobUser, Option<crate::dynamic::UidLease>), crate::dynamic::DynamicUserError> {
        match self {
            RunAs::User(u) => Ok((*u, None)),
            RunAs::Dynamic(r) => loop {
                let lease = crate::dynamic::lease(*r)?;
                let uid = lease.user().uid;
                match crate::leftovers::clear_for_lease(uid) {
                    Ok(_) => return Ok((lease.user(), Some(lease))),
                    Err(kept) => {
                        tracing::warn!(
                            uid,
                            ?kept,
                            "a dynamic uid still owns files or IPC objects that cannot be \
                             removed: it is kept out of circulation until tsbridge restarts"
                        );
                        // Never released: the uid stays leased, so it is
                        // not handed out again (the loop ends once the
                        // range is exhausted).
                        std::mem::forget(lease);
                    }
                }
            },
        }
    }
}

/// Why a `user` setting names no usable user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// Empty, or more than one ':'.
    #[error(
        "expected a user name or uid, optionally with :group, such as \"nobody\", \"1500\" or \"1500:1500\""
    )]
    Malformed,
    /// A name the user database does not know.
    #[error("no user named {0:?} in the user database")]
    UnknownUser(String),
    /// A group name the group database does not know.
    #[error("no group named {0:?} in the group database")]
    UnknownGroup(String),
    /// A uid without a passwd entry and without a group: no gid to take.
    #[error("uid {0} has no entry in the user database: give its group too, such as \"{0}:{0}\"")]
    NoPrimaryGroup(u32),
    /// uid 0: the job would run as root, as without `user`.
    #[error("uid 0 is root, which jobs are without `user` anyway: name an unprivileged user")]
    Root,
    /// The database could not be read.
    #[error("cannot read the {0} database: {1}")]
    Lookup(&'static str, String),
}

impl JobUser {
    /// Resolves `user[:group]`, each a name or a number. A user without
    /// a group gets its passwd entry's primary group; a uid without an
    /// entry needs the group given.
    pub fn resolve(spec: &str) -> Result<JobUser, UserError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) if !g.contains(':') => (u, Some(g)),
            Some(_) => return Err(UserError::Malformed),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(UserError::Malformed);
        }
        let (uid, primary) = match user.parse::<u32>() {
            Ok(uid) => (uid, passwd_by_uid(uid)?.map(|(_, gid)| gid)),
            Err(_) => match passwd_by_name(user)? {
                Some((uid, gid)) => (uid, Some(gid)),
                None => return Err(UserError::UnknownUser(user.to_owned())),
            },
        };
        if uid == 0 {
            return Err(UserError::Root);
        }
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_by_name(g)?.ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
            },
            None => primary.ok_or(UserError::NoPrimaryGroup(uid))?,
        };
        Ok(JobUser { uid, gid })
    }

    /// Whether this user may reach `path` and, with `write`, create files in
    /// it (a folder): every ancestor searchable, the path itself readable
    /// (and writable and searchable). Judged by mode bits, owner and group
    /// (no supplementary groups, as the job runs; ACLs are not read).
    /// `Err` names the first path that stops it.
    pub fn may_use(&self, path: &Path, write: bool) -> Result<(), String> {
        let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        ancestors.reverse();
        for a in ancestors {
            let m = std::fs::metadata(a).map_err(|e| format!("{}: {e}", a.display()))?;
            if !self.allows(m.uid(), m.gid(), m.mode(), 0o1) {
                return Err(format!("{} is not searchable by {self}", a.display()));
            }
        }
        let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let want = match (m.is_dir(), write) {
            (true, true) => 0o3,
            (true, false) => 0o5,
            (false, true) => 0o2,
            (false, false) => 0o4,
        };
        if self.allows(m.uid(), m.gid(), m.mode(), want) {
            Ok(())
        } else {
            let what = if write { "writable" } else { "readable" };
            Err(format!("{} is not {what} by {self}", path.display()))
        }
    }

    /// The class of bits (owner, group or other) that applies to this user
    /// for a file of `owner`:`group` grants every bit of `want` (rwx = 4|2|1).
    pub fn allows(&self, owner: u32, group: u32, mode: u32, want: u32) -> bool {
        let class = if owner == self.uid {
            (mode >> 6) & 0o7
        } else if group == self.gid {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        };
        class & want == want
    }
}

/// Why tsbridge cannot give its jobs another user, judged from its
/// effective uid and effective capability set (bit n = capability n):
/// `setresuid`/`setresgid`/`setgroups` need CAP_SETUID and CAP_SETGID, and
/// giving the job its TMPDIR needs CAP_CHOWN (root has all three unless
/// they were taken away). `None`: it can.
pub fn switch_refusal_for(euid: u32, effective: u64) -> Option<String> {
    const NEEDED: u64 = 1 | (1 << 6) | (1 << 7); // CHOWN, SETGID, SETUID
    if effective & NEEDED == NEEDED {
        return None;
    }
    Some(format!(
        "tsbridge cannot run jobs as another user: it runs as uid {euid} without CAP_SETUID, \
         CAP_SETGID and CAP_CHOWN (start it as root, or grant it those capabilities)"
    ))
}

/// [`switch_refusal_for`] of this process.
pub fn switch_refusal() -> Option<String> {
    let effective = crate::child::effective_capabilities().unwrap_or(0);
    switch_refusal_for(effective_uid(), effective)
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// getpwnam_r / getpwuid_r / getgrnam_r with a growing buffer.
fn lookup<T>(
    db: &'static str,
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Result<Option<T>, UserError> {
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if size < (1 << 20) => size *= 4,
            // "Not found" may come as an errno as well (getpwnam(3)).
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(None),
            (e, _) => {
                return Err(UserError::Lookup(
                    db,
                    std::io::Error::from_raw_os_error(e).to_string(),
                ));
            }
        }
    }
}

fn passwd_by_name(name: &str) -> Result<Option<(u32, u32)>, UserError> {
    let c = CString::new(name).map_err(|_| UserError::UnknownUser(name.to_owned()))?;
    passwd(|pw, buf, out| {
        // SAFETY: every pointer is live and sized as passed.
        unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf.as_mut_ptr(), buf.len(), out) }
    })
}

fn passwd_by_uid(uid: u32) -> Result<Option<(u32, u32)>, UserError> {
    passwd(|pw, buf, out| {
        // SAFETY: every pointer is live and sized as passed.
        unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr(), buf.len(), out) }
    })
}

fn passwd(
    mut call: impl FnMut(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> Result<Option<(u32, u32)>, UserError> {
    lookup("user", |buf| {
        // SAFETY: passwd is plain data; zeroed is a valid value.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let r = call(&mut pw, buf, &mut out);
        let found = (!out.is_null()).then_some((pw.pw_uid, pw.pw_gid));
        (r, found)
    })
}

fn group_by_name(name: &str) -> Result<Option<u32>, UserError> {
    let c = CString::new(name).map_err(|_| UserError::UnknownGroup(name.to_owned()))?;
    let c: &CStr = &c;
    lookup("group", |buf| {
        // SAFETY: group is plain data; zeroed is a valid value.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is live and sized as passed.
        let r =
            unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
        (r, (!out.is_null()).then_some(gr.gr_gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_groups_resolve() {
        assert_eq!(
            JobUser::resolve("1500:1501"),
            Ok(JobUser {
                uid: 1500,
                gid: 1501
            })
        );
        // Every Linux user database has root; "nobody" nearly always.
        assert_eq!(JobUser::resolve("root"), Err(UserError::Root));
        assert_eq!(JobUser::resolve("0:0"), Err(UserError::Root));
        if let Some((uid, gid)) = passwd_by_name("nobody").expect("passwd") {
            assert_eq!(JobUser::resolve("nobody"), Ok(JobUser { uid, gid }));
            assert_eq!(JobUser::resolve(&uid.to_string()), Ok(JobUser { uid, gid }));
            assert_eq!(
                JobUser::resolve("nobody:root"),
                Ok(JobUser { uid, gid: 0 }),
                "a group by name"
            );
        }
    }

    #[test]
    fn unknown_and_malformed_users_are_refused() {
        assert_eq!(
            JobUser::resolve("no-such-user-tsb"),
            Err(UserError::UnknownUser("no-such-user-tsb".into()))
        );
        assert_eq!(
            JobUser::resolve("1500:no-such-group-tsb"),
            Err(UserError::UnknownGroup("no-such-group-tsb".into()))
        );
        // A uid nobody has: no primary group to take.
        assert_eq!(
            JobUser::resolve("3999999999"),
            Err(UserError::NoPrimaryGroup(3_999_999_999))
        );
        for bad in ["", ":", "a:", ":b", "a:b:c"] {
            assert_eq!(JobUser::resolve(bad), Err(UserError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn switching_needs_setuid_setgid_and_chown() {
        let all = 1 | (1 << 6) | (1 << 7);
        assert_eq!(switch_refusal_for(0, u64::MAX), None);
        assert_eq!(switch_refusal_for(1000, all), None, "granted to a non-root");
        for (euid, eff) in [
            (1000, 0),
            (1000, 1 << 7),
            (0, 1 << 6),
            (0, (1 << 6) | (1 << 7)),
            (0, 0),
        ] {
            let why = switch_refusal_for(euid, eff).expect("refused");
            assert!(why.contains(&format!("uid {euid}")), "{why}");
            assert!(why.contains("CAP_SETUID"), "{why}");
        }
    }

    #[test]
    fn mode_bits_decide_by_owner_then_group_then_other() {
        let u = JobUser {
            uid: 1500,
            gid: 1500,
        };
        // Owner bits apply to the owner even when other bits would allow.
        assert!(!u.allows(1500, 0, 0o077, 0o2));
        assert!(u.allows(1500, 0, 0o700, 0o3));
        assert!(u.allows(0, 1500, 0o770, 0o3));
        assert!(!u.allows(0, 1500, 0o757, 0o2), "group bits, not other's");
        assert!(u.allows(0, 0, 0o777, 0o3));
        assert!(!u.allows(0, 0, 0o755, 0o2));
        assert!(u.allows(0, 0, 0o755, 0o5));
    }

    #[test]
    fn may_use_names_the_path_that_stops_the_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        let shut = dir.path().join("shut");
        for (d, mode) in [(&open, 0o777), (&shut, 0o755)] {
            std::fs::create_dir(d).expect("mkdir");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let meta = std::fs::metadata(&open).expect("stat");
        // A user who is neither the owner nor in the group of the test's files.
        let u = JobUser {
            uid: meta.uid().wrapping_add(4711),
            gid: meta.gid().wrapping_add(4711),
        };
        assert_eq!(u.may_use(&open, true), Ok(()));
        let why = u.may_use(&shut, true).expect_err("not writable");
        assert!(
            why.contains("shut") && why.contains("not writable"),
            "{why}"
        );
        assert_eq!(u.may_use(&shut, false), Ok(()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let why = u.may_use(&open, true).expect_err("parent not searchable");
        assert!(why.contains("not searchable"), "{why}");
    }
}
