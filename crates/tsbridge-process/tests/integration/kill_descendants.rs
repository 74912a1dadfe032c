//! `ProcessControl::kill_descendants`: a long-lived leader (a pool worker)
//! keeps running while everything its last task started, a setsid
//! double-fork daemon included, is killed; after the job, it answers 0.

use std::sync::Arc;
use std::time::Duration;

use crate::common;

use tsbridge_process::{ProcessControl, RunningProcess, SandboxAttachment, spawn};
use tsbridge_proto::ChildEvent;
use tsbridge_sandbox::{Sandbox, SandboxConfig, SandboxPolicy};

/// A running `setsid-escape.js stay` (a leader that left a setsid daemon
/// behind, as a pool worker's task might), once the daemon started.
struct Leader {
    process: RunningProcess,
    control: ProcessControl,
    pid: i32,
    daemon: i32,
    _dir: tempfile::TempDir,
}

async fn leader_with_a_daemon(sandbox: Option<SandboxAttachment>) -> Leader {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let control = ProcessControl::new();
    let spec = common::node_fixture("setsid-escape.js")
        .arg(&pidfile)
        .arg("stay")
        .control(control.clone())
        .sandbox(sandbox)
        .build()
        .unwrap();
    let mut process = spawn(spec).await.unwrap();
    let pid = process.pid() as i32;
    let mut rx = process.take_events().unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(ChildEvent::Output { line, .. })) if line == "daemon started" => break,
            Ok(Some(_)) => {}
            other => panic!("no daemon: {other:?}"),
        }
    }
    let daemon = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Leader {
        process,
        control,
        pid,
        daemon,
        _dir: dir,
    }
}

/// The sweep kills the daemon, not the leader; a second finds nothing.
async fn sweep_kills_the_daemon_only(l: &Leader) {
    let (daemon, leader) = (l.daemon, l.pid);
    assert!(common::alive(daemon), "the daemon runs");
    let killed = l.control.kill_descendants().await;
    assert!(killed >= 1, "found {killed}");
    assert!(
        common::eventually(Duration::from_secs(30), || !common::alive(daemon)).await,
        "the daemon {daemon} outlived the sweep"
    );
    assert!(common::alive(leader), "the leader keeps running");
    assert_eq!(
        l.control.kill_descendants().await,
        0,
        "only the leader is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_left_by_a_task_dies_and_the_leader_lives() {
    let l = leader_with_a_daemon(None).await;
    sweep_kills_the_daemon_only(&l).await;

    l.control.cancel();
    let o = l.process.wait().await;
    assert!(!common::alive(l.pid));
    assert_eq!(o.reason, tsbridge_proto::EndReason::Cancelled, "{o:?}");
    // After the job: answered at once.
    assert_eq!(l.control.kill_descendants().await, 0);
}

/// The same with a cgroup for the leader, as pool workers get one where the
/// host has cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cgroup_the_daemon_dies_and_the_leader_lives() {
    let sb = match Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsb-sweep-test-{}", std::process::id()),
        ..SandboxConfig::default()
    }) {
        Ok(s) if s.capabilities().pids => s,
        other => {
            eprintln!(
                "SKIP: no cgroups here: {:?}",
                other.map(|s| s.capabilities().notes.clone())
            );
            return;
        }
    };
    let policy = SandboxPolicy::default();
    let prepared = sb.prepare("sweep-1", &policy).expect("prepare");
    let l = leader_with_a_daemon(Some(SandboxAttachment {
        prepared: Arc::new(prepared),
        policy: Arc::new(policy),
    }))
    .await;
    sweep_kills_the_daemon_only(&l).await;
    l.control.cancel();
    let _ = l.process.wait().await;
}
