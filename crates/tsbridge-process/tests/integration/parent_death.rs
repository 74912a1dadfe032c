//! When the tsbridge process (here the engine probe) is SIGKILLed, its job's
//! direct child dies with it (PR_SET_PDEATHSIG, which survives exec). The
//! job's descendants — a grandchild and a setsid escapee — are not covered by
//! the parent-death signal without cgroups; the next tsbridge's startup sweep
//! (`sweep_orphans`, by the TSBRIDGE_OWNER tag) ends them. Here without the
//! death watchdog, which ends them at once (`parent_death_watchdog.rs`): the
//! sweep is what remains when the watchdog was killed too.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_dies_with_its_parent_and_sweep_ends_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids.json");
    let mut probe = Command::new(env!("CARGO_BIN_EXE_tsbridge-engine-probe"))
        .args(["--subreaper", "--no-watchdog", "--"])
        .arg(common::node())
        .arg(common::fixture("tree.js"))
        .arg(&pidfile)
        .stdout(Stdio::null())
        .spawn()
        .expect("probe");
    let pids = common::read_pidfile(&pidfile).await;
    let leader = pids["leader"].as_i64().unwrap() as i32;
    let grandchild = pids["grandchild"].as_i64().unwrap() as i32;
    let escapee = pids["escapee"].as_i64().unwrap() as i32;
    for p in [leader, grandchild, escapee] {
        assert!(common::alive(p));
    }
    probe.kill().unwrap();
    probe.wait().unwrap();

    assert!(
        common::eventually(Duration::from_secs(30), || !common::alive(leader)).await,
        "the direct child survived its parent's death"
    );

    // What survives depends on what else ran them (documented); the sweep a
    // restarted tsbridge runs ends every one of them.
    let killed = tsbridge_process::sweep_orphans();
    assert!(killed >= 2, "sweep killed {killed}");
    assert!(
        common::eventually(Duration::from_secs(30), || {
            !common::alive(grandchild) && !common::alive(escapee)
        })
        .await,
        "sweep left descendants alive (killed {killed})"
    );
}
