//! `tsbridge check`: validates a config (every error with its key and line)
//! and reports which isolation mechanisms this host provides, and what each
//! workflow's limits would get here. The config is found as `serve` finds it:
//! `--config`, else `TSBRIDGE_CONFIG`, else `./tsbridge.toml`; only when none
//! of them names a file does `check` report the host alone (and says so).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;
use tsbridge_runtime::config::{Mode, WorkflowConfig};
use tsbridge_runtime::spawn::SpawnExecutor;
use tsbridge_runtime::{Config, ConfigError, Executor};
use tsbridge_sandbox::{Capabilities, Sandbox, SandboxConfig, SandboxError, paths};

use crate::cli::CheckArgs;
use crate::output::{OutputError, errln, out, outln};

/// The config `serve` reads when given none.
const DEFAULT_CONFIG: &str = "tsbridge.toml";

/// Why no config was checked, as reported.
const NO_CONFIG: &str = "no --config, TSBRIDGE_CONFIG unset and no ./tsbridge.toml";

/// The config to check: the one given (which must then exist), else the
/// default when anything is there (a dangling link or an unreadable file is an
/// error to report, not an absent config).
fn config_path(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = Path::new(DEFAULT_CONFIG);
            p.symlink_metadata().is_ok().then(|| p.to_path_buf())
        }
    }
}

pub async fn main(args: CheckArgs) -> Result<ExitCode> {
    // A private parent cgroup: `check` must never sweep a running server's jobs.
    let sandbox = Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsbridge-check-{}", std::process::id()),
        ..SandboxConfig::default()
    })
    .map(Arc::new);
    let caps = sandbox.as_ref().ok().map(|s| s.capabilities().clone());
    if let Ok(s) = &sandbox {
        // Best effort: the parent dir is empty, it was made for this probe.
        let _ = s.remove_parent();
    }

    let path = config_path(args.config.as_deref());
    let config = path.as_deref().map(Config::load);
    let shown = path
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();

    // The verdict does not depend on anyone reading it: `check | head -1`
    // with a broken config still exits non-zero.
    let valid = !matches!(config, Some(Err(_)));
    let executor = SpawnExecutor::new(sandbox.as_ref().ok().cloned(), None);
    let host = Host {
        sandbox: &sandbox,
        caps: caps.as_ref(),
        executor: &executor,
    };
    match report(&args, &host, config.as_ref(), &shown) {
        Ok(()) => {}
        Err(e) if OutputError::is_closed(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// What `check` says about a workflow whose path parameters Landlock will
/// guard by default (spawn mode, no `limits.read`/`limits.write`, a host
/// with Landlock): the job may read its root and the checked paths, and
/// write only its TMPDIR, so one that writes an output path fails at run
/// time with EACCES unless the config lists where it writes.
fn path_params_note(
    w: &tsbridge_runtime::config::WorkflowConfig,
    caps: &Capabilities,
) -> Option<String> {
    let guarded = w.mode == tsbridge_runtime::config::Mode::Spawn
        && !w.path_params.is_empty()
        && w.limits.read.is_empty()
        && w.limits.write.is_empty()
        && caps.landlock.is_available();
    guarded.then(|| {
        format!(
            "path parameters ({}) are read-only under Landlock here: list the folders the workflow writes in limits.write",
            w.path_params.join(", ")
        )
    })
}

/// What this host offers, as `serve` would see it.
struct Host<'a> {
    sandbox: &'a Result<Arc<Sandbox>, SandboxError>,
    caps: Option<&'a Capabilities>,
    /// Decides, as `serve` does at start, whether a workflow can run here.
    executor: &'a SpawnExecutor,
}

impl Host<'_> {
    /// Why `serve` would make this workflow unavailable here (503): its
    /// runtime or script not found, limits this host cannot enforce. The
    /// config is valid either way; `serve` starts and says the same.
    fn unavailable(&self, w: &WorkflowConfig) -> Option<String> {
        self.executor.check(w).err()
    }
}

/// The store's files that lie inside a workflow's root or its `read` or
/// `write` lists, which that workflow's jobs can open: the SQLite file
/// (every job's parameters, results and output) and the key that seals
/// request env. One note per workflow and file.
fn store_exposure_notes(c: &Config) -> Vec<String> {
    let files = store_files(c);
    let mut notes = Vec::new();
    for (name, w) in &c.workflows {
        let readable = std::iter::once(&w.root)
            .chain(&w.limits.read)
            .chain(&w.limits.write);
        for (what, file) in &files {
            // The files may not exist yet: `confine` resolves the deepest
            // existing ancestor (`..`, symlinks), as for path parameters.
            let inside = readable
                .clone()
                .find_map(|d| paths::confine(d, file).ok().map(|f| (d, f)));
            if let Some((dir, file)) = inside {
                notes.push(format!(
                    "{what} ({}) is inside {} of workflow {name}, which its jobs can read: move store.url (and store.key_file) outside every workflow's root and lists",
                    file.display(),
                    dir.display()
                ));
            }
        }
    }
    notes
}

/// The store's SQLite file, and the key that seals request env (absolute
/// paths; none for an in-memory or PostgreSQL store).
fn store_files(c: &Config) -> Vec<(&'static str, PathBuf)> {
    let Some(db) = c.store.url.strip_prefix("sqlite://").map(PathBuf::from) else {
        return Vec::new();
    };
    if !db.is_absolute() {
        return Vec::new(); // sqlite::memory:
    }
    let key = c.store.key_file.clone().unwrap_or_else(|| {
        let mut k = db.clone().into_os_string();
        k.push(".key");
        PathBuf::from(k)
    });
    vec![("the store", db), ("its key file", key)]
}

/// What the users of jobs change (SPEC §5): a root tsbridge whose
/// workflows name no `user` runs their jobs as root (one line for all of
/// them); a workflow's user that cannot read its root, search the TMPDIR
/// base or write a `limits.write` folder (tsbridge changes no operator
/// folder: the operator grants it), or that can read the store's files or
/// a config holding literal tokens. Judged by mode bits, as the job will run (uid, gid, no supplementary
/// groups).
fn user_notes(c: &Config, euid: u32) -> Vec<String> {
    let mut notes = Vec::new();
    let as_root: Vec<&str> = c
        .workflows
        .iter()
        .filter(|(_, w)| w.user.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if euid == 0 && !as_root.is_empty() {
        notes.push(format!(
            "tsbridge runs as root and workflow(s) {} name no user: their jobs run as root \
             (without capabilities); set user (or defaults.user) to an unprivileged user",
            as_root.join(", ")
        ));
    }
    let store = store_files(c);
    // The config file, when it holds literal tokens (found once).
    let secret_config = c
        .server
        .tokens
        .iter()
        .any(|t| matches!(t, tsbridge_runtime::config::TokenSpec::Literal(_)))
        .then(|| {
            c.source
                .as_deref()
                .and_then(|p| std::fs::canonicalize(p).ok())
        })
        .flatten();
    let tmp = std::env::temp_dir();
    for (name, w) in &c.workflows {
        let Some(run_as) = w.user else { continue };
        // A dynamic uid owns nothing of the operator's (its range has no
        // account): only "other" bits give it access.
        let user = run_as.judged_as();
        let mut problems: Vec<String> = [(&w.root, false), (&tmp, false)]
            .into_iter()
            .chain(w.limits.write.iter().map(|d| (d, true)))
            .filter_map(|(p, write)| user.may_use(p, write).err())
            .collect();
        for (what, file) in &store {
            if file.exists() && user.may_use(file, false).is_ok() {
                problems.push(format!(
                    "{what} ({}) is readable by it: keep its folder private to tsbridge",
                    file.display()
                ));
            }
        }
        if let Some(config) = &secret_config
            && user.may_use(config, false).is_ok()
        {
            problems.push(format!(
                "the config ({}) holds literal server.tokens and is readable by it: make it \
                 private to tsbridge (0600) or write the tokens as env:NAME or sha256:HEX",
                config.display()
            ));
        }
        if matches!(run_as, tsbridge_sandbox::RunAs::Dynamic(_)) && !w.limits.write.is_empty() {
            problems.push(
                "what its jobs leave in its limits.write folders belongs to a uid that a later job \
                 (of any dynamic workflow) may get: collect those files, or have the job make them \
                 readable by others only as it should"
                    .to_owned(),
            );
        }
        if !problems.is_empty() {
            notes.push(format!(
                "workflow {name} runs as {run_as}: {}",
                problems.join("; ")
            ));
        }
    }
    notes
}

/// The config-level notes of a valid config.
fn notes(c: &Config) -> Vec<String> {
    let mut n = unset_token_vars(c);
    n.extend(store_exposure_notes(c));
    n.extend(user_notes(c, tsbridge_sandbox::user::effective_uid()));
    // Unreadable: said as if not hidden (the cautious reading).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    n.extend(command_line_notes(c, proc_hides_pids(&mountinfo)));
    n.extend(missing_path_notes(c));
    n
}

/// A note per `limits.read`/`limits.write` path of a workflow that does not
/// exist now: Landlock can only grant a path that exists, so its jobs get
/// no access there (nothing is created for them) until it does. A typo, or
/// a folder made later (the grant is made at each job's start); a note,
/// not an error.
fn missing_path_notes(c: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    for (name, w) in &c.workflows {
        for (key, paths) in [("read", &w.limits.read), ("write", &w.limits.write)] {
            for p in paths {
                if std::fs::symlink_metadata(p).is_err() {
                    notes.push(format!(
                        "workflow {name}: limits.{key} names {}, which does not exist: its jobs get no \
                         access there until it does (Landlock grants only existing paths)",
                        p.display()
                    ));
                }
            }
        }
    }
    notes
}

/// Whether `/proc` hides other users' processes: the super options of the
/// proc mount at `/proc` (the last one, which is what is seen) in
/// `mountinfo` (`/proc/self/mountinfo`) hold `hidepid=` 1, 2, `noaccess`
/// or `invisible` (0, `off` and `ptraceable` hide nothing from a reader).
fn proc_hides_pids(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let mut fs = fs.split(' ');
            let proc = mount.split(' ').nth(4) == Some("/proc") && fs.next() == Some("proc");
            proc.then(|| fs.nth(1).unwrap_or_default())
        })
        .next_back()
        .is_some_and(|opts| {
            opts.split(',').any(|o| {
                matches!(
                    o,
                    "hidepid=1" | "hidepid=2" | "hidepid=noaccess" | "hidepid=invisible"
                )
            })
        })
}

/// A note per spawn workflow whose `args` (the default template included)
/// put its jobs' parameters on their command line (`{params}`), when
/// `/proc` does not hide processes (`hidden`): every process of the host,
/// of any user, can read a command line in `/proc/<pid>/cmdline`.
fn command_line_notes(c: &Config, hidden: bool) -> Vec<String> {
    if hidden {
        return Vec::new();
    }
    c.workflows
        .iter()
        .filter(|(_, w)| w.mode == Mode::Spawn && w.params_on_command_line())
        .map(|(name, _)| {
            format!(
                "workflow {name} passes its jobs' parameters on their command line ({{params}} in args), \
                 which every process of this host can read (/proc/<pid>/cmdline; /proc is not mounted \
                 with hidepid=): {{paramsFile}} in args passes them in a 0600 file of the job's TMPDIR instead"
            )
        })
        .collect()
}

/// The `env:NAME` tokens whose variable is unset or empty here: the config
/// is valid, but `serve` run with this environment refuses to start.
fn unset_token_vars(c: &Config) -> Vec<String> {
    c.server
        .tokens
        .iter()
        .filter_map(|t| match t {
            tsbridge_runtime::config::TokenSpec::Env(name)
                if std::env::var_os(name).is_none_or(|v| v.is_empty()) =>
            {
                Some(format!(
                    "server.tokens: env:{name} is not set in this environment; `serve` needs it"
                ))
            }
            _ => None,
        })
        .collect()
}

/// A config that cannot be used, with why it cannot be read (`No such
/// file or directory`) when that is the problem: `{e}` alone names only
/// the file.
pub(crate) fn config_error(e: &ConfigError) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Prints the report: JSON on stdout, or text with the config's errors on stderr.
fn report(
    args: &CheckArgs,
    host: &Host<'_>,
    config: Option<&Result<Config, ConfigError>>,
    shown: &str,
) -> Result<()> {
    let (sandbox, caps) = (host.sandbox, host.caps);
    if args.json {
        let mut out = json!({ "isolation": caps });
        if let Err(e) = sandbox {
            out["isolation_error"] = json!(e.to_string());
        }
        match config {
            None => out["config"] = json!({ "checked": false, "reason": NO_CONFIG }),
            Some(Ok(c)) => {
                let mut wf = serde_json::Map::new();
                for (name, w) in &c.workflows {
                    let report = caps.map(|caps| {
                        caps.predict(&tsbridge_runtime::spawn::policy_for(
                            w,
                            std::path::Path::new("/tmp"),
                        ))
                    });
                    let note = caps.and_then(|caps| path_params_note(w, caps));
                    wf.insert(name.clone(), json!({ "mode": w.mode.as_str(), "runtime": w.runtime.as_str(), "user": w.user.map(|u| u.to_string()), "isolation": report, "note": note, "unavailable": host.unavailable(w) }));
                }
                out["config"] = json!({ "checked": true, "path": shown, "valid": true, "workflows": wf, "notes": notes(c) });
            }
            Some(Err(e)) => {
                let issues: Vec<_> = e
                    .issues()
                    .iter()
                    .map(|i| json!({"key": i.key, "line": i.line, "message": i.message}))
                    .collect();
                out["config"] = json!({ "checked": true, "path": shown, "valid": false, "error": config_error(e), "issues": issues });
            }
        }
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        // Built first, written once: the config's errors reach stderr even
        // when stdout's reader is gone.
        let mut text = String::new();
        text_report(&mut text, host, config, shown)?;
        let printed = out!("{text}");
        if let Some(Err(e)) = config {
            errln!("{}", config_error(e))?;
        }
        printed?;
    }
    Ok(())
}

/// The text report (stdout's part: the config's errors go to stderr).
fn text_report(
    text: &mut String,
    host: &Host<'_>,
    config: Option<&Result<Config, ConfigError>>,
    shown: &str,
) -> std::fmt::Result {
    use std::fmt::Write;
    let (sandbox, caps) = (host.sandbox, host.caps);
    writeln!(text, "Isolation on this host")?;
    match (caps, sandbox) {
        (Some(c), _) => writeln!(text, "{c}")?,
        (None, Err(e)) => writeln!(text, "  unavailable: {e}")?,
        (None, Ok(_)) => {}
    }
    match config {
        None => writeln!(text, "Config: none checked ({NO_CONFIG})")?,
        Some(Ok(c)) => {
            writeln!(
                text,
                "Config {shown}: valid, {} workflow(s)",
                c.workflows.len()
            )?;
            for note in notes(c) {
                writeln!(text, "  note: {note}")?;
            }
            for (name, w) in &c.workflows {
                let user = w.user.map(|u| format!(", runs as {u}")).unwrap_or_default();
                writeln!(
                    text,
                    "  {name}: {} mode, runtime {}{user}",
                    w.mode.as_str(),
                    w.runtime.as_str()
                )?;
                if let Some(caps) = caps {
                    let report = caps.predict(&tsbridge_runtime::spawn::policy_for(
                        w,
                        std::path::Path::new("/tmp"),
                    ));
                    for (mech, e) in report.shortfalls() {
                        let degraded = if w.limits.degraded {
                            " (degraded mode allowed)"
                        } else {
                            " (workflow will be unavailable)"
                        };
                        writeln!(text, "    {mech}: {e:?}{degraded}")?;
                    }
                    if let Some(note) = path_params_note(w, caps) {
                        writeln!(text, "    note: {note}")?;
                    }
                }
                if let Some(why) = host.unavailable(w) {
                    writeln!(text, "    unavailable here: {why}")?;
                }
            }
        }
        Some(Err(_)) => writeln!(text, "Config {shown}: invalid")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::proc_hides_pids;

    const PLAIN: &str = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                         27 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n";

    /// Read from the proc mount at /proc alone, the last one winning; 0,
    /// off and ptraceable hide nothing.
    #[test]
    fn hidepid_is_read_from_the_proc_mount_at_proc() {
        assert!(!proc_hides_pids(PLAIN));
        assert!(!proc_hides_pids(""));
        for (opts, hidden) in [
            ("rw,hidepid=2", true),
            ("rw,hidepid=1,gid=4", true),
            ("rw,hidepid=invisible", true),
            ("rw,hidepid=noaccess", true),
            ("rw,hidepid=0", false),
            ("rw,hidepid=off", false),
            ("rw,hidepid=ptraceable", false),
        ] {
            let later = format!("{PLAIN}40 27 0:50 / /proc rw,nosuid - proc proc {opts}\n");
            assert_eq!(proc_hides_pids(&later), hidden, "{opts}");
            // Another proc mount elsewhere says nothing about /proc.
            let elsewhere = format!("{PLAIN}41 27 0:51 / /mnt/p rw - proc proc {opts}\n");
            assert!(!proc_hides_pids(&elsewhere), "{opts}");
        }
        // A hidepid mount that a later plain one covers is not what is seen.
        let covered = format!("40 27 0:50 / /proc rw - proc proc rw,hidepid=2\n{PLAIN}");
        assert!(!proc_hides_pids(&covered));
    }
}
