//! The pool's owner task: the one place that knows which workers exist and
//! what each is doing. It linearizes everything (job requests, worker
//! reports, timers, shutdown) through one `select!` and never awaits while
//! holding state; workers and callers talk to it over channels only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tsbridge_proto::WorkerId;

use super::config::PoolConfig;
use super::errors::{PoolJobError, WorkerStartError};
use super::worker::{Assignment, Launcher, WorkerCommand, WorkerReport, run_worker};
use super::{EventSink, PoolJob, PoolOutcome, PoolStats};

/// Worker ids are unique within the process's life.
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub(crate) enum Command {
    Run {
        ticket: u64,
        job: PoolJob,
        sink: EventSink,
        reply: oneshot::Sender<PoolOutcome>,
    },
    /// The caller's cancel token fired: drop the job if it still waits.
    Withdraw { ticket: u64 },
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

/// What one worker slot is doing, as the owner task knows it.
#[derive(Debug)]
enum SlotState {
    Starting,
    Idle {
        since: Instant,
    },
    Busy {
        ticket: u64,
    },
    /// Told to end (recycled, idle-retired, killed); its `Gone` is awaited.
    Retiring,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    tx: mpsc::UnboundedSender<WorkerCommand>,
    started_at: Instant,
    jobs: u64,
    rss: Option<u64>,
    last_ping: Instant,
}

#[derive(Debug)]
struct Waiting {
    ticket: u64,
    job: PoolJob,
    sink: EventSink,
    reply: oneshot::Sender<PoolOutcome>,
    enqueued: Instant,
}

/// Why a worker is retired (for logs and counters).
#[derive(Clone, Copy, Debug)]
enum RetireWhy {
    MaxJobs,
    MaxAge,
    Rss,
    Idle,
    Shutdown,
}

#[derive(Debug)]
enum Phase {
    Running,
    Draining {
        deadline: Instant,
        killed: bool,
        done: Vec<oneshot::Sender<()>>,
    },
}

pub(crate) struct Dispatcher {
    cfg: Arc<PoolConfig>,
    name: String,
    launcher: Arc<dyn Launcher>,
    commands: mpsc::UnboundedReceiver<Command>,
    reports_tx: mpsc::UnboundedSender<WorkerReport>,
    reports: mpsc::UnboundedReceiver<WorkerReport>,
    workers: BTreeMap<WorkerId, Slot>,
    waiting: VecDeque<Waiting>,
    stats: PoolStats,
    stats_tx: watch::Sender<PoolStats>,
    phase: Phase,
    /// Warmup: the workers still to prove ready, and whom to tell.
    warmup: Option<(Vec<WorkerId>, WarmupReply)>,
    /// After failed starts, replenishing to `min` waits until then.
    start_backoff: Option<(Instant, Duration)>,
}

pub(crate) type WarmupReply = oneshot::Sender<Result<(), (WorkerId, WorkerStartError)>>;

impl Dispatcher {
    pub(crate) fn new(
        name: String,
        cfg: Arc<PoolConfig>,
        launcher: Arc<dyn Launcher>,
        commands: mpsc::UnboundedReceiver<Command>,
        stats_tx: watch::Sender<PoolStats>,
    ) -> Self {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        Self {
            cfg,
            name,
            launcher,
            commands,
            reports_tx,
            reports,
            workers: BTreeMap::new(),
            waiting: VecDeque::new(),
            stats: PoolStats::default(),
            stats_tx,
            phase: Phase::Running,
            warmup: None,
            start_backoff: None,
        }
    }

    /// Starts `min` workers now; `reply` learns when all are ready (or the first failure).
    pub(crate) fn warm_up(&mut self, reply: WarmupReply) {
        let ids: Vec<WorkerId> = (0..self.cfg.min).map(|_| self.spawn_worker()).collect();
        if ids.is_empty() {
            let _ = reply.send(Ok(()));
        } else {
            self.warmup = Some((ids, reply));
        }
        self.publish();
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.cfg.maintenance_tick());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut handles_gone = false;
        let done = loop {
            let acquire_deadline = self
                .waiting
                .front()
                .map(|w| w.enqueued + self.cfg.acquire_timeout);
            let drain_deadline = match &self.phase {
                Phase::Draining {
                    deadline,
                    killed: false,
                    ..
                } => Some(*deadline),
                _ => None,
            };
            tokio::select! {
                cmd = self.commands.recv(), if !handles_gone => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Every Pool handle is gone: end the workers now.
                    None => {
                        handles_gone = true;
                        self.begin_shutdown(Duration::ZERO, None);
                    }
                },
                Some(report) = self.reports.recv() => self.on_report(report),
                _ = sleep_until(acquire_deadline.unwrap_or_else(Instant::now)), if acquire_deadline.is_some() => {
                    self.expire_waiting();
                }
                _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                    self.kill_busy();
                }
                _ = tick.tick() => self.maintain(),
            }
            if let Phase::Draining { done, .. } = &mut self.phase
                && self.workers.is_empty()
            {
                let done = std::mem::take(done);
                self.publish();
                break done;
            }
            self.publish();
        };
        tracing::debug!(pool = %self.name, "pool drained");
        // Every worker has ended: drop the launcher (it owns the
        // materialized host script, which goes with it), tell the shutdown
        // callers, then answer late callers until every handle is gone.
        let Dispatcher {
            mut commands,
            launcher,
            ..
        } = self;
        drop(launcher);
        for d in done {
            let _ = d.send(());
        }
        commands.close();
        while let Some(cmd) = commands.recv().await {
            match cmd {
                Command::Run { reply, .. } => {
                    let _ = reply.send(PoolOutcome::failed(
                        PoolJobError::ShuttingDown,
                        Duration::ZERO,
                    ));
                }
                Command::Shutdown { done, .. } => {
                    let _ = done.send(());
                }
                Command::Withdraw { .. } => {}
            }
        }
    }

    fn publish(&mut self) {
        let mut s = self.stats;
        s.size = 0;
        s.idle = 0;
        s.busy = 0;
        s.starting = 0;
        for slot in self.workers.values() {
            match slot.state {
                SlotState::Starting => s.starting += 1,
                SlotState::Idle { .. } => s.idle += 1,
                SlotState::Busy { .. } => s.busy += 1,
                SlotState::Retiring => {}
            }
        }
        s.size = s.starting + s.idle + s.busy;
        s.waiting = self.waiting.len();
        self.stats = s;
        self.stats_tx.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
    }

    fn draining(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
    }

    /// Workers that are or will be able to take jobs.
    fn live(&self) -> usize {
        self.workers
            .values()
            .filter(|s| !matches!(s.state, SlotState::Retiring))
            .count()
    }

    fn spawn_worker(&mut self) -> WorkerId {
        let id = WorkerId(NEXT_WORKER.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        self.workers.insert(
            id,
            Slot {
                state: SlotState::Starting,
                tx,
                started_at: now,
                jobs: 0,
                rss: None,
                last_ping: now,
            },
        );
        self.stats.started_total += 1;
        tracing::debug!(pool = %self.name, worker = %id, "starting worker");
        tokio::spawn(run_worker(
            id,
            self.launcher.clone(),
            self.cfg.clone(),
            rx,
            self.reports_tx.clone(),
        ));
        id
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Run {
                ticket,
                job,
                sink,
                reply,
            } => {
                if self.draining() {
                    let _ = reply.send(PoolOutcome::failed(
                        PoolJobError::ShuttingDown,
                        Duration::ZERO,
                    ));
                    return;
                }
                let w = Waiting {
                    ticket,
                    job,
                    sink,
                    reply,
                    enqueued: Instant::now(),
                };
                if let Some(worker) = self.pick_idle() {
                    self.assign(worker, w);
                    return;
                }
                if self.waiting.len() >= self.cfg.max_waiting {
                    let n = self.waiting.len();
                    let _ = w.reply.send(PoolOutcome::failed(
                        PoolJobError::QueueFull(n),
                        Duration::ZERO,
                    ));
                    return;
                }
                self.waiting.push_back(w);
                self.grow();
            }
            Command::Withdraw { ticket } => {
                if let Some(i) = self.waiting.iter().position(|w| w.ticket == ticket)
                    && let Some(w) = self.waiting.remove(i)
                {
                    let queued = w.enqueued.elapsed();
                    let _ = w.reply.send(PoolOutcome::failed(
                        PoolJobError::Cancelled { killed: false },
                        queued,
                    ));
                }
                // A job already on a worker is cancelled there, by its token.
            }
            Command::Shutdown { grace, done } => self.begin_shutdown(grace, Some(done)),
        }
    }

    /// The most recently idle worker (keeps hot workers hot; others idle out).
    fn pick_idle(&self) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter_map(|(id, s)| match s.state {
                SlotState::Idle { since } => Some((since, *id)),
                _ => None,
            })
            .max()
            .map(|(_, id)| id)
    }

    fn assign(&mut self, worker: WorkerId, w: Waiting) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            self.waiting.push_front(w);
            return;
        };
        let queued = w.enqueued.elapsed();
        let ticket = w.ticket;
        let cmd = WorkerCommand::Run(Box::new(Assignment {
            job: w.job,
            sink: w.sink,
            reply: w.reply,
            queued,
        }));
        match slot.tx.send(cmd) {
            Ok(()) => slot.state = SlotState::Busy { ticket },
            Err(mpsc::error::SendError(WorkerCommand::Run(a))) => {
                // The worker task is gone; its Gone report is on the way.
                slot.state = SlotState::Retiring;
                let a = *a;
                self.waiting.push_front(Waiting {
                    ticket,
                    job: a.job,
                    sink: a.sink,
                    reply: a.reply,
                    enqueued: Instant::now() - a.queued,
                });
                self.grow();
            }
            Err(_) => {}
        }
    }

    /// Starts workers for waiting jobs, up to `max`.
    fn grow(&mut self) {
        if self.draining() {
            return;
        }
        let starting = self
            .workers
            .values()
            .filter(|s| matches!(s.state, SlotState::Starting))
            .count();
        let mut need = self.waiting.len().saturating_sub(starting);
        while need > 0 && self.live() < self.cfg.max {
            self.spawn_worker();
            need -= 1;
        }
    }

    /// Keeps `min` workers (unless start failures asked for a pause).
    fn ensure_min(&mut self) {
        if self.draining() || self.warmup.is_some() {
            return;
        }
        if let Some((until, _)) = self.start_backoff
            && Instant::now() < until
        {
            return;
        }
        while self.live() < self.cfg.min {
            self.spawn_worker();
        }
    }

    fn retire(&mut self, worker: WorkerId, why: RetireWhy) {
        if let Some(slot) = self.workers.get_mut(&worker) {
            tracing::debug!(pool = %self.name, worker = %worker, ?why, jobs = slot.jobs, "retiring worker");
            slot.state = SlotState::Retiring;
            let _ = slot.tx.send(WorkerCommand::Retire);
            if !matches!(why, RetireWhy::Shutdown) {
                self.stats.recycled_total += 1;
            }
        }
    }

    /// A worker is free: recycle it, or give it the next job, or let it idle.
    fn on_idle(&mut self, worker: WorkerId) {
        let Some(slot) = self.workers.get(&worker) else {
            return;
        };
        let why = if self.draining() {
            Some(RetireWhy::Shutdown)
        } else if self.cfg.max_jobs.is_some_and(|m| slot.jobs >= m) {
            Some(RetireWhy::MaxJobs)
        } else if self
            .cfg
            .max_age
            .is_some_and(|a| slot.started_at.elapsed() >= a)
        {
            Some(RetireWhy::MaxAge)
        } else if self.over_rss(slot.rss) {
            Some(RetireWhy::Rss)
        } else {
            None
        };
        if let Some(why) = why {
            self.retire(worker, why);
            self.grow();
            self.ensure_min();
            return;
        }
        while let Some(w) = self.waiting.pop_front() {
            if w.reply.is_closed() {
                continue;
            }
            self.assign(worker, w);
            return;
        }
        if let Some(slot) = self.workers.get_mut(&worker) {
            slot.state = SlotState::Idle {
                since: Instant::now(),
            };
        }
    }

    fn over_rss(&self, rss: Option<u64>) -> bool {
        matches!((self.cfg.max_rss, rss), (Some(max), Some(r)) if r > max)
    }

    fn on_report(&mut self, report: WorkerReport) {
        match report {
            WorkerReport::Ready { worker, pid } => {
                tracing::debug!(pool = %self.name, worker = %worker, ?pid, "worker ready");
                self.start_backoff = None;
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.last_ping = Instant::now();
                    if matches!(slot.state, SlotState::Starting) {
                        self.on_idle(worker);
                    }
                }
                if let Some((pending, _)) = &mut self.warmup {
                    pending.retain(|w| *w != worker);
                    if pending.is_empty()
                        && let Some((_, reply)) = self.warmup.take()
                    {
                        // Stats first: start() returns on this reply.
                        self.publish();
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            WorkerReport::StartFailed { worker, error } => {
                self.workers.remove(&worker);
                if matches!(error, WorkerStartError::ShuttingDown) {
                    return;
                }
                self.stats.start_failures_total += 1;
                tracing::warn!(pool = %self.name, worker = %worker, error = %error, "worker failed to start");
                let backoff = self
                    .start_backoff
                    .map(|(_, d)| (d * 2).min(Duration::from_secs(30)))
                    .unwrap_or(Duration::from_millis(250));
                self.start_backoff = Some((Instant::now() + backoff, backoff));
                if let Some((_, reply)) = self.warmup.take() {
                    let _ = reply.send(Err((worker, error)));
                    return;
                }
                // Fail the job that was waiting longest with the cause, so a
                // broken module does not leave callers to their acquire timeout.
                let mut error = Some(error);
                while let Some(w) = self.waiting.pop_front() {
                    if w.reply.is_closed() {
                        continue;
                    }
                    if let Some(e) = error.take() {
                        let queued = w.enqueued.elapsed();
                        let _ = w
                            .reply
                            .send(PoolOutcome::failed(PoolJobError::WorkerStart(e), queued));
                        break;
                    }
                }
                self.grow();
            }
            WorkerReport::JobDone { worker, kept } => {
                self.stats.jobs_total += 1;
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.jobs += 1;
                    if kept && matches!(slot.state, SlotState::Busy { .. }) {
                        self.on_idle(worker);
                    } else {
                        slot.state = SlotState::Retiring;
                    }
                }
            }
            WorkerReport::Pong { worker, rss } => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.rss = rss.or(slot.rss);
                    let idle = matches!(slot.state, SlotState::Idle { .. });
                    if idle && self.over_rss(rss) {
                        self.retire(worker, RetireWhy::Rss);
                        self.ensure_min();
                        self.grow();
                    }
                }
            }
            WorkerReport::Gone {
                worker,
                exit,
                crashed,
            } => {
                if let Some(slot) = self.workers.remove(&worker) {
                    if crashed {
                        self.stats.crashed_total += 1;
                        tracing::warn!(pool = %self.name, worker = %worker, %exit, jobs = slot.jobs, "worker died");
                    } else {
                        tracing::debug!(pool = %self.name, worker = %worker, %exit, "worker ended");
                    }
                    if let SlotState::Busy { ticket } = slot.state {
                        tracing::error!(pool = %self.name, worker = %worker, ticket, "busy worker ended without a job report");
                    }
                }
                self.grow();
                self.ensure_min();
            }
        }
    }

    fn expire_waiting(&mut self) {
        let now = Instant::now();
        while let Some(front) = self.waiting.front() {
            if front.enqueued + self.cfg.acquire_timeout > now {
                break;
            }
            if let Some(w) = self.waiting.pop_front() {
                let _ = w.reply.send(PoolOutcome::failed(
                    PoolJobError::AcquireTimeout(self.cfg.acquire_timeout),
                    w.enqueued.elapsed(),
                ));
            }
        }
    }

    /// Idle shrinking, age recycling, health pings, `min` upkeep.
    fn maintain(&mut self) {
        if self.draining() {
            return;
        }
        let now = Instant::now();
        let mut live = self.live();
        let mut to_retire = Vec::new();
        let mut to_ping = Vec::new();
        for (id, slot) in &self.workers {
            let SlotState::Idle { since } = slot.state else {
                continue;
            };
            if self
                .cfg
                .max_age
                .is_some_and(|a| now.duration_since(slot.started_at) >= a)
            {
                to_retire.push((*id, RetireWhy::MaxAge));
                continue;
            }
            if live > self.cfg.min
                && self
                    .cfg
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(since) >= t)
            {
                to_retire.push((*id, RetireWhy::Idle));
                live -= 1;
                continue;
            }
            if self
                .cfg
                .health_interval
                .is_some_and(|h| now.duration_since(slot.last_ping) >= h)
            {
                to_ping.push(*id);
            }
        }
        for (id, why) in to_retire {
            self.retire(id, why);
        }
        for id in to_ping {
            if let Some(slot) = self.workers.get_mut(&id) {
                slot.last_ping = now;
                let _ = slot.tx.send(WorkerCommand::Ping);
            }
        }
        self.ensure_min();
        self.grow();
    }

    fn begin_shutdown(&mut self, grace: Duration, done: Option<oneshot::Sender<()>>) {
        match &mut self.phase {
            Phase::Draining { done: waiters, .. } => {
                waiters.extend(done);
                return;
            }
            Phase::Running => {}
        }
        tracing::debug!(pool = %self.name, ?grace, "pool shutting down");
        self.phase = Phase::Draining {
            deadline: Instant::now() + grace,
            killed: false,
            done: done.into_iter().collect(),
        };
        if let Some((_, reply)) = self.warmup.take() {
            let _ = reply.send(Err((WorkerId(0), WorkerStartError::ShuttingDown)));
        }
        for w in self.waiting.drain(..) {
            let queued = w.enqueued.elapsed();
            let _ = w
                .reply
                .send(PoolOutcome::failed(PoolJobError::ShuttingDown, queued));
        }
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, s)| matches!(s.state, SlotState::Idle { .. } | SlotState::Starting))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.retire(id, RetireWhy::Shutdown);
        }
        if grace.is_zero() {
            self.kill_busy();
        }
    }

    /// The drain grace is over: end the workers still running jobs.
    fn kill_busy(&mut self) {
        if let Phase::Draining { killed, .. } = &mut self.phase {
            *killed = true;
        }
        for slot in self.workers.values_mut() {
            if matches!(slot.state, SlotState::Busy { .. }) {
                let _ = slot.tx.send(WorkerCommand::Kill);
                slot.state = SlotState::Retiring;
            }
        }
    }
}
