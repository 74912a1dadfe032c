//! Job cgroups: creation under tsbridge's own cgroup (v2 unified or v1
//! per-controller hierarchies), limits, membership, stats, whole-tree kill and
//! removal. Everything here runs in the parent; the child only writes to the
//! join files opened by [`JobCgroup::open_join_fds`], unless it was created
//! in its v2 directory ([`JobCgroup::open_v2_dir_fd`]).

mod discover;
mod fs;
mod host;
pub use host::job_cgroup_prefix;
mod live;
mod stats;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

pub(crate) use discover::{Discovered, discover, own_v2_dir, parse_mountinfo};
pub(crate) use fs::FsKind;
pub(crate) use host::{CgroupHost, CgroupLimits};
pub(crate) use live::{LiveJobs, LiveToken};
pub use stats::{CgroupStats, LimitBreach, LimitEvents, V8_HEAP_OOM_MARKER};

use fs::{read_key, tree};

/// A cgroup controller tsbridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
    /// v1 only (v2 reports usage in `cpu.stat`).
    Cpuacct,
    /// v1 only (v2 has `cgroup.freeze` / `cgroup.kill` in every cgroup).
    Freezer,
}

impl Controller {
    /// The controller's name in cgroupfs (v1 and v2 alike).
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpu => "cpu",
            Self::Cpuacct => "cpuacct",
            Self::Freezer => "freezer",
        }
    }

    pub(crate) fn from_v1_name(name: &str) -> Option<Self> {
        Some(match name {
            "memory" => Self::Memory,
            "pids" => Self::Pids,
            "cpu" => Self::Cpu,
            "cpuacct" => Self::Cpuacct,
            "freezer" => Self::Freezer,
            _ => return None,
        })
    }
}

/// Which cgroup interface a job cgroup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    V2,
    V1,
    None,
}

/// How a child joins its job's cgroups between fork and exec: which file
/// of each job directory it writes, and what. (On v2 the engine creates the
/// child in the job's directory with `clone3(CLONE_INTO_CGROUP)` and the
/// child writes nothing; `ProcsPid` is the fallback where clone3 cannot.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinBy {
    /// v2: its pid to `cgroup.procs` (a v2 thread cannot move to another
    /// domain on its own through `cgroup.threads`).
    ProcsPid,
    /// v1: `0` to `tasks`, which moves the calling thread: the whole
    /// process, since a freshly forked child has one thread. Moving a
    /// single thread named by `0` is the one migration for which the kernel
    /// skips the global `cgroup_threadgroup_rwsem` write lock (taken for any
    /// `cgroup.procs` write, or a `tasks` write naming a pid), whose
    /// percpu-rwsem writer waits for an RCU grace period: about 13-16 ms per
    /// job on the development host (BENCHMARKS.md, "Joining v1 cgroups").
    TasksSelf,
}

impl JoinBy {
    /// The file of each job directory the child writes.
    pub(crate) fn file(self) -> &'static str {
        match self {
            JoinBy::ProcsPid => "cgroup.procs",
            JoinBy::TasksSelf => "tasks",
        }
    }
}

/// One v1 hierarchy's directory of a job (or of the parent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V1Dir {
    pub controllers: Vec<Controller>,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    V2 { dir: PathBuf },
    V1 { dirs: Vec<V1Dir> },
}

/// The cgroup(s) of one job: one directory (v2) or one per v1 hierarchy.
#[derive(Debug)]
pub struct JobCgroup {
    key: String,
    fs: FsKind,
    layout: Layout,
    /// Counts this handle among its sandbox's live job cgroups (none for a
    /// swept one).
    live: Option<LiveToken>,
}

/// How long `kill_all` keeps trying before it gives up.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

impl JobCgroup {
    pub(crate) fn new_v2(key: &str, fs: FsKind, dir: PathBuf) -> Self {
        Self {
            key: key.to_owned(),
            fs,
            layout: Layout::V2 { dir },
            live: None,
        }
    }

    pub(crate) fn new_v1(key: &str, fs: FsKind, dirs: Vec<V1Dir>) -> Self {
        Self {
            key: key.to_owned(),
            fs,
            layout: Layout::V1 { dirs },
            live: None,
        }
    }

    /// Counted among a sandbox's live job cgroups until dropped.
    pub(crate) fn track(mut self, token: LiveToken) -> Self {
        self.live = Some(token);
        self
    }

    /// The job key this cgroup was created for.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// V2 or V1.
    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V2 { .. } => CgroupVersion::V2,
            Layout::V1 { .. } => CgroupVersion::V1,
        }
    }

    /// Every directory of this job (one for v2).
    pub fn dirs(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V2 { dir } => vec![dir.as_path()],
            Layout::V1 { dirs } => dirs.iter().map(|d| d.dir.as_path()).collect(),
        }
    }

    fn dir_of(&self, c: Controller) -> Option<&Path> {
        match &self.layout {
            Layout::V2 { dir } => Some(dir),
            Layout::V1 { dirs } => dirs
                .iter()
                .find(|d| d.controllers.contains(&c))
                .map(|d| d.dir.as_path()),
        }
    }

    /// How a child joins this job (see [`JoinBy`]).
    pub(crate) fn join_by(&self) -> JoinBy {
        match self.layout {
            Layout::V2 { .. } => JoinBy::ProcsPid,
            Layout::V1 { .. } => JoinBy::TasksSelf,
        }
    }

    /// Open the join file ([`JoinBy::file`]) of every directory of the job
    /// for writing (O_CLOEXEC), so the child can join with a bare
    /// `write(2)` between fork and exec.
    pub(crate) fn open_join_fds(&self) -> io::Result<Vec<OwnedFd>> {
        let file = self.join_by().file();
        self.dirs()
            .into_iter()
            .map(|d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(self.fs == FsKind::Plain)
                    .truncate(false)
                    .open(d.join(file))?;
                Ok(OwnedFd::from(f))
            })
            .collect()
    }

    /// v2: the job's directory opened `O_PATH | O_DIRECTORY | O_CLOEXEC`, for
    /// `clone3(CLONE_INTO_CGROUP)`, which creates the child inside it (no
    /// migration, so none of the global lock a `cgroup.procs` write takes).
    /// `None` on v1, which has no such thing.
    pub(crate) fn open_v2_dir_fd(&self) -> io::Result<Option<OwnedFd>> {
        use std::os::unix::fs::OpenOptionsExt;
        match &self.layout {
            Layout::V2 { dir } => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                    .open(dir)?;
                Ok(Some(OwnedFd::from(f)))
            }
            Layout::V1 { .. } => Ok(None),
        }
    }

    /// Every process in the job and in any cgroup below it, setsid'd and
    /// reparented ones included. Sorted, without duplicates.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let mut pids = Vec::new();
        let mut any_ok = false;
        let mut last_err = None;
        for d in self.dirs() {
            for sub in tree(d) {
                match self.fs.read(&sub.join("cgroup.procs")) {
                    Ok(text) => {
                        any_ok = true;
                        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                    }
                    Err(e) => last_err = Some(e),
                }
            }
        }
        if !any_ok && let Some(e) = last_err {
            return Err(e);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Send `sig` to every process of the job (one pass, no freezing): the
    /// graceful phase of a termination.
    pub fn signal_all(&self, sig: i32) -> io::Result<()> {
        for pid in self.pids()? {
            send(pid, sig);
        }
        Ok(())
    }

    /// Kill every process of the job and wait (bounded) until the cgroup is empty.
    /// v2: `cgroup.kill` (or `cgroup.freeze` on kernels before 5.14);
    /// v1: freezer FROZEN -> SIGKILL all -> THAWED, repeated until empty.
    pub fn kill_all(&self) -> io::Result<()> {
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            match &self.layout {
                Layout::V2 { dir } => {
                    let kill = dir.join("cgroup.kill");
                    if self.fs.exists(&kill) {
                        self.fs.write(&kill, "1")?;
                    } else if self.fs.exists(&dir.join("cgroup.freeze")) {
                        self.freeze_kill_thaw_v2(dir)?;
                    } else {
                        self.signal_all(libc::SIGKILL)?;
                    }
                }
                Layout::V1 { .. } => match self.dir_of(Controller::Freezer) {
                    Some(fz) => self.freeze_kill_thaw_v1(fz)?,
                    None => self.signal_all(libc::SIGKILL)?,
                },
            }
            // SIGKILLed tasks leave cgroup.procs as soon as they exit.
            if self.wait_empty(Duration::from_millis(500))? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("job cgroup {} still has processes after kill", self.key),
                ));
            }
        }
    }

    fn freeze_kill_thaw_v1(&self, fz: &Path) -> io::Result<()> {
        let state = fz.join("freezer.state");
        self.fs.write(&state, "FROZEN")?;
        // A task in uninterruptible sleep can hold the cgroup in FREEZING: go on
        // after a while anyway (SIGKILL still lands on thaw).
        poll(Duration::from_secs(1), || {
            self.fs
                .read(&state)
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(true)
        });
        let r = self.signal_all(libc::SIGKILL);
        self.fs.write(&state, "THAWED")?;
        r
    }

    fn freeze_kill_thaw_v2(&self, dir: &Path) -> io::Result<()> {
        let freeze = dir.join("cgroup.freeze");
        self.fs.write(&freeze, "1")?;
        poll(Duration::from_secs(1), || {
            read_key(self.fs, &dir.join("cgroup.events"), "frozen") != Some(0)
        });
        let r = self.signal_all(libc::SIGKILL);
        self.fs.write(&freeze, "0")?;
        r
    }

    /// Polls until no process is left; `Ok(false)` on timeout.
    fn wait_empty(&self, timeout: Duration) -> io::Result<bool> {
        let start = Instant::now();
        loop {
            if self.pids()?.is_empty() {
                return Ok(true);
            }
            if start.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resource usage of the job so far (missing files give `None`).
    pub fn stats(&self) -> CgroupStats {
        match &self.layout {
            Layout::V2 { dir } => stats::read_v2(self.fs, dir),
            Layout::V1 { .. } => stats::read_v1(
                self.fs,
                self.dir_of(Controller::Memory),
                self.dir_of(Controller::Pids),
                self.dir_of(Controller::Cpu),
                self.dir_of(Controller::Cpuacct),
            ),
        }
    }

    /// The job's counters of OOM kills and refused forks so far (two
    /// reads, where [`JobCgroup::stats`] makes nine).
    pub fn limit_events(&self) -> LimitEvents {
        match &self.layout {
            Layout::V2 { dir } => stats::limit_events_v2(self.fs, dir),
            Layout::V1 { .. } => stats::limit_events_v1(
                self.fs,
                self.dir_of(Controller::Memory),
                self.dir_of(Controller::Pids),
            ),
        }
    }

    /// Remove every directory of the job. If processes are still inside
    /// (EBUSY), kill them and retry a few times.
    pub fn remove(self) -> io::Result<()> {
        let mut last = None;
        for attempt in 0..10u64 {
            let mut busy = None;
            for d in self.dirs() {
                match self.fs.remove_tree(d) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy = Some(e),
                    Err(e) => return Err(e),
                }
            }
            match busy {
                None => return Ok(()),
                Some(e) => {
                    last = Some(e);
                    let _ = self.kill_all();
                    std::thread::sleep(Duration::from_millis(20 * (attempt + 1)));
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)))
    }
}

fn send(pid: i32, sig: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory effects; a pid that has exited gives ESRCH,
    // which is ignored. pid > 0, so this never addresses a process group.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Poll `cond` every few ms until it holds or `timeout` passes.
fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests;
