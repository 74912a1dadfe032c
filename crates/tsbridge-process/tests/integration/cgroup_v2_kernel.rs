//! The cgroup v2 path on a real kernel. Most production hosts are v2 only;
//! this project's machines have their controllers on v1 and a cgroup2 mount
//! without controllers (`/sys/fs/cgroup/unified`), where `Sandbox::new`
//! rightly picks v1. These tests put the sandbox on the cgroup2 directory of
//! the test process itself (`Sandbox::on_cgroup_v2_dir`), so what does not
//! need a controller runs against the kernel: a job created in its cgroup
//! at clone time (`CLONE_INTO_CGROUP`, also for a PID namespace's init),
//! the listing of its processes, the whole-tree kill through `cgroup.kill`
//! (a `setsid` daemon without tsbridge's marker included), CPU usage from
//! `cpu.stat`, and the removal of the job's and the parent's cgroups.
//! Limits (memory.max, pids.max, cpu.max) need controllers and stay
//! covered by the fake-cgroupfs unit tests of tsbridge-sandbox. Skipped
//! (with a message) where there is no writable cgroup2 mount.

use crate::common::{self, attach};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tsbridge_process::{JobSpecBuilder, SandboxAttachment, run, spawn};
use tsbridge_proto::EndReason;
use tsbridge_sandbox::{CgroupVersion, KillMethod, Sandbox, SandboxConfig, SandboxPolicy};

struct V2 {
    sb: Sandbox,
}

fn sandbox(name: &str) -> Option<V2> {
    let Some(own) = Sandbox::own_cgroup_v2_dir() else {
        eprintln!("SKIP: no cgroup2 mount");
        return None;
    };
    let cfg = SandboxConfig {
        cgroup_parent_name: format!("tsb-v2-{name}-{}", std::process::id()),
        // Not the test process: it shares its cgroup with the other tests.
        v2_move_self_to_leaf: false,
        ..SandboxConfig::default()
    };
    match Sandbox::on_cgroup_v2_dir(cfg, &own) {
        Ok(sb) => {
            assert_eq!(sb.capabilities().cgroups, CgroupVersion::V2);
            Some(V2 { sb })
        }
        Err(e) => {
            eprintln!(
                "SKIP: cannot use the cgroup2 directory {}: {e}",
                own.display()
            );
            None
        }
    }
}

/// The job cgroup's directory.
fn job_dir(a: &SandboxAttachment) -> PathBuf {
    a.prepared.cgroup().expect("the job has a cgroup").dirs()[0].to_path_buf()
}

/// Whether `/proc/<pid>/cgroup` text (`cgroup`) names `dir` as the v2 cgroup.
fn names_v2_cgroup(cgroup: &[u8], dir: &Path) -> bool {
    String::from_utf8_lossy(cgroup)
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .is_some_and(|rel| !rel.is_empty() && dir.ends_with(rel))
}

fn remove(a: SandboxAttachment) {
    if let Ok(p) = Arc::try_unwrap(a.prepared)
        && let Some(cg) = p.into_cgroup()
    {
        cg.remove().expect("the job's cgroup is removed");
    }
}

fn sh(script: &str) -> JobSpecBuilder {
    tsbridge_process::JobSpec::builder("/bin/sh")
        .args(["-c", script])
        .envs(common::base_env())
}

/// Starts a daemon that leaves the job's session and process group, drops
/// tsbridge's marker from its environment (`setsid`, a double fork, `env
/// -i`) and ignores SIGTERM (only a SIGKILL ends it), running as
/// `sleep-<m>`; waits until it has started, then sleeps.
fn daemon_then_sleep(m: &str, ready: &Path) -> String {
    let ready = ready.display();
    format!(
        r#"setsid sh -c 'exec env -i /bin/bash -c "trap \"\" TERM; touch {ready}; exec -a sleep-{m} sleep 1000" &' </dev/null >/dev/null 2>&1; "#
    ) + &format!("while [ ! -e {ready} ]; do sleep 0.01; done; exec sleep 1000")
}

/// SIGKILLs the test's daemons when dropped: they ignore SIGTERM, and a
/// failing test must not leave them behind.
struct Reap(String);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in common::running_as(&self.0) {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Starts the shell `script` in the sandbox `a`, timed out after 5 s (a
/// grace of 300 ms), as both kill tests do.
async fn spawn_timed(script: &str, a: &SandboxAttachment) -> tsbridge_process::RunningProcess {
    spawn(
        sh(script)
            .sandbox(Some(a.clone()))
            .timeout(Some(Duration::from_secs(5)))
            .kill_grace(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .await
    .unwrap()
}

/// Waits until the test's daemon `sleep-<m>` runs.
async fn await_daemon(m: &str) {
    let daemon = format!("sleep-{m}");
    assert!(
        common::eventually(Duration::from_secs(60), || !common::running_as(&daemon)
            .is_empty())
        .await,
        "the daemon never started"
    );
}

/// The end both kill tests share: `job` times out, its daemon `sleep-<m>`
/// dies with it, the job's cgroup empties (orphans leave it once the
/// host's init has reaped them), and its and the parent's cgroups are
/// removed.
async fn ends_by_timeout_with_nothing_left(
    job: tsbridge_process::RunningProcess,
    m: &str,
    v2: V2,
    a: SandboxAttachment,
) {
    let o = job.wait().await;
    assert_eq!(o.reason, EndReason::Timeout, "{o:?}");
    let daemon = format!("sleep-{m}");
    assert!(
        common::eventually(Duration::from_secs(60), || common::running_as(&daemon)
            .is_empty())
        .await,
        "the daemon outlived its job: {:?}",
        common::running_as(&daemon)
    );
    let cgroup = a.prepared.cgroup().unwrap();
    assert!(
        common::eventually(Duration::from_secs(60), || cgroup
            .pids()
            .is_ok_and(|p| p.is_empty()))
        .await,
        "the job's cgroup still lists {:?}",
        cgroup.pids()
    );
    let dir = job_dir(&a);
    remove(a);
    assert!(!dir.exists(), "{} is left", dir.display());
    v2.sb.remove_parent().expect("the parent cgroup is removed");
}

/// A job runs in its v2 cgroup (created there by the clone, or joined
/// before its exec where the kernel refuses that), and its cgroup and the
/// parent are removed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starts_in_its_v2_cgroup_and_its_cgroups_are_removed() {
    let Some(v2) = sandbox("start") else { return };
    assert_eq!(v2.sb.capabilities().kill, KillMethod::CgroupKill);
    let a = attach(&v2.sb, "start-1", SandboxPolicy::default());
    let dir = job_dir(&a);
    let o = run(sh("cat /proc/self/cgroup")
        .sandbox(Some(a.clone()))
        .timeout(Some(Duration::from_secs(60)))
        .build()
        .unwrap())
    .await
    .unwrap();
    assert!(o.success(), "{o:?}");
    assert!(
        names_v2_cgroup(&o.stdout.head, &dir),
        "{o:?} not in {}",
        dir.display()
    );
    remove(a);
    assert!(!dir.exists(), "{} is left", dir.display());
    v2.sb.remove_parent().expect("the parent cgroup is removed");
    let parent = dir.parent().unwrap();
    assert!(!parent.exists(), "{} is left", parent.display());
}

/// A timeout kills the whole job through `cgroup.kill`: a daemon that left
/// the job's process group and session, dropped tsbridge's marker and
/// ignores SIGTERM dies with it, found by nothing but the cgroup (this test
/// process is no subreaper: the daemon's parent is the host's init).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_a_hidden_daemon_through_cgroup_kill() {
    let Some(v2) = sandbox("kill") else { return };
    let m = format!("v2-daemon-{}", std::process::id());
    let _reap = Reap(format!("sleep-{m}"));
    let tmp = tempfile::tempdir().unwrap();
    let ready = tmp.path().join("ready");
    let a = attach(&v2.sb, "kill-1", SandboxPolicy::default());
    let job = spawn_timed(&daemon_then_sleep(&m, &ready), &a).await;
    await_daemon(&m).await;
    let daemon = common::running_as(&format!("sleep-{m}"));
    // The cgroup lists it (its own /proc/<pid>/cgroup agrees).
    let listed = a.prepared.cgroup().unwrap().pids().unwrap();
    assert!(listed.contains(&daemon[0]), "{listed:?} lacks {daemon:?}");
    ends_by_timeout_with_nothing_left(job, &m, v2, a).await;
}

/// `cpu.stat` (there without the cpu controller) gives the job's CPU time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_s_cpu_time_is_read_from_cpu_stat() {
    let Some(v2) = sandbox("cpu") else { return };
    assert!(v2.sb.capabilities().cpu_usage);
    let a = attach(&v2.sb, "cpu-1", SandboxPolicy::default());
    // At least 300 ms of CPU.
    let o = run(tsbridge_process::JobSpec::builder(common::node())
        .args([
            "-e",
            "const t = process.cpuUsage(); while (process.cpuUsage(t).user < 300000) {}",
        ])
        .envs(common::base_env())
        .sandbox(Some(a.clone()))
        .timeout(Some(Duration::from_secs(120)))
        .build()
        .unwrap())
    .await
    .unwrap();
    assert!(o.success(), "{o:?}");
    let stats = a.prepared.cgroup().unwrap().stats();
    let used = stats.cpu_usage_ns.expect("cpu.stat's usage_usec");
    assert!(used >= 300_000_000, "{used} ns < the 300 ms the job burned");
    remove(a);
    v2.sb.remove_parent().expect("the parent cgroup is removed");
}

/// With a PID namespace the init is the process created in the job's
/// cgroup (`CLONE_INTO_CGROUP`), so the init and the job both count there;
/// a timeout still ends everything, a hidden daemon of the namespace
/// included, and the cgroups go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_namespace_s_init_and_job_start_in_the_v2_cgroup() {
    let Some(v2) = sandbox("pidns") else { return };
    if !v2.sb.capabilities().pid_ns {
        eprintln!("SKIP: no PID namespaces");
        let _ = v2.sb.remove_parent();
        return;
    }
    let policy = SandboxPolicy {
        pid_namespace: true,
        ..SandboxPolicy::default()
    };
    let m = format!("v2-pidns-{}", std::process::id());
    let _reap = Reap(format!("sleep-{m}"));
    let tmp = tempfile::tempdir().unwrap();
    let ready = tmp.path().join("ready");
    let a = attach(&v2.sb, "pidns-1", policy.clone());
    let dir = job_dir(&a);
    let script = format!(
        "cat /proc/self/cgroup > {out}; {rest}",
        out = tmp.path().join("cgroup").display(),
        rest = daemon_then_sleep(&m, &ready)
    );
    let job = spawn_timed(&script, &a).await;
    let init = job.pid() as i32;
    await_daemon(&m).await;
    let listed = a.prepared.cgroup().unwrap().pids().unwrap();
    assert!(
        listed.contains(&init),
        "the init {init} is not in {listed:?}"
    );
    assert!(listed.len() >= 3, "init, job and daemon: {listed:?}");
    let seen = std::fs::read(tmp.path().join("cgroup")).unwrap();
    assert!(
        names_v2_cgroup(&seen, &dir),
        "{} not in {}",
        String::from_utf8_lossy(&seen),
        dir.display()
    );
    ends_by_timeout_with_nothing_left(job, &m, v2, a).await;
}
