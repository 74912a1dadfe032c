//! Process-wide supervision: [`init_supervisor`] (called once by the binary
//! at startup: child subreaper + orphan reaper), the registry of live jobs,
//! and [`shutdown_all`] which ends every running job (TERM, grace, KILL) and
//! removes the temp files the engine created (per-job TMPDIRs).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::{ProcessControl, StopReason};
use crate::registry;
use crate::spec::JobKey;

/// What [`init_supervisor`] set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisorInfo {
    /// tsbridge is a child subreaper: orphaned descendants of jobs (e.g.
    /// `setsid` double-fork daemons) are reparented to it, found by the
    /// descendant tracker and reaped by the orphan reaper.
    pub subreaper: bool,
    /// A death watchdog runs (see [`SupervisorOptions::watchdog`]).
    pub watchdog: bool,
}

/// What [`init_supervisor_with`] sets up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisorOptions {
    /// Fork a watchdog that, if this process dies without ending its jobs
    /// (SIGKILL, a crash), SIGKILLs every process still carrying its owner
    /// tag at once: a job's grandchildren and `setsid` escapees, which the
    /// parent-death signal does not reach (SPEC §4). Without it they live
    /// until the next start's [`sweep_orphans`]. Default: on.
    pub watchdog: bool,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self { watchdog: true }
    }
}

/// Makes tsbridge a child subreaper (`PR_SET_CHILD_SUBREAPER`) and starts the
/// background orphan reaper (reaps adopted zombies of jobs by their specific
/// pids; never `waitpid(-1)`). Call once at startup, inside the tokio runtime.
/// Without it the engine still works: orphans then live under PID 1 and are
/// found at termination by a full `/proc` scan for the job marker.
/// With the death watchdog ([`SupervisorOptions::default`]).
pub fn init_supervisor() -> io::Result<SupervisorInfo> {
    init_supervisor_with(SupervisorOptions::default())
}

/// [`init_supervisor`] with options. The watchdog is started once per
/// process; if it cannot be forked, a warning is logged and
/// [`SupervisorInfo::watchdog`] says so.
pub fn init_supervisor_with(opts: SupervisorOptions) -> io::Result<SupervisorInfo> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    registry::set_subreaper();
    registry::start_background_reaper();
    let watchdog = opts.watchdog && start_watchdog_once();
    Ok(SupervisorInfo {
        subreaper: true,
        watchdog,
    })
}

fn start_watchdog_once() -> bool {
    static STARTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| {
        match crate::spawner::call(crate::watchdog::fork_watchdog).and_then(|r| r) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "no death watchdog: a job's grandchildren would outlive a SIGKILLed tsbridge until its next start");
                false
            }
        }
    })
}

/// `<pid>.<start time>` of this process (the value of [`crate::spec::OWNER_ENV`]):
/// the sandbox's instance tag, which names this process's job cgroups too.
pub(crate) fn owner_tag() -> &'static str {
    tsbridge_sandbox::instance_tag()
}

/// Kills (SIGKILL) every process started by a tsbridge that is no longer
/// running: processes whose [`crate::spec::OWNER_ENV`] names a pid that is
/// gone or now belongs to another process (different start time). Call at
/// startup: after tsbridge was SIGKILLed, the parent-death signal only ended
/// each job's direct child; its descendants (setsid ones included) still
/// carry the owner tag. Returns how many processes were killed.
pub fn sweep_orphans() -> usize {
    let prefix = format!("{}=", crate::spec::OWNER_ENV);
    let me = crate::sys::self_pid();
    let mut killed = 0;
    for pid in crate::sys::all_pids() {
        if pid == me {
            continue;
        }
        let Some(st) = crate::sys::read_stat(pid) else {
            continue;
        };
        if st.is_zombie() {
            continue;
        }
        let Some(owner) = crate::sys::environ_value(pid, prefix.as_bytes()) else {
            continue;
        };
        if owner_alive(&owner) {
            continue;
        }
        let p = crate::sys::ProcRef {
            pid,
            start: st.start,
        };
        if matches!(
            crate::sys::signal_proc(p, rustix::process::Signal::KILL),
            Ok(true)
        ) {
            killed += 1;
        }
    }
    killed
}

fn owner_alive(tag: &str) -> bool {
    let Some((pid, start)) = tag.split_once('.') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    crate::sys::Pid::new(pid)
        .and_then(crate::sys::read_stat)
        .is_some_and(|st| st.start == start && !st.is_zombie())
}

struct Entry {
    control: ProcessControl,
    done: tokio::sync::watch::Receiver<bool>,
}

struct Live {
    jobs: HashMap<JobKey, Entry>,
    tmpdirs: Vec<PathBuf>,
}

static LIVE: Mutex<Option<Live>> = Mutex::new(None);

fn live() -> MutexGuard<'static, Option<Live>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn with_live<R>(f: impl FnOnce(&mut Live) -> R) -> R {
    let mut g = live();
    let l = g.get_or_insert_with(|| Live {
        jobs: HashMap::new(),
        tmpdirs: Vec::new(),
    });
    f(l)
}

/// Keeps a job in the registry until dropped (when its outcome is ready).
#[derive(Debug)]
pub(crate) struct Registration {
    key: JobKey,
    done: tokio::sync::watch::Sender<bool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.done.send(true);
        with_live(|l| l.jobs.remove(&self.key));
    }
}

pub(crate) fn register(key: &JobKey, control: ProcessControl) -> Registration {
    let (tx, rx) = tokio::sync::watch::channel(false);
    with_live(|l| {
        l.jobs.insert(key.clone(), Entry { control, done: rx });
    });
    Registration {
        key: key.clone(),
        done: tx,
    }
}

/// How many jobs the engine is running now.
pub fn live_jobs() -> usize {
    with_live(|l| l.jobs.len())
}

/// What [`shutdown_all`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs that were running and were stopped.
    pub stopped: usize,
    /// Jobs that had still not ended when the wait bound expired.
    pub still_running: usize,
    /// Private TMPDIRs removed.
    pub tmpdirs_removed: usize,
}

/// Stops every running job with reason `shutdown` (TERM, `grace`, KILL, for
/// the whole tree of each), waits until they have ended (bounded by
/// `grace` + 15 s), then removes every private TMPDIR the engine created.
pub async fn shutdown_all(grace: Duration) -> ShutdownReport {
    let entries: Vec<(ProcessControl, tokio::sync::watch::Receiver<bool>)> = with_live(|l| {
        l.jobs
            .values()
            .map(|e| (e.control.clone(), e.done.clone()))
            .collect()
    });
    let stopped = entries.len();
    for (c, _) in &entries {
        c.stop(StopReason::Shutdown, Some(grace));
    }
    let deadline = Instant::now() + grace + Duration::from_secs(15);
    let mut still_running = 0;
    for (_, mut done) in entries {
        let left = deadline.saturating_duration_since(Instant::now());
        let ended = matches!(
            tokio::time::timeout(left, done.wait_for(|d| *d)).await,
            Ok(Ok(_))
        );
        if !ended && !*done.borrow() {
            still_running += 1;
        }
    }
    let dirs: Vec<PathBuf> = with_live(|l| std::mem::take(&mut l.tmpdirs));
    let mut tmpdirs_removed = 0;
    for d in dirs {
        if std::fs::remove_dir_all(&d).is_ok() {
            tmpdirs_removed += 1;
        }
    }
    ShutdownReport {
        stopped,
        still_running,
        tmpdirs_removed,
    }
}

/// The start of the names of this process's private TMPDIRs:
/// `tsbridge-<owner tag>-`.
pub(crate) fn private_tmp_prefix() -> String {
    format!("tsbridge-{}-", owner_tag())
}

/// Where the private TMPDIR of job `key` is made in `base`:
/// `<base>/tsbridge-<owner tag>-<key>`. The owner tag (`<pid>.<start
/// time>` of this process) tells the death watchdog which to remove if
/// this process is SIGKILLed, and the next start's [`sweep_stale_tmp`]
/// which were left by a tsbridge that is gone.
pub fn private_tmp_path(base: &Path, key: &str) -> PathBuf {
    base.join(format!("{}{key}", private_tmp_prefix()))
}

/// Creates the private TMPDIR of job `key` in `base` (see
/// [`private_tmp_path`]), mode 0700, after telling the death watchdog
/// about `base`. An existing one is accepted only if it is a real
/// directory of ours, private to us (a caller may make it first: the
/// sandbox needs it to exist to grant it to Landlock). The caller removes
/// it when the job is over.
pub fn make_private_tmp(base: &Path, key: &str) -> io::Result<PathBuf> {
    make_private_tmp_for(base, key, None)
}

/// [`make_private_tmp`] for a job that runs as `owner` (uid, gid): the
/// directory is then that user's, still 0700 (needs CAP_CHOWN). An existing
/// one may already be that user's (the sandbox made it first).
pub fn make_private_tmp_for(
    base: &Path,
    key: &str,
    owner: Option<(u32, u32)>,
) -> io::Result<PathBuf> {
    let base = std::path::absolute(base)?;
    crate::watchdog::watch_tmp_base(&base);
    let dir = private_tmp_path(&base, key);
    match std::fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => {}
        // A caller may have made it first (the sandbox needs it to exist to
        // grant it to Landlock): accept it only if it is a real directory
        // of ours, private to us.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(&dir)?;
            // SAFETY: geteuid never fails and has no side effects.
            let me = unsafe { libc::geteuid() };
            let by = m.uid() == me || owner.is_some_and(|(uid, _)| uid == m.uid());
            if !m.file_type().is_dir() || !by || m.mode() & 0o077 != 0 {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))?;
    }
    // The umask may have narrowed it further; make it exactly 0700.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// [`make_private_tmp_for`], recorded for [`shutdown_all`].
pub(crate) fn create_private_tmp(
    base: &Path,
    key: &JobKey,
    owner: Option<(u32, u32)>,
) -> io::Result<PathBuf> {
    let dir = make_private_tmp_for(base, key.as_str(), owner)?;
    with_live(|l| l.tmpdirs.push(dir.clone()));
    Ok(dir)
}

/// Removes the private TMPDIRs in `base` of every tsbridge that is no
/// longer running (names `tsbridge-<pid>.<start time>-<key>` whose owner
/// tag names a pid that is gone or now another process), owned by this
/// user. Call at startup: the death watchdog removes them when a tsbridge
/// is SIGKILLed, but it may have been killed too, or unable to finish.
/// Also the flat names of builds before the owner tag whose key was
/// generated (`tsbridge-j<pid>-<n>-<8 hex>`, [`JobKey::generate`]: the pid
/// is the tsbridge's) when no process has that pid (a pid in use, maybe
/// by another process now, keeps it); `tsbridge-<job id>-<attempt>` names
/// tell no owner and are left. `remove_dir_all` does not follow symlinks.
/// As root, whoever owns them: the TMPDIR of a job with its own user is
/// that user's. Returns how many it removed.
pub fn sweep_stale_tmp(base: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    // SAFETY: geteuid never fails and has no side effects.
    let me = unsafe { libc::geteuid() };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("tsbridge-")) else {
            continue;
        };
        if !owner_gone(rest) {
            continue;
        }
        let path = e.path();
        let ours = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir() && (m.uid() == me || me == 0));
        if ours && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether the TMPDIR named `tsbridge-<rest>` is of a tsbridge that is
/// gone (see [`sweep_stale_tmp`]); `false` when its name tells no owner.
fn owner_gone(rest: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((owner, _key)) = rest.split_once('-') else {
        return false;
    };
    if let Some((pid, start)) = owner.split_once('.') {
        return numeric(pid) && numeric(start) && !owner_alive(owner);
    }
    // A flat generated key: `j<pid>-<n>-<8 hex>`.
    let mut parts = rest.split('-');
    let (Some(pid), Some(n), Some(r), None) = (
        parts.next().and_then(|p| p.strip_prefix('j')),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let hex8 = r.len() == 8 && r.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    numeric(pid)
        && numeric(n)
        && hex8
        && pid
            .parse::<i32>()
            .ok()
            .and_then(crate::sys::Pid::new)
            .is_some_and(|p| !std::path::Path::new(&format!("/proc/{}", p.raw())).exists())
}

/// Removes a private TMPDIR (after the job's tree is gone).
pub(crate) fn remove_private_tmp(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot remove job TMPDIR");
    }
    with_live(|l| l.tmpdirs.retain(|d| d != dir));
}
