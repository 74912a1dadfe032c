//! SIGKILL of the process that runs the runtime: its children die with it,
//! and a restart on the same store finds every accepted job: the one that
//! was running is re-queued (attempts remain) and runs again, the queued one
//! runs. The "server" is this test binary re-run as a helper.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tsbridge_proto::{EndReason, JobId, JobState};
use tsbridge_runtime::{JobStore, Runtime, RuntimeOptions};

const HELPER_ENV: &str = "TSBRIDGE_RUNTIME_CRASH_HELPER";

fn toml() -> String {
    format!(
        "[defaults]\nconcurrency = 1\n{}",
        workflow("job", "retry = { attempts = 2 }")
    )
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only checks that the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The helper: submits a job that hangs once and a queued one, says READY,
/// then waits to be killed.
#[tokio::test]
#[ignore = "run by jobs_survive_a_sigkill_of_the_server"]
async fn crash_helper() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let store = open_store(&dir).await;
    let rt = Runtime::start(
        config(&toml()),
        store as Arc<dyn JobStore>,
        RuntimeOptions::default(),
    )
    .await
    .expect("start");
    let flag = dir.join("hang.flag");
    let log = dir.join("a.log");
    let a = rt
        .submit(
            "job",
            json!({"hangOnce": flag, "log": log, "result": "second try"}),
            Default::default(),
        )
        .await
        .expect("submit")
        .job_id;
    let b = rt
        .submit("job", json!({"result": "queued one"}), Default::default())
        .await
        .expect("submit")
        .job_id;
    // Wait until the first attempt runs and hangs: its log line is written
    // and so is the flag (job.js writes the flag after the log line, then
    // hangs). A kill between the two left no flag, so the second attempt
    // hung too and the restarted runtime's wait for it timed out (CI, twice).
    while !(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("start")
        && flag.exists())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("READY {a} {b}");
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn jobs_survive_a_sigkill_of_the_server() {
    if std::env::var(HELPER_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut helper = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "crash_restart::crash_helper",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HELPER_ENV, dir.path())
        // Its jobs' TMPDIRs: a SIGKILLed runtime without the death watchdog
        // leaves them (the next `serve` sweeps them), here in the test's dir.
        .env("TMPDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("helper");
    let stdout = helper.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("READY ").nth(1) {
                let _ = tx.send(rest.to_owned());
                return;
            }
        }
    });
    let ready = rx.recv_timeout(SOON).expect("the helper got ready");
    let ids: Vec<JobId> = ready
        .split_whitespace()
        .map(|s| s.parse().expect("id"))
        .collect();
    let (a, b) = (ids[0], ids[1]);
    let log = std::fs::read_to_string(dir.path().join("a.log")).expect("log");
    let child_pid: i32 = log
        .split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
        .expect("the child's pid");
    assert!(alive(child_pid));

    // SAFETY: SIGKILL to the helper we spawned.
    unsafe { libc::kill(helper.id() as i32, libc::SIGKILL) };
    helper.wait().expect("reaped");

    // Its child dies with it (parent-death signal).
    let deadline = std::time::Instant::now() + SOON;
    while alive(child_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = alive(child_pid);
    if survived {
        // SAFETY: clean up the stray process before failing.
        unsafe { libc::kill(child_pid, libc::SIGKILL) };
    }
    assert!(!survived, "the job's process outlived the server");
    // The running attempt's TMPDIR stayed; a start's sweep removes it.
    assert_eq!(tsbridge_process::sweep_stale_tmp(dir.path()), 1);

    let store = open_store(dir.path()).await;
    let rt = Runtime::start(
        config(&toml()),
        store as Arc<dyn JobStore>,
        RuntimeOptions::default(),
    )
    .await
    .expect("restart");
    let va = tokio::time::timeout(SOON, rt.wait(a))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(va.state, JobState::Succeeded, "{va:?}");
    assert_eq!(va.attempts.len(), 2);
    assert_eq!(va.attempts[0].reason, Some(EndReason::Interrupted));
    assert_eq!(va.result, Some(json!("second try")));
    let vb = tokio::time::timeout(SOON, rt.wait(b))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(vb.state, JobState::Succeeded);
    assert_eq!(vb.result, Some(json!("queued one")));
}
