//! Unit tests of the pool's state machines over a fake launcher: a tokio task
//! that speaks the worker protocol (no processes). The same behaviours
//! against real node are in tests/pool_*.rs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tsbridge_proto::{ChildEvent, WorkerId};

use super::*;

/// How the fake host behaves at startup.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Boot {
    Ok,
    Fatal,
}

struct FakeLauncher {
    boot: Boot,
    pids: AtomicU32,
}

impl FakeLauncher {
    fn new(boot: Boot) -> Arc<Self> {
        Arc::new(Self {
            boot,
            pids: AtomicU32::new(1000),
        })
    }
}

#[async_trait::async_trait]
impl Launcher for FakeLauncher {
    async fn launch(&self, _worker: WorkerId) -> Result<WorkerIo, WorkerStartError> {
        let pid = self.pids.fetch_add(1, Ordering::Relaxed);
        let (to_host, mut rx) = mpsc::unbounded_channel::<Value>();
        let (tx, from_host) = mpsc::channel(64);
        let kill = CancellationToken::new();
        let k = kill.clone();
        let boot = self.boot;
        tokio::spawn(async move {
            let msg = |ty: &str, id: &str, payload: Value| {
                WorkerInput::Message(json!({"type": ty, "id": id, "payload": payload}))
            };
            if boot == Boot::Fatal {
                let _ = tx
                    .send(msg(
                        "error",
                        "ready",
                        json!({"op":"fatal","message":"cannot load x"}),
                    ))
                    .await;
                let _ = tx.send(WorkerInput::Exited(WorkerExit::Code(78))).await;
                return;
            }
            let _ = tx
                .send(msg(
                    "response",
                    "ready",
                    json!({"op":"ready","pid":pid,"exports":["default"]}),
                ))
                .await;
            let mut running: Option<(String, String)> = None;
            loop {
                tokio::select! {
                    _ = k.cancelled() => {
                        let _ = tx.send(WorkerInput::Exited(WorkerExit::Signal(15))).await;
                        return;
                    }
                    m = rx.recv() => {
                        let Some(m) = m else {
                            let _ = tx.send(WorkerInput::Exited(WorkerExit::Code(0))).await;
                            return;
                        };
                        let id = m["id"].as_str().unwrap_or_default().to_owned();
                        let p = &m["payload"];
                        match p["op"].as_str() {
                            Some("ping") => {
                                let _ = tx.send(msg("response", &id, json!({"op":"pong","rss": 50_000_000 + pid as u64}))).await;
                            }
                            Some("run") => {
                                let mode = p["params"]["mode"].as_str().unwrap_or("echo").to_owned();
                                match mode.as_str() {
                                    "echo" => {
                                        let _ = tx.send(msg("progress", &id, json!({"current":1,"total":2,"message":"half"}))).await;
                                        let _ = tx.send(msg("result", &id, json!({"pid": pid, "params": p["params"]}))).await;
                                    }
                                    "throw" => {
                                        let _ = tx.send(msg("error", &id, json!({"message":"bad","name":"RangeError","aborted":false}))).await;
                                    }
                                    "crash" => {
                                        let _ = tx.send(WorkerInput::Exited(WorkerExit::Code(1))).await;
                                        return;
                                    }
                                    other => running = Some((id, other.to_owned())),
                                }
                            }
                            Some("cancel") => {
                                if let Some((job, mode)) = &running && mode == "abortable" {
                                    let _ = tx.send(msg("error", job, json!({"message":"job cancelled","name":"AbortError","aborted":true}))).await;
                                    running = None;
                                }
                                // "hang": ignores the cancel
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        Ok(WorkerIo {
            pid: Some(pid),
            to_host,
            from_host,
            kill,
        })
    }
}

fn cfg() -> PoolConfig {
    PoolConfig {
        min: 0,
        max: 2,
        warmup: false,
        kill_grace: Duration::from_millis(100),
        ..Default::default()
    }
}

fn job(mode: &str) -> PoolJob {
    PoolJob::new("wf", json!({"mode": mode}))
}

fn sink() -> (EventSink, mpsc::Receiver<ChildEvent>) {
    mpsc::channel(64)
}

async fn pool(config: PoolConfig) -> Pool {
    Pool::start_with("test", FakeLauncher::new(Boot::Ok), config)
        .await
        .unwrap()
}

fn pid_of(o: &PoolOutcome) -> u64 {
    o.result.as_ref().unwrap()["pid"].as_u64().unwrap()
}

#[tokio::test]
async fn runs_jobs_and_streams_events() {
    let p = pool(cfg()).await;
    let (tx, mut rx) = sink();
    let o = p.run(job("echo"), tx).await;
    assert_eq!(o.result.as_ref().unwrap()["params"]["mode"], "echo");
    assert!(o.worker.is_some());
    assert!(matches!(rx.recv().await, Some(ChildEvent::Progress(pr)) if pr.message == "half"));
    let s = p.stats();
    assert_eq!(s.started_total, 1);
    assert_eq!(s.jobs_total, 1);
    p.shutdown(Duration::from_secs(1)).await;
    assert_eq!(p.stats().size, 0);
}

#[tokio::test]
async fn sequential_jobs_reuse_one_worker() {
    let p = pool(cfg()).await;
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let o = p.run(job("echo"), sink().0).await;
        pids.insert(pid_of(&o));
    }
    assert_eq!(pids.len(), 1);
    assert_eq!(p.stats().started_total, 1);
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn concurrency_is_bounded_by_max() {
    let p = pool(cfg()).await;
    let mut runs = Vec::new();
    for _ in 0..20 {
        let p = p.clone();
        runs.push(tokio::spawn(
            async move { p.run(job("echo"), sink().0).await },
        ));
    }
    for r in runs {
        assert!(r.await.unwrap().result.is_ok());
    }
    assert!(p.stats().started_total <= 2, "{:?}", p.stats());
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn handler_error_keeps_the_worker() {
    let p = pool(cfg()).await;
    let a = p.run(job("echo"), sink().0).await;
    let e = p.run(job("throw"), sink().0).await;
    assert!(
        matches!(e.result, Err(PoolJobError::Handler { ref name, .. }) if name == "RangeError")
    );
    let b = p.run(job("echo"), sink().0).await;
    assert_eq!(pid_of(&a), pid_of(&b));
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn crash_fails_only_its_job_and_is_replaced() {
    let p = pool(cfg()).await;
    let a = p.run(job("echo"), sink().0).await;
    let c = p.run(job("crash"), sink().0).await;
    assert!(matches!(
        c.result,
        Err(PoolJobError::WorkerCrashed {
            exit: WorkerExit::Code(1),
            ..
        })
    ));
    let b = p.run(job("echo"), sink().0).await;
    assert_ne!(pid_of(&a), pid_of(&b));
    let s = p.wait_stats(|s| s.crashed_total == 1).await;
    assert_eq!(s.crashed_total, 1);
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn cancel_aborts_then_kills_a_handler_that_ignores_it() {
    let p = pool(cfg()).await;
    let j = job("abortable");
    let token = j.cancel.clone();
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run(j, sink().0).await }
    });
    p.wait_stats(|s| s.busy == 1).await;
    token.cancel();
    let o = run.await.unwrap();
    assert!(matches!(
        o.result,
        Err(PoolJobError::Cancelled { killed: false })
    ));
    assert_eq!(p.stats().crashed_total, 0);

    let j = job("hang");
    let token = j.cancel.clone();
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run(j, sink().0).await }
    });
    p.wait_stats(|s| s.busy == 1).await;
    token.cancel();
    let o = run.await.unwrap();
    assert!(matches!(
        o.result,
        Err(PoolJobError::Cancelled { killed: true })
    ));
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn timeout_is_typed() {
    let p = pool(cfg()).await;
    let o = p
        .run(
            job("hang").with_timeout(Duration::from_millis(50)),
            sink().0,
        )
        .await;
    assert!(matches!(
        o.result,
        Err(PoolJobError::Timeout { killed: true, .. })
    ));
    let o = p
        .run(
            job("abortable").with_timeout(Duration::from_millis(50)),
            sink().0,
        )
        .await;
    assert!(matches!(
        o.result,
        Err(PoolJobError::Timeout { killed: false, .. })
    ));
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn acquire_timeout_and_withdraw() {
    let p = pool(PoolConfig {
        max: 1,
        acquire_timeout: Duration::from_millis(100),
        ..cfg()
    })
    .await;
    let busy = job("abortable");
    let busy_token = busy.cancel.clone();
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run(busy, sink().0).await }
    });
    p.wait_stats(|s| s.busy == 1).await;
    let o = p.run(job("echo"), sink().0).await;
    assert!(matches!(o.result, Err(PoolJobError::AcquireTimeout(_))));

    let waiting = job("echo");
    let wt = waiting.cancel.clone();
    let w = tokio::spawn({
        let p = p.clone();
        async move { p.run(waiting, sink().0).await }
    });
    p.wait_stats(|s| s.waiting == 1).await;
    wt.cancel();
    let o = w.await.unwrap();
    assert!(matches!(
        o.result,
        Err(PoolJobError::Cancelled { killed: false })
    ));
    assert!(o.worker.is_none());
    busy_token.cancel();
    run.await.unwrap();
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn queue_limit() {
    let p = pool(PoolConfig {
        max: 1,
        max_waiting: 1,
        ..cfg()
    })
    .await;
    let a = job("abortable");
    let at = a.cancel.clone();
    let ra = tokio::spawn({
        let p = p.clone();
        async move { p.run(a, sink().0).await }
    });
    p.wait_stats(|s| s.busy == 1).await;
    let b = tokio::spawn({
        let p = p.clone();
        async move { p.run(job("echo"), sink().0).await }
    });
    p.wait_stats(|s| s.waiting == 1).await;
    let c = p.run(job("echo"), sink().0).await;
    assert!(matches!(c.result, Err(PoolJobError::QueueFull(1))));
    at.cancel();
    ra.await.unwrap();
    assert!(b.await.unwrap().result.is_ok());
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn max_jobs_recycles() {
    let p = pool(PoolConfig {
        max_jobs: Some(3),
        ..cfg()
    })
    .await;
    let mut pids = Vec::new();
    for _ in 0..7 {
        pids.push(pid_of(&p.run(job("echo"), sink().0).await));
    }
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    assert_eq!(pids[0], pids[2]);
    assert_ne!(pids[2], pids[3]);
    assert_eq!(p.stats().recycled_total, 2);
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn warmup_and_idle_shrink_to_min() {
    let p = pool(PoolConfig {
        min: 1,
        max: 3,
        warmup: true,
        idle_timeout: Some(Duration::from_millis(100)),
        ..cfg()
    })
    .await;
    assert_eq!(p.stats().idle, 1);
    let mut runs = Vec::new();
    for _ in 0..3 {
        let j = job("abortable");
        let t = j.cancel.clone();
        let p2 = p.clone();
        runs.push((t, tokio::spawn(async move { p2.run(j, sink().0).await })));
    }
    p.wait_stats(|s| s.busy == 3).await;
    for (t, r) in runs {
        t.cancel();
        r.await.unwrap();
    }
    let s = p.wait_stats(|s| s.size == 1 && s.recycled_total == 2).await;
    assert_eq!(s.idle, 1);
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn rss_over_the_limit_recycles() {
    // The fake host answers pings with rss 50 MB + pid.
    let p = pool(PoolConfig {
        min: 1,
        warmup: true,
        max_rss: Some(10_000_000),
        health_interval: Some(Duration::from_millis(50)),
        ..cfg()
    })
    .await;
    let s = p.wait_stats(|s| s.recycled_total >= 1).await;
    assert!(s.started_total >= 2);
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn fatal_module_fails_warmup_and_jobs() {
    let e = Pool::start_with(
        "t",
        FakeLauncher::new(Boot::Fatal),
        PoolConfig {
            min: 1,
            warmup: true,
            ..cfg()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, PoolStartError::Warmup { source: WorkerStartError::Fatal { message, .. }, .. } if message == "cannot load x"),
        "{e:?}"
    );
    let p = Pool::start_with("t", FakeLauncher::new(Boot::Fatal), cfg())
        .await
        .unwrap();
    let o = p.run(job("echo"), sink().0).await;
    assert!(matches!(
        o.result,
        Err(PoolJobError::WorkerStart(WorkerStartError::Fatal { .. }))
    ));
    p.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn shutdown_drains_then_kills() {
    let p = pool(cfg()).await;
    let long = job("hang");
    let r = tokio::spawn({
        let p = p.clone();
        async move { p.run(long, sink().0).await }
    });
    p.wait_stats(|s| s.busy == 1).await;
    p.shutdown(Duration::from_millis(50)).await;
    assert!(matches!(
        r.await.unwrap().result,
        Err(PoolJobError::ShuttingDown)
    ));
    assert!(matches!(
        p.run(job("echo"), sink().0).await.result,
        Err(PoolJobError::ShuttingDown)
    ));
    assert_eq!(p.stats().size, 0);
}
