//! The host-wide [`Sandbox`] (capabilities detected once, tsbridge's parent
//! cgroups, the compiled seccomp filter, the shared network namespace) and the
//! per-job [`PreparedSandbox`] that a child applies between fork and exec.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::cgroup::{
    CgroupHost, CgroupLimits, CgroupVersion, Controller, Discovered, FsKind, JobCgroup, LiveJobs,
    LiveToken, discover, own_v2_dir, parse_mountinfo,
};
use crate::child::{CgroupJoin, ChildFailure, ChildPlan, FailureSlot, NetPlan, RlimitResource};
use crate::error::SandboxError;
use crate::landlock::{self, FsRules};
use crate::netns;
use crate::policy::SandboxPolicy;
use crate::report::{Capabilities, Enforcement, EnforcementReport, KillMethod, LandlockSupport};
use crate::seccomp::{self, Program};

/// Host-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Name of tsbridge's parent cgroup under its own cgroup (per hierarchy):
    /// jobs are `<own cgroup>/<name>/job-<instance tag>-<key>`. Two tsbridge
    /// instances in the same cgroup must use different names (each sweeps
    /// its own).
    pub cgroup_parent_name: String,
    /// Use cgroups at all (false: no limits, kill by process group only).
    pub use_cgroups: bool,
    /// cgroup v2: if tsbridge's own cgroup has processes (so controllers cannot
    /// be enabled below it), move tsbridge into `<own>/<name>-supervisor` first.
    pub v2_move_self_to_leaf: bool,
    /// `network = false` jobs join one shared empty namespace (cheaper, but
    /// such jobs can reach each other's loopback listeners) instead of each
    /// getting a namespace of its own.
    pub shared_netns: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cgroup_parent_name: "tsbridge".into(),
            use_cgroups: true,
            v2_move_self_to_leaf: true,
            shared_netns: false,
        }
    }
}

/// The host-wide sandbox: create once at startup.
#[derive(Debug)]
pub struct Sandbox {
    /// What this host can enforce, but the PID namespace: not probed yet
    /// (`pid_ns` false, `pid_ns_probed` false).
    caps: Capabilities,
    /// `caps` with the PID-namespace probe's answer, made at the first use
    /// that needs it ([`Sandbox::capabilities`]): the probe is a fork-like
    /// clone of the whole process and a procfs mount, which a server whose
    /// workflows never ask for a PID namespace need not pay at startup.
    probed: OnceLock<Capabilities>,
    cgroups: Option<CgroupHost>,
    landlock_abi: Option<u32>,
    /// What a job without lists may only read: `/proc`, `/sys` and the
    /// cgroupfs mount points (from mountinfo), see `FsRules::SystemGuard`.
    read_only: Vec<PathBuf>,
    /// The last system-guard ruleset built, reused while `/` and `/dev` are
    /// unchanged (see [`Sandbox::system_guard`]).
    guard: Mutex<Option<GuardCache>>,
    /// A dynamic uid's job gets an IPC namespace of its own (`false`: the
    /// host cannot make one; its leases are swept instead).
    ipc_ns: bool,
    seccomp: Arc<Vec<Program>>,
    /// `seccomp` and the refusal of unix sockets, for jobs that may not make
    /// them (`network = false` unless `unix_sockets`, or `unix_sockets =
    /// false`; see [`seccomp::compile_offline`]).
    seccomp_offline: Arc<Vec<Program>>,
    shared_netns: Option<Arc<OwnedFd>>,
    /// Set when network namespaces are made through a user namespace per
    /// job (tsbridge is not privileged): the maps each job writes.
    user_netns: Option<Arc<netns::SelfMaps>>,
    /// The maps of a job's own user namespace (its ids to themselves), for
    /// a PID namespace made without privilege.
    self_maps: Arc<netns::SelfMaps>,
    /// The job cgroups made by [`Sandbox::prepare`] that are still held.
    live: Arc<LiveJobs>,
}

/// A system-guard ruleset and the modification times of the directories
/// whose entries it lists: a new or removed entry there changes them.
#[derive(Debug)]
struct GuardCache {
    stamps: [Option<SystemTime>; 2],
    fd: OwnedFd,
}

/// The modification times of `/` and `/dev`, which [`landlock`]'s system
/// guard lists.
fn guard_stamps() -> [Option<SystemTime>; 2] {
    ["/", "/dev"].map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
}

/// Whether a process can make an IPC namespace (tried on a short-lived
/// thread: tsbridge itself stays in the host's).
fn ipc_namespaces_work() -> bool {
    std::thread::Builder::new()
        .name("tsbridge-ipcns".into())
        // SAFETY: unshare only changes this thread's IPC namespace; the
        // thread ends right after.
        .spawn(|| unsafe { libc::unshare(libc::CLONE_NEWIPC) } == 0)
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(false)
}

/// Valid job keys: 1..=64 of `[A-Za-z0-9._-]`, not starting with '.'.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// This process's hard limit of `res` (`RLIM_INFINITY` when unknown).
fn own_hard_limit(res: RlimitResource) -> libc::rlim_t {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: cur points to a live rlimit that getrlimit fills.
    if unsafe { libc::getrlimit(res, &mut cur) } == 0 {
        cur.rlim_max
    } else {
        libc::RLIM_INFINITY
    }
}

fn prctl_supported(option: libc::c_int) -> bool {
    // SAFETY: PR_GET_* queries take no pointers and change nothing.
    unsafe { libc::prctl(option, 0, 0, 0, 0) >= 0 }
}

impl Sandbox {
    /// Detect what this host can enforce, set up tsbridge's parent cgroup(s)
    /// and compile the seccomp filter. Missing mechanisms are not errors: they
    /// show in [`Sandbox::capabilities`] (and in each job's report).
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        if !valid_key(&config.cgroup_parent_name) {
            return Err(SandboxError::InvalidJobKey {
                key: config.cgroup_parent_name,
            });
        }
        let mut notes = Vec::new();
        let mut on_v1 = Vec::new();
        let cgroups = if config.use_cgroups {
            let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let d = discover(&proc_cgroup, &mountinfo, |dir| {
                std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
            });
            let r = match d {
                Discovered::V2 {
                    own_dir,
                    on_v1: left,
                } => {
                    if !left.is_empty() {
                        let names: Vec<&str> = left.iter().map(|c| c.name()).collect();
                        notes.push(format!(
                            "this host splits the cgroup controllers between v1 and v2: tsbridge \
                             uses v2, so the limits of those on v1 only are not enforced ({}; move \
                             them to the unified hierarchy, or every controller to v1)",
                            names.join(", ")
                        ));
                    }
                    on_v1 = left;
                    CgroupHost::setup_v2(
                        &own_dir,
                        &config.cgroup_parent_name,
                        config.v2_move_self_to_leaf,
                        FsKind::Kernel,
                    )
                    .map(Some)
                }
                Discovered::V1 { hierarchies } => {
                    CgroupHost::setup_v1(&hierarchies, &config.cgroup_parent_name, FsKind::Kernel)
                        .map(Some)
                }
                Discovered::None { reason } => {
                    notes.push(reason);
                    Ok(None)
                }
            };
            match r {
                Ok(Some((host, n))) => {
                    notes.extend(n);
                    Some(host)
                }
                Ok(None) => None,
                Err(e) => {
                    notes.push(format!(
                        "cgroups unusable: {e}: {} (delegate a cgroup to tsbridge, see docs/design/sandbox.md)",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ));
                    None
                }
            }
        } else {
            notes.push("cgroups disabled by configuration".into());
            None
        };
        Self::assemble(config, cgroups, notes, on_v1)
    }

    fn assemble(
        config: SandboxConfig,
        cgroups: Option<CgroupHost>,
        mut notes: Vec<String>,
        on_v1: Vec<Controller>,
    ) -> Result<Sandbox, SandboxError> {
        let landlock_abi = landlock::abi_version();
        let ipc_ns = ipc_namespaces_work();
        if !ipc_ns {
            notes.push(
                "IPC namespaces unavailable: a dynamic uid's System V IPC objects are removed \
                 before its next lease instead"
                    .into(),
            );
        }
        // A dynamic job leaves nothing in the shared folders only under the
        // system guard (ABI 2+), and no IPC object only in a namespace of
        // its own: else every lease is swept.
        crate::leftovers::sweep_every_lease(!(ipc_ns && landlock_abi.is_some_and(|a| a >= 2)));
        let self_maps = Arc::new(netns::SelfMaps::current());
        let (network_ns, shared_netns, user_netns) = match netns::create_empty_netns() {
            Ok(fd) => (true, config.shared_netns.then(|| Arc::new(fd)), None),
            Err(e) => {
                let maps = self_maps.clone();
                match netns::probe_user_netns(&maps) {
                    Ok(()) => {
                        notes.push(format!(
                            "no network namespace in the host's user namespace ({e}): each \
                             network = false job gets a user namespace of its own (its uid and \
                             gid mapped to themselves) with a network namespace in it{}",
                            if config.shared_netns {
                                " (shared_netns does not apply)"
                            } else {
                                ""
                            }
                        ));
                        (true, None, Some(maps))
                    }
                    Err(ue) => {
                        notes.push(format!(
                            "network namespaces unavailable: {e}; nor through a user namespace: {ue}"
                        ));
                        (false, None, None)
                    }
                }
            }
        };
        let seccomp_ok = prctl_supported(libc::PR_GET_SECCOMP);
        let (seccomp, seccomp_offline) = if seccomp_ok {
            let base = seccomp::compile()?;
            let offline = seccomp::compile_offline(&base)?;
            (base, offline)
        } else {
            notes.push("seccomp unavailable in this kernel".into());
            (Vec::new(), Vec::new())
        };
        let (version, memory, pids, cpu, cpu_usage, kill) = match &cgroups {
            None => (
                CgroupVersion::None,
                false,
                false,
                false,
                false,
                KillMethod::ProcessGroup,
            ),
            Some(h) => {
                let kill = match h {
                    CgroupHost::V2 { parent, .. } => {
                        if parent.join("cgroup.kill").exists() {
                            KillMethod::CgroupKill
                        } else if parent.join("cgroup.freeze").exists() {
                            KillMethod::Freezer
                        } else {
                            KillMethod::SignalLoop
                        }
                    }
                    CgroupHost::V1 { .. } if h.has(Controller::Freezer) => KillMethod::Freezer,
                    CgroupHost::V1 { .. } => KillMethod::SignalLoop,
                };
                let cpu_usage = h.version() == CgroupVersion::V2 || h.has(Controller::Cpuacct);
                (
                    h.version(),
                    h.has(Controller::Memory),
                    h.has(Controller::Pids),
                    h.has(Controller::Cpu),
                    cpu_usage,
                    kill,
                )
            }
        };
        let caps = Capabilities {
            cgroups: version,
            memory,
            pids,
            cpu,
            cpu_usage,
            kill,
            network_ns,
            network_ns_in_user_ns: user_netns.is_some(),
            pid_ns: false,
            pid_ns_in_user_ns: false,
            pid_ns_probed: false,
            landlock: LandlockSupport::from_abi(landlock_abi),
            seccomp: seccomp_ok,
            no_new_privs: prctl_supported(libc::PR_GET_NO_NEW_PRIVS),
            cgroup_parents: cgroups
                .as_ref()
                .map(|h| h.parent_dirs().iter().map(|p| p.to_path_buf()).collect())
                .unwrap_or_default(),
            notes,
            controllers_on_v1: on_v1,
        };
        Ok(Sandbox {
            caps,
            probed: OnceLock::new(),
            cgroups,
            landlock_abi,
            guard: Mutex::new(None),
            ipc_ns,
            read_only: ["/proc", "/sys"]
                .into_iter()
                .map(PathBuf::from)
                .chain(
                    parse_mountinfo(
                        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
                    )
                    .into_iter()
                    .map(|m| m.mount_point),
                )
                .collect(),
            seccomp: Arc::new(seccomp),
            seccomp_offline: Arc::new(seccomp_offline),
            shared_netns,
            user_netns,
            self_maps,
            live: Arc::default(),
        })
    }

    /// A sandbox on the real cgroup v2 directory `own_dir` (a cgroup2 mount
    /// or a directory in one), whatever [`Sandbox::new`] would discover: its
    /// parent cgroup is `<own_dir>/<config.cgroup_parent_name>`, with the
    /// controllers `own_dir` offers (none is fine: jobs are still created
    /// in their cgroup at clone time, listed, frozen and killed through it).
    ///
    /// For tests of the v2 path on hosts whose controllers are on v1, such
    /// as a hybrid host's controller-less `/sys/fs/cgroup/unified`; a
    /// server discovers its hierarchy. `config.v2_move_self_to_leaf` is
    /// honoured: a test sets it to `false` so as not to move itself.
    #[doc(hidden)]
    pub fn on_cgroup_v2_dir(
        config: SandboxConfig,
        own_dir: &Path,
    ) -> Result<Sandbox, SandboxError> {
        if !valid_key(&config.cgroup_parent_name) {
            return Err(SandboxError::InvalidJobKey {
                key: config.cgroup_parent_name,
            });
        }
        let (host, notes) = CgroupHost::setup_v2(
            own_dir,
            &config.cgroup_parent_name,
            config.v2_move_self_to_leaf,
            FsKind::Kernel,
        )?;
        Self::assemble(config, Some(host), notes, Vec::new())
    }

    /// This process's own directory in the mounted cgroup2 hierarchy, with
    /// or without controllers: where [`Sandbox::on_cgroup_v2_dir`] can put a
    /// test's sandbox. `None` without a cgroup2 mount.
    #[doc(hidden)]
    pub fn own_cgroup_v2_dir() -> Option<PathBuf> {
        own_v2_dir(
            &std::fs::read_to_string("/proc/self/cgroup").ok()?,
            &std::fs::read_to_string("/proc/self/mountinfo").ok()?,
        )
    }

    /// A sandbox whose cgroups live in a fake cgroupfs (a plain directory tree).
    #[cfg(test)]
    pub(crate) fn with_fake_v2(own_dir: &Path, name: &str) -> Result<Sandbox, SandboxError> {
        let (host, notes) = CgroupHost::setup_v2(own_dir, name, true, FsKind::Plain)?;
        Self::assemble(SandboxConfig::default(), Some(host), notes, Vec::new())
    }

    /// A sandbox whose v1 hierarchies live in a fake cgroupfs.
    #[cfg(test)]
    pub(crate) fn with_fake_v1(
        hierarchies: &[(Vec<Controller>, PathBuf)],
        name: &str,
    ) -> Result<Sandbox, SandboxError> {
        let (host, notes) = CgroupHost::setup_v1(hierarchies, name, FsKind::Plain)?;
        Self::assemble(SandboxConfig::default(), Some(host), notes, Vec::new())
    }

    /// What this host can enforce, all of it: the first call probes PID
    /// namespaces (`pid_ns`; a note says why not), which `tsbridge check`,
    /// `/readyz` and a workflow that asks for one need.
    pub fn capabilities(&self) -> &Capabilities {
        self.probed.get_or_init(|| {
            let mut caps = self.caps.clone();
            caps.pid_ns_probed = true;
            match crate::pidns::probe() {
                Ok(()) => caps.pid_ns = true,
                Err(e) => match crate::pidns::probe_in_user_ns(&self.self_maps) {
                    Ok(()) => {
                        caps.pid_ns = true;
                        caps.pid_ns_in_user_ns = true;
                        caps.notes.push(format!(
                            "no PID namespace in the host's user namespace ({e}): a job that \
                             asks for one gets a user namespace of its own too (its uid and gid \
                             mapped to themselves)"
                        ));
                    }
                    Err(ue) => caps.notes.push(format!(
                        "PID namespaces unavailable: {e}; nor with a user namespace: {ue}"
                    )),
                },
            }
            caps
        })
    }

    /// What this host can enforce as known so far, without probing: the
    /// PID-namespace probe's answer once something needed it, else
    /// `pid_ns_probed` false (`pid_ns` false, the table says "not probed
    /// yet"). For the startup log.
    pub fn capabilities_so_far(&self) -> &Capabilities {
        self.probed.get().unwrap_or(&self.caps)
    }

    /// [`Capabilities::predict`] of `policy`, probing PID namespaces only
    /// if it asks for one.
    pub fn predict(&self, policy: &SandboxPolicy) -> EnforcementReport {
        if policy.pid_namespace {
            self.capabilities().predict(policy)
        } else {
            self.capabilities_so_far().predict(policy)
        }
    }

    /// Prepare one job: create its cgroup(s) with the limits, open their
    /// join files (v2 `cgroup.procs`, v1 `tasks`), build the Landlock ruleset, and collect what the child
    /// will apply. Mechanisms the host lacks are skipped and graded in
    /// [`PreparedSandbox::report`]; the caller decides whether to run anyway.
    pub fn prepare(
        &self,
        job_key: &str,
        policy: &SandboxPolicy,
    ) -> Result<PreparedSandbox, SandboxError> {
        if !valid_key(job_key) {
            return Err(SandboxError::InvalidJobKey {
                key: job_key.to_owned(),
            });
        }
        let mut report = self.predict(policy);

        let cgroup = match &self.cgroups {
            Some(host) => Some(
                host.create_job(
                    job_key,
                    &CgroupLimits {
                        memory: policy.memory,
                        cpu: policy.cpu,
                        pids: policy.pids,
                    },
                )?
                .track(LiveToken::new(&self.live)),
            ),
            None => None,
        };
        // From here on, remove the cgroup again on any error.
        let built = self.build_plan(policy, cgroup.as_ref(), &mut report);
        match built {
            Ok(plan) => Ok(PreparedSandbox {
                plan: Arc::new(plan),
                cgroup,
                report,
                lease: None,
            }),
            Err(e) => {
                if let Some(cg) = cgroup {
                    let _ = cg.remove();
                }
                Err(e)
            }
        }
    }

    fn build_plan(
        &self,
        policy: &SandboxPolicy,
        cgroup: Option<&JobCgroup>,
        report: &mut EnforcementReport,
    ) -> Result<ChildPlan, SandboxError> {
        let cgroup_join = match cgroup {
            Some(cg) => {
                let cg_err = |e| {
                    SandboxError::cgroup(cg.dirs().first().copied().unwrap_or(Path::new("")), e)
                };
                CgroupJoin {
                    fds: cg.open_join_fds().map_err(cg_err)?,
                    by: cg.join_by(),
                    v2_dir: cg.open_v2_dir_fd().map_err(cg_err)?.map(Arc::new),
                }
            }
            None => CgroupJoin::none(),
        };

        let net = if policy.network || !self.caps.network_ns {
            NetPlan::Host
        } else if let Some(maps) = &self.user_netns {
            NetPlan::UserNs(Arc::clone(maps))
        } else if let Some(fd) = &self.shared_netns {
            NetPlan::Setns(Arc::clone(fd))
        } else {
            NetPlan::Unshare
        };
        let deny_tcp = !policy.network && !self.caps.network_ns;

        // A job with no `fs` policy still gets a Landlock domain (with
        // no_new_privs only: an unprivileged tsbridge could not apply it
        // otherwise). On ABI 2+ (REFER: no cross-directory rename breaks)
        // it keeps the host's own files from the job: `/proc`, `/sys` and
        // cgroupfs read-only, `/dev`'s block devices closed (what uid 0
        // without capabilities still owns: core_pattern, its own cgroup,
        // raw disks), the rest as before. On ABI 6+ its signals and abstract
        // unix sockets are scoped to it either way, and any domain keeps it
        // from ptrace-reading processes outside it.
        // A job with its own user always gets no_new_privs: after the
        // switch it has no capability left to install Landlock or seccomp
        // without it.
        let no_new_privs = (policy.no_new_privs || policy.user.is_some()) && self.caps.no_new_privs;
        let unprivileged = no_new_privs;
        let fs = |abi: u32| match &policy.fs {
            Some(fs) => Some(FsRules::Allow(fs)),
            None if unprivileged && abi >= 2 => Some(FsRules::SystemGuard(&self.read_only)),
            None if (deny_tcp && abi >= 4) || (unprivileged && abi >= landlock::SCOPE_ABI) => {
                Some(FsRules::None)
            }
            None => None,
        };
        // A dynamic uid's job under the system guard gets a second layer:
        // it creates nothing but beneath its TMPDIR (nothing in the shared
        // world-writable folders for the next job given its uid).
        let mut landlock_own = None;
        if let (Some(abi), Some(own)) = (self.landlock_abi, &policy.dynamic_tmpdir)
            && matches!(fs(abi), Some(FsRules::SystemGuard(_)))
        {
            landlock_own = Some(landlock::create_only_beneath(own, abi)?);
        }
        // In a PID namespace of its own the job gets a fresh procfs, which no
        // rule built here covers (rules are bound to the inodes they were
        // made on, and Landlock skips mount points as it walks up): the job
        // adds the rules the policy has beneath /proc on the fresh one
        // before it restricts itself, so its ruleset must be its own, never
        // the shared system guard's (docs/design/pid-namespace.md).
        // Only where this host can (else, with `degraded`, the job runs
        // without: the report says so).
        let pid_namespace = policy.pid_namespace && self.capabilities().pid_ns;
        let init_setup = if pid_namespace && self.capabilities().pid_ns_in_user_ns {
            crate::pidns::InitSetup::in_user_namespace(self.self_maps.clone())
        } else {
            crate::pidns::InitSetup::default()
        };
        let proc_rules = match self.landlock_abi.and_then(|abi| Some((abi, fs(abi)?))) {
            Some((abi, fs)) if pid_namespace => landlock::proc_rules(fs, abi),
            _ => Vec::new(),
        };
        let landlock = match self.landlock_abi.and_then(|abi| Some((abi, fs(abi)?))) {
            Some((abi, FsRules::SystemGuard(_))) if !deny_tcp && !pid_namespace => {
                Some(self.system_guard(abi)?)
            }
            Some((abi, fs)) => {
                let rs = landlock::build(fs, deny_tcp, abi)?;
                tracing::debug!(
                    skipped = ?rs.skipped,
                    scoped = rs.scoped,
                    tcp_denied = rs.tcp_denied,
                    "landlock ruleset built"
                );
                Some(rs.fd)
            }
            _ => None,
        };

        let r = &policy.rlimits;
        let mut rlimits: Vec<(RlimitResource, libc::rlimit)> = Vec::new();
        let mut push = |res: RlimitResource, soft: Option<u64>, extra_hard: u64| {
            if let Some(v) = soft {
                // Never above tsbridge's own hard limit: raising it needs
                // CAP_SYS_RESOURCE, and the child would fail to start.
                let ceiling = own_hard_limit(res);
                let hard = (v.saturating_add(extra_hard) as libc::rlim_t).min(ceiling);
                rlimits.push((
                    res,
                    libc::rlimit {
                        rlim_cur: (v as libc::rlim_t).min(hard),
                        rlim_max: hard,
                    },
                ));
            }
        };
        push(libc::RLIMIT_NOFILE, r.nofile, 0);
        push(libc::RLIMIT_FSIZE, r.fsize, 0);
        push(libc::RLIMIT_CORE, r.core, 0);
        // Soft limit -> SIGXCPU (catchable, reported as a CPU breach); the hard
        // limit 2 s later -> SIGKILL.
        push(libc::RLIMIT_CPU, r.cpu_seconds, 2);
        push(libc::RLIMIT_AS, r.address_space, 0);

        let seccomp = if policy.seccomp && self.caps.seccomp && policy.refuses_unix_sockets() {
            Arc::clone(&self.seccomp_offline)
        } else if policy.seccomp && self.caps.seccomp {
            Arc::clone(&self.seccomp)
        } else {
            Arc::new(Vec::new())
        };
        if policy.fs.is_some() && landlock.is_none() {
            report.fs = Enforcement::NotEnforced("landlock is not enabled in this kernel".into());
        }
        Ok(ChildPlan {
            cgroup_join,
            rlimits,
            parent_death_signal: policy.parent_death_signal,
            parent_pid: std::process::id() as libc::pid_t,
            net,
            new_ipc: policy.dynamic_tmpdir.is_some() && self.ipc_ns,
            no_new_privs,
            user: policy.user,
            landlock,
            landlock_own,
            proc_rules,
            pid_namespace,
            init_setup,
            seccomp,
            failure: FailureSlot::new().map_err(|e| SandboxError::Io {
                what: "mmap of the child failure slot",
                source: e,
            })?,
        })
    }

    /// The system-guard ruleset (a copy of its fd): built once and reused
    /// while the entries of `/` and `/dev` stay the same (their modification
    /// times), since it lists them and needs nothing of the job. Building
    /// it takes 0.6 ms (release, this host); a copy, one `dup`.
    fn system_guard(&self, abi: u32) -> Result<OwnedFd, SandboxError> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| SandboxError::Landlock {
                step: "dup the system guard ruleset",
                source: e,
            })
        };
        let stamps = guard_stamps();
        let mut cache = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        match cache.as_ref() {
            Some(c) if c.stamps == stamps && stamps.iter().all(Option::is_some) => dup(&c.fd),
            _ => {
                let rs = landlock::build(FsRules::SystemGuard(&self.read_only), false, abi)?;
                tracing::debug!(skipped = ?rs.skipped, "landlock system guard built");
                let fd = dup(&rs.fd)?;
                *cache = Some(GuardCache { stamps, fd: rs.fd });
                Ok(fd)
            }
        }
    }

    /// Kill and remove every job cgroup under tsbridge's parent cgroup(s):
    /// left by a tsbridge that crashed. Call once at startup, before any job.
    pub fn sweep_stale(&self) -> Result<usize, SandboxError> {
        match &self.cgroups {
            Some(h) => h.sweep(),
            None => Ok(0),
        }
    }

    /// Remove tsbridge's (empty) parent cgroup(s), e.g. at shutdown or in tests.
    pub fn remove_parent(&self) -> Result<(), SandboxError> {
        match &self.cgroups {
            Some(h) => h.remove_parents(),
            None => Ok(()),
        }
    }

    /// How many job cgroups made by [`Sandbox::prepare`] are still held: by a
    /// [`PreparedSandbox`] (which removes its cgroup when dropped) or by a
    /// [`JobCgroup`] taken out of one with [`PreparedSandbox::into_cgroup`]
    /// (until it is removed or dropped).
    pub fn live_job_cgroups(&self) -> usize {
        self.live.count()
    }

    /// How long an owner's shutdown waits in
    /// [`Sandbox::wait_job_cgroups_released`], by default, once its jobs are
    /// over: each removal kills what is left first, normally milliseconds,
    /// and gives up after 10 s.
    pub const JOB_CGROUPS_RELEASE_WAIT: Duration = Duration::from_secs(20);

    /// Blocks until no job cgroup made by this sandbox is held any more
    /// (each was removed, or its handle dropped) or `timeout` passed;
    /// `true` if none is. A shutdown calls it once the jobs are over, so
    /// that it returns only when their cgroups are gone and
    /// [`Sandbox::remove_parent`] can succeed: a job's cgroup is removed
    /// when its supervision lets go of it, which can be just after the
    /// job's outcome was reported.
    pub fn wait_job_cgroups_released(&self, timeout: Duration) -> bool {
        self.live.wait_none(timeout)
    }

    /// The parent cgroup directories (one per v1 hierarchy).
    pub fn cgroup_parents(&self) -> Vec<PathBuf> {
        self.caps.cgroup_parents.clone()
    }
}

/// One job's sandbox, ready to be applied in its child.
#[derive(Debug)]
pub struct PreparedSandbox {
    plan: Arc<ChildPlan>,
    cgroup: Option<JobCgroup>,
    report: EnforcementReport,
    /// The job's dynamic uid: given back only after the cgroup is emptied
    /// and removed (this drop).
    lease: Option<crate::dynamic::UidLease>,
}

/// Dropping a `PreparedSandbox` that still owns its cgroup kills whatever is
/// left in it and removes it (no leaked cgroups when a spawn fails or the
/// owner forgets). Use [`PreparedSandbox::into_cgroup`] to keep the cgroup.
/// This can block briefly (bounded), so drop it where blocking is acceptable.
impl Drop for PreparedSandbox {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.kill_all() {
                tracing::warn!(job = cg.key(), error = %e, "killing the job cgroup on drop failed");
            }
            let key = cg.key().to_owned();
            if let Err(e) = cg.remove() {
                tracing::warn!(job = %key, error = %e, "removing the job cgroup on drop failed");
            }
        }
        // After the cgroup is gone; a process that still has the uid (one
        // that left the cgroup, one in D state) keeps it from being leased
        // again (`dynamic::ids_in_use`).
        drop(self.lease.take());
    }
}

/// A `'static` handle on a prepared child plan, for `Command::pre_exec`.
#[derive(Debug, Clone)]
pub struct ChildHook {
    plan: Arc<ChildPlan>,
}

impl ChildHook {
    /// See [`PreparedSandbox::apply_in_child`].
    ///
    /// # Safety
    /// Same contract: only in the forked child, before exec.
    pub unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.plan.apply(false, false) }
    }

    /// The job's cgroup v2 directory (`O_PATH | O_DIRECTORY | O_CLOEXEC`),
    /// to create the child in with `clone3(CLONE_INTO_CGROUP)`; `None`
    /// without a v2 cgroup. A child created there runs
    /// [`ChildHook::apply_in_cgroup`]; one that was not (clone3 refused the
    /// fd, or the caller forked) runs [`ChildHook::apply`], which joins.
    pub fn cgroup_v2_dir(&self) -> Option<Arc<OwnedFd>> {
        self.plan.cgroup_join.v2_dir.clone()
    }

    /// [`ChildHook::apply`] for a child created inside the job's cgroup
    /// ([`ChildHook::cgroup_v2_dir`] with `CLONE_INTO_CGROUP`): everything
    /// but joining the cgroup, which it is in already.
    ///
    /// # Safety
    /// Same contract as [`ChildHook::apply`].
    pub unsafe fn apply_in_cgroup(&self) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.plan.apply(true, false) }
    }

    /// [`ChildHook::apply`] (or, `in_cgroup`, [`ChildHook::apply_in_cgroup`])
    /// for a job forked by the init of a PID namespace of its own
    /// ([`crate::SandboxPolicy::pid_namespace`]): its parent is that init,
    /// pid 1 in its namespace, which the parent-death checks then expect.
    ///
    /// # Safety
    /// Same contract as [`ChildHook::apply`].
    pub unsafe fn apply_under_init(&self, in_cgroup: bool) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.plan.apply(in_cgroup, true) }
    }
}

impl PreparedSandbox {
    /// Apply the sandbox to the calling process. Order: join the job cgroups,
    /// rlimits, parent-death signal, network namespace (+ lo up), IPC
    /// namespace (a dynamic uid's job), capabilities, the job's user,
    /// no_new_privs, Landlock, seccomp.
    ///
    /// # Safety
    /// Call only in the child between fork and exec (e.g. from
    /// `Command::pre_exec`): it moves the calling process into the job's
    /// cgroups and restricts it for good. It is async-signal-safe: it only
    /// reads data prepared before fork and makes raw syscalls. On error it
    /// returns the errno; [`PreparedSandbox::take_child_failure`] then tells which step failed.
    pub unsafe fn apply_in_child(&self) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.plan.apply(false, false) }
    }

    /// A cloneable `'static` handle for `pre_exec`:
    /// `let h = prepared.child_hook(); unsafe { cmd.pre_exec(move || unsafe { h.apply() }) };`
    pub fn child_hook(&self) -> ChildHook {
        ChildHook {
            plan: Arc::clone(&self.plan),
        }
    }

    /// The job's cgroup (None when the host has no usable cgroups).
    pub fn cgroup(&self) -> Option<&JobCgroup> {
        self.cgroup.as_ref()
    }

    /// Give up the plan and keep the cgroup (after spawn): for stats, kill and
    /// removal, which are then the caller's job (dropping a `JobCgroup` leaves
    /// the cgroup in place).
    /// A held dynamic uid lease goes back then (the process scan of the
    /// next lease still skips a uid some process has).
    pub fn into_cgroup(mut self) -> Option<JobCgroup> {
        self.cgroup.take()
    }

    /// Keeps `lease` (the job's dynamic uid, [`crate::dynamic`]) until this
    /// is dropped, after its cgroup was emptied and removed.
    pub fn hold_lease(&mut self, lease: crate::dynamic::UidLease) {
        self.lease = Some(lease);
    }

    /// Whether the job is to run in a PID namespace of its own: its policy
    /// asks for it and this host can make one (else, run `degraded`, it
    /// runs without, and [`Self::report`] says so).
    pub fn pid_namespace(&self) -> bool {
        self.plan.pid_namespace
    }

    /// What the job's init does first ([`crate::pidns::InitSetup`]): with
    /// a user namespace of its own where tsbridge has no privilege.
    pub fn init_setup(&self) -> &crate::pidns::InitSetup {
        &self.plan.init_setup
    }

    /// Whether the child must be cloned with a memory of its own (not the
    /// vfork-style way, whose child shares tsbridge's until its exec): its
    /// network namespace is made in a user namespace of its own
    /// (an unprivileged tsbridge), and writing the maps takes turning the
    /// address space's dumpable flag on for a moment, which on a shared
    /// address space would be tsbridge's own.
    pub fn needs_own_memory(&self) -> bool {
        matches!(self.plan.net, NetPlan::UserNs(_))
    }

    /// What this job's sandbox enforces.
    pub fn report(&self) -> EnforcementReport {
        self.report.clone()
    }

    /// After a failed spawn: which sandbox step failed in the child (and clears it).
    pub fn take_child_failure(&self) -> Option<ChildFailure> {
        self.plan.failure.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a job's system guard costs: built (the cache emptied first), a
    /// copy of the cached one, and a dynamic uid's second layer (its
    /// TMPDIR alone may get new entries). Prints the median and p90 of 200
    /// of each. Run by hand: `cargo nextest run --release -p
    /// tsbridge-sandbox --lib --run-ignored only -E 'test(guard_cost)'
    /// --no-capture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn guard_cost() {
        let Some(abi) = landlock::abi_version().filter(|a| *a >= 2) else {
            eprintln!("SKIP: no landlock ABI 2");
            return;
        };
        let sb = Sandbox::new(SandboxConfig {
            use_cgroups: false,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        let tmp = tempfile::tempdir().expect("tempdir");
        let time = |what: &str, f: &mut dyn FnMut()| {
            let mut t: Vec<Duration> = (0..200)
                .map(|_| {
                    let start = std::time::Instant::now();
                    f();
                    start.elapsed()
                })
                .collect();
            t.sort();
            println!("{what}: median {:?}, p90 {:?}", t[100], t[180]);
        };
        time("system guard, built", &mut || {
            *sb.guard.lock().expect("lock") = None;
            std::hint::black_box(sb.system_guard(abi).expect("guard"));
        });
        time("system guard, cached (a copy)", &mut || {
            std::hint::black_box(sb.system_guard(abi).expect("guard"));
        });
        time("dynamic uid's second layer", &mut || {
            std::hint::black_box(landlock::create_only_beneath(tmp.path(), abi).expect("layer"));
        });
    }

    #[test]
    fn job_keys_are_checked() {
        assert!(valid_key("abc-1.2_x"));
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
