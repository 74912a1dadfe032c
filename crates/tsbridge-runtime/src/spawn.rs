//! The spawn-mode executor: one fresh process per attempt, through the
//! process engine (tsbridge-process). Builds the child's environment
//! (allowlist + `env.pass` + `env.set` + the request's variables), a private
//! TMPDIR (removed once the tree is gone, after the attempt's outcome is
//! reported: [`TmpRemovals`]), the argv (runtime
//! prefix, then the workflow's template with `{workflow}`, `{params}`,
//! `{jobId}` and `{paramsFile}` substituted per element: the last names a
//! 0600 file of the job's TMPDIR holding the parameters,
//! [`write_params_file`]) and, when the workflow has limits and a
//! sandbox is given, the job's sandbox. Secrets are masked in everything a
//! job leaves: the child's own secret-named variables and tsbridge's
//! ([`HostSecrets`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tsbridge_process::ResolveError as rt_error;
use tsbridge_process::mask::Masker;
use tsbridge_process::runtime::{self as rt, RuntimeSearch};
use tsbridge_process::transpile::TranspileCache;
use tsbridge_process::{JobKey, PrivateDir, SandboxAttachment};
use tsbridge_proto::EndReason;
use tsbridge_proto::api::{OutputView, Resources};
use tsbridge_sandbox::{FsPolicy, JobUser, Rlimits, Sandbox, SandboxPolicy, UidLease};

use crate::config::{DEFAULT_OPEN_FILES, RuntimeKind, WorkflowConfig};
use crate::executor::{AttemptEvent, AttemptIo, AttemptOutcome, AttemptRequest, Executor};
use crate::sealed::EnvSealer;

/// Child events the engine buffers while the store catches up; beyond it
/// the engine drops (and counts) events rather than block the child.
const EVENT_CAPACITY: usize = 8192;

/// Bytes of stderr kept for error details.
pub(crate) const STDERR_TAIL: usize = 4096;

/// Secret values of tsbridge itself that no job may show: the values of
/// its own secret-named environment variables (PASSWORD, SECRET, KEY,
/// TOKEN, CREDENTIAL: the rule `tsbridge run` uses, the sandbox crate's
/// `is_secret_name`) and any given explicitly (the server's resolved
/// tokens). A child never inherits them, but it can still print them (read
/// from a file, or as a parameter): they are masked all the same.
///
/// Building a [`Masker`] compiles a regex of every secret and its encodings
/// (milliseconds with a PEM key), so the masker of a workflow's own secrets
/// (its `env.set`) is built once and shared by its jobs: see
/// [`HostSecrets::masker_for_workflow`]. Clones share that cache.
#[derive(Debug, Clone, Default)]
pub struct HostSecrets {
    values: Arc<Vec<String>>,
    /// The masker of `values` alone, shared by every job that adds nothing.
    masker: Arc<Masker>,
    /// Maskers of `values` plus a workflow's `env.set` secrets.
    cache: Arc<MaskerCache>,
}

/// Workflow maskers kept at most: one per workflow with secrets in its
/// `env.set` (a config with more evicts, and rebuilds on the next use).
const MASKER_CACHE_ENTRIES: usize = 32;

/// The maskers of secret sets that live as long as the server anyway: a
/// workflow's `env.set` values are in its config for the server's lifetime,
/// so keeping them (and their masker) here keeps nothing new in memory. A
/// request's own values (opened from the sealed store per attempt) never
/// enter it: their masker lives as long as the attempt
/// ([`HostSecrets::masker_for_attempt`]).
#[derive(Debug, Default)]
struct MaskerCache {
    /// Oldest first; each keyed by the workflow's secret values themselves,
    /// sorted and deduplicated (not by a hash of them: a collision would
    /// hand a job a masker without its secrets). Found by a scan, which
    /// neither copies nor hashes the values (a few PEM keys are kilobytes):
    /// a differing entry differs in its lengths or first bytes.
    entries: Mutex<Vec<(Vec<String>, Arc<Masker>)>>,
}

impl MaskerCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<String>, Arc<Masker>)>> {
        // A panic while holding it cannot leave the list half-updated (one
        // scan, push or remove), so a poisoned lock is still a good list.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The masker of exactly these (sorted, deduplicated) values.
    fn get(&self, key: &[&String]) -> Option<Arc<Masker>> {
        Self::find(&self.lock(), key)
    }

    /// The entry for exactly `key`, compared value by value (no copy).
    fn find(entries: &[(Vec<String>, Arc<Masker>)], key: &[&String]) -> Option<Arc<Masker>> {
        entries
            .iter()
            .find(|(k, _)| k.len() == key.len() && k.iter().zip(key).all(|(a, b)| a == *b))
            .map(|(_, m)| m.clone())
    }

    /// Keeps `masker` for `key` unless one is there already (two first
    /// jobs may both build it); returns the one kept.
    fn insert(&self, key: &[&String], masker: Arc<Masker>) -> Arc<Masker> {
        let mut entries = self.lock();
        if let Some(kept) = Self::find(&entries, key) {
            return kept;
        }
        if entries.len() >= MASKER_CACHE_ENTRIES {
            // The oldest: with more workflows with secrets than entries,
            // the busy ones are built again soon after.
            entries.remove(0);
        }
        entries.push((key.iter().map(|v| (*v).clone()).collect(), masker.clone()));
        masker
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// `env`'s secret-named variables.
fn secret_vars(env: &BTreeMap<String, String>) -> impl Iterator<Item = (&String, &String)> {
    env.iter()
        .filter(|(k, _)| tsbridge_sandbox::env::is_secret_name(k))
}

/// The values of `env`'s secret-named variables.
fn secret_values(env: &BTreeMap<String, String>) -> impl Iterator<Item = &String> {
    secret_vars(env).map(|(_, v)| v)
}

impl HostSecrets {
    /// The secret-named variables of this process's environment, plus `extra`.
    pub fn from_process_env(extra: impl IntoIterator<Item = String>) -> Self {
        Self::new(
            std::env::vars()
                .filter(|(k, _)| tsbridge_sandbox::env::is_secret_name(k))
                .map(|(_, v)| v)
                .chain(extra),
        )
    }

    /// Exactly these secret values.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().collect();
        values.sort();
        values.dedup();
        let masker = Arc::new(Masker::new(values.iter().cloned(), &[]));
        Self {
            values: Arc::new(values),
            masker,
            cache: Arc::default(),
        }
    }

    /// The masker of a job whose environment is `env`: these secrets plus
    /// the values of `env`'s secret-named variables. Built anew on every
    /// call (every secret compiled again: milliseconds with a PEM key);
    /// an attempt uses [`HostSecrets::masker_for_attempt`], which shares
    /// the workflow's compiled secrets.
    pub fn masker_for(&self, env: &BTreeMap<String, String>) -> Arc<Masker> {
        let own: Vec<&String> = secret_values(env).collect();
        if own.is_empty() {
            return self.masker.clone();
        }
        Arc::new(Masker::new(self.values.iter().chain(own).cloned(), &[]))
    }

    /// The masker of a job of `wf` that adds nothing to the workflow's
    /// environment (a pooled job, a worker): these secrets plus the values
    /// of `wf.env.set`'s secret-named variables (a child never inherits a
    /// secret-named variable of tsbridge's, so these are all its own). Built
    /// once per set of values and shared (see [`MaskerCache`]).
    pub fn masker_for_workflow(&self, wf: &WorkflowConfig) -> Arc<Masker> {
        let mut key: Vec<&String> = secret_values(&wf.env.set).collect();
        if key.is_empty() {
            return self.masker.clone();
        }
        key.sort();
        key.dedup();
        if let Some(m) = self.cache.get(&key) {
            return m;
        }
        // Built without the lock (it takes milliseconds).
        let built = Arc::new(Masker::new(
            self.values.iter().chain(key.iter().copied()).cloned(),
            &[],
        ));
        self.cache.insert(&key, built)
    }

    /// The masker of an attempt of `wf` whose child environment is `env`
    /// (the workflow's `env.set`, then the request's opened values): the
    /// workflow's shared masker when the request adds no secret of its own
    /// (no secret-named variable other than `env.set`'s, with its value);
    /// otherwise that shared masker with the request's secrets added
    /// ([`Masker::with_secrets`]: only they are compiled, microseconds for a
    /// token where a whole masker took 10-20 ms with a PEM key in
    /// `env.set`). The added layer is held by this attempt's masker alone,
    /// never cached, so a request's secret lives no longer than its attempt.
    pub fn masker_for_attempt(
        &self,
        wf: &WorkflowConfig,
        env: &BTreeMap<String, String>,
    ) -> Arc<Masker> {
        let mut added = secret_vars(env)
            .filter(|(k, v)| wf.env.set.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .peekable();
        let shared = self.masker_for_workflow(wf);
        if added.peek().is_none() {
            return shared;
        }
        Arc::new(shared.with_secrets(added))
    }
}

/// Runs each attempt as a fresh process.
#[derive(Debug, Clone, Default)]
pub struct SpawnExecutor {
    sandbox: Option<Arc<Sandbox>>,
    tmp_base: Option<PathBuf>,
    search: RuntimeSearch,
    cache: Option<TranspileCache>,
    secrets: HostSecrets,
    /// Opens the sealed request env of each attempt.
    sealer: Arc<EnvSealer>,
    /// TMPDIRs of finished attempts, removed after their outcome.
    removals: TmpRemovals,
    /// [`LEASE_FALLBACK`] unless set.
    lease_fallback: Option<Duration>,
}

impl SpawnExecutor {
    /// `tmp_base`: where private TMPDIRs are made (default: the system's).
    /// Masks the secrets of this process's environment
    /// ([`HostSecrets::from_process_env`]).
    pub fn new(sandbox: Option<Arc<Sandbox>>, tmp_base: Option<PathBuf>) -> Self {
        Self {
            sandbox,
            tmp_base,
            search: RuntimeSearch::default(),
            cache: None,
            secrets: HostSecrets::from_process_env(None),
            sealer: Arc::new(EnvSealer::none()),
            removals: TmpRemovals::default(),
            lease_fallback: None,
        }
    }

    /// Opens sealed request env with this sealer (the runtime's). Without
    /// one, an attempt whose request env is sealed fails to start.
    pub fn with_env_sealer(mut self, sealer: Arc<EnvSealer>) -> Self {
        self.sealer = sealer;
        self
    }

    /// Masks these host secrets (instead of the environment's alone).
    pub fn with_host_secrets(mut self, secrets: HostSecrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Runs tsx workflows from cached esbuild bundles with plain node when
    /// possible (about 50 ms of startup instead of 170 ms).
    pub fn with_transpile_cache(mut self, cache: Option<TranspileCache>) -> Self {
        self.cache = cache;
        self
    }

    /// How often an attempt waiting for a dynamic uid tries again when no
    /// lease was released (default 1 s). Tests set a long one to show that
    /// a release wakes the wait.
    pub fn with_lease_fallback(mut self, every: Duration) -> Self {
        self.lease_fallback = Some(every);
        self
    }

    fn tmp_base(&self) -> PathBuf {
        self.tmp_base.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// Who owns the private TMPDIR of a job or worker: its user (uid, gid), or
/// `None` (tsbridge).
pub(crate) fn tmp_owner(user: Option<JobUser>) -> Option<(u32, u32)> {
    user.map(|u| (u.uid, u.gid))
}

/// The user one job attempt or pool worker of `wf` runs as, and for a
/// `dynamic` workflow the lease of its uid (to be held until its tree and
/// TMPDIR are gone). `Err`: no uid of the range is free.
pub(crate) fn job_user(
    wf: &WorkflowConfig,
) -> Result<(Option<JobUser>, Option<UidLease>), tsbridge_sandbox::DynamicUserError> {
    match wf.user.map(|r| r.for_job()).transpose()? {
        Some((u, lease)) => Ok((Some(u), lease)),
        None => Ok((None, None)),
    }
}

/// Removes the private TMPDIRs of finished attempts off the response path:
/// an attempt reports its outcome first, and its TMPDIR (its tree is gone
/// by then) is removed on a blocking thread. An `rmdir` of even an empty
/// directory costs milliseconds on a journaled file system (1.3-3.9 ms
/// median on the ext4 `/tmp` of the development host), which every spawn job's
/// response waited for. Every removal is tracked: [`Executor::shutdown`]
/// waits for them, so none is left behind; one whose task never ran (its
/// tokio runtime went away first) still removes the directory when the
/// task, which owns the [`PrivateDir`], is dropped.
#[derive(Debug, Clone, Default)]
struct TmpRemovals {
    tasks: tokio_util::task::TaskTracker,
    /// Tests: removals wait for a permit, to show they come after the outcome.
    #[cfg(test)]
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl TmpRemovals {
    fn defer(&self, tmp: PrivateDir) {
        #[cfg(test)]
        if let Some(gate) = self.gate.clone() {
            self.tasks.spawn(async move {
                let _permit = gate.acquire_owned().await;
                drop(tmp);
            });
            return;
        }
        self.tasks.spawn_blocking(move || drop(tmp));
    }

    /// Waits until every removal deferred so far is done.
    async fn settle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}

/// What a job whose program could not be started says: the program (as
/// the workflow names it: relative to its root, else by file name, so no
/// host path reaches API clients) and the OS error. A script whose `#!`
/// interpreter is missing says so: the OS only says "No such file".
async fn spawn_failure_message(e: &tsbridge_process::SpawnError, root: &Path) -> String {
    let program = program_name(&e.program, root);
    let mut msg = format!("cannot start {program}: {}", e.source);
    if e.kind == std::io::ErrorKind::NotFound
        && let Some(interp) = shebang_interpreter(&e.program).await
    {
        msg.push_str(&format!(" (its #! interpreter {interp} was not found)"));
    }
    msg
}

/// `path` relative to `root` when inside it, else its file name.
pub(crate) fn program_name(path: &Path, root: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    }
}

/// The interpreter a script's `#!` line names, if it has one.
async fn shebang_interpreter(script: &Path) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 256];
    let mut f = tokio::fs::File::open(script).await.ok()?;
    let n = f.read(&mut head).await.ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interp = String::from_utf8_lossy(line);
    interp.split_whitespace().next().map(str::to_owned)
}

/// The engine's runtime for a config runtime (ts-node never type-checks
/// at job time: about 1 s per job).
pub fn engine_runtime(kind: RuntimeKind) -> rt::RuntimeKind {
    match kind {
        RuntimeKind::Tsx => rt::RuntimeKind::Tsx,
        RuntimeKind::TsNode => rt::RuntimeKind::TsNode { type_check: false },
        RuntimeKind::Node => rt::RuntimeKind::Node,
        RuntimeKind::Exec => rt::RuntimeKind::Exec,
    }
}

/// Program and leading arguments (the script included) that run `script`
/// with `runtime`, resolved by the engine (runners found in the workflow's
/// `node_modules`); when that fails, the plain form (`node --import tsx`,
/// `node -r ts-node/register/transpile-only`, `node`, the script itself),
/// whose failure then shows at spawn.
pub fn invocation(runtime: RuntimeKind, script: &Path) -> (PathBuf, Vec<OsString>) {
    if let Ok(inv) = rt::resolve(
        script,
        Some(engine_runtime(runtime)),
        &RuntimeSearch::default(),
    ) {
        return (inv.program, inv.args);
    }
    let s = script.as_os_str().to_owned();
    match runtime {
        RuntimeKind::Tsx => (
            PathBuf::from("node"),
            vec!["--import".into(), "tsx".into(), s],
        ),
        RuntimeKind::TsNode => (
            PathBuf::from("node"),
            vec!["-r".into(), "ts-node/register/transpile-only".into(), s],
        ),
        RuntimeKind::Node => (PathBuf::from("node"), vec![s]),
        RuntimeKind::Exec => (script.to_path_buf(), Vec::new()),
    }
}

/// The sandbox policy a workflow's limits ask for. Every job gets the
/// rlimits: open files ([`DEFAULT_OPEN_FILES`] unless `limits.open_files`),
/// file size and CPU seconds when set, core dumps off. Its user is the
/// one its access is judged by ([`tsbridge_sandbox::RunAs::judged_as`]):
/// a job's own is set by [`policy_for_user`].
pub fn policy_for(wf: &WorkflowConfig, tmpdir: &Path) -> SandboxPolicy {
    policy_for_user(wf, tmpdir, wf.user.map(|u| u.judged_as()))
}

/// [`policy_for`] of one job or worker that runs as `user`.
pub(crate) fn policy_for_user(
    wf: &WorkflowConfig,
    tmpdir: &Path,
    user: Option<JobUser>,
) -> SandboxPolicy {
    let l = &wf.limits;
    let fs = if l.read.is_empty() && l.write.is_empty() {
        None
    } else {
        let node = rt::find_node().unwrap_or_else(|| PathBuf::from("/usr/bin/node"));
        let mut fs = FsPolicy::for_node(&wf.root, &node, tmpdir);
        if wf.runtime == RuntimeKind::Exec {
            fs = fs.allow_exec(wf.script.clone());
        }
        for r in &l.read {
            fs = fs.allow_read(r.clone());
        }
        for w in &l.write {
            fs = fs.allow_write(w.clone());
        }
        Some(fs)
    };
    SandboxPolicy {
        memory: l.memory.map(|m| m.bytes()),
        cpu: l.cpu,
        pids: l.pids,
        network: l.network.unwrap_or(true),
        unix_sockets: l.unix_sockets,
        pid_namespace: l.pid_namespace,
        fs,
        rlimits: Rlimits {
            nofile: Some(l.open_files.unwrap_or(DEFAULT_OPEN_FILES)),
            fsize: l.file_size.map(|s| s.bytes()),
            cpu_seconds: l.cpu_seconds(),
            ..Rlimits::default()
        },
        user,
        // A dynamic uid goes to later jobs: its IPC namespace and the
        // shared folders' guard keep what it leaves in its TMPDIR.
        dynamic_tmpdir: matches!(wf.user, Some(tsbridge_sandbox::RunAs::Dynamic(_)))
            .then(|| tmpdir.to_path_buf()),
        ..SandboxPolicy::default()
    }
}

/// Points `inv` (run from the transpile cache) at a copy of its bundle in
/// `tmpdir`, owned by `owner` (uid, gid) and readable by it alone: the
/// cache is tsbridge's (0700) and the job runs as the workflow's user. The
/// bundle does not depend on where it lies (the build points `__dirname`,
/// `import.meta` and `argv[1]` at the original file, and packages come
/// from `NODE_PATH`), so the copy runs as the cached file would.
async fn bundle_for_user(
    inv: &mut rt::Invocation,
    tmpdir: &Path,
    owner: (u32, u32),
) -> std::io::Result<()> {
    let rt::Via::TranspileCache { bundle, .. } = &mut inv.via else {
        return Ok(());
    };
    let copy = tmpdir.join("tsbridge-bundle.cjs");
    let from = bundle.clone();
    let to = copy.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut src = std::fs::File::open(&from)?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&to)?;
        std::io::copy(&mut src, &mut dst)?;
        std::os::unix::fs::fchown(&dst, Some(owner.0), Some(owner.1))
    })
    .await
    .map_err(std::io::Error::other)??;
    let old = std::mem::replace(bundle, copy.clone());
    for a in &mut inv.args {
        if std::path::Path::new(a.as_os_str()) == old {
            *a = copy.clone().into_os_string();
        }
    }
    Ok(())
}

/// The name of a job's parameters file (`{paramsFile}`) in its TMPDIR.
const PARAMS_FILE_NAME: &str = "tsbridge-params.json";

/// Writes a job's parameters (`json`, what `{params}` would carry) into a
/// new file of its private TMPDIR `dir`, for `{paramsFile}`: mode 0600,
/// owned by `owner` (the job's user: uid, gid) when it has one, so that no
/// other process of the host can read them (a command line is readable by
/// all in `/proc/<pid>/cmdline`). The directory is opened without following
/// a symlink and the file made in it with `O_EXCL | O_NOFOLLOW`: nothing
/// planted there (by another process of the job's user) is followed or
/// written through; that fails the write. Removed with the TMPDIR.
async fn write_params_file(
    dir: &Path,
    json: &str,
    owner: Option<(u32, u32)>,
) -> std::io::Result<PathBuf> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(PARAMS_FILE_NAME);
    let dir = dir.to_path_buf();
    let json = json.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let dirfd = rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let fd = rustix::fs::openat(
            &dirfd,
            PARAMS_FILE_NAME,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        let mut file = std::fs::File::from(fd);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        // The umask may have narrowed it; make it exactly 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(json.as_bytes())
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(path)
}

/// How often a job waiting for a dynamic uid tries again when no lease was
/// released (by default): a uid also comes free when a process outside
/// tsbridge's leases that had it exits, which nothing announces.
const LEASE_FALLBACK: Duration = Duration::from_secs(1);

/// Why [`job_user_waiting`] gave up.
enum Waited {
    /// A cancel or shutdown came first.
    Stopped(tsbridge_process::StopReason),
    /// No uid came free within the job's timeout.
    Exhausted(tsbridge_sandbox::DynamicUserError),
    /// The lease's task (it reads `/proc`) panicked or was cancelled.
    Task(tokio::task::JoinError),
}

/// [`job_user`], waiting while every uid of a `dynamic` workflow's range is
/// taken: a uid comes back when a job's tree and TMPDIR are gone, moments
/// after its outcome, so a full range makes the next job wait (at most its
/// `timeout`, then it fails with the typed error) rather than fail at
/// once. The release of a lease wakes the wait; without one it tries again
/// every `fallback` ([`LEASE_FALLBACK`]). A cancel or shutdown ends the
/// wait.
async fn job_user_waiting(
    wf: &WorkflowConfig,
    timeout: Duration,
    fallback: Duration,
    control: &tsbridge_process::ProcessControl,
) -> Result<(Option<JobUser>, Option<UidLease>), Waited> {
    let Some(run_as @ tsbridge_sandbox::RunAs::Dynamic(_)) = wf.user else {
        return job_user(wf).map_err(Waited::Exhausted);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Taken before the try: a release while it runs wakes the wait.
        let mut released = std::pin::pin!(tsbridge_sandbox::dynamic::Leases::global().released());
        released.as_mut().enable();
        // Reads /proc (every process's ids): off the async threads.
        let tried = tokio::task::spawn_blocking(move || run_as.for_job())
            .await
            .map_err(Waited::Task)?
            .map(|(u, lease)| (Some(u), lease));
        match tried {
            Err(e @ tsbridge_sandbox::DynamicUserError::Exhausted { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(workflow = %wf.name, error = %e, "waiting for a dynamic uid");
                tokio::select! {
                    _ = released => {}
                    _ = tokio::time::sleep(fallback) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                    stop = control.stopped() => return Err(Waited::Stopped(stop.reason)),
                }
            }
            Err(e) => return Err(Waited::Exhausted(e)),
            Ok(u) => return Ok(u),
        }
    }
}

/// Resolves how to run `script` ([`rt::resolve_for_spawn_async`]) for a
/// job that runs as another user when `for_user` is `Some((dir, (uid,
/// gid)))`: the transpile cache is tsbridge's (0700), so a bundle from it is
/// copied into `dir` for that user ([`bundle_for_user`]); should the copy
/// fail, the TypeScript runs through its runner instead.
pub async fn resolve_for_user(
    script: PathBuf,
    runtime: Option<rt::RuntimeKind>,
    search: &RuntimeSearch,
    cache: Option<TranspileCache>,
    for_user: Option<(&Path, (u32, u32))>,
) -> Result<rt::Invocation, rt_error> {
    let resolved =
        rt::resolve_for_spawn_async(script.clone(), runtime, search.clone(), cache).await;
    match (resolved, for_user) {
        (Ok(mut inv), Some((dir, owner))) if matches!(inv.via, rt::Via::TranspileCache { .. }) => {
            match bundle_for_user(&mut inv, dir, owner).await {
                Ok(()) => Ok(inv),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot give the job's user its cached bundle: running through the runner");
                    rt::resolve_for_spawn_async(script, runtime, search.clone(), None).await
                }
            }
        }
        (resolved, _) => resolved,
    }
}

/// A prepared sandbox for the engine, holding the job's (or worker's)
/// dynamic uid lease until it is dropped, after its cgroup is removed.
pub(crate) fn attachment(
    mut prepared: tsbridge_sandbox::PreparedSandbox,
    policy: SandboxPolicy,
    lease: Option<UidLease>,
) -> SandboxAttachment {
    if let Some(l) = lease {
        prepared.hold_lease(l);
    }
    SandboxAttachment {
        prepared: Arc::new(prepared),
        policy: Arc::new(policy),
    }
}

/// The policy of one attempt: [`policy_for`], and where the host has
/// Landlock, a ruleset for a workflow with path parameters but no
/// `read`/`write` lists ([`FsPolicy::for_path_params`]: system dirs, the
/// root read-only, the checked path targets): the re-check of the paths is
/// then not the only guard of the file system. A cached bundle lives
/// outside the root: readable (read only; the cache is tsbridge's, 0700).
fn attempt_policy(
    sb: &Sandbox,
    wf: &WorkflowConfig,
    user: Option<JobUser>,
    tmpdir: &Path,
    targets: &[PathBuf],
    via: &rt::Via,
) -> SandboxPolicy {
    let mut policy = policy_for_user(wf, tmpdir, user);
    if policy.fs.is_none()
        && !wf.path_params.is_empty()
        && sb.capabilities().landlock.is_available()
    {
        let node = rt::find_node().unwrap_or_else(|| PathBuf::from("/usr/bin/node"));
        let mut fs = FsPolicy::for_path_params(&wf.root, &node, tmpdir, targets);
        if wf.runtime == RuntimeKind::Exec {
            fs = fs.allow_exec(wf.script.clone());
        }
        policy.fs = Some(fs);
    }
    if let rt::Via::TranspileCache { bundle, .. } = via
        && let (Some(fs), Some(dir)) = (policy.fs.take(), bundle.parent())
    {
        policy.fs = Some(fs.allow_read(dir.to_path_buf()));
    }
    policy
}

#[async_trait]
impl Executor for SpawnExecutor {
    fn check(&self, wf: &WorkflowConfig) -> Result<(), String> {
        // Said without host paths: this text reaches API clients (503).
        rt::resolve(&wf.script, Some(engine_runtime(wf.runtime)), &self.search).map_err(|e| {
            tracing::warn!(workflow = %wf.name, error = %e, "runtime not found");
            match e {
                rt_error::ScriptMissing { .. } => "its script is missing".to_owned(),
                rt_error::RuntimeNotFound { runtime, hint, .. } => {
                    format!("{runtime} is not installed for it ({hint})")
                }
                rt_error::NodeNotFound { .. } => "node is not installed".to_owned(),
            }
        })?;
        if wf.runtime == RuntimeKind::Exec {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&wf.script)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o111 == 0 {
                return Err("the script is not executable".into());
            }
        }
        if wf.user.is_some() && self.sandbox.is_none() {
            return Err("its user needs the sandbox, which is off".into());
        }
        if wf.limits.any() && !wf.limits.degraded {
            let Some(sb) = &self.sandbox else {
                return Err(
                    "its limits need the sandbox, which is off (set limits.degraded = true to run without)"
                        .into(),
                );
            };
            let report = sb.predict(&policy_for(wf, &self.tmp_base()));
            let short = report.shortfalls();
            if !short.is_empty() {
                let names: Vec<&str> = short.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "this host cannot enforce its {} limit(s) (set limits.degraded = true to run anyway)",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }

    async fn run(&self, req: AttemptRequest, io: AttemptIo) -> AttemptOutcome {
        let wf = &req.workflow;
        let key = match JobKey::new(format!("{}-{}", req.job_id.short(), req.attempt)) {
            Ok(k) => k,
            Err(e) => return AttemptOutcome::spawn_failure(format!("invalid job key: {e}"), false),
        };
        // A `dynamic` workflow's attempt leases its own uid; the lease is
        // held by its TMPDIR and its sandbox, and goes back once both are
        // gone (the tree killed and reaped, the cgroup removed).
        let fallback = self.lease_fallback.unwrap_or(LEASE_FALLBACK);
        let (user, lease) = match job_user_waiting(wf, req.timeout, fallback, &io.control).await {
            Ok(u) => u,
            Err(Waited::Stopped(reason)) => {
                let mut o = AttemptOutcome::spawn_failure(
                    "the job was stopped while it waited for a dynamic uid",
                    false,
                );
                o.reason = reason.into();
                return o;
            }
            Err(Waited::Exhausted(e)) => {
                tracing::warn!(job = %req.job_id, error = %e, "no dynamic uid for the job");
                return AttemptOutcome::spawn_failure(e.to_string(), true);
            }
            Err(Waited::Task(e)) => {
                tracing::error!(job = %req.job_id, error = %e, "the lease of a dynamic uid failed");
                return AttemptOutcome::spawn_failure(
                    "internal error: the lease of a dynamic uid failed",
                    false,
                );
            }
        };
        // The private TMPDIR exists before the sandbox is prepared, so that
        // its Landlock rule can name it; removed when this attempt is over,
        // and only then is the job's dynamic uid lease (if any) let go: a
        // later job with the same uid never finds this one's TMPDIR.
        let tmp = PrivateDir::create(&self.tmp_base(), key.as_str(), user, "a job's TMPDIR");
        let tmp = match tmp {
            Ok(t) => t.holding_lease(lease.clone()),
            Err(e) => {
                tracing::warn!(job = %req.job_id, error = %e, "cannot create the job's TMPDIR");
                return AttemptOutcome::spawn_failure("cannot create the job's TMPDIR", false);
            }
        };
        let tmpdir = tmp.path().to_path_buf();

        let mut extra = wf.env.set.clone();
        match self.sealer.open_env(req.job_id, &req.request_env) {
            Ok(env) => extra.extend(env),
            Err(e) => {
                // This job alone fails (no retry: the row will not open
                // better), and says which variable and why.
                tracing::error!(job = %req.job_id, error = %e, "cannot open the job's request env");
                return AttemptOutcome::spawn_failure(e.job_message(), false);
            }
        }
        let pass: Vec<&str> = wf.env.pass.iter().map(String::as_str).collect();
        let env = tsbridge_sandbox::env::build_child_env(&pass, std::env::vars(), &extra);
        // The child's own secrets and tsbridge's: a job may print a host
        // secret it got some other way (a file, a parameter).
        // Shared with the workflow's other jobs unless the request adds
        // secrets of its own.
        let masker = self.secrets.masker_for_attempt(wf, &env);

        // Checked again now, on the stored parameters: the child gets the
        // checked canonical paths (see `path_params`).
        let (params_json, targets) = match crate::path_params::for_attempt(&req) {
            Ok(p) => (
                serde_json::to_string(&p).unwrap_or_else(|_| "null".into()),
                crate::path_params::targets(wf, &p),
            ),
            Err(refused) => return *refused,
        };
        // `{paramsFile}`: the parameters go in a file of the job's own
        // TMPDIR instead of on its command line.
        let params_file = if wf.uses_params_file() {
            let written = write_params_file(&tmpdir, &params_json, tmp_owner(user)).await;
            match written.map(|p| p.into_os_string().into_string()) {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return AttemptOutcome::spawn_failure(
                        "cannot pass the job's parameters file: its TMPDIR's path is not UTF-8",
                        false,
                    );
                }
                Err(e) => {
                    tracing::warn!(job = %req.job_id, error = %e, "cannot write the job's parameters file");
                    // The OS's reason, without the host path.
                    return AttemptOutcome::spawn_failure(
                        format!("cannot write the job's parameters file in its TMPDIR: {e}"),
                        false,
                    );
                }
            }
        } else {
            String::new()
        };
        let resolved = resolve_for_user(
            wf.script.clone(),
            Some(engine_runtime(wf.runtime)),
            &self.search,
            self.cache.clone(),
            tmp_owner(user).map(|owner| (tmpdir.as_path(), owner)),
        )
        .await;
        let inv = match resolved {
            Ok(inv) => inv,
            Err(e) => {
                tracing::warn!(job = %req.job_id, error = %e, "cannot resolve the runtime");
                return AttemptOutcome::spawn_failure(
                    "the workflow's runtime cannot be found",
                    false,
                );
            }
        };
        let args: Vec<OsString> = wf
            .render_job_args(&params_json, &req.job_id.to_string(), &params_file)
            .into_iter()
            .map(OsString::from)
            .collect();

        let sandbox = match (&self.sandbox, wf.limits.any()) {
            (Some(sb), true) => {
                let policy = attempt_policy(sb, wf, user, &tmpdir, &targets, &inv.via);
                match sb.prepare(key.as_str(), &policy) {
                    Ok(prepared) => {
                        let short = prepared.report().shortfalls();
                        if !short.is_empty() && !wf.limits.degraded {
                            let names: Vec<&str> = short.iter().map(|(n, _)| *n).collect();
                            return AttemptOutcome::spawn_failure(
                                format!(
                                    "cannot enforce the {} limit(s) on this host",
                                    names.join(", ")
                                ),
                                false,
                            );
                        }
                        Some(attachment(prepared, policy, lease.clone()))
                    }
                    Err(e) => {
                        tracing::warn!(job = %req.job_id, error = %e, "sandbox setup failed");
                        return AttemptOutcome::spawn_failure("sandbox setup failed", false);
                    }
                }
            }
            // No limits configured: still give the job a cgroup when the host
            // has them, so every descendant (setsid ones included) is found
            // and killed at the end, and a restarted server can sweep what a
            // crashed one left. rlimits (open files, core dumps off),
            // no_new_privs and the seccomp deny-list come with it. A host
            // without cgroups runs such jobs unsandboxed, as before.
            (Some(sb), false) => {
                let policy = attempt_policy(sb, wf, user, &tmpdir, &targets, &inv.via);
                // A ruleset for path parameters, or a user, is a guard, not
                // a courtesy: if it cannot be set up, the job does not run
                // unconfined (or as tsbridge).
                let guarded = policy.fs.is_some() || policy.user.is_some();
                match sb.prepare(key.as_str(), &policy) {
                    Ok(prepared) => Some(attachment(prepared, policy, lease.clone())),
                    Err(e) if guarded => {
                        tracing::warn!(job = %req.job_id, error = %e, "sandbox setup failed");
                        return AttemptOutcome::spawn_failure("sandbox setup failed", false);
                    }
                    Err(e) => {
                        tracing::debug!(job = %req.job_id, error = %e, "no tracking cgroup for this job");
                        None
                    }
                }
            }
            (None, _) if user.is_some() => {
                return AttemptOutcome::spawn_failure(
                    "its user needs the sandbox, which is off",
                    false,
                );
            }
            _ => None,
        };

        let mut env = env;
        env.extend(inv.env.iter().cloned());
        let t = tmpdir.display().to_string();
        for k in ["TMPDIR", "TMP", "TEMP"] {
            env.insert(k.to_owned(), t.clone());
        }
        let spec = inv
            .builder()
            .args(args)
            .cwd(wf.cwd.clone())
            .envs(env)
            .timeout(Some(req.timeout))
            .kill_grace(wf.kill_grace)
            .max_output(usize::try_from(wf.max_output.bytes()).unwrap_or(usize::MAX))
            .ipc(wf.ipc)
            .output(wf.stdio)
            .masker(masker)
            .sandbox(sandbox)
            // Enforced by tsbridge's monitor only where no cgroup enforces it
            // (a degraded host); the kernel's limit wins where there is one.
            .memory_limit(wf.limits.memory.map(|m| m.bytes()))
            .key(key)
            .label(format!("{}:{}", wf.name, req.job_id))
            .control(io.control.clone())
            .event_capacity(EVENT_CAPACITY)
            .build();
        let spec = match spec {
            Ok(s) => s,
            Err(e) => return AttemptOutcome::spawn_failure(format!("invalid job: {e}"), false),
        };
        let mut running = match tsbridge_process::spawn(spec).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = %req.job_id, error = %e, source = %e.source, "spawn failed");
                let transient = e.is_retryable();
                return AttemptOutcome::spawn_failure(
                    spawn_failure_message(&e, &wf.root).await,
                    transient,
                );
            }
        };
        let pid = running.pid();
        let _ = io.events.send(AttemptEvent::Started { pid }).await;
        let forward = running.take_events().map(|mut rx| {
            let tx = io.events.clone();
            async move {
                while let Some(e) = rx.recv().await {
                    if tx.send(AttemptEvent::Child(e)).await.is_err() {
                        break;
                    }
                }
            }
        });
        let (outcome, ()) = tokio::join!(running.wait(), async {
            if let Some(f) = forward {
                f.await;
            }
        });
        let o = outcome;
        if o.events_dropped > 0 {
            let _ = io
                .events
                .send(AttemptEvent::Child(tsbridge_proto::ChildEvent::Log {
                    level: tsbridge_proto::LogLevel::Warn,
                    message: format!(
                        "{} output events were not streamed (their consumer fell behind); the captured output keeps the lines",
                        o.events_dropped
                    ),
                    child_timestamp: None,
                }))
                .await;
        }
        // The tree is gone: the TMPDIR goes after the outcome is reported.
        self.removals.defer(tmp);
        let error = match o.reason {
            EndReason::Exited if o.exit.success() => None,
            EndReason::Exited => o
                .exit
                .code()
                .map(|c| format!("the process exited with code {c}")),
            EndReason::Signaled => o.exit.signal().map(|s| {
                format!(
                    "the process was killed by signal {}",
                    tsbridge_proto::api::describe_signal(s)
                )
            }),
            EndReason::Timeout => Some(format!(
                "the job timed out after {}",
                tsbridge_proto::units::format_duration(req.timeout)
            )),
            EndReason::MemoryLimit => Some("the job hit its memory limit".into()),
            EndReason::PidsLimit => Some("the job hit its pids limit".into()),
            EndReason::CpuLimit => Some("the job hit its CPU limit".into()),
            EndReason::Cancelled => Some("the job was cancelled".into()),
            EndReason::Shutdown => Some("tsbridge shut down while the job ran".into()),
            EndReason::Interrupted => Some("the job's supervision was lost".into()),
            EndReason::SpawnFailure => Some("the program could not be started".into()),
        };
        AttemptOutcome {
            reason: o.reason,
            exit_code: o.exit.code(),
            signal: o.exit.signal(),
            pid: Some(o.pid),
            result: o.result.clone(),
            error,
            transient: false,
            stderr_tail: o.stderr.tail_string(STDERR_TAIL),
            output: OutputView {
                stdout: o.stdout.to_string_lossy(),
                stderr: o.stderr.to_string_lossy(),
                stdout_truncated: o.stdout.truncated(),
                stderr_truncated: o.stderr.truncated(),
                stdout_dropped_bytes: o.stdout.dropped,
                stderr_dropped_bytes: o.stderr.dropped,
            },
            resources: Resources {
                peak_memory_bytes: o.peak_rss,
                cpu_time_ms: Some(o.cpu.as_millis() as u64),
                wall_time_ms: Some(o.wall.as_millis() as u64),
            },
        }
    }

    /// Waits for the TMPDIRs of finished attempts to be removed.
    async fn shutdown(&self, _grace: Duration) {
        self.removals.settle().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::env;

    const HOST: &str = "host-secret-9876543210";
    const WF: &str = "wf-secret-0123456789";
    const REQ: &str = "request-secret-5555555555";

    fn workflow() -> (tempfile::TempDir, WorkflowConfig) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("w.mjs"), "").unwrap_or_else(|e| panic!("{e}"));
        let cfg = crate::config::Config::parse(
            &format!(
                "[workflows.w]\nscript = \"w.mjs\"\n\
                 env = {{ set = {{ API_TOKEN = \"{WF}\" }}, request = [\"DB_PASSWORD\", \"API_TOKEN\"] }}\n"
            ),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let wf = cfg.workflows["w"].clone();
        (dir, wf)
    }

    /// Attempts that add no secret share the workflow's masker; one whose
    /// request adds a secret gets its own, which masks it (and the rest),
    /// and which the cache does not keep.
    #[test]
    fn the_workflow_masker_is_shared_and_request_secrets_are_not_kept() {
        let (_dir, wf) = workflow();
        let secrets = HostSecrets::new([HOST.to_owned()]);
        let plain = env(&[("API_TOKEN", WF), ("LANG", "C")]);
        let a = secrets.masker_for_attempt(&wf, &plain);
        let b = secrets.masker_for_attempt(&wf, &plain);
        assert!(Arc::ptr_eq(&a, &b), "each attempt built its masker");
        assert!(Arc::ptr_eq(&a, &secrets.masker_for_workflow(&wf)));
        assert!(Arc::ptr_eq(&a, &secrets.clone().masker_for_workflow(&wf)));
        assert_eq!(secrets.cache.len(), 1);

        let with_request = env(&[("API_TOKEN", WF), ("DB_PASSWORD", REQ)]);
        let r = secrets.masker_for_attempt(&wf, &with_request);
        assert!(!Arc::ptr_eq(&a, &r));
        // Built on the workflow's compiled secrets, not from scratch.
        assert!(r.extends(&a), "the attempt rebuilt the workflow's secrets");
        assert_eq!(
            r.mask(&format!("{REQ} {WF} {HOST}")),
            "[REDACTED] [REDACTED] [REDACTED]"
        );
        // The request's value overriding the workflow's is its own secret.
        let overridden = env(&[("API_TOKEN", REQ)]);
        let o = secrets.masker_for_attempt(&wf, &overridden);
        assert!(!Arc::ptr_eq(&a, &o));
        assert!(o.extends(&a));
        assert_eq!(o.mask(REQ), "[REDACTED]");
        assert_eq!(secrets.cache.len(), 1, "a request secret was cached");
        assert_eq!(a.mask(REQ), REQ);
    }

    /// A workflow without secrets of its own gets the host's masker, and
    /// caches nothing.
    #[test]
    fn no_workflow_secrets_no_cache_entry() {
        let (_dir, mut wf) = workflow();
        wf.env.set.clear();
        let secrets = HostSecrets::new([HOST.to_owned()]);
        let m = secrets.masker_for_workflow(&wf);
        assert!(Arc::ptr_eq(&m, &secrets.masker));
        assert_eq!(m.mask(HOST), "[REDACTED]");
        assert_eq!(secrets.cache.len(), 0);
    }

    /// The cache stays bounded, and an evicted workflow's masker is built
    /// again (still masking) on its next use.
    #[test]
    fn the_cache_is_bounded() {
        let (_dir, wf) = workflow();
        let secrets = HostSecrets::default();
        let wfs: Vec<WorkflowConfig> = (0..MASKER_CACHE_ENTRIES + 3)
            .map(|i| {
                let mut w = wf.clone();
                w.env
                    .set
                    .insert("API_TOKEN".into(), format!("secret-number-{i:04}"));
                w
            })
            .collect();
        for w in &wfs {
            let m = secrets.masker_for_workflow(w);
            assert_eq!(m.mask(&w.env.set["API_TOKEN"]), "[REDACTED]");
        }
        assert_eq!(secrets.cache.len(), MASKER_CACHE_ENTRIES);
        for w in &wfs {
            let m = secrets.masker_for_workflow(w);
            assert_eq!(m.mask(&w.env.set["API_TOKEN"]), "[REDACTED]");
        }
        assert_eq!(secrets.cache.len(), MASKER_CACHE_ENTRIES);
    }

    /// `wf` with an `env.set` of `keys` PEM keys and 4 tokens of 120 bytes
    /// (the measurements' heavy case).
    fn with_heavy_secrets(wf: &WorkflowConfig, keys: u64) -> WorkflowConfig {
        let mut wf = wf.clone();
        wf.env.set.clear();
        for k in 0..keys {
            wf.env.set.insert(format!("PRIVATE_KEY_{k}"), pem(k + 1));
        }
        for t in 0..4_u8 {
            let a = char::from(b'a' + 2 * t);
            let b = char::from(b'b' + 2 * t);
            let token: String = (0..60).flat_map(|_| [a, b]).collect();
            wf.env.set.insert(format!("API_TOKEN_{t}"), token);
        }
        wf
    }

    /// A PEM-armoured key of 1,704 bytes (64-column base64 of pseudo-random
    /// bytes), different for each `seed`.
    fn pem(seed: u64) -> String {
        use base64::Engine as _;
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let der: Vec<u8> = (0..1218)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// The per-job cost of a pooled job's masker, before (`masker_for` of
    /// the workflow's `env.set`, built per job) and after
    /// (`masker_for_workflow`, cached): `env.set` with `keys` PEM keys and
    /// 4 tokens of 120 bytes. Prints only; run by hand:
    /// `cargo nextest run -p tsbridge-runtime --lib --run-ignored only
    /// -E 'test(masker_cost)' --no-capture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn masker_cost_per_job() {
        let (_dir, wf) = workflow();
        let secrets = HostSecrets::new([HOST.to_owned()]);
        for keys in [1_u64, 10] {
            let wf = with_heavy_secrets(&wf, keys);
            let mut before: Vec<Duration> = (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(secrets.masker_for(&wf.env.set));
                    t.elapsed()
                })
                .collect();
            before.sort();
            let t = std::time::Instant::now();
            let first = secrets.masker_for_workflow(&wf);
            let miss = t.elapsed();
            const N: u32 = 100_000;
            let t = std::time::Instant::now();
            for _ in 0..N {
                let m = std::hint::black_box(secrets.masker_for_workflow(&wf));
                assert!(Arc::ptr_eq(&m, &first));
            }
            let hit = t.elapsed() / N;
            println!(
                "{keys} PEM + 4 tokens: before (masker_for, per job) min {:?} median {:?}; \
                 after: first job {miss:?}, each later job {hit:?}",
                before[0], before[3]
            );
        }
    }

    /// The cost of an attempt's masker when its request adds a secret,
    /// before (`masker_for`: every secret compiled again, what
    /// `masker_for_attempt` did) and after (`masker_for_attempt`: the
    /// request's secret added to the workflow's cached masker), alternated
    /// in one run: `env.set` with `keys` PEM keys and 4 tokens of 120
    /// bytes, the request adds one 36-byte token. Prints only; run by hand:
    /// `cargo nextest run -p tsbridge-runtime --lib --run-ignored only
    /// -E 'test(attempt_masker_cost)' --no-capture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn attempt_masker_cost_with_a_request_secret() {
        let (_dir, wf) = workflow();
        let secrets = HostSecrets::new([HOST.to_owned()]);
        for keys in [1_u64, 10] {
            let wf = with_heavy_secrets(&wf, keys);
            let mut env = wf.env.set.clone();
            env.insert(
                "DB_PASSWORD".into(),
                "request-secret-0123456789-abcdefghij".into(),
            );
            secrets.masker_for_workflow(&wf);
            let (mut before, mut after) = (Vec::new(), Vec::new());
            for _ in 0..7 {
                let t = std::time::Instant::now();
                std::hint::black_box(secrets.masker_for(&env));
                before.push(t.elapsed());
                let t = std::time::Instant::now();
                let m = std::hint::black_box(secrets.masker_for_attempt(&wf, &env));
                after.push(t.elapsed());
                assert_eq!(m.mask("request-secret-0123456789-abcdefghij"), "[REDACTED]");
            }
            before.sort();
            after.sort();
            println!(
                "{keys} PEM + 4 tokens, request adds 1: before (masker_for) min {:?} median {:?} \
                 max {:?}; after (masker_for_attempt) min {:?} median {:?} max {:?}",
                before[0], before[3], before[6], after[0], after[3], after[6]
            );
        }
    }

    /// The `tsbridge-*` TMPDIRs left in `base`.
    fn tmpdirs_in(base: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(base)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("tsbridge-"))
            })
            .collect()
    }

    /// Attempt 1 of job `job_id` of `wf` with `params` (no request env, a
    /// 120 s timeout), run by `ex`.
    async fn run_once(
        ex: &SpawnExecutor,
        job_id: tsbridge_proto::JobId,
        wf: &WorkflowConfig,
        params: serde_json::Value,
    ) -> AttemptOutcome {
        let (tx, _rx) = tokio::sync::mpsc::channel(1024);
        let req = AttemptRequest {
            job_id,
            attempt: 1,
            workflow: Arc::new(wf.clone()),
            params,
            request_env: BTreeMap::new(),
            timeout: Duration::from_secs(120),
        };
        let io = AttemptIo {
            events: tx,
            control: crate::executor::ProcessControl::new(),
        };
        ex.run(req, io).await
    }

    /// An attempt's outcome does not wait for the removal of its TMPDIR
    /// (an `rmdir` costs milliseconds on a journaled `/tmp`): the removal
    /// comes after, still happens, and `shutdown` waits for it.
    #[tokio::test]
    async fn the_tmpdir_is_removed_after_the_outcome_and_shutdown_waits_for_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("w.mjs"), "console.log('RESULT: 1');\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let cfg = crate::config::Config::parse(
            "[workflows.w]\nscript = \"w.mjs\"\nruntime = \"node\"\n",
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut ex = SpawnExecutor::new(None, Some(base.path().to_owned()));
        ex.removals.gate = Some(gate.clone());
        let wf = &cfg.workflows["w"];
        let outcome = run_once(
            &ex,
            tsbridge_proto::JobId::new(),
            wf,
            serde_json::Value::Null,
        )
        .await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(
            tmpdirs_in(base.path()).len(),
            1,
            "the outcome waited for the TMPDIR's removal"
        );
        gate.add_permits(1);
        ex.shutdown(Duration::ZERO).await;
        assert_eq!(tmpdirs_in(base.path()), Vec::<PathBuf>::new());
    }

    /// A parameters file (`{paramsFile}`) that cannot be written fails the
    /// attempt as a spawn failure that says so, before anything runs:
    /// something planted at its name in the TMPDIR (a symlink) is neither
    /// followed nor replaced, and a TMPDIR that is a symlink is not entered.
    #[tokio::test]
    async fn a_params_file_that_cannot_be_written_fails_the_attempt_before_the_spawn() {
        use std::os::unix::fs::{DirBuilderExt, symlink};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ran = dir.path().join("ran");
        std::fs::write(
            dir.path().join("w.mjs"),
            format!("import fs from 'fs'; fs.writeFileSync({:?}, 'x');\n", ran),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = crate::config::Config::parse(
            "[workflows.w]\nscript = \"w.mjs\"\nruntime = \"node\"\nargs = [\"{paramsFile}\"]\n",
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let job_id = tsbridge_proto::JobId::new();
        // The attempt's TMPDIR, made first (as the sandbox may) with a
        // symlink where the parameters file goes.
        let tmp = tsbridge_process::private_tmp_path(base.path(), &format!("{}-1", job_id.short()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .unwrap_or_else(|e| panic!("{e}"));
        let target = dir.path().join("elsewhere.json");
        symlink(&target, tmp.join(PARAMS_FILE_NAME)).unwrap_or_else(|e| panic!("{e}"));

        let ex = SpawnExecutor::new(None, Some(base.path().to_owned()));
        let params = serde_json::json!({"secret": "s3cret-param"});
        let outcome = run_once(&ex, job_id, &cfg.workflows["w"], params).await;
        assert_eq!(outcome.reason, EndReason::SpawnFailure, "{outcome:?}");
        let error = outcome.error.clone().unwrap_or_default();
        assert!(
            error.starts_with("cannot write the job's parameters file in its TMPDIR: "),
            "{outcome:?}"
        );
        assert!(
            !error.contains(&*base.path().to_string_lossy()),
            "a host path: {error}"
        );
        assert!(!target.exists(), "written through the symlink");
        assert!(!ran.exists(), "the job ran");
        ex.shutdown(Duration::ZERO).await;
        assert!(!tmp.exists(), "the TMPDIR stays");

        // A TMPDIR that is itself a symlink (to a folder) is not entered.
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap_or_else(|e| panic!("{e}"));
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap_or_else(|e| panic!("{e}"));
        let refused = write_params_file(&link, "{}", None).await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(!real.join(PARAMS_FILE_NAME).exists());
        let written = write_params_file(&real, "{\"a\":1}", None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read_to_string(&written).unwrap_or_else(|e| panic!("{e}")),
            "{\"a\":1}"
        );
    }

    /// A real child that prints the workflow's, the request's and the
    /// host's secrets (stdout, stderr, result): masked in every attempt,
    /// the one whose request adds a secret (its own masker) and the ones
    /// that add none (the workflow's shared masker).
    #[tokio::test]
    async fn a_child_printing_workflow_request_and_host_secrets_is_masked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("w.mjs"),
            format!(
                "const s = [process.env.API_TOKEN, process.env.DB_PASSWORD ?? '', '{HOST}'];\n\
                 console.log(s.join(' '));\n\
                 console.error(s.join(' '));\n\
                 console.log('RESULT: ' + JSON.stringify(s));\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = crate::config::Config::parse(
            &format!(
                "[workflows.w]\nscript = \"w.mjs\"\nruntime = \"node\"\n\
                 env = {{ set = {{ API_TOKEN = \"{WF}\" }}, request = [\"DB_PASSWORD\"] }}\n"
            ),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let wf = Arc::new(cfg.workflows["w"].clone());
        let ex = SpawnExecutor::new(None, Some(dir.path().to_owned()))
            .with_host_secrets(HostSecrets::new([HOST.to_owned()]));
        for (attempt, request_env) in [
            env(&[("DB_PASSWORD", REQ)]),
            BTreeMap::new(),
            BTreeMap::new(),
        ]
        .into_iter()
        .enumerate()
        {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
            let req = AttemptRequest {
                job_id: tsbridge_proto::JobId::new(),
                attempt: u32::try_from(attempt).unwrap_or(0) + 1,
                workflow: wf.clone(),
                params: serde_json::Value::Null,
                request_env,
                timeout: Duration::from_secs(120),
            };
            let io = AttemptIo {
                events: tx,
                control: crate::executor::ProcessControl::new(),
            };
            let outcome = ex.run(req, io).await;
            let mut seen = format!("{outcome:?}");
            while let Ok(e) = rx.try_recv() {
                seen.push_str(&format!("{e:?}"));
            }
            assert!(outcome.succeeded(), "attempt {attempt}: {seen}");
            assert!(outcome.result.is_some(), "attempt {attempt}: {seen}");
            assert!(seen.contains("[REDACTED]"), "attempt {attempt}: {seen}");
            for secret in [WF, REQ, HOST] {
                assert!(
                    !seen.contains(secret),
                    "attempt {attempt} showed {secret}: {seen}"
                );
            }
        }
        assert_eq!(ex.secrets.cache.len(), 1);
    }
}
