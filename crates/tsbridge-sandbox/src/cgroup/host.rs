//! The host side of cgroups: tsbridge's parent cgroup (`<own cgroup>/<name>`)
//! per hierarchy, creation of job cgroups with their limits, and the sweep of
//! job cgroups left behind by a crashed tsbridge.

use std::io;
use std::path::{Path, PathBuf};

use super::fs::{FsKind, subdirs};
use super::{CgroupVersion, Controller, JobCgroup, V1Dir};
use crate::error::SandboxError;

/// The limits written into a job cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CgroupLimits {
    pub memory: Option<u64>,
    pub cpu: Option<f64>,
    pub pids: Option<u64>,
}

/// CFS period used for the CPU quota (100 ms, the kernel default).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// `cores` as a quota per [`CPU_PERIOD_US`] (at least 1 ms, the kernel minimum).
pub(crate) fn cpu_quota_us(cores: f64) -> u64 {
    let q = (cores * CPU_PERIOD_US as f64).round();
    if q.is_finite() && q >= 1000.0 {
        q as u64
    } else {
        1000
    }
}

/// tsbridge's parent cgroup(s), under which job cgroups are created.
#[derive(Debug)]
pub(crate) enum CgroupHost {
    V2 {
        parent: PathBuf,
        controllers: Vec<Controller>,
        fs: FsKind,
    },
    V1 {
        parents: Vec<V1Dir>,
        fs: FsKind,
    },
}

const V2_WANTED: [(Controller, &str); 3] = [
    (Controller::Memory, "memory"),
    (Controller::Pids, "pids"),
    (Controller::Cpu, "cpu"),
];

/// `job-<instance tag>-<key>`: the tag names this tsbridge (see
/// [`crate::instance_tag`]), so its death watchdog can tell its own jobs'
/// processes by their cgroup (`/proc/<pid>/cgroup`), and never another
/// instance's, even one started meanwhile on the same parent.
pub(crate) fn job_dir_name(key: &str) -> String {
    format!("{}{key}", job_cgroup_prefix())
}

/// `job-<instance tag>-`: the start of the names of this process's job
/// cgroups.
pub fn job_cgroup_prefix() -> String {
    format!("job-{}-", crate::instance_tag())
}

fn mkdir_ok_if_exists(fs: FsKind, dir: &Path) -> Result<(), SandboxError> {
    match fs.mkdir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(SandboxError::cgroup(dir, e)),
        _ => Ok(()),
    }
}

/// Names in a `cgroup.subtree_control` / `cgroup.controllers` file.
fn controller_names(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|c| c.trim_start_matches('+').to_owned())
        .collect()
}

impl CgroupHost {
    /// Set up `<own_dir>/<name>` on the unified hierarchy and enable the
    /// memory/pids/cpu controllers down to it. If `own_dir` holds processes
    /// (the "no internal processes" rule makes enabling fail with EBUSY) and
    /// `move_self` is set, tsbridge first moves itself into `<own_dir>/<name>-supervisor`.
    pub(crate) fn setup_v2(
        own_dir: &Path,
        name: &str,
        move_self: bool,
        fs: FsKind,
    ) -> Result<(Self, Vec<String>), SandboxError> {
        let mut notes = Vec::new();
        let avail_path = own_dir.join("cgroup.controllers");
        let avail = controller_names(
            &fs.read(&avail_path)
                .map_err(|e| SandboxError::cgroup(&avail_path, e))?,
        );
        let wanted: Vec<(Controller, &str)> = V2_WANTED
            .into_iter()
            .filter(|(_, n)| avail.iter().any(|a| a == n))
            .collect();

        let parent = own_dir.join(name);
        let mut enabled: Vec<Controller> = Vec::new();
        match enable_subtree(fs, own_dir, &wanted) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && move_self => {
                let sup = own_dir.join(format!("{name}-supervisor"));
                mkdir_ok_if_exists(fs, &sup)?;
                let procs = sup.join("cgroup.procs");
                fs.write(&procs, &std::process::id().to_string())
                    .map_err(|e| SandboxError::cgroup(&procs, e))?;
                notes.push(format!(
                    "moved tsbridge into {} to enable controllers below {}",
                    sup.display(),
                    own_dir.display()
                ));
                enable_subtree(fs, own_dir, &wanted)
                    .map_err(|e| SandboxError::cgroup(own_dir.join("cgroup.subtree_control"), e))?;
            }
            Err(e) => notes.push(format!(
                "cannot enable controllers in {}: {e} (limits will not be enforced)",
                own_dir.display()
            )),
            Ok(()) => {}
        }
        mkdir_ok_if_exists(fs, &parent)?;
        match enable_subtree(fs, &parent, &wanted) {
            Ok(()) => {
                let sc = fs
                    .read(&parent.join("cgroup.subtree_control"))
                    .unwrap_or_default();
                let on = controller_names(&sc);
                enabled.extend(
                    wanted
                        .iter()
                        .filter(|(_, n)| on.iter().any(|o| o == n))
                        .map(|(c, _)| *c),
                );
            }
            Err(e) => notes.push(format!(
                "cannot enable controllers in {}: {e} (limits will not be enforced)",
                parent.display()
            )),
        }
        Ok((
            CgroupHost::V2 {
                parent,
                controllers: enabled,
                fs,
            },
            notes,
        ))
    }

    /// Set up `<own dir>/<name>` in every v1 hierarchy tsbridge uses.
    pub(crate) fn setup_v1(
        hierarchies: &[(Vec<Controller>, PathBuf)],
        name: &str,
        fs: FsKind,
    ) -> Result<(Self, Vec<String>), SandboxError> {
        let mut notes = Vec::new();
        let mut parents = Vec::new();
        let mut first_err = None;
        for (ctrls, own) in hierarchies {
            let dir = own.join(name);
            match mkdir_ok_if_exists(fs, &dir) {
                Ok(()) => parents.push(V1Dir {
                    controllers: ctrls.clone(),
                    dir,
                }),
                Err(e) => {
                    notes.push(format!("cgroup v1 {ctrls:?} not usable: {e}"));
                    first_err.get_or_insert(e);
                }
            }
        }
        match (parents.is_empty(), first_err) {
            (true, Some(e)) => Err(e),
            _ => Ok((CgroupHost::V1 { parents, fs }, notes)),
        }
    }

    pub(crate) fn version(&self) -> CgroupVersion {
        match self {
            Self::V2 { .. } => CgroupVersion::V2,
            Self::V1 { .. } => CgroupVersion::V1,
        }
    }

    pub(crate) fn has(&self, c: Controller) -> bool {
        match self {
            Self::V2 { controllers, .. } => controllers.contains(&c),
            Self::V1 { parents, .. } => parents.iter().any(|p| p.controllers.contains(&c)),
        }
    }

    /// The parent directories (for logs and `tsbridge check`).
    pub(crate) fn parent_dirs(&self) -> Vec<&Path> {
        match self {
            Self::V2 { parent, .. } => vec![parent.as_path()],
            Self::V1 { parents, .. } => parents.iter().map(|p| p.dir.as_path()).collect(),
        }
    }

    /// Create `<parent>/job-<instance tag>-<key>` (per hierarchy) and write the limits.
    pub(crate) fn create_job(
        &self,
        key: &str,
        limits: &CgroupLimits,
    ) -> Result<JobCgroup, SandboxError> {
        let name = job_dir_name(key);
        match self {
            Self::V2 { parent, fs, .. } => {
                let dir = parent.join(&name);
                if dir.exists() {
                    return Err(SandboxError::JobExists { path: dir });
                }
                fs.mkdir(&dir).map_err(|e| SandboxError::cgroup(&dir, e))?;
                let job = JobCgroup::new_v2(key, *fs, dir);
                if let Err(e) = self.write_limits_v2(&job, limits) {
                    let _ = job.remove();
                    return Err(e);
                }
                Ok(job)
            }
            Self::V1 { parents, fs } => {
                for p in parents {
                    let dir = p.dir.join(&name);
                    if dir.exists() {
                        return Err(SandboxError::JobExists { path: dir });
                    }
                }
                let mut dirs = Vec::new();
                for p in parents {
                    let dir = p.dir.join(&name);
                    if let Err(e) = fs.mkdir(&dir) {
                        let _ = JobCgroup::new_v1(key, *fs, dirs).remove();
                        return Err(SandboxError::cgroup(&dir, e));
                    }
                    dirs.push(V1Dir {
                        controllers: p.controllers.clone(),
                        dir,
                    });
                }
                let job = JobCgroup::new_v1(key, *fs, dirs);
                if let Err(e) = self.write_limits_v1(&job, limits) {
                    let _ = job.remove();
                    return Err(e);
                }
                Ok(job)
            }
        }
    }

    fn write_limits_v2(&self, job: &JobCgroup, l: &CgroupLimits) -> Result<(), SandboxError> {
        let (fs, dir) = (job.fs, job.dirs()[0].to_path_buf());
        let w = |file: &str, v: &str| {
            let p = dir.join(file);
            fs.write(&p, v).map_err(|e| SandboxError::cgroup(&p, e))
        };
        // Optional knobs: absent when swap accounting / the kernel lacks them.
        let w_opt = |file: &str, v: &str| match fs.write(&dir.join(file), v) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| SandboxError::cgroup(dir.join(file), e)),
        };
        if let Some(m) = l.memory
            && self.has(Controller::Memory)
        {
            w("memory.max", &m.to_string())?;
            w_opt("memory.swap.max", "0")?;
            // The job is one unit: an OOM kill takes all of its processes.
            w_opt("memory.oom.group", "1")?;
        }
        if let Some(c) = l.cpu
            && self.has(Controller::Cpu)
        {
            w("cpu.max", &format!("{} {CPU_PERIOD_US}", cpu_quota_us(c)))?;
        }
        if let Some(p) = l.pids
            && self.has(Controller::Pids)
        {
            w("pids.max", &p.to_string())?;
        }
        Ok(())
    }

    fn write_limits_v1(&self, job: &JobCgroup, l: &CgroupLimits) -> Result<(), SandboxError> {
        let fs = job.fs;
        let w = |dir: &Path, file: &str, v: &str| {
            let p = dir.join(file);
            fs.write(&p, v).map_err(|e| SandboxError::cgroup(&p, e))
        };
        if let (Some(m), Some(dir)) = (l.memory, job.dir_of(Controller::Memory)) {
            // limit_in_bytes first: memsw must never be below it.
            w(dir, "memory.limit_in_bytes", &m.to_string())?;
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if fs == FsKind::Plain || memsw.exists() {
                w(dir, "memory.memsw.limit_in_bytes", &m.to_string())?;
            }
        }
        if let (Some(c), Some(dir)) = (l.cpu, job.dir_of(Controller::Cpu)) {
            w(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            w(dir, "cpu.cfs_quota_us", &cpu_quota_us(c).to_string())?;
        }
        if let (Some(p), Some(dir)) = (l.pids, job.dir_of(Controller::Pids)) {
            w(dir, "pids.max", &p.to_string())?;
        }
        Ok(())
    }

    /// Kill and remove every `job-*` cgroup under the parent(s). Returns how
    /// many jobs were swept.
    pub(crate) fn sweep(&self) -> Result<usize, SandboxError> {
        let mut names: Vec<String> = Vec::new();
        for dir in self.parent_dirs() {
            for sub in subdirs(dir) {
                if let Some(n) = sub.file_name().and_then(|n| n.to_str())
                    && n.starts_with("job-")
                    && !names.iter().any(|x| x == n)
                {
                    names.push(n.to_owned());
                }
            }
        }
        for name in &names {
            let key = name.trim_start_matches("job-");
            let job = match self {
                Self::V2 { parent, fs, .. } => JobCgroup::new_v2(key, *fs, parent.join(name)),
                Self::V1 { parents, fs } => JobCgroup::new_v1(
                    key,
                    *fs,
                    parents
                        .iter()
                        .filter(|p| p.dir.join(name).is_dir())
                        .map(|p| V1Dir {
                            controllers: p.controllers.clone(),
                            dir: p.dir.join(name),
                        })
                        .collect(),
                ),
            };
            tracing::warn!(job = %name, "sweeping stale job cgroup");
            let dirs: Vec<PathBuf> = job.dirs().iter().map(|d| d.to_path_buf()).collect();
            let _ = job.kill_all();
            job.remove()
                .map_err(|e| SandboxError::cgroup(dirs.first().cloned().unwrap_or_default(), e))?;
        }
        Ok(names.len())
    }

    /// Remove the parent dir(s), which must be empty (jobs removed first).
    pub(crate) fn remove_parents(&self) -> Result<(), SandboxError> {
        let fs = match self {
            Self::V2 { fs, .. } | Self::V1 { fs, .. } => *fs,
        };
        for d in self.parent_dirs() {
            let r = match fs {
                FsKind::Kernel => std::fs::remove_dir(d),
                FsKind::Plain => std::fs::remove_dir_all(d),
            };
            match r {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(SandboxError::cgroup(d, e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Make sure `dir/cgroup.subtree_control` enables `wanted`.
fn enable_subtree(fs: FsKind, dir: &Path, wanted: &[(Controller, &str)]) -> io::Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let current = controller_names(&fs.read(&path).unwrap_or_default());
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(_, n)| !current.iter().any(|c| c == n))
        .map(|(_, n)| format!("+{n}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut all = current.iter().map(|c| format!("+{c}")).collect::<Vec<_>>();
    if fs == FsKind::Plain {
        // A plain file keeps only the last write: write the union.
        all.extend(missing);
        fs.write(&path, &all.join(" "))
    } else {
        fs.write(&path, &missing.join(" "))
    }
}
