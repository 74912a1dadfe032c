//! `tsbridge run [options] [--] <script|program> [args...]`: one job in the
//! foreground (SPEC §6). The runtime is chosen by the file's extension;
//! PROGRESS lines drive a progress bar when stderr is a terminal (plain lines
//! otherwise); logs and the child's plain output go to stderr; only the result
//! JSON goes to stdout. The exit code mirrors the child: its own code, 124 on
//! timeout (like coreutils `timeout`), 128+N on signal N (and 130/143 when
//! `run` itself gets SIGINT/SIGTERM, as a shell says it); and when it never
//! started, 127 if the program (or its runtime) is not found, 126 if it cannot
//! be executed, as timeout(1) and env(1) say it.
//!
//! A piped or redirected stdin is the job's; a terminal is not.
//!
//! A reader of stdout or stderr that goes away does not end the job: the
//! child's output is captured anyway, and the exit code stays the child's.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::mpsc;
use tsbridge_process::error::SpawnStage;
use tsbridge_process::mask::Masker;
use tsbridge_process::retry::RetryPolicy;
use tsbridge_process::runtime::{RuntimeKind, RuntimeSearch};
use tsbridge_process::transpile::TranspileCache;
use tsbridge_process::{
    ExitKind, JobError, JobKey, Outcome, PrivateDir, ProcessControl, ResolveError,
    SandboxAttachment, SpawnError, StdinSpec, StopReason, spawn,
};
use tsbridge_proto::event::Stream;
use tsbridge_proto::{ChildEvent, EndReason};
use tsbridge_runtime::config::node_pids;
use tsbridge_runtime::spawn::resolve_for_user;
use tsbridge_sandbox::{FsPolicy, Sandbox, SandboxConfig, SandboxPolicy, UidLease};

use crate::cli::RunArgs;
use crate::output::{self, OutputError, note, outln};

/// Exit code when the program, script or runtime does not exist (timeout(1), env(1)).
const EXIT_NOT_FOUND: u8 = 127;
/// Exit code when it exists but cannot be executed (timeout(1), env(1)).
const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The signals `run` stops on (Linux numbers, as everywhere tsbridge runs).
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

pub async fn main(args: RunArgs) -> Result<ExitCode> {
    tsbridge_process::init_supervisor().context("cannot set up process supervision")?;
    // TMPDIRs of jobs of a tsbridge that died (as `serve` does).
    crate::cmd_serve::sweep_stale_tmpdirs();
    let control = ProcessControl::new();
    spawn_signal_forwarder(control.clone());

    let (target, job_args) = args
        .command
        .split_first()
        .context("nothing to run: give a script or program")?;
    let runtime = match args.runtime.as_deref() {
        None => None,
        Some(r) => Some(RuntimeKind::parse(r).with_context(|| {
            format!("unknown runtime {r:?}: expected tsx, ts-node, ts-node-check, node or exec")
        })?),
    };
    let script = match locate(Path::new(target), runtime) {
        Ok(s) => s,
        Err(e) => return not_started(&e, EXIT_NOT_FOUND, args.json),
    };
    let cwd = match &args.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };

    // The child's environment: the allowlist, --pass-env names, then --env.
    let host: BTreeMap<String, String> = std::env::vars().collect();
    let mut allow: Vec<&str> = tsbridge_sandbox::env::BASE_ALLOWLIST.to_vec();
    allow.extend(args.pass_env.iter().map(String::as_str));
    let extra: BTreeMap<String, String> = args.env.iter().cloned().collect();
    let env = tsbridge_sandbox::env::build_child_env(&allow, host.iter(), &extra);
    // Secrets of tsbridge's own environment and of --env are masked in all output.
    let mut secret_sources = host.clone();
    secret_sources.extend(extra.clone());
    let masker = Arc::new(Masker::from_env(&secret_sources, &[]));

    let search = RuntimeSearch {
        extra_node_modules: fallback_node_modules(&cwd),
        ..RuntimeSearch::default()
    };
    // The transpile cache is this user's (0700): a job run as another user
    // starts from a copy of its bundle in a folder of that user's, as a
    // server's job does (removed when `run` ends).
    let cache = TranspileCache::new(None).ok();
    if args.user.is_some()
        && let Some(why) = tsbridge_sandbox::user::switch_refusal()
    {
        anyhow::bail!("--user: {why}; the job was not started");
    }
    // `--user dynamic`: the uid is leased (and reserved for the host) for
    // the whole run. Declared before the sandbox, the bundle folder and the
    // job, so it is dropped after them: the uid goes back once the job's
    // tree, cgroup and TMPDIR are gone.
    let (user, lease) = job_user(args.user)?;
    // The folder (the job's user's) that holds the copy of a cached bundle
    // for `--user`; named as the engine names a TMPDIR of this process, so
    // the death watchdog removes it too.
    let bundle_dir = match user {
        Some(u) => Some(
            PrivateDir::create(
                &std::env::temp_dir(),
                &format!("run-{}-bundle", std::process::id()),
                Some(u),
                "the bundle folder",
            )
            .context("cannot make a folder for the job's user")?,
        ),
        None => None,
    };
    let for_user = bundle_dir
        .as_ref()
        .zip(user)
        .map(|(d, u)| (d.path(), (u.uid, u.gid)));
    let resolved = resolve_for_user(script.clone(), runtime, &search, cache, for_user).await;
    let inv = match resolved {
        Ok(inv) => inv,
        Err(e) => {
            let code = resolve_failure_code(&e);
            return not_started(&e, code, args.json);
        }
    };
    tracing::debug!(program = %inv.program.display(), via = ?inv.via, "resolved");
    // Node cannot start below this many tasks: it would abort or hang, and
    // `run` has no timeout unless one is given (node_pids.rs).
    if let Some(pids) = args.pids
        && (inv.runtime.is_node() || node_pids::runs_node(&inv.program))
        && let Some(why) = node_pids::node_pids_too_low(pids)
    {
        anyhow::bail!("--pids {why}; the job was not started");
    }

    let sandbox = sandbox_for(&args, user, &script, &search.node)?;
    let policy = RetryPolicy {
        attempts: args.retries.saturating_add(1),
        ..RetryPolicy::default()
    };

    let ui = Ui::new(args.json);
    // A piped or redirected stdin is the job's, as under timeout(1); a
    // terminal is not (a background `run` reading it would be stopped by
    // SIGTTIN). It can be read once: a retry gets /dev/null.
    let mut forward_stdin = !std::io::stdin().is_terminal();
    let mut attempt = 1u32;
    let outcome = loop {
        let stdin = if std::mem::take(&mut forward_stdin) {
            StdinSpec::Pipe
        } else {
            StdinSpec::Null
        };
        let key = JobKey::generate();
        // A dynamic uid's TMPDIR is made here, before the sandbox is
        // prepared: its Landlock layer names it (the job creates nothing
        // elsewhere, nothing a later holder of the uid would find).
        // Removed when the attempt is over, before the uid goes back.
        let own_tmp = match (&lease, user) {
            (Some(_), Some(u)) => Some(
                PrivateDir::create(
                    &std::env::temp_dir(),
                    key.as_str(),
                    Some(u),
                    "the job's TMPDIR",
                )
                .context("cannot make the job's TMPDIR")?,
            ),
            _ => None,
        };
        let mut job_env = merge(&env, &inv.env);
        if let Some(t) = &own_tmp {
            let dir = t.path().display().to_string();
            for k in ["TMPDIR", "TMP", "TEMP"] {
                job_env.insert(k.to_owned(), dir.clone());
            }
        }
        let mut b = inv
            .builder()
            .stdin(stdin)
            .args(job_args.iter().cloned())
            .cwd(&cwd)
            .envs(job_env)
            .timeout(args.timeout.map(|t| t.0))
            .kill_grace(args.kill_grace.0)
            .max_output(usize::try_from(args.max_output.0).unwrap_or(usize::MAX))
            .ipc(inv.runtime.is_node() && !args.no_ipc)
            .output(args.stdio)
            .masker(masker.clone())
            .key(key)
            .private_tmp(own_tmp.is_none().then(std::env::temp_dir))
            .control(control.clone())
            .memory_limit(args.memory.map(|m| m.0));
        if let Some(RunSandbox {
            sandbox: sb,
            policy,
        }) = &sandbox
        {
            let mut policy = policy.clone();
            policy.dynamic_tmpdir = own_tmp.as_ref().map(|t| t.path().to_path_buf());
            let prepared = sb
                .prepare(&format!("run-{}-{attempt}", std::process::id()), &policy)
                .context("cannot prepare the sandbox")?;
            b = b.sandbox(Some(SandboxAttachment {
                prepared: Arc::new(prepared),
                policy: Arc::new(policy),
            }));
        }
        let spec = b.build().map_err(anyhow::Error::from)?;
        let result = match spawn(spec).await {
            Ok(mut running) => {
                if let Some(pipe) = running.take_stdin() {
                    forward_own_stdin(pipe);
                }
                let events = running.take_events();
                let printer = events.map(|rx| tokio::spawn(ui.clone().print_events(rx)));
                let outcome = running.wait().await;
                if let Some(p) = printer {
                    let _ = p.await;
                }
                Ok(outcome)
            }
            Err(e) => Err(e),
        };
        let error = match &result {
            Ok(o) => JobError::from_outcome(o),
            Err(e) => Some(JobError::Spawn(e.duplicate())),
        };
        match error {
            Some(err) if !control.is_stopped() && policy.should_retry(&err, attempt) => {
                let delay = policy.delay_for(attempt);
                ui.line(&format!(
                    "attempt {attempt} failed ({err}); retrying in {delay:?}"
                ));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = control.stopped() => break result,
                }
                attempt += 1;
            }
            _ => break result,
        }
    };
    ui.finish();

    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let Some(code) = spawn_failure_code(&e) else {
                // tsbridge's own failure (IPC channel, TMPDIR, pipes), not the program's.
                return Err(anyhow::Error::from(e)
                    .context(format!("cannot start {}", inv.program.display())));
            };
            return not_started(&anyhow::Error::from(e), code, args.json);
        }
    };
    if !args.json {
        if outcome.stdout.truncated() || outcome.stderr.truncated() {
            ui.line(&format!(
                "output truncated: {} bytes of stdout and {} of stderr dropped (--max-output)",
                outcome.stdout.dropped, outcome.stderr.dropped
            ));
        }
        if let Some(err) = JobError::from_outcome(&outcome) {
            ui.line(&format!("tsbridge: {err}"));
        }
    }
    let printed = if args.json {
        serde_json::to_string_pretty(&outcome_json(&outcome, attempt, &masker))
            .map(Some)
            .context("cannot serialize the outcome")?
    } else if let Some(r) = &outcome.result {
        Some(r.to_string())
    } else {
        outcome.success().then(|| "null".to_owned())
    };
    if let Some(text) = printed {
        print_result(&text)?;
    }
    Ok(ExitCode::from(exit_code(&outcome)))
}

/// Copies tsbridge's stdin into the child's on a thread of its own, which
/// blocks on reads (tokio's stdin would hold up the runtime's shutdown on a
/// stdin that never ends) and dies with the process. A child that stops
/// reading ends the copy (EPIPE).
fn forward_own_stdin(pipe: tokio::process::ChildStdin) {
    let Ok(fd) = pipe.into_owned_fd() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("run-stdin".into())
        .spawn(move || {
            let mut to_child = std::fs::File::from(fd);
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_child);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot forward stdin: the job's stdin is empty");
    }
}

/// The one line (or JSON document) of stdout. A reader that went away is no
/// failure of the job's: the exit code stays the child's.
fn print_result(text: &str) -> Result<()> {
    match outln!("{text}").and_then(|()| output::flush()) {
        Ok(()) | Err(OutputError::Closed(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The job never started: says why on stderr (and on stdout with `--json`),
/// exits `code`.
fn not_started(e: &dyn std::fmt::Display, code: u8, json: bool) -> Result<ExitCode> {
    note!("tsbridge: {e:#}");
    if json {
        let doc = json!({"success": false, "reason": "spawn_failure", "error": format!("{e:#}")});
        print_result(&doc.to_string())?;
    }
    Ok(ExitCode::from(code))
}

/// 127 for a script or runtime that is not there, 126 for one that cannot be
/// read; `check` and the server name the same failures `ResolveError`s.
fn resolve_failure_code(e: &ResolveError) -> u8 {
    match e {
        ResolveError::ScriptMissing { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            EXIT_CANNOT_EXECUTE
        }
        ResolveError::ScriptMissing { .. }
        | ResolveError::RuntimeNotFound { .. }
        | ResolveError::NodeNotFound { .. } => EXIT_NOT_FOUND,
    }
}

/// The exit code of a child that could not be executed (the exec itself, or
/// the setup between fork and exec, failed): 127 when the program or its
/// interpreter (`#!`) does not exist (ENOENT, ENOTDIR), 126 for anything else
/// that stopped an existing program from running (EACCES, ENOEXEC, EISDIR,
/// E2BIG, ...), as timeout(1) does. `None` for a failure of tsbridge's own
/// before or after the fork.
fn spawn_failure_code(e: &SpawnError) -> Option<u8> {
    use std::io::ErrorKind;
    match e.stage {
        SpawnStage::Exec => Some(match e.kind {
            ErrorKind::NotFound | ErrorKind::NotADirectory => EXIT_NOT_FOUND,
            _ => EXIT_CANNOT_EXECUTE,
        }),
        SpawnStage::Prepare | SpawnStage::Wire | SpawnStage::SpawnerGone => None,
    }
}

/// The exit code that mirrors the child: its code, 124 on timeout, 128+N on
/// signal N (137 for a kill by a limit). When `tsbridge run` itself was
/// interrupted, 128 + the signal it received, as a shell reports a program
/// ended by Ctrl-C: 130 for SIGINT (the job was cancelled), 143 for SIGTERM
/// (shut down), whatever the child did on the SIGTERM tsbridge sent it (died
/// of it: 143; exited 0 after cleaning up: still not a success).
fn exit_code(o: &Outcome) -> u8 {
    let code = match o.reason {
        EndReason::Timeout => 124,
        EndReason::Cancelled => 128 + SIGINT,
        EndReason::Shutdown => 128 + SIGTERM,
        _ => match o.exit {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
        },
    };
    u8::try_from(code.clamp(0, 255)).unwrap_or(1)
}

fn outcome_json(o: &Outcome, attempts: u32, masker: &Masker) -> serde_json::Value {
    json!({
        "success": o.success(),
        "reason": o.reason,
        "exitCode": o.exit.code(),
        "signal": o.exit.signal(),
        "processId": o.pid,
        "attempts": attempts,
        "result": o.result,
        "resources": {
            "wallTimeMs": o.wall.as_millis() as u64,
            "cpuTimeMs": o.cpu.as_millis() as u64,
            "peakMemoryBytes": o.peak_rss,
            "samples": o.samples,
        },
        "output": {
            "stdout": masker.mask_captured(&o.stdout),
            "stderr": masker.mask_captured(&o.stderr),
            "stdoutTruncated": o.stdout.truncated(),
            "stderrTruncated": o.stderr.truncated(),
            "stdoutDroppedBytes": o.stdout.dropped,
            "stderrDroppedBytes": o.stderr.dropped,
        },
        "eventsDropped": o.events_dropped,
    })
}

fn merge(env: &BTreeMap<String, String>, more: &[(String, String)]) -> BTreeMap<String, String> {
    let mut e = env.clone();
    e.extend(more.iter().cloned());
    e
}

/// The script or program to run does not exist.
#[derive(Debug)]
struct NotFound {
    target: PathBuf,
    /// Whether PATH was searched too (a bare name).
    searched_path: bool,
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} not found", self.target.display())?;
        if self.searched_path {
            f.write_str(" (not a file, and not on PATH)")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotFound {}

/// The file to run: a path as given, or (for `exec`) a bare program name
/// looked up on PATH, as a shell would but without a shell.
fn locate(target: &Path, runtime: Option<RuntimeKind>) -> Result<PathBuf, NotFound> {
    if target.exists() {
        return Ok(target.to_path_buf());
    }
    let bare = target.components().count() == 1;
    let searched_path = bare && matches!(runtime, None | Some(RuntimeKind::Exec));
    if searched_path && let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(target);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(NotFound {
        target: target.to_path_buf(),
        searched_path,
    })
}

/// Where `run` looks for tsx, ts-node and esbuild after the `node_modules`
/// folders of the script's own directory and its parents: those of the
/// current directory and its parents (the project `run` is started in, for a
/// script kept elsewhere), `NODE_PATH`'s, and the `node_modules` holding a
/// `tsx` or `ts-node` found on PATH (a global `npm install -g tsx`, nvm's
/// included), in that order.
fn fallback_node_modules(cwd: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cwd
        .ancestors()
        .map(|d| d.join("node_modules"))
        .filter(|nm| nm.is_dir())
        .collect();
    let node_path = std::env::var_os("NODE_PATH").unwrap_or_default();
    dirs.extend(std::env::split_paths(&node_path).filter(|d| d.is_dir()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    for bin_dir in std::env::split_paths(&path) {
        for bin in ["tsx", "ts-node"] {
            let Ok(real) = std::fs::canonicalize(bin_dir.join(bin)) else {
                continue;
            };
            if let Some(nm) = real
                .ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "node_modules"))
            {
                dirs.push(nm.to_path_buf());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The sandbox of a `run` with limits, and the policy of its job. Its
/// parent cgroup (`tsbridge-run-<pid>`) is this run's alone and goes when it
/// is dropped, at every return of `main`: once the job's cgroups are gone
/// (they are when its outcome is in), the parent is removed.
struct RunSandbox {
    sandbox: Sandbox,
    policy: SandboxPolicy,
}

impl Drop for RunSandbox {
    fn drop(&mut self) {
        if !self
            .sandbox
            .wait_job_cgroups_released(Sandbox::JOB_CGROUPS_RELEASE_WAIT)
        {
            tracing::warn!("the job's cgroups are still held: the parent cgroup stays");
        }
        if let Err(e) = self.sandbox.remove_parent() {
            tracing::warn!(error = %e, "cannot remove run's parent cgroup");
        }
    }
}

/// A sandbox when any limit was asked for; its own parent cgroup so it never
/// touches a server's jobs.
/// The job's user for `--user`, with the lease of a `dynamic` one (its
/// range checked free of the system's users and groups first).
fn job_user(
    run_as: Option<tsbridge_sandbox::RunAs>,
) -> Result<(Option<tsbridge_sandbox::JobUser>, Option<UidLease>)> {
    let Some(run_as) = run_as else {
        return Ok((None, None));
    };
    if let tsbridge_sandbox::RunAs::Dynamic(range) = run_as {
        range
            .check_free()
            .map_err(|e| anyhow::anyhow!("--user dynamic: {e}; the job was not started"))?;
    }
    let (user, lease) = run_as
        .for_job()
        .map_err(|e| anyhow::anyhow!("--user {run_as}: {e}; the job was not started"))?;
    Ok((Some(user), lease))
}

fn sandbox_for(
    args: &RunArgs,
    user: Option<tsbridge_sandbox::JobUser>,
    script: &Path,
    node: &Path,
) -> Result<Option<RunSandbox>> {
    let wants_fs = !args.read.is_empty() || !args.write.is_empty();
    if args.memory.is_none()
        && args.cpu.is_none()
        && args.pids.is_none()
        && !args.no_network
        && !args.no_unix_sockets
        && !args.pid_namespace
        && !wants_fs
        && user.is_none()
    {
        return Ok(None);
    }
    let sandbox = Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsbridge-run-{}", std::process::id()),
        ..SandboxConfig::default()
    })
    .context("a limit was asked for but this host cannot sandbox (see `tsbridge check`)")?;
    let fs = wants_fs.then(|| {
        let root = script.parent().unwrap_or(Path::new("/"));
        let mut fs = FsPolicy::for_node(root, node, &std::env::temp_dir());
        fs.read.extend(args.read.iter().cloned());
        fs.write.extend(args.write.iter().cloned());
        fs
    });
    let policy = SandboxPolicy {
        memory: args.memory.map(|m| m.0),
        cpu: args.cpu,
        pids: args.pids,
        network: !args.no_network,
        unix_sockets: args.no_unix_sockets.then_some(false),
        pid_namespace: args.pid_namespace,
        fs,
        user,
        ..SandboxPolicy::default()
    };
    // Owned by the guard first: a refusal below removes the parent cgroup
    // `Sandbox::new` made, as the end of a run does.
    let run = RunSandbox { sandbox, policy };
    let shortfalls = run.sandbox.predict(&run.policy).shortfalls();
    if !shortfalls.is_empty() && !args.degraded {
        let list: Vec<String> = shortfalls
            .iter()
            .map(|(mech, grade)| format!("{mech} ({grade})"))
            .collect();
        anyhow::bail!(
            "this host cannot enforce the limits asked for: {}; the job was not started \
             (`--degraded` runs it with them as best effort; `tsbridge check` shows what \
             this host enforces)",
            list.join(", ")
        );
    }
    for (mech, grade) in shortfalls {
        tracing::warn!(mechanism = mech, %grade, "not fully enforced on this host (--degraded)");
    }
    Ok(Some(run))
}

/// SIGINT cancels the job (exit 130 like a shell), SIGTERM stops it as a shutdown.
fn spawn_signal_forwarder(control: ProcessControl) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => control.stop(StopReason::Cancelled, None),
            _ = term.recv() => control.stop(StopReason::Shutdown, None),
        }
    });
}

/// Where events go: a progress bar on a terminal, plain lines otherwise.
#[derive(Clone)]
struct Ui {
    bar: Option<ProgressBar>,
}

impl Ui {
    fn new(json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar }
    }

    /// A line on stderr; when stderr is gone the job goes on (nothing to tell).
    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => note!("{s}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    async fn print_events(self, mut rx: mpsc::Receiver<ChildEvent>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                ChildEvent::Progress(p) => match &self.bar {
                    Some(b) => {
                        b.set_length(p.total);
                        b.set_position(p.current);
                        b.set_message(p.message);
                    }
                    None => note!("PROGRESS: {}/{} - {}", p.current, p.total, p.message),
                },
                ChildEvent::Log { level, message, .. } => self.line(&format!(
                    "{}: {message}",
                    level.as_str().to_ascii_uppercase()
                )),
                ChildEvent::Output {
                    stream: Stream::Stdout | Stream::Stderr,
                    line,
                } => self.line(&line),
                ChildEvent::Result { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_programs_on_path_without_a_shell() {
        assert!(locate(Path::new("sh"), None).is_ok());
        assert!(locate(Path::new("definitely-not-a-program-xyz"), None).is_err());
        assert!(locate(Path::new("./missing.ts"), None).is_err());
    }
}
