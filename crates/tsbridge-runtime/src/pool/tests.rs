//! Unit tests of the pool's state machines over a fake launcher: a tokio task
//! that speaks the worker protocol (no processes). The same behaviours
//! against real node are in tests/pool_*.rs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
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

type AnswerTx = oneshot::Sender<Result<Value, LinkError>>;
type Ask = (Value, AnswerTx);

/// The request side of the fake channel: requests go to the fake host task.
#[derive(Debug)]
struct FakeLink {
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<Ask>>>,
}

#[async_trait::async_trait]
impl HostLink for FakeLink {
    async fn request(&self, payload: Value, timeout: Duration) -> Result<Value, LinkError> {
        let (tx, rx) = oneshot::channel();
        let sent = match &*self.tx.lock().unwrap() {
            Some(host) => host.send((payload, tx)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(LinkError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    async fn close(&self) {
        self.tx.lock().unwrap().take();
    }
}

/// A tokio task speaking the worker protocol; `params.mode` picks the behaviour.
async fn fake_host(
    boot: Boot,
    pid: u32,
    mut asks: mpsc::UnboundedReceiver<Ask>,
    out: mpsc::Sender<ChildEvent>,
    exit: oneshot::Sender<WorkerExit>,
    kill: CancellationToken,
) {
    if boot == Boot::Fatal {
        let _ = out
            .send(ChildEvent::Log {
                level: tsbridge_proto::LogLevel::Error,
                message: "cannot load x".into(),
                child_timestamp: None,
            })
            .await;
        drop(out);
        let _ = exit.send(WorkerExit::Code(78));
        return;
    }
    // The job in flight: its mode and where its answer goes.
    let mut running: Option<(String, AnswerTx)> = None;
    loop {
        tokio::select! {
            _ = kill.cancelled() => {
                drop(out);
                let _ = exit.send(WorkerExit::Signal(15));
                return;
            }
            ask = asks.recv() => {
                let Some((p, answer)) = ask else {
                    drop(out);
                    let _ = exit.send(WorkerExit::Code(0));
                    return;
                };
                match p["op"].as_str() {
                    Some("ping") => {
                        let _ = answer.send(Ok(json!({"op":"pong","ready":true,"pid":pid,"rss": 50_000_000 + pid as u64})));
                    }
                    Some("run") => {
                        let mode = p["params"]["mode"].as_str().unwrap_or("echo").to_owned();
                        match mode.as_str() {
                            "echo" => {
                                let _ = out.send(ChildEvent::Progress(tsbridge_proto::Progress::new(1, 2, "half"))).await;
                                let _ = answer.send(Ok(json!({"value": {"pid": pid, "params": p["params"]}, "events": 1})));
                            }
                            // The answer overtakes the job's events (as it
                            // can in the engine: another path).
                            "late" => {
                                let _ = answer.send(Ok(json!({"value": {"pid": pid}, "events": 3})));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                for i in 1..=3 {
                                    let _ = out.send(ChildEvent::Progress(tsbridge_proto::Progress::new(i, 3, format!("late {i}")))).await;
                                }
                            }
                            "throw" => {
                                let _ = answer.send(Err(LinkError::Remote(json!({"message":"bad","name":"RangeError","aborted":false}))));
                            }
                            "crash" => {
                                drop(answer);
                                drop(out);
                                let _ = exit.send(WorkerExit::Code(1));
                                return;
                            }
                            other => running = Some((other.to_owned(), answer)),
                        }
                    }
                    Some("cancel") => {
                        let _ = answer.send(Ok(json!({"op":"cancel","found":running.is_some()})));
                        if running.as_ref().is_some_and(|(mode, _)| mode == "abortable")
                            && let Some((_, job)) = running.take()
                        {
                            let _ = job.send(Err(LinkError::Remote(json!({"message":"job cancelled","name":"AbortError","aborted":true}))));
                        }
                        // "hang": ignores the cancel
                    }
                    _ => {}
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Launcher for FakeLauncher {
    async fn launch(&self, _worker: WorkerId) -> Result<WorkerIo, WorkerStartError> {
        let pid = self.pids.fetch_add(1, Ordering::Relaxed);
        let (ask_tx, asks) = mpsc::unbounded_channel();
        let (out, events) = mpsc::channel(64);
        let (exit_tx, exit) = oneshot::channel();
        let kill = CancellationToken::new();
        tokio::spawn(fake_host(self.boot, pid, asks, out, exit_tx, kill.clone()));
        Ok(WorkerIo {
            pid: Some(pid),
            link: Arc::new(FakeLink {
                tx: std::sync::Mutex::new(Some(ask_tx)),
            }),
            events,
            exit,
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

fn sink() -> (EventSink, mpsc::Receiver<PoolEvent>) {
    mpsc::channel(64)
}

async fn pool(config: PoolConfig) -> Pool {
    Pool::start_with("test", FakeLauncher::new(Boot::Ok), config)
        .await
        .unwrap()
}

/// Runs `j` in the background (its events dropped): its cancel token and
/// its run.
fn spawn_run(p: &Pool, j: PoolJob) -> (CancellationToken, tokio::task::JoinHandle<PoolOutcome>) {
    let token = j.cancel.clone();
    let p = p.clone();
    (token, tokio::spawn(async move { p.run(j, sink().0).await }))
}

/// The messages of the progress events `rx` holds now.
fn progress_messages(rx: &mut mpsc::Receiver<PoolEvent>) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let PoolEvent::Child(ChildEvent::Progress(pr)) = ev {
            got.push(pr.message);
        }
    }
    got
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
    assert!(matches!(
        rx.recv().await,
        Some(PoolEvent::Started { pid: Some(_), .. })
    ));
    assert!(
        matches!(rx.recv().await, Some(PoolEvent::Child(ChildEvent::Progress(pr))) if pr.message == "half")
    );
    let s = p.stats();
    assert_eq!(s.started_total, 1);
    assert_eq!(s.jobs_total, 1);
    p.shutdown(Duration::from_secs(1)).await;
    assert_eq!(p.stats().size, 0);
}

/// Without an end marker: the answer says how many events the job sent,
/// and the pool forwards that many before it reports the outcome, even when
/// the answer overtook them; none leak into the next job.
#[tokio::test]
async fn events_overtaken_by_the_answer_are_forwarded_before_it() {
    let p = pool(PoolConfig { max: 1, ..cfg() }).await;
    for _ in 0..3 {
        let (tx, mut rx) = sink();
        let o = p.run(job("late"), tx).await;
        assert!(o.result.is_ok());
        // Everything was in the sink before the outcome came back.
        assert_eq!(progress_messages(&mut rx), ["late 1", "late 2", "late 3"]);
        let (tx, mut rx) = sink();
        let o = p.run(job("echo"), tx).await;
        assert!(o.result.is_ok());
        assert_eq!(progress_messages(&mut rx), ["half"]);
    }
    p.shutdown(Duration::ZERO).await;
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
    let (token, run) = spawn_run(&p, job("abortable"));
    p.wait_stats(|s| s.busy == 1).await;
    token.cancel();
    let o = run.await.unwrap();
    assert!(matches!(
        o.result,
        Err(PoolJobError::Cancelled { killed: false })
    ));
    assert_eq!(p.stats().crashed_total, 0);

    let (token, run) = spawn_run(&p, job("hang"));
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
    let (busy_token, run) = spawn_run(&p, job("abortable"));
    p.wait_stats(|s| s.busy == 1).await;
    let o = p.run(job("echo"), sink().0).await;
    assert!(matches!(o.result, Err(PoolJobError::AcquireTimeout(_))));

    let (wt, w) = spawn_run(&p, job("echo"));
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
    let (at, ra) = spawn_run(&p, job("abortable"));
    p.wait_stats(|s| s.busy == 1).await;
    let (_, b) = spawn_run(&p, job("echo"));
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
        runs.push(spawn_run(&p, job("abortable")));
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
    let (_, r) = spawn_run(&p, job("hang"));
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
