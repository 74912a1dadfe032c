//! The config file (SPEC §7): its types, [`Config::load`] and validation.
//! Relative paths are resolved here (`root` and `store.url` against the
//! config file's folder, workflow paths against the workflow's root), the
//! parameter schemas are compiled once, and every problem of the file is
//! reported with its key and line.

pub mod node_pids;
mod walk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use toml::de::{DeTable, DeValue, ValueDeserializer};
pub use tsbridge_process::OutputChannel;
use tsbridge_proto::{ByteSize, DurationSpec};

use crate::errors::{ConfigError, ConfigIssue};
use tsbridge_sandbox::paths;
use tsbridge_sandbox::{RunAs, UidRange};
use walk::{Issues, Section};

/// The default argument template (SPEC §2).
pub const DEFAULT_ARGS: [&str; 6] = [
    "--workflow",
    "{workflow}",
    "--params",
    "{params}",
    "--output-format",
    "json",
];

/// A whole, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (`None` when built in code).
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub defaults: Defaults,
    pub workflows: BTreeMap<String, WorkflowConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub tokens: Vec<TokenSpec>,
    pub max_body: ByteSize,
    pub drain_timeout: Duration,
    /// How many items of one batch run at once.
    pub batch_concurrency: usize,
    /// Dev mode: error details (never stack traces of the host) in 5xx bodies.
    pub dev: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8787)),
            tokens: Vec::new(),
            max_body: ByteSize(1 << 20),
            drain_timeout: Duration::ZERO,
            batch_concurrency: 4,
            dev: false,
        }
    }
}

/// One accepted bearer token, as written in `server.tokens`.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSpec {
    /// The token itself (fine for tests; prefer the other two).
    Literal(String),
    /// `env:NAME`: the value of an environment variable of tsbridge.
    Env(String),
    /// `sha256:HEX`: the SHA-256 of the token.
    Sha256([u8; 32]),
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSpec::Literal(_) => f.write_str("Literal([REDACTED])"),
            TokenSpec::Env(n) => write!(f, "Env({n})"),
            TokenSpec::Sha256(_) => f.write_str("Sha256(..)"),
        }
    }
}

impl std::str::FromStr for TokenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            return Ok(TokenSpec::Env(name.to_owned()));
        }
        if let Some(h) = s.strip_prefix("sha256:") {
            let mut out = [0u8; 32];
            if h.len() != 64 {
                return Err("sha256: needs 64 hex digits".to_owned());
            }
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16)
                    .map_err(|_| "sha256: needs 64 hex digits".to_owned())?;
            }
            return Ok(TokenSpec::Sha256(out));
        }
        if s.is_empty() {
            return Err("a token cannot be empty".to_owned());
        }
        Ok(TokenSpec::Literal(s.to_owned()))
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `sqlite:///absolute/path.db` after resolution (or `sqlite::memory:`),
    /// or a `postgres://` URL as written.
    pub url: String,
    /// `key_file`: the 32-byte key that seals request env values at rest
    /// (absolute after resolution). Default beside a SQLite file:
    /// `<db>.key`, created 0600 when first needed. Required with PostgreSQL
    /// when a spawn workflow accepts request env (see sealed.rs).
    pub key_file: Option<PathBuf>,
    /// `wal_restart`: the WAL size past which a SQLite store's WAL starts
    /// again from its beginning (default 64 MiB; SQLite only).
    pub wal_restart: Option<ByteSize>,
}

/// `store.wal_restart`, at least: a smaller WAL would restart (and stall
/// the writes for a copy and two syncs) every few hundred jobs.
pub const WAL_RESTART_MIN: u64 = 1024 * 1024;
/// `store.wal_restart`, at most: a crash recovery reads the whole WAL.
pub const WAL_RESTART_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// `[defaults]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub max_output: ByteSize,
    pub queue_limit: usize,
    /// Jobs running at once on this node, all workflows together.
    pub concurrency: usize,
    /// Run workflows even where a limit cannot be enforced on this host
    /// (a workflow's own `degraded` or `limits.degraded` overrides it).
    pub degraded: bool,
    /// `user`: the user of every workflow that names none (`None`:
    /// tsbridge's own).
    pub user: Option<RunAs>,
    /// `dynamic_uids`: the range `user = "dynamic"` leases a uid per job
    /// from (default [`tsbridge_sandbox::dynamic::DEFAULT_DYNAMIC_UIDS`]).
    /// `None`: the key was wrong (reported).
    pub dynamic_uids: Option<UidRange>,
    /// Whether `dynamic_uids` was given (then checked free of accounts at
    /// once; the default range is checked when a workflow uses it).
    pub dynamic_uids_given: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            kill_grace: Duration::from_secs(5),
            max_output: ByteSize(16 << 20),
            queue_limit: 10_000,
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            degraded: false,
            user: None,
            dynamic_uids: Some(tsbridge_sandbox::dynamic::DEFAULT_DYNAMIC_UIDS),
            dynamic_uids_given: false,
        }
    }
}

/// How a workflow's program is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// `node --import tsx <script>` (TypeScript).
    Tsx,
    /// ts-node in transpile-only mode.
    TsNode,
    /// `node <script>`.
    Node,
    /// The script is itself an executable.
    Exec,
}

impl RuntimeKind {
    /// Whether the child is a Node process (and so gets the IPC channel).
    pub fn is_node(self) -> bool {
        !matches!(self, RuntimeKind::Exec)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Tsx => "tsx",
            RuntimeKind::TsNode => "ts-node",
            RuntimeKind::Node => "node",
            RuntimeKind::Exec => "exec",
        }
    }

    /// The runtime a script's extension implies: the engine's table
    /// ([`tsbridge_process::runtime::RuntimeKind::for_path`]), so that a
    /// workflow and `tsbridge run` choose alike.
    pub fn for_script(script: &Path) -> Self {
        use tsbridge_process::runtime::RuntimeKind as Engine;
        match Engine::for_path(script) {
            Engine::Tsx => RuntimeKind::Tsx,
            Engine::TsNode { .. } => RuntimeKind::TsNode,
            Engine::Node => RuntimeKind::Node,
            Engine::Exec => RuntimeKind::Exec,
        }
    }
}

/// `spawn` (a fresh process per job) or `pool` (warm workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Spawn,
    Pool,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Spawn => "spawn",
            Mode::Pool => "pool",
        }
    }
}

/// A compiled parameter schema.
#[derive(Clone)]
pub struct ParamsSchema {
    /// The schema document, as `GET /v1/workflows` shows it.
    pub json: Value,
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for ParamsSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamsSchema")
            .field("json", &self.json)
            .finish_non_exhaustive()
    }
}

impl ParamsSchema {
    /// Compiles a schema document.
    pub fn compile(json: Value) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&json).map_err(|e| e.to_string())?;
        Ok(Self {
            json,
            validator: Arc::new(validator),
        })
    }

    /// Every violation of `params`, as `{path, message}` objects (empty: valid).
    pub fn violations(&self, params: &Value) -> Vec<Value> {
        self.validator
            .iter_errors(params)
            .map(|e| {
                serde_json::json!({
                    "path": e.instance_path().to_string(),
                    "message": e.to_string(),
                })
            })
            .collect()
    }
}

/// `env = {pass, request, set}` of a workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvConfig {
    /// Names copied from tsbridge's own environment (beyond the base allowlist).
    pub pass: Vec<String>,
    /// Names a request may set.
    pub request: Vec<String>,
    /// Fixed values.
    pub set: BTreeMap<String, String>,
}

/// `limits = {...}` of a workflow: enforced by the kernel where the host can.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<ByteSize>,
    /// Cores, e.g. 0.5.
    pub cpu: Option<f64>,
    pub pids: Option<u64>,
    /// `Some(false)`: own network namespace, no network.
    pub network: Option<bool>,
    /// Whether jobs may make unix sockets (`None`: as `network`); see
    /// `tsbridge_sandbox::SandboxPolicy::unix_sockets`.
    pub unix_sockets: Option<bool>,
    /// Run each job in a PID namespace of its own, under tsbridge's tiny
    /// init, with a `/proc` that shows its own processes only; see
    /// `tsbridge_sandbox::SandboxPolicy::pid_namespace`. In pool mode each warm
    /// worker runs under an init of its own (its jobs share its namespace).
    pub pid_namespace: bool,
    /// Absolute read allowlist (Landlock); empty = no file-system restriction
    /// unless `write` is set.
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub timeout: Option<Duration>,
    /// `RLIMIT_NOFILE` of each process of the job (`None`:
    /// [`DEFAULT_OPEN_FILES`]).
    pub open_files: Option<u64>,
    /// `RLIMIT_FSIZE`: the largest file a process of the job may write
    /// (`None`: no limit).
    pub file_size: Option<ByteSize>,
    /// `RLIMIT_CPU` of each process of the job, in whole seconds (rounded up);
    /// the job ends with reason `cpu_limit` when it is exceeded. Spawn mode
    /// only (a pool worker's CPU time spans many jobs).
    pub cpu_time: Option<Duration>,
    /// Run even where a limit cannot be enforced on this host: the
    /// effective value of the workflow's `degraded`, `limits.degraded` or
    /// `defaults.degraded`.
    pub degraded: bool,
}

impl Limits {
    /// Whether any kernel-enforced limit is asked for.
    pub fn any(&self) -> bool {
        self.memory.is_some()
            || self.cpu.is_some()
            || self.pids.is_some()
            || self.network == Some(false)
            || self.unix_sockets == Some(false)
            || self.pid_namespace
            || !self.read.is_empty()
            || !self.write.is_empty()
            || self.open_files.is_some()
            || self.file_size.is_some()
            || self.cpu_time.is_some()
    }

    /// `cpu_time` in whole seconds, rounded up (`RLIMIT_CPU` counts seconds).
    pub fn cpu_seconds(&self) -> Option<u64> {
        self.cpu_time.map(|d| {
            let s = d.as_secs();
            if d.subsec_nanos() > 0 { s + 1 } else { s }.max(1)
        })
    }
}

/// `RLIMIT_NOFILE` of a job when its workflow sets no `limits.open_files`:
/// node raises its soft limit to this at startup, which is plenty for
/// servers and tools alike, and bounds a descriptor leak.
pub const DEFAULT_OPEN_FILES: u64 = 4096;

/// Which end reasons are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// A spawn failure with a transient cause (EAGAIN, ENOMEM, EMFILE...).
    SpawnFailure,
    Timeout,
    /// Death by a signal tsbridge did not send.
    Signaled,
    /// A non-zero exit.
    Exited,
    MemoryLimit,
    CpuLimit,
    PidsLimit,
}

/// `retry = {...}` of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total attempts, the first included (1 = no retry).
    pub attempts: u32,
    pub backoff: Duration,
    pub multiplier: f64,
    /// 0..=1: the delay varies by up to this fraction, both ways.
    pub jitter: f64,
    pub max_delay: Duration,
    pub retry_on: Vec<RetryOn>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.2,
            max_delay: Duration::from_secs(60),
            retry_on: vec![RetryOn::SpawnFailure, RetryOn::Timeout, RetryOn::Signaled],
        }
    }
}

impl RetryConfig {
    /// The delay before attempt `next` (2 = the first retry), without jitter.
    pub fn base_delay(&self, next: u32) -> Duration {
        let exp = next.saturating_sub(2) as i32;
        let secs = self.backoff.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        if capped.is_finite() && capped >= 0.0 {
            Duration::from_secs_f64(capped)
        } else {
            self.max_delay
        }
    }

    /// The delay before attempt `next`, with jitter.
    pub fn delay(&self, next: u32) -> Duration {
        let base = self.base_delay(next).as_secs_f64();
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = if j > 0.0 {
            1.0 + rand::random_range(-j..=j)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// `pool = {...}` of a pool-mode workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub min: usize,
    pub max: usize,
    pub max_age: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Recycle a worker after this many jobs.
    pub max_jobs: Option<u64>,
    /// Start `min` workers at startup (else on first use).
    pub warmup: bool,
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
        }
    }
}

/// One `[workflows.NAME]`, with every path absolute and every default applied.
#[derive(Debug, Clone)]
pub struct WorkflowConfig {
    pub name: String,
    /// Canonical.
    pub root: PathBuf,
    /// Canonical, inside `root`.
    pub script: PathBuf,
    /// Canonical, inside `root`.
    pub cwd: PathBuf,
    pub runtime: RuntimeKind,
    /// Argument template; `{workflow}`, `{params}`, `{jobId}` and
    /// `{paramsFile}` (spawn mode) are substituted inside each element,
    /// never split.
    pub args: Vec<String>,
    pub mode: Mode,
    pub params_schema: Option<ParamsSchema>,
    pub path_params: Vec<String>,
    pub env: EnvConfig,
    /// Jobs of this workflow running at once (`None`: only the global limit).
    pub concurrency: Option<usize>,
    pub priority: i32,
    pub limits: Limits,
    pub retry: RetryConfig,
    pub pool: PoolConfig,
    pub ipc: bool,
    /// `stdio`: pipes (the default) or socketpairs for stdout and stderr.
    pub stdio: OutputChannel,
    /// Effective wall timeout of one attempt (the ceiling for requests).
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub max_output: ByteSize,
    /// The user its jobs (and pool workers) run as: its own `user`, else
    /// `defaults.user`; `None`: tsbridge's own uid (no `user`, or
    /// `user = "self"`).
    pub user: Option<RunAs>,
}

impl WorkflowConfig {
    /// The argv after the program/runtime, for one job, with `{paramsFile}`
    /// left as it is: what the command line's size is judged by (the
    /// parameters are not on it). A job's own argv is
    /// [`WorkflowConfig::render_job_args`].
    pub fn render_args(&self, params_json: &str, job_id: &str) -> Vec<String> {
        substitute_args(&self.args, &self.name, params_json, job_id, None)
    }

    /// The argv after the program/runtime of one job attempt, whose
    /// parameters file (`{paramsFile}`) is `params_file`.
    pub fn render_job_args(
        &self,
        params_json: &str,
        job_id: &str,
        params_file: &str,
    ) -> Vec<String> {
        substitute_args(
            &self.args,
            &self.name,
            params_json,
            job_id,
            Some(params_file),
        )
    }

    /// Whether a job's argv names its parameters file (`{paramsFile}`):
    /// then the file is written for each attempt.
    pub fn uses_params_file(&self) -> bool {
        self.args.iter().any(|a| a.contains(PARAMS_FILE))
    }

    /// Whether a job's argv carries its parameters themselves (`{params}`),
    /// which every process of the host can read in `/proc/<pid>/cmdline`
    /// unless `/proc` is mounted with `hidepid=`.
    pub fn params_on_command_line(&self) -> bool {
        self.args.iter().any(|a| a.contains("{params}"))
    }
}

/// The placeholder for the path of a job's parameters file: the JSON that
/// `{params}` would carry, in a 0600 file of the job's private TMPDIR
/// (spawn mode), so that it is not on the command line.
pub const PARAMS_FILE: &str = "{paramsFile}";

/// Substitutes `{workflow}`, `{params}`, `{jobId}` and (when `params_file`
/// is given) `{paramsFile}` inside each element. One pass over each
/// element, so a value containing `{params}` is not substituted again.
pub fn substitute_args(
    template: &[String],
    workflow: &str,
    params: &str,
    job_id: &str,
    params_file: Option<&str>,
) -> Vec<String> {
    template
        .iter()
        .map(|el| {
            let mut out = String::with_capacity(el.len());
            let mut rest = el.as_str();
            while let Some(i) = rest.find('{') {
                out.push_str(&rest[..i]);
                let tail = &rest[i..];
                let (rep, len) = if tail.starts_with("{workflow}") {
                    (workflow, "{workflow}".len())
                } else if tail.starts_with("{params}") {
                    (params, "{params}".len())
                } else if tail.starts_with("{jobId}") {
                    (job_id, "{jobId}".len())
                } else if let Some(file) = params_file
                    && tail.starts_with(PARAMS_FILE)
                {
                    (file, PARAMS_FILE.len())
                } else {
                    ("{", 1)
                };
                out.push_str(rep);
                rest = &tail[len..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// The `{name}`s of an `args` element that [`substitute_args`] does not
/// know: a typo such as `{param}` would otherwise reach the program as
/// those literal bytes. Only identifier-like names count, so literal JSON
/// such as `{}` or `{"a":1}` in a template stays allowed.
fn unknown_placeholders(element: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = element;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i + 1..];
        let Some(end) = tail.find('}') else {
            break;
        };
        let name = &tail[..end];
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if identifier && !matches!(name, "workflow" | "params" | "jobId" | "paramsFile") {
            out.push(name);
        }
        rest = tail;
    }
    out
}

const TOP_KEYS: &[&str] = &["server", "store", "defaults", "workflows"];
const SERVER_KEYS: &[&str] = &[
    "bind",
    "tokens",
    "max_body",
    "drain_timeout",
    "batch_concurrency",
    "dev",
];
const STORE_KEYS: &[&str] = &["url", "key_file", "wal_restart"];
const DEFAULTS_KEYS: &[&str] = &[
    "timeout",
    "kill_grace",
    "max_output",
    "queue_limit",
    "concurrency",
    "degraded",
    "user",
    "dynamic_uids",
];
const WORKFLOW_KEYS: &[&str] = &[
    "root",
    "script",
    "cwd",
    "runtime",
    "args",
    "mode",
    "params_schema",
    "path_params",
    "env",
    "concurrency",
    "priority",
    "limits",
    "retry",
    "pool",
    "ipc",
    "stdio",
    "timeout",
    "kill_grace",
    "max_output",
    "degraded",
    "user",
];
const ENV_KEYS: &[&str] = &["pass", "request", "set"];
const LIMITS_KEYS: &[&str] = &[
    "memory",
    "cpu",
    "pids",
    "network",
    "unix_sockets",
    "pid_namespace",
    "read",
    "write",
    "timeout",
    "open_files",
    "file_size",
    "cpu_time",
    "degraded",
];
const RETRY_KEYS: &[&str] = &[
    "attempts",
    "backoff",
    "multiplier",
    "jitter",
    "max_delay",
    "retry_on",
];
const POOL_KEYS: &[&str] = &[
    "min",
    "max",
    "max_age",
    "idle_timeout",
    "max_jobs",
    "warmup",
];

/// Values given on the command line in place of the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `serve --bind`.
    pub bind: Option<SocketAddr>,
}

impl Config {
    /// Reads, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    /// [`Self::load`], with command-line values in place of the file's
    /// (validated as the file's values would be, after replacing them).
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let mut cfg =
            Self::parse_with(&src, &base, overrides).map_err(|issues| ConfigError::Invalid {
                path: path.to_path_buf(),
                issues,
            })?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses config text; relative paths are resolved against `base`.
    /// Every problem found is returned, in file order.
    pub fn parse(src: &str, base: &Path) -> Result<Config, Vec<ConfigIssue>> {
        Self::parse_with(src, base, &Overrides::default())
    }

    /// [`Self::parse`] with [`Overrides`].
    pub fn parse_with(
        src: &str,
        base: &Path,
        overrides: &Overrides,
    ) -> Result<Config, Vec<ConfigIssue>> {
        let mut issues = Issues::new(src);
        let (doc, syntax) = DeTable::parse_recoverable(src);
        for e in syntax {
            issues.push_syntax(e.span(), e.message().to_owned());
        }
        let root = Section::open(&mut issues, doc.get_ref(), "", TOP_KEYS);

        let server = root
            .table(&mut issues, "server", "server", SERVER_KEYS)
            .map(|s| read_server(&mut issues, &s, overrides))
            .unwrap_or_else(|| ServerConfig {
                bind: overrides.bind.unwrap_or(ServerConfig::default().bind),
                ..ServerConfig::default()
            });
        let store_sec = root.table(&mut issues, "store", "store", STORE_KEYS);
        let store = read_store(&mut issues, store_sec.as_ref(), base);
        let defaults = root
            .table(&mut issues, "defaults", "defaults", DEFAULTS_KEYS)
            .map(|s| read_defaults(&mut issues, &s))
            .unwrap_or_default();

        let mut workflows = BTreeMap::new();
        if let Some(v) = root.raw("workflows") {
            match v.get_ref() {
                DeValue::Table(t) => {
                    for (k, wv) in t.iter() {
                        let name: &str = k.get_ref();
                        let path = format!("workflows.{name}");
                        if !valid_workflow_name(name) {
                            issues.push(
                                &path,
                                Some(k.span()),
                                "a workflow name is 1 to 64 of [A-Za-z0-9._-]",
                            );
                            continue;
                        }
                        let DeValue::Table(wt) = wv.get_ref() else {
                            issues.push(&path, Some(wv.span()), "expected a table");
                            continue;
                        };
                        let sec =
                            Section::open(&mut issues, wt, &path, WORKFLOW_KEYS).at(wv.span());
                        if let Some(wf) = read_workflow(&mut issues, &sec, name, base, &defaults) {
                            workflows.insert(name.to_owned(), wf);
                        }
                    }
                }
                other => issues.push(
                    "workflows",
                    Some(v.span()),
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }

        // Request env is sealed at rest under store.key_file; the nodes of
        // a shared store must share that key, so it has no default there.
        if store.key_file.is_none()
            && !store.url.starts_with("sqlite:")
            && let Some(wf) = workflows
                .values()
                .find(|w| w.mode == Mode::Spawn && !w.env.request.is_empty())
        {
            issues.push(
                "store.key_file",
                None,
                format!(
                    "required with a PostgreSQL store when a workflow accepts request env ({} lists env.request): \
                     every node must open the values another node sealed",
                    wf.name
                ),
            );
        }

        let mut list = issues.list;
        if list.is_empty() {
            Ok(Config {
                source: None,
                server,
                store,
                defaults,
                workflows,
            })
        } else {
            list.sort_by_key(|i| i.line.unwrap_or(0));
            Err(list)
        }
    }
}

fn valid_workflow_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn dur(issues: &mut Issues<'_>, s: &Section<'_, '_>, key: &str) -> Option<Duration> {
    s.get::<DurationSpecStr>(issues, key)
        .map(|d| d.into_inner().0.0)
}

/// A job timeout: a duration above zero (a job that may run for no time at
/// all would fail every attempt before it starts).
fn job_timeout(issues: &mut Issues<'_>, s: &Section<'_, '_>, key: &str) -> Option<Duration> {
    let v = s.get::<DurationSpecStr>(issues, key)?;
    let d = v.get_ref().0.0;
    if d.is_zero() {
        issues.push(
            &s.key(key),
            Some(v.span()),
            "must be greater than zero, such as \"30s\"",
        );
        return None;
    }
    Some(d)
}

fn size(issues: &mut Issues<'_>, s: &Section<'_, '_>, key: &str) -> Option<ByteSize> {
    s.get::<ByteSize>(issues, key).map(|d| d.into_inner())
}

fn positive(issues: &mut Issues<'_>, s: &Section<'_, '_>, key: &str) -> Option<usize> {
    let v = s.get::<i64>(issues, key)?;
    match usize::try_from(*v.get_ref()) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            issues.push(&s.key(key), Some(v.span()), "must be a positive integer");
            None
        }
    }
}

/// A config duration: a string with a unit (`"5s"`, `"500ms"`, SPEC §7).
/// A number without one (`timeout = 30`, or `"30"`) is refused, naming what
/// to write: read as milliseconds, as a request reads it (SPEC §4), a
/// `timeout = 30` meant as seconds would end every job after 30 ms.
#[derive(Debug, Clone, Copy)]
struct DurationSpecStr(DurationSpec);

impl DurationSpecStr {
    /// The message for a number written without a unit (`written` as in
    /// the file), with that number in the strings to write instead.
    fn unitless(written: &str) -> String {
        let n = match written.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => written,
            _ => "30",
        };
        format!(
            "a number without a unit is not a duration: write a duration string such as \"{n}s\" or \"{n}ms\""
        )
    }
}

impl<'de> Deserialize<'de> for DurationSpecStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationSpecStr;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration string such as \"5s\" or \"500ms\"")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let t = s.trim();
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                    return Err(E::custom(DurationSpecStr::unitless(t)));
                }
                // Not the request notation's message: a bare number of
                // milliseconds is what a config refuses (above).
                s.parse().map(DurationSpecStr).map_err(|_| {
                    E::custom(format!(
                        "invalid duration {s:?}: expected e.g. \"500ms\", \"5s\", \"2m\", \"1h30m\""
                    ))
                })
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Err(E::custom(DurationSpecStr::unitless(&n.to_string())))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Err(E::custom(DurationSpecStr::unitless(&n.to_string())))
            }

            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Err(E::custom(DurationSpecStr::unitless(&n.to_string())))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `server.bind`: an `IP:PORT`, or `localhost:PORT` (what people write, and
/// what Node's `listen` accepts), which is `127.0.0.1:PORT`. Other host
/// names are refused: which address a name resolves to (and so whether the
/// listener is loopback, which decides whether a token is required) must
/// not depend on the resolver of the day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindAddr(pub SocketAddr);

impl std::str::FromStr for BindAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self(a));
        }
        let bad = || {
            format!(
                "invalid address {s:?}: expected IP:PORT such as \"127.0.0.1:8787\" or localhost:PORT"
            )
        };
        match s.rsplit_once(':') {
            Some((host, port)) if host.eq_ignore_ascii_case("localhost") => port
                .parse::<u16>()
                .map(|p| Self(SocketAddr::from(([127, 0, 0, 1], p))))
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

fn read_server(
    issues: &mut Issues<'_>,
    s: &Section<'_, '_>,
    overrides: &Overrides,
) -> ServerConfig {
    let mut c = ServerConfig::default();
    if let Some(b) = s.parse::<BindAddr>(issues, "bind") {
        c.bind = b.into_inner().0;
    }
    // `serve --bind` replaces the file's address before it is judged (its
    // own refusal of an open address without tokens is serve's to say).
    let bind_from_file = overrides.bind.is_none();
    if let Some(b) = overrides.bind {
        c.bind = b;
    }
    let mut any_token = false;
    if let Some(toks) = s.get::<Vec<String>>(issues, "tokens") {
        let span = toks.span();
        for t in toks.into_inner() {
            any_token = true;
            match t.parse::<TokenSpec>() {
                Ok(spec) => c.tokens.push(spec),
                Err(e) => issues.push(&s.key("tokens"), Some(span.clone()), e),
            }
        }
    }
    // `serve` refuses such a file (SPEC §5): `check` must say so too.
    if bind_from_file && !c.bind.ip().is_loopback() && !any_token {
        issues.push(
            &s.key("bind"),
            s.span_of("bind"),
            format!(
                "{} is beyond loopback: a token is required there (set server.tokens, or bind 127.0.0.1)",
                c.bind
            ),
        );
    }
    if let Some(v) = size(issues, s, "max_body") {
        c.max_body = v;
    }
    if let Some(v) = dur(issues, s, "drain_timeout") {
        c.drain_timeout = v;
    }
    if let Some(v) = positive(issues, s, "batch_concurrency") {
        c.batch_concurrency = v;
    }
    if let Some(v) = s.get::<bool>(issues, "dev") {
        c.dev = v.into_inner();
    }
    c
}

fn read_store(issues: &mut Issues<'_>, s: Option<&Section<'_, '_>>, base: &Path) -> StoreConfig {
    let raw = s.and_then(|s| {
        s.get::<String>(issues, "url")
            .map(|u| (u.span(), u.into_inner()))
    });
    let (span, url) = match raw {
        Some((span, url)) => (Some(span), url),
        None => (None, "sqlite://tsbridge.db".to_owned()),
    };
    let key_file = s
        .and_then(|s| s.get::<String>(issues, "key_file"))
        .map(|k| absolute(&base.join(k.into_inner())));
    let wal_restart = s.and_then(|s| {
        let v = s.get::<ByteSize>(issues, "wal_restart")?;
        let (span, size) = (v.span(), v.into_inner());
        if !url.starts_with("sqlite:") {
            issues.push(
                "store.wal_restart",
                Some(span),
                "applies to a SQLite store only (store.url is not sqlite:)",
            );
            None
        } else if !(WAL_RESTART_MIN..=WAL_RESTART_MAX).contains(&size.bytes()) {
            issues.push(
                "store.wal_restart",
                Some(span),
                format!(
                    "must be between {} and {}, not {size}",
                    ByteSize(WAL_RESTART_MIN),
                    ByteSize(WAL_RESTART_MAX)
                ),
            );
            None
        } else {
            Some(size)
        }
    });
    match resolve_store_url(&url, base) {
        Ok(url) => StoreConfig {
            url,
            key_file,
            wal_restart,
        },
        Err(e) => {
            issues.push("store.url", span, e);
            StoreConfig {
                url,
                key_file,
                wal_restart,
            }
        }
    }
}

/// Makes a `sqlite://` URL's relative path absolute against `base`.
pub fn resolve_store_url(url: &str, base: &Path) -> Result<String, String> {
    if url == "sqlite::memory:" {
        return Ok(url.to_owned());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The shared store: taken as is, but a URL the driver cannot read
        // is refused here, with the key and line, rather than at `serve`.
        return match <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url) {
            Ok(_) => Ok(url.to_owned()),
            Err(e) => Err(format!("not a valid PostgreSQL URL: {e}")),
        };
    }
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Err("expected sqlite://PATH or postgres://...".to_owned());
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err("the sqlite URL has no path".to_owned());
    }
    let p = Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        absolute(base).join(p)
    };
    let mut out = format!("sqlite://{}", abs.display());
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn read_defaults(issues: &mut Issues<'_>, s: &Section<'_, '_>) -> Defaults {
    let mut d = Defaults::default();
    if let Some(v) = job_timeout(issues, s, "timeout") {
        d.timeout = v;
    }
    if let Some(v) = dur(issues, s, "kill_grace") {
        d.kill_grace = v;
    }
    if let Some(v) = size(issues, s, "max_output") {
        d.max_output = v;
    }
    if let Some(v) = positive(issues, s, "queue_limit") {
        d.queue_limit = v;
    }
    if let Some(v) = positive(issues, s, "concurrency") {
        d.concurrency = v;
    }
    if let Some(v) = s.get::<bool>(issues, "degraded") {
        d.degraded = v.into_inner();
    }
    if let Some(v) = s.get::<String>(issues, "dynamic_uids") {
        d.dynamic_uids_given = true;
        d.dynamic_uids = match v.get_ref().parse::<UidRange>() {
            Ok(r) => match r.check_free() {
                Ok(()) => Some(r),
                Err(e) => {
                    issues.push(&s.key("dynamic_uids"), Some(v.span()), e.to_string());
                    None
                }
            },
            Err(e) => {
                issues.push(&s.key("dynamic_uids"), Some(v.span()), e.to_string());
                None
            }
        };
    }
    d.user = read_user(issues, s, tsbridge_sandbox::user::switch_refusal(), &d).flatten();
    d
}

/// `user`: `"self"` (tsbridge's own uid: `Some(None)`), `"dynamic"` (a uid
/// per job from `defaults.dynamic_uids`), or a user resolved through the
/// system's user database now (a name that does not resolve is this file's
/// error, not a failure of every job); refused when tsbridge cannot switch
/// to it (`refusal`: why not). `None`: not given, or wrong (reported).
fn read_user(
    issues: &mut Issues<'_>,
    s: &Section<'_, '_>,
    refusal: Option<String>,
    defaults: &Defaults,
) -> Option<Option<RunAs>> {
    let v = s.get::<String>(issues, "user")?;
    let resolved = match v.get_ref().as_str() {
        "self" => return Some(None),
        "dynamic" => match defaults.dynamic_uids {
            // Wrong, and said so at its own key.
            None => return None,
            Some(r) if defaults.dynamic_uids_given => Ok(RunAs::Dynamic(r)),
            Some(r) => r.check_free().map(|()| RunAs::Dynamic(r)).map_err(|e| {
                format!(
                    "\"dynamic\" leases from defaults.dynamic_uids (by default {r}): {e}; \
                     set defaults.dynamic_uids to a range of its own"
                )
            }),
        },
        other => tsbridge_sandbox::JobUser::resolve(other)
            .map(RunAs::User)
            .map_err(|e| e.to_string()),
    };
    let why = match (resolved, refusal) {
        (Ok(u), None) => return Some(Some(u)),
        (Ok(_), Some(why)) => why,
        (Err(e), _) => e,
    };
    issues.push(&s.key("user"), Some(v.span()), why);
    None
}

fn read_workflow(
    issues: &mut Issues<'_>,
    s: &Section<'_, '_>,
    name: &str,
    base: &Path,
    defaults: &Defaults,
) -> Option<WorkflowConfig> {
    let before = issues.list.len();

    // root: relative to the config's folder (by default that folder itself);
    // must exist.
    let root = match s.get::<String>(issues, "root") {
        None if s.raw("root").is_none() => {
            let p = absolute(base);
            match p.canonicalize() {
                Ok(c) => Some(c),
                Err(e) => {
                    s.missing(
                        issues,
                        "root",
                        &format!(
                            "(the default, the config's folder {}, is unusable: {e})",
                            p.display()
                        ),
                    );
                    None
                }
            }
        }
        None => None,
        Some(r) => {
            let p = absolute(base).join(r.get_ref());
            match p.canonicalize() {
                Ok(c) if c.is_dir() => Some(c),
                Ok(_) => {
                    issues.push(
                        &s.key("root"),
                        Some(r.span()),
                        format!("{} is not a folder", p.display()),
                    );
                    None
                }
                Err(e) => {
                    issues.push(
                        &s.key("root"),
                        Some(r.span()),
                        format!("{}: {e}", p.display()),
                    );
                    None
                }
            }
        }
    };

    let script_raw = s.get::<String>(issues, "script");
    if script_raw.is_none() && s.raw("script").is_none() {
        s.missing(issues, "script", "(the program to run)");
    }
    let cwd_raw = s.get::<String>(issues, "cwd");
    let runtime = s
        .get::<RuntimeKind>(issues, "runtime")
        .map(|v| v.into_inner());
    let args = match s.get::<Vec<String>>(issues, "args") {
        Some(v) => {
            let span = v.span();
            let args = v.into_inner();
            for unknown in args.iter().flat_map(|a| unknown_placeholders(a)) {
                issues.push(
                    &s.key("args"),
                    Some(span.clone()),
                    format!(
                        "unknown placeholder {{{unknown}}}: the template knows {{workflow}}, {{params}}, {{jobId}} and {{paramsFile}}"
                    ),
                );
            }
            args
        }
        None => DEFAULT_ARGS.iter().map(|a| (*a).to_owned()).collect(),
    };
    let mode = s
        .get::<Mode>(issues, "mode")
        .map(|v| v.into_inner())
        .unwrap_or_default();
    let path_params = s
        .get::<Vec<String>>(issues, "path_params")
        .map(|v| v.into_inner())
        .unwrap_or_default();
    let concurrency = positive(issues, s, "concurrency");
    let priority = s
        .get::<i32>(issues, "priority")
        .map(|v| v.into_inner())
        .unwrap_or(0);
    let ipc = s.get::<bool>(issues, "ipc").map(|v| v.into_inner());
    let stdio = s
        .get::<OutputChannel>(issues, "stdio")
        .map(|v| v.into_inner())
        .unwrap_or_default();
    let timeout = job_timeout(issues, s, "timeout");
    let kill_grace = dur(issues, s, "kill_grace").unwrap_or(defaults.kill_grace);
    let max_output = size(issues, s, "max_output").unwrap_or(defaults.max_output);
    let degraded = s.get::<bool>(issues, "degraded");
    // "self" (Some(None)) overrides defaults.user.
    let user = read_user(
        issues,
        s,
        tsbridge_sandbox::user::switch_refusal(),
        defaults,
    )
    .unwrap_or(defaults.user);

    let env_path = s.key("env");
    let env = s
        .table(issues, "env", &env_path, ENV_KEYS)
        .map(|e| read_env(issues, &e))
        .unwrap_or_default();
    let limits_path = s.key("limits");
    let limits_sec = s.table(issues, "limits", &limits_path, LIMITS_KEYS);
    let retry_path = s.key("retry");
    let retry = s
        .table(issues, "retry", &retry_path, RETRY_KEYS)
        .map(|r| read_retry(issues, &r))
        .unwrap_or_default();
    let pool_path = s.key("pool");
    let pool = s
        .table(issues, "pool", &pool_path, POOL_KEYS)
        .map(|p| read_pool(issues, &p))
        .unwrap_or_default();

    // Everything below needs the root.
    let root = root?;

    let script = script_raw.and_then(|sc| match paths::confine(&root, Path::new(sc.get_ref())) {
        Ok(p) if p.is_file() => Some(p),
        Ok(p) => {
            issues.push(
                &s.key("script"),
                Some(sc.span()),
                format!("{} is not a file", p.display()),
            );
            None
        }
        Err(e) => {
            issues.push(&s.key("script"), Some(sc.span()), e.to_string());
            None
        }
    });
    let cwd = match cwd_raw {
        None => Some(root.clone()),
        Some(c) => match paths::confine(&root, Path::new(c.get_ref())) {
            Ok(p) if p.is_dir() => Some(p),
            Ok(p) => {
                issues.push(
                    &s.key("cwd"),
                    Some(c.span()),
                    format!("{} is not a folder", p.display()),
                );
                None
            }
            Err(e) => {
                issues.push(&s.key("cwd"), Some(c.span()), e.to_string());
                None
            }
        },
    };

    let params_schema = read_schema(issues, s, &root);
    let mut limits = limits_sec
        .as_ref()
        .map(|l| read_limits(issues, l, &root))
        .unwrap_or_default();
    // `degraded`: the workflow's own (top-level or in limits), else the
    // defaults'. Both set and different is a contradiction.
    let limits_degraded = limits_sec
        .as_ref()
        .and_then(|l| l.raw("degraded").map(|v| (v.span(), l.key("degraded"))))
        .map(|(span, key)| (span, key, limits.degraded));
    limits.degraded = match (&degraded, limits_degraded) {
        (Some(top), Some((span, key, inner))) if *top.get_ref() != inner => {
            issues.push(
                &key,
                Some(span),
                format!(
                    "contradicts `{}` = {} (line {}): set one of them",
                    s.key("degraded"),
                    top.get_ref(),
                    issues.line_of(top.span().start)
                ),
            );
            inner
        }
        (Some(top), _) => *top.get_ref(),
        (None, Some((_, _, inner))) => inner,
        (None, None) => defaults.degraded,
    };
    if mode == Mode::Pool
        && limits.cpu_time.is_some()
        && let Some(l) = &limits_sec
    {
        issues.push(
            &l.key("cpu_time"),
            l.span_of("cpu_time"),
            "not available in pool mode (a warm worker's CPU time spans many jobs): use timeout",
        );
    }

    if mode == Mode::Pool
        && let Some(rt) = runtime
        && !rt.is_node()
    {
        issues.push(
            &s.key("mode"),
            s.span_of("mode"),
            "pool mode needs a node runtime (tsx, ts-node or node)",
        );
    }
    if mode == Mode::Pool && stdio != OutputChannel::Pipe {
        issues.push(
            &s.key("stdio"),
            s.span_of("stdio"),
            "stdio applies to spawn mode: a pool worker's jobs talk over its IPC channel, not its stdout",
        );
    }
    if mode == Mode::Pool && args.iter().any(|a| a.contains(PARAMS_FILE)) {
        issues.push(
            &s.key("args"),
            s.span_of("args"),
            "{paramsFile} applies to spawn mode: a pool worker's jobs get their parameters over its IPC channel, not in a file",
        );
    }
    // A Node program under a pids limit Node cannot start in (node_pids.rs).
    if let (Some(pids), Some(l)) = (limits.pids, &limits_sec) {
        let node = match runtime.or_else(|| script.as_deref().map(RuntimeKind::for_script)) {
            Some(RuntimeKind::Exec) => script.as_deref().is_some_and(node_pids::runs_node),
            Some(_) => true,
            None => false,
        };
        if node && let Some(why) = node_pids::node_pids_too_low(pids) {
            issues.push(&l.key("pids"), l.span_of("pids"), why);
        }
    }
    if issues.list.len() != before {
        return None;
    }
    let script = script?;
    let runtime = runtime.unwrap_or_else(|| RuntimeKind::for_script(&script));
    let timeout = [timeout, limits.timeout]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(defaults.timeout);
    // A `min` alone above the default `max` (4) raises `max` to it; both
    // given with `min` above `max` was refused in `read_pool`.
    let mut pool = pool;
    if pool.max < pool.min {
        pool.max = pool.min;
    }
    Some(WorkflowConfig {
        name: name.to_owned(),
        root,
        script,
        cwd: cwd?,
        runtime,
        args,
        mode,
        params_schema,
        path_params,
        env,
        concurrency,
        priority,
        limits,
        retry,
        pool,
        ipc: ipc.unwrap_or(runtime.is_node()),
        stdio,
        timeout,
        kill_grace,
        max_output,
        user,
    })
}

fn read_env(issues: &mut Issues<'_>, s: &Section<'_, '_>) -> EnvConfig {
    let mut e = EnvConfig::default();
    if let Some(v) = s.get::<Vec<String>>(issues, "pass") {
        let span = v.span();
        for n in v.into_inner() {
            // Never passed (SPEC §5): listing one would be silently ignored.
            if tsbridge_sandbox::env::is_secret_name(&n) {
                issues.push(
                    &s.key("pass"),
                    Some(span.clone()),
                    format!(
                        "{n} looks secret, and host variables with such names are never passed \
                         to a job: give its value with env.set, or let requests set it with env.request"
                    ),
                );
            } else {
                e.pass.push(n);
            }
        }
    }
    if let Some(v) = s.get::<Vec<String>>(issues, "request") {
        let span = v.span();
        for n in v.into_inner() {
            if n.is_empty() || n.contains(['=', '\0']) {
                issues.push(
                    &s.key("request"),
                    Some(span.clone()),
                    format!("invalid variable name {n:?}"),
                );
            } else if tsbridge_sandbox::env::is_forbidden_name(&n) {
                issues.push(
                    &s.key("request"),
                    Some(span.clone()),
                    format!("{n} can inject code into the child: requests may never set it"),
                );
            } else {
                e.request.push(n);
            }
        }
    }
    if let Some(v) = s.get::<BTreeMap<String, String>>(issues, "set") {
        e.set = v.into_inner();
    }
    e
}

fn read_limits(issues: &mut Issues<'_>, s: &Section<'_, '_>, root: &Path) -> Limits {
    let mut l = Limits {
        memory: size(issues, s, "memory"),
        ..Limits::default()
    };
    if let Some(c) = s.get::<f64>(issues, "cpu") {
        let v = *c.get_ref();
        if v > 0.0 && v.is_finite() {
            l.cpu = Some(v);
        } else {
            issues.push(
                &s.key("cpu"),
                Some(c.span()),
                "must be a positive number of cores",
            );
        }
    }
    if let Some(p) = s.get::<i64>(issues, "pids") {
        match u64::try_from(*p.get_ref()) {
            Ok(n) if n > 0 => l.pids = Some(n),
            _ => issues.push(&s.key("pids"), Some(p.span()), "must be a positive integer"),
        }
    }
    l.network = s.get::<bool>(issues, "network").map(|v| v.into_inner());
    l.unix_sockets = s
        .get::<bool>(issues, "unix_sockets")
        .map(|v| v.into_inner());
    l.pid_namespace = s
        .get::<bool>(issues, "pid_namespace")
        .is_some_and(|v| v.into_inner());
    let abs = |v: Vec<String>| -> Vec<PathBuf> {
        v.into_iter()
            .map(|p| {
                let p = PathBuf::from(p);
                if p.is_absolute() { p } else { root.join(p) }
            })
            .collect()
    };
    l.read = s
        .get::<Vec<String>>(issues, "read")
        .map(|v| abs(v.into_inner()))
        .unwrap_or_default();
    l.write = s
        .get::<Vec<String>>(issues, "write")
        .map(|v| abs(v.into_inner()))
        .unwrap_or_default();
    l.timeout = job_timeout(issues, s, "timeout");
    if let Some(n) = s.get::<i64>(issues, "open_files") {
        match u64::try_from(*n.get_ref()) {
            // Below ~16 node cannot even start (stdio, its own pipes, epoll).
            Ok(v) if v >= 16 => l.open_files = Some(v),
            _ => issues.push(
                &s.key("open_files"),
                Some(n.span()),
                "must be an integer >= 16",
            ),
        }
    }
    if let Some(v) = s.get::<ByteSize>(issues, "file_size") {
        if v.get_ref().bytes() == 0 {
            issues.push(
                &s.key("file_size"),
                Some(v.span()),
                "must be a positive size such as \"1GiB\"",
            );
        } else {
            l.file_size = Some(v.into_inner());
        }
    }
    if let Some(v) = s.get::<DurationSpecStr>(issues, "cpu_time") {
        if v.get_ref().0.0.is_zero() {
            issues.push(
                &s.key("cpu_time"),
                Some(v.span()),
                "must be a positive duration such as \"30s\"",
            );
        } else {
            l.cpu_time = Some(v.into_inner().0.0);
        }
    }
    l.degraded = s
        .get::<bool>(issues, "degraded")
        .map(|v| v.into_inner())
        .unwrap_or(false);
    l
}

fn read_retry(issues: &mut Issues<'_>, s: &Section<'_, '_>) -> RetryConfig {
    let mut r = RetryConfig::default();
    if let Some(a) = s.get::<i64>(issues, "attempts") {
        match u32::try_from(*a.get_ref()) {
            Ok(n) if (1..=100).contains(&n) => r.attempts = n,
            _ => issues.push(
                &s.key("attempts"),
                Some(a.span()),
                "must be between 1 and 100",
            ),
        }
    }
    if let Some(v) = dur(issues, s, "backoff") {
        r.backoff = v;
    }
    if let Some(m) = s.get::<f64>(issues, "multiplier") {
        let v = *m.get_ref();
        if v >= 1.0 && v.is_finite() {
            r.multiplier = v;
        } else {
            issues.push(
                &s.key("multiplier"),
                Some(m.span()),
                "must be a number >= 1",
            );
        }
    }
    if let Some(j) = s.get::<JitterSpec>(issues, "jitter") {
        let span = j.span();
        match j.into_inner() {
            JitterSpec::On(true) => r.jitter = 0.2,
            JitterSpec::On(false) => r.jitter = 0.0,
            JitterSpec::Fraction(f) if (0.0..=1.0).contains(&f) => r.jitter = f,
            JitterSpec::Fraction(_) => {
                issues.push(&s.key("jitter"), Some(span), "must be between 0 and 1")
            }
        }
    }
    if let Some(v) = dur(issues, s, "max_delay") {
        r.max_delay = v;
    }
    if let Some(v) = s.get::<Vec<RetryOn>>(issues, "retry_on") {
        r.retry_on = v.into_inner();
    }
    r
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JitterSpec {
    On(bool),
    Fraction(f64),
}

fn read_pool(issues: &mut Issues<'_>, s: &Section<'_, '_>) -> PoolConfig {
    let mut p = PoolConfig::default();
    let mut min_span = None;
    if let Some(m) = s.get::<i64>(issues, "min") {
        match usize::try_from(*m.get_ref()) {
            Ok(n) => {
                p.min = n;
                min_span = Some(m.span());
            }
            Err(_) => issues.push(&s.key("min"), Some(m.span()), "must be >= 0"),
        }
    }
    if let Some(v) = positive(issues, s, "max") {
        p.max = v;
        // Both given and contradictory: a mistake, not something to guess
        // (a `min` alone above the default `max` raises `max` instead).
        if let Some(span) = min_span
            && p.min > v
        {
            issues.push(
                &s.key("min"),
                Some(span),
                format!("must not be larger than max ({v}), not {}", p.min),
            );
        }
    }
    p.max_age = dur(issues, s, "max_age");
    if let Some(v) = dur(issues, s, "idle_timeout") {
        p.idle_timeout = Some(v);
    }
    if let Some(m) = s.get::<i64>(issues, "max_jobs") {
        match u64::try_from(*m.get_ref()) {
            Ok(n) if n > 0 => p.max_jobs = Some(n),
            _ => issues.push(
                &s.key("max_jobs"),
                Some(m.span()),
                "must be a positive integer",
            ),
        }
    }
    if let Some(v) = s.get::<bool>(issues, "warmup") {
        p.warmup = v.into_inner();
    }
    p
}

fn read_schema(issues: &mut Issues<'_>, s: &Section<'_, '_>, root: &Path) -> Option<ParamsSchema> {
    let v = s.raw("params_schema")?;
    let key = s.key("params_schema");
    let json: Value = match v.get_ref() {
        DeValue::String(file) => {
            let p = root.join(file.as_ref() as &str);
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) => {
                    issues.push(
                        &key,
                        Some(v.span()),
                        format!("cannot read {}: {e}", p.display()),
                    );
                    return None;
                }
            };
            match serde_json::from_str(&text) {
                Ok(j) => j,
                Err(e) => {
                    issues.push(
                        &key,
                        Some(v.span()),
                        format!("{} is not JSON: {e}", p.display()),
                    );
                    return None;
                }
            }
        }
        DeValue::Table(_) => match Value::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(j) => j,
            Err(e) => {
                issues.push(&key, Some(v.span()), e.message().to_owned());
                return None;
            }
        },
        other => {
            issues.push(
                &key,
                Some(v.span()),
                format!(
                    "expected a file name or an inline table, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    match ParamsSchema::compile(json) {
        Ok(c) => Some(c),
        Err(e) => {
            issues.push(&key, Some(v.span()), format!("invalid JSON Schema: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests;
