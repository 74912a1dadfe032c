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
    // The job's cgroup went with it: the test's parent goes too.
    assert!(sb.wait_job_cgroups_released(std::time::Duration::from_secs(60)));
    sb.remove_parent()
        .expect("the test's parent cgroup is removed");
}

/// `sh -c STRAY x <pidfile>`: forks a `sleep 1000` (a task's stray), writes
/// its pid, then becomes a long-lived `sleep` (a pool worker's shape).
const STRAY: &str =
    r#"/bin/sleep 1000 & echo $! > "$1.tmp"; mv "$1.tmp" "$1"; exec /bin/sleep 1000"#;

/// A job with a stray, spawned, on a current-thread runtime: this returns
/// without yielding once `spawn` has, so the job's supervision task has not
/// been polled yet (it runs only when the test awaits something pending).
/// Waits without yielding (a blocking poll) for the stray's pid file and for
/// the leader's `exec` of `sleep` (by then the shell has reaped its `mv`: the
/// stray is the only descendant).
async fn spawned_with_a_stray() -> (RunningProcess, ProcessControl, i32, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("stray.pid");
    let control = ProcessControl::new();
    let spec = tsbridge_process::JobSpec::builder("/bin/sh")
        .arg("-c")
        .arg(STRAY)
        .arg("x")
        .arg(&pidfile)
        .envs(common::base_env())
        .monitor(None)
        .control(control.clone())
        .build()
        .unwrap();
    let process = spawn(spec).await.unwrap();
    let leader = process.pid();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let stray = loop {
        let stray = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let leader_sleeps = std::fs::read(format!("/proc/{leader}/cmdline"))
            .is_ok_and(|c| c == b"/bin/sleep\x001000\0");
        if let Some(pid) = stray.filter(|_| leader_sleeps) {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stray, or the leader never became a sleep"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(common::alive(stray));
    (process, control, stray, dir)
}

/// A sweep asked as soon as `spawn` returned searches the job: the job is
/// open to sweeps from `spawn`'s return, not from the first poll of its
/// supervision task (before: "found 0", and the stray outlived the sweep;
/// the flake of `hidden_escapee::the_per_task_sweep_kills_a_hidden_escapee`
/// on a loaded machine, where that task had not run yet either).
#[tokio::test(flavor = "current_thread")]
async fn a_sweep_right_after_spawn_kills_the_stray() {
    let (process, control, stray, _dir) = spawned_with_a_stray().await;
    let killed = control.kill_descendants().await;
    assert_eq!(killed, 1, "found {killed}");
    assert!(
        common::eventually(Duration::from_secs(30), || !common::alive(stray)).await,
        "the stray {stray} outlived the sweep"
    );
    assert!(
        common::alive(process.pid() as i32),
        "the leader keeps running"
    );
    control.cancel();
    let o = process.wait().await;
    assert_eq!(o.reason, tsbridge_proto::EndReason::Cancelled, "{o:?}");
}

/// The same for `keep_descendants` right after `spawn`: the stray is taken
/// as the leader's helper (before: 0 taken, and the next sweep killed it).
#[tokio::test(flavor = "current_thread")]
async fn a_keep_right_after_spawn_takes_the_helper() {
    let (process, control, stray, _dir) = spawned_with_a_stray().await;
    assert_eq!(control.keep_descendants().await, 1);
    assert_eq!(
        control.kill_descendants().await,
        0,
        "a helper is not a stray"
    );
    assert!(common::alive(stray));
    control.cancel();
    let o = process.wait().await;
    assert_eq!(o.reason, tsbridge_proto::EndReason::Cancelled, "{o:?}");
    assert!(
        common::eventually(Duration::from_secs(30), || !common::alive(stray)).await,
        "the helper {stray} outlived its job"
    );
}
