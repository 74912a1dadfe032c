//! One worker: an async state machine (Starting -> Idle <-> Busy ->
//! Retiring -> Gone) that owns one worker process through a [`WorkerIo`],
//! takes [`WorkerCommand`]s from the pool's owner task and tells it what
//! happened through [`WorkerReport`]s. The job's caller gets its
//! [`PoolOutcome`] straight from here, before the owner task hears of it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tsbridge_proto::event::Stream;
use tsbridge_proto::{ChildEvent, WorkerId};

use super::config::PoolConfig;
use super::errors::{PoolJobError, WorkerExit, WorkerStartError};
use super::protocol::{self, AbortReason, HostMessage};
use super::{EventSink, PoolJob, PoolOutcome};

/// Everything from a worker process, in order. After `Exited` nothing follows.
#[derive(Debug)]
pub enum WorkerInput {
    /// One JSON message from the host over the IPC channel.
    Message(Value),
    /// A `progress`/`log`/`result` envelope from the host that the IPC
    /// layer already turned into an event (without its id): it belongs to
    /// the job running now. A `Result` here is that job's value.
    HostEvent(ChildEvent),
    /// A line the process wrote to stdout or stderr (pool hosts keep stdout
    /// free, so these are stray writes and crash traces).
    Output(ChildEvent),
    /// The process (and the IPC channel) ended.
    Exited(WorkerExit),
}

/// A started worker process, as the pool drives it.
#[derive(Debug)]
pub struct WorkerIo {
    pub pid: Option<u32>,
    /// Messages to the host. Dropping it closes the IPC channel, which the
    /// host takes as "exit now".
    pub to_host: mpsc::UnboundedSender<Value>,
    pub from_host: mpsc::Receiver<WorkerInput>,
    /// Cancelling it kills the worker's whole process tree (TERM, grace, KILL).
    pub kill: CancellationToken,
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
        rss: Option<u64>,
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

struct Worker {
    id: WorkerId,
    cfg: Arc<PoolConfig>,
    io: WorkerIo,
    commands: mpsc::UnboundedReceiver<WorkerCommand>,
    reports: mpsc::UnboundedSender<WorkerReport>,
    next_request: u64,
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
    let mut w = Worker {
        id,
        cfg,
        io,
        commands,
        reports,
        next_request: 0,
    };
    w.run().await;
}

/// How a worker's life ended, for the final report.
struct End {
    exit: WorkerExit,
    crashed: bool,
}

impl Worker {
    fn request_id(&mut self, kind: &str) -> String {
        self.next_request += 1;
        format!("{kind}-{}-{}", self.id, self.next_request)
    }

    fn send(&self, msg: Value) {
        // A closed channel shows up as `Exited` on from_host; nothing to do here.
        let _ = self.io.to_host.send(msg);
    }

    fn report(&self, r: WorkerReport) {
        let _ = self.reports.send(r);
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

    /// Waits for the host's ready message, then proves it answers a ping.
    async fn start(&mut self) -> Result<Option<u32>, WorkerStartError> {
        let deadline = Instant::now() + self.cfg.startup_timeout;
        let mut pid = self.io.pid;
        let mut ping: Option<String> = None;
        let mut fatal: Option<(String, Option<String>)> = None;
        loop {
            tokio::select! {
                input = self.io.from_host.recv() => match input {
                    Some(WorkerInput::Message(v)) => match protocol::parse(v) {
                        HostMessage::Ready { pid: p, .. } => {
                            pid = pid.or(p);
                            let id = self.request_id("ping");
                            self.send(protocol::ping_request(&id));
                            ping = Some(id);
                        }
                        HostMessage::Pong { request, .. } if ping.as_ref() == Some(&request) => return Ok(pid),
                        HostMessage::Fatal { message, stack } => fatal = Some((message, stack)),
                        other => tracing::debug!(worker = %self.id, ?other, "unexpected message while starting"),
                    },
                    Some(WorkerInput::Output(ev) | WorkerInput::HostEvent(ev)) => log_output(self.id, &ev),
                    Some(WorkerInput::Exited(exit)) => return Err(start_failure(fatal, exit)),
                    None => return Err(start_failure(fatal, WorkerExit::Unknown)),
                },
                _ = sleep_until(deadline) => {
                    return Err(match fatal {
                        Some((message, stack)) => WorkerStartError::Fatal { message, stack },
                        None => WorkerStartError::ReadyTimeout(self.cfg.startup_timeout),
                    });
                }
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
        let mut ping: Option<(String, Instant)> = None;
        loop {
            let ping_deadline = ping.as_ref().map(|(_, d)| *d);
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(WorkerCommand::Run(a)) => {
                        ping = None;
                        match self.run_job(*a).await {
                            JobEnd::Kept { rss } => self.report(WorkerReport::JobDone { worker: self.id, kept: true, rss }),
                            JobEnd::Retire { rss } => {
                                self.report(WorkerReport::JobDone { worker: self.id, kept: false, rss });
                                return self.retire().await;
                            }
                            JobEnd::Dead { exit, crashed } => {
                                self.report(WorkerReport::JobDone { worker: self.id, kept: false, rss: None });
                                return End { exit, crashed };
                            }
                        }
                    }
                    Some(WorkerCommand::Ping) => {
                        if ping.is_none() {
                            let id = self.request_id("ping");
                            self.send(protocol::ping_request(&id));
                            ping = Some((id, Instant::now() + self.cfg.ping_timeout));
                        }
                    }
                    Some(WorkerCommand::Retire) => return self.retire().await,
                    Some(WorkerCommand::Kill) | None => return self.kill().await,
                },
                input = self.io.from_host.recv() => match input {
                    Some(WorkerInput::Message(v)) => match protocol::parse(v) {
                        HostMessage::Pong { request, rss } if ping.as_ref().is_some_and(|(id, _)| *id == request) => {
                            ping = None;
                            self.report(WorkerReport::Pong { worker: self.id, rss });
                        }
                        other => tracing::debug!(worker = %self.id, ?other, "message from an idle worker ignored"),
                    },
                    Some(WorkerInput::Output(ev) | WorkerInput::HostEvent(ev)) => log_output(self.id, &ev),
                    Some(WorkerInput::Exited(exit)) => return End { exit, crashed: true },
                    None => return End { exit: WorkerExit::Unknown, crashed: true },
                },
                _ = sleep_until(ping_deadline.unwrap_or_else(Instant::now)), if ping_deadline.is_some() => {
                    tracing::warn!(worker = %self.id, timeout = ?self.cfg.ping_timeout, "worker did not answer a ping: killing it");
                    self.io.kill.cancel();
                    let exit = self.drain_until_exit(None).await;
                    return End { exit, crashed: true };
                }
            }
        }
    }

    async fn run_job(&mut self, a: Assignment) -> JobEnd {
        let Assignment {
            job,
            sink,
            reply,
            queued,
        } = a;
        let started = Instant::now();
        let id = job.job_id.to_string();
        let timeout = match (job.timeout, self.cfg.job_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = timeout.map(|t| started + t);
        self.send(protocol::run_request(&id, &job.workflow, &job.params));

        // Set once a cancel/timeout/shutdown has been sent to the host.
        let mut abort: Option<(AbortReason, Instant)> = None;
        let mut killed = false;
        let mut retire_after = false;
        let aborted_error = |reason: AbortReason, killed: bool| match reason {
            AbortReason::Timeout => PoolJobError::Timeout {
                after: timeout.unwrap_or_default(),
                killed,
            },
            AbortReason::Cancelled => PoolJobError::Cancelled { killed },
            AbortReason::Shutdown => PoolJobError::ShuttingDown,
        };
        let outcome =
            |result: Result<Value, PoolJobError>, pid: Option<u32>, worker: WorkerId| PoolOutcome {
                result,
                worker: Some(worker),
                pid,
                queued,
                ran: started.elapsed(),
            };

        loop {
            let kill_at = abort.as_ref().map(|(_, at)| *at);
            tokio::select! {
                biased;
                input = self.io.from_host.recv() => match input {
                    Some(WorkerInput::Message(v)) => {
                        let rss = v.get("rss").and_then(Value::as_u64);
                        match protocol::parse(v) {
                            HostMessage::JobEvent { job: j, event } if j == id => {
                                let _ = sink.send(event).await;
                            }
                            HostMessage::JobResult { job: j, value } if j == id => {
                                let result = match abort {
                                    Some((reason, _)) => Err(aborted_error(reason, false)),
                                    None => Ok(value),
                                };
                                let _ = reply.send(outcome(result, self.io.pid, self.id));
                                return self.after_job(abort, retire_after, rss);
                            }
                            HostMessage::JobFailed { job: j, failure } if j == id => {
                                let result = match abort {
                                    Some((reason, _)) => Err(aborted_error(reason, false)),
                                    None => Err(PoolJobError::Handler {
                                        message: failure.message,
                                        name: failure.name,
                                        stack: if self.cfg.dev_mode { failure.stack } else { None },
                                    }),
                                };
                                let _ = reply.send(outcome(result, self.io.pid, self.id));
                                return self.after_job(abort, retire_after, rss);
                            }
                            other => tracing::debug!(worker = %self.id, job = %id, ?other, "message ignored during a job"),
                        }
                    }
                    Some(WorkerInput::HostEvent(ChildEvent::Result { value })) => {
                        let result = match abort {
                            Some((reason, _)) => Err(aborted_error(reason, false)),
                            None => Ok(value),
                        };
                        let _ = reply.send(outcome(result, self.io.pid, self.id));
                        return self.after_job(abort, retire_after, None);
                    }
                    Some(WorkerInput::HostEvent(ev)) => {
                        let _ = sink.send(ev).await;
                    }
                    Some(WorkerInput::Output(ev)) => {
                        let _ = sink.send(neutralize(ev)).await;
                    }
                    Some(WorkerInput::Exited(exit)) => {
                        let result = match abort {
                            Some((reason, _)) if killed => aborted_error(reason, true),
                            _ => PoolJobError::WorkerCrashed { worker: self.id, exit },
                        };
                        let _ = reply.send(outcome(Err(result), self.io.pid, self.id));
                        return JobEnd::Dead { exit, crashed: !killed };
                    }
                    None => {
                        let exit = WorkerExit::Unknown;
                        let _ = reply.send(outcome(Err(PoolJobError::WorkerCrashed { worker: self.id, exit }), self.io.pid, self.id));
                        return JobEnd::Dead { exit, crashed: !killed };
                    }
                },
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && abort.is_none() => {
                    abort = Some(self.abort(&id, AbortReason::Timeout));
                }
                _ = job.cancel.cancelled(), if abort.is_none() => {
                    abort = Some(self.abort(&id, AbortReason::Cancelled));
                }
                _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() && !killed => {
                    tracing::info!(worker = %self.id, job = %id, grace = ?self.cfg.kill_grace, "handler ignored its abort signal: killing the worker");
                    killed = true;
                    self.io.kill.cancel();
                }
                cmd = self.commands.recv(), if !killed => match cmd {
                    Some(WorkerCommand::Kill) | None => {
                        if abort.is_none() {
                            let req = self.request_id("cancel");
                            self.send(protocol::cancel_request(&req, &id, AbortReason::Shutdown));
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

    fn abort(&mut self, job: &str, reason: AbortReason) -> (AbortReason, Instant) {
        let req = self.request_id("cancel");
        self.send(protocol::cancel_request(&req, job, reason));
        (reason, Instant::now() + self.cfg.kill_grace)
    }

    fn after_job(
        &self,
        abort: Option<(AbortReason, Instant)>,
        retire_after: bool,
        rss: Option<u64>,
    ) -> JobEnd {
        if retire_after || matches!(abort, Some((AbortReason::Shutdown, _))) {
            JobEnd::Retire { rss }
        } else {
            JobEnd::Kept { rss }
        }
    }

    /// Closes the channel (the host exits), waits up to the kill grace, then kills.
    async fn retire(&mut self) -> End {
        let (closed, _) = mpsc::unbounded_channel();
        // Replacing the sender drops ours: the channel closes.
        self.io.to_host = closed;
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
                input = self.io.from_host.recv() => match input {
                    Some(WorkerInput::Exited(exit)) => return exit,
                    None => return WorkerExit::Unknown,
                    Some(WorkerInput::Output(ev) | WorkerInput::HostEvent(ev)) => log_output(self.id, &ev),
                    Some(WorkerInput::Message(_)) => {}
                },
                _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                    kill_at = None;
                    self.io.kill.cancel();
                }
            }
        }
    }
}

enum JobEnd {
    Kept { rss: Option<u64> },
    Retire { rss: Option<u64> },
    Dead { exit: WorkerExit, crashed: bool },
}

fn start_failure(fatal: Option<(String, Option<String>)>, exit: WorkerExit) -> WorkerStartError {
    match fatal {
        Some((message, stack)) => WorkerStartError::Fatal { message, stack },
        None => WorkerStartError::ExitedEarly { exit },
    }
}

/// Stdout is not the protocol in pool mode: a stray `RESULT:` line a
/// handler wrote with process.stdout.write is plain output, not a result.
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
