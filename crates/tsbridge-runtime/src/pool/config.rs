//! Pool settings ([`PoolConfig`]) and what to start ([`WorkerSpec`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tsbridge_process::{JobKey, SandboxAttachment};

use super::errors::PoolConfigError;
use super::host_script::HostScript;

/// How a pool sizes, recycles and supervises its workers.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Workers kept alive even when idle (after warmup / idle shrinking).
    pub min: usize,
    /// Workers at most (each runs one job at a time).
    pub max: usize,
    /// Recycle a worker this long after it started (after its current job).
    pub max_age: Option<Duration>,
    /// Retire a worker idle this long, down to `min`.
    pub idle_timeout: Option<Duration>,
    /// Recycle a worker after this many jobs.
    pub max_jobs: Option<u64>,
    /// Start `min` workers in [`super::Pool::start`] and prove each ready
    /// (ready message + a ping) before it returns.
    pub warmup: bool,
    /// Recycle a worker whose resident set grew past this many bytes
    /// (measured by the host after each job and at each health ping).
    pub max_rss: Option<u64>,
    /// How long a job waits for a free worker.
    pub acquire_timeout: Duration,
    /// Jobs waiting for a worker at most; more are refused (`QueueFull`).
    pub max_waiting: usize,
    /// Ping idle workers this often; `None`: never.
    pub health_interval: Option<Duration>,
    /// A ping unanswered this long means a hung worker (killed, replaced).
    pub ping_timeout: Duration,
    /// A worker must be ready (module loaded, ping answered) within this.
    pub startup_timeout: Duration,
    /// Wall timeout of one job (a job's own timeout can only lower it).
    pub job_timeout: Option<Duration>,
    /// After a cancel or a timeout, how long the handler has to settle before
    /// its worker's process tree is killed (TERM, this grace again, KILL).
    pub kill_grace: Duration,
    /// Handler errors carry their stack.
    pub dev_mode: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min: 1,
            max: 4,
            max_age: None,
            idle_timeout: Some(Duration::from_secs(300)),
            max_jobs: None,
            warmup: true,
            max_rss: None,
            acquire_timeout: Duration::from_secs(30),
            max_waiting: 10_000,
            health_interval: Some(Duration::from_secs(10)),
            ping_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(30),
            job_timeout: None,
            kill_grace: Duration::from_secs(5),
            dev_mode: false,
        }
    }
}

impl PoolConfig {
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        if self.max == 0 {
            return Err(PoolConfigError::ZeroMax);
        }
        if self.min > self.max {
            return Err(PoolConfigError::MinAboveMax {
                min: self.min,
                max: self.max,
            });
        }
        for (what, d) in [
            ("acquire_timeout", Some(self.acquire_timeout)),
            ("ping_timeout", Some(self.ping_timeout)),
            ("startup_timeout", Some(self.startup_timeout)),
            ("max_age", self.max_age),
            ("idle_timeout", self.idle_timeout),
            ("health_interval", self.health_interval),
            ("job_timeout", self.job_timeout),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(PoolConfigError::Zero { what });
            }
        }
        if self.max_jobs == Some(0) {
            return Err(PoolConfigError::Zero { what: "max_jobs" });
        }
        Ok(())
    }

    /// How often the pool's owner task looks at its idle workers: a fraction
    /// of the shortest period it must honour, within [10 ms, 1 s].
    pub(crate) fn maintenance_tick(&self) -> Duration {
        let shortest = [self.health_interval, self.idle_timeout, self.max_age]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(1));
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// What each worker of a pool runs:
/// `<program> <node_args...> <worker host> <module> [--dev]`, in `cwd`, with
/// exactly `env` (plus the IPC variables the engine adds).
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The workflow's name (labels and logs).
    pub name: String,
    /// `node`, absolute or looked up in `env`'s PATH.
    pub program: PathBuf,
    /// Arguments before the host script, e.g. `["--import", "<tsx loader>"]`
    /// or `["-r", "ts-node/register/transpile-only"]`.
    pub node_args: Vec<OsString>,
    /// The module exporting the handler(s).
    pub module: PathBuf,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// The worker host to run (default: the embedded copy).
    pub host: HostScript,
    /// Bound of each worker's captured stdout/stderr (the worker is long-lived,
    /// so this is per worker, not per job).
    pub max_output: usize,
    /// Where each worker gets a private TMPDIR (`None`: none).
    pub tmp_base: Option<PathBuf>,
    /// The sandbox of each worker (`None`: none).
    pub sandbox: Option<WorkerSandbox>,
    /// Masks secrets in everything a worker prints, from its very start (a
    /// module that fails to load prints its error before any job).
    pub masker: Arc<tsbridge_process::mask::Masker>,
}

/// Prepares the sandbox of one worker, given its engine job key and the
/// worker host script's path (which a filesystem allowlist must let it
/// read). A worker runs one job at a time, so its limits are per job.
#[derive(Clone)]
pub struct WorkerSandbox(pub Arc<PrepareSandbox>);

/// The function behind a [`WorkerSandbox`].
pub type PrepareSandbox =
    dyn Fn(&JobKey, &Path) -> Result<Option<SandboxAttachment>, String> + Send + Sync;

impl fmt::Debug for WorkerSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerSandbox(..)")
    }
}

impl WorkerSpec {
    /// A plain-JavaScript module run by `node` (found on PATH), in the
    /// module's folder, with PATH/HOME/LANG from tsbridge's environment.
    pub fn node(name: impl Into<String>, module: impl Into<PathBuf>) -> Self {
        let module = module.into();
        let cwd = module
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let env = ["PATH", "HOME", "LANG", "TZ", "NODE_ENV"]
            .into_iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
            .collect();
        Self {
            name: name.into(),
            program: PathBuf::from("node"),
            node_args: Vec::new(),
            module,
            cwd,
            env,
            host: HostScript::Embedded,
            max_output: 1024 * 1024,
            tmp_base: None,
            masker: Arc::default(),
            sandbox: None,
        }
    }

    /// The same, with a loader imported first (tsx: `--import <tsx>/dist/loader.mjs`
    /// or simply `--import tsx` when tsx resolves from `cwd`).
    pub fn with_import(mut self, loader: impl Into<OsString>) -> Self {
        self.node_args.push("--import".into());
        self.node_args.push(loader.into());
        self
    }

    /// The same, with a CommonJS require hook (ts-node: `ts-node/register/transpile-only`).
    pub fn with_require(mut self, hook: impl Into<OsString>) -> Self {
        self.node_args.push("-r".into());
        self.node_args.push(hook.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(PoolConfig::default().validate().is_ok());
        let c = PoolConfig {
            min: 3,
            max: 2,
            ..Default::default()
        };
        assert_eq!(
            c.validate(),
            Err(PoolConfigError::MinAboveMax { min: 3, max: 2 })
        );
        let c = PoolConfig {
            max: 0,
            min: 0,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(PoolConfigError::ZeroMax));
        let c = PoolConfig {
            max_jobs: Some(0),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn tick_follows_the_shortest_period() {
        let c = PoolConfig {
            idle_timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        };
        assert_eq!(c.maintenance_tick(), Duration::from_millis(50));
        assert_eq!(
            PoolConfig::default().maintenance_tick(),
            Duration::from_secs(1)
        );
    }
}
