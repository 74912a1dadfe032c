//! `limits.pid_namespace` in pool mode: each warm worker runs under an init
//! of its own in a PID namespace of its own (docs/design/pid-namespace.md,
//! "Pool workers"). A job sees the worker's processes only in /proc; the
//! per-job sweep kills what a job left but spares the worker and its init
//! (the next job runs on the same worker); a SIGKILLed worker is a crash
//! that takes its whole namespace with it; a shutdown leaves nothing of
//! any namespace. Real node workers (tsx), real processes, checked in the
//! host's /proc. Skipped (said) where tsbridge cannot make PID namespaces
//! (not root) or tsx is not installed.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common::OwnParent;
use crate::pool_support::*;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tsbridge_process::SandboxAttachment;
use tsbridge_runtime::pool::{Pool, PoolJobError, WorkerExit, WorkerSandbox, WorkerSpec};
use tsbridge_sandbox::{Sandbox, SandboxConfig, SandboxPolicy};

/// A sandbox (own cgroup parent, removed by the [`OwnParent`]) that can
/// make PID namespaces, or `None` (said).
fn sandbox(name: &str) -> Option<(Arc<Sandbox>, OwnParent)> {
    let sb = match Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsb-poolpidns-{name}-{}", std::process::id()),
        ..SandboxConfig::default()
    }) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("SKIP: no sandbox on this host: {e}");
            return None;
        }
    };
    let parent = OwnParent(sb.clone());
    if !sb.capabilities().pid_ns {
        eprintln!("SKIP: no PID namespaces: {:?}", sb.capabilities().notes);
        return None;
    }
    Some((sb, parent))
}

/// The `pidns.ts` worker (tsx), each worker sandboxed with `pid_namespace`
/// as given.
fn spec(sb: &Arc<Sandbox>, pid_namespace: bool, dir: &Path) -> Option<WorkerSpec> {
    let tsx = tsx_loader()?;
    let mut spec = tsx_worker("pidns", "pidns.ts", tsx, dir);
    let sb = sb.clone();
    spec.sandbox = Some(WorkerSandbox(Arc::new(move |key, _host| {
        let policy = SandboxPolicy {
            pid_namespace,
            ..SandboxPolicy::default()
        };
        let prepared = sb
            .prepare(key.as_str(), &policy)
            .map_err(|e| e.to_string())?;
        Ok(Some(SandboxAttachment {
            prepared: Arc::new(prepared),
            policy: Arc::new(policy),
        }))
    })));
    Some(spec)
}

/// Unique sleep durations (`sleep 7001.<pid><n>`): they name the processes
/// a test starts in the host's /proc.
fn marks(n: u32) -> Vec<String> {
    (1..=2)
        .map(|i| format!("{}.{}{n}", 7000 + i, std::process::id()))
        .collect()
}

fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_owned(),
    )
}

fn host_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live host processes running `sleep <mark>`.
fn sleeping(mark: &str) -> Vec<i32> {
    let want = format!("sleep {mark}");
    host_pids()
        .into_iter()
        .filter(|p| alive(*p as u32) && cmdline(*p).as_deref() == Some(want.as_str()))
        .collect()
}

/// The PID namespace of a process (`pid:[inode]`).
fn pid_ns(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// Live host processes in the PID namespace `ns`, as (host pid, its pid in
/// the namespace: the last `NSpid`).
fn members(ns: &str) -> Vec<(i32, i32)> {
    host_pids()
        .into_iter()
        .filter(|p| alive(*p as u32) && pid_ns(*p as u32).as_deref() == Some(ns))
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .split_whitespace()
                .last()?
                .parse()
                .ok()?;
            Some((p, inner))
        })
        .collect()
}

fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The host's view of one worker: its pid (what the pool reports), its
/// init (its parent) and its namespace.
struct Seen {
    worker: u32,
    init: u32,
    ns: String,
}

fn seen(out: &tsbridge_runtime::pool::PoolOutcome) -> Seen {
    let worker = out.pid.expect("the worker's pid");
    let init = ppid(worker);
    assert_eq!(
        comm(init),
        "tsbridge-init",
        "the worker runs under the init"
    );
    let ns = pid_ns(worker).unwrap();
    assert_eq!(pid_ns(init).as_deref(), Some(ns.as_str()));
    assert_ne!(pid_ns(std::process::id()).as_deref(), Some(ns.as_str()));
    Seen { worker, init, ns }
}

async fn start_pool(spec: WorkerSpec) -> Pool {
    start(spec, config(1, 1)).await.unwrap()
}

fn procs(out: &tsbridge_runtime::pool::PoolOutcome) -> Vec<(i64, String)> {
    listed(out.result.as_ref().unwrap_or_else(|e| panic!("{e:?}")))
}

/// The `procs` of a `list` job's result: (pid, command line) as it saw them.
fn listed(v: &Value) -> Vec<(i64, String)> {
    v["procs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_i64().unwrap(),
                p["cmdline"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A hostile job of a pool workflow with `limits.pid_namespace = true`
/// (the config, the runtime, the pool and the engine as `tsbridge serve`
/// runs them) lists /proc: it sees the worker's processes only (the init as
/// pid 1, the worker as pid 2, what tsx started), not a process started
/// outside; the same job of a workflow without the key sees that process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_job_sees_only_its_workers_namespace_in_proc() {
    let Some((sb, _parent)) = sandbox("list") else {
        return;
    };
    if tsx_loader().is_none() {
        return;
    }
    let mark = marks(1).remove(0);
    let mut outside = std::process::Command::new("sleep")
        .arg(&mark)
        .spawn()
        .unwrap();
    let want = format!("sleep {mark}");
    let wf = |name: &str, limits: &str| {
        format!(
            "[workflows.{name}]\nroot = \"{}\"\nscript = \"pidns.ts\"\nruntime = \"tsx\"\n\
             mode = \"pool\"\nlimits = {{ {limits} }}\npool = {{ min = 1, max = 1 }}\n",
            fixtures().display()
        )
    };
    let toml = wf("own", "pid_namespace = true") + &wf("plain", "pids = 1000");
    let h = crate::common::start_with(
        &toml,
        tsbridge_runtime::RuntimeOptions {
            sandbox: Some(sb.clone()),
            ..Default::default()
        },
    )
    .await;
    let list = |v: &tsbridge_proto::api::JobView| {
        listed(
            v.result
                .as_ref()
                .unwrap_or_else(|| panic!("no result: {v:?}")),
        )
    };

    let v = h.wait(h.submit("own", json!({"mode": "list"})).await).await;
    let worker = v.process_id.expect("the worker's pid");
    let ns = pid_ns(worker).unwrap();
    assert_eq!(
        comm(ppid(worker)),
        "tsbridge-init",
        "the worker runs under the init"
    );
    assert_ne!(pid_ns(std::process::id()), Some(ns.clone()));
    let listed = list(&v);
    assert!(
        listed.iter().all(|(_, c)| *c != want),
        "the job saw a process outside its namespace: {listed:?}"
    );
    let pids: BTreeSet<i64> = listed.iter().map(|(p, _)| *p).collect();
    let host: BTreeSet<i64> = members(&ns).iter().map(|(_, p)| i64::from(*p)).collect();
    assert_eq!(pids, host, "exactly the namespace's processes: {listed:?}");
    assert!(
        listed.contains(&(1, "tsbridge-init".to_owned())),
        "{listed:?}"
    );
    assert_eq!(
        v.result.as_ref().unwrap()["pid"],
        json!(2),
        "the worker is pid 2"
    );

    let v = h
        .wait(h.submit("plain", json!({"mode": "list"})).await)
        .await;
    assert!(
        list(&v).iter().any(|(_, c)| *c == want),
        "without the namespace the job sees the host's processes"
    );
    h.rt.shutdown(Duration::from_secs(10)).await;
    eventually("nothing of the namespace is left", || {
        members(&ns).is_empty()
    })
    .await;
    outside.kill().unwrap();
    outside.wait().unwrap();
}

/// A job leaves a child and a setsid daemon (an orphan of the namespace,
/// the init's child now): the sweep after the job kills both; the worker
/// and its init survive, and the next job runs on the same worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_kills_what_a_job_left_and_spares_the_worker_and_its_init() {
    let Some((sb, _parent)) = sandbox("sweep") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(own) = spec(&sb, true, dir.path()) else {
        return;
    };
    let pool = start_pool(own).await;
    let marks = marks(2);
    let first = run(&pool, json!({"mode": "leave", "marks": marks})).await;
    assert!(first.result.is_ok(), "{:?}", first.result);
    let s = seen(&first);
    for m in &marks {
        eventually("what the job left is killed", || sleeping(m).is_empty()).await;
    }
    assert!(alive(s.worker), "the worker survives the sweep");
    assert!(alive(s.init), "its init survives the sweep");

    let next = run(&pool, json!({"mode": "list"})).await;
    assert_eq!(
        next.worker, first.worker,
        "the next job ran on the same worker"
    );
    assert_eq!(next.pid, first.pid);
    let left: Vec<_> = procs(&next)
        .into_iter()
        .filter(|(_, c)| marks.iter().any(|m| c.contains(m.as_str())))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(pool.stats().crashed_total, 0);
    pool.shutdown(Duration::from_secs(10)).await;
}

/// A worker recycled after its job (`max_jobs = 1`) takes its namespace
/// with it (its channel closed, it exits, its init passes that on and
/// ends), the job's leftovers included; the next job gets a new worker in a
/// new namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_worker_leaves_nothing_of_its_namespace() {
    let Some((sb, _parent)) = sandbox("recycle") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(own) = spec(&sb, true, dir.path()) else {
        return;
    };
    let mut cfg = config(1, 1);
    cfg.max_jobs = Some(1);
    let pool = start(own, cfg).await.unwrap();
    let first = run(&pool, json!({"mode": "list"})).await;
    let s = seen(&first);
    eventually("the pool recycles the worker", || {
        pool.stats().recycled_total == 1
    })
    .await;
    eventually("nothing of the namespace is left", || {
        members(&s.ns).is_empty()
    })
    .await;
    assert!(!alive(s.worker) && !alive(s.init));
    let next = run(&pool, json!({"mode": "list"})).await;
    assert_ne!(next.worker, first.worker, "a new worker");
    assert_ne!(seen(&next).ns, s.ns, "in a namespace of its own");
    assert_eq!(pool.stats().crashed_total, 0, "a recycle is no crash");
    pool.shutdown(Duration::from_secs(10)).await;
}

/// A pool (one worker, in a namespace) whose second job holds (until a
/// file that never comes) with processes left in the namespace, once they
/// run: what the crash and the shutdown tests start from. `None`: skipped.
struct Held {
    pool: Pool,
    first: tsbridge_runtime::pool::PoolOutcome,
    seen: Seen,
    marks: Vec<String>,
    job: tokio::task::JoinHandle<tsbridge_runtime::pool::PoolOutcome>,
    _dir: tempfile::TempDir,
    /// Last: the parent cgroup goes once the pool has shut down.
    _sandbox: (Arc<Sandbox>, OwnParent),
}

async fn held_job(name: &str, n: u32) -> Option<Held> {
    let sandbox = sandbox(name)?;
    let dir = tempfile::tempdir().unwrap();
    let pool = start_pool(spec(&sandbox.0, true, dir.path())?).await;
    let first = run(&pool, json!({"mode": "list"})).await;
    let seen = seen(&first);
    let marks = marks(n);
    let job = {
        let pool = pool.clone();
        let params = json!({"mode": "hold", "marks": marks, "file": dir.path().join("never")});
        tokio::spawn(async move { run(&pool, params).await })
    };
    for m in &marks {
        eventually("the job's processes run", || !sleeping(m).is_empty()).await;
    }
    Some(Held {
        pool,
        first,
        seen,
        marks,
        job,
        _dir: dir,
        _sandbox: sandbox,
    })
}

/// SIGKILL of the worker's host pid while its job runs (and has left
/// processes in the namespace): the job fails, the pool counts a crash and
/// starts another worker, and nothing of the namespace is left (the init
/// passed on the death and ended, and the kernel killed the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_a_crash_and_leaves_nothing_of_its_namespace() {
    let Some(h) = held_job("crash", 3).await else {
        return;
    };
    let s = &h.seen;
    assert!(members(&s.ns).len() >= 4, "{:?}", members(&s.ns));
    // SAFETY: kill with a plain pid and signal.
    assert_eq!(unsafe { libc::kill(s.worker as i32, libc::SIGKILL) }, 0);

    let out = h.job.await.unwrap();
    // The init passed on the worker's own death signal (SIGKILL), not its
    // own exit code.
    match out.result {
        Err(PoolJobError::WorkerCrashed { worker, exit }) => {
            assert_eq!(Some(worker), h.first.worker);
            assert_eq!(exit, WorkerExit::Signal(libc::SIGKILL));
        }
        other => panic!("the job ends with its worker: {other:?}"),
    }
    eventually("the pool counts the crash", || {
        h.pool.stats().crashed_total == 1
    })
    .await;
    eventually("nothing of the namespace is left", || {
        members(&s.ns).is_empty()
    })
    .await;
    assert!(!alive(s.init));
    for m in &h.marks {
        assert!(sleeping(m).is_empty(), "{m} outlived its namespace");
    }
    let next = run(&h.pool, json!({"mode": "list"})).await;
    assert!(next.result.is_ok(), "{:?}", next.result);
    assert_ne!(next.worker, h.first.worker, "a new worker");
    assert_ne!(seen(&next).ns, s.ns, "in a namespace of its own");
    h.pool.shutdown(Duration::from_secs(10)).await;
}

/// A pool shutdown while a job runs with processes left in the namespace:
/// nothing of the namespace is left in the host's /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_leaves_nothing_of_the_workers_namespace() {
    let Some(h) = held_job("shutdown", 4).await else {
        return;
    };
    let s = &h.seen;
    // A short drain: the held job never ends by itself.
    h.pool.shutdown(Duration::from_secs(2)).await;
    let out: Value = match h.job.await.unwrap().result {
        Ok(v) => v,
        Err(e) => json!(format!("{e:?}")),
    };
    eventually("nothing of the namespace is left", || {
        members(&s.ns).is_empty()
    })
    .await;
    assert!(!alive(s.worker) && !alive(s.init), "{out}");
    for m in &h.marks {
        assert!(sleeping(m).is_empty(), "{m} outlived the shutdown");
    }
}

/// What the namespace costs per pooled job: the wall time of `run` of an
/// `echo` job (the pool's dispatch, the IPC round trip and the per-job
/// sweep, which walks the init, the worker and tsx's esbuild service) on a
/// warm worker with and without `pid_namespace` (the same sandbox policy
/// otherwise), 300 jobs each, in alternated blocks of 50 after 20 warm-up
/// jobs each: prints the median and p90 of each. Run by hand (release):
/// `cargo nextest run --release -p tsbridge-runtime --test integration
/// --run-ignored only -E 'test(pooled_job_cost)' --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn pooled_job_cost() {
    let Some((sb, _parent)) = sandbox("cost") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (Some(with), Some(without)) = (spec(&sb, true, dir.path()), spec(&sb, false, dir.path()))
    else {
        return;
    };
    let pools = [
        ("with", start_pool(with).await),
        ("without", start_pool(without).await),
    ];
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (_, pool) in &pools {
        for _ in 0..20 {
            assert!(run(pool, json!({"mode": "echo"})).await.result.is_ok());
        }
    }
    for _ in 0..6 {
        for (i, (_, pool)) in pools.iter().enumerate() {
            for _ in 0..50 {
                let t = std::time::Instant::now();
                let out = run(pool, json!({"mode": "echo"})).await;
                times[i].push(t.elapsed());
                assert!(out.result.is_ok(), "{:?}", out.result);
            }
        }
    }
    for ((name, pool), t) in pools.iter().zip(times.iter_mut()) {
        t.sort();
        println!(
            "{name} pid_namespace: median {:?}, p90 {:?} ({} jobs, {} crashes)",
            t[t.len() / 2],
            t[t.len() * 9 / 10],
            t.len(),
            pool.stats().crashed_total
        );
    }
    for (_, pool) in &pools {
        pool.shutdown(Duration::from_secs(10)).await;
    }
}
