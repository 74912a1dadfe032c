//! `ProcessControl::kill_descendants`: a long-lived leader (a pool worker)
//! keeps running while everything its last task started, a setsid
//! double-fork daemon included, is killed; after the job, it answers 0.

use std::time::Duration;

use crate::common;

use tsbridge_process::{ProcessControl, spawn};
use tsbridge_proto::ChildEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_left_by_a_task_dies_and_the_leader_lives() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let control = ProcessControl::new();
    let spec = common::node_fixture("setsid-escape.js")
        .arg(&pidfile)
        .arg("stay")
        .control(control.clone())
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let leader = p.pid() as i32;
    let mut rx = p.take_events().unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(ChildEvent::Output { line, .. })) if line == "daemon started" => break,
            Ok(Some(_)) => {}
            other => panic!("no daemon: {other:?}"),
        }
    }
    let daemon: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(common::alive(daemon), "the daemon runs");

    let killed = control.kill_descendants().await;
    assert!(killed >= 1, "found {killed}");
    assert!(
        common::eventually(Duration::from_secs(30), || !common::alive(daemon)).await,
        "the daemon {daemon} outlived the sweep"
    );
    assert!(common::alive(leader), "the leader keeps running");
    // Nothing left: a second sweep finds nothing.
    assert_eq!(control.kill_descendants().await, 0);

    control.cancel();
    let o = p.wait().await;
    assert!(!common::alive(leader));
    assert_eq!(o.reason, tsbridge_proto::EndReason::Cancelled, "{o:?}");
    // After the job: answered at once.
    assert_eq!(control.kill_descendants().await, 0);
}

/// The same with a cgroup for the leader, as pool workers get one where the
/// host has cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cgroup_the_daemon_dies_and_the_leader_lives() {
    use std::sync::Arc;
    use tsbridge_process::SandboxAttachment;
    use tsbridge_sandbox::{Sandbox, SandboxConfig, SandboxPolicy};

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
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let control = ProcessControl::new();
    let spec = common::node_fixture("setsid-escape.js")
        .arg(&pidfile)
        .arg("stay")
        .control(control.clone())
        .sandbox(Some(SandboxAttachment {
            prepared: Arc::new(prepared),
            policy: Arc::new(policy),
        }))
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let leader = p.pid() as i32;
    let mut rx = p.take_events().unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(ChildEvent::Output { line, .. })) if line == "daemon started" => break,
            Ok(Some(_)) => {}
            other => panic!("no daemon: {other:?}"),
        }
    }
    let daemon: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(control.kill_descendants().await >= 1);
    assert!(
        common::eventually(Duration::from_secs(30), || !common::alive(daemon)).await,
        "the daemon {daemon} outlived the sweep"
    );
    assert!(common::alive(leader));
    assert_eq!(
        control.kill_descendants().await,
        0,
        "only the leader is left"
    );
    control.cancel();
    let _ = p.wait().await;
}
