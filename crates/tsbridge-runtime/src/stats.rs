//! Point-in-time counters of the runtime (also exported through the
//! `metrics` facade: `tsbridge_jobs_total{workflow,state}`,
//! `tsbridge_job_duration_seconds`, `tsbridge_queue_depth`,
//! `tsbridge_jobs_running`, `tsbridge_spawn_failures_total`).

use std::collections::BTreeMap;

use crate::pool::PoolStats;

/// A snapshot, as `Runtime::stats` returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Jobs waiting for a slot (ready or waiting for a retry), on this node.
    pub queued: u64,
    pub running: u64,
    /// Every workflow of the config, with 0 when none of its jobs runs.
    pub running_by_workflow: BTreeMap<String, u64>,
    /// Jobs finished since start: workflow -> state -> count.
    pub finished: BTreeMap<String, BTreeMap<String, u64>>,
    /// The warm worker pools of `mode = "pool"` workflows, by workflow
    /// (pools start at startup, or with their first job when that failed).
    pub pools: BTreeMap<String, PoolStats>,
}
