//! `SandboxPolicy::pid_namespace`: the job runs in a PID namespace of its
//! own under tsbridge's tiny init, with a `/proc` of its own
//! (docs/design/pid-namespace.md). It sees its own processes only; signals
//! reach it as before; its exit status and death signal pass through the
//! init unchanged; nothing it starts outlives it; the pids limit still ends
//! a fork bomb. Each test compares with the same job without the namespace
//! where that is what proves the point. Skipped (with a message) on hosts
//! where tsbridge cannot make PID namespaces (not root).

use crate::common::{self, attach};

use std::time::Duration;

use tsbridge_process::{ExitKind, JobSpecBuilder, Outcome, run, spawn};
use tsbridge_proto::EndReason;
use tsbridge_sandbox::{Sandbox, SandboxConfig, SandboxPolicy};

fn sandbox(name: &str) -> Option<Sandbox> {
    sandbox_with(name, true)
}

/// `cgroups`: false for a sandbox without cgroups (nothing but the PID
/// namespace then ends what a job leaves behind).
fn sandbox_with(name: &str, cgroups: bool) -> Option<Sandbox> {
    let cfg = SandboxConfig {
        cgroup_parent_name: format!("tsb-pidns-{name}-{}", std::process::id()),
        use_cgroups: cgroups,
        ..SandboxConfig::default()
    };
    match Sandbox::new(cfg) {
        Ok(s) if s.capabilities().pid_ns => Some(s),
        Ok(s) => {
            eprintln!("SKIP: no PID namespaces: {:?}", s.capabilities().notes);
            let _ = s.remove_parent();
            None
        }
        Err(e) => {
            eprintln!("SKIP: sandbox unavailable: {e}");
            None
        }
    }
}

fn pidns(on: bool) -> SandboxPolicy {
    SandboxPolicy {
        pid_namespace: on,
        ..SandboxPolicy::default()
    }
}

/// Runs `spec` with a fresh sandbox of `policy` (key `key`).
async fn run_in(sb: &Sandbox, key: &str, policy: SandboxPolicy, spec: JobSpecBuilder) -> Outcome {
    let a = attach(sb, key, policy);
    let spec = spec
        .sandbox(Some(a))
        .timeout(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    run(spec).await.unwrap()
}

fn sh(script: &str) -> JobSpecBuilder {
    tsbridge_process::JobSpec::builder("/bin/sh")
        .args(["-c", script])
        .envs(common::base_env())
}

fn bash(script: &str) -> JobSpecBuilder {
    tsbridge_process::JobSpec::builder("/bin/bash")
        .args(["-c", script])
        .envs(common::base_env())
}

/// Live host pids whose command line contains `marker`.
fn with_marker(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if !common::alive(pid) {
            continue;
        }
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&c).contains(marker)
        {
            out.push(pid);
        }
    }
    out
}

/// A shell script that starts a daemon (`setsid`, a double fork, an
/// environment without tsbridge's marker) running as `sleep-<m>`, and
/// waits until it has started (the daemon touches `ready` first).
fn daemon_script(m: &str, ready: &std::path::Path) -> String {
    let ready = ready.display();
    format!(
        "setsid sh -c 'exec env -i /bin/bash -c \"touch {ready}; exec -a sleep-{m} sleep 1000\" &' </dev/null >/dev/null 2>&1; \
         while [ ! -e {ready} ]; do sleep 0.01; done; "
    )
}

/// A process the test starts outside any job, killed on drop.
struct Outside(std::process::Child);

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn outside_sleep(marker: &str) -> Outside {
    // `sleep 1000 <marker>` would fail on the extra operand: exec -a sets
    // argv[0] instead, which /proc/<pid>/cmdline shows.
    let child = std::process::Command::new("/bin/bash")
        .args(["-c", &format!("exec -a 'sleep-{marker}' sleep 1000")])
        .spawn()
        .unwrap();
    Outside(child)
}

fn result(o: &Outcome) -> serde_json::Value {
    o.result.clone().unwrap_or_else(|| {
        panic!(
            "no result: {o:?} {}",
            String::from_utf8_lossy(&o.stderr.head)
        )
    })
}

/// The hostile probe lists /proc and reads every command line, looking for
/// a `sleep` the test started outside and another job's command line. In
/// its own PID namespace it finds neither and sees only its own few pids
/// (its init, itself, and node's own); without the namespace it finds both.
/// It also reads /proc/self/status and lists /proc/self/fd under the
/// default sandbox's Landlock domain (the fresh procfs is readable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_sees_only_its_own_processes() {
    let Some(sb) = sandbox("probe") else { return };
    let m = format!("pidns-marker-{}", std::process::id());
    let outside = outside_sleep(&format!("{m}-outside"));
    // Another job (no namespace) with the second marker in its argv.
    let other = attach(&sb, "other", pidns(false));
    let other_job = spawn(
        bash(&format!("exec -a 'sleep-{m}-job' sleep 1000"))
            .sandbox(Some(other))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let wanted = [format!("{m}-outside"), format!("{m}-job")];
    assert!(
        common::eventually(Duration::from_secs(30), || wanted
            .iter()
            .all(|w| !with_marker(w).is_empty()))
        .await,
        "the two sleeps never showed up"
    );

    let reversed = wanted.iter().map(|w| w.chars().rev().collect::<String>());
    let reversed: Vec<String> = reversed.collect();
    let probe = || common::node_fixture("pidns-probe.js").args(reversed.clone());
    let inside = run_in(&sb, "inside", pidns(true), probe()).await;
    assert!(inside.success(), "{inside:?}");
    let v = result(&inside);
    assert_eq!(v["found"][&wanted[0]], false, "{v}");
    assert_eq!(v["found"][&wanted[1]], false, "{v}");
    let pids: Vec<i64> = v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert_eq!(pids, vec![1, 2], "its init and itself only: {v}");
    // The init is a copy of the engine's process, but does not show its
    // command line.
    assert_eq!(v["cmdlines"][0], "1: tsbridge-init", "{v}");
    assert_eq!(v["self_status"], true, "{v}");
    assert!(v["self_fds"].as_i64().unwrap() >= 3, "{v}");

    let host = run_in(&sb, "host", pidns(false), probe()).await;
    assert!(host.success(), "{host:?}");
    let v = result(&host);
    assert_eq!(v["found"][&wanted[0]], true, "{v}");
    assert_eq!(v["found"][&wanted[1]], true, "{v}");

    other_job.control().cancel();
    let _ = other_job.wait().await;
    drop(outside);
    sb.remove_parent().expect("parent cgroup removed");
}

/// Exit code and death signal pass through the init unchanged: exit 3 is
/// 3, a job that SIGKILLs itself died of signal 9 (not code 137), a
/// SIGSEGV is a SIGSEGV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_and_death_signal_pass_through() {
    let Some(sb) = sandbox("exit") else { return };
    let o = run_in(&sb, "exit3", pidns(true), sh("echo $$; exit 3")).await;
    assert_eq!(o.exit, ExitKind::Code(3), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout.head).trim(), "2", "{o:?}");
    assert_eq!(o.reason, EndReason::Exited);
    let o = run_in(&sb, "kill9", pidns(true), sh("kill -9 $$")).await;
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGKILL), "{o:?}");
    assert_eq!(o.reason, EndReason::Signaled);
    let spec = tsbridge_process::JobSpec::builder("/bin/sh")
        .arg(common::fixture("die-by-signal.sh"))
        .envs(common::base_env());
    let o = run_in(&sb, "segv", pidns(true), spec).await;
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGSEGV), "{o:?}");
    let o = run_in(&sb, "exit0", pidns(true), sh("echo 'RESULT: {\"ok\":1}'")).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!({"ok": 1})));
    sb.remove_parent().expect("parent cgroup removed");
}

/// A Node job without a SIGTERM handler dies of the SIGTERM of a timeout
/// (the init, PID 1 of the namespace, would ignore it, but the job is not
/// PID 1): signal 15, reason timeout. A job with a handler cleans up within
/// the grace and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_the_job() {
    let Some(sb) = sandbox("term") else { return };
    // No handler: prints its pid (2: the init is 1) and waits.
    let spec = tsbridge_process::JobSpec::builder(common::node())
        .args([
            "-e",
            "console.log(process.pid); setInterval(() => {}, 1000)",
        ])
        .envs(common::base_env())
        .timeout(Some(Duration::from_secs(2)))
        .kill_grace(Duration::from_secs(30));
    let a = attach(&sb, "hang", pidns(true));
    let o = run(spec.sandbox(Some(a)).build().unwrap()).await.unwrap();
    assert_eq!(o.reason, EndReason::Timeout, "{o:?}");
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGTERM), "{o:?}");
    assert!(
        o.wall < Duration::from_secs(25),
        "SIGKILL after the grace: {o:?}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout.head).trim(), "2", "{o:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cleaned");
    let a = attach(&sb, "cleanup", pidns(true));
    let spec = common::node_fixture("term-cleanup.js")
        .arg(&file)
        .kill_grace(Duration::from_secs(30))
        .sandbox(Some(a))
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let mut events = p.take_events().unwrap();
    while let Some(ev) = events.recv().await {
        if format!("{ev:?}").contains("READY") {
            break;
        }
    }
    p.control().cancel();
    let o = p.wait().await;
    assert_eq!(o.reason, EndReason::Cancelled, "{o:?}");
    assert_eq!(o.exit, ExitKind::Code(0), "{o:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "cleaned by 2");
    sb.remove_parent().expect("parent cgroup removed");
}

/// A job that leaves a daemon behind (setsid, double fork, an environment
/// without tsbridge's marker: nothing the engine's tracker could find
/// without a subreaper, and no cgroup here) leaves nothing once it has
/// ended in its own namespace; without the namespace the daemon survives
/// (killed here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_does_not_outlive_the_job() {
    let Some(sb) = sandbox_with("daemon", false) else {
        return;
    };
    let m = format!("pidns-daemon-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let script = |tag: &str| {
        let ready = dir.path().join(tag);
        format!("{}exit 0", daemon_script(&format!("{m}-{tag}"), &ready))
    };
    let o = run_in(&sb, "daemon-in", pidns(true), sh(&script("in"))).await;
    assert_eq!(o.exit, ExitKind::Code(0), "{o:?}");
    // The kernel ended the namespace before the init could be reaped.
    let left = with_marker(&format!("{m}-in"));
    assert!(left.is_empty(), "survived the job: {left:?}");

    let o = run_in(&sb, "daemon-out", pidns(false), sh(&script("out"))).await;
    assert_eq!(o.exit, ExitKind::Code(0), "{o:?}");
    let mut left = Vec::new();
    common::eventually(Duration::from_secs(30), || {
        left = with_marker(&format!("{m}-out"));
        !left.is_empty()
    })
    .await;
    for p in &left {
        // SAFETY: kill with plain integers (the test's own leftover).
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(
        !left.is_empty(),
        "without the namespace the daemon survives"
    );
    sb.remove_parent().expect("parent cgroup removed");
}

/// A long-lived job under its init (a pool worker's shape) whose task left
/// a child and a setsid daemon: `kill_descendants` kills both and spares
/// the job itself (the init's child, `main_pid`, with no
/// `keep_descendants` before) and its init; a second sweep finds nothing.
/// The job then stops as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_task_sweep_spares_the_job_and_its_init() {
    let Some(sb) = sandbox_with("sweep", false) else {
        return;
    };
    let m = format!("pidns-sweep-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    let script = format!(
        "{}(exec -a sleep-{m}-child sleep 1000) & touch {}; exec -a sleep-{m}-main sleep 1000",
        daemon_script(&format!("{m}-daemon"), &dir.path().join("ready")),
        up.display()
    );
    let control = tsbridge_process::ProcessControl::new();
    let spec = bash(&script)
        .sandbox(Some(attach(&sb, "sweep", pidns(true))))
        .control(control.clone())
        .build()
        .unwrap();
    let process = spawn(spec).await.unwrap();
    let (init, main) = (process.pid() as i32, process.main_pid() as i32);
    assert_ne!(init, main, "the job runs under its init");
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    assert!(
        children.split_whitespace().any(|c| c == main.to_string()),
        "{children}"
    );
    let child = format!("sleep-{m}-child");
    let daemon = format!("sleep-{m}-daemon");
    assert!(
        common::eventually(Duration::from_secs(60), || up.exists()
            && !common::running_as(&child).is_empty()
            && !common::running_as(&format!("sleep-{m}-main")).is_empty())
        .await,
        "the job never started its child"
    );
    assert!(!common::running_as(&daemon).is_empty());

    let killed = control.kill_descendants().await;
    assert_eq!(killed, 2, "the child and the daemon");
    assert!(
        common::eventually(Duration::from_secs(60), || common::running_as(&child)
            .is_empty()
            && common::running_as(&daemon).is_empty())
        .await,
        "what the task left survived the sweep"
    );
    assert!(common::alive(main), "the job survives its sweep");
    assert!(common::alive(init), "its init survives");
    assert_eq!(control.kill_descendants().await, 0);

    control.cancel();
    let o = process.wait().await;
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGTERM), "{o:?}");
    assert!(!common::alive(main) && !common::alive(init));
    sb.remove_parent().expect("parent cgroup removed");
}

/// The pids limit still ends a fork bomb, reported as the pids limit (the
/// bomb's shell, pid 2 in its namespace, exits once it cannot fork), and
/// nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pids_limit_ends_a_fork_bomb() {
    let Some(sb) = sandbox("bomb") else { return };
    if !sb.capabilities().pids {
        eprintln!("SKIP: no pids controller");
        return;
    }
    let m = format!("pidns-bomb-{}", std::process::id());
    let policy = SandboxPolicy {
        pids: Some(32),
        ..pidns(true)
    };
    let bomb = format!("echo $$; while :; do /bin/bash -c 'exec -a sleep-{m} sleep 1000' & done");
    let o = run_in(&sb, "bomb", policy, sh(&bomb)).await;
    assert_eq!(o.reason, EndReason::PidsLimit, "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout.head).trim(), "2", "{o:?}");
    let left = with_marker(&m);
    assert!(left.is_empty(), "survived the job: {left:?}");
    sb.remove_parent().expect("parent cgroup removed");
}

/// Node works in the mode, as spawn workflows run it: a TypeScript
/// program under tsx (`node --import tsx`, which starts esbuild's service
/// and writes its cache in TMPDIR) prints its result; a Node child with the
/// IPC channel (fd 3, `process.send`) answers a request through the init,
/// and reports its progress and result over it, as pid 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tsx_and_ipc_work_under_the_init() {
    let Some(sb) = sandbox("node") else { return };
    if common::have_node_modules(&["tsx/dist/loader.mjs"]) {
        let inv = tsbridge_process::runtime::resolve(
            &common::fixture("ts/hello.ts"),
            None,
            &common::search(),
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let spec = inv
            .builder()
            .arg("tsx")
            .envs(common::base_env())
            .env("TMPDIR", tmp.path().to_str().unwrap())
            .cwd(common::fixture("ts"));
        let o = run_in(&sb, "tsx", pidns(true), spec).await;
        assert!(o.success(), "{}", String::from_utf8_lossy(&o.stderr.head));
        assert_eq!(
            o.result,
            Some(serde_json::json!({"text": "hello, tsx", "n": 3, "version": 1}))
        );
    }

    let a = attach(&sb, "ipc", pidns(true));
    let spec = common::node_fixture("ipc-child.js")
        .ipc(true)
        .sandbox(Some(a))
        .timeout(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let rx = p.take_events().unwrap();
    let ipc = p.ipc().expect("ipc handle");
    let answer = ipc
        .request(serde_json::json!({"q": 1}), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(answer["echo"], serde_json::json!({"q": 1}));
    assert_eq!(answer["pid"], 2, "the job is pid 2 in its namespace");
    let bye = ipc
        .request(serde_json::json!("bye"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(bye, "bye");
    drop(ipc);
    let collector = common::collect_events(rx);
    let o = p.wait().await;
    let events = collector.await.unwrap();
    assert!(o.success(), "{}", String::from_utf8_lossy(&o.stderr.head));
    assert_eq!(o.result, Some(serde_json::json!({"via": "ipc"})));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, tsbridge_proto::ChildEvent::Progress(p) if p.current == 1))
    );
    sb.remove_parent().expect("parent cgroup removed");
}

/// The init is a copy of the engine's process, but keeps none of its
/// memory: with 64 MiB of this process's heap touched before the spawn and
/// rewritten after it, the init holds (almost) nothing of its own (without
/// `shed_memory` it held the 64 MiB: its copies of the old pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_keeps_none_of_the_servers_memory() {
    let Some(sb) = sandbox("memory") else { return };
    let mut heap = vec![1u8; 64 << 20];
    let a = attach(&sb, "sleep", pidns(true));
    let p = spawn(
        sh("echo ready; exec sleep 1000")
            .sandbox(Some(a))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let init = p.pid();
    for b in heap.iter_mut().step_by(4096) {
        *b = 2;
    }
    std::hint::black_box(&heap);
    let private_kb = |name: &str| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{init}/smaps_rollup")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let held = private_kb("Private_Dirty:") + private_kb("Private_Clean:");
    assert!(held < 16 << 10, "the init holds {held} kB of its own");
    p.control().cancel();
    let o = p.wait().await;
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGTERM), "{o:?}");
    sb.remove_parent().expect("parent cgroup removed");
}

/// A job that ignores SIGTERM is SIGKILLed after the grace as before
/// (the init dies of it, forced from the engine's namespace, and the
/// kernel ends the namespace): signal 9, reason timeout. A program that
/// cannot be executed is a spawn error with its errno, as without the
/// namespace (the init passes the job's report on and exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_grace_and_spawn_errors_are_as_before() {
    let Some(sb) = sandbox("grace") else { return };
    let a = attach(&sb, "ignore", pidns(true));
    // Ignores SIGTERM, prints its pid (2) and waits.
    let script = "process.on('SIGTERM', () => console.error('got SIGTERM, ignoring'));\n\
                  console.log(process.pid); setInterval(() => {}, 1000);";
    let spec = tsbridge_process::JobSpec::builder(common::node())
        .args(["-e", script])
        .envs(common::base_env())
        .timeout(Some(Duration::from_secs(2)))
        .kill_grace(Duration::from_millis(500))
        .sandbox(Some(a))
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert_eq!(o.reason, EndReason::Timeout, "{o:?}");
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGKILL), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr.head).contains("got SIGTERM, ignoring"),
        "{o:?}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout.head).trim(), "2", "{o:?}");

    let a = attach(&sb, "missing", pidns(true));
    let spec = tsbridge_process::JobSpec::builder("/no/such/program")
        .sandbox(Some(a))
        .build()
        .unwrap();
    let e = spawn(spec).await.unwrap_err();
    assert_eq!(e.source.raw_os_error(), Some(libc::ENOENT), "{e}");
    sb.remove_parent().expect("parent cgroup removed");
}

/// When the engine's process is SIGKILLed (no watchdog, no subreaper, no
/// cgroup, no sweep), the init dies of its parent-death signal and the
/// kernel ends its namespace: a daemon the job started (setsid, no marker
/// in its environment) dies with it. Without the namespace it survives
/// (killed here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_dies_with_a_sigkilled_engine() {
    if sandbox_with("probe-check", false).is_none() {
        return;
    }
    for ns in [true, false] {
        let m = format!("pidns-engine-death-{}-{ns}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "{}exec -a leader-{m} sleep 1000",
            daemon_script(&m, &dir.path().join("ready"))
        );
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tsbridge-engine-probe"));
        cmd.args(["--no-watchdog"]);
        if ns {
            cmd.arg("--pid-namespace");
        }
        let mut probe = cmd
            .args(["--", "/bin/bash", "-c", &script])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("probe");
        let (daemon, leader) = (format!("sleep-{m}"), format!("leader-{m}"));
        assert!(
            common::eventually(Duration::from_secs(30), || {
                !common::running_as(&daemon).is_empty() && !common::running_as(&leader).is_empty()
            })
            .await,
            "the job and its daemon never started"
        );
        probe.kill().unwrap();
        probe.wait().unwrap();
        // The job's main process dies of its parent-death signal either way.
        assert!(
            common::eventually(Duration::from_secs(30), || common::running_as(&leader)
                .is_empty())
            .await,
            "the job outlived the engine"
        );
        if ns {
            assert!(
                common::eventually(Duration::from_secs(30), || with_marker(&daemon).is_empty())
                    .await,
                "the daemon outlived the engine and the job's init"
            );
        } else {
            let left = common::running_as(&daemon);
            for p in &left {
                // SAFETY: kill with plain integers (the test's own leftover).
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            assert!(
                !left.is_empty(),
                "without the namespace the daemon survives"
            );
        }
    }
}

/// What the mode costs: spawn-to-outcome of `/bin/true` through the
/// engine with the same sandbox (cgroups, the default Landlock domain and
/// seccomp), with and without the PID namespace, alternated, 100 runs
/// each: prints the median and p90 of each. Then the memory the init keeps
/// of this process: with 256 MiB of this process's heap touched, a job
/// (`sleep`) starts under an init; once this process has rewritten its
/// heap, the init's private resident memory (`smaps_rollup`) is what the
/// init alone still holds. Run by hand: `cargo nextest run --release -p
/// tsbridge-process --test integration --run-ignored only -E
/// 'test(pid_namespace_cost)' --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn pid_namespace_cost() {
    let Some(sb) = sandbox("cost") else { return };
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..200 {
        let on = i % 2 == 1;
        let a = attach(&sb, &format!("cost-{i}"), pidns(on));
        let spec = tsbridge_process::JobSpec::builder("/bin/true")
            .envs(common::base_env())
            .sandbox(Some(a))
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let o = run(spec).await.unwrap();
        times[usize::from(on)].push(start.elapsed());
        assert!(o.success(), "{o:?}");
    }
    for (name, t) in ["default", "pid namespace"].iter().zip(times.iter_mut()) {
        t.sort();
        eprintln!(
            "{name:>14}: median {:?}, p90 {:?}",
            t[t.len() / 2],
            t[t.len() * 9 / 10]
        );
    }

    let mut heap = vec![1u8; 256 << 20];
    let a = attach(&sb, "cost-mem", pidns(true));
    let p = spawn(sh("exec sleep 1000").sandbox(Some(a)).build().unwrap())
        .await
        .unwrap();
    let init = p.pid();
    let private = |what: &str| {
        let s = std::fs::read_to_string(format!("/proc/{init}/smaps_rollup")).unwrap();
        let kb = |k: &str| -> u64 {
            s.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .unwrap_or(0)
        };
        eprintln!(
            "init {what}: Rss {} kB, Private_Dirty {} kB, Shared_Dirty {} kB",
            kb("Rss:"),
            kb("Private_Dirty:"),
            kb("Shared_Dirty:")
        );
    };
    private("at start");
    for b in heap.iter_mut().step_by(4096) {
        *b = 2;
    }
    private("after this process rewrote its 256 MiB");
    std::hint::black_box(&heap);
    p.control().cancel();
    let _ = p.wait().await;
    sb.remove_parent().expect("parent cgroup removed");
}
