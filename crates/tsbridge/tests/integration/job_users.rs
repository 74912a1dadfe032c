//! Jobs with their own user from the CLI (SPEC §5, issue #5), on a root
//! tsbridge. `check` says which workflows run their jobs as root (no
//! `user`), and for a workflow with a user: a `limits.write` folder it
//! cannot write (tsbridge changes no operator folder), a store it can read
//! and a config with literal tokens it can read; once the operator fixed
//! them, only the first note stays.
//! `run --user` runs the program as that user (its TMPDIR given to it), and
//! an unknown user is a usage error. None of this existed before.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::common::tsbridge;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn notes(dir: &Path) -> Vec<String> {
    let out = tsbridge(dir, &["check", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "notes, not errors: {stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
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
    v["config"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn check_notes_root_jobs_and_what_a_workflows_user_cannot_write_or_can_read() {
    if !is_root() {
        eprintln!("SKIP: needs root (a user is refused where tsbridge cannot switch)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    mode(dir.path(), 0o755);
    let app = dir.path().join("app");
    let out = dir.path().join("out");
    let state = dir.path().join("state");
    for d in [&app, &out, &state] {
        std::fs::create_dir(d).unwrap();
        mode(d, 0o755);
    }
    std::fs::write(app.join("job.js"), "console.log('RESULT: {}')\n").unwrap();
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
