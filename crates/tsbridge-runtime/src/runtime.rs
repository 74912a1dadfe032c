//! The [`Runtime`] facade: what the server (and the CLI) call. It validates
//! requests before anything is stored (workflow, availability, schema, path
//! parameters, request env, options), hands accepted jobs to the dispatcher,
//! and answers reads from the store (the truth) and live events from the bus.
//! Startup runs crash recovery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tsbridge_proto::api::{ApiErrorBody, JobList, JobOptions, JobView};
use tsbridge_proto::service::{Isolation, Readiness, WorkflowInfo};
use tsbridge_proto::{EndReason, ErrorType, JobEvent, JobId, JobState};
use tsbridge_sandbox::Sandbox;

use crate::availability::Availability;
use crate::bus::{Bus, Done, Subscription};
use crate::config::{Config, Mode, WorkflowConfig};
pub use crate::dispatcher::Submitted;
use crate::dispatcher::{Command, Dispatcher, Shared, state_event};
use crate::errors::RuntimeError;
use crate::executor::Executor;
use crate::pool::{HostScript, PoolExecutor};
use crate::sealed::{EnvSealer, SealError};
use crate::spawn::{HostSecrets, SpawnExecutor};
use crate::stats::RuntimeStats;
use crate::store::relay::{RESYNC, Relay};
use crate::store::{
    AfterAttempt, AttemptEnd, Finish, JobStore, ListFilter, NewJob, StoredRequest, decode_cursor,
};

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Events returned by one `events_after` call, at most (the store keeps at
/// most this many per job by default).
const MAX_EVENTS_PER_READ: u32 = 10_000;

/// How long the start of a runtime on a shared store waits to hear the
/// other nodes' announcements (then it starts anyway, and says so).
const ANNOUNCEMENTS_WAIT: Duration = Duration::from_secs(10);

/// How to start a [`Runtime`].
#[derive(Debug, Default, Clone)]
pub struct RuntimeOptions {
    /// The host sandbox; `None` runs without one (workflows with limits are
    /// then unavailable unless `limits.degraded = true`).
    pub sandbox: Option<Arc<Sandbox>>,
    /// This node's name in the store (default: `hostname-pid`).
    pub node_id: Option<String>,
    /// Where private TMPDIRs of jobs are made (default: the system's).
    pub tmp_base: Option<PathBuf>,
    /// Executors by workflow name, replacing the built-in ones (tests).
    pub executors: BTreeMap<String, Arc<dyn Executor>>,
    /// The executor of every `mode = "pool"` workflow not in `executors`
    /// (the pool module's `PoolExecutor`). Without one, pool workflows are
    /// unavailable.
    pub pool_executor: Option<Arc<dyn Executor>>,
    /// Events buffered per live subscriber before it is dropped.
    pub subscriber_buffer: Option<usize>,
    /// Run tsx workflows from cached esbuild bundles when possible.
    pub transpile_cache: Option<tsbridge_process::transpile::TranspileCache>,
    /// On a shared store: how often the jobs followed here are also read
    /// from the store, besides the other nodes' announcements (default
    /// 2 s). Tests set a long one to see what the announcements alone do.
    pub relay_resync: Option<Duration>,
    /// The first wait before a pool that failed to start is started again
    /// (default 1 s; each retry waits twice as long, at most a minute).
    pub pool_retry: Option<Duration>,
}

/// `GET /v1/jobs` filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub state: Option<JobState>,
    pub workflow: Option<String>,
    /// Default 50, at most 500.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The job runtime. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    /// Seals request env before the store sees it.
    sealer: Arc<EnvSealer>,
    /// A shared store: live events of jobs, whichever node runs them.
    relay: Option<Relay>,
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}-{}", std::process::id())
}

impl Runtime {
    /// Starts the dispatcher after crash recovery: jobs found `running` are
    /// re-queued if attempts remain, else failed with reason `interrupted`;
    /// queued jobs resume.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<dyn JobStore>,
        opts: RuntimeOptions,
    ) -> Result<Runtime, RuntimeError> {
        let node_id = opts.node_id.clone().unwrap_or_else(default_node_id);
        let secrets = host_secrets(&config);
        // The request-env key, checked against the store's fingerprint
        // before anything (recovery) changes a row; file work off the
        // async runtime's threads.
        let store_config = config.store.clone();
        let sealer = tokio::task::spawn_blocking(move || EnvSealer::from_config(&store_config))
            .await
            .map_err(|e| SealError::Task(e.to_string()))?;
        sealer.start(store.as_ref()).await?;
        let sealer = Arc::new(sealer);
        let spawn: Arc<dyn Executor> = Arc::new(
            SpawnExecutor::new(opts.sandbox.clone(), opts.tmp_base.clone())
                .with_transpile_cache(opts.transpile_cache.clone())
                .with_host_secrets(secrets.clone())
                .with_env_sealer(sealer.clone()),
        );
        // Pool-mode workflows: the pool module's executor unless one is given.
        let own_pools = (opts.pool_executor.is_none()
            && config.workflows.values().any(|w| w.mode == Mode::Pool))
        .then(|| {
            Arc::new(
                PoolExecutor::new(
                    opts.sandbox.clone(),
                    opts.tmp_base.clone(),
                    HostScript::default(),
                    config.server.dev,
                )
                .with_host_secrets(secrets.clone()),
            )
        });
        let pool_executor: Option<Arc<dyn Executor>> = opts
            .pool_executor
            .clone()
            .or_else(|| own_pools.clone().map(|p| p as Arc<dyn Executor>));
        let mut workflows = BTreeMap::new();
        let mut executors = BTreeMap::new();
        let mut availability = Availability::default();
        for (name, wf) in &config.workflows {
            let wf = Arc::new(wf.clone());
            let ex = match opts.executors.get(name) {
                Some(ex) => Some(ex.clone()),
                None if wf.mode == Mode::Spawn => Some(spawn.clone()),
                None => pool_executor.clone(),
            };
            let avail = match &ex {
                Some(ex) => ex.check(&wf),
                None => Err("pool mode has no executor in this build".to_owned()),
            };
            if let Err(why) = &avail {
                tracing::warn!(workflow = %name, %why, "workflow unavailable");
            }
            availability.insert(name.clone(), avail);
            if let Some(ex) = ex {
                executors.insert(name.clone(), ex);
            }
            workflows.insert(name.clone(), wf);
        }
        // Start (and warm) our pools now; a pool that cannot start makes its
        // workflow unavailable (details in the log, not in API answers)
        // until one of its retries starts it (`retry_pool_start`).
        let mut pools_down = Vec::new();
        if let Some(pools) = &own_pools {
            let ready: Vec<&WorkflowConfig> = workflows
                .values()
                .filter(|w| {
                    w.mode == Mode::Pool
                        && !opts.executors.contains_key(&w.name)
                        && availability.is_available(&w.name)
                })
                .map(|w| w.as_ref())
                .collect();
            for (name, _why) in pools.start_all(ready).await {
                availability.insert(name.clone(), Err(POOL_DOWN.to_owned()));
                pools_down.push(name);
            }
        }
        let bus = match opts.subscriber_buffer {
            Some(n) => Bus::with_buffer(n),
            None => Bus::new(),
        };
        let shared = Arc::new(Shared {
            config,
            workflows,
            availability,
            executors,
            store,
            bus,
            accepting: AtomicBool::new(true),
            stats: Mutex::new(RuntimeStats::default()),
            node_id,
            sandbox: opts.sandbox.clone(),
        });
        recover(&shared).await?;
        let (tx, rx) = mpsc::channel(256);
        let mut dispatcher = Dispatcher::new(shared.clone(), rx);
        // A wrong or missing key stopped the start above; a job whose
        // request env does not open (an altered row, a value in clear)
        // fails alone when its attempt starts.
        // (A store that claims for its nodes keeps the queue itself.)
        if !shared.store.claims_next() {
            for rec in shared.store.queued_jobs().await? {
                dispatcher.adopt(rec);
            }
        }
        tokio::spawn(dispatcher.run());
        let resync = opts.relay_resync.unwrap_or(RESYNC);
        let relay = Relay::start(shared.store.clone(), opts.subscriber_buffer, resync);
        // A shared store: the runtime is started once this node hears the
        // others' announcements. Before, a subscriber of the first moments
        // could miss the announcement of an event it had not read from the
        // store, and see the next one after a gap (the server's streams
        // fill such gaps from the store; a flaky `multi_node_pg` test did
        // not).
        if relay.is_some()
            && tokio::time::timeout(ANNOUNCEMENTS_WAIT, shared.store.announcements_heard())
                .await
                .is_err()
        {
            tracing::warn!(
                waited = ?ANNOUNCEMENTS_WAIT,
                every = ?resync,
                "not hearing the job store's announcements yet: jobs followed here are read from the store periodically until this node does"
            );
        }
        if let Some(every) = shared.store.takeover_every() {
            tokio::spawn(take_over_expired(Arc::downgrade(&shared), every));
        }
        if let Some(pools) = &own_pools {
            for name in pools_down {
                if let Some(wf) = shared.workflows.get(&name) {
                    tokio::spawn(retry_pool_start(
                        Arc::downgrade(&shared),
                        pools.clone(),
                        wf.clone(),
                        opts.pool_retry.unwrap_or(POOL_RETRY_FIRST),
                    ));
                }
            }
        }
        Ok(Runtime {
            shared,
            commands: tx,
            sealer,
            relay,
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Validates and queues a job. Nothing is stored when it fails.
    pub async fn submit(
        &self,
        workflow: &str,
        parameters: Value,
        options: JobOptions,
    ) -> Result<Submitted, RuntimeError> {
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return Err(RuntimeError::ShuttingDown);
        }
        let wf = self
            .shared
            .workflows
            .get(workflow)
            .ok_or_else(|| RuntimeError::WorkflowNotFound(workflow.to_owned()))?;
        if let Some(Err(why)) = self.shared.availability.get(workflow) {
            return Err(RuntimeError::WorkflowUnavailable {
                workflow: workflow.to_owned(),
                why,
            });
        }
        let parameters = if parameters.is_null() {
            json!({})
        } else {
            parameters
        };
        if let Some(schema) = &wf.params_schema {
            let errors = schema.violations(&parameters);
            if !errors.is_empty() {
                return Err(RuntimeError::Validation {
                    details: json!({ "errors": errors }),
                });
            }
        }
        crate::path_params::resolve(wf, &parameters)?;
        check_command_line(wf, &parameters)?;
        let env = options.env.clone().unwrap_or_default();
        tsbridge_sandbox::env::validate_request_env(&wf.env.request, &env)
            .map_err(|e| RuntimeError::Security(e.to_string()))?;
        if wf.mode == Mode::Pool && !env.is_empty() {
            // A warm worker's environment was set when it started, for all
            // its jobs: refused rather than silently dropped.
            return Err(RuntimeError::BadRequest(format!(
                "env cannot be set per job for the pool workflow {}: its warm workers share the environment of the config",
                wf.name
            )));
        }
        let timeout = match options.timeout {
            Some(t) if t.0.is_zero() => {
                return Err(RuntimeError::BadRequest("timeout must be positive".into()));
            }
            Some(t) => Some(t.0.min(wf.timeout)),
            None => None,
        };
        let memory = request_memory(wf, options.memory)?;
        if let Some(k) = &options.idempotency_key
            && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(RuntimeError::BadRequest(format!(
                "idempotencyKey must have 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )));
        }
        let id = JobId::new();
        let job = NewJob {
            id,
            workflow: workflow.to_owned(),
            priority: options.priority.unwrap_or(wf.priority),
            params: parameters,
            request: StoredRequest {
                timeout_ms: timeout.map(|t| t.as_millis() as u64),
                memory_bytes: memory,
                env: self
                    .sealer
                    .seal_env(
                        self.shared.store.as_ref(),
                        id,
                        options.idempotency_key.as_deref(),
                        env,
                    )
                    .await?,
            },
            idempotency_key: options.idempotency_key.clone(),
            max_attempts: wf.retry.attempts.max(1),
            created_at: Utc::now(),
            event: state_event(id, 1, JobState::Queued, None, None),
        };
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Submit {
                job: Box::new(job),
                reply,
            })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        rx.await.map_err(|_| RuntimeError::ShuttingDown)?
    }

    pub async fn get(&self, id: JobId) -> Result<JobView, RuntimeError> {
        self.shared
            .store
            .get_job(id)
            .await?
            .map(|r| r.view())
            .ok_or(RuntimeError::JobNotFound(id))
    }

    /// Newest first.
    pub async fn list(&self, q: ListQuery) -> Result<JobList, RuntimeError> {
        let before = match q.cursor.as_deref() {
            Some(c) if !c.is_empty() => Some(
                decode_cursor(c).map_err(|_| RuntimeError::BadRequest("invalid cursor".into()))?,
            ),
            _ => None,
        };
        let limit = q.limit.unwrap_or(50);
        if limit == 0 || limit > 500 {
            return Err(RuntimeError::BadRequest(
                "limit must be between 1 and 500".into(),
            ));
        }
        let page = self
            .shared
            .store
            .list_jobs(&ListFilter {
                state: q.state,
                workflow: q.workflow,
                limit,
                before,
            })
            .await?;
        Ok(JobList {
            jobs: page.jobs.iter().map(|j| j.view()).collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Cancels a job and returns its final view; `Conflict` if it had
    /// already finished.
    pub async fn cancel(&self, id: JobId) -> Result<JobView, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Cancel { id, reply })
            .await
            .is_err()
        {
            return self.finished_or(id, RuntimeError::ShuttingDown).await;
        }
        match rx.await {
            Ok(Ok(())) => self.get(id).await,
            Ok(Err(e)) => Err(e),
            Err(_) => self.finished_or(id, RuntimeError::ShuttingDown).await,
        }
    }

    /// A Conflict for a finished job, else `err`.
    async fn finished_or(&self, id: JobId, err: RuntimeError) -> Result<JobView, RuntimeError> {
        let v = self.get(id).await?;
        if v.state.is_terminal() {
            Err(RuntimeError::AlreadyFinished { id, state: v.state })
        } else {
            Err(err)
        }
    }

    /// Resolves when the job is terminal.
    pub async fn wait(&self, id: JobId) -> Result<JobView, RuntimeError> {
        if let Some(relay) = &self.relay {
            return self.wait_shared(relay, id).await;
        }
        loop {
            if let Some(mut done) = self.shared.bus.done_signal(id) {
                // Live here: its channel closes only after its end is
                // stored, so there is nothing to read before; and when
                // this node wrote the end, it knows the job as stored.
                if let Ok(d) = done.wait_for(Done::is_closed).await
                    && let Some(view) = d.view()
                {
                    return Ok(JobView::clone(view));
                }
            }
            let view = self.get(id).await?;
            if view.state.is_terminal() {
                return Ok(view);
            }
            if self.shared.bus.is_open(id) {
                continue;
            }
            if !self.shared.accepting.load(Ordering::SeqCst) {
                return Err(RuntimeError::ShuttingDown);
            }
            // Not live here (a store another node owns): poll.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// [`Runtime::wait`] on a shared store: the job may end on any node, and
    /// the relay says when (or the local channel closes first).
    async fn wait_shared(&self, relay: &Relay, id: JobId) -> Result<JobView, RuntimeError> {
        loop {
            // Both signals before the read: no end falls in between.
            let mut remote = relay.ended(id);
            let local = self.shared.bus.done_signal(id);
            let view = self.get(id).await?;
            if view.state.is_terminal() {
                return Ok(view);
            }
            if local.is_none() && !self.shared.accepting.load(Ordering::SeqCst) {
                return Err(RuntimeError::ShuttingDown);
            }
            match local {
                Some(mut local) => tokio::select! {
                    _ = local.wait_for(Done::is_closed) => {}
                    _ = remote.wait_for(|d| *d) => {}
                },
                None => {
                    let _ = remote.wait_for(|d| *d).await;
                }
            }
        }
    }

    /// Stored events with `seq > after_seq`, in order.
    pub async fn events_after(
        &self,
        id: JobId,
        after_seq: u64,
    ) -> Result<Vec<JobEvent>, RuntimeError> {
        let events = self
            .shared
            .store
            .events_after(id, after_seq, MAX_EVENTS_PER_READ)
            .await?;
        if events.is_empty() && self.shared.store.get_job(id).await?.is_none() {
            return Err(RuntimeError::JobNotFound(id));
        }
        Ok(events)
    }

    /// Live events from now on. Race-free replay: subscribe first, then
    /// read [`Runtime::events_after`], then skip events already seen.
    pub fn subscribe(&self, id: JobId) -> Subscription {
        if let Some(relay) = &self.relay {
            // A shared store: the job may run on any node, now or later.
            return relay.subscribe(id);
        }
        self.shared.bus.subscribe(id)
    }

    pub fn workflows(&self) -> Vec<WorkflowInfo> {
        self.shared
            .workflows
            .iter()
            .map(|(name, wf)| WorkflowInfo {
                name: name.clone(),
                mode: wf.mode.as_str().to_owned(),
                runtime: wf.runtime.as_str().to_owned(),
                status: status_text(self.shared.availability.get(name)),
                params_schema: wf.params_schema.as_ref().map(|s| s.json.clone()),
                path_params: wf.path_params.clone(),
                concurrency: wf.concurrency.map(|c| c as u32),
                priority: wf.priority,
            })
            .collect()
    }

    /// Whether a workflow can run here (`Err` with the reason if not).
    pub fn availability(&self, workflow: &str) -> Option<Result<(), String>> {
        self.shared.availability.get(workflow)
    }

    pub async fn readiness(&self) -> Readiness {
        let store = match self.shared.store.ping().await {
            Ok(()) => "ok".to_owned(),
            Err(_) => "error: the job store does not answer".to_owned(),
        };
        let accepting = self.shared.accepting.load(Ordering::SeqCst);
        Readiness {
            ready: store == "ok" && accepting,
            store,
            isolation: isolation(self.shared.sandbox.as_deref()),
            workflows: self
                .shared
                .workflows
                .keys()
                .map(|n| (n.clone(), status_text(self.shared.availability.get(n))))
                .collect(),
        }
    }

    pub fn stats(&self) -> RuntimeStats {
        let mut stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Every workflow of the config, 0 when nothing of it runs: an
        // exported gauge that is not set again keeps its last value.
        for name in self.shared.workflows.keys() {
            stats.running_by_workflow.entry(name.clone()).or_insert(0);
        }
        // Pools keep their own counters; one executor may serve many workflows.
        for ex in self.shared.executors.values() {
            stats.pools.extend(ex.pools());
        }
        stats
    }

    /// Stops accepting work (submit -> `Unavailable`), lets running jobs
    /// finish for `drain`, then ends the rest (TERM, grace, KILL) and
    /// records them `failed` with reason `shutdown`. Queued jobs stay
    /// queued in the store. Returns when every attempt is over.
    pub async fn shutdown(&self, drain: Duration) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { drain, reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

fn status_text(a: Option<Result<(), String>>) -> String {
    match a {
        Some(Ok(())) => "available".into(),
        Some(Err(why)) => format!("unavailable: {why}"),
        None => "unavailable: unknown workflow".into(),
    }
}

fn isolation(sandbox: Option<&Sandbox>) -> Isolation {
    let Some(sb) = sandbox else {
        return Isolation {
            cgroups: "none".into(),
            landlock: "none".into(),
            ..Isolation::default()
        };
    };
    let c = sb.capabilities();
    let cgroups = serde_json::to_value(c.cgroups)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", c.cgroups).to_lowercase());
    Isolation {
        cgroups,
        memory: c.memory,
        pids: c.pids,
        cpu: c.cpu,
        network: c.network_ns,
        landlock: match c.landlock {
            tsbridge_sandbox::LandlockSupport::Full { .. } => "full",
            tsbridge_sandbox::LandlockSupport::Partial { .. } => "partial",
            tsbridge_sandbox::LandlockSupport::None => "none",
        }
        .into(),
        seccomp: c.seccomp,
        pid_namespace: c.pid_ns,
    }
}

/// What no job may show: tsbridge's secret-named variables and the
/// server's tokens as the config resolves them (literal, or `env:NAME`
/// whatever the name; a `sha256:` token is not known in clear).
fn host_secrets(config: &Config) -> HostSecrets {
    use crate::config::TokenSpec;
    let tokens = config.server.tokens.iter().filter_map(|t| match t {
        TokenSpec::Literal(v) => Some(v.clone()),
        TokenSpec::Env(name) => std::env::var(name).ok(),
        TokenSpec::Sha256(_) => None,
    });
    HostSecrets::from_process_env(tokens.collect::<Vec<_>>())
}

/// The smallest memory limit a request may ask for: below it a number was
/// almost certainly meant in another unit (a bare number is bytes).
const MIN_REQUEST_MEMORY: u64 = 1 << 20;

/// A request's `memory` option: the effective limit in bytes, the smaller of
/// the request's and the workflow's (the config is the ceiling). A pool
/// workflow's warm workers share the limit of the config, so a request can
/// not lower it there: refused rather than silently ignored.
fn request_memory(
    wf: &WorkflowConfig,
    asked: Option<tsbridge_proto::ByteSize>,
) -> Result<Option<u64>, RuntimeError> {
    let Some(asked) = asked else {
        return Ok(None);
    };
    if asked.bytes() < MIN_REQUEST_MEMORY {
        return Err(RuntimeError::BadRequest(format!(
            "memory must be at least 1MiB (a number is bytes; write \"{}MiB\" for mebibytes)",
            asked.bytes()
        )));
    }
    let ceiling = wf.limits.memory.map(|m| m.bytes());
    let effective = ceiling.map_or(asked.bytes(), |c| c.min(asked.bytes()));
    if wf.mode == Mode::Pool && Some(effective) != ceiling {
        return Err(RuntimeError::BadRequest(format!(
            "memory cannot be lowered for the pool workflow {}: its warm workers share the limit of the config ({})",
            wf.name,
            wf.limits
                .memory
                .map_or_else(|| "none".to_owned(), |m| m.to_string())
        )));
    }
    if wf.mode == Mode::Pool {
        // Asked for the pool's own limit or more: nothing to lower.
        return Ok(None);
    }
    Ok(Some(effective))
}

/// Linux's limit on one argument (`MAX_ARG_STRLEN`, 32 pages), with its NUL.
const MAX_ARG_BYTES: usize = 128 * 1024;
/// What the arguments of one job may take in all, leaving room in `ARG_MAX`
/// (2 MiB with the default 8 MiB stack) for the environment.
const MAX_ARGS_BYTES: usize = 1024 * 1024;

/// A spawn-mode job gets its parameters on the command line (`{params}`):
/// parameters that cannot fit are refused at submit (413), where the client
/// can act on it, instead of failing every attempt with `E2BIG`. Pool
/// workers get them over IPC: no limit there beyond the body size.
fn check_command_line(wf: &WorkflowConfig, params: &Value) -> Result<(), RuntimeError> {
    if wf.mode == Mode::Pool {
        return Ok(());
    }
    let json = params.to_string();
    // A job id is a 36-character UUID: the placeholder has its length.
    let args = wf.render_args(&json, "00000000-0000-0000-0000-000000000000");
    let longest = args.iter().map(String::len).max().unwrap_or(0);
    let total: usize = args.iter().map(|a| a.len() + 1).sum();
    if longest + 1 > MAX_ARG_BYTES || total > MAX_ARGS_BYTES {
        return Err(RuntimeError::TooLarge(format!(
            "the parameters do not fit the command line of workflow {} ({} bytes in one argument, at most {}; {} in all, at most {}): pass large data as a file path, give the workflow `args` with {{paramsFile}} (the parameters in a file of the job's TMPDIR), or run it in pool mode",
            wf.name,
            longest,
            MAX_ARG_BYTES - 1,
            total,
            MAX_ARGS_BYTES
        )));
    }
    Ok(())
}

/// Crash recovery: every job found running gets its open attempt ended
/// with reason `interrupted`, then is re-queued if attempts remain, else
/// failed with reason `interrupted`.
async fn recover(shared: &Shared) -> Result<(), RuntimeError> {
    let found = shared.store.recover_interrupted(&shared.node_id).await?;
    for rec in found {
        end_interrupted(shared.store.as_ref(), &rec, Interrupted::Restart).await?;
    }
    Ok(())
}

/// Why a running job's attempt is ended by a node that did not run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupted {
    /// Found at the start of this node (its previous life ran it).
    Restart,
    /// Its node stopped renewing its lease (a shared store).
    LeaseLost,
}

/// Ends the open attempt of a job taken over (by [`recover`], or by
/// [`take_over_expired`]) with reason `interrupted`, and in the same
/// transaction re-queues the job if attempts remain, else fails it
/// (`InternalError`). Its `state` event continues the job's numbering.
async fn end_interrupted(
    store: &dyn JobStore,
    rec: &crate::store::JobRecord,
    why: Interrupted,
) -> Result<(), crate::errors::StoreError> {
    let (attempt_error, job_message) = match why {
        Interrupted::Restart => (
            "tsbridge stopped while this attempt ran",
            "the job was interrupted: tsbridge stopped while it ran",
        ),
        Interrupted::LeaseLost => (
            "the node running this attempt stopped renewing its lease",
            "the job was interrupted: the node running it stopped",
        ),
    };
    let n = rec.attempts_started.max(1);
    let end = AttemptEnd {
        n,
        reason: EndReason::Interrupted,
        exit_code: None,
        signal: None,
        process_id: None,
        error: Some(attempt_error.into()),
        finished_at: Utc::now(),
        output: rec.output.clone(),
        resources: rec.resources.clone(),
        retry_in: None,
    };
    let requeue = rec.attempts_started < rec.max_attempts;
    let (next, state) = if requeue {
        (AfterAttempt::Requeue, JobState::Queued)
    } else {
        let finish = Finish {
            state: JobState::Failed,
            reason: Some(EndReason::Interrupted),
            result: None,
            error: Some(ApiErrorBody {
                kind: ErrorType::InternalError,
                message: job_message.into(),
                details: Some(json!({ "jobId": rec.id, "attempt": n })),
            }),
            finished_at: Utc::now(),
        };
        (AfterAttempt::Finish(finish), JobState::Failed)
    };
    let event = state_event(
        rec.id,
        rec.last_seq + 1,
        state,
        Some(EndReason::Interrupted),
        Some(n),
    );
    tracing::warn!(job = %rec.id, node = ?rec.node, attempt = n, requeued = requeue, ?why, "ending an interrupted attempt");
    store.complete_attempt(rec.id, &end, &next, &event).await
}

/// Why a pool workflow whose pool failed to start is unavailable.
const POOL_DOWN: &str = "its worker pool failed to start (see the server log); retrying";
/// The first wait before a failed pool is started again; each retry waits
/// twice the last, up to [`POOL_RETRY_MAX`].
const POOL_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two starts of a failed pool.
const POOL_RETRY_MAX: Duration = Duration::from_secs(60);

/// A pool workflow whose pool failed to start at the runtime's start: its
/// pool is started again after `first`, then twice as long each time (at
/// most [`POOL_RETRY_MAX`] apart), until it starts and the workflow becomes
/// available, or the runtime stops accepting work or is gone. Each failure
/// is logged by the start itself (`pool failed to start`).
async fn retry_pool_start(
    shared: std::sync::Weak<Shared>,
    pools: Arc<PoolExecutor>,
    wf: Arc<WorkflowConfig>,
    first: Duration,
) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let accepting = shared
            .upgrade()
            .is_some_and(|s| s.accepting.load(Ordering::SeqCst));
        if !accepting {
            return;
        }
        // A start after the executor's shutdown is refused, so none can
        // outlive the runtime.
        if pools.pool_for(&wf).await.is_ok() {
            if let Some(shared) = shared.upgrade() {
                shared.availability.set(&wf.name, Ok(()));
                tracing::info!(workflow = %wf.name, "worker pool started: the workflow is available");
            }
            return;
        }
        wait = (wait * 2).min(POOL_RETRY_MAX);
    }
}

/// A live node on a shared store: every `every`, the running jobs whose
/// lease expired (their node died or was cut off) are taken over and ended
/// as [`recover`] ends them at a start, so a dead node's jobs are back in
/// the queue within a lease and a period, without any node restarting.
/// Ends when the runtime stops accepting work or is gone.
async fn take_over_expired(shared: std::sync::Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.accepting.load(Ordering::SeqCst) {
            return;
        }
        let found = match shared.store.take_over_expired(&shared.node_id).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take over expired jobs");
                continue;
            }
        };
        for rec in found {
            if let Err(e) =
                end_interrupted(shared.store.as_ref(), &rec, Interrupted::LeaseLost).await
            {
                tracing::warn!(job = %rec.id, error = %e, "cannot end an expired attempt");
            }
        }
    }
}
