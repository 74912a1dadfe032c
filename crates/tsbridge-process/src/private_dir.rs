//! [`PrivateDir`]: a folder of one job's own (its TMPDIR, or the copy of a
//! bundle it runs from), made as the engine makes a private TMPDIR and
//! removed when dropped.

use std::io;
use std::path::{Path, PathBuf};

use tsbridge_sandbox::{JobUser, UidLease};

use crate::supervisor::make_private_tmp_for;

/// A private folder (mode 0700) of a job's user, or of tsbridge for a job
/// without one, removed on drop.
///
/// Made by [`make_private_tmp_for`] (needs CAP_CHOWN for another user's):
/// named as the engine names a private TMPDIR of this process
/// ([`crate::private_tmp_path`]), so the death watchdog removes it if
/// tsbridge is SIGKILLed before the drop.
///
/// The drop removes the folder and all in it (blocking: a journaled file
/// system takes milliseconds). A folder already gone is fine (the job's
/// user owns it and may have removed it); any other failure is logged as a
/// warning, `cannot remove <what>`, and the folder stays. A dynamic uid
/// lease given to [`PrivateDir::holding_lease`] goes back only after that:
/// a later job with the same uid never finds this one's folder.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    /// What the folder is, for the warning of a failed removal ("a job's
    /// TMPDIR").
    what: &'static str,
    lease: Option<UidLease>,
}

impl PrivateDir {
    /// Makes the folder `<base>/tsbridge-<owner tag>-<key>`, owned by
    /// `owner` (tsbridge when `None`), 0700. An existing one is taken over
    /// only if it is a real directory, ours or `owner`'s, private to it (as
    /// [`make_private_tmp_for`] says). `what` names it in the warning of a
    /// failed removal.
    pub fn create(
        base: &Path,
        key: &str,
        owner: Option<JobUser>,
        what: &'static str,
    ) -> io::Result<Self> {
        let path = make_private_tmp_for(base, key, owner.map(|u| (u.uid, u.gid)))?;
        Ok(Self {
            path,
            what,
            lease: None,
        })
    }

    /// Holds `lease` (the job's dynamic uid) until the folder is removed.
    pub fn holding_lease(mut self, lease: Option<UidLease>) -> Self {
        self.lease = lease;
        self
    }

    /// Where the folder is (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove {}", self.what);
        }
        // The folder is gone: only now may the uid go to another job.
        drop(self.lease.take());
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A folder of another user's, as root would make it for a job with
    /// its own user; of this process's user (tsbridge's) otherwise.
    fn owner_for_test() -> Option<JobUser> {
        // SAFETY: geteuid never fails and has no side effects.
        (unsafe { libc::geteuid() } == 0).then_some(JobUser {
            uid: 3_920_000_001,
            gid: 3_920_000_002,
        })
    }

    #[test]
    fn is_made_for_its_owner_private_and_named_for_the_watchdog() {
        let base = tempfile::tempdir().unwrap();
        let owner = owner_for_test();
        let dir = PrivateDir::create(base.path(), "pd-made", owner, "a test folder").unwrap();
        assert_eq!(dir.path(), crate::private_tmp_path(base.path(), "pd-made"));
        let m = std::fs::symlink_metadata(dir.path()).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o700, "{:o}", m.mode());
        // SAFETY: geteuid and getegid never fail and have no side effects.
        let me = unsafe { (libc::geteuid(), libc::getegid()) };
        let (uid, gid) = owner.map_or(me, |u| (u.uid, u.gid));
        assert_eq!((m.uid(), m.gid()), (uid, gid));
    }

    #[test]
    fn is_removed_with_what_it_holds_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let dir =
            PrivateDir::create(base.path(), "pd-drop", owner_for_test(), "a test folder").unwrap();
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("sub")).unwrap();
        std::fs::write(path.join("sub/file"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists(), "{path:?} is still there");
    }

    /// The drop of a folder already gone (the job removed it) logs nothing;
    /// one that cannot be removed is a warning naming it.
    #[test]
    fn a_folder_already_gone_is_dropped_quietly() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let base = tempfile::tempdir().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let gone = PrivateDir::create(base.path(), "pd-gone", None, "the gone folder").unwrap();
            std::fs::remove_dir(gone.path()).unwrap();
            drop(gone);
            // A file in its place: the removal fails (ENOTDIR).
            let odd = PrivateDir::create(base.path(), "pd-odd", None, "the odd folder").unwrap();
            std::fs::remove_dir(odd.path()).unwrap();
            std::fs::write(odd.path(), b"x").unwrap();
            drop(odd);
        });
        let text = logs.text();
        assert!(!text.contains("the gone folder"), "{text}");
        assert!(text.contains("cannot remove the odd folder"), "{text}");
    }

    /// What a test's subscriber writes.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
        type Writer = Logs;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }
}
