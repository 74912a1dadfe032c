//! What to run: [`JobSpec`], built and validated by [`JobSpecBuilder`].
//!
//! A `JobSpec` only exists validated (the cwd exists and is canonical, no
//! NUL bytes anywhere, env names are well-formed). The child's environment is
//! exactly `env` plus the engine's own marker variable [`JOB_MARKER_ENV`] (and
//! the Node IPC variables when `ipc` is on): nothing is inherited from
//! tsbridge's own environment. There is no shell anywhere: `program` is
//! exec'd with `args` as separate argv entries.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::ProcessControl;
use crate::error::ValidationError;
use crate::mask::Masker;

/// The variable every process of a job inherits, `TSBRIDGE_JOB=<key>`, by
/// which the descendant tracker recognises a job's processes (also after a
/// `setsid` escape). Reserved: a spec may not set it.
pub const JOB_MARKER_ENV: &str = "TSBRIDGE_JOB";

/// The variable naming the tsbridge process that started a job,
/// `TSBRIDGE_OWNER=<pid>.<start time>`: after tsbridge died (SIGKILL, crash),
/// [`crate::supervisor::sweep_orphans`] in the next tsbridge finds every
/// process whose owner is gone, setsid escapees included. Reserved.
pub const OWNER_ENV: &str = "TSBRIDGE_OWNER";

/// Default grace between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
/// Default capture bound, per stream.
pub const DEFAULT_MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// Default longest protocol line kept (longer lines are truncated).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Default interval of the resource monitor ([`crate::monitor`]).
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest monitor interval; shorter ones are raised to it.
pub const MIN_MONITOR_INTERVAL: Duration = Duration::from_millis(10);

/// What the child's stdin is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StdinSpec {
    /// `/dev/null`.
    #[default]
    Null,
    /// These bytes, then EOF.
    Bytes(Vec<u8>),
    /// A pipe the caller writes through [`crate::engine::RunningProcess::take_stdin`].
    Pipe,
}

/// What the child's stdout and stderr are. Either way the engine reads
/// them the same (bounded capture, the line protocol).
/// Written `"pipe"` or `"socket"` (config `stdio`, `tsbridge run --stdio`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputChannel {
    /// Pipes, enlarged to [`crate::engine::PIPE_SIZE`]: what a shell gives.
    #[default]
    Pipe,
    /// A Unix stream socketpair per stream, as Node's `child_process` (libuv)
    /// gives its children: about 1.6x a pipe's throughput on Linux (see
    /// BENCHMARKS.md). A program that opens `/dev/stdout` or
    /// `/proc/self/fd/1` by path gets `ENXIO`, as under Node; reading its
    /// stdout or stderr gives end-of-file.
    Socket,
}

impl std::str::FromStr for OutputChannel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pipe" => Ok(Self::Pipe),
            "socket" => Ok(Self::Socket),
            _ => Err(format!("expected pipe or socket, not {s:?}")),
        }
    }
}

/// The key naming one job's processes (the value of [`JOB_MARKER_ENV`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey(String);

impl JobKey {
    /// A fresh key, unique within this host: `j<tsbridge pid>-<counter>-<random>`.
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let r: u32 = rand::random();
        Self(format!("j{}-{}-{:08x}", std::process::id(), n, r))
    }

    /// A caller-chosen key (e.g. a job id plus attempt number).
    pub fn new(key: impl Into<String>) -> Result<Self, ValidationError> {
        let key = key.into();
        let ok = !key.is_empty()
            && key.len() <= 128
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(Self(key))
        } else {
            Err(ValidationError::JobKeyInvalid { key })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's prepared sandbox and the policy it was prepared from (the policy
/// decides which limit a breach names). The engine never removes the cgroup:
/// once [`crate::engine::RunningProcess::wait`] returned, the engine has
/// dropped its clone of the `Arc`, and the owner removes it.
#[derive(Clone, Debug)]
pub struct SandboxAttachment {
    pub prepared: Arc<tsbridge_sandbox::PreparedSandbox>,
    pub policy: Arc<tsbridge_sandbox::SandboxPolicy>,
}

/// One process to run. Build it with [`JobSpec::builder`].
#[derive(Clone)]
pub struct JobSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) stdin: StdinSpec,
    pub(crate) timeout: Option<Duration>,
    pub(crate) kill_grace: Duration,
    pub(crate) max_output: usize,
    pub(crate) max_line: usize,
    pub(crate) ipc: bool,
    pub(crate) output: OutputChannel,
    pub(crate) masker: Arc<Masker>,
    pub(crate) sandbox: Option<SandboxAttachment>,
    pub(crate) key: JobKey,
    pub(crate) label: Option<String>,
    pub(crate) private_tmp: Option<PathBuf>,
    pub(crate) control: Option<ProcessControl>,
    pub(crate) event_capacity: usize,
    pub(crate) monitor_interval: Option<Duration>,
    pub(crate) memory_limit_fallback: Option<u64>,
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // env values may be secrets: names only.
        f.debug_struct("JobSpec")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .field("cwd", &self.cwd)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("kill_grace", &self.kill_grace)
            .field("max_output", &self.max_output)
            .field("ipc", &self.ipc)
            .field("output", &self.output)
            .field("sandbox", &self.sandbox.is_some())
            .field("key", &self.key)
            .field("label", &self.label)
            .field("monitor_interval", &self.monitor_interval)
            .field("memory_limit_fallback", &self.memory_limit_fallback)
            .finish_non_exhaustive()
    }
}

impl JobSpec {
    /// Starts a builder for `program` (exec'd directly; a bare name is looked
    /// up in the spec's own `PATH`, never tsbridge's).
    pub fn builder(program: impl Into<PathBuf>) -> JobSpecBuilder {
        JobSpecBuilder {
            spec: JobSpec {
                program: program.into(),
                args: Vec::new(),
                cwd: PathBuf::from("."),
                env: BTreeMap::new(),
                stdin: StdinSpec::Null,
                timeout: None,
                kill_grace: DEFAULT_KILL_GRACE,
                max_output: DEFAULT_MAX_OUTPUT,
                max_line: DEFAULT_MAX_LINE,
                ipc: false,
                output: OutputChannel::Pipe,
                masker: Arc::new(Masker::default()),
                sandbox: None,
                key: JobKey::generate(),
                label: None,
                private_tmp: None,
                control: None,
                event_capacity: 1024,
                monitor_interval: Some(DEFAULT_MONITOR_INTERVAL),
                memory_limit_fallback: None,
            },
        }
    }

    /// Back to a builder, to change a field and validate again.
    pub fn into_builder(self) -> JobSpecBuilder {
        JobSpecBuilder { spec: self }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }
    pub fn args(&self) -> &[OsString] {
        &self.args
    }
    /// The canonical working directory.
    pub fn cwd(&self) -> &Path {
        &self.cwd
    }
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }
    pub fn stdin(&self) -> &StdinSpec {
        &self.stdin
    }
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    pub fn kill_grace(&self) -> Duration {
        self.kill_grace
    }
    pub fn max_output(&self) -> usize {
        self.max_output
    }
    pub fn max_line(&self) -> usize {
        self.max_line
    }
    pub fn ipc(&self) -> bool {
        self.ipc
    }
    pub fn output(&self) -> OutputChannel {
        self.output
    }
    pub fn masker(&self) -> &Arc<Masker> {
        &self.masker
    }
    pub fn sandbox(&self) -> Option<&SandboxAttachment> {
        self.sandbox.as_ref()
    }
    pub fn key(&self) -> &JobKey {
        &self.key
    }
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
    pub fn monitor_interval(&self) -> Option<Duration> {
        self.monitor_interval
    }
    pub fn memory_limit_fallback(&self) -> Option<u64> {
        self.memory_limit_fallback
    }
}

/// Builds a [`JobSpec`]; [`JobSpecBuilder::build`] validates.
#[derive(Debug, Clone)]
pub struct JobSpecBuilder {
    spec: JobSpec,
}

impl JobSpecBuilder {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.spec.args.push(arg.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.spec.args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Must exist; canonicalized by [`Self::build`]. Default: tsbridge's cwd.
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.spec.cwd = cwd.into();
        self
    }
    /// Sets one variable of the child's (complete) environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.insert(name.into(), value.into());
        self
    }
    /// Replaces the child's whole environment.
    pub fn envs(mut self, env: BTreeMap<String, String>) -> Self {
        self.spec.env = env;
        self
    }
    pub fn stdin(mut self, stdin: StdinSpec) -> Self {
        self.spec.stdin = stdin;
        self
    }
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.spec.timeout = timeout;
        self
    }
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.spec.kill_grace = grace;
        self
    }
    /// Capture bound per stream (head + tail kept, the middle dropped and counted).
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.spec.max_output = bytes;
        self
    }
    /// Longest protocol line parsed; longer lines are truncated.
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.spec.max_line = bytes;
        self
    }
    /// Opens Node's IPC channel (NODE_CHANNEL_FD) to the child.
    pub fn ipc(mut self, on: bool) -> Self {
        self.spec.ipc = on;
        self
    }
    /// Pipes (the default) or socketpairs for stdout and stderr.
    pub fn output(mut self, channel: OutputChannel) -> Self {
        self.spec.output = channel;
        self
    }
    pub fn masker(mut self, masker: Arc<Masker>) -> Self {
        self.spec.masker = masker;
        self
    }
    /// Applies this prepared sandbox in the child (after the IPC fd is
    /// installed) and uses its cgroup to find, kill and measure the job.
    pub fn sandbox(mut self, sandbox: Option<SandboxAttachment>) -> Self {
        self.spec.sandbox = sandbox;
        self
    }
    pub fn key(mut self, key: JobKey) -> Self {
        self.spec.key = key;
        self
    }
    /// A free-form name for logs.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.spec.label = Some(label.into());
        self
    }
    /// Creates a private 0700 TMPDIR for the job under `base` (set as
    /// `TMPDIR` in the child's env) and removes it when the job has ended.
    pub fn private_tmp(mut self, base: Option<PathBuf>) -> Self {
        self.spec.private_tmp = base;
        self
    }
    /// Uses this control (e.g. one shared by all attempts of a job) instead of
    /// a fresh one, so a cancel issued before the spawn is honoured.
    pub fn control(mut self, control: ProcessControl) -> Self {
        self.spec.control = Some(control);
        self
    }
    /// Capacity of the event channel (see [`crate::engine::RunningProcess::take_events`]).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.spec.event_capacity = n.max(1);
        self
    }

    /// How often the resource monitor samples the job (`None`: no samples,
    /// unless [`Self::memory_limit`] needs them, then the default interval).
    /// Default [`DEFAULT_MONITOR_INTERVAL`]; at least [`MIN_MONITOR_INTERVAL`].
    pub fn monitor(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.spec.monitor_interval = interval.into().map(|i| i.max(MIN_MONITOR_INTERVAL));
        self
    }
    /// The memory limit (bytes, summed RSS of the job's processes) the
    /// resource monitor enforces itself when the job has no cgroup memory
    /// limit: above it the job's tree is killed and it ends with
    /// `MemoryLimit`. Ignored when the sandbox's cgroup enforces a limit.
    pub fn memory_limit(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.spec.memory_limit_fallback = bytes.into();
        self
    }

    /// Checks everything that can be checked before a fork.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let s = &self.spec;
        let prog = s.program.as_os_str().as_bytes();
        if prog.is_empty() {
            return Err(ValidationError::EmptyProgram);
        }
        if prog.contains(&0) {
            return Err(ValidationError::ProgramHasNul);
        }
        if let Some(index) = s.args.iter().position(|a| a.as_bytes().contains(&0)) {
            return Err(ValidationError::ArgHasNul { index });
        }
        for (name, value) in &s.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(ValidationError::EnvNameInvalid { name: name.clone() });
            }
            if value.contains('\0') {
                return Err(ValidationError::EnvValueHasNul { name: name.clone() });
            }
            if name == JOB_MARKER_ENV || name == OWNER_ENV || name == "NODE_CHANNEL_FD" {
                return Err(ValidationError::EnvReserved { name: name.clone() });
            }
        }
        if s.max_output == 0 {
            return Err(ValidationError::ZeroMaxOutput);
        }
        if s.max_line == 0 {
            return Err(ValidationError::ZeroMaxLine);
        }
        if s.timeout == Some(Duration::ZERO) {
            return Err(ValidationError::ZeroTimeout);
        }
        Ok(())
    }

    /// Validates and canonicalizes the cwd.
    pub fn build(mut self) -> Result<JobSpec, ValidationError> {
        self.validate()?;
        let cwd = std::fs::canonicalize(&self.spec.cwd).map_err(|source| {
            ValidationError::CwdMissing {
                path: self.spec.cwd.clone(),
                source,
            }
        })?;
        if !cwd.is_dir() {
            return Err(ValidationError::CwdNotDirectory { path: cwd });
        }
        self.spec.cwd = cwd;
        Ok(self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cwd_is_a_validation_error() {
        let e = JobSpec::builder("/bin/true")
            .cwd("/definitely/not/here")
            .build()
            .unwrap_err();
        assert!(matches!(e, ValidationError::CwdMissing { .. }), "{e:?}");
    }

    #[test]
    fn cwd_is_canonicalized() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("a");
        std::fs::create_dir(&sub).unwrap();
        let s = JobSpec::builder("/bin/true")
            .cwd(sub.join("..").join("a"))
            .build()
            .unwrap();
        assert_eq!(s.cwd(), std::fs::canonicalize(&sub).unwrap());
    }

    #[test]
    fn rejects_nul_and_reserved_env() {
        let e = JobSpec::builder("/bin/true")
            .arg("a\0b")
            .build()
            .unwrap_err();
        assert!(matches!(e, ValidationError::ArgHasNul { index: 0 }));
        let e = JobSpec::builder("/bin/true")
            .env("A=B", "x")
            .build()
            .unwrap_err();
        assert!(matches!(e, ValidationError::EnvNameInvalid { .. }));
        let e = JobSpec::builder("/bin/true")
            .env(JOB_MARKER_ENV, "x")
            .build()
            .unwrap_err();
        assert!(matches!(e, ValidationError::EnvReserved { .. }));
        let e = JobSpec::builder("").build().unwrap_err();
        assert!(matches!(e, ValidationError::EmptyProgram));
    }

    #[test]
    fn job_keys() {
        assert!(JobKey::new("job-1:attempt.2").is_ok());
        assert!(JobKey::new("a b").is_err());
        assert!(JobKey::new("").is_err());
        assert_ne!(JobKey::generate(), JobKey::generate());
    }
}
