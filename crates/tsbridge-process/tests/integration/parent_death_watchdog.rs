//! Regression (SPEC §4, "if tsbridge is SIGKILLed, its children die with
//! it"): when the process running the engine (here the engine probe, with
//! `init_supervisor`'s death watchdog) is SIGKILLed, not only its job's
//! direct child (parent-death signal) but also the job's grandchild and its
//! `setsid` escapee die at once, without waiting for a later tsbridge's
//! startup sweep. Before the watchdog both lived on.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_host_takes_its_jobs_whole_trees_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids.json");
    let mut probe = Command::new(env!("CARGO_BIN_EXE_tsbridge-engine-probe"))
        .args(["--subreaper", "--"])
        .arg(common::node())
        .arg(common::fixture("tree.js"))
        .arg(&pidfile)
        .stdout(Stdio::null())
        .spawn()
        .expect("probe");
    let pids = common::read_pidfile(&pidfile).await;
    let tree: Vec<(&str, i32)> = ["leader", "grandchild", "escapee"]
        .into_iter()
        .map(|who| (who, pids[who].as_i64().unwrap() as i32))
        .collect();
    for (who, pid) in &tree {
        assert!(common::alive(*pid), "{who} is up");
    }
    probe.kill().unwrap();
    probe.wait().unwrap();
    let mut survivors = Vec::new();
    for (who, pid) in tree {
        if !common::eventually(Duration::from_secs(30), || !common::alive(pid)).await {
            survivors.push((who, pid));
        }
    }
    for (_, pid) in &survivors {
        // SAFETY: kill(2) of a process this test started (clean-up).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(
        survivors.is_empty(),
        "outlived the SIGKILLed host: {survivors:?}"
    );
}
