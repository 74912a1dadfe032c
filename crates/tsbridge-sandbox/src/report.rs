//! What a host can enforce ([`Capabilities`], detected once) and what one
//! job's sandbox actually enforces ([`EnforcementReport`]), in grades, never bools.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::cgroup::{CgroupVersion, Controller};
use crate::landlock::FULL_ABI;
use crate::policy::SandboxPolicy;

/// Landlock support of the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "grade", rename_all = "snake_case")]
pub enum LandlockSupport {
    /// ABI 3 or later: every file-system right tsbridge uses is handled.
    Full {
        abi: u32,
    },
    /// ABI 1-2: truncate (and on ABI 1, cross-directory rename) not restricted.
    Partial {
        abi: u32,
    },
    None,
}

impl LandlockSupport {
    pub(crate) fn from_abi(abi: Option<u32>) -> Self {
        match abi {
            Some(a) if a >= FULL_ABI => Self::Full { abi: a },
            Some(a) => Self::Partial { abi: a },
            None => Self::None,
        }
    }

    /// Whether the kernel offers Landlock at all (any ABI).
    pub fn is_available(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// The ABI number, if any.
    pub fn abi(&self) -> Option<u32> {
        match *self {
            Self::Full { abi } | Self::Partial { abi } => Some(abi),
            Self::None => None,
        }
    }
}

/// How tsbridge kills a whole job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillMethod {
    /// v2 `cgroup.kill` (kernel 5.14+): atomic.
    CgroupKill,
    /// v2 `cgroup.freeze` or v1 freezer: freeze, SIGKILL all, thaw.
    Freezer,
    /// Repeated SIGKILL of the listed pids (racy against fast forkers).
    SignalLoop,
    /// No cgroup: only the process group can be signalled.
    ProcessGroup,
}

/// What this host can enforce, detected once by `Sandbox::new`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct Capabilities {
    pub cgroups: CgroupVersion,
    pub memory: bool,
    pub pids: bool,
    pub cpu: bool,
    /// v1: cpuacct joined (CPU usage counter); always true with v2.
    pub cpu_usage: bool,
    pub kill: KillMethod,
    pub network_ns: bool,
    /// The network namespaces are made inside a user namespace of each
    /// job's own (an unprivileged tsbridge: no CAP_SYS_ADMIN, unprivileged
    /// user namespaces allowed).
    pub network_ns_in_user_ns: bool,
    /// A job can get a PID namespace of its own with a fresh `/proc`
    /// (`clone3(CLONE_NEWPID | CLONE_NEWNS)` and a procfs mount: needs
    /// CAP_SYS_ADMIN). Probed at first use (`Sandbox::capabilities`), not
    /// at `Sandbox::new`: false until [`Self::pid_ns_probed`].
    pub pid_ns: bool,
    /// The PID namespaces are made with a user namespace of each job's
    /// own (an unprivileged tsbridge: no CAP_SYS_ADMIN, unprivileged user
    /// namespaces allowed).
    pub pid_ns_in_user_ns: bool,
    /// Whether [`Self::pid_ns`] was probed (always, once
    /// `Sandbox::capabilities` was called; `Sandbox::capabilities_so_far`
    /// may say not yet).
    #[serde(skip)]
    pub pid_ns_probed: bool,
    pub landlock: LandlockSupport,
    pub seccomp: bool,
    pub no_new_privs: bool,
    /// Where job cgroups are created (one dir per v1 hierarchy).
    pub cgroup_parents: Vec<PathBuf>,
    /// Why something is missing, and what was done at setup.
    pub notes: Vec<String>,
    /// Controllers this host has on cgroup v1 only while tsbridge uses v2
    /// (a host that splits them between the two): not used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub controllers_on_v1: Vec<Controller>,
}

impl Capabilities {
    /// What a job with `policy` would get on this host (no cgroup is created).
    /// Used at startup to mark workflows whose sandbox cannot be enforced.
    pub fn predict(&self, policy: &SandboxPolicy) -> EnforcementReport {
        let cg_missing = |c: Controller| {
            let what = c.name();
            Enforcement::NotEnforced(match self.cgroups {
                CgroupVersion::None => "no usable cgroup hierarchy (see tsbridge check)".into(),
                CgroupVersion::V2 if self.controllers_on_v1.contains(&c) => {
                    format!(
                        "the {what} controller is on cgroup v1 only, and tsbridge uses cgroup v2 \
                         on this host (it splits the controllers between v1 and v2)"
                    )
                }
                _ => format!("the {what} controller is not delegated to tsbridge"),
            })
        };
        let limit = |requested: bool, have: bool, what: Controller| {
            if !requested {
                Enforcement::NotRequested
            } else if have {
                Enforcement::Enforced
            } else {
                cg_missing(what)
            }
        };
        let network = if policy.network {
            Enforcement::NotRequested
        } else if self.network_ns {
            Enforcement::Enforced
        } else if self.landlock.abi().is_some_and(|a| a >= 4) {
            Enforcement::Partially(
                "no network namespace: TCP bind/connect denied by landlock, UDP and unix sockets are not"
                    .into(),
            )
        } else {
            Enforcement::NotEnforced(
                "network namespaces unavailable (needs CAP_SYS_ADMIN) and landlock ABI < 4".into(),
            )
        };
        let fs = match (&policy.fs, self.landlock) {
            (None, _) => Enforcement::NotRequested,
            (Some(_), LandlockSupport::Full { .. }) => Enforcement::Enforced,
            (Some(_), LandlockSupport::Partial { abi }) => Enforcement::Partially(format!(
                "landlock ABI {abi}: file truncation{} not restricted",
                if abi < 2 {
                    " and cross-directory rename/link"
                } else {
                    ""
                }
            )),
            (Some(_), LandlockSupport::None) => {
                Enforcement::NotEnforced("landlock is not enabled in this kernel".into())
            }
        };
        let r = &policy.rlimits;
        let rlimits = if [r.nofile, r.fsize, r.core, r.cpu_seconds, r.address_space]
            .iter()
            .all(Option::is_none)
        {
            Enforcement::NotRequested
        } else {
            Enforcement::Enforced
        };
        let flag = |requested: bool, have: bool, what: &str| {
            if !requested {
                Enforcement::NotRequested
            } else if have {
                Enforcement::Enforced
            } else {
                Enforcement::NotEnforced(format!("{what} unavailable in this kernel"))
            }
        };
        let pid_namespace = if !policy.pid_namespace {
            Enforcement::NotRequested
        } else if self.pid_ns {
            Enforcement::Enforced
        } else {
            Enforcement::NotEnforced(
                "PID namespaces unavailable (needs CAP_SYS_ADMIN; see tsbridge check)".into(),
            )
        };
        EnforcementReport {
            memory: limit(policy.memory.is_some(), self.memory, Controller::Memory),
            cpu: limit(policy.cpu.is_some(), self.cpu, Controller::Cpu),
            pids: limit(policy.pids.is_some(), self.pids, Controller::Pids),
            network,
            fs,
            rlimits,
            no_new_privs: flag(policy.no_new_privs, self.no_new_privs, "no_new_privs"),
            seccomp: flag(policy.seccomp, self.seccomp, "seccomp"),
            pid_namespace,
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

impl fmt::Display for Capabilities {
    /// The table printed by `tsbridge check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cg = match self.cgroups {
            CgroupVersion::V2 => "v2 (unified)",
            CgroupVersion::V1 => "v1 (legacy hierarchies)",
            CgroupVersion::None => "none",
        };
        let ll = match self.landlock {
            LandlockSupport::Full { abi } => format!("full (ABI {abi})"),
            LandlockSupport::Partial { abi } => format!("partial (ABI {abi})"),
            LandlockSupport::None => "none".into(),
        };
        let kill = match self.kill {
            KillMethod::CgroupKill => "cgroup.kill",
            KillMethod::Freezer => "freezer (freeze, SIGKILL all, thaw)",
            KillMethod::SignalLoop => "SIGKILL loop over cgroup.procs",
            KillMethod::ProcessGroup => "process group only",
        };
        let rows: [(&str, String); 11] = [
            ("cgroups", cg.into()),
            ("memory limit", yes(self.memory).into()),
            ("pids limit", yes(self.pids).into()),
            ("cpu quota", yes(self.cpu).into()),
            ("cpu usage", yes(self.cpu_usage).into()),
            ("job kill", kill.into()),
            (
                "network namespace",
                if self.network_ns_in_user_ns {
                    "yes (in a user namespace of each job's own)".into()
                } else {
                    yes(self.network_ns).into()
                },
            ),
            (
                "pid namespace",
                if self.pid_ns_in_user_ns {
                    "yes (in a user namespace of each job's own)".into()
                } else if self.pid_ns_probed {
                    yes(self.pid_ns).into()
                } else {
                    "not probed yet (when a workflow asks for one; tsbridge check probes it)".into()
                },
            ),
            ("landlock", ll),
            ("seccomp", yes(self.seccomp).into()),
            ("no_new_privs", yes(self.no_new_privs).into()),
        ];
        for (k, v) in rows {
            writeln!(f, "{k:<18} {v}")?;
        }
        for p in &self.cgroup_parents {
            writeln!(f, "{:<18} {}", "cgroup parent", p.display())?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// The grade of one mechanism for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "grade", content = "why", rename_all = "snake_case")]
pub enum Enforcement {
    Enforced,
    Partially(String),
    NotEnforced(String),
    /// The policy did not ask for it.
    NotRequested,
}

impl Enforcement {
    /// Requested but not (fully) enforced.
    pub fn is_shortfall(&self) -> bool {
        matches!(self, Self::Partially(_) | Self::NotEnforced(_))
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Enforced => f.write_str("enforced"),
            Self::Partially(why) => write!(f, "partially enforced: {why}"),
            Self::NotEnforced(why) => write!(f, "not enforced: {why}"),
            Self::NotRequested => f.write_str("not requested"),
        }
    }
}

/// Per mechanism, what one job's sandbox enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnforcementReport {
    pub memory: Enforcement,
    pub cpu: Enforcement,
    pub pids: Enforcement,
    pub network: Enforcement,
    pub fs: Enforcement,
    pub rlimits: Enforcement,
    pub no_new_privs: Enforcement,
    pub seccomp: Enforcement,
    /// A PID namespace and `/proc` of the job's own.
    pub pid_namespace: Enforcement,
}

impl EnforcementReport {
    /// Every mechanism with its name.
    pub fn entries(&self) -> [(&'static str, &Enforcement); 9] {
        [
            ("memory", &self.memory),
            ("cpu", &self.cpu),
            ("pids", &self.pids),
            ("network", &self.network),
            ("fs", &self.fs),
            ("rlimits", &self.rlimits),
            ("no_new_privs", &self.no_new_privs),
            ("seccomp", &self.seccomp),
            ("pid_namespace", &self.pid_namespace),
        ]
    }

    /// Mechanisms that were requested but are not fully enforced. A workflow
    /// with any is unavailable (503) unless its config says `degraded = true`.
    /// Owned, so `prepared.report().shortfalls()` works on the temporary.
    pub fn shortfalls(&self) -> Vec<(&'static str, Enforcement)> {
        self.entries()
            .into_iter()
            .filter(|(_, e)| e.is_shortfall())
            .map(|(n, e)| (n, e.clone()))
            .collect()
    }

    /// Everything requested is enforced.
    pub fn is_complete(&self) -> bool {
        self.shortfalls().is_empty()
    }
}

impl fmt::Display for EnforcementReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in self.entries() {
            writeln!(f, "{k:<13} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            cgroups: CgroupVersion::V1,
            memory: true,
            pids: false,
            cpu: true,
            cpu_usage: true,
            kill: KillMethod::Freezer,
            network_ns: false,
            network_ns_in_user_ns: false,
            pid_ns: false,
            pid_ns_in_user_ns: false,
            pid_ns_probed: true,
            landlock: LandlockSupport::Full { abi: 7 },
            seccomp: true,
            no_new_privs: true,
            cgroup_parents: vec![],
            notes: vec![],
            controllers_on_v1: vec![],
        }
    }

    /// On a host that splits the controllers between v1 and v2, a limit
    /// whose controller is on v1 only is a shortfall that says so (it said
    /// "not delegated", which sends an admin after the wrong fix).
    #[test]
    fn a_controller_left_on_v1_is_named_as_such() {
        let c = Capabilities {
            cgroups: CgroupVersion::V2,
            memory: false,
            pids: false,
            controllers_on_v1: vec![Controller::Memory],
            ..caps()
        };
        let p = SandboxPolicy {
            memory: Some(1),
            pids: Some(4),
            ..SandboxPolicy::default()
        };
        let r = c.predict(&p);
        let Enforcement::NotEnforced(why) = &r.memory else {
            panic!("memory: {:?}", r.memory)
        };
        assert!(why.contains("cgroup v1 only"), "{why}");
        let Enforcement::NotEnforced(why) = &r.pids else {
            panic!("pids: {:?}", r.pids)
        };
        assert!(why.contains("not delegated"), "{why}");
    }

    #[test]
    fn predict_grades_each_mechanism() {
        let p = SandboxPolicy {
            memory: Some(1),
            pids: Some(4),
            network: false,
            ..SandboxPolicy::default()
        };
        let r = caps().predict(&p);
        assert_eq!(r.memory, Enforcement::Enforced);
        assert!(matches!(r.pids, Enforcement::NotEnforced(_)));
        assert!(matches!(r.network, Enforcement::Partially(_)));
        assert_eq!(r.cpu, Enforcement::NotRequested);
        assert_eq!(r.fs, Enforcement::NotRequested);
        assert_eq!(r.rlimits, Enforcement::Enforced); // core = 0 by default
        let names: Vec<_> = r.shortfalls().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["pids", "network"]);
        assert!(!r.is_complete());
    }

    /// A PID namespace asked for where the host cannot make one is a
    /// shortfall named `pid_namespace` (a workflow that asks for it is then
    /// unavailable unless degraded); where it can, it is enforced; not
    /// asked for, it is not requested.
    #[test]
    fn pid_namespace_is_graded() {
        let p = SandboxPolicy {
            pid_namespace: true,
            ..SandboxPolicy::default()
        };
        let r = caps().predict(&p);
        assert!(matches!(r.pid_namespace, Enforcement::NotEnforced(_)));
        let names: Vec<_> = r.shortfalls().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["pid_namespace"]);
        let c = Capabilities {
            pid_ns: true,
            pid_ns_in_user_ns: false,
            ..caps()
        };
        assert_eq!(c.predict(&p).pid_namespace, Enforcement::Enforced);
        assert_eq!(
            c.predict(&SandboxPolicy::default()).pid_namespace,
            Enforcement::NotRequested
        );
        assert!(c.to_string().contains("pid namespace      yes"), "{c}");
    }

    #[test]
    fn capabilities_serialize_snake_case_and_print_a_table() {
        let c = caps();
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["cgroups"], "v1");
        assert_eq!(v["landlock"]["grade"], "full");
        assert_eq!(v["landlock"]["abi"], 7);
        assert_eq!(v["kill"], "freezer");
        let table = c.to_string();
        assert!(table.contains("landlock           full (ABI 7)"), "{table}");
        let e = serde_json::to_value(Enforcement::Partially("x".into())).expect("json");
        assert_eq!(e, serde_json::json!({"grade": "partially", "why": "x"}));
    }
}
