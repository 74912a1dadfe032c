//! Reading a job's resource usage and deciding whether it hit a limit.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::fs::{FsKind, read_key, read_u64};
use crate::policy::SandboxPolicy;

/// Usage counters of one job cgroup. `None` = not available on this host/version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    /// Highest memory use in bytes (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub memory_peak: Option<u64>,
    /// Current memory use in bytes.
    pub memory_current: Option<u64>,
    /// Processes killed by the cgroup's OOM killer (v2 `memory.events` `oom_kill`,
    /// v1 `memory.oom_control` `oom_kill`). `memory.failcnt` is not used: it stays 0.
    pub oom_kills: Option<u64>,
    /// Tasks (processes and threads, zombies included) now in the job.
    pub pids_current: Option<u64>,
    /// Highest task count (`pids.peak`, kernel 6.1+ / some v1 kernels).
    pub pids_peak: Option<u64>,
    /// Forks refused because of `pids.max` (`pids.events` `max`).
    pub pids_max_events: Option<u64>,
    /// CPU time used by the job in ns (v2 `cpu.stat` `usage_usec`; v1 `cpuacct.usage`).
    pub cpu_usage_ns: Option<u64>,
    /// CFS periods in which the job was throttled by its CPU quota.
    pub cpu_nr_throttled: Option<u64>,
    /// Total time throttled, in ns.
    pub cpu_throttled_ns: Option<u64>,
}

/// Which limit ended a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitBreach {
    Memory,
    Pids,
    Cpu,
}

impl fmt::Display for LimitBreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpu => "cpu",
        })
    }
}

/// What node prints on stderr when V8 gives up (ends with SIGABRT): the process
/// engine may treat a job whose stderr contains it as a memory breach.
pub const V8_HEAP_OOM_MARKER: &str = "JavaScript heap out of memory";

impl CgroupStats {
    /// Which limit the job hit, given how its main process ended.
    /// Call it for a job that did not succeed and that tsbridge did not kill itself
    /// (timeout/cancel), with the main process's terminating signal.
    ///
    /// - Memory: the cgroup's OOM killer fired; or the process died by SIGABRT
    ///   (V8 heap OOM) with a peak at 60% of the limit or more; or (no OOM
    ///   counter on this host) SIGKILL with a peak at 95% of the limit or more.
    /// - Cpu: SIGXCPU (RLIMIT_CPU soft limit), or SIGKILL after at least the
    ///   RLIMIT_CPU seconds of CPU time (hard limit).
    /// - Pids: a fork was refused by `pids.max` (a job that hit its pids limit
    ///   and then failed ends with it too).
    pub fn breach(&self, policy: &SandboxPolicy, exit_signal: Option<i32>) -> Option<LimitBreach> {
        if self.oom_kills.unwrap_or(0) > 0 {
            return Some(LimitBreach::Memory);
        }
        if let (Some(limit), Some(peak)) = (policy.memory, self.memory_peak) {
            let near = |pct: u64| u128::from(peak) * 100 >= u128::from(limit) * u128::from(pct);
            match exit_signal {
                Some(libc::SIGABRT) if near(60) => return Some(LimitBreach::Memory),
                Some(libc::SIGKILL) if self.oom_kills.is_none() && near(95) => {
                    return Some(LimitBreach::Memory);
                }
                _ => {}
            }
        }
        match exit_signal {
            Some(libc::SIGXCPU) if policy.rlimits.cpu_seconds.is_some() => {
                return Some(LimitBreach::Cpu);
            }
            Some(libc::SIGKILL) => {
                if let (Some(secs), Some(used)) = (policy.rlimits.cpu_seconds, self.cpu_usage_ns)
                    && used >= secs.saturating_mul(1_000_000_000)
                {
                    return Some(LimitBreach::Cpu);
                }
            }
            _ => {}
        }
        if self.pids_max_events.unwrap_or(0) > 0 {
            return Some(LimitBreach::Pids);
        }
        None
    }
}

pub(crate) fn read_v2(fs: FsKind, dir: &Path) -> CgroupStats {
    let us = |v: Option<u64>| v.map(|x| x.saturating_mul(1000));
    CgroupStats {
        memory_peak: read_u64(fs, &dir.join("memory.peak")),
        memory_current: read_u64(fs, &dir.join("memory.current")),
        oom_kills: read_key(fs, &dir.join("memory.events"), "oom_kill"),
        pids_current: read_u64(fs, &dir.join("pids.current")),
        pids_peak: read_u64(fs, &dir.join("pids.peak")),
        pids_max_events: read_key(fs, &dir.join("pids.events"), "max"),
        cpu_usage_ns: us(read_key(fs, &dir.join("cpu.stat"), "usage_usec")),
        cpu_nr_throttled: read_key(fs, &dir.join("cpu.stat"), "nr_throttled"),
        cpu_throttled_ns: us(read_key(fs, &dir.join("cpu.stat"), "throttled_usec")),
    }
}

/// The counters of a cgroup's refused allocations so far: OOM kills at its
/// memory limit and forks refused at its pids limit. Cumulative over the
/// cgroup's life and only two small reads, so that a long-lived process (a
/// pool worker serving many jobs) can be read around each job to tell
/// which job hit a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LimitEvents {
    /// As [`CgroupStats::oom_kills`].
    pub oom_kills: Option<u64>,
    /// As [`CgroupStats::pids_max_events`].
    pub pids_refused: Option<u64>,
}

impl LimitEvents {
    /// The limit hit since `before` was read (memory first: an OOM kill is
    /// the harder failure), if any.
    pub fn since(&self, before: &LimitEvents) -> Option<LimitBreach> {
        let grew = |now: Option<u64>, then: Option<u64>| now.unwrap_or(0) > then.unwrap_or(0);
        if grew(self.oom_kills, before.oom_kills) {
            Some(LimitBreach::Memory)
        } else if grew(self.pids_refused, before.pids_refused) {
            Some(LimitBreach::Pids)
        } else {
            None
        }
    }
}

pub(crate) fn limit_events_v2(fs: FsKind, dir: &Path) -> LimitEvents {
    LimitEvents {
        oom_kills: read_key(fs, &dir.join("memory.events"), "oom_kill"),
        pids_refused: read_key(fs, &dir.join("pids.events"), "max"),
    }
}

pub(crate) fn limit_events_v1(
    fs: FsKind,
    memory: Option<&Path>,
    pids: Option<&Path>,
) -> LimitEvents {
    LimitEvents {
        oom_kills: memory.and_then(|d| read_key(fs, &d.join("memory.oom_control"), "oom_kill")),
        pids_refused: pids.and_then(|d| read_key(fs, &d.join("pids.events"), "max")),
    }
}

pub(crate) fn read_v1(
    fs: FsKind,
    memory: Option<&Path>,
    pids: Option<&Path>,
    cpu: Option<&Path>,
    cpuacct: Option<&Path>,
) -> CgroupStats {
    let m = |f: &str| memory.and_then(|d| read_u64(fs, &d.join(f)));
    let p = |f: &str| pids.and_then(|d| read_u64(fs, &d.join(f)));
    CgroupStats {
        memory_peak: m("memory.max_usage_in_bytes"),
        memory_current: m("memory.usage_in_bytes"),
        oom_kills: memory.and_then(|d| read_key(fs, &d.join("memory.oom_control"), "oom_kill")),
        pids_current: p("pids.current"),
        pids_peak: p("pids.peak"),
        pids_max_events: pids.and_then(|d| read_key(fs, &d.join("pids.events"), "max")),
        cpu_usage_ns: cpuacct.and_then(|d| read_u64(fs, &d.join("cpuacct.usage"))),
        cpu_nr_throttled: cpu.and_then(|d| read_key(fs, &d.join("cpu.stat"), "nr_throttled")),
        cpu_throttled_ns: cpu.and_then(|d| read_key(fs, &d.join("cpu.stat"), "throttled_time")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_policy(limit: u64) -> SandboxPolicy {
        SandboxPolicy {
            memory: Some(limit),
            ..SandboxPolicy::default()
        }
    }

    #[test]
    fn limit_events_name_the_counter_that_grew() {
        let before = LimitEvents {
            oom_kills: Some(0),
            pids_refused: Some(2),
        };
        assert_eq!(before.since(&before), None);
        let forks = LimitEvents {
            pids_refused: Some(3),
            ..before
        };
        assert_eq!(forks.since(&before), Some(LimitBreach::Pids));
        let both = LimitEvents {
            oom_kills: Some(1),
            pids_refused: Some(5),
        };
        assert_eq!(both.since(&before), Some(LimitBreach::Memory));
        // A counter this host does not have never grows.
        assert_eq!(LimitEvents::default().since(&LimitEvents::default()), None);
    }

    #[test]
    fn oom_kill_counter_means_memory() {
        let s = CgroupStats {
            oom_kills: Some(1),
            pids_max_events: Some(3),
            ..Default::default()
        };
        assert_eq!(
            s.breach(&mem_policy(100), Some(libc::SIGKILL)),
            Some(LimitBreach::Memory)
        );
    }

    #[test]
    fn v8_heap_oom_near_limit_means_memory_but_far_below_does_not() {
        let near = CgroupStats {
            oom_kills: Some(0),
            memory_peak: Some(80),
            ..Default::default()
        };
        assert_eq!(
            near.breach(&mem_policy(100), Some(libc::SIGABRT)),
            Some(LimitBreach::Memory)
        );
        let far = CgroupStats {
            oom_kills: Some(0),
            memory_peak: Some(10),
            ..Default::default()
        };
        assert_eq!(far.breach(&mem_policy(100), Some(libc::SIGABRT)), None);
        assert_eq!(
            near.breach(&SandboxPolicy::default(), Some(libc::SIGABRT)),
            None
        );
    }

    #[test]
    fn sigkill_without_oom_counter_is_memory_only_at_the_limit() {
        let s = CgroupStats {
            memory_peak: Some(99),
            ..Default::default()
        };
        assert_eq!(
            s.breach(&mem_policy(100), Some(libc::SIGKILL)),
            Some(LimitBreach::Memory)
        );
        let with_counter = CgroupStats {
            oom_kills: Some(0),
            memory_peak: Some(99),
            ..Default::default()
        };
        assert_eq!(
            with_counter.breach(&mem_policy(100), Some(libc::SIGKILL)),
            None
        );
    }

    #[test]
    fn pids_events_mean_pids() {
        let s = CgroupStats {
            pids_max_events: Some(2),
            ..Default::default()
        };
        assert_eq!(
            s.breach(&SandboxPolicy::default(), None),
            Some(LimitBreach::Pids)
        );
        assert_eq!(
            CgroupStats::default().breach(&SandboxPolicy::default(), None),
            None
        );
    }

    #[test]
    fn sigxcpu_means_cpu() {
        let mut p = SandboxPolicy::default();
        p.rlimits.cpu_seconds = Some(1);
        assert_eq!(
            CgroupStats::default().breach(&p, Some(libc::SIGXCPU)),
            Some(LimitBreach::Cpu)
        );
        let s = CgroupStats {
            cpu_usage_ns: Some(1_200_000_000),
            ..Default::default()
        };
        assert_eq!(s.breach(&p, Some(libc::SIGKILL)), Some(LimitBreach::Cpu));
        assert_eq!(LimitBreach::Cpu.to_string(), "cpu");
    }
}
