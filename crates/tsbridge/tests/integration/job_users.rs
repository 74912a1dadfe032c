//! Jobs with their own user from the CLI (SPEC §5, issue #5), on a root
//! tsbridge. `check` says which workflows run their jobs as root (no
//! `user`), and for a workflow with a user: a `limits.write` folder it
//! cannot write (tsbridge changes no operator folder), a store it can read
//! and a config with literal tokens it can read; once the operator fixed
//! them, only the first note stays.
//! `run --user` runs the program as that user (its TMPDIR given to it), and
//! an unknown user is a usage error, and starts a TypeScript file from the
//! transpile cache. `check` judges a `dynamic` workflow by "other" bits and
//! names a `self` one among those that run as root. None of this existed
//! before.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::tsbridge;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A path removed (if there) when dropped: a failed test leaves nothing.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// `check --json` of the config in `dir` (valid: notes, not errors), and
/// its notes.
fn check(dir: &Path) -> (Value, Vec<String>) {
    let out = tsbridge(dir, &["check", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "notes, not errors: {stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    // Those about parameters on the command line are cli.rs's.
    let notes = v["config"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .filter(|n| !n.contains("on their command line"))
        .collect();
    (v, notes)
}

fn notes(dir: &Path) -> Vec<String> {
    let (v, notes) = check(dir);
    // Each workflow says whom its jobs run as.
    assert_eq!(
        v["config"]["workflows"]["plain"]["user"],
        Value::Null,
        "{v}"
    );
    let nobody = tsbridge_sandbox::JobUser::resolve("nobody").unwrap();
    assert_eq!(
        v["config"]["workflows"]["own"]["user"],
        nobody.to_string(),
        "{v}"
    );
    notes
}

/// Root (else `None`, said): a folder (0755) with `app/job.js` and an
/// empty `out` (0755, root's); returns it and `out`.
fn app_and_out() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !is_root() {
        eprintln!("SKIP: needs root (a user is refused where tsbridge cannot switch)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    mode(dir.path(), 0o755);
    let app = dir.path().join("app");
    let out = dir.path().join("out");
    for d in [&app, &out] {
        std::fs::create_dir(d).unwrap();
        mode(d, 0o755);
    }
    std::fs::write(app.join("job.js"), "console.log('RESULT: {}')\n").unwrap();
    Some((dir, out))
}

#[test]
fn check_notes_root_jobs_and_what_a_workflows_user_cannot_write_or_can_read() {
    let Some((dir, out)) = app_and_out() else {
        return;
    };
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    mode(&state, 0o755);
    // The store (outside the workflows' root) as `serve` leaves it: SQLite makes its files 0644.
    std::fs::write(state.join("jobs.db"), "").unwrap();
    mode(&state.join("jobs.db"), 0o644);
    std::fs::write(
        dir.path().join("tsbridge.toml"),
        format!(
            "[server]\ntokens = [\"a-literal-token\"]\n\n\
             [store]\nurl = \"sqlite://state/jobs.db\"\n\n\
             [workflows.plain]\nroot = \"app\"\nscript = \"job.js\"\n\n\
             [workflows.own]\nroot = \"app\"\nscript = \"job.js\"\nuser = \"nobody\"\n\
             limits = {{ write = [\"{}\"] }}\n",
            out.display()
        ),
    )
    .unwrap();

    let n = notes(dir.path());
    let about = |needle: &str| n.iter().any(|x| x.contains(needle));
    assert!(
        about("tsbridge runs as root and workflow(s) plain name no user"),
        "{n:?}"
    );
    assert!(
        about(&format!("{} is not writable by", out.display())),
        "{n:?}"
    );
    assert!(about("the store ("), "{n:?}");
    assert!(
        about("holds literal server.tokens and is readable by it"),
        "{n:?}"
    );
    assert!(
        n.iter()
            .all(|x| !x.contains("workflow(s) own") && !x.contains("own,")),
        "a workflow with a user is not one that runs as root: {n:?}"
    );

    // The operator gives the folder to the user and keeps the store's private.
    let nobody = tsbridge_sandbox::JobUser::resolve("nobody").unwrap();
    std::os::unix::fs::chown(&out, Some(nobody.uid), Some(nobody.gid)).unwrap();
    mode(&state, 0o700);
    mode(&dir.path().join("tsbridge.toml"), 0o600);
    let n = notes(dir.path());
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(n[0].contains("workflow(s) plain name no user"), "{n:?}");
}

#[test]
fn run_user_runs_the_program_as_that_user_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    let r = tsbridge(dir.path(), &["run", "--user", "no-such-user-tsb", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("no-such-user-tsb"), "{stderr}");

    if !is_root() {
        eprintln!("SKIP (the rest): needs root, to run a job as another user");
        return;
    }
    mode(dir.path(), 0o755);
    let script = dir.path().join("whoami.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho probe > \"$TMPDIR/probe\" && echo \"ids $(id -u) $(id -g) $(id -G)\"\n",
    )
    .unwrap();
    mode(&script, 0o755);
    let r = tsbridge(
        dir.path(),
        &["run", "--user", "1500:1501", script.to_str().unwrap()],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stdout}\n{stderr}");
    // The job's lines go to stderr (stdout has its result). `id -G` lists
    // the gid alone: no supplementary group.
    assert!(
        stderr.contains("ids 1500 1501 1501\n"),
        "{stdout}\n{stderr}"
    );
}

/// `run --user dynamic` runs the program as a uid of systemd's dynamic
/// range that no account has, gid = the same number, no supplementary
/// group, its TMPDIR given to it, nothing created outside it (a file in
/// `/dev/shm` is refused) and an IPC namespace of its own; the uid's
/// host-wide reservation exists and is let go when run ends. Before,
/// `dynamic` was looked up as a user name and refused.
#[test]
fn run_user_dynamic_runs_the_program_as_a_uid_of_its_own() {
    if !is_root() {
        eprintln!("SKIP: needs root, to run a job as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    mode(dir.path(), 0o755);
    let script = dir.path().join("whoami.sh");
    // It also tries to leave a file in /dev/shm, where the next holder of
    // its uid would find it, and says which IPC namespace it is in.
    let shm = format!("/dev/shm/tsb-run-dynamic-{}", std::process::id());
    let _gone = RemoveOnDrop(PathBuf::from(&shm));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo probe > \"$TMPDIR/probe\" && u=$(id -u) && \
             echo \"ids $u $(id -g) $(id -G) tmp $(cat \"$TMPDIR/probe\")\"\n\
             if echo x > {shm}; then echo shm written; else echo shm refused; fi\n\
             echo \"ipc $(readlink /proc/self/ns/ipc)\"\n"
        ),
    )
    .unwrap();
    mode(&script, 0o755);
    let r = tsbridge(
        dir.path(),
        &["run", "--user", "dynamic", script.to_str().unwrap()],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stdout}\n{stderr}");
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("ids ").map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| panic!("no ids line: {stdout}\n{stderr}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let uid: u32 = f[0].parse().unwrap();
    assert!((61184..=65519).contains(&uid), "{line}");
    // gid = uid, `id -G` lists it alone, the TMPDIR was written and read.
    assert_eq!(f[1..], [f[0], f[0], "tmp", "probe"], "{line}");
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .any(|l| l.split(':').nth(2) == Some(f[0])),
        "an account has uid {uid}"
    );
    // A dynamic uid's job creates nothing outside its TMPDIR and has an
    // IPC namespace of its own (nothing of either outlives it).
    assert!(stderr.contains("shm refused"), "{stderr}");
    assert!(!Path::new(&shm).exists(), "{shm} was left");
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    let job_ipc = stderr
        .lines()
        .find_map(|l| l.split_once("ipc ").map(|(_, ns)| ns.trim().to_owned()))
        .unwrap_or_else(|| panic!("no ipc line: {stderr}"));
    assert_ne!(Path::new(&job_ipc), host_ipc, "{stderr}");
    // Reserved while it ran, free once run ended: the lock can be had.
    let lock = Path::new(tsbridge_sandbox::dynamic::DEFAULT_LOCK_DIR).join(f[0]);
    let held = std::fs::File::open(&lock).unwrap_or_else(|e| panic!("{}: {e}", lock.display()));
    held.try_lock()
        .expect("the reservation is let go when run ends");
}

/// `run --user` on a TypeScript file starts from the transpile cache, as a
/// server's job does: node runs a copy of the cached bundle given to the
/// user (no runner's loader in its `execArgv`). Before, such a run skipped
/// the cache and went through tsx.
#[test]
fn run_user_starts_a_typescript_job_from_the_transpile_cache() {
    if !is_root() {
        eprintln!("SKIP: needs root, to run a job as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    mode(dir.path(), 0o755);
    let script = dir.path().join("probe.ts");
    std::fs::write(
        &script,
        "const main: string | null = require.main ? require.main.filename : null;\n\
         console.log('RESULT: ' + JSON.stringify({ uid: process.getuid(), execArgv: process.execArgv, main }));\n",
    )
    .unwrap();
    mode(&script, 0o644);
    let cache = tempfile::tempdir().unwrap();
    let node_modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../node_modules");
    let r = tsbridge(
        dir.path(),
        &["run", "--user", "nobody", script.to_str().unwrap()],
    )
    .env("XDG_CACHE_HOME", cache.path())
    .env("NODE_PATH", &node_modules)
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let nobody = tsbridge_sandbox::JobUser::resolve("nobody").unwrap();
    assert_eq!(v["uid"], nobody.uid, "{v}");
    assert!(
        !v["execArgv"].to_string().contains("tsx"),
        "ran through the runner: {v}"
    );
    let main = v["main"].as_str().unwrap_or_default();
    assert!(
        main.ends_with("tsbridge-bundle.cjs"),
        "not the bundle's copy: {v}"
    );
    // The copy's folder is gone with the run.
    assert!(!Path::new(main).exists(), "{main} is left behind");
}

/// `check` of dynamic and `self` workflows: a dynamic workflow is judged by
/// the "other" bits (a write folder only its owner may write is named) and
/// told that what it leaves in its write folders keeps a uid later jobs
/// get; a `self` workflow under `defaults.user` runs as root, and is named
/// among those.
#[test]
fn check_judges_dynamic_workflows_by_other_bits_and_names_self_ones_as_root() {
    let Some((dir, out)) = app_and_out() else {
        return;
    };
    std::fs::write(
        dir.path().join("tsbridge.toml"),
        format!(
            "[defaults]\nuser = \"nobody\"\ndynamic_uids = \"3920000000-3920000009\"\n\n\
             [workflows.dyn]\nroot = \"app\"\nscript = \"job.js\"\nuser = \"dynamic\"\n\
             limits = {{ write = [\"{}\"] }}\n\n\
             [workflows.mine]\nroot = \"app\"\nscript = \"job.js\"\nuser = \"self\"\n",
            out.display()
        ),
    )
    .unwrap();
    let (v, n) = check(dir.path());
    assert_eq!(
        v["config"]["workflows"]["dyn"]["user"], "a dynamic uid of 3920000000-3920000009",
        "{v}"
    );
    assert_eq!(v["config"]["workflows"]["mine"]["user"], Value::Null, "{v}");
    let about = |n: &[String], needle: &str| n.iter().any(|x| x.contains(needle));
    assert!(about(&n, "workflow(s) mine name no user"), "{n:?}");
    assert!(
        about(&n, &format!("{} is not writable by", out.display())),
        "{n:?}"
    );
    assert!(about(&n, "belongs to a uid that a later job"), "{n:?}");
    // Writable by others (sticky, as /tmp): only the leftovers note stays.
    mode(&out, 0o1777);
    let (_, n) = check(dir.path());
    assert!(!about(&n, "is not writable by"), "{n:?}");
    assert!(about(&n, "belongs to a uid that a later job"), "{n:?}");
}
