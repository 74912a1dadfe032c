//! Hostile job (SPEC §5): a job goes after the `tsbridge` that runs it
//! through `/proc/<ppid>`: its environment (API tokens, the host's
//! secrets), its memory, its open files (the store's SQLite file). Three
//! locks, each enough where it applies: tsbridge is not dumpable (main), a
//! job execs with no capabilities, also as root (the sandbox), and a job
//! lives in a Landlock domain (ABI 6+), which may not ptrace-read a process
//! outside it. Before, a job of the same uid read all three. The
//! `proc_peek.py` fixture makes the attempts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{fixture, tsbridge};

#[test]
fn a_job_cannot_read_tsbridges_environ_memory_or_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = tsbridge(
        dir.path(),
        &["run", "--pids", "64", &fixture("sandbox/proc_peek.py")],
    )
    .env("PROC_PEEK_SECRET", "s3cr3t-value-of-the-host")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("cannot sandbox") {
        eprintln!("SKIP: no sandbox on this host: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // `run` passes the job's lines on to its stderr (stdout is the result).
    for attempt in ["environ", "mem", "fd"] {
        let r = stderr
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(attempt)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {attempt} in {stdout}\n{stderr}"));
        assert!(
            r == "EACCES" || r == "EPERM",
            "{attempt} of tsbridge: {stderr}"
        );
    }
}

/// `tsbridge` as a non-root service runs, and a job as the kernel sees it
/// when no Landlock domain holds it (a host without Landlock ABI 6):
/// processes of the same uid without capabilities (`setpriv` empties the
/// bounding and inheritable sets before exec; for root, whose processes
/// otherwise hold every capability, that is what makes them equal: a
/// process cannot read one that holds capabilities it lacks). The peeker
/// still cannot read the environment of the running `tsbridge`, which made
/// itself non-dumpable; before, it read it.
#[test]
fn a_same_uid_process_without_capabilities_cannot_read_tsbridges_environ() {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        eprintln!("SKIP: no setpriv (util-linux) on this host");
        return;
    };
    let no_caps = |program: &str| {
        let mut c = Command::new(setpriv);
        c.args(["--bounding-set=-all", "--inh-caps=-all", "--", program]);
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let mut run = no_caps(env!("CARGO_BIN_EXE_tsbridge"))
        .args(["run", &fixture("hang.js")])
        .current_dir(dir.path())
        .env("PROC_PEEK_SECRET", "s3cr3t-value-of-the-host")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The job's lines come on run's stderr: READY means tsbridge is up.
    let mut lines = BufReader::new(run.stderr.take().unwrap()).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("READY")));
    // setpriv execs tsbridge: same pid.
    let peek = no_caps("cat")
        .arg(format!("/proc/{}/environ", run.id()))
        .output()
        .unwrap();
    run.kill().unwrap();
    run.wait().unwrap();
    assert!(ready, "the job never said READY");
    let secret = String::from_utf8_lossy(&peek.stdout).contains("PROC_PEEK_SECRET");
    assert!(
        !peek.status.success() && !secret,
        "read tsbridge's environ: {} bytes, the secret among them: {secret}",
        peek.stdout.len()
    );
    assert!(
        String::from_utf8_lossy(&peek.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&peek.stderr)
    );
}
