//! Shared helpers of the pool integration tests (real node, real processes).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tsbridge_proto::ChildEvent;
use tsbridge_runtime::pool::{
    EventSink, HostScript, Pool, PoolConfig, PoolEvent, PoolJob, PoolOutcome, WorkerSpec,
};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-pool")
}

/// tsx's loader from `npm ci` in fixtures-pool, or `None` (with the reason printed).
pub fn tsx_loader() -> Option<PathBuf> {
    let p = fixtures().join("node_modules/tsx/dist/loader.mjs");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: tsx not installed (run `npm ci` in {})",
            fixtures().display()
        );
        None
    }
}

/// A worker of `module` (in fixtures-pool) under tsx's loader `tsx`, its
/// host script written into `host_dir`, with the environment
/// `PoolExecutor::pool_spec` gives tsx workflows (`TSX_DISABLE_CACHE=1`).
pub fn tsx_worker(name: &str, module: &str, tsx: PathBuf, host_dir: &Path) -> WorkerSpec {
    let mut spec = WorkerSpec::node(name, fixtures().join(module)).with_import(tsx);
    spec.host = HostScript::EmbeddedIn(host_dir.to_owned());
    spec.env.insert("TSX_DISABLE_CACHE".into(), "1".into());
    spec
}

/// ts-node's transpile-only register hook, or `None` (with the reason printed).
pub fn ts_node_register() -> Option<PathBuf> {
    let p = fixtures().join("node_modules/ts-node/register/transpile-only.js");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: ts-node not installed (run `npm ci` in {})",
            fixtures().display()
        );
        None
    }
}

/// A spec for the ESM test handlers, with the host written under a test temp dir.
pub fn js_spec(host_dir: &Path) -> WorkerSpec {
    let mut s = WorkerSpec::node("pool-test", fixtures().join("handlers.mjs"));
    s.host = HostScript::EmbeddedIn(host_dir.to_owned());
    s
}

/// Small, fast-to-fail settings for tests (generous startup and grace for a loaded machine).
pub fn config(min: usize, max: usize) -> PoolConfig {
    PoolConfig {
        min,
        max,
        warmup: min > 0,
        idle_timeout: None,
        health_interval: None,
        startup_timeout: Duration::from_secs(60),
        acquire_timeout: Duration::from_secs(120),
        kill_grace: Duration::from_millis(500),
        ..PoolConfig::default()
    }
}

pub fn sink() -> (EventSink, mpsc::Receiver<PoolEvent>) {
    mpsc::channel(1024)
}

/// Waits until the job is on a worker (its `Started` event): a cancel sent
/// earlier would withdraw it from the queue instead of aborting it there.
pub async fn wait_started(rx: &mut mpsc::Receiver<PoolEvent>) {
    loop {
        match rx.recv().await {
            Some(PoolEvent::Started { .. }) => return,
            Some(_) => {}
            None => panic!("the job ended before it started on a worker"),
        }
    }
}

/// The child events received so far (after the job ended), `Started` dropped.
pub fn child_events(rx: &mut mpsc::Receiver<PoolEvent>) -> Vec<ChildEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let PoolEvent::Child(c) = e {
            out.push(c);
        }
    }
    out
}

/// Runs one job with the given params on `pool`, events discarded.
pub async fn run(pool: &Pool, params: Value) -> PoolOutcome {
    pool.run(PoolJob::new("pool-test", params), sink().0).await
}

/// The `pid` field of a successful job's result.
pub fn pid_of(o: &PoolOutcome) -> u64 {
    match &o.result {
        Ok(v) => v["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {v}")),
        Err(e) => panic!("job failed: {e:?}"),
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Awaits a condition, polling (for facts outside the pool, like /proc).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a pool whose workers are real node processes run by the engine.
pub async fn start(
    spec: WorkerSpec,
    cfg: PoolConfig,
) -> Result<Pool, tsbridge_runtime::pool::PoolStartError> {
    Pool::start(spec, cfg).await
}
