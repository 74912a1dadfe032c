//! [`PoolExecutor`]: the dispatcher's [`Executor`] for `mode = "pool"`
//! workflows. One [`Pool`] per workflow, started on first use (or by
//! [`PoolExecutor::start_all`]); an attempt is one pooled job. The worker's
//! environment, sandbox and TMPDIR are built like a spawned job's, once per
//! worker: a request's own `env` cannot reach a warm worker and is ignored
//! (documented in docs/design/pool.md).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;
use tsbridge_process::StopReason;
use tsbridge_process::mask::Masker;
use tsbridge_proto::EndReason;
use tsbridge_proto::api::{OutputView, Resources};
use tsbridge_sandbox::Sandbox;

use super::config::{PoolConfig, WorkerSandbox, WorkerSpec};
use super::errors::{PoolJobError, WorkerExit, WorkerStartError};
use super::host_script::HostScript;
use super::{Pool, PoolEvent, PoolJob, PoolStats};
use crate::config::{Mode, RuntimeKind, WorkflowConfig};
use crate::executor::{AttemptEvent, AttemptIo, AttemptOutcome, AttemptRequest, Executor};

/// Runs attempts of pool-mode workflows on warm workers.
#[derive(Debug, Default)]
pub struct PoolExecutor {
    sandbox: Option<Arc<Sandbox>>,
    tmp_base: Option<PathBuf>,
    host: HostScript,
    dev_mode: bool,
    /// Masked in every job's events, result and error.
    secrets: crate::spawn::HostSecrets,
    /// One pool per workflow name. The lock only guards the map (never held
    /// across an await); the cell serializes the pool's start.
    pools: Mutex<HashMap<String, Arc<OnceCell<Pooled>>>>,
    /// Set by [`Executor::shutdown`]: no pool starts after it. A start holds
    /// it (read) until its pool is in `pools`, so the shutdown, which takes
    /// it to write, waits for the starts under way and then finds their
    /// pools: none outlives it (a failed pool's retries may start one at
    /// any time).
    closed: tokio::sync::RwLock<bool>,
}

/// A started pool and the masker of its workers, which its jobs share: a
/// pooled job adds nothing to the workflow's environment, so its secrets
/// are its workers'. Kept here so that a job does not look the masker up
/// again (a scan of `env.set`'s names, and with secrets a sort and a
/// comparison of the values under a lock: ~10 us with a PEM key).
#[derive(Clone, Debug)]
struct Pooled {
    pool: Pool,
    masker: Arc<Masker>,
}

impl PoolExecutor {
    /// `sandbox`/`tmp_base` as for the spawn executor; `host`: where the
    /// worker host script comes from; `dev_mode`: handler errors keep their stack.
    pub fn new(
        sandbox: Option<Arc<Sandbox>>,
        tmp_base: Option<PathBuf>,
        host: HostScript,
        dev_mode: bool,
    ) -> Self {
        Self {
            sandbox,
            tmp_base,
            host,
            dev_mode,
            secrets: crate::spawn::HostSecrets::from_process_env(None),
            pools: Mutex::new(HashMap::new()),
            closed: tokio::sync::RwLock::new(false),
        }
    }

    /// Masks these host secrets (instead of the environment's alone).
    pub fn with_host_secrets(mut self, secrets: crate::spawn::HostSecrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Starts (and, with `warmup`, warms) the pools of these workflows now,
    /// so that the first jobs find ready workers. Returns the failures.
    pub async fn start_all<'a>(
        &self,
        workflows: impl IntoIterator<Item = &'a WorkflowConfig>,
    ) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for wf in workflows {
            if wf.mode != Mode::Pool {
                continue;
            }
            if let Err(e) = self.pool_for(wf).await {
                failed.push((wf.name.clone(), e));
            }
        }
        failed
    }

    /// The pool of `wf`, started if needed.
    pub async fn pool_for(&self, wf: &WorkflowConfig) -> Result<Pool, String> {
        self.pooled(wf).await.map(|p| p.pool)
    }

    /// The pool of `wf` (started if needed) and its workers' masker.
    async fn pooled(&self, wf: &WorkflowConfig) -> Result<Pooled, String> {
        let cell = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.entry(wf.name.clone()).or_default().clone()
        };
        if let Some(p) = cell.get() {
            return Ok(p.clone());
        }
        let closed = self.closed.read().await;
        if *closed {
            return Err("tsbridge is shutting down: no worker pool starts".to_owned());
        }
        cell.get_or_try_init(|| async {
            let (spec, cfg) = self.pool_spec(wf);
            let masker = spec.masker.clone();
            let pool = Pool::start(spec, cfg).await.map_err(|e| {
                tracing::warn!(workflow = %wf.name, error = %error_chain(&e), "pool failed to start");
                error_chain(&e)
            })?;
            Ok(Pooled { pool, masker })
        })
        .await
        .cloned()
    }

    fn tmp_base(&self) -> PathBuf {
        self.tmp_base.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// The worker spec and pool settings of a workflow.
    pub fn pool_spec(&self, wf: &WorkflowConfig) -> (WorkerSpec, PoolConfig) {
        let (program, mut node_args) = crate::spawn::invocation(wf.runtime, &wf.script);
        // `invocation` ends with the script; the host comes in between.
        node_args.pop();
        let pass: Vec<&str> = wf.env.pass.iter().map(String::as_str).collect();
        let mut env = tsbridge_sandbox::env::build_child_env(&pass, std::env::vars(), &wf.env.set);
        if matches!(wf.runtime, RuntimeKind::Tsx) {
            // tsx transpiles through an esbuild service it starts on its
            // first transform. With its disk cache, a worker's module loads
            // without one, so the service would start in a job and the
            // per-job sweep would kill it as that job's stray (and every
            // later .ts import fail). Uncached, the module's own transform
            // starts it while the worker loads: a helper of the worker's
            // (see `HostLink::keep_helpers`).
            env.entry("TSX_DISABLE_CACHE".to_owned())
                .or_insert_with(|| "1".to_owned());
        }
        // As in spawn mode, a worker without limits still gets a cgroup where
        // the host has them: its whole tree is found (and the per-job sweep
        // is one listing), and rlimits, no_new_privs and seccomp come with it.
        let sandbox = self
            .sandbox
            .as_ref()
            .map(|sb| worker_sandbox(sb.clone(), wf.clone(), self.tmp_base()));
        let spec = WorkerSpec {
            name: wf.name.clone(),
            program,
            node_args,
            module: wf.script.clone(),
            cwd: wf.cwd.clone(),
            // The same secrets as its jobs' (`env` adds none to `env.set`).
            masker: self.secrets.masker_for_workflow(wf),
            env,
            host: self.host.clone(),
            max_output: usize::try_from(wf.max_output.bytes()).unwrap_or(usize::MAX),
            tmp_base: Some(self.tmp_base()),
            sandbox,
        };
        let p = &wf.pool;
        let cfg = PoolConfig {
            min: p.min,
            max: p.max.max(1),
            max_age: p.max_age,
            idle_timeout: p.idle_timeout,
            max_jobs: p.max_jobs,
            warmup: p.warmup,
            job_timeout: Some(wf.timeout),
            kill_grace: wf.kill_grace,
            dev_mode: self.dev_mode,
            ..PoolConfig::default()
        };
        (spec, cfg)
    }
}

/// Prepares each worker's sandbox from the workflow's limits, letting it
/// read the worker host script.
fn worker_sandbox(sb: Arc<Sandbox>, wf: WorkflowConfig, tmp_base: PathBuf) -> WorkerSandbox {
    WorkerSandbox(Arc::new(move |key, host: &Path| {
        // The engine makes this same private TMPDIR for the worker; make it
        // now, because Landlock can only grant a path that exists (the
        // launcher removes it again if the worker does not start).
        // A `dynamic` workflow's worker leases a uid for its lifetime (its
        // jobs share it, as they share its process): held by its sandbox,
        // which the engine drops after the worker's TMPDIR is removed and
        // its tree is gone.
        let (user, lease) = crate::spawn::job_user(&wf).map_err(|e| e.to_string())?;
        let tmpdir = tsbridge_process::make_private_tmp_for(
            &tmp_base,
            key.as_str(),
            crate::spawn::tmp_owner(user),
        )
        .map_err(|e| format!("cannot create the worker's TMPDIR: {e}"))?;
        let mut policy = crate::spawn::policy_for_user(&wf, &tmpdir, user);
        // RLIMIT_CPU would count a warm worker's CPU time over all its jobs.
        policy.rlimits.cpu_seconds = None;
        if let (Some(fs), Some(dir)) = (policy.fs.take(), host.parent()) {
            policy.fs = Some(fs.allow_read(dir.to_path_buf()));
        }
        let prepared = match sb.prepare(key.as_str(), &policy) {
            Ok(p) => p,
            // Without limits (and user) the sandbox is only tracking: run
            // without it where the host cannot (as spawn mode does).
            Err(e) if !wf.limits.any() && wf.user.is_none() => {
                tracing::debug!(error = %e, "no tracking cgroup for this worker");
                return Ok(None);
            }
            Err(e) => return Err(format!("sandbox setup failed: {e}")),
        };
        let short = prepared.report().shortfalls();
        if !short.is_empty() && !wf.limits.degraded {
            let names: Vec<&str> = short.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "cannot enforce the {} limit(s) on this host",
                names.join(", ")
            ));
        }
        Ok(Some(crate::spawn::attachment(prepared, policy, lease)))
    }))
}

/// The workflow's module as its config names it (no host path).
fn module_name(wf: &WorkflowConfig) -> String {
    crate::spawn::program_name(&wf.script, &wf.root)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[async_trait]
impl Executor for PoolExecutor {
    fn pools(&self) -> BTreeMap<String, PoolStats> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .iter()
            .filter_map(|(name, cell)| cell.get().map(|p| (name.clone(), p.pool.stats())))
            .collect()
    }

    fn check(&self, wf: &WorkflowConfig) -> Result<(), String> {
        if !wf.runtime.is_node() {
            return Err("pool mode needs a node runtime (tsx, ts-node or node)".into());
        }
        crate::spawn::SpawnExecutor::new(self.sandbox.clone(), self.tmp_base.clone()).check(wf)
    }

    async fn run(&self, mut req: AttemptRequest, io: AttemptIo) -> AttemptOutcome {
        let Pooled { pool, masker } = match self.pooled(&req.workflow).await {
            Ok(p) => p,
            Err(e) => {
                return AttemptOutcome::spawn_failure(
                    format!(
                        "the worker pool of {} could not start: {e}",
                        module_name(&req.workflow)
                    ),
                    false,
                );
            }
        };
        // As in spawn mode: checked again now, and the handler gets the
        // checked canonical paths (see `path_params`).
        // The request's own params move to the job (a copy only when a path
        // parameter was rewritten).
        let params = match crate::path_params::for_attempt(&req) {
            Ok(Cow::Owned(p)) => p,
            Ok(Cow::Borrowed(_)) => std::mem::take(&mut req.params),
            Err(refused) => return *refused,
        };
        let cancel = CancellationToken::new();
        let job = PoolJob {
            job_id: req.job_id,
            workflow: req.workflow.name.clone(),
            params,
            timeout: Some(req.timeout),
            cancel: cancel.clone(),
        };
        let (tx, mut rx) = mpsc::channel(256);
        let events = io.events.clone();
        // The job's stderr is the worker's stderr lines while it ran: their
        // masked tail goes into the error's details, as a spawned job's.
        let forward_masker = masker.clone();
        let forward = async move {
            let mut stderr = StderrTail::default();
            // Once the consumer is gone the events are still read: the
            // stderr tail is the job's whatever became of its stream.
            let mut consumer = true;
            while let Some(e) = rx.recv().await {
                let e = match e {
                    PoolEvent::Started { pid: Some(pid), .. } => AttemptEvent::Started { pid },
                    PoolEvent::Started { pid: None, .. } => continue,
                    PoolEvent::Child(c) => {
                        let c = mask_event(&forward_masker, c);
                        if let tsbridge_proto::ChildEvent::Output {
                            stream: tsbridge_proto::event::Stream::Stderr,
                            line,
                        } = &c
                        {
                            stderr.push_line(line);
                        }
                        AttemptEvent::Child(c)
                    }
                };
                if consumer && events.send(e).await.is_err() {
                    consumer = false;
                }
            }
            stderr.into_string()
        };
        // A stop request (cancel, shutdown) aborts the job on its worker
        // (watched here, not by a task of its own).
        let work = async { tokio::join!(pool.run(job, tx), forward) };
        tokio::pin!(work);
        let (o, stderr_tail) = tokio::select! {
            biased;
            done = &mut work => done,
            _ = io.control.stopped() => {
                cancel.cancel();
                work.await
            }
        };
        let stop = io.control.request().map(|r| r.reason);
        let mut out = AttemptOutcome {
            reason: EndReason::Exited,
            exit_code: Some(0),
            signal: None,
            pid: o.pid,
            result: None,
            error: None,
            transient: false,
            stderr_tail,
            output: OutputView::default(),
            resources: Resources {
                peak_memory_bytes: None,
                cpu_time_ms: None,
                wall_time_ms: Some(o.ran.as_millis() as u64),
            },
        };
        match o.result {
            Ok(mut v) => {
                masker.mask_json(&mut v);
                out.result = Some(v);
            }
            Err(e) => {
                let (reason, code, signal, transient) = end_of(&e, stop);
                out.reason = reason;
                out.exit_code = code;
                out.signal = signal;
                out.transient = transient;
                let message = match &e {
                    PoolJobError::Handler {
                        stack: Some(stack), ..
                    } => format!("{e}\n{stack}"),
                    PoolJobError::WorkerCrashed {
                        worker,
                        exit: WorkerExit::Signal(s),
                    } => format!(
                        "worker {worker} died while running the job (killed by signal {})",
                        tsbridge_proto::api::describe_signal(*s)
                    ),
                    PoolJobError::WorkerCrashed {
                        worker,
                        exit: WorkerExit::Limit { limit, .. },
                    } => format!("the job hit its {limit} limit (worker {worker} ended)"),
                    // Why, not only that: the module and the cause (its
                    // load error, the OS error of the spawn).
                    PoolJobError::WorkerStart(cause) => format!(
                        "cannot start a pool worker for {}: {}",
                        module_name(&req.workflow),
                        error_chain(cause)
                    ),
                    _ => e.to_string(),
                };
                out.error = Some(masker.mask(&message).into_owned());
            }
        }
        out
    }

    async fn shutdown(&self, grace: Duration) {
        *self.closed.write().await = true;
        let pools: Vec<Pool> = {
            let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools
                .values()
                .filter_map(|c| c.get().map(|p| p.pool.clone()))
                .collect()
        };
        futures::future::join_all(pools.iter().map(|p| p.shutdown(grace))).await;
    }
}

/// The last [`crate::spawn::STDERR_TAIL`] bytes of a pooled job's stderr
/// lines (bounded while they come, cut at a character boundary).
#[derive(Debug, Default)]
struct StderrTail(String);

impl StderrTail {
    fn push_line(&mut self, line: &str) {
        self.0.push_str(line);
        self.0.push('\n');
        if self.0.len() > 2 * crate::spawn::STDERR_TAIL {
            self.keep_tail();
        }
    }

    fn keep_tail(&mut self) {
        let kept =
            tsbridge_process::capture::tail_at_char_boundary(&self.0, crate::spawn::STDERR_TAIL)
                .len();
        self.0.drain(..self.0.len() - kept);
    }

    fn into_string(mut self) -> String {
        self.keep_tail();
        self.0
    }
}

/// A worker's event with the job's secrets masked.
fn mask_event(masker: &Masker, e: tsbridge_proto::ChildEvent) -> tsbridge_proto::ChildEvent {
    use tsbridge_proto::ChildEvent as E;
    if masker.is_empty() {
        return e;
    }
    match e {
        E::Log {
            level,
            message,
            child_timestamp,
        } => E::Log {
            level,
            message: masker.mask(&message).into_owned(),
            child_timestamp,
        },
        E::Progress(mut p) => {
            p.message = masker.mask(&p.message).into_owned();
            E::Progress(p)
        }
        E::Result { mut value } => {
            masker.mask_json(&mut value);
            E::Result { value }
        }
        E::Output { stream, line } => E::Output {
            stream,
            line: masker.mask(&line).into_owned(),
        },
    }
}

/// The end reason, exit code, signal and retryability of a failed pooled job.
fn end_of(
    e: &PoolJobError,
    stop: Option<StopReason>,
) -> (EndReason, Option<i32>, Option<i32>, bool) {
    match e {
        // A handler error is the pool's "non-zero exit".
        PoolJobError::Handler { .. } => (EndReason::Exited, Some(1), None, false),
        PoolJobError::LimitHit { limit, .. } => (limit_reason(*limit), Some(1), None, false),
        PoolJobError::WorkerCrashed { exit, .. } => match exit {
            WorkerExit::Code(c) => (EndReason::Exited, Some(*c), None, false),
            WorkerExit::Signal(s) => (EndReason::Signaled, None, Some(*s), false),
            WorkerExit::Limit {
                limit,
                code,
                signal,
            } => (limit_reason(*limit), *code, *signal, false),
            WorkerExit::Unknown => (EndReason::Exited, None, None, false),
        },
        PoolJobError::Timeout { .. } => (EndReason::Timeout, None, None, false),
        PoolJobError::Cancelled { .. } | PoolJobError::ShuttingDown => match stop {
            Some(StopReason::Shutdown) => (EndReason::Shutdown, None, None, false),
            Some(StopReason::Cancelled) => (EndReason::Cancelled, None, None, false),
            None if matches!(e, PoolJobError::ShuttingDown) => {
                (EndReason::Shutdown, None, None, false)
            }
            None => (EndReason::Cancelled, None, None, false),
        },
        PoolJobError::AcquireTimeout(_) | PoolJobError::QueueFull(_) => {
            (EndReason::SpawnFailure, None, None, true)
        }
        PoolJobError::WorkerStart(WorkerStartError::Spawn(_)) => {
            (EndReason::SpawnFailure, None, None, true)
        }
        PoolJobError::WorkerStart(_) => (EndReason::SpawnFailure, None, None, false),
    }
}

/// The end reason of a job whose worker hit this limit.
fn limit_reason(limit: tsbridge_sandbox::LimitBreach) -> EndReason {
    match limit {
        tsbridge_sandbox::LimitBreach::Memory => EndReason::MemoryLimit,
        tsbridge_sandbox::LimitBreach::Pids => EndReason::PidsLimit,
        tsbridge_sandbox::LimitBreach::Cpu => EndReason::CpuLimit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled job's stderr tail keeps the last lines, bounded, cut at a
    /// character boundary.
    #[test]
    fn the_stderr_tail_is_bounded_and_whole_characters() {
        let mut t = StderrTail::default();
        for i in 0..10_000 {
            t.push_line(&format!("é line {i}"));
        }
        let s = t.into_string();
        assert!(s.len() <= crate::spawn::STDERR_TAIL, "{}", s.len());
        assert!(s.ends_with("é line 9999\n"), "{s}");
        let mut t = StderrTail::default();
        t.push_line("only");
        assert_eq!(t.into_string(), "only\n");
    }

    /// A tsx workflow's workers run without tsx's disk cache (so that its
    /// esbuild service starts while they load), unless the workflow says
    /// otherwise; other runtimes are left alone.
    #[test]
    fn tsx_workers_run_without_the_disk_cache() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for f in ["a.ts", "b.ts", "c.mjs"] {
            std::fs::write(dir.path().join(f), "").unwrap_or_else(|e| panic!("{e}"));
        }
        let cfg = crate::config::Config::parse(
            "[workflows.a]\nscript = \"a.ts\"\nruntime = \"tsx\"\nmode = \"pool\"\n\
             [workflows.b]\nscript = \"b.ts\"\nruntime = \"tsx\"\nmode = \"pool\"\n\
             env = { set = { TSX_DISABLE_CACHE = \"\" } }\n\
             [workflows.c]\nscript = \"c.mjs\"\nruntime = \"node\"\nmode = \"pool\"\n",
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let ex = PoolExecutor::new(None, None, HostScript::Embedded, false);
        let env = |wf: &str| ex.pool_spec(&cfg.workflows[wf]).0.env;
        assert_eq!(
            env("a").get("TSX_DISABLE_CACHE").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            env("b").get("TSX_DISABLE_CACHE").map(String::as_str),
            Some("")
        );
        assert_eq!(env("c").get("TSX_DISABLE_CACHE"), None);
    }

    /// The jobs of one pool workflow with a secret in `env.set` share its
    /// workers' masker, kept with the pool: not looked up per job (after
    /// the workflow's masker left the `HostSecrets` cache, a lookup would
    /// build another), and it masks that secret and the host's.
    #[tokio::test]
    async fn jobs_of_a_workflow_share_its_workers_masker() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("p.mjs"), "").unwrap_or_else(|e| panic!("{e}"));
        let cfg = crate::config::Config::parse(
            "[workflows.p]\nscript = \"p.mjs\"\nmode = \"pool\"\npool = { min = 0, max = 1 }\n\
             env = { set = { API_TOKEN = \"wf-secret-0123456789\", LANG = \"C\" } }\n",
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let wf = &cfg.workflows["p"];
        let ex = PoolExecutor::new(
            None,
            Some(dir.path().to_owned()),
            HostScript::Embedded,
            false,
        )
        .with_host_secrets(crate::spawn::HostSecrets::new([
            "host-secret-9876543210".to_owned()
        ]));
        let first = ex.pooled(wf).await.unwrap_or_else(|e| panic!("{e}")).masker;
        assert!(Arc::ptr_eq(&first, &ex.secrets.masker_for_workflow(wf)));
        // Other workflows' secrets push this one's masker out of the cache.
        for i in 0..40 {
            let mut w = wf.clone();
            w.env
                .set
                .insert("API_TOKEN".into(), format!("other-secret-{i:04}"));
            ex.secrets.masker_for_workflow(&w);
        }
        assert!(!Arc::ptr_eq(&first, &ex.secrets.masker_for_workflow(wf)));
        let again = ex.pooled(wf).await.unwrap_or_else(|e| panic!("{e}")).masker;
        assert!(Arc::ptr_eq(&first, &again), "a job looked its masker up");
        assert_eq!(
            again.mask("a wf-secret-0123456789 b host-secret-9876543210 c"),
            "a [REDACTED] b [REDACTED] c"
        );
        ex.shutdown(Duration::ZERO).await;
    }

    /// A worker whose sandbox cannot be set up does not start, and leaves
    /// no TMPDIR behind: the sandbox made it first (Landlock can only grant
    /// a path that exists), and it stayed (one per retried start, while
    /// tsbridge kept running).
    #[tokio::test]
    async fn a_worker_whose_sandbox_fails_leaves_no_tmpdir() {
        use super::super::worker::Launcher;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = dir.path().join("tmp");
        std::fs::create_dir(&base).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("p.mjs"), "").unwrap_or_else(|e| panic!("{e}"));
        // A memory limit without cgroups cannot be enforced (not degraded).
        let cfg = crate::config::Config::parse(
            "[workflows.p]\nscript = \"p.mjs\"\nmode = \"pool\"\nlimits = { memory = \"256MiB\" }\n",
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let sandbox = Sandbox::new(tsbridge_sandbox::SandboxConfig {
            use_cgroups: false,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let ex = PoolExecutor::new(
            Some(Arc::new(sandbox)),
            Some(base.clone()),
            HostScript::Embedded,
            false,
        );
        let (spec, pool_cfg) = ex.pool_spec(&cfg.workflows["p"]);
        let launcher =
            super::super::EngineLauncher::new(spec, &pool_cfg).unwrap_or_else(|e| panic!("{e}"));
        for n in 1..=3 {
            let r = launcher.launch(tsbridge_proto::WorkerId(n)).await;
            assert!(r.is_err(), "the worker started without its limit");
        }
        let left: Vec<String> = std::fs::read_dir(&base)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(left.is_empty(), "left in the TMPDIR base: {left:?}");
    }

    #[test]
    fn end_reasons() {
        let h = PoolJobError::Handler {
            message: "m".into(),
            name: "Error".into(),
            stack: None,
        };
        assert_eq!(end_of(&h, None).0, EndReason::Exited);
        assert_eq!(end_of(&h, None).1, Some(1));
        let c = PoolJobError::Cancelled { killed: true };
        assert_eq!(
            end_of(&c, Some(StopReason::Shutdown)).0,
            EndReason::Shutdown
        );
        assert_eq!(
            end_of(&c, Some(StopReason::Cancelled)).0,
            EndReason::Cancelled
        );
        let t = PoolJobError::Timeout {
            after: Duration::from_secs(1),
            killed: false,
        };
        assert_eq!(end_of(&t, None).0, EndReason::Timeout);
        let s = PoolJobError::WorkerCrashed {
            worker: tsbridge_proto::WorkerId(1),
            exit: WorkerExit::Signal(9),
        };
        assert_eq!(
            end_of(&s, None),
            (EndReason::Signaled, None, Some(9), false)
        );
        let oom = PoolJobError::WorkerCrashed {
            worker: tsbridge_proto::WorkerId(1),
            exit: WorkerExit::Limit {
                limit: tsbridge_sandbox::LimitBreach::Memory,
                code: None,
                signal: Some(9),
            },
        };
        assert_eq!(
            end_of(&oom, None),
            (EndReason::MemoryLimit, None, Some(9), false)
        );
        let forks = PoolJobError::LimitHit {
            limit: tsbridge_sandbox::LimitBreach::Pids,
            message: "m".into(),
        };
        assert_eq!(end_of(&forks, None).0, EndReason::PidsLimit);
        assert!(end_of(&PoolJobError::AcquireTimeout(Duration::from_secs(1)), None).3);
    }
}
