//! `tsbridge run` as SPEC §6 words it, through the built binary: only the
//! result JSON on stdout; logs, progress and plain output on stderr (plain
//! lines: stderr is a pipe here); the exit code is the child's, 124 on a
//! timeout (the whole tree gone), 128+N on signal N, and 128+N when `run`
//! itself receives signal N (130 on Ctrl-C); the runtime chosen by the
//! file's extension (`.tsx` too) or named as `--help` names it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{DEADLINE, alive, fixture, fixtures, tsbridge};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
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

fn of(out: Output) -> Run {
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(cwd: &Path, args: &[&str]) -> Run {
    of(tsbridge(cwd, args).output().unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Starts `tsbridge run ARGS`, waits for `READY` among the child's plain
/// output (on tsbridge's stderr), sends `signal` to tsbridge, and returns
/// how it ended.
fn interrupted(cwd: &Path, args: &[&str], signal: i32) -> Run {
    let mut child = tsbridge(cwd, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "stderr ended before READY: {seen}"
        );
        seen.push_str(&line);
        if line.trim_end() == "READY" {
            break;
        }
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: a plain kill(2) of the tsbridge process this test started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let out = child.wait_with_output().unwrap();
    let mut r = of(out);
    seen.push_str(&reader.join().unwrap());
    r.stderr = seen;
    r
}

#[test]
fn only_the_result_goes_to_stdout_and_the_rest_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "proto.js",
        r#"console.log("[2024-01-01T00:00:00Z] INFO: hello info");
console.log("[2024-01-01T00:00:00Z] ERROR: an error line");
console.log("PROGRESS: 1/4 - first step");
console.log("plain line");
console.log('RESULT: {"a":1}');
console.error("to stderr");
console.log('RESULT: {"a":2}');
"#,
    );
    let r = run(dir.path(), &["run", "--", &script]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(r.stdout, "{\"a\":2}\n", "a later RESULT replaces: {r}");
    for want in [
        "INFO: hello info",
        "ERROR: an error line",
        "PROGRESS: 1/4 - first step",
        "plain line",
        "to stderr",
    ] {
        assert!(r.stderr.contains(want), "{want:?} on stderr: {r}");
    }
    // No marker, exit 0: the whole stdout is the result if it is JSON, else null.
    let whole = write(
        dir.path(),
        "whole.js",
        "console.log('{\\n \"w\": [1,\\n 2]}');",
    );
    let r = run(dir.path(), &["run", &whole]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "{\"w\":[1,2]}\n"),
        "{r}"
    );
    let text = write(dir.path(), "text.js", "console.log('just text');");
    let r = run(dir.path(), &["run", &text]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "null\n"), "{r}");
}

#[test]
fn the_exit_code_is_the_childs_and_128_plus_n_on_signal_n() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["run", &fixture("exit-code.sh"), "5"]);
    assert_eq!(r.code, Some(5), "{r}");
    assert_eq!(r.stdout, "", "no result of a failed job: {r}");
    assert!(r.stderr.contains("this goes to stderr"), "{r}");
    let r = run(dir.path(), &["run", &fixture("die-by-signal.sh"), "SEGV"]);
    assert_eq!(r.code, Some(128 + libc::SIGSEGV), "{r}");
    assert!(r.stderr.contains("SIGSEGV"), "the signal is named: {r}");
    let r = run(dir.path(), &["run", &fixture("die-by-signal.sh"), "USR1"]);
    assert_eq!(r.code, Some(128 + libc::SIGUSR1), "{r}");
}

#[test]
fn a_timeout_exits_124_and_ends_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids.json");
    let started = Instant::now();
    let r = run(
        dir.path(),
        &[
            "run",
            "--timeout",
            "3s",
            "--kill-grace",
            "1s",
            &fixture("tree.js"),
            pidfile.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(124), "{r}");
    assert!(r.stderr.contains("READY"), "the tree was up: {r}");
    let pids: Value = serde_json::from_slice(&std::fs::read(&pidfile).unwrap()).unwrap();
    for who in ["leader", "grandchild", "escapee"] {
        let pid = i32::try_from(pids[who].as_i64().unwrap()).unwrap();
        while alive(pid) {
            assert!(
                started.elapsed() < DEADLINE,
                "{who} ({pid}) outlived the job"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Regression: Ctrl-C made `run` exit 143 (its child's SIGTERM), or 137
/// when the child ignored SIGTERM; a shell says 130 for a program ended by
/// SIGINT, as the module doc promised.
#[test]
fn sigint_to_run_cancels_the_job_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let r = interrupted(dir.path(), &["run", &fixture("hang.js")], libc::SIGINT);
    assert_eq!(r.code, Some(130), "{r}");
    assert!(r.stderr.contains("cancelled"), "{r}");
    let r = interrupted(
        dir.path(),
        &["run", "--kill-grace", "1s", &fixture("ignore-term.js")],
        libc::SIGINT,
    );
    assert_eq!(r.code, Some(130), "a SIGTERM-ignoring child: {r}");
    let r = interrupted(
        dir.path(),
        &["run", "--kill-grace", "1s", &fixture("ignore-term.js")],
        libc::SIGTERM,
    );
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r}");
}

/// Regression: a `.tsx` file was exec'd (exit 126, "Permission denied").
#[test]
fn a_tsx_file_runs_through_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["run", &fixture("ts/component.tsx")]);
    assert_eq!(r.code, Some(0), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"tsx": true, "n": 7}), "{r}");
}

/// Regression: a `.jsx` file was exec'd (exit 126, "Permission denied"),
/// though it needs a compiler as `.tsx` does; real JSX elements in it.
#[test]
fn a_jsx_file_runs_through_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["run", &fixture("ts/component.jsx")]);
    assert_eq!(r.code, Some(0), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let want =
        serde_json::json!({"jsx": true, "tag": "greeting", "to": "jsx", "children": ["hi ", 7]});
    assert_eq!(v, want, "{r}");
}

/// Regression: `--runtime ts-node-check`, as `--help` and the error message
/// name it, was refused as an unknown runtime.
#[test]
fn the_runtime_names_help_gives_are_accepted() {
    // ts-node finds its tsconfig.json from the working directory, as under
    // `node -r ts-node/register` by hand: the repository's.
    let repo = fixtures().parent().unwrap().to_owned();
    let r = run(
        &repo,
        &[
            "run",
            "--runtime",
            "ts-node-check",
            "--",
            &fixture("ts/hello.ts"),
            "check",
        ],
    );
    assert!(!r.stderr.contains("unknown runtime"), "{r}");
    assert_eq!(r.code, Some(0), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["version"], 1, "{r}");
}

/// `--stdio socket` gives the child Unix sockets for stdout and stderr
/// (pipes by default), and `run` keeps its contract through them: only the
/// result on stdout, the child's plain output on stderr.
#[test]
fn stdio_socket_gives_the_child_sockets() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, kind, read_back) in [
        (Some("socket"), "socket", serde_json::json!(0)),
        (None, "pipe", serde_json::json!("EBADF")),
    ] {
        let mut args = vec!["run"];
        if let Some(f) = flag {
            args.extend(["--stdio", f]);
        }
        let script = fixture("socket-output.js");
        args.push(&script);
        let r = run(dir.path(), &args);
        assert_eq!(r.code, Some(0), "{r}");
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"stdout": kind, "stderr": kind, "readBack": read_back}),
            "{r}"
        );
        assert!(r.stderr.contains("a line on stderr"), "{r}");
    }
}

/// The start time (clock ticks after boot) of a process, from /proc.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields = &stat[stat.rfind(')').unwrap() + 2..];
    fields.split(' ').nth(19).unwrap().parse().unwrap()
}

/// `run`, as `serve`, removes at its start the private TMPDIRs of jobs of
/// tsbridge processes that are gone (the death watchdog of a tsbridge may
/// be killed too), with what is in them; a live owner's stays, and its own
/// job's is gone when it exits. Before, only `serve` swept them.
#[test]
fn run_sweeps_the_tmpdirs_of_gone_owners_at_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tmp");
    std::fs::create_dir(&base).unwrap();
    // A gone owner: a process this test started and reaped.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_tag = format!("{}.{}", gone.id(), start_time(gone.id()));
    gone.wait().unwrap();
    // A reused pid: ours, with another start time.
    let me = std::process::id();
    let reused_tag = format!("{me}.{}", start_time(me) + 1);
    let live_tag = format!("{me}.{}", start_time(me));
    let stale = [
        base.join(format!("tsbridge-{gone_tag}-j1-0-abcd1234")),
        base.join(format!(
            "tsbridge-{reused_tag}-01a21c73e61175bea53153475af3c33a-1"
        )),
    ];
    for d in &stale {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/data.txt"), "x").unwrap();
    }
    let live = base.join(format!("tsbridge-{live_tag}-j2-0-abcd1234"));
    std::fs::create_dir(&live).unwrap();

    let script = write(dir.path(), "ok.js", "console.log('RESULT: 1');\n");
    let out = tsbridge(dir.path(), &["run", "--", &script])
        .env("TMPDIR", &base)
        .output()
        .unwrap();
    let r = of(out);
    assert_eq!(r.code, Some(0), "{r}");
    for d in &stale {
        assert!(!d.exists(), "{} is left", d.display());
    }
    assert!(live.is_dir(), "a live owner's TMPDIR is kept");
    let left: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(
        left,
        [live.file_name().unwrap().to_str().unwrap()],
        "{left:?}"
    );
}

/// A `run` with a limit makes a parent cgroup of its own
/// (`tsbridge-run-<pid>`) for its job's: it is gone when `run` has exited,
/// whatever the job's exit code (it stayed before). Skipped (said) on a
/// host that cannot sandbox.
#[test]
fn a_run_with_limits_leaves_no_parent_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    for code in ["0", "5"] {
        let child = tsbridge(
            dir.path(),
            &["run", "--pids", "64", &fixture("exit-code.sh"), code],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let pid = child.id();
        let r = of(child.wait_with_output().unwrap());
        if r.stderr.contains("cannot sandbox") {
            eprintln!("SKIP: no sandbox on this host: {r}");
            return;
        }
        assert_eq!(r.code, Some(code.parse().unwrap()), "{r}");
        let name = format!("tsbridge-run-{pid}");
        let left: Vec<_> = crate::common::own_cgroup_dirs()
            .into_iter()
            .map(|d| d.join(&name))
            .filter(|d| d.exists())
            .collect();
        assert!(
            left.is_empty(),
            "exit {code}: parent cgroups left: {left:?}"
        );
    }
}

/// `tsbridge run ARGS` that fails rather than waits past [`DEADLINE`]: a
/// test of a hang must not hang. Ended by SIGTERM (`run` then ends its job
/// and removes its cgroups, which CI's leftovers check looks for), SIGKILL
/// if that does not end it either.
fn run_bounded(cwd: &Path, args: &[&str]) -> Run {
    let child = tsbridge(cwd, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => of(out.unwrap()),
        Err(_) => {
            // SAFETY: plain kill(2)s of the tsbridge process this test
            // started and has not reaped (its waiter has not returned).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let ended = match rx.recv_timeout(DEADLINE) {
                Ok(out) => of(out.unwrap()).to_string(),
                Err(_) => {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    "SIGTERM did not end it: SIGKILLed".to_owned()
                }
            };
            panic!("tsbridge {args:?} still running after {DEADLINE:?}; SIGTERMed: {ended}");
        }
    }
}

/// A `--pids` limit Node cannot start in (Node 20 aborts at 1 and waits
/// for ever at 2 to 5: V8's platform threads) is refused for a Node
/// program, `node` itself or a script run by it, before anything starts;
/// it hung for ever, as `run` has no timeout unless given. From 6 node
/// runs (skipped, said, on a host that cannot sandbox).
#[test]
fn a_pids_limit_node_cannot_start_in_is_refused_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let js = write(dir.path(), "hello.js", "console.log('hi')\n");
    for args in [
        &["run", "--pids", "5", "node", "-e", "console.log(1)"][..],
        &["run", "--pids", "2", &js][..],
    ] {
        let r = run_bounded(dir.path(), args);
        assert_eq!(r.code, Some(1), "{args:?}: {r}");
        assert!(
            r.stderr.contains("--pids") && r.stderr.contains("too few for node"),
            "{args:?}: {r}"
        );
        assert!(r.stdout.is_empty(), "{args:?}: {r}");
    }
    let r = run_bounded(
        dir.path(),
        &["run", "--pids", "6", "node", "-e", "console.log(1)"],
    );
    if r.stderr.contains("cannot sandbox") {
        eprintln!("SKIP: no sandbox on this host: {r}");
        return;
    }
    assert_eq!(r.code, Some(0), "{r}");
}

/// `--no-unix-sockets`: a job with the network cannot connect to a socket
/// file of the host (it cannot make a unix socket), while the same program
/// without the flag can. Before, the flag did not exist (a usage error).
#[test]
fn no_unix_sockets_keeps_a_job_from_the_hosts_socket_files() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("service.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let script = write(
        dir.path(),
        "connect.js",
        "const s = require('net').connect(process.argv[2]);\n\
         s.on('connect', () => { console.log('CONNECTED'); process.exit(0); });\n\
         s.on('error', (e) => { console.log('ERR ' + e.code); process.exit(3); });\n",
    );
    let path = sock.to_str().unwrap();
    let open = run(dir.path(), &["run", &script, path]);
    assert_eq!(open.code, Some(0), "{open}");
    assert!(open.stderr.contains("CONNECTED"), "{open}");
    assert!(listener.accept().is_ok(), "the listener saw no connection");

    let closed = run(dir.path(), &["run", "--no-unix-sockets", &script, path]);
    if closed.code == Some(1) && closed.stderr.contains("cannot enforce") {
        eprintln!("SKIP: this host cannot refuse unix sockets (no seccomp): {closed}");
        return;
    }
    assert_eq!(closed.code, Some(3), "{closed}");
    assert!(closed.stderr.contains("ERR EACCES"), "{closed}");
    assert!(listener.accept().is_err(), "the listener saw a connection");
}

/// `--pid-namespace`: the job lists /proc and finds only its own
/// processes (its init and itself: pids 1 and 2), not this test's process,
/// and its exit code still comes through; the same program without the
/// flag sees the whole host. Before, the flag did not exist (a usage
/// error).
#[test]
fn pid_namespace_hides_the_hosts_processes() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "ps.js",
        "const pids = require('fs').readdirSync('/proc').filter((n) => /^\\d+$/.test(n));\n\
         console.log('PIDS ' + pids.join(','));\n\
         console.log('ME ' + process.pid);\n\
         process.exit(pids.includes(process.argv[2]) ? 4 : 3);\n",
    );
    let me = std::process::id().to_string();
    let open = run(dir.path(), &["run", &script, &me]);
    assert_eq!(
        open.code,
        Some(4),
        "the host's /proc shows this test: {open}"
    );

    let hidden = run(dir.path(), &["run", "--pid-namespace", &script, &me]);
    if hidden.code == Some(1) && hidden.stderr.contains("cannot enforce") {
        eprintln!("SKIP: this host cannot make PID namespaces: {hidden}");
        return;
    }
    assert_eq!(hidden.code, Some(3), "{hidden}");
    assert!(hidden.stderr.contains("PIDS 1,2\n"), "{hidden}");
    assert!(hidden.stderr.contains("ME 2\n"), "{hidden}");
}
