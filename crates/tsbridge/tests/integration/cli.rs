//! The CLI as a user drives it (SPEC §6): the built `tsbridge` binary on the
//! repository's fixtures, and for `jobs` a real `tsbridge serve`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::common::{
    ServeCgroups, Server, fixture, fixtures, free_port, tsbridge, write_protocol_config,
};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(out: Output) -> Run {
        let r = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !r.stderr.contains("panicked"),
            "tsbridge panicked:\n{}",
            r.stderr
        );
        r
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(cwd: &Path, args: &[&str]) -> Run {
    Run::of(tsbridge(cwd, args).output().unwrap())
}

/// Runs with stdout (and, if asked, stderr) a pipe whose reader is already
/// gone: every write tsbridge makes there fails with EPIPE, as under `| head`
/// once head has exited.
fn run_into_closed_pipe(cwd: &Path, args: &[&str], close_stderr_too: bool) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = tsbridge(cwd, args);
    if close_stderr_too {
        cmd.stderr(writer.try_clone().unwrap());
    } else {
        cmd.stderr(Stdio::piped());
    }
    cmd.stdout(writer);
    let out = cmd.spawn().unwrap().wait_with_output().unwrap();
    Run::of(out)
}

// ---------------------------------------------------------------- check

const VALID_CONFIG: &str = r#"[server]
bind = "127.0.0.1:8787"

[workflows.exit]
root = "ROOT"
script = "exit-code.sh"
runtime = "exec"
"#;

/// Line 7 names a runtime that does not exist.
const BROKEN_CONFIG: &str = r#"[server]
bind = "127.0.0.1:8787"

[workflows.exit]
root = "ROOT"
script = "exit-code.sh"
runtime = "nodde"
"#;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tsbridge.toml");
    std::fs::write(&path, text.replace("ROOT", fixtures().to_str().unwrap())).unwrap();
    path
}

#[test]
fn check_validates_tsbridge_toml_in_the_current_directory_by_default() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), VALID_CONFIG);
    let r = run(dir.path(), &["check"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout
            .contains("Config tsbridge.toml: valid, 1 workflow(s)"),
        "{r}"
    );

    write_config(dir.path(), BROKEN_CONFIG);
    let r = run(dir.path(), &["check"]);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(r.stdout.contains("Config tsbridge.toml: invalid"), "{r}");
    assert!(r.stderr.contains("line 7"), "{r}");
    assert!(r.stderr.contains("workflows.exit.runtime"), "{r}");

    let r = run(dir.path(), &["check", "--json"]);
    assert_ne!(r.code, Some(0), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["config"]["valid"], false, "{r}");
    let issue = &v["config"]["issues"][0];
    assert_eq!(issue["key"], "workflows.exit.runtime", "{r}");
    assert_eq!(issue["line"], 7, "{r}");
}

/// A spawn workflow with path parameters and no read/write lists: where the
/// host has Landlock, `check` says the paths are read-only (a job writing
/// an output path would fail at run time otherwise unexplained).
#[test]
fn check_notes_path_parameters_that_landlock_makes_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{VALID_CONFIG}path_params = [\"outputPath\"]\n");
    write_config(dir.path(), &config);
    let r = run(dir.path(), &["check", "--json"]);
    assert_eq!(r.code, Some(0), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let grade = &v["isolation"]["landlock"]["grade"];
    let note = &v["config"]["workflows"]["exit"]["note"];
    let text = run(dir.path(), &["check"]);
    if grade.is_null() || grade == "none" {
        assert!(note.is_null(), "no Landlock, no note: {r}");
        return;
    }
    assert!(
        note.as_str()
            .is_some_and(|n| n.contains("outputPath") && n.contains("limits.write")),
        "{r}"
    );
    assert!(
        text.stdout.contains("note: path parameters (outputPath)"),
        "{text}"
    );
    // Listing where it writes removes the note.
    write_config(
        dir.path(),
        &format!("{config}limits = {{ write = [\"out\"] }}\n"),
    );
    let r = run(dir.path(), &["check", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["config"]["workflows"]["exit"]["note"].is_null(), "{r}");
}

/// `check --json` in `dir` (valid: exit 0) and its config-level notes.
fn check_json_notes(dir: &Path) -> (Run, Vec<String>) {
    let r = run(dir, &["check", "--json"]);
    assert_eq!(r.code, Some(0), "a note, not an error: {r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let notes = v["config"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    (r, notes)
}

/// A store (or its key file) inside a workflow's root is readable to that
/// workflow's jobs: `check` says so (JSON `notes` and text), and not for a
/// store kept elsewhere.
#[test]
fn check_notes_a_store_inside_a_workflow_root() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "job.sh", "#!/bin/sh\necho '{}'\n", 0o755);
    let wf = "[workflows.w]\nroot = \".\"\nscript = \"job.sh\"\nruntime = \"exec\"\n";
    std::fs::write(dir.path().join("tsbridge.toml"), wf).unwrap();
    let (r, notes) = check_json_notes(dir.path());
    let notes: Vec<&str> = notes.iter().map(String::as_str).collect();
    let about = |what: &str| {
        notes
            .iter()
            .any(|n| n.starts_with(what) && n.contains("workflow w"))
    };
    assert!(about("the store (") && about("its key file ("), "{r}");
    let text = run(dir.path(), &["check"]);
    assert!(text.stdout.contains("note: the store ("), "{text}");

    // Elsewhere, also through a `..` and a folder that does not exist yet
    // (as the example app's `../../.tsbridge/`).
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    write_script(&app, "job.sh", "#!/bin/sh\necho '{}'\n", 0o755);
    let store = format!("[store]\nurl = \"sqlite://../.state/jobs.db\"\n{wf}");
    std::fs::write(app.join("tsbridge.toml"), store).unwrap();
    let r = run(&app, &["check", "--json"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(!r.stdout.contains("the store ("), "{r}");
}

/// A spawn workflow that passes its parameters on the command line (the
/// default template) is noted where /proc does not hide processes: any
/// process of the host can read them. One with `{paramsFile}`, and a pool
/// workflow (parameters over IPC), are not. A note, not an error.
#[test]
fn check_notes_parameters_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "job.js", "console.log('{}');\n", 0o644);
    write_script(
        dir.path(),
        "handler.mjs",
        "export default async () => ({});\n",
        0o644,
    );
    std::fs::write(
        dir.path().join("tsbridge.toml"),
        "[workflows.inline]\nscript = \"job.js\"\n\n\
         [workflows.filed]\nscript = \"job.js\"\nargs = [\"--params-file\", \"{paramsFile}\"]\n\n\
         [workflows.pooled]\nscript = \"handler.mjs\"\nmode = \"pool\"\n",
    )
    .unwrap();
    let hidden = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/proc"))
        .is_some_and(|l| {
            [
                "hidepid=1",
                "hidepid=2",
                "hidepid=invisible",
                "hidepid=noaccess",
            ]
            .iter()
            .any(|h| l.contains(h))
        });
    let (r, mut notes) = check_json_notes(dir.path());
    notes.retain(|n| n.contains("command line"));
    let text = run(dir.path(), &["check"]);
    if hidden {
        assert!(notes.is_empty(), "/proc hides processes here: {r}");
        return;
    }
    assert_eq!(notes.len(), 1, "{r}");
    assert!(
        notes[0].starts_with("workflow inline passes its jobs' parameters on their command line")
            && notes[0].contains("every process of this host can read")
            && notes[0].contains("{paramsFile}"),
        "{r}"
    );
    assert!(
        text.stdout
            .contains("note: workflow inline passes its jobs' parameters"),
        "{text}"
    );
}

#[test]
fn check_reads_tsbridge_config_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let broken = write_config(elsewhere.path(), BROKEN_CONFIG);
    let r = Run::of(
        tsbridge(dir.path(), &["check"])
            .env("TSBRIDGE_CONFIG", &broken)
            .output()
            .unwrap(),
    );
    assert_ne!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains("line 7"), "{r}");

    // A config that was named must exist.
    let r = run(dir.path(), &["check", "--config", "missing.toml"]);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains("missing.toml"), "{r}");
}

#[test]
fn check_without_any_config_reports_the_host_and_says_nothing_was_checked() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["check"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stdout.contains("Isolation on this host"), "{r}");
    assert!(r.stdout.contains("Config: none checked"), "{r}");

    let r = run(dir.path(), &["check", "--json"]);
    assert_eq!(r.code, Some(0), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["config"]["checked"], false, "{r}");
}

/// A valid config whose workflow `serve` would make unavailable here (503:
/// its runtime is not installed) is valid for `check` too, which says so
/// with serve's own words instead of nothing.
#[test]
fn check_says_which_workflows_serve_would_make_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.ts"), "console.log('{}');\n").unwrap();
    std::fs::write(
        dir.path().join("tsbridge.toml"),
        "[workflows.typed]\nscript = \"job.ts\"\n[workflows.plain]\nscript = \"job.ts\"\nruntime = \"node\"\n",
    )
    .unwrap();
    let r = run(dir.path(), &["check"]);
    assert_eq!(r.code, Some(0), "{r}");
    let unavailable: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("unavailable here"))
        .collect();
    assert_eq!(unavailable.len(), 1, "{r}");
    assert!(unavailable[0].contains("tsx is not installed"), "{r}");

    let r = run(dir.path(), &["check", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let wf = &v["config"]["workflows"];
    assert!(
        wf["typed"]["unavailable"]
            .as_str()
            .is_some_and(|w| w.contains("tsx")),
        "{r}"
    );
    assert!(wf["plain"]["unavailable"].is_null(), "{r}");
}

/// A config file that cannot be read: `check` and `serve` say why (the
/// OS's reason), not only which file.
/// A file that binds beyond loopback without a token is refused by `check`
/// and `serve` (key and line), but `serve --bind 127.0.0.1:PORT` replaces
/// that address before it is judged, and serves.
#[test]
fn serve_bind_replaces_an_open_address_before_the_token_check() {
    let dir = tempfile::tempdir().unwrap();
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    // The store ServeCgroups names (serve's cgroup parent is named after it).
    write_config(
        dir.path(),
        "[server]\nbind = \"0.0.0.0:8787\"\n[store]\nurl = \"sqlite://jobs.db\"\n",
    );
    let r = run(dir.path(), &["check"]);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains("server.bind"), "{r}");
    let r = run(dir.path(), &["serve"]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("server.bind"), "{r}");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let server = Server::spawn(tsbridge(dir.path(), &["serve", "--bind", &bind]), port);
    drop(server);
}

#[test]
fn a_config_that_cannot_be_read_is_reported_with_why() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["check", "serve"] {
        let r = run(dir.path(), &[cmd, "--config", "missing.toml"]);
        assert_eq!(r.code, Some(2), "{cmd}: {r}");
        assert!(
            r.stderr.contains("missing.toml") && r.stderr.contains("No such file or directory"),
            "{cmd}: {r}"
        );
    }
}

#[test]
fn check_keeps_its_verdict_when_the_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), BROKEN_CONFIG);
    let r = run_into_closed_pipe(dir.path(), &["check"], false);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("line 7"), "{r}");
    assert!(!r.stderr.contains("Broken pipe"), "{r}");

    write_config(dir.path(), VALID_CONFIG);
    let r = run_into_closed_pipe(dir.path(), &["check"], true);
    assert_eq!(r.code, Some(0), "{r}");
}

// ---------------------------------------------------------------- run

/// `TOKIO_WORKER_THREADS` (README: the async runtime's threads) that is not
/// a positive integer is a usage error with a message; tokio's own reading
/// of it panicked (exit 101 and a backtrace). A valid value runs.
#[test]
fn a_bad_worker_thread_count_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // `Run::of` fails the test on a panic.
    let check_with = |threads: &str| {
        Run::of(
            tsbridge(dir.path(), &["check"])
                .env("TOKIO_WORKER_THREADS", threads)
                .output()
                .unwrap(),
        )
    };
    for bad in ["", "0", "two", "-1"] {
        let r = check_with(bad);
        assert_eq!(r.code, Some(2), "{bad:?}: {r}");
        assert!(
            r.stderr
                .contains("TOKIO_WORKER_THREADS must be a positive integer"),
            "{bad:?}: {r}"
        );
    }
    let r = check_with("1");
    assert_eq!(r.code, Some(0), "{r}");
}

/// `--pass-env` of a name that looks secret is refused (exit 2, the name
/// and what to do), not passed as nothing; other names pass.
#[test]
fn run_refuses_to_pass_a_secret_looking_variable_silently() {
    let dir = tempfile::tempdir().unwrap();
    // Passes NAME (set to "v") and prints it as JSON.
    let pass = |name: &str| {
        let print = format!("process.stdout.write(JSON.stringify(process.env.{name} ?? null))");
        Run::of(
            tsbridge(
                dir.path(),
                &["run", "--pass-env", name, "node", "-e", &print],
            )
            .env(name, "v")
            .output()
            .unwrap(),
        )
    };
    let r = pass("AUD_API_KEY");
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("AUD_API_KEY looks secret"), "{r}");
    assert!(r.stderr.contains("--env"), "{r}");

    let r = pass("AUD_PLAIN");
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(r.stdout.trim(), r#""v""#, "{r}");
}

/// A piped stdin is the job's (as under timeout(1)): `echo data | tsbridge
/// run prog` gives prog the data and then EOF. It got /dev/null.
#[test]
fn run_gives_its_child_a_piped_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let echo = "let d='';process.stdin.on('data',c=>d+=c).on('end',()=>console.log('RESULT: '+JSON.stringify({got:d})))";
    let mut child = tsbridge(dir.path(), &["run", "node", "-e", echo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"line 1\nline 2\n").unwrap();
    drop(input);
    let r = Run::of(child.wait_with_output().unwrap());
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(r.stdout.trim(), r#"{"got":"line 1\nline 2\n"}"#, "{r}");
}

/// Log lines into a pipe or a file are plain text: no ANSI colour codes,
/// which tracing writes unless told the writer is no terminal.
#[test]
fn logs_into_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["run", "-vv", "--", "sh", "-c", "exit 0"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains("DEBUG"), "no log line to look at: {r}");
    assert!(!r.stderr.contains('\u{1b}'), "{r:?}", r = r.stderr);
}

#[test]
fn run_reads_a_bare_timeout_as_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // 5 seconds, not 5 ms: a half-second sleep ends on its own.
    let r = run(dir.path(), &["run", "--timeout", "5", "sleep", "0.5"]);
    assert_eq!(r.code, Some(0), "{r}");
    let r = run(
        dir.path(),
        &["run", "--timeout", "5", "--kill-grace", "2", "sleep", "0.5"],
    );
    assert_eq!(r.code, Some(0), "{r}");
    // A fraction of a second is still a timeout that fires.
    let r = run(
        dir.path(),
        &[
            "run",
            "--timeout",
            "0.2",
            "--kill-grace",
            "1",
            "sleep",
            "60",
        ],
    );
    assert_eq!(r.code, Some(124), "{r}");
    // Units as before.
    let r = run(dir.path(), &["run", "--timeout", "5s", "sleep", "0.5"]);
    assert_eq!(r.code, Some(0), "{r}");
    let r = run(dir.path(), &["run", "--timeout", "5q", "sleep", "0.5"]);
    assert_eq!(r.code, Some(2), "a usage error: {r}");
    assert!(r.stderr.contains("seconds"), "{r}");
}

/// The child's argv as env-argv.js reports it (hex-encoded raw bytes).
fn child_argv(outcome: &Value) -> Vec<String> {
    let line = outcome["output"]["stdout"].as_str().unwrap();
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    v["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let h = h.as_str().unwrap();
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            String::from_utf8(bytes).unwrap()
        })
        .collect()
}

#[test]
fn run_needs_no_double_dash_and_passes_everything_after_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = fixture("env-argv.js");
    let r = run(
        dir.path(),
        &[
            "run",
            "--json",
            &script,
            "--timeout",
            "9",
            "-v",
            "--json",
            "--",
            "x",
        ],
    );
    assert_eq!(r.code, Some(0), "{r}");
    let outcome: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        child_argv(&outcome),
        ["--timeout", "9", "-v", "--json", "--", "x"],
        "{r}"
    );

    // `--` still works.
    let r = run(dir.path(), &["run", "--json", "--", &script, "-a"]);
    assert_eq!(r.code, Some(0), "{r}");
    let outcome: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(child_argv(&outcome), ["-a"], "{r}");

    // And the exit code is the child's either way.
    let r = run(dir.path(), &["run", &fixture("exit-code.sh"), "7"]);
    assert_eq!(r.code, Some(7), "{r}");
    let r = run(dir.path(), &["run", "--", &fixture("exit-code.sh"), "7"]);
    assert_eq!(r.code, Some(7), "{r}");
}

fn write_script(dir: &Path, name: &str, text: &str, mode: u32) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn run_exits_127_when_the_program_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    for target in [
        "./no-such-script.js",
        "./no-such-script.ts",
        "no-such-program-on-path-xyz",
    ] {
        let r = run(dir.path(), &["run", target]);
        assert_eq!(r.code, Some(127), "{target}: {r}");
        assert!(r.stderr.contains("not found"), "{target}: {r}");
    }
    // The interpreter a script names is the program too (ENOENT from exec).
    let script = write_script(
        dir.path(),
        "bad-interpreter.sh",
        "#!/no/such/interpreter\necho unreachable\n",
        0o755,
    );
    let r = run(dir.path(), &["run", &script]);
    assert_eq!(r.code, Some(127), "{r}");

    let r = run(dir.path(), &["run", "--json", "./no-such-script.js"]);
    assert_eq!(r.code, Some(127), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["success"], false, "{r}");
    assert_eq!(v["reason"], "spawn_failure", "{r}");
}

/// A TypeScript file kept outside any project (a temp dir, no
/// `node_modules` above it) runs through the tsx of the project `run` is
/// started in, or of a tsx found on PATH (a global `npm install -g tsx`),
/// instead of ending with 127 "runtime tsx not found".
#[test]
fn run_finds_tsx_in_the_current_project_or_on_path() {
    let repo = fixtures().parent().unwrap().to_path_buf();
    let repo_tsx = repo.join("node_modules/tsx/dist/cli.mjs");
    assert!(repo_tsx.is_file(), "npm ci the repository first");
    let scripts = tempfile::tempdir().unwrap();
    let script = write_script(
        scripts.path(),
        "alone.ts",
        "const n: number = 41;\nconsole.log(`RESULT: ${JSON.stringify({ n: n + 1 })}`);\n",
        0o644,
    );
    let expect_42 = |r: &Run, how: &str| {
        assert_eq!(r.code, Some(0), "{how}: {r}");
        assert_eq!(r.stdout.trim(), r#"{"n":42}"#, "{how}: {r}");
    };

    // From the repository (its node_modules has tsx).
    expect_42(&run(&repo, &["run", "--runtime", "tsx", &script]), "cwd");

    // From elsewhere, with tsx on PATH as npm -g links it.
    let elsewhere = tempfile::tempdir().unwrap();
    let bin = elsewhere.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(&repo_tsx, bin.join("tsx")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let r = Run::of(
        crate::common::tsbridge(elsewhere.path(), &["run", "--runtime", "tsx", &script])
            .env("PATH", path)
            .output()
            .unwrap(),
    );
    expect_42(&r, "PATH");
}

#[test]
fn run_exits_126_when_the_program_cannot_be_executed() {
    let dir = tempfile::tempdir().unwrap();
    // Not executable (EACCES).
    let script = write_script(
        dir.path(),
        "not-executable.sh",
        "#!/bin/sh\nexit 0\n",
        0o644,
    );
    let r = run(dir.path(), &["run", &script]);
    assert_eq!(r.code, Some(126), "{r}");
    // A directory (EACCES from execve).
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let r = run(
        dir.path(),
        &["run", "--runtime", "exec", sub.to_str().unwrap()],
    );
    assert_eq!(r.code, Some(126), "{r}");
}

#[test]
fn run_gives_its_child_the_default_sigpipe_disposition() {
    // tsbridge itself ignores SIGPIPE (it turns EPIPE into a quiet exit); the
    // job must not inherit that: a `yes | head` inside it ends as usual.
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &["run", "--json", "grep", "^SigIgn:", "/proc/self/status"],
    );
    assert_eq!(r.code, Some(0), "{r}");
    let outcome: Value = serde_json::from_str(&r.stdout).unwrap();
    let line = outcome["output"]["stdout"].as_str().unwrap();
    let mask = u64::from_str_radix(line.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    const SIGPIPE: u64 = 13;
    assert_eq!(
        mask & (1 << (SIGPIPE - 1)),
        0,
        "SIGPIPE ignored in the child: {line}"
    );
}

#[test]
fn run_into_a_closed_pipe_keeps_the_childs_exit_code_and_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    // The result line goes to a closed stdout.
    let r = run_into_closed_pipe(dir.path(), &["run", &fixture("protocol.js")], false);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(!r.stderr.contains("Broken pipe"), "{r}");
    // Both streams closed: progress, logs and output lines have nowhere to go;
    // the job still runs to its end.
    let r = run_into_closed_pipe(dir.path(), &["run", &fixture("protocol.js")], true);
    assert_eq!(r.code, Some(0), "{r}");
    let r = run_into_closed_pipe(dir.path(), &["run", &fixture("exit-code.sh"), "3"], true);
    assert_eq!(r.code, Some(3), "{r}");
    // Log lines too (`-vv`: debug; at the default level a warning under
    // load did the same): tracing-subscriber reported the failed write with
    // `eprintln!`, which panicked on the closed stderr (exit 101).
    let r = run_into_closed_pipe(
        dir.path(),
        &["-vv", "run", &fixture("exit-code.sh"), "3"],
        true,
    );
    assert_eq!(r.code, Some(3), "{r}");
}

// ---------------------------------------------------------------- jobs

/// `tsbridge serve` in `dir` with the protocol fixture as a workflow.
fn protocol_server(dir: &Path) -> Server {
    let port = free_port();
    write_protocol_config(dir, port, &[]);
    Server::spawn(tsbridge(dir, &["serve"]), port)
}

#[test]
fn jobs_alone_lists_and_a_closed_pipe_ends_it_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Goes after the servers: removes what a SIGKILLed one left in cgroupfs.
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    let server = protocol_server(dir.path());
    let url = server.url.as_str();

    let r = run(dir.path(), &["jobs", "--server", url, "submit", "protocol"]);
    assert_eq!(r.code, Some(0), "{r}");
    let id = r.stdout.split_whitespace().next().unwrap().to_owned();
    // Follows the job to its end (exits when the stream does).
    let r = run(
        dir.path(),
        &["jobs", "--server", url, "logs", &id, "--follow"],
    );
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stdout.contains("state succeeded"), "{r}");

    // `tsbridge jobs` is `tsbridge jobs list`.
    let r = run(dir.path(), &["jobs", "--server", url]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stdout.starts_with("ID"), "{r}");
    let row = r.stdout.lines().find(|l| l.starts_with(&id));
    assert!(row.is_some_and(|l| l.contains("succeeded")), "{r}");
    let r = Run::of(
        tsbridge(dir.path(), &["jobs", "--json"])
            .env("TSBRIDGE_URL", url)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, Some(0), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["jobs"][0]["jobId"], id.as_str(), "{r}");

    // `... | head`: the reader is gone before the first line.
    for args in [
        vec!["jobs", "--server", url, "logs", &id],
        vec!["jobs", "--server", url, "logs", &id, "--follow"],
        vec!["jobs", "--server", url],
        vec!["jobs", "--server", url, "show", &id],
    ] {
        let r = run_into_closed_pipe(dir.path(), &args, false);
        assert_eq!(r.code, Some(0), "{args:?}: {r}");
        assert!(r.stderr.is_empty(), "{args:?}: quiet, but {r}");
    }
}

#[test]
fn jobs_without_a_server_reports_the_connection_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let r = run(
        dir.path(),
        &["jobs", "--server", &format!("http://127.0.0.1:{port}")],
    );
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.starts_with("tsbridge: "), "{r}");
    assert_eq!(r.stderr.lines().count(), 1, "one line, no backtrace: {r}");
}

/// A limit this host cannot enforce for the user running `tsbridge run`
/// stops the run before the job starts, naming the shortfall, unless
/// `--degraded` accepts it as best effort (as `serve` makes such a workflow
/// unavailable unless its config says `degraded = true`). It ran the job
/// without its memory limit, with a warning only. Here: `nobody` (no
/// delegated cgroup, so `--memory` is not enforced); skipped when the
/// tests do not run as root or `nobody` cannot reach the binary.
#[test]
fn run_refuses_limits_this_host_cannot_enforce_unless_degraded() {
    use std::os::unix::process::CommandExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: cannot run as another user; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = dir.path().join("ran");
    let script = dir.path().join("job.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend(["--memory", "64MiB", script.to_str().unwrap()]);
        let mut cmd = tsbridge(dir.path(), &args);
        cmd.uid(65534).gid(65534);
        cmd.output().map(Run::of)
    };
    let r = match as_nobody(&[]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start tsbridge as nobody ({e}); skipped");
            return;
        }
    };
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stderr.contains("cannot enforce"), "{r}");
    assert!(r.stderr.contains("memory"), "{r}");
    assert!(r.stderr.contains("--degraded"), "{r}");
    assert!(!marker.exists(), "the job must not have run: {r}");

    let r = as_nobody(&["--degraded"]).unwrap();
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains("not fully enforced"), "{r}");
    assert!(marker.exists(), "--degraded runs the job: {r}");
}

/// A tsbridge without privilege (here `nobody`: no CAP_SYS_ADMIN, so no
/// network namespace in the host's user namespace) still runs a
/// `--no-network` job without network: the job gets a user namespace of
/// its own (its uid and gid mapped to themselves) with a network namespace
/// in it. The hostile job tries to reach a listener on the host's loopback
/// and lists the interfaces it sees: refused, `lo` only; without
/// `--no-network` the same job connects. It keeps no capability of its
/// user namespace (effective and bounding sets empty), runs as `nobody`,
/// and cannot make a namespace of its own. Before, the run was refused ("cannot enforce": only
/// Landlock's TCP rule was left). Skipped when the tests do not run as
/// root, `nobody` cannot reach the binary, or the kernel refuses
/// unprivileged user namespaces.
#[test]
fn an_unprivileged_tsbridge_still_takes_the_network_away() {
    use std::os::unix::process::CommandExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: cannot run as another user; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let script = write_script(
        dir.path(),
        "probe.js",
        r#"const fs = require('fs');
const ifaces = fs.readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2)
  .map((l) => l.split(':')[0].trim()).filter(Boolean);
const status = fs.readFileSync('/proc/self/status', 'utf8');
const cap = (k) => (status.match(new RegExp('^' + k + ':\\s*(\\w+)', 'm')) || [])[1];
const out = (o) => { console.log('PROBE ' + JSON.stringify({ ...o, ifaces, uid: process.getuid(),
  eff: cap('CapEff'), bnd: cap('CapBnd') })); process.exit(0); };
const s = require('net').connect(Number(process.argv[2]), '127.0.0.1');
s.on('connect', () => out({ connected: true }));
s.on('error', (e) => out({ connected: false, code: e.code }));
"#,
        0o644,
    );
    let as_nobody = |extra: &[&str]| {
        let mut args = vec!["run", "--timeout", "60"];
        args.extend_from_slice(extra);
        args.extend([script.as_str(), port.as_str()]);
        let mut cmd = tsbridge(dir.path(), &args);
        cmd.uid(65534).gid(65534);
        cmd.output().map(Run::of)
    };
    let probe = |r: &Run| -> serde_json::Value {
        let line = r
            .stdout
            .lines()
            .chain(r.stderr.lines())
            .find_map(|l| l.split_once("PROBE ").map(|(_, j)| j.to_owned()))
            .unwrap_or_else(|| panic!("no probe output: {r}"));
        serde_json::from_str(&line).unwrap()
    };
    let open = match as_nobody(&[]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start tsbridge as nobody ({e}); skipped");
            return;
        }
    };
    assert_eq!(open.code, Some(0), "{open}");
    assert_eq!(probe(&open)["connected"], true, "{open}");

    // Whether this kernel lets `nobody` make a user and a network
    // namespace at all (util-linux's unshare, independent of tsbridge).
    let userns = std::process::Command::new("unshare")
        .args(["--user", "--net", "--map-current-user", "true"])
        .uid(65534)
        .gid(65534)
        .status();
    if !userns.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("no unprivileged user namespaces here ({userns:?}); skipped");
        return;
    }
    let closed = as_nobody(&["--no-network"]).unwrap();
    assert_eq!(closed.code, Some(0), "{closed}");
    let p = probe(&closed);
    assert_eq!(p["connected"], false, "{closed}");
    assert!(
        p["code"] == "ECONNREFUSED" || p["code"] == "ENETUNREACH",
        "{closed}"
    );
    assert_eq!(p["ifaces"], serde_json::json!(["lo"]), "{closed}");
    assert_eq!(p["uid"], 65534, "{closed}");
    assert_eq!(p["eff"], "0000000000000000", "{closed}");
    assert_eq!(p["bnd"], "0000000000000000", "{closed}");

    // Hostile: the job tries to make namespaces of its own (a user
    // namespace, where it would hold every capability again, and a network
    // namespace): seccomp refuses both.
    let nested = write_script(
        dir.path(),
        "nested.sh",
        "#!/bin/sh
unshare --user --map-current-user true; echo \"user=$?\"\n\
         unshare --net true; echo \"net=$?\"\n",
        0o755,
    );
    let mut cmd = tsbridge(
        dir.path(),
        &["run", "--no-network", "--timeout", "60", &nested],
    );
    cmd.uid(65534).gid(65534);
    let r = Run::of(cmd.output().unwrap());
    assert_eq!(r.code, Some(0), "{r}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("user=1") && all.contains("net=1"),
        "a namespace was made inside the job: {r}"
    );
    drop(listener);
}

/// A tsbridge without privilege (`nobody`) still gives a job a PID
/// namespace of its own (`--pid-namespace`): with a user namespace of the
/// job's own made by the same clone (its ids mapped to themselves). The
/// hostile probe lists `/proc` looking for a process the test started
/// outside: inside it finds nothing but its own few processes under
/// `tsbridge-init`; without the flag it finds the process. Before, the run
/// was refused ("cannot enforce": PID namespaces need CAP_SYS_ADMIN).
/// Skipped when the tests do not run as root or the kernel refuses
/// `nobody` user and PID namespaces (util-linux's unshare says).
#[test]
fn an_unprivileged_tsbridge_still_gives_a_job_its_own_pid_namespace() {
    use std::os::unix::process::CommandExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: cannot run as another user; skipped");
        return;
    }
    let userns = std::process::Command::new("unshare")
        .args(["--user", "--map-current-user", "--pid", "--fork", "--mount"])
        .args(["--mount-proc", "true"])
        .uid(65534)
        .gid(65534)
        .status();
    if !userns.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("no unprivileged user and PID namespaces here ({userns:?}); skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = format!("pidns-outside-{}", std::process::id());
    let mut outside = std::process::Command::new("/bin/bash")
        .args(["-c", &format!("exec -a 'sleep-{marker}' sleep 1000")])
        .spawn()
        .unwrap();
    // The marker in two halves: the probe's own command line must not
    // match it.
    let (a, b) = marker.split_at(marker.len() / 2);
    let probe = write_script(
        dir.path(),
        "probe.sh",
        "#!/bin/sh
m=\"$1$2\"; found=no
\
         for f in /proc/[0-9]*/cmdline; do grep -q \"$m\" \"$f\" 2>/dev/null && found=yes; done
\
         echo \"PROBE found=$found pids=$(ls /proc | grep -cE '^[0-9]+$') \
         init=$(tr -d '\\000' < /proc/1/cmdline)\"
",
        0o755,
    );
    let as_nobody = |extra: &[&str]| {
        let mut args = vec!["run", "--timeout", "60"];
        args.extend_from_slice(extra);
        args.extend([probe.as_str(), a, b]);
        let mut cmd = tsbridge(dir.path(), &args);
        cmd.uid(65534).gid(65534);
        Run::of(cmd.output().unwrap())
    };
    let line = |r: &Run| -> String {
        r.stdout
            .lines()
            .chain(r.stderr.lines())
            .find_map(|l| l.split_once("PROBE ").map(|(_, p)| p.to_owned()))
            .unwrap_or_else(|| panic!("no probe output: {r}"))
    };
    // The outside process shows in /proc first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let seen = loop {
        let r = as_nobody(&[]);
        assert_eq!(r.code, Some(0), "{r}");
        if line(&r).contains("found=yes") || std::time::Instant::now() > deadline {
            break line(&r);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let inside = as_nobody(&["--pid-namespace"]);
    let _ = outside.kill();
    let _ = outside.wait();
    assert!(seen.contains("found=yes"), "without the namespace: {seen}");
    assert_eq!(inside.code, Some(0), "{inside}");
    let l = line(&inside);
    assert!(l.contains("found=no"), "{inside}");
    assert!(l.contains("init=tsbridge-init"), "{inside}");
    let pids: u32 = l
        .split_once("pids=")
        .and_then(|(_, p)| p.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(pids <= 8, "the probe sees {pids} processes: {inside}");
}

/// A `limits.read`/`limits.write` path that does not exist grants nothing
/// (Landlock can only grant an existing path): `check` notes each one, with
/// its workflow and key, and none for a path that exists. A note, not an
/// error: the folder may be made later.
#[test]
fn check_notes_read_and_write_paths_that_do_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "job.sh", "#!/bin/sh\necho '{}'\n", 0o755);
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::fs::write(
        dir.path().join("tsbridge.toml"),
        "[workflows.w]\nroot = \".\"\nscript = \"job.sh\"\nruntime = \"exec\"\n\
         limits = { write = [\"out\", \"outt\"], read = [\"/nonexistent-tsbridge-check\"] }\n",
    )
    .unwrap();
    let (r, mut notes) = check_json_notes(dir.path());
    notes.retain(|n| n.contains("which does not exist"));
    notes.sort();
    assert_eq!(notes.len(), 2, "{r}");
    assert!(
        notes[0].starts_with("workflow w: limits.read names /nonexistent-tsbridge-check,"),
        "{r}"
    );
    assert!(
        notes[1].starts_with("workflow w: limits.write names ") && notes[1].contains("/outt,"),
        "{r}"
    );
    let text = run(dir.path(), &["check"]);
    assert!(
        text.stdout.contains("note: workflow w: limits.write names"),
        "{text}"
    );
}
