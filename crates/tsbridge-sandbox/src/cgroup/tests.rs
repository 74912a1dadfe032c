//! Unit tests of the cgroup code against a fake cgroupfs (a tempdir).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::host::{CgroupHost, CgroupLimits, job_dir_name as jd};
use super::*;
use crate::policy::SandboxPolicy;
use crate::sandbox::Sandbox;

fn read(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// A fake v2 "own cgroup" offering cpu, io, memory and pids.
fn fake_v2() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let own = dir.path().join("system.slice/tsbridge.service");
    fs::create_dir_all(&own).expect("mkdir");
    fs::write(
        own.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .expect("write");
    (dir, own)
}

/// Fake v1 hierarchies under `base` (memory nested as on the development
/// host, cpu and cpuacct co-mounted), created.
fn fake_v1(base: &Path) -> Vec<(Vec<Controller>, PathBuf)> {
    let hier = vec![
        (
            vec![Controller::Memory],
            base.join("memory/process_api/abc"),
        ),
        (vec![Controller::Pids], base.join("pids")),
        (
            vec![Controller::Cpu, Controller::Cpuacct],
            base.join("cpu,cpuacct"),
        ),
        (vec![Controller::Freezer], base.join("freezer")),
    ];
    for (_, d) in &hier {
        fs::create_dir_all(d).expect("mkdir");
    }
    hier
}

#[test]
fn v2_setup_enables_controllers_down_to_the_parent() {
    let (_d, own) = fake_v2();
    let (host, notes) = CgroupHost::setup_v2(&own, "tsbridge", true, FsKind::Plain).expect("setup");
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        read(&own.join("cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    assert_eq!(
        read(&own.join("tsbridge/cgroup.subtree_control")),
        "+memory +pids +cpu"
    );
    assert!(
        host.has(Controller::Memory) && host.has(Controller::Pids) && host.has(Controller::Cpu)
    );
    assert_eq!(host.version(), CgroupVersion::V2);
}

#[test]
fn v2_setup_without_controllers_still_gives_a_host_for_kill_and_listing() {
    let (_d, own) = fake_v2();
    fs::write(own.join("cgroup.controllers"), "io\n").expect("write");
    let (host, _) = CgroupHost::setup_v2(&own, "tsbridge", true, FsKind::Plain).expect("setup");
    assert!(!host.has(Controller::Memory));
    let job = host
        .create_job(
            "k",
            &CgroupLimits {
                memory: Some(1),
                cpu: None,
                pids: None,
            },
        )
        .expect("job");
    assert!(!job.dirs()[0].join("memory.max").exists());
}

#[test]
fn v2_limits_are_written_in_v2_syntax() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    assert_eq!(sb.capabilities().cgroups, CgroupVersion::V2);
    assert!(sb.capabilities().memory && sb.capabilities().pids && sb.capabilities().cpu);
    let policy = SandboxPolicy {
        memory: Some(256 << 20),
        cpu: Some(0.5),
        pids: Some(64),
        ..SandboxPolicy::default()
    };
    let prepared = sb.prepare("a1", &policy).expect("prepare");
    let job = prepared.cgroup().expect("cgroup");
    let dir = own.join("tsbridge").join(jd("a1"));
    assert_eq!(job.dirs(), vec![dir.as_path()]);
    assert_eq!(read(&dir.join("memory.max")), "268435456");
    assert_eq!(read(&dir.join("memory.swap.max")), "0");
    assert_eq!(read(&dir.join("memory.oom.group")), "1");
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(&dir.join("pids.max")), "64");
    assert_eq!(prepared.report().memory, crate::Enforcement::Enforced);
    // the same key twice is refused
    assert!(matches!(
        sb.prepare("a1", &policy),
        Err(crate::SandboxError::JobExists { .. })
    ));
    prepared
        .into_cgroup()
        .expect("cgroup")
        .remove()
        .expect("remove");
    assert!(!dir.exists());
}

#[test]
fn v2_stats_are_parsed() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    let job = sb
        .prepare("s", &SandboxPolicy::default())
        .expect("prepare")
        .into_cgroup()
        .expect("cgroup");
    let dir = job.dirs()[0].to_path_buf();
    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n",
    )
    .expect("w");
    fs::write(dir.join("memory.peak"), "268435456\n").expect("w");
    fs::write(dir.join("memory.current"), "4096\n").expect("w");
    fs::write(dir.join("pids.events"), "max 39\n").expect("w");
    fs::write(dir.join("pids.peak"), "64\n").expect("w");
    fs::write(dir.join("pids.current"), "3\n").expect("w");
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 1556000\nuser_usec 1500000\nsystem_usec 56000\nnr_periods 31\nnr_throttled 30\nthrottled_usec 1514514\n",
    )
    .expect("w");
    let s = job.stats();
    assert_eq!(
        s,
        CgroupStats {
            memory_peak: Some(268_435_456),
            memory_current: Some(4096),
            oom_kills: Some(1),
            pids_current: Some(3),
            pids_peak: Some(64),
            pids_max_events: Some(39),
            cpu_usage_ns: Some(1_556_000_000),
            cpu_nr_throttled: Some(30),
            cpu_throttled_ns: Some(1_514_514_000),
        }
    );
    assert_eq!(
        s.breach(&SandboxPolicy::default(), Some(libc::SIGKILL)),
        Some(LimitBreach::Memory)
    );
}

#[test]
fn v2_kill_uses_cgroup_kill_and_pids_are_listed_recursively() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    let job = sb
        .prepare("k", &SandboxPolicy::default())
        .expect("prepare")
        .into_cgroup()
        .expect("cgroup");
    let dir = job.dirs()[0].to_path_buf();
    fs::write(dir.join("cgroup.procs"), "34\n12\n").expect("w");
    fs::create_dir(dir.join("nested")).expect("mkdir");
    fs::write(dir.join("nested/cgroup.procs"), "56\n12\n").expect("w");
    assert_eq!(job.pids().expect("pids"), vec![12, 34, 56]);

    fs::write(dir.join("cgroup.procs"), "").expect("w");
    fs::write(dir.join("nested/cgroup.procs"), "").expect("w");
    fs::write(dir.join("cgroup.kill"), "0").expect("w");
    job.kill_all().expect("kill");
    assert_eq!(read(&dir.join("cgroup.kill")), "1");
    job.remove().expect("remove");
    assert!(!dir.exists());
}

#[test]
fn v2_sweep_removes_stale_jobs_only() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    for k in ["x", "y"] {
        let j = sb.prepare(k, &SandboxPolicy::default()).expect("prepare");
        drop(j.into_cgroup()); // "crash": a dropped JobCgroup stays
    }
    fs::create_dir(own.join("tsbridge/not-a-job")).expect("mkdir");
    for k in ["x", "y"] {
        assert!(own.join("tsbridge").join(jd(k)).exists(), "{k}");
    }
    assert_eq!(sb.sweep_stale().expect("sweep"), 2);
    assert!(!own.join("tsbridge").join(jd("x")).exists());
    assert!(!own.join("tsbridge").join(jd("y")).exists());
    assert!(own.join("tsbridge/not-a-job").exists());
}

#[test]
fn dropping_a_prepared_sandbox_removes_its_cgroup() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    let p = sb.prepare("d", &SandboxPolicy::default()).expect("prepare");
    let dir = own.join("tsbridge").join(jd("d"));
    assert!(dir.exists());
    drop(p);
    assert!(!dir.exists());
}

#[test]
fn v1_limits_and_stats_use_v1_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = |n: &str| dir.path().join(n);
    let hier = fake_v1(dir.path());
    let (host, _) = CgroupHost::setup_v1(&hier, "tsbridge", FsKind::Plain).expect("setup");
    let job = host
        .create_job(
            "j",
            &CgroupLimits {
                memory: Some(128 << 20),
                cpu: Some(0.25),
                pids: Some(32),
            },
        )
        .expect("job");
    let mem = h("memory/process_api/abc/tsbridge").join(jd("j"));
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), "134217728");
    assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "134217728");
    let cpu = h("cpu,cpuacct/tsbridge").join(jd("j"));
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "25000");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(
        read(&h("pids/tsbridge").join(jd("j")).join("pids.max")),
        "32"
    );

    fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    )
    .expect("w");
    fs::write(mem.join("memory.max_usage_in_bytes"), "134217728\n").expect("w");
    fs::write(
        h("pids/tsbridge").join(jd("j")).join("pids.events"),
        "max 7\n",
    )
    .expect("w");
    fs::write(cpu.join("cpuacct.usage"), "1555000000\n").expect("w");
    fs::write(
        cpu.join("cpu.stat"),
        "nr_periods 31\nnr_throttled 31\nthrottled_time 1514514643\n",
    )
    .expect("w");
    let s = job.stats();
    assert_eq!(s.oom_kills, Some(1));
    assert_eq!(s.memory_peak, Some(134_217_728));
    assert_eq!(s.pids_max_events, Some(7));
    assert_eq!(s.cpu_usage_ns, Some(1_555_000_000));
    assert_eq!(s.cpu_throttled_ns, Some(1_514_514_643));

    // freezer kill on an (already) empty job: FROZEN then THAWED
    for d in job.dirs() {
        fs::write(d.join("cgroup.procs"), "").expect("w");
    }
    job.kill_all().expect("kill");
    assert_eq!(
        read(&h("freezer/tsbridge").join(jd("j")).join("freezer.state")),
        "THAWED"
    );
    assert_eq!(host.sweep().expect("sweep"), 1);
    assert!(!mem.exists());
}

#[test]
fn v2_without_cgroup_kill_falls_back_to_freeze_kill_thaw() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    let job = sb
        .prepare("f", &SandboxPolicy::default())
        .expect("prepare")
        .into_cgroup()
        .expect("cgroup");
    let dir = job.dirs()[0].to_path_buf();
    fs::write(dir.join("cgroup.procs"), "").expect("w");
    fs::write(dir.join("cgroup.freeze"), "0").expect("w");
    fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 1\n").expect("w");
    job.kill_all().expect("kill");
    assert_eq!(read(&dir.join("cgroup.freeze")), "0", "thawed again");
    assert!(!dir.join("cgroup.kill").exists());
    job.remove().expect("remove");
}

/// Runs `/bin/true` with `prepared` applied between fork and exec; its pid.
fn run_child(prepared: &crate::PreparedSandbox) -> u32 {
    run_child_with(prepared, |h| {
        // SAFETY: called in the forked child before exec (see run_child_with).
        unsafe { h.apply() }
    })
}

/// Runs `/bin/true` with `apply` (one of the hook's ways) between fork and
/// exec; its pid.
fn run_child_with(
    prepared: &crate::PreparedSandbox,
    apply: fn(&crate::ChildHook) -> std::io::Result<()>,
) -> u32 {
    use std::os::unix::process::CommandExt;
    let hook = prepared.child_hook();
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: the hook runs in the forked child before exec, its contract;
    // it only makes raw syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || apply(&hook));
    }
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    assert!(child.wait().expect("wait").success());
    pid
}

/// On v1 the child joins each hierarchy by writing `0` to `tasks` (it moves
/// itself: one thread, the whole process before exec), never its pid to
/// `cgroup.procs`: a pid, or `cgroup.procs` at all, makes the kernel take
/// its global threadgroup lock, whose writer waits for an RCU grace period
/// (13-16 ms per job on the v1 development host).
#[test]
fn a_v1_child_joins_through_tasks_by_moving_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hier = fake_v1(dir.path());
    let sb = Sandbox::with_fake_v1(&hier, "tsbridge").expect("sandbox");
    let prepared = sb.prepare("t", &SandboxPolicy::default()).expect("prepare");
    run_child(&prepared);
    let job = prepared.into_cgroup().expect("cgroup");
    assert_eq!(job.dirs().len(), 4);
    for d in job.dirs() {
        assert_eq!(read(&d.join("tasks")), "0", "{}", d.display());
        assert!(!d.join("cgroup.procs").exists(), "{}", d.display());
    }
    job.remove().expect("remove");
}

/// On v2 the child still joins by writing its pid to `cgroup.procs`.
#[test]
fn a_v2_child_joins_through_cgroup_procs_with_its_pid() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    let prepared = sb.prepare("p", &SandboxPolicy::default()).expect("prepare");
    let pid = run_child(&prepared);
    let job = prepared.into_cgroup().expect("cgroup");
    let d = job.dirs()[0].to_path_buf();
    assert_eq!(read(&d.join("cgroup.procs")), pid.to_string());
    assert!(!d.join("tasks").exists());
    job.remove().expect("remove");
}

/// On v2 the plan offers the job's directory, for the engine to create the
/// child in it (`clone3(CLONE_INTO_CGROUP)`); a child created there
/// (`apply_in_cgroup`) joins nothing, so writes nothing to `cgroup.procs`.
/// v1 offers no directory.
#[test]
fn a_v2_plan_offers_its_directory_and_a_child_created_in_it_writes_nothing() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    let prepared = sb.prepare("c", &SandboxPolicy::default()).expect("prepare");
    let fd = prepared
        .child_hook()
        .cgroup_v2_dir()
        .expect("a v2 directory");
    let d = prepared.cgroup().expect("cgroup").dirs()[0].to_path_buf();
    let named = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink");
    assert_eq!(named, d);
    run_child_with(&prepared, |h| {
        // SAFETY: called in the forked child before exec (see run_child_with).
        unsafe { h.apply_in_cgroup() }
    });
    assert_eq!(read(&d.join("cgroup.procs")), "", "the child wrote nothing");
    drop(fd);
    prepared
        .into_cgroup()
        .expect("cgroup")
        .remove()
        .expect("remove");

    let dir = tempfile::tempdir().expect("tempdir");
    let sb = Sandbox::with_fake_v1(&fake_v1(dir.path()), "tsbridge").expect("sandbox");
    let prepared = sb
        .prepare("c1", &SandboxPolicy::default())
        .expect("prepare");
    assert!(prepared.child_hook().cgroup_v2_dir().is_none());
    prepared
        .into_cgroup()
        .expect("cgroup")
        .remove()
        .expect("remove");
}

/// The sandbox counts the job cgroups it made until their handles go (a
/// prepared sandbox's drop removes its cgroup first), and a shutdown's
/// wait ends when the last one went, on another thread too; then the
/// parent can be removed.
#[test]
fn the_wait_for_job_cgroups_ends_when_the_last_is_removed() {
    let (_d, own) = fake_v2();
    let sb = Sandbox::with_fake_v2(&own, "tsbridge").expect("sandbox");
    assert!(sb.wait_job_cgroups_released(Duration::ZERO));
    let a = sb
        .prepare("w1", &SandboxPolicy::default())
        .expect("prepare");
    let b = sb
        .prepare("w2", &SandboxPolicy::default())
        .expect("prepare")
        .into_cgroup()
        .expect("cgroup");
    assert_eq!(sb.live_job_cgroups(), 2);
    assert!(!sb.wait_job_cgroups_released(Duration::from_millis(1)));
    b.remove().expect("remove");
    assert_eq!(sb.live_job_cgroups(), 1);
    let dir = own.join("tsbridge").join(jd("w1"));
    assert!(dir.exists());
    let t = std::thread::spawn(move || drop(a));
    assert!(sb.wait_job_cgroups_released(Duration::from_secs(60)));
    assert!(!dir.exists(), "released before its cgroup was removed");
    t.join().expect("join");
    sb.remove_parent().expect("the parent goes");
    assert!(!own.join("tsbridge").exists());
}
