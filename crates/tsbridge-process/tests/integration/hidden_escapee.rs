//! A hostile escapee without cgroups: a grandchild that double-forks,
//! `setsid()`s and execs with an empty environment (no `TSBRIDGE_JOB`
//! marker, not in the job's group or session, orphaned before the tracker
//! ever saw it) still dies with its job, because tsbridge is a child
//! subreaper (the escapee is reparented to it) and no other live job can own
//! it (its start time is before every other live job's window). The resource
//! monitor is off, so no tick can see the grandchild before it hides.
//!
//! And the other side: while another live job could own it, the escapee is
//! left alone, and it dies when that job ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common;

use tsbridge_process::{JobSpec, ProcessControl, RunningProcess, init_supervisor, spawn};
use tsbridge_proto::EndReason;

/// `sh -c SCRIPT escape <pidfile> <gofile> <then>`: a subshell starts the
/// escapee (`setsid env -i sleep 1000`, itself a grandchild of the leader),
/// writes its pid and exits, so the escapee is orphaned at once. Then the
/// leader either becomes a childless long-lived process (`stay`, a pool
/// worker's shape) or waits for `<gofile>` and exits 0 (`exit`).
const SCRIPT: &str = r#"
( setsid env -i /bin/sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > "$1.tmp"; mv "$1.tmp" "$1" )
if [ "$3" = stay ]; then exec /bin/sleep 1000; fi
while [ ! -e "$2" ]; do sleep 0.02; done
exit 0
"#;

struct Job {
    process: RunningProcess,
    control: ProcessControl,
    leader: i32,
    escapee: i32,
    go: PathBuf,
    _dir: tempfile::TempDir,
}

fn spec(args: &[&str], control: &ProcessControl) -> JobSpec {
    JobSpec::builder("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .args(args.iter().copied())
        .envs(common::base_env())
        .monitor(None)
        .kill_grace(Duration::from_secs(2))
        .control(control.clone())
        .build()
        .unwrap()
}

/// Field `n` (1-based, as in proc(5)) of /proc/<pid>/stat.
fn stat_field(pid: i32, n: usize) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(n - 3)?.parse().ok()
}

/// Whether `pid` has fully hidden: an empty environment, a session of its
/// own, and tsbridge (this test process) as its parent.
fn hidden(pid: i32) -> bool {
    let env_empty = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.is_empty());
    env_empty
        && stat_field(pid, 6) == Some(i64::from(pid))
        && stat_field(pid, 4) == Some(i64::from(std::process::id()))
}

async fn start(then: &str) -> Job {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    let go = dir.path().join("go");
    let control = ProcessControl::new();
    let spec = spec(
        &[
            "escape",
            pidfile.to_str().unwrap(),
            go.to_str().unwrap(),
            then,
        ],
        &control,
    );
    let process = spawn(spec).await.unwrap();
    let leader = process.pid() as i32;
    let escapee = read_pid(&pidfile).await;
    assert!(
        common::eventually(Duration::from_secs(30), || hidden(escapee)).await,
        "the escapee {escapee} never hid (environ cleared, own session, reparented to us)"
    );
    assert_ne!(
        stat_field(escapee, 5),
        Some(i64::from(leader)),
        "left the group"
    );
    Job {
        process,
        control,
        leader,
        escapee,
        go,
        _dir: dir,
    }
}

async fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    assert!(
        common::eventually(Duration::from_secs(30), || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        })
        .await,
        "no pid file {path:?}"
    );
    pid.unwrap()
}

async fn dies(pid: i32) -> bool {
    common::eventually(Duration::from_secs(30), || !common::alive(pid)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_escapee_dies_when_its_leader_exits() {
    init_supervisor().unwrap();
    let j = start("exit").await;
    std::fs::write(&j.go, b"").unwrap();
    let o = j.process.wait().await;
    assert_eq!(o.reason, EndReason::Exited, "{o:?}");
    assert!(o.exit.success(), "{o:?}");
    assert!(o.leaked_descendants_killed >= 1, "{o:?}");
    assert!(
        dies(j.escapee).await,
        "escapee {} outlived its job",
        j.escapee
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_escapee_dies_at_cancel() {
    init_supervisor().unwrap();
    let j = start("stay").await;
    j.control.cancel();
    let o = j.process.wait().await;
    assert_eq!(o.reason, EndReason::Cancelled, "{o:?}");
    assert!(!common::alive(j.leader));
    assert!(
        dies(j.escapee).await,
        "escapee {} outlived its job",
        j.escapee
    );
}

/// A pool worker's per-task sweep kills the hidden escapee of its last task
/// and leaves the worker running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_task_sweep_kills_a_hidden_escapee() {
    init_supervisor().unwrap();
    let j = start("stay").await;
    let killed = j.control.kill_descendants().await;
    assert!(killed >= 1, "found {killed}");
    assert!(
        dies(j.escapee).await,
        "escapee {} outlived the sweep",
        j.escapee
    );
    assert!(common::alive(j.leader), "the worker keeps running");
    assert_eq!(j.control.kill_descendants().await, 0);
    j.control.cancel();
    let _ = j.process.wait().await;
}

/// While another live job started before the escapee (it could be that
/// job's), the escapee's own job ending leaves it alone; it dies when that
/// other job ends, and a job started after it never claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escapee_another_live_job_may_own_lives_until_that_job_ends() {
    init_supervisor().unwrap();
    let older_control = ProcessControl::new();
    let older = spawn(
        JobSpec::builder("/bin/sleep")
            .arg("1000")
            .envs(common::base_env())
            .monitor(None)
            .control(older_control.clone())
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    // Start times are clock ticks (10 ms): make the escapee's clearly later.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let j = start("exit").await;
    std::fs::write(&j.go, b"").unwrap();
    let o = j.process.wait().await;
    assert_eq!(o.reason, EndReason::Exited, "{o:?}");
    assert!(
        common::alive(j.escapee),
        "the escapee may be the older job's: not killed while it runs"
    );

    // A job started after the escapee ends: it cannot own it, and the older
    // job still may: the escapee lives on.
    let newer = tsbridge_process::run(
        JobSpec::builder("/bin/true")
            .envs(common::base_env())
            .monitor(None)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(newer.leaked_descendants_killed, 0, "{newer:?}");
    assert!(common::alive(j.escapee));

    older_control.cancel();
    let o = older.wait().await;
    assert_eq!(o.reason, EndReason::Cancelled, "{o:?}");
    assert!(
        dies(j.escapee).await,
        "escapee {} outlived every job",
        j.escapee
    );
}
