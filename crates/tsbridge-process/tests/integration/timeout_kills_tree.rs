//! A timeout ends a SIGTERM-ignoring leader, its SIGTERM-ignoring grandchild
//! and a setsid-escaped double-fork daemon: nothing of the job is alive
//! afterwards, and the reason is Timeout. Twice: with tsbridge as child
//! subreaper, and without it (init_supervisor not called: the daemon then
//! lives under PID 1 and the terminator falls back to a full /proc scan for
//! the job's marker). nextest runs each test in its own process, so the
//! subreaper of one never leaks into the other.

use crate::common;

use std::time::{Duration, Instant};

use tsbridge_process::{ExitKind, init_supervisor, run};
use tsbridge_proto::EndReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_whole_tree_including_setsid_escapee() {
    let info = init_supervisor().expect("subreaper");
    assert!(info.subreaper);
    timeout_kills_the_tree().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_whole_tree_without_subreaper() {
    timeout_kills_the_tree().await;
}

async fn timeout_kills_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids.json");
    let grace = Duration::from_millis(500);
    let spec = common::node_fixture("tree.js")
        .arg(&pidfile)
        .timeout(Some(Duration::from_secs(8)))
        .kill_grace(grace)
        .build()
        .unwrap();
    let key = spec.key().to_string();
    let job = tokio::spawn(run(spec));
    let pids = common::read_pidfile(&pidfile).await;
    let pids: Vec<i32> = ["leader", "grandchild", "escapee"]
        .iter()
        .map(|k| pids[k].as_i64().expect("pid") as i32)
        .collect();
    for p in &pids {
        assert!(common::alive(*p), "{p} should be alive before the timeout");
    }
    let t0 = Instant::now();
    let outcome = job.await.unwrap().unwrap();
    // Generous functional bound: timeout (8 s) + grace + slack for a loaded machine.
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(outcome.reason, EndReason::Timeout);
    assert_eq!(outcome.exit, ExitKind::Signal(libc::SIGKILL));
    for p in &pids {
        assert!(!common::alive(*p), "{p} survived the timeout");
    }
    assert_eq!(common::marked(&key), Vec::<i32>::new());
}
