//! The production [`Launcher`]: each worker is one job of the process
//! engine (`tsbridge_process::spawn` with the IPC channel open), so it gets
//! everything a spawned job gets: its own process group, the parent-death
//! signal, an allowlisted environment, bounded capture of stdout/stderr, and
//! a kill of its whole tree (TERM, grace, KILL) when the pool asks for it.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tsbridge_process::ipc::{IpcError, IpcHandle};
use tsbridge_process::{ExitKind, JobKey, JobSpec, RunningProcess, StopReason};
use tsbridge_proto::{EndReason, WorkerId};
use tsbridge_sandbox::{LimitBreach, LimitEvents, PreparedSandbox};

use super::config::{PoolConfig, WorkerSpec};
use super::errors::{HostScriptError, WorkerExit, WorkerStartError};
use super::host_script::HostFile;
use super::worker::{HostLink, Launcher, LinkError, WorkerIo};

/// Starts workers as engine jobs running the worker host.
#[derive(Debug)]
pub struct EngineLauncher {
    spec: WorkerSpec,
    host: HostFile,
    kill_grace: Duration,
    dev: bool,
}

impl EngineLauncher {
    /// Materializes the host script (removed when this launcher is dropped).
    pub fn new(spec: WorkerSpec, cfg: &PoolConfig) -> Result<Self, HostScriptError> {
        let host = HostFile::materialize(&spec.host)?;
        Ok(Self {
            spec,
            host,
            kill_grace: cfg.kill_grace,
            dev: cfg.dev_mode,
        })
    }

    /// Where the worker host script is on disk.
    pub fn host_path(&self) -> &Path {
        self.host.path()
    }

    /// The worker's job spec, and a weak handle on its sandbox (to read its
    /// limit counters without keeping its cgroup alive). On a failure, the
    /// worker's private TMPDIR is removed: its sandbox makes it before the
    /// engine does (Landlock can only grant a path that exists), and a
    /// failed start (a sandbox that cannot be set up, at each retry) left
    /// it for as long as tsbridge ran.
    fn job_spec(
        &self,
        worker: WorkerId,
    ) -> Result<(JobSpec, Option<Weak<PreparedSandbox>>), WorkerStartError> {
        let key = JobKey::generate();
        let spec = self.job_spec_for(worker, &key);
        if spec.is_err()
            && let Some(base) = &self.spec.tmp_base
        {
            remove_worker_tmp(base, &key);
        }
        spec
    }

    fn job_spec_for(
        &self,
        worker: WorkerId,
        key: &JobKey,
    ) -> Result<(JobSpec, Option<Weak<PreparedSandbox>>), WorkerStartError> {
        let s = &self.spec;
        let sandbox = match &s.sandbox {
            Some(prepare) => {
                (prepare.0)(key, self.host.path()).map_err(|e| WorkerStartError::Spawn(e.into()))?
            }
            None => None,
        };
        // Only a worker with a memory or pids limit can breach one.
        let counters = sandbox
            .as_ref()
            .filter(|a| a.policy.memory.is_some() || a.policy.pids.is_some())
            .map(|a| Arc::downgrade(&a.prepared));
        let mut b = JobSpec::builder(&s.program)
            .args(s.node_args.iter().cloned())
            .arg(self.host.path())
            .arg(&s.module);
        if self.dev {
            b = b.arg("--dev");
        }
        b.cwd(&s.cwd)
            .envs(s.env.clone())
            .ipc(true)
            .kill_grace(self.kill_grace)
            .max_output(s.max_output)
            .masker(s.masker.clone())
            .label(format!("pool {} {worker}", s.name))
            .key(key.clone())
            .sandbox(sandbox)
            .private_tmp(s.tmp_base.clone())
            .build()
            .map(|spec| (spec, counters))
            .map_err(|e| WorkerStartError::Spawn(Box::new(e)))
    }
}

/// Removes the private TMPDIR a worker that did not start may have got in
/// `base` (named for this process and `key`, so never anybody else's;
/// `remove_dir_all` follows no symlink).
fn remove_worker_tmp(base: &Path, key: &JobKey) {
    let Ok(base) = std::path::absolute(base) else {
        return;
    };
    let dir = tsbridge_process::private_tmp_path(&base, key.as_str());
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a worker's TMPDIR");
    }
}

#[async_trait::async_trait]
impl Launcher for EngineLauncher {
    async fn launch(&self, worker: WorkerId) -> Result<WorkerIo, WorkerStartError> {
        let (spec, counters) = self.job_spec(worker)?;
        let mut process = tsbridge_process::spawn(spec)
            .await
            .map_err(|e| WorkerStartError::Spawn(Box::new(e)))?;
        let Some(ipc) = process.ipc() else {
            return Err(WorkerStartError::Spawn(
                "the engine opened no ipc channel".into(),
            ));
        };
        // The worker's own pid: under the init of a PID namespace of its
        // own (`limits.pid_namespace`), the init's child, not the init.
        let pid = process.main_pid();
        let events = match process.take_events() {
            Some(rx) => rx,
            None => mpsc::channel(1).1,
        };
        let (exit_tx, exit) = oneshot::channel();
        let kill = CancellationToken::new();
        let control = process.control();
        tokio::spawn(supervise(process, kill.clone(), exit_tx));
        Ok(WorkerIo {
            pid: Some(pid),
            link: Arc::new(EngineLink(ipc, control, counters)),
            events,
            exit,
            kill,
        })
    }
}

/// Owns the process: kills its tree when asked, reports how it ended (the
/// engine closes its event stream before `wait` returns).
async fn supervise(
    process: RunningProcess,
    kill: CancellationToken,
    exit_tx: oneshot::Sender<WorkerExit>,
) {
    let control = process.control();
    let wait = process.wait();
    tokio::pin!(wait);
    let outcome = tokio::select! {
        o = &mut wait => o,
        _ = kill.cancelled() => {
            control.stop(StopReason::Cancelled, None);
            wait.await
        }
    };
    // The engine tells a limit's breach from a crash (the worker's cgroup
    // counters); the job it ran must end with that limit as its reason.
    let limit = match outcome.reason {
        EndReason::MemoryLimit => Some(LimitBreach::Memory),
        EndReason::PidsLimit => Some(LimitBreach::Pids),
        EndReason::CpuLimit => Some(LimitBreach::Cpu),
        _ => None,
    };
    let exit = match (limit, outcome.exit) {
        (Some(limit), exit) => WorkerExit::Limit {
            limit,
            code: exit.code(),
            signal: exit.signal(),
        },
        (None, ExitKind::Code(c)) => WorkerExit::Code(c),
        (None, ExitKind::Signal(s)) => WorkerExit::Signal(s),
    };
    let _ = exit_tx.send(exit);
}

/// The engine's IPC handle as the pool's [`HostLink`], the worker
/// process's control (to kill what a job left behind), and its sandbox when
/// it has limits (weak: the engine owns it, and removes its cgroup).
#[derive(Debug)]
struct EngineLink(
    IpcHandle,
    tsbridge_process::ProcessControl,
    Option<Weak<PreparedSandbox>>,
);

#[async_trait::async_trait]
impl HostLink for EngineLink {
    async fn request(&self, payload: Value, timeout: Duration) -> Result<Value, LinkError> {
        self.0.request(payload, timeout).await.map_err(|e| match e {
            IpcError::Timeout { timeout, .. } => LinkError::Timeout(timeout),
            IpcError::Remote { payload, .. } => LinkError::Remote(payload),
            _ => LinkError::Closed,
        })
    }

    async fn close(&self) {
        self.0.close().await;
    }

    async fn kill_strays(&self) -> usize {
        self.1.kill_descendants().await
    }

    async fn keep_helpers(&self) -> usize {
        self.1.keep_descendants().await
    }

    fn limit_events(&self) -> Option<LimitEvents> {
        let prepared = self.2.as_ref()?.upgrade()?;
        prepared.cgroup().map(|cg| cg.limit_events())
    }
}
