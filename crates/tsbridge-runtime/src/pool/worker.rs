//! One worker: an async state machine (Starting -> Idle <-> Busy ->
//! Retiring -> Gone) that owns one worker process through a [`WorkerIo`],
//! takes [`WorkerCommand`]s from the pool's owner task and tells it what
//! happened through [`WorkerReport`]s. The job's caller gets its
//! [`PoolOutcome`] straight from here, before the owner task hears of it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tsbridge_proto::event::Stream;
use tsbridge_proto::{ChildEvent, LogLevel, WorkerId};
use tsbridge_sandbox::LimitEvents;

use super::config::PoolConfig;
use super::errors::{PoolJobError, WorkerExit, WorkerStartError};
use super::protocol::{self, AbortReason};
use super::{EventSink, PoolEvent, PoolJob, PoolOutcome};

/// Longer than any job: the run request's own timeout never fires (the
/// worker's timers do).
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long, after a job's answer, the rest of its events may take to come
/// through the event path (they only miss if the engine dropped events of a
/// flooding job).
const EVENTS_WAIT: Duration = Duration::from_secs(2);

/// Everything a worker process says besides answers, in order. After
/// `Exited` nothing follows.
#[derive(Debug)]
enum WorkerInput {
    /// A `progress`/`log` envelope from the host (made an event by the IPC
    /// layer, without its id), or a line of the process's stdout/stderr. It
    /// belongs to the job running now.
    Event(ChildEvent),
    /// The process (and the IPC channel) ended.
    Exited(WorkerExit),
}

/// Why an exchange with the host got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the ipc channel is closed")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The host answered with an `error` envelope; its payload.
    #[error("the worker host answered with an error")]
    Remote(Value),
}

/// The request side of a worker's IPC channel.
#[async_trait::async_trait]
pub trait HostLink: Send + Sync + fmt::Debug + 'static {
    /// Sends `{type:"request", id, payload}` with a fresh id and returns the
    /// payload of the `response` with that id, or of the `error` as
    /// [`LinkError::Remote`].
    async fn request(&self, payload: Value, timeout: Duration) -> Result<Value, LinkError>;
    /// Closes the channel; the host takes it as "exit now".
    async fn close(&self);
    /// Kills every process of the worker but the worker itself (what the
    /// last job started and left running); returns how many.
    async fn kill_strays(&self) -> usize {
        0
    }
    /// Takes the processes the worker has started so far (while loading,
    /// before any job: tsx's esbuild service) as its own, which
    /// [`HostLink::kill_strays`] leaves alone; returns how many.
    async fn keep_helpers(&self) -> usize {
        0
    }
    /// The worker's counters of limit breaches so far (its cgroup's OOM
    /// kills and refused forks); `None` when it has no limits to breach.
    /// Read around each job to tell which job hit a limit.
    fn limit_events(&self) -> Option<LimitEvents> {
        None
    }
}

/// A started worker process, as the pool drives it.
#[derive(Debug)]
pub struct WorkerIo {
    pub pid: Option<u32>,
    pub link: Arc<dyn HostLink>,
    /// The host's `progress`/`log` envelopes (made events by the IPC layer,
    /// without their ids) and the lines of its stdout/stderr, in order. It
    /// closes when the process's output has ended; they belong to the job
    /// running at the time.
    pub events: mpsc::Receiver<ChildEvent>,
    /// How the process ended, sent once `events` is closed.
    pub exit: oneshot::Receiver<WorkerExit>,
    /// Cancelling it kills the worker's whole process tree (TERM, grace, KILL).
    pub kill: CancellationToken,
}

/// What a worker process said next: an event, or (once its events are
/// over) its exit. Cancel-safe (it runs inside `select!` loops).
async fn next_input(
    events: &mut mpsc::Receiver<ChildEvent>,
    exit: &mut Option<oneshot::Receiver<WorkerExit>>,
) -> Option<WorkerInput> {
    if let Some(ev) = events.recv().await {
        return Some(WorkerInput::Event(ev));
    }
    // Cancel-safe: the receiver stays in place until it has fired.
    let code = match exit.as_mut() {
        Some(rx) => {
            let code = rx.await.unwrap_or(WorkerExit::Unknown);
            *exit = None;
            code
        }
        None => WorkerExit::Unknown,
    };
    Some(WorkerInput::Exited(code))
}

/// Starts worker processes (the engine in production, a fake in unit tests).
#[async_trait::async_trait]
pub trait Launcher: Send + Sync + 'static {
    async fn launch(&self, worker: WorkerId) -> Result<WorkerIo, WorkerStartError>;
}

/// A job handed to a worker.
#[derive(Debug)]
pub(crate) struct Assignment {
    pub job: PoolJob,
    pub sink: EventSink,
    pub reply: oneshot::Sender<PoolOutcome>,
    pub queued: Duration,
}

#[derive(Debug)]
pub(crate) enum WorkerCommand {
    Run(Box<Assignment>),
    Ping,
    /// End when idle: close the channel, wait up to the kill grace, kill.
    Retire,
    /// End now, also mid-job (the job fails with `ShuttingDown`).
    Kill,
}

#[derive(Debug)]
pub(crate) enum WorkerReport {
    Ready {
        worker: WorkerId,
        pid: Option<u32>,
    },
    StartFailed {
        worker: WorkerId,
        error: WorkerStartError,
    },
    /// The job's outcome went to its caller; `kept`: the worker is idle again.
    JobDone {
        worker: WorkerId,
        kept: bool,
    },
    Pong {
        worker: WorkerId,
        rss: Option<u64>,
    },
    /// The process ended. `crashed`: nobody in the pool asked it to.
    Gone {
        worker: WorkerId,
        exit: WorkerExit,
        crashed: bool,
    },
}

type Answer = Pin<Box<dyn Future<Output = Result<Value, LinkError>> + Send>>;

struct Worker {
    id: WorkerId,
    cfg: Arc<PoolConfig>,
    io: Io,
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    reports: mpsc::UnboundedSender<WorkerReport>,
}

/// Runs one worker from launch to its end.
pub(crate) async fn run_worker(
    id: WorkerId,
    launcher: Arc<dyn Launcher>,
    cfg: Arc<PoolConfig>,
    mut commands: mpsc::UnboundedReceiver<WorkerCommand>,
    reports: mpsc::UnboundedSender<WorkerReport>,
) {
    let launched = tokio::select! {
        r = launcher.launch(id) => r,
        cmd = commands.recv() => match cmd {
            // Nothing was started yet if the launch future is dropped here
            // (the engine kills a child whose spawn reply nobody takes).
            Some(WorkerCommand::Retire | WorkerCommand::Kill) | None => Err(WorkerStartError::ShuttingDown),
            Some(other) => {
                tracing::error!(worker = %id, ?other, "command sent to a worker before it was ready");
                Err(WorkerStartError::ShuttingDown)
            }
        },
    };
    // The launcher owns the host script file: hold it no longer than needed.
    drop(launcher);
    let io = match launched {
        Ok(io) => io,
        Err(error) => {
            let _ = reports.send(WorkerReport::StartFailed { worker: id, error });
            return;
        }
    };
    let io = Io {
        pid: io.pid,
        link: io.link,
        events: io.events,
        exit: Some(io.exit),
        kill: io.kill,
    };
    let mut w = Worker {
        id,
        cfg,
        io,
        commands,
        reports,
    };
    w.run().await;
}

/// The parts of a [`WorkerIo`] a worker task holds.
struct Io {
    pid: Option<u32>,
    link: Arc<dyn HostLink>,
    events: mpsc::Receiver<ChildEvent>,
    /// `None` once the exit was read.
    exit: Option<oneshot::Receiver<WorkerExit>>,
    kill: CancellationToken,
}

/// How a worker's life ended, for the final report.
struct End {
    exit: WorkerExit,
    crashed: bool,
}

enum JobEnd {
    Kept,
    Retire,
    Dead { exit: WorkerExit, crashed: bool },
}

impl Worker {
    fn report(&self, r: WorkerReport) {
        let _ = self.reports.send(r);
    }

    fn ask(&self, payload: Value, timeout: Duration) -> Answer {
        let link = self.io.link.clone();
        Box::pin(async move { link.request(payload, timeout).await })
    }

    async fn run(&mut self) {
        let pid = match self.start().await {
            Ok(pid) => pid,
            Err(error) => {
                self.io.kill.cancel();
                self.drain_until_exit(None).await;
                self.report(WorkerReport::StartFailed {
                    worker: self.id,
                    error,
                });
                return;
            }
        };
        self.report(WorkerReport::Ready {
            worker: self.id,
            pid,
        });
        let End { exit, crashed } = self.serve().await;
        self.report(WorkerReport::Gone {
            worker: self.id,
            exit,
            crashed,
        });
    }

    /// Waits until the host answers a ping with `ready` (Node queues the
    /// ping until the module is loaded and the host listens).
    async fn start(&mut self) -> Result<Option<u32>, WorkerStartError> {
        let timeout = self.cfg.startup_timeout;
        let mut answer = self.ask(protocol::ping_payload(), timeout);
        // The last error logged while starting: the host's fatal message.
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                r = &mut answer => match r {
                    Ok(v) => {
                        let pong = protocol::parse_pong(&v);
                        if pong.ready {
                            // What its runtime started while loading is
                            // not a job's stray: tsx's esbuild service,
                            // killed, fails every later import of a .ts
                            // module ("The service is no longer running").
                            let helpers = self.io.link.keep_helpers().await;
                            tracing::debug!(worker = %self.id, exports = ?pong.exports, helpers, "worker host ready");
                            return Ok(self.io.pid.or(pong.pid));
                        }
                        answer = self.ask(protocol::ping_payload(), timeout);
                    }
                    Err(LinkError::Timeout(_)) => return Err(WorkerStartError::ReadyTimeout(timeout)),
                    // Closed: the process is ending; its exit says why.
                    Err(_) => answer = Box::pin(std::future::pending()),
                },
                input = next_input(&mut self.io.events, &mut self.io.exit) => match input {
                    Some(WorkerInput::Event(ev)) => {
                        if let ChildEvent::Log { level: LogLevel::Error, message, .. } = &ev {
                            last_error = Some(message.clone());
                        }
                        log_output(self.id, &ev);
                    }
                    Some(WorkerInput::Exited(exit)) => return Err(start_failure(last_error, exit)),
                    None => return Err(start_failure(last_error, WorkerExit::Unknown)),
                },
                cmd = self.commands.recv() => match cmd {
                    Some(WorkerCommand::Retire | WorkerCommand::Kill) | None => return Err(WorkerStartError::ShuttingDown),
                    Some(WorkerCommand::Ping) => {}
                    Some(WorkerCommand::Run(a)) => {
                        // The owner task only assigns ready workers; answer rather than hang.
                        let _ = a.reply.send(PoolOutcome::failed(PoolJobError::ShuttingDown, a.queued));
                    }
                },
            }
        }
    }

    /// Idle <-> Busy until the worker ends.
    async fn serve(&mut self) -> End {
        let mut ping: Option<Answer> = None;
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(WorkerCommand::Run(a)) => {
                        ping = None;
                        match self.run_job(*a).await {
                            JobEnd::Kept => self.report(WorkerReport::JobDone { worker: self.id, kept: true }),
                            JobEnd::Retire => {
                                self.report(WorkerReport::JobDone { worker: self.id, kept: false });
                                return self.retire().await;
                            }
                            JobEnd::Dead { exit, crashed } => {
                                self.report(WorkerReport::JobDone { worker: self.id, kept: false });
                                return End { exit, crashed };
                            }
                        }
                    }
                    Some(WorkerCommand::Ping) => {
                        if ping.is_none() {
                            ping = Some(self.ask(protocol::ping_payload(), self.cfg.ping_timeout));
                        }
                    }
                    Some(WorkerCommand::Retire) => return self.retire().await,
                    Some(WorkerCommand::Kill) | None => return self.kill().await,
                },
                Some(r) = futures::future::OptionFuture::from(ping.as_mut()), if ping.is_some() => {
                    ping = None;
                    match r {
                        Ok(v) => {
                            let pong = protocol::parse_pong(&v);
                            self.report(WorkerReport::Pong { worker: self.id, rss: pong.rss });
                        }
                        Err(LinkError::Timeout(t)) => {
                            tracing::warn!(worker = %self.id, timeout = ?t, "worker did not answer a ping: killing it");
                            self.io.kill.cancel();
                            let exit = self.drain_until_exit(None).await;
                            return End { exit, crashed: true };
                        }
                        // Closed or an error answer: the exit (if any) follows the events.
                        Err(e) => tracing::debug!(worker = %self.id, error = %e, "ping failed"),
                    }
                }
                input = next_input(&mut self.io.events, &mut self.io.exit) => match input {
                    Some(WorkerInput::Event(ev)) => log_output(self.id, &ev),
                    Some(WorkerInput::Exited(exit)) => return End { exit, crashed: true },
                    None => return End { exit: WorkerExit::Unknown, crashed: true },
                },
            }
        }
    }

    async fn run_job(&mut self, a: Assignment) -> JobEnd {
        let Assignment {
            mut job,
            sink,
            reply,
            queued,
        } = a;
        let started = Instant::now();
        let job_id = job.job_id.to_string();
        let timeout = match (job.timeout, self.cfg.job_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = timeout.map(|t| started + t);
        let _ = sink
            .send(PoolEvent::Started {
                worker: self.id,
                pid: self.io.pid,
            })
            .await;
        let limits_before = self.io.link.limit_events();
        let mut answer = Some(self.ask(
            protocol::run_payload(&job_id, &job.workflow, std::mem::take(&mut job.params)),
            NO_TIMEOUT,
        ));

        // Set once a cancel/timeout/shutdown has been sent to the host.
        let mut abort: Option<(AbortReason, Instant)> = None;
        let mut killed = false;
        let mut retire_after = false;
        // The job's progress/log events forwarded so far (its answer says
        // how many it sent).
        let mut seen: u64 = 0;
        let aborted_error = |reason: AbortReason, killed: bool| match reason {
            AbortReason::Timeout => PoolJobError::Timeout {
                after: timeout.unwrap_or_default(),
                killed,
            },
            AbortReason::Cancelled => PoolJobError::Cancelled { killed },
            AbortReason::Shutdown => PoolJobError::ShuttingDown,
        };
        let (worker, pid) = (self.id, self.io.pid);
        let finish = |result: Result<Value, PoolJobError>| {
            let _ = reply.send(PoolOutcome {
                result,
                worker: Some(worker),
                pid,
                queued,
                ran: started.elapsed(),
            });
        };

        loop {
            let kill_at = abort.as_ref().map(|(_, at)| *at);
            tokio::select! {
                biased;
                input = next_input(&mut self.io.events, &mut self.io.exit) => match input {
                    Some(WorkerInput::Event(ev)) => {
                        seen += u64::from(counts(&ev));
                        let _ = sink.send(PoolEvent::Child(neutralize(ev))).await;
                    }
                    Some(WorkerInput::Exited(exit)) => {
                        let error = match abort {
                            Some((reason, _)) if killed => aborted_error(reason, true),
                            _ => PoolJobError::WorkerCrashed { worker: self.id, exit },
                        };
                        finish(Err(error));
                        return JobEnd::Dead { exit, crashed: !killed };
                    }
                    None => {
                        finish(Err(PoolJobError::WorkerCrashed { worker: self.id, exit: WorkerExit::Unknown }));
                        return JobEnd::Dead { exit: WorkerExit::Unknown, crashed: !killed };
                    }
                },
                Some(r) = futures::future::OptionFuture::from(answer.as_mut()), if answer.is_some() => {
                    answer = None;
                    let (result, events) = match r {
                        Ok(mut answer) => {
                            let events = protocol::event_count(&answer);
                            (Ok(answer.get_mut("value").map(Value::take).unwrap_or(Value::Null)), events)
                        }
                        Err(LinkError::Remote(payload)) => {
                            let f = protocol::parse_failure(&payload);
                            let limit = limits_before.and_then(|before| {
                                self.io.link.limit_events().and_then(|now| now.since(&before))
                            });
                            let err = match limit {
                                Some(limit) => PoolJobError::LimitHit { limit, message: f.message },
                                None => PoolJobError::Handler {
                                    message: f.message,
                                    name: f.name,
                                    stack: if self.cfg.dev_mode { f.stack } else { None },
                                },
                            };
                            (Err(err), protocol::event_count(&payload))
                        }
                        // The channel closed under the job: the process is
                        // ending; wait for its exit (the arm above).
                        Err(e) => {
                            tracing::debug!(worker = %self.id, job = %job_id, error = %e, "run request failed");
                            continue;
                        }
                    };
                    // The job's events travel on another path than its
                    // answer: forward as many as it sent first.
                    let exited = if seen >= events {
                        None
                    } else {
                        self.forward_remaining(&sink, events - seen).await
                    };
                    let result = match abort {
                        Some((reason, _)) => Err(aborted_error(reason, false)),
                        None => result,
                    };
                    // Nothing the job started outlives it (a detached child,
                    // a setsid daemon): killed before its end is reported
                    // and before the worker takes another job.
                    if exited.is_none() {
                        let strays = self.io.link.kill_strays().await;
                        if strays > 0 {
                            tracing::info!(worker = %self.id, job = %job_id, strays, "killed the processes the job left running");
                            let _ = sink
                                .send(PoolEvent::Child(ChildEvent::Log {
                                    level: tsbridge_proto::LogLevel::Warn,
                                    message: format!("tsbridge killed {strays} process(es) the job left running"),
                                    child_timestamp: None,
                                }))
                                .await;
                        }
                    }
                    finish(result);
                    if let Some(exit) = exited {
                        return JobEnd::Dead { exit, crashed: !killed };
                    }
                    return if retire_after || matches!(abort, Some((AbortReason::Shutdown, _))) {
                        JobEnd::Retire
                    } else {
                        JobEnd::Kept
                    };
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && abort.is_none() => {
                    abort = Some(self.abort(&job_id, AbortReason::Timeout));
                }
                _ = job.cancel.cancelled(), if abort.is_none() => {
                    abort = Some(self.abort(&job_id, AbortReason::Cancelled));
                }
                _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() && !killed => {
                    tracing::info!(worker = %self.id, job = %job_id, grace = ?self.cfg.kill_grace, "handler ignored its abort signal: killing the worker");
                    killed = true;
                    self.io.kill.cancel();
                }
                cmd = self.commands.recv(), if !killed => match cmd {
                    Some(WorkerCommand::Kill) | None => {
                        if abort.is_none() {
                            self.abort(&job_id, AbortReason::Shutdown);
                        }
                        abort = Some((AbortReason::Shutdown, Instant::now()));
                        killed = true;
                        self.io.kill.cancel();
                    }
                    Some(WorkerCommand::Retire) => retire_after = true,
                    Some(WorkerCommand::Ping) => {}
                    Some(WorkerCommand::Run(other)) => {
                        tracing::error!(worker = %self.id, "job assigned to a busy worker");
                        let _ = other.reply.send(PoolOutcome::failed(PoolJobError::ShuttingDown, other.queued));
                    }
                },
            }
        }
    }

    /// Forwards the job's events until `missing` more progress/log events
    /// went through (or the process's exit, returned, or [`EVENTS_WAIT`]).
    async fn forward_remaining(
        &mut self,
        sink: &EventSink,
        mut missing: u64,
    ) -> Option<WorkerExit> {
        let give_up = Instant::now() + EVENTS_WAIT;
        loop {
            tokio::select! {
                biased;
                input = next_input(&mut self.io.events, &mut self.io.exit) => match input {
                    Some(WorkerInput::Event(ev)) => {
                        missing = missing.saturating_sub(u64::from(counts(&ev)));
                        let _ = sink.send(PoolEvent::Child(neutralize(ev))).await;
                        if missing == 0 {
                            return None;
                        }
                    }
                    Some(WorkerInput::Exited(exit)) => return Some(exit),
                    None => return Some(WorkerExit::Unknown),
                },
                _ = sleep_until(give_up) => {
                    tracing::debug!(worker = %self.id, missing, "events of the job did not arrive");
                    return None;
                }
            }
        }
    }

    /// Sends a cancel for the running job (its answer is not awaited) and
    /// returns when the kill grace ends.
    fn abort(&self, job_id: &str, reason: AbortReason) -> (AbortReason, Instant) {
        let ask = self.ask(
            protocol::cancel_payload(job_id, reason),
            self.cfg.kill_grace,
        );
        tokio::spawn(async move {
            let _ = ask.await;
        });
        (reason, Instant::now() + self.cfg.kill_grace)
    }

    /// Closes the channel (the host exits), waits up to the kill grace, then kills.
    async fn retire(&mut self) -> End {
        self.io.link.close().await;
        let exit = self
            .drain_until_exit(Some(Instant::now() + self.cfg.kill_grace))
            .await;
        End {
            exit,
            crashed: false,
        }
    }

    async fn kill(&mut self) -> End {
        self.io.kill.cancel();
        let exit = self.drain_until_exit(None).await;
        End {
            exit,
            crashed: false,
        }
    }

    /// Reads until the process has ended; kills it at `kill_at` if given.
    async fn drain_until_exit(&mut self, kill_at: Option<Instant>) -> WorkerExit {
        let mut kill_at = kill_at;
        loop {
            tokio::select! {
                input = next_input(&mut self.io.events, &mut self.io.exit) => match input {
                    Some(WorkerInput::Exited(exit)) => return exit,
                    None => return WorkerExit::Unknown,
                    Some(WorkerInput::Event(ev)) => log_output(self.id, &ev),
                },
                _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                    kill_at = None;
                    self.io.kill.cancel();
                }
            }
        }
    }
}

fn start_failure(last_error: Option<String>, exit: WorkerExit) -> WorkerStartError {
    match exit {
        WorkerExit::Code(protocol::EXIT_FATAL) => WorkerStartError::Fatal {
            message: last_error.unwrap_or_else(|| "the module could not be loaded".into()),
        },
        exit => WorkerStartError::ExitedEarly { exit, last_error },
    }
}

/// Whether an event is one the host counts in a job's `events`: its
/// `progress` and `log` envelopes. A handler's own protocol lines on
/// stdout/stderr become the same kinds of event and count too; they only
/// shorten the wait (their order against the answer is not guaranteed
/// anyway: they travel on other pipes).
fn counts(ev: &ChildEvent) -> bool {
    matches!(ev, ChildEvent::Progress(_) | ChildEvent::Log { .. })
}

/// Stdout is not the protocol in pool mode: a stray `RESULT:` line a
/// handler wrote with process.stdout.write (or a `result` envelope it sent
/// itself) is plain output, not the job's value.
fn neutralize(ev: ChildEvent) -> ChildEvent {
    match ev {
        ChildEvent::Result { value } => ChildEvent::Output {
            stream: Stream::Stdout,
            line: format!("RESULT: {value}"),
        },
        other => other,
    }
}

fn log_output(worker: WorkerId, ev: &ChildEvent) {
    match ev {
        ChildEvent::Output { stream, line } => {
            tracing::debug!(worker = %worker, ?stream, line = %line, "worker output outside a job")
        }
        other => tracing::debug!(worker = %worker, event = ?other, "worker event outside a job"),
    }
}
