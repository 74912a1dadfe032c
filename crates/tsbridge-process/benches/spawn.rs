//! Engine costs against their floors, in the same run:
//! - spawn + wait of `/bin/true` through the engine vs a bare
//!   `std::process::Command::status()` (fork/posix_spawn + exec + wait);
//! - capture throughput of 1 GiB (`dd if=/dev/zero bs=1M count=1024`) through
//!   the engine (bounded capture + line protocol) vs a raw read loop over the
//!   same kind of pipe (enlarged to 1 MiB, 1 MiB reads, bytes discarded);
//!   and the same two over a Unix socketpair (`OutputChannel::Socket`);
//! - `ProcessControl::kill_descendants` on a childless leader (a pool
//!   worker's per-job sweep): as the machine runs, and with a thread started
//!   and joined before each sweep (a new pid: the sweep cannot skip its walk).
//!
//! Run: `cargo bench -p tsbridge-process --bench spawn` (bench/engine/run.sh
//! runs it with the TypeScript startup comparison).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{env, rt};
use divan::counter::BytesCount;
use tsbridge_process::{JobSpec, OutputChannel, run};

const GIB: u64 = 1 << 30;

mod common;

fn main() {
    divan::main();
}

#[divan::bench(sample_count = 200)]
fn spawn_true_engine() {
    common::true_engine();
}

#[divan::bench(sample_count = 200)]
fn spawn_true_std_command() {
    let s = Command::new("/bin/true")
        .env_clear()
        .envs(env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .status()
        .expect("runs");
    assert!(s.success());
}

/// What the engine's fork-like clone could reach: std's spawn falls back
/// from posix_spawn (vfork) to fork as soon as a pre_exec hook exists, and
/// the engine needs one (PR_SET_PDEATHSIG). Its vfork-style clone (x86_64)
/// is not bound by it.
#[divan::bench(sample_count = 200)]
fn spawn_true_std_command_fork_pre_exec() {
    common::true_std_fork_pre_exec();
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn capture_1gib_engine(b: divan::Bencher) {
    b.counter(BytesCount::new(GIB)).bench(|| {
        let spec = JobSpec::builder("/usr/bin/dd")
            .args(["if=/dev/zero", "bs=1M", "count=1024", "status=none"])
            .envs(env())
            .build()
            .expect("spec");
        let o = rt().block_on(run(spec)).expect("runs");
        assert_eq!(o.stdout.total, GIB);
    });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn capture_1gib_engine_socket(b: divan::Bencher) {
    b.counter(BytesCount::new(GIB)).bench(|| {
        let spec = JobSpec::builder("/usr/bin/dd")
            .args(["if=/dev/zero", "bs=1M", "count=1024", "status=none"])
            .envs(env())
            .output(OutputChannel::Socket)
            .build()
            .expect("spec");
        let o = rt().block_on(run(spec)).expect("runs");
        assert_eq!(o.stdout.total, GIB);
    });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn capture_1gib_raw_socket_read_loop(b: divan::Bencher) {
    b.counter(BytesCount::new(GIB)).bench(|| {
        let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut child = Command::new("/usr/bin/dd")
            .args(["if=/dev/zero", "bs=1M", "count=1024", "status=none"])
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .spawn()
            .expect("dd");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match ours.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => panic!("{e}"),
            }
        }
        child.wait().expect("wait");
        assert_eq!(total, GIB);
    });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn capture_1gib_raw_read_loop(b: divan::Bencher) {
    b.counter(BytesCount::new(GIB)).bench(|| {
        let mut child = Command::new("/usr/bin/dd")
            .args(["if=/dev/zero", "bs=1M", "count=1024", "status=none"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dd");
        let mut out = child.stdout.take().expect("pipe");
        // SAFETY: fcntl on a pipe fd we own, integer argument.
        unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => panic!("{e}"),
            }
        }
        child.wait().expect("wait");
        assert_eq!(total, GIB);
    });
}

fn hello_ts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/ts/hello.ts")
}

fn ts_search() -> tsbridge_process::runtime::RuntimeSearch {
    tsbridge_process::runtime::RuntimeSearch {
        extra_node_modules: vec![
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../node_modules"),
        ],
        node: "/usr/bin/node".into(),
    }
}

fn ts_cache() -> &'static tsbridge_process::transpile::TranspileCache {
    static C: OnceLock<tsbridge_process::transpile::TranspileCache> = OnceLock::new();
    C.get_or_init(|| tsbridge_process::transpile::TranspileCache::new(None).expect("cache"))
}

/// A TypeScript job in spawn mode as tsbridge runs it: resolve (transpile
/// cache validation: a manifest read and a stat per input) + spawn + wait.
/// Skipped without the root npm packages.
#[divan::bench(sample_count = 30)]
fn ts_hello_engine_transpile_cache(b: divan::Bencher) {
    use tsbridge_process::runtime::resolve_for_spawn;
    if resolve_for_spawn(&hello_ts(), None, &ts_search(), Some(ts_cache())).is_err() {
        return;
    }
    b.bench(|| {
        let inv =
            resolve_for_spawn(&hello_ts(), None, &ts_search(), Some(ts_cache())).expect("resolve");
        let mut e = env();
        e.extend(inv.env.iter().cloned());
        let spec = inv.builder().envs(e).build().expect("spec");
        let o = rt().block_on(run(spec)).expect("runs");
        assert!(o.exit.success());
    });
}

/// The floor: plain `node <the same bundle>` with std::process, same env.
#[divan::bench(sample_count = 30)]
fn ts_hello_plain_node_std_command(b: divan::Bencher) {
    use tsbridge_process::runtime::{Via, resolve_for_spawn};
    let Ok(inv) = resolve_for_spawn(&hello_ts(), None, &ts_search(), Some(ts_cache())) else {
        return;
    };
    let Via::TranspileCache { bundle, .. } = inv.via else {
        return;
    };
    b.bench(|| {
        let o = Command::new("/usr/bin/node")
            .arg(&bundle)
            .env_clear()
            .envs(env())
            .output()
            .expect("node");
        assert!(o.status.success());
    });
}

/// A long-lived leader for the sweep benches, started once per program.
fn sweep_leader(
    slot: &'static OnceLock<tsbridge_process::ProcessControl>,
    program: &str,
    args: &[&str],
) -> &'static tsbridge_process::ProcessControl {
    slot.get_or_init(|| {
        tsbridge_process::init_supervisor().expect("subreaper");
        let control = tsbridge_process::ProcessControl::new();
        let spec = JobSpec::builder(program)
            .args(args.iter().copied())
            .envs(env())
            .control(control.clone())
            .build()
            .expect("spec");
        let p = rt().block_on(tsbridge_process::spawn(spec)).expect("spawn");
        // The leader lives for the whole run (the parent-death signal ends
        // it with the bench).
        std::mem::forget(p);
        control
    })
}

/// What a pool worker pays per job to make sure nothing of the job outlives
/// it: `ProcessControl::kill_descendants` on a long-lived leader with no
/// children (the common case), as `tsbridge serve` runs it (a subreaper).
/// Compare with the pooled job's whole added latency (BENCHMARKS.md, ~90 µs).
#[divan::bench(sample_count = 200)]
fn kill_descendants_of_a_childless_leader(b: divan::Bencher) {
    static LEADER: OnceLock<tsbridge_process::ProcessControl> = OnceLock::new();
    let control = sweep_leader(&LEADER, "/bin/sleep", &["600"]);
    b.bench(|| {
        let killed = rt().block_on(control.kill_descendants());
        assert_eq!(killed, 0);
    });
}

/// The same on an idle `node` (what a pool worker is): its threads' children
/// lists are read, one per thread.
#[divan::bench(sample_count = 200)]
fn kill_descendants_of_a_childless_node_worker(b: divan::Bencher) {
    static LEADER: OnceLock<tsbridge_process::ProcessControl> = OnceLock::new();
    let control = sweep_leader(
        &LEADER,
        "/usr/bin/node",
        &["-e", "setInterval(() => {}, 1e6)"],
    );
    // Let node start its threads before measuring.
    std::thread::sleep(std::time::Duration::from_millis(500));
    b.bench(|| {
        let killed = rt().block_on(control.kill_descendants());
        assert_eq!(killed, 0);
    });
}

/// The same on an idle `node`, with a thread started and joined before each
/// sweep (outside the timing): a pid was allocated since the last sweep, so
/// the sweep walks the worker's threads (what a job that forked and waited
/// for a child costs, or any sweep while other processes fork).
#[divan::bench(sample_count = 200, sample_size = 1)]
fn kill_descendants_of_a_childless_node_worker_after_a_new_pid(b: divan::Bencher) {
    static LEADER: OnceLock<tsbridge_process::ProcessControl> = OnceLock::new();
    let control = sweep_leader(
        &LEADER,
        "/usr/bin/node",
        &["-e", "setInterval(() => {}, 1e6)"],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    b.with_inputs(|| {
        let _ = std::thread::spawn(|| {}).join();
    })
    .bench_values(|()| {
        let killed = rt().block_on(control.kill_descendants());
        assert_eq!(killed, 0);
    });
}
