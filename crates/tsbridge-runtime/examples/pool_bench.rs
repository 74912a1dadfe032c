//! Pool benchmark (bench/pool/README.md): in ONE run, the round trip of a
//! trivial TypeScript job (a) on a warm pool, (b) in spawn mode (node per
//! job, through the engine), and (c) a bare IPC echo (Rust <-> node over
//! NODE_CHANNEL_FD, nothing in between): the raw limit the pool adds to.
//!
//! cargo run --release -p tsbridge-runtime --example pool_bench -- [jobs] [spawn_jobs]
//! (needs `npm ci` in crates/tsbridge-runtime/tests/fixtures-pool)

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tsbridge_runtime::pool::{Pool, PoolConfig, PoolJob, WorkerSpec};

unsafe extern "C" {
    fn dup2(old: i32, new: i32) -> i32;
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-pool")
}

fn tsx_loader() -> PathBuf {
    fixtures().join("node_modules/tsx/dist/loader.mjs")
}

struct Stats {
    name: String,
    lat: Vec<Duration>,
    total: Duration,
}

impl Stats {
    fn q(&self, p: f64) -> f64 {
        let mut v = self.lat.clone();
        v.sort();
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i].as_secs_f64() * 1e6
    }
    fn print(&self) {
        println!(
            "{:<44} n={:<6} p50={:>9.1} us  p99={:>9.1} us  {:>8.0} jobs/s",
            self.name,
            self.lat.len(),
            self.q(0.5),
            self.q(0.99),
            self.lat.len() as f64 / self.total.as_secs_f64()
        );
    }
}

fn params(i: usize) -> Value {
    json!({"inputPath": "/in/a.csv", "outputPath": "/out/b.json", "i": i})
}

/// (c) the raw limit: one node process answering pool-shaped requests over
/// its IPC channel with no handler lookup, no ctx, no pool.
async fn bare_ipc(jobs: usize, warmup: usize) -> Stats {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(fixtures().join("bare-echo.js"))
        .env("NODE_CHANNEL_FD", "3")
        .env("NODE_CHANNEL_SERIALIZATION_MODE", "json");
    // SAFETY: dup2 is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn node");
    drop(theirs);
    ours.set_nonblocking(true).expect("nonblocking");
    let s = tokio::net::UnixStream::from_std(ours).expect("tokio stream");
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.expect("ready");
    let mut lat = Vec::with_capacity(jobs);
    let mut total = Duration::ZERO;
    for i in 0..warmup + jobs {
        let t = Instant::now();
        let id = format!("{i}");
        let msg = tsbridge_proto::IpcEnvelope::new(
            tsbridge_proto::IpcKind::Request,
            Some(id.clone()),
            json!({"op": "run", "workflow": "bench", "params": params(i)}),
        );
        let mut buf = serde_json::to_vec(&msg).expect("json");
        buf.push(b'\n');
        w.write_all(&buf).await.expect("write");
        line.clear();
        r.read_line(&mut line).await.expect("read");
        let v: tsbridge_proto::IpcEnvelope = serde_json::from_str(&line).expect("reply");
        assert_eq!(v.id.as_deref(), Some(id.as_str()));
        if i >= warmup {
            let d = t.elapsed();
            lat.push(d);
            total += d;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Stats {
        name: "(c) bare IPC echo, Rust <-> node (raw limit)".into(),
        lat,
        total,
    }
}

async fn pooled(jobs: usize, warmup: usize, workers: usize, concurrency: usize) -> Stats {
    let spec = WorkerSpec::node("bench", fixtures().join("trivial.ts")).with_import(tsx_loader());
    let cfg = PoolConfig {
        min: workers,
        max: workers,
        warmup: true,
        health_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::start(spec, cfg).await.expect("pool start");
    let (sink, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    for i in 0..warmup {
        let o = pool
            .run(PoolJob::new("bench", params(i)), sink.clone())
            .await;
        o.result.expect("warmup job");
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let pool = pool.clone();
        let sink = sink.clone();
        let n = jobs / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                let o = pool
                    .run(PoolJob::new("bench", params(c * n + i)), sink.clone())
                    .await;
                let v = o.result.expect("pooled job");
                assert_eq!(v["i"], c * n + i);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let total = started.elapsed();
    let stats = pool.stats();
    pool.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.started_total as usize, workers, "{stats:?}");
    Stats {
        name: format!("(pool) tsx trivial.ts, {workers} worker(s), c={concurrency}"),
        lat,
        total,
    }
}

async fn spawned(jobs: usize) -> Stats {
    let mut lat = Vec::with_capacity(jobs);
    let started = Instant::now();
    for i in 0..jobs {
        let t = Instant::now();
        let spec = tsbridge_process::JobSpec::builder("node")
            .args(["--import".into(), tsx_loader().into_os_string()])
            .arg(fixtures().join("trivial-main.ts"))
            .args(["--params".to_string(), params(i).to_string()])
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .cwd(fixtures())
            .build()
            .expect("spec");
        let o = tsbridge_process::run(spec).await.expect("spawn");
        assert!(o.success(), "{o:?}");
        assert_eq!(o.result.as_ref().map(|v| v["i"].clone()), Some(json!(i)));
        lat.push(t.elapsed());
    }
    Stats {
        name: "(a) spawn mode, node --import tsx per job".into(),
        lat,
        total: started.elapsed(),
    }
}

fn main() {
    // TSBRIDGE_BENCH_RT=current: a current-thread runtime (no cross-thread
    // wakeups between the pool's tasks); default: the multi-thread runtime
    // the server uses.
    let current = std::env::var("TSBRIDGE_BENCH_RT").is_ok_and(|v| v == "current");
    let rt = if current {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    println!(
        "runtime: {}",
        if current {
            "current_thread"
        } else {
            "multi_thread"
        }
    );
    rt.block_on(bench_main());
}

async fn bench_main() {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let spawn_jobs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    if !tsx_loader().exists() {
        eprintln!("tsx missing: run `npm ci` in {}", fixtures().display());
        std::process::exit(2);
    }
    let warmup = (jobs / 10).max(10);
    println!(
        "jobs={jobs} warmup={warmup} spawn_jobs={spawn_jobs} cpus={}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let bare = bare_ipc(jobs, warmup).await;
    bare.print();
    let pool1 = pooled(jobs, warmup, 1, 1).await;
    pool1.print();
    let pool2 = pooled(jobs, warmup, 2, 2).await;
    pool2.print();
    if spawn_jobs > 0 {
        spawned(spawn_jobs).await.print();
    }
    println!(
        "added latency of the pool over the bare IPC round trip at p50: {:.1} us (target <= 100 us)",
        pool1.q(0.5) - bare.q(0.5)
    );
}
