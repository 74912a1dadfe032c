//! Job states and the typed reason a job (or one attempt) ended.

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Terminal states never change again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "timed_out" => JobState::TimedOut,
            _ => return None,
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job or an attempt ended: exactly one reason. The exit code and the
/// signal number travel beside it (`exitCode`, `signal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The process exited by itself (code 0 or not).
    Exited,
    /// The process was killed by a signal nobody in tsbridge sent.
    Signaled,
    /// The wall-clock timeout expired.
    Timeout,
    /// The CPU-time limit (RLIMIT_CPU or cgroup) was reached.
    CpuLimit,
    /// The memory limit was reached (cgroup OOM kill, or a V8 heap OOM near it).
    MemoryLimit,
    /// The pids limit was reached.
    PidsLimit,
    /// A user cancelled the job.
    Cancelled,
    /// tsbridge was shutting down.
    Shutdown,
    /// tsbridge died while the job ran (found at restart).
    Interrupted,
    /// The process could not be started.
    SpawnFailure,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exited => "exited",
            EndReason::Signaled => "signaled",
            EndReason::Timeout => "timeout",
            EndReason::CpuLimit => "cpu_limit",
            EndReason::MemoryLimit => "memory_limit",
            EndReason::PidsLimit => "pids_limit",
            EndReason::Cancelled => "cancelled",
            EndReason::Shutdown => "shutdown",
            EndReason::Interrupted => "interrupted",
            EndReason::SpawnFailure => "spawn_failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "exited" => EndReason::Exited,
            "signaled" => EndReason::Signaled,
            "timeout" => EndReason::Timeout,
            "cpu_limit" => EndReason::CpuLimit,
            "memory_limit" => EndReason::MemoryLimit,
            "pids_limit" => EndReason::PidsLimit,
            "cancelled" => EndReason::Cancelled,
            "shutdown" => EndReason::Shutdown,
            "interrupted" => EndReason::Interrupted,
            "spawn_failure" => EndReason::SpawnFailure,
            _ => return None,
        })
    }

    /// Whether a resource limit ended the job (`ResourceLimitError`).
    pub fn is_resource_limit(self) -> bool {
        matches!(
            self,
            EndReason::CpuLimit | EndReason::MemoryLimit | EndReason::PidsLimit
        )
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::TimedOut,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(
            EndReason::parse("memory_limit"),
            Some(EndReason::MemoryLimit)
        );
        assert!(EndReason::MemoryLimit.is_resource_limit());
        assert!(!EndReason::Timeout.is_resource_limit());
    }
}
