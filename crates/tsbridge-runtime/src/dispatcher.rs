//! The dispatcher: the one task that owns the state of live jobs and
//! linearizes everything that changes it through one `select!` loop:
//! submissions, cancel requests, attempt completions, retry timers, store
//! acknowledgements and shutdown. It keeps the ready queue (priority, then
//! FIFO), enforces the global and per-workflow concurrency limits and the
//! queue limit, decides retries, and has every state change written to the
//! store (with its `state` event) before it publishes that event on the bus.
//!
//! The loop never awaits the store: each write is a future of its own that
//! the loop polls beside its other inputs (`Dispatcher::writes`, no task
//! and no channel hop: the store's answer wakes the dispatcher itself) and
//! that reports back (`Written`), and the job waits in a slot that says what
//! is being written (a submission is not yet a live job; `Slot::Ending`).
//! So one job's write never holds up the others, and writes of many jobs
//! reach the store together (the SQLite store commits them as one group).
//! A job's own writes stay in order: each is started only once the previous
//! one was acknowledged.
//!
//! On a store shared by many nodes ([`JobStore::claims_next`]) the
//! dispatcher keeps no queue: it asks the store for the best jobs it can
//! run (`claim_next`, one claim in flight at a time, its answer a write's
//! report like the others) whenever it has room and may have work: woken by
//! the store (another node queued a job, or a poll), by its own
//! submissions, by a freed slot, by a retry's delay ending. The order is
//! the store's, across nodes, and no two nodes ever try the same job.
//!
//! Each attempt runs in a task of its own ([`run_attempt`]) that claims the
//! job in the store (`start_attempt`, unless `claim_next` claimed it), then owns the job's event numbering
//! while the attempt runs: it numbers the child's events, writes them to the
//! store in batches, publishes them, and hands the last number back with the
//! outcome, together with the events still unwritten at the end (the
//! dispatcher writes those in the transaction of the attempt's end, so a
//! short attempt costs one commit for its events and its end). Before and after an attempt, the dispatcher numbers the job's
//! events; so exactly one writer numbers a job's events at any time and
//! `seq` has no gaps or duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tsbridge_proto::api::{ApiErrorBody, JobView};
use tsbridge_proto::{
    ByteSize, ChildEvent, EndReason, ErrorType, EventData, JobEvent, JobId, JobState,
};

use crate::availability::Availability;
use crate::bus::Bus;
use crate::config::{Config, Mode, RetryOn, WorkflowConfig};
use crate::errors::{RuntimeError, StoreError};
use crate::executor::{
    AttemptEvent, AttemptIo, AttemptOutcome, AttemptRequest, Executor, ProcessControl,
};
use crate::live_view;
use crate::queue::ReadyQueue;
use crate::stats::RuntimeStats;
use crate::store::{
    AfterAttempt, AttemptEnd, Finish, FirstStart, Inserted, JobRecord, JobStore, NewJob,
    StoredRequest,
};

/// Child events written to the store per transaction, at most.
const EVENT_BATCH: usize = 512;

/// How long a reported pid waits to be written with the attempt's first
/// events or its end (a short attempt then costs no write for its pid).
const PID_DELAY: Duration = Duration::from_millis(50);
/// How long a child's events wait for more events or the attempt's end
/// before they are written (and then published): a short job's events then
/// share its end's transaction instead of costing one of their own, and a
/// chatty job's events are written in batches. It is the most a live
/// subscriber sees an event late by (plus the commit).
const EVENT_DELAY: Duration = Duration::from_millis(10);
/// Longest text of one event (a longer line is cut).
const MAX_EVENT_TEXT: usize = 64 * 1024;

/// What the dispatcher and the facade share (read-only, or atomics and
/// short-held locks).
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub workflows: BTreeMap<String, Arc<WorkflowConfig>>,
    /// Per workflow: `Ok` or why it cannot run here.
    pub availability: Availability,
    pub executors: BTreeMap<String, Arc<dyn Executor>>,
    pub store: Arc<dyn JobStore>,
    pub bus: Bus,
    pub accepting: AtomicBool,
    pub stats: Mutex<RuntimeStats>,
    pub node_id: String,
    pub sandbox: Option<Arc<tsbridge_sandbox::Sandbox>>,
}

/// A job accepted by the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub job_id: JobId,
    pub state: JobState,
    /// The idempotency key named a job that already existed.
    pub existing: bool,
}

type Reply<T> = oneshot::Sender<Result<T, RuntimeError>>;

pub(crate) enum Command {
    Submit {
        job: Box<NewJob>,
        reply: Reply<Submitted>,
    },
    Cancel {
        id: JobId,
        reply: Reply<()>,
    },
    Shutdown {
        drain: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// A finished attempt, reported by its task.
struct AttemptDone {
    id: JobId,
    attempt: u32,
    /// Whether the claim was written (`start_attempt`); otherwise nothing ran.
    start: Claim,
    outcome: AttemptOutcome,
    last_seq: u64,
    /// Events of the attempt not written yet: written with its end.
    events: Vec<JobEvent>,
    /// The last progress and result of its events, and its pid.
    reported: Reported,
}

/// What an attempt's events changed on the job (for its `live_view`).
#[derive(Debug, Default)]
struct Reported {
    progress: Option<tsbridge_proto::Progress>,
    result: Option<serde_json::Value>,
    pid: Option<u32>,
}

/// How an attempt's claim (`start_attempt`) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Started,
    /// The store says the job is not queued (another node took it).
    Lost,
    /// The store failed (a transient error, a blip of the connection):
    /// the job is still queued in it, and is tried again after a pause.
    Failed,
}

/// How long a job whose claim failed in the store waits before the next
/// try (likewise a failed `claim_next`).
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// A store write the dispatcher started, reported when it is over.
enum Written {
    /// A submission: `Ok(None)` created, `Ok(Some(_))` an existing job.
    Inserted {
        job: Box<NewJob>,
        /// It holds a place in the queue (`Dispatcher::inserting`).
        reserved: bool,
        /// It holds a running slot and was claimed with its insert if
        /// `result` says so (`Ok((None, true))`).
        direct: Option<Box<DirectStart>>,
        result: Result<(Option<Submitted>, bool), RuntimeError>,
        reply: Reply<Submitted>,
    },
    /// The end of a job or of an attempt (`Slot::Ending`).
    Ended {
        id: JobId,
        result: Result<(), StoreError>,
    },
    /// A `claim_next` of up to `asked` jobs, at `at`; `every` when it
    /// named every workflow this node can run.
    Claimed {
        at: chrono::DateTime<Utc>,
        asked: usize,
        every: bool,
        result: Result<Vec<JobRecord>, StoreError>,
    },
}

/// A store write the dispatcher's loop polls (`None`: it panicked).
type PendingWrite = Pin<Box<dyn Future<Output = Option<Written>> + Send>>;

/// A submission that starts at once (a slot was free and nothing waited):
/// its first claim is written with its insert (`insert_and_start`), and
/// it holds its running slot from the submit on.
struct DirectStart {
    first: FirstStart,
    workflow: Arc<WorkflowConfig>,
    executor: Arc<dyn Executor>,
}

/// What the dispatcher keeps of a live job.
#[derive(Debug)]
struct LiveJob {
    workflow: String,
    priority: i32,
    params: serde_json::Value,
    request: StoredRequest,
    max_attempts: u32,
    attempts_started: u32,
    last_seq: u64,
    slot: Slot,
    /// What reading the job back would give (see `live_view`).
    view: JobView,
}

impl LiveJob {
    /// A job just inserted (queued, nothing started): `Slot::Ready`.
    fn submitted(job: NewJob) -> Self {
        let view = live_view::queued(&job);
        LiveJob {
            workflow: job.workflow,
            priority: job.priority,
            params: job.params,
            request: job.request,
            max_attempts: job.max_attempts,
            attempts_started: 0,
            last_seq: job.event.seq,
            slot: Slot::Ready,
            view,
        }
    }
}

#[derive(Debug)]
enum Slot {
    /// In the ready queue.
    Ready,
    /// Waiting for its retry delay.
    Backoff { until: Instant },
    Running {
        attempt: u32,
        control: ProcessControl,
        started: Instant,
        cancel_waiters: Vec<Reply<()>>,
    },
    /// Its end (`state` terminal) or its re-queue after an attempt (`state`
    /// queued) is being written; `event` is published once it is.
    Ending {
        state: JobState,
        /// What is written (kept to write it again if the store fails;
        /// shared with the write in flight: it may hold a 16 MiB capture).
        write: Arc<EndWrite>,
        /// Written with the end, published before `event`.
        events: Arc<[JobEvent]>,
        event: JobEvent,
        /// Answered once written (cancels that caused or awaited this end).
        waiters: Vec<Reply<()>>,
        /// Cancels that came meanwhile: a finished job answers Conflict, a
        /// re-queued one is cancelled then.
        late: Vec<Reply<()>>,
    },
}

/// The store write that ends a job or an attempt (always behind an `Arc`,
/// so the size of its variants does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum EndWrite {
    /// `complete_attempt_with_events`.
    Attempt { end: AttemptEnd, next: AfterAttempt },
    /// `finish_job` (no attempt running).
    Finish(Finish),
}

/// How long a job whose end the store failed to write waits before the
/// write is tried again (it stays live, unpublished, until it is written).
const END_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Phase {
    Accepting,
    Draining {
        deadline: Instant,
        stopped: bool,
        waiters: Vec<oneshot::Sender<()>>,
    },
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    /// Every `Runtime` handle is gone.
    commands_closed: bool,
    done_tx: mpsc::UnboundedSender<AttemptDone>,
    done_rx: mpsc::UnboundedReceiver<AttemptDone>,
    /// Store writes in flight, polled by the loop (each reports its end:
    /// `on_written`; `None` for a write that panicked).
    writes: FuturesUnordered<PendingWrite>,
    jobs: HashMap<JobId, LiveJob>,
    ready: ReadyQueue,
    backoff: BTreeSet<(Instant, JobId)>,
    /// Submissions being inserted that hold a place in the queue.
    inserting: usize,
    /// Jobs whose re-queue (for a retry) is being written.
    requeueing: usize,
    running: usize,
    running_by_workflow: HashMap<String, usize>,
    phase: Phase,
    /// Moving average of attempt wall time, for Retry-After.
    avg_secs: f64,
    /// The queued and running counts last published (`publish_stats`).
    published: Option<(u64, u64)>,
    /// The store claims the best jobs for us (`claim_next`): no queue here.
    claims: Claims,
}

/// The state of `claim_next` on a store that [`JobStore::claims_next`].
#[derive(Debug, Default)]
struct Claims {
    on: bool,
    /// There may be work: claim once there is room.
    wanted: bool,
    /// A claim is in flight (its slots are not taken yet: nothing else
    /// takes slots meanwhile, there being no queue here).
    in_flight: bool,
    /// The last claim named every workflow this node runs and got fewer
    /// jobs than it asked for: a freed slot finds nothing more until a
    /// wake-up.
    drained: bool,
    /// When to claim again: retry delays of jobs re-queued here, and a
    /// claim the store failed.
    wakes: BTreeSet<Instant>,
}

impl Claims {
    /// Something says there is work.
    fn wake(&mut self) {
        self.wanted = true;
        self.drained = false;
    }
}

impl Dispatcher {
    pub(crate) fn new(shared: Arc<Shared>, commands: mpsc::Receiver<Command>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let claims_next = shared.store.claims_next();
        Self {
            shared,
            commands,
            commands_closed: false,
            done_tx,
            done_rx,
            writes: FuturesUnordered::new(),
            jobs: HashMap::new(),
            ready: ReadyQueue::new(),
            backoff: BTreeSet::new(),
            inserting: 0,
            requeueing: 0,
            running: 0,
            running_by_workflow: HashMap::new(),
            phase: Phase::Accepting,
            avg_secs: 1.0,
            published: None,
            claims: Claims {
                on: claims_next,
                wanted: true,
                ..Claims::default()
            },
        }
    }

    /// Takes over queued jobs found in the store at startup (a store that
    /// does not claim for its nodes). A re-queued job waits out what is
    /// left of its retry delay (its stored `not_before`) after a restart.
    pub(crate) fn adopt(&mut self, rec: JobRecord) {
        if self.jobs.contains_key(&rec.id) || rec.state != JobState::Queued {
            return;
        }
        if let Some(wait) = retry_delay_left(&rec) {
            let until = Instant::now() + wait;
            self.backoff.insert((until, rec.id));
            self.adopt_as(rec, Slot::Backoff { until });
        } else {
            self.ready.push(rec.id, &rec.workflow, rec.priority);
            self.adopt_as(rec, Slot::Ready);
        }
    }

    fn adopt_as(&mut self, rec: JobRecord, slot: Slot) {
        let view = rec.view();
        self.shared.bus.open(rec.id);
        self.jobs.insert(
            rec.id,
            LiveJob {
                workflow: rec.workflow,
                priority: rec.priority,
                params: rec.params,
                request: rec.request,
                max_attempts: rec.max_attempts.max(1),
                attempts_started: rec.attempts_started,
                last_seq: rec.last_seq,
                slot,
                view,
            },
        );
    }

    pub(crate) async fn run(mut self) {
        // A shared store: wake-ups (jobs queued through other nodes, a
        // poll), and cancels asked on other nodes for jobs that run here.
        let mut remote = self.shared.store.watch_queued();
        let mut cancels = self.shared.store.watch_cancels();
        self.dispatch();
        self.publish_stats();
        loop {
            let next_retry = match (self.backoff.first(), self.claims.wakes.first()) {
                (Some((a, _)), Some(b)) => Some(*a.min(b)),
                (a, b) => a.map(|(t, _)| *t).or(b.copied()),
            };
            let stop_at = match &self.phase {
                Phase::Draining {
                    deadline,
                    stopped: false,
                    ..
                } => Some(*deadline),
                _ => None,
            };
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.on_done(done),
                Some(w) = self.writes.next(), if !self.writes.is_empty() => match w {
                    Some(w) => self.on_written(w),
                    None => tracing::error!("a store write panicked"),
                },
                cmd = self.commands.recv(), if !self.commands_closed => match cmd {
                    Some(Command::Submit { job, reply }) => self.on_submit(*job, reply),
                    Some(Command::Cancel { id, reply }) => self.on_cancel(id, reply),
                    Some(Command::Shutdown { drain, reply }) => self.on_shutdown(drain, Some(reply)),
                    // Every handle is gone: end the running jobs.
                    None => {
                        self.commands_closed = true;
                        self.on_shutdown(Duration::ZERO, None);
                    }
                },
                _ = sleep_until(next_retry), if next_retry.is_some() => self.on_retry_timer(),
                _ = sleep_until(stop_at), if stop_at.is_some() => self.stop_running(),
                woken = next_remote(&mut remote), if remote.is_some() => match woken {
                    Some(()) => self.claims.wake(),
                    None => remote = None,
                },
                id = next_remote(&mut cancels), if cancels.is_some() => match id {
                    Some(id) => self.cancel_for_remote(id),
                    None => cancels = None,
                },
            }
            self.dispatch();
            self.publish_stats();
            if matches!(self.phase, Phase::Draining { .. })
                && self.running == 0
                && self.writes.is_empty()
            {
                self.finish_shutdown().await;
                return;
            }
        }
    }

    /// Another node asked to cancel a job that runs here: stopped as a local
    /// cancel would (that node's caller waits for the end in the store).
    fn cancel_for_remote(&mut self, id: JobId) {
        if let Some(job) = self.jobs.get_mut(&id)
            && let Slot::Running { control, .. } = &mut job.slot
        {
            control.cancel();
        }
    }

    /// A shared store refused a job's end (`NotFound`): another node holds
    /// it now (it claimed the job this node held as waiting, or took it
    /// over). Nothing of it is ours any more; cancels waiting for it ask
    /// that node instead.
    fn lost_to_another_node(
        &mut self,
        id: JobId,
        state: JobState,
        cancels: impl Iterator<Item = Reply<()>>,
    ) {
        tracing::info!(job = %id, "the job is held by another node now");
        if !state.is_terminal() {
            self.requeueing -= 1;
        }
        self.jobs.remove(&id);
        self.ready.remove(id);
        self.shared.bus.close(id);
        for reply in cancels {
            let store = self.shared.store.clone();
            tokio::spawn(async move {
                let _ = reply.send(cancel_elsewhere(store.as_ref(), id).await);
            });
        }
    }

    /// Cancels of a job another node holds now: each asks that node and is
    /// answered when the job ended there.
    fn ask_owner(&self, id: JobId, cancels: Vec<Reply<()>>) {
        for reply in cancels {
            let store = self.shared.store.clone();
            tokio::spawn(async move {
                let _ = reply.send(cancel_elsewhere(store.as_ref(), id).await);
            });
        }
    }

    fn accepting(&self) -> bool {
        matches!(self.phase, Phase::Accepting)
    }

    /// What `queue_limit` counts: this node's waiting jobs, or, on a store
    /// shared by many nodes, every node's queued jobs (the store's cached
    /// count) and this node's submissions being written (such a node
    /// keeps no queue: the store claims for it).
    fn queued_for_limit(&self) -> usize {
        match self.shared.store.queued_estimate() {
            Some(n) => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .saturating_add(self.inserting),
            None => self.waiting(),
        }
    }

    fn waiting(&self) -> usize {
        self.ready.len() + self.backoff.len() + self.inserting + self.requeueing
    }

    /// Starts a store write, polled by the loop; `on_written` gets its end.
    fn spawn_write(&mut self, write: impl Future<Output = Written> + Send + 'static) {
        // A panic in a write is caught (as it was in a task of its own): the
        // dispatcher goes on without that write's report.
        self.writes.push(Box::pin(
            AssertUnwindSafe(write).catch_unwind().map(Result::ok),
        ));
    }

    /// Writes the end of a live job (its `Slot::Ending`, set by the caller;
    /// again after a failed write).
    fn write_end(&mut self, id: JobId) {
        let Some(Slot::Ending {
            write,
            events,
            event,
            ..
        }) = self.jobs.get(&id).map(|j| &j.slot)
        else {
            return;
        };
        let (write, events, event) = (write.clone(), events.clone(), event.clone());
        let store = self.shared.store.clone();
        self.spawn_write(async move {
            let result = match &*write {
                EndWrite::Attempt { end, next } => {
                    store
                        .complete_attempt_with_events(id, &events, end, next, &event)
                        .await
                }
                EndWrite::Finish(finish) => store.finish_job(id, finish, &event).await,
            };
            Written::Ended { id, result }
        });
    }

    fn on_submit(&mut self, job: NewJob, reply: Reply<Submitted>) {
        if !self.accepting() {
            let _ = reply.send(Err(RuntimeError::ShuttingDown));
            return;
        }
        let limit = self.shared.config.defaults.queue_limit;
        let full = (self.queued_for_limit() >= limit).then(|| RuntimeError::QueueFull {
            limit,
            retry_after: self.retry_after_estimate(),
        });
        // A known idempotency key is answered even when the queue is full.
        let full = match full {
            Some(e) if job.idempotency_key.is_none() => {
                let _ = reply.send(Err(e));
                return;
            }
            full => full,
        };
        let reserved = full.is_none();
        let mut direct = None;
        if reserved {
            self.inserting += 1;
            // Open the channel first: the id is unknown to clients until we reply.
            self.shared.bus.open(job.id);
            direct = self.direct_start(&job).map(Box::new);
        }
        let store = self.shared.store.clone();
        self.spawn_write(async move {
            let result = insert(store.as_ref(), &job, full, direct.as_deref()).await;
            Written::Inserted {
                job: Box::new(job),
                reserved,
                direct,
                result,
                reply,
            }
        });
    }

    /// A running slot for `job` now, if it would be the next to start: the
    /// dispatcher is accepting, the store claims with the insert (one node's
    /// store), nothing is ready before it, the global and its workflow's
    /// limits have room, and its workflow can run here. The slot is taken
    /// (counted as running) until the insert is answered.
    fn direct_start(&mut self, job: &NewJob) -> Option<DirectStart> {
        if !self.accepting()
            || !self.shared.store.claims_with_insert()
            || !self.ready.is_empty()
            || self.running >= self.shared.config.defaults.concurrency.max(1)
        {
            return None;
        }
        let workflow = self.shared.workflows.get(&job.workflow)?.clone();
        let executor = self.shared.executors.get(&job.workflow)?.clone();
        if !self.shared.availability.is_available(&job.workflow) {
            return None;
        }
        let running = self.running_by_workflow.get(&workflow.name).copied();
        if running.unwrap_or(0) >= workflow.concurrency.unwrap_or(usize::MAX) {
            return None;
        }
        self.take_slot(&workflow.name);
        Some(DirectStart {
            first: FirstStart {
                node: self.shared.node_id.clone(),
                at: Utc::now(),
                event: state_event(job.id, job.event.seq + 1, JobState::Running, None, Some(1)),
            },
            workflow,
            executor,
        })
    }

    /// Counts a running slot of `workflow` taken (no allocation once the
    /// workflow has run here).
    fn take_slot(&mut self, workflow: &str) {
        self.running += 1;
        match self.running_by_workflow.get_mut(workflow) {
            Some(n) => *n += 1,
            None => {
                self.running_by_workflow.insert(workflow.to_owned(), 1);
            }
        }
    }

    /// Gives back the slot `direct_start` took.
    fn release_slot(&mut self, workflow: &str) {
        self.running = self.running.saturating_sub(1);
        if let Some(n) = self.running_by_workflow.get_mut(workflow) {
            *n = n.saturating_sub(1);
        }
    }

    fn on_written(&mut self, w: Written) {
        match w {
            Written::Inserted {
                job,
                reserved,
                direct,
                result,
                reply,
            } => {
                if reserved {
                    self.inserting -= 1;
                }
                let job = *job;
                let direct = match (direct, &result) {
                    (Some(d), Ok((None, true))) => Some(d),
                    (Some(d), _) => {
                        // Not claimed: the slot goes back, and a created
                        // job is queued like any other.
                        self.release_slot(&d.workflow.name);
                        None
                    }
                    (None, _) => None,
                };
                match result.map(|(existing, _)| existing) {
                    Ok(None) => {
                        self.shared.bus.publish(&job.event);
                        let id = job.id;
                        if let Some(d) = direct {
                            self.launch_claimed(job, *d);
                            let _ = reply.send(Ok(Submitted {
                                job_id: id,
                                state: JobState::Queued,
                                existing: false,
                            }));
                            return;
                        }
                        if self.claims.on {
                            // The store's queue, claimed by whichever node
                            // has room (this one asks now; a poll's claim
                            // may have been answered first).
                            if !self.jobs.contains_key(&id) {
                                self.shared.bus.close(id);
                            }
                            self.claims.wake();
                        } else if self.accepting() {
                            self.ready.push(id, &job.workflow, job.priority);
                            self.jobs.insert(id, LiveJob::submitted(job));
                        } else {
                            // Stored while shutting down: it stays queued and
                            // runs after the next start, like every queued job.
                            self.shared.bus.close(id);
                        }
                        let _ = reply.send(Ok(Submitted {
                            job_id: id,
                            state: JobState::Queued,
                            existing: false,
                        }));
                    }
                    Ok(Some(existing)) => {
                        if reserved {
                            self.shared.bus.close(job.id);
                        }
                        let _ = reply.send(Ok(existing));
                    }
                    Err(e) => {
                        if reserved {
                            self.shared.bus.close(job.id);
                        }
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Written::Ended { id, result } => self.on_ended(id, result),
            Written::Claimed {
                at,
                asked,
                every,
                result,
            } => self.on_claimed(at, asked, every, result),
        }
    }

    /// Asks the store for the best jobs this node can run, if it may have
    /// work and has room (one claim in flight at a time). `room` is the
    /// global room, and no more than the least room of a workflow with a
    /// limit among those named (the store does not count per workflow).
    fn claim(&mut self) {
        let limit = self.shared.config.defaults.concurrency.max(1);
        if !self.claims.on
            || !self.claims.wanted
            || self.claims.in_flight
            || !self.accepting()
            || self.running >= limit
        {
            return;
        }
        let mut room = limit - self.running;
        let mut workflows = Vec::new();
        let mut every = true;
        for (name, wf) in &self.shared.workflows {
            if !self.shared.executors.contains_key(name)
                || !self.shared.availability.is_available(name)
            {
                continue;
            }
            let running = self.running_by_workflow.get(name).copied().unwrap_or(0);
            match wf.concurrency {
                Some(max) if running >= max => every = false,
                Some(max) => {
                    room = room.min(max - running);
                    workflows.push(name.clone());
                }
                None => workflows.push(name.clone()),
            }
        }
        if workflows.is_empty() {
            return;
        }
        self.claims.wanted = false;
        self.claims.in_flight = true;
        let store = self.shared.store.clone();
        let node = self.shared.node_id.clone();
        let at = Utc::now();
        // Jobs live here are not claimed again (see `claim_next`).
        let live: Vec<JobId> = self.jobs.keys().copied().collect();
        self.spawn_write(async move {
            let result = store.claim_next(&node, room, &workflows, &live, at).await;
            Written::Claimed {
                at,
                asked: room,
                every,
                result,
            }
        });
    }

    /// The answer of a `claim_next`: the claimed jobs start.
    fn on_claimed(
        &mut self,
        at: chrono::DateTime<Utc>,
        asked: usize,
        every: bool,
        result: Result<Vec<JobRecord>, StoreError>,
    ) {
        self.claims.in_flight = false;
        let jobs = match result {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %crate::Causes(&e), retry_in = ?CLAIM_RETRY, "cannot claim jobs; trying again");
                self.claims.wakes.insert(Instant::now() + CLAIM_RETRY);
                return;
            }
        };
        if jobs.len() >= asked {
            // There may be more.
            self.claims.wanted = true;
        } else if every && !self.claims.wanted {
            self.claims.drained = true;
        }
        for rec in jobs {
            self.start_claimed(rec, at);
        }
    }

    /// A job `claim_next` claimed for this node (its attempt and `running`
    /// event are written): live here from now on, running.
    fn start_claimed(&mut self, mut rec: JobRecord, at: chrono::DateTime<Utc>) {
        let id = rec.id;
        let n = rec.attempts_started;
        let event = crate::store::running_event(id, rec.last_seq, n, at);
        let wf = self.shared.workflows.get(&rec.workflow).cloned();
        let executor = self.shared.executors.get(&rec.workflow).cloned();
        // Live as it was before the claim: `launch` applies the claim.
        rec.attempts_started = n.saturating_sub(1);
        rec.last_seq = rec.last_seq.saturating_sub(1);
        self.adopt_as(rec, Slot::Ready);
        if let Some(job) = self.jobs.get_mut(&id) {
            live_view::unstarted(&mut job.view);
        }
        let (Some(wf), Some(executor)) = (wf, executor) else {
            // Not asked for (the claim names only workflows with an
            // executor here): ended as a failed start.
            tracing::error!(job = %id, "claimed a job of a workflow this node cannot run");
            let Some(job) = self.jobs.get(&id) else {
                return;
            };
            let workflow = job.workflow.clone();
            self.take_slot(&workflow);
            let control = ProcessControl::new();
            if let Some(job) = self.jobs.get_mut(&id) {
                job.attempts_started = n;
                job.last_seq = event.seq;
                live_view::started(&mut job.view, n, at);
                job.slot = Slot::Running {
                    attempt: n,
                    control,
                    started: Instant::now(),
                    cancel_waiters: Vec::new(),
                };
            }
            let _ = self.done_tx.send(AttemptDone {
                id,
                attempt: n,
                start: Claim::Started,
                outcome: AttemptOutcome::spawn_failure("no executor serves it", false),
                last_seq: event.seq,
                events: Vec::new(),
                reported: Reported::default(),
            });
            return;
        };
        self.take_slot(&wf.name);
        self.launch(id, wf, executor, at, event, true);
        self.stop_if_stopped(id);
    }

    /// The end (or re-queue) of a job is written.
    fn on_ended(&mut self, id: JobId, result: Result<(), StoreError>) {
        let accepting = self.accepting();
        let Some(job) = self
            .jobs
            .get_mut(&id)
            .filter(|j| matches!(j.slot, Slot::Ending { .. }))
        else {
            return;
        };
        match &result {
            Err(StoreError::NotFound(_)) | Ok(()) => {}
            Err(e) if accepting => {
                // The store failed (a full disk, a lost connection): the job
                // stays live and unpublished, its waiters wait, and the same
                // end is written again. Publishing an end the store does not
                // hold would show subscribers a result that a restart then
                // runs again.
                tracing::error!(job = %id, error = %crate::Causes(e), retry_in = ?END_RETRY, "cannot record a job's end; trying again");
                let until = Instant::now() + END_RETRY;
                self.backoff.insert((until, id));
                return;
            }
            Err(e) => {
                // Shutting down: it stays `running` in the store, and the
                // next start recovers it.
                tracing::error!(job = %id, error = %crate::Causes(e), "cannot record a job's end");
            }
        }
        let Slot::Ending {
            state,
            events,
            event,
            waiters,
            late,
            ..
        } = std::mem::replace(&mut job.slot, Slot::Ready)
        else {
            return;
        };
        if let Err(StoreError::NotFound(_)) = &result {
            self.lost_to_another_node(id, state, waiters.into_iter().chain(late));
            return;
        }
        // Published even if the write failed (only while shutting down):
        // live subscribers see the end.
        for e in events.iter() {
            self.shared.bus.publish(e);
        }
        self.shared.bus.publish(&event);
        let written = result.is_ok();
        answer(waiters, result);
        if state.is_terminal() {
            // Its end is written: waiters get the view without a read.
            match self.jobs.remove(&id) {
                Some(job) if written => self.shared.bus.close_with(id, job.view),
                _ => self.shared.bus.close(id),
            }
            for w in late {
                let _ = w.send(Err(RuntimeError::AlreadyFinished { id, state }));
            }
            return;
        }
        // Re-queued for a retry.
        self.requeueing -= 1;
        let accepting = matches!(self.phase, Phase::Accepting);
        if !late.is_empty() {
            self.cancel_waiting(id, late);
        } else if accepting {
            let attempt = job.attempts_started;
            let delay = self
                .shared
                .workflows
                .get(&job.workflow)
                .map_or(Duration::ZERO, |w| retry_delay(&w.retry, id, attempt + 1));
            let until = Instant::now() + delay;
            tracing::info!(job = %id, attempt, ?delay, "retrying");
            if self.claims.on {
                // Back in the store's queue (its `not_before` holds it
                // there): any node may claim it once the delay is over,
                // this one asks then.
                self.jobs.remove(&id);
                self.shared.bus.close(id);
                self.claims.wakes.insert(until);
                return;
            }
            job.slot = Slot::Backoff { until };
            self.backoff.insert((until, id));
        } else {
            // Shutting down: it stays queued in the store.
            self.jobs.remove(&id);
            self.shared.bus.close(id);
        }
    }

    fn retry_after_estimate(&self) -> Duration {
        let conc = self.shared.config.defaults.concurrency.max(1) as f64;
        let secs = (self.queued_for_limit() as f64 / conc + 1.0) * self.avg_secs;
        Duration::from_secs_f64(secs.clamp(1.0, 3600.0))
    }

    /// Starts queued jobs while there is room.
    fn dispatch(&mut self) {
        while self.accepting() && self.running < self.shared.config.defaults.concurrency.max(1) {
            let (workflows, running) = (&self.shared.workflows, &self.running_by_workflow);
            // Unknown workflows (removed from the config) have room: they fail at start.
            let has_room = |wf: &str| {
                let limit = workflows
                    .get(wf)
                    .and_then(|w| w.concurrency)
                    .unwrap_or(usize::MAX);
                running.get(wf).copied().unwrap_or(0) < limit
            };
            let Some((id, _)) = self.ready.pop(has_room) else {
                break;
            };
            self.start(id);
        }
        self.claim();
    }

    fn start(&mut self, id: JobId) {
        let shared = self.shared.clone();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let wf = shared.workflows.get(&job.workflow).cloned();
        let executor = shared.executors.get(&job.workflow).cloned();
        let available = shared
            .availability
            .get(&job.workflow)
            .unwrap_or_else(|| Err("no such workflow in the config".into()));
        let (wf, executor) = match (wf, executor, available) {
            (Some(wf), Some(ex), Ok(())) => (wf, ex),
            (_, _, Err(why)) => {
                self.fail_unstartable(id, &why);
                return;
            }
            _ => {
                self.fail_unstartable(id, "no executor serves it");
                return;
            }
        };
        let n = job.attempts_started + 1;
        let seq = job.last_seq + 1;
        let event = state_event(id, seq, JobState::Running, None, Some(n));
        self.take_slot(&wf.name);
        self.launch(id, wf, executor, Utc::now(), event, false);
    }

    /// A job submitted with its first attempt claimed (`direct_start`): it
    /// is live from here on, running in the slot it took.
    fn launch_claimed(&mut self, job: NewJob, d: DirectStart) {
        let id = job.id;
        self.jobs.insert(id, LiveJob::submitted(job));
        self.launch(id, d.workflow, d.executor, d.first.at, d.first.event, true);
        self.stop_if_stopped(id);
    }

    /// A job claimed while the drain's deadline passed: stopped like the
    /// jobs that were running then.
    fn stop_if_stopped(&self, id: JobId) {
        if let Phase::Draining { stopped: true, .. } = self.phase
            && let Some(LiveJob {
                slot: Slot::Running { control, .. },
                ..
            }) = self.jobs.get(&id)
        {
            control.shutdown();
        }
    }

    /// Runs the next attempt of live job `id` (its slot counted already):
    /// `event` is its `running` event, written by the attempt's task unless
    /// `claimed` (written with the insert).
    fn launch(
        &mut self,
        id: JobId,
        wf: Arc<WorkflowConfig>,
        executor: Arc<dyn Executor>,
        at: chrono::DateTime<Utc>,
        event: JobEvent,
        claimed: bool,
    ) {
        let shared = self.shared.clone();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let n = job.attempts_started + 1;
        let seq = event.seq;
        job.attempts_started = n;
        job.last_seq = seq;
        let timeout = job
            .request
            .timeout()
            .map_or(wf.timeout, |t| t.min(wf.timeout));
        live_view::started(&mut job.view, n, at);
        let control = ProcessControl::new();
        let req = AttemptRequest {
            job_id: id,
            attempt: n,
            workflow: with_request_limits(&wf, &job.request),
            params: job.params.clone(),
            request_env: job.request.env.clone(),
            timeout,
        };
        job.slot = Slot::Running {
            attempt: n,
            control: control.clone(),
            started: Instant::now(),
            cancel_waiters: Vec::new(),
        };
        let done = self.done_tx.clone();
        let store = shared.store.clone();
        tokio::spawn(async move {
            let attempt = run_attempt(
                executor,
                req,
                control,
                store.clone(),
                shared.bus.clone(),
                shared.node_id.clone(),
                at,
                event,
                claimed,
                done.clone(),
            );
            // If the attempt panics, its slot must still be freed: report
            // it as interrupted (its process was killed when the engine's
            // handle was dropped), numbering on from the store.
            if AssertUnwindSafe(attempt).catch_unwind().await.is_err() {
                tracing::error!(job = %id, attempt = n, "an attempt's task panicked");
                let last_seq = match store.get_job(id).await {
                    Ok(Some(r)) => r.last_seq,
                    _ => seq,
                };
                let mut outcome =
                    AttemptOutcome::spawn_failure("internal error while the job ran", false);
                outcome.reason = EndReason::Interrupted;
                let _ = done.send(AttemptDone {
                    id,
                    attempt: n,
                    start: Claim::Started,
                    outcome,
                    last_seq,
                    events: Vec::new(),
                    reported: Reported::default(),
                });
            }
        });
    }

    /// A queued job whose workflow cannot run here fails at once.
    fn fail_unstartable(&mut self, id: JobId, why: &str) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.last_seq += 1;
        let event = state_event(
            id,
            job.last_seq,
            JobState::Failed,
            Some(EndReason::SpawnFailure),
            None,
        );
        let finish = Finish {
            state: JobState::Failed,
            reason: Some(EndReason::SpawnFailure),
            result: None,
            error: Some(ApiErrorBody {
                kind: ErrorType::Unavailable,
                message: format!("workflow {:?} is unavailable: {why}", job.workflow),
                details: Some(json!({ "jobId": id })),
            }),
            finished_at: Utc::now(),
        };
        live_view::finished(&mut job.view, &finish);
        job.slot = Slot::Ending {
            state: JobState::Failed,
            write: Arc::new(EndWrite::Finish(finish)),
            events: Arc::from([]),
            event,
            waiters: Vec::new(),
            late: Vec::new(),
        };
        count_finished(&self.shared, &job.workflow, JobState::Failed, None);
        metrics::counter!("tsbridge_spawn_failures_total", "workflow" => job.workflow.clone())
            .increment(1);
        self.write_end(id);
    }

    fn on_done(&mut self, done: AttemptDone) {
        let shared = self.shared.clone();
        let accepting = self.accepting();
        let Some(job) = self
            .jobs
            .get_mut(&done.id)
            .filter(|j| matches!(j.slot, Slot::Running { .. }))
        else {
            return;
        };
        let Slot::Running {
            attempt,
            control,
            started,
            cancel_waiters,
        } = std::mem::replace(&mut job.slot, Slot::Ready)
        else {
            return;
        };
        debug_assert_eq!(attempt, done.attempt);
        self.running = self.running.saturating_sub(1);
        if let Some(c) = self.running_by_workflow.get_mut(&job.workflow) {
            *c = c.saturating_sub(1);
        }
        if !self.claims.drained {
            self.claims.wanted = true;
        }
        if done.start == Claim::Failed && accepting {
            // Still queued in the store: undo the start, pause, try again
            // (a cancel meanwhile cancels the waiting job).
            job.attempts_started = attempt.saturating_sub(1);
            job.last_seq = done.last_seq;
            live_view::unstarted(&mut job.view);
            let until = Instant::now() + CLAIM_RETRY;
            job.slot = Slot::Backoff { until };
            self.backoff.insert((until, done.id));
            if !cancel_waiters.is_empty() {
                self.cancel_waiting(done.id, cancel_waiters);
            }
            return;
        }
        if done.start != Claim::Started {
            // Another node runs it (or we are stopping: it stays queued in
            // the store, and a restart picks it up).
            self.jobs.remove(&done.id);
            shared.bus.close(done.id);
            if done.start == Claim::Lost {
                // Cancels that came while the claim was tried ask the node
                // that won it.
                self.ask_owner(done.id, cancel_waiters);
                return;
            }
            for w in cancel_waiters {
                let _ = w.send(Err(RuntimeError::ShuttingDown));
            }
            return;
        }
        let wall = started.elapsed().as_secs_f64();
        self.avg_secs = 0.8 * self.avg_secs + 0.2 * wall.max(0.01);
        job.last_seq = done.last_seq;

        let o = done.outcome;
        if o.reason == EndReason::SpawnFailure {
            metrics::counter!("tsbridge_spawn_failures_total", "workflow" => job.workflow.clone())
                .increment(1);
        }
        let (state, reason) = classify(&o);
        let stop_requested = control.request().is_some();
        let retry_cfg = shared.workflows.get(&job.workflow).map(|w| &w.retry);
        let retry = state != JobState::Succeeded
            && !stop_requested
            && job.attempts_started < job.max_attempts
            && retry_cfg.is_some_and(|r| retryable(&r.retry_on, &o));
        let end = AttemptEnd {
            n: attempt,
            reason: o.reason,
            exit_code: o.exit_code,
            signal: o.signal,
            process_id: o.pid,
            error: o.error.clone(),
            finished_at: Utc::now(),
            output: o.output.clone(),
            resources: o.resources.clone(),
            retry_in: retry
                .then(|| retry_cfg.map(|r| retry_delay(r, done.id, attempt + 1)))
                .flatten(),
        };
        job.last_seq += 1;
        let seq = job.last_seq;
        let (next, event) = if retry {
            self.requeueing += 1;
            let event = state_event(
                done.id,
                seq,
                JobState::Queued,
                Some(o.reason),
                Some(attempt),
            );
            (AfterAttempt::Requeue, event)
        } else {
            let error = (state != JobState::Succeeded)
                .then(|| error_body(done.id, attempt, state, reason, &o));
            let finish = Finish {
                state,
                reason: Some(reason),
                result: o.result,
                error,
                finished_at: Utc::now(),
            };
            count_finished(&shared, &job.workflow, state, Some(wall));
            let event = state_event(done.id, seq, state, Some(reason), Some(attempt));
            (AfterAttempt::Finish(finish), event)
        };
        let r = done.reported;
        live_view::reported(&mut job.view, r.progress, r.result, r.pid);
        live_view::attempt_ended(&mut job.view, &end, &next);
        job.slot = Slot::Ending {
            state: if retry { JobState::Queued } else { state },
            write: Arc::new(EndWrite::Attempt { end, next }),
            events: done.events.into(),
            event,
            waiters: cancel_waiters,
            late: Vec::new(),
        };
        self.write_end(done.id);
    }

    fn on_cancel(&mut self, id: JobId, reply: Reply<()>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            // Not live here: the store says why (a read; not our business
            // to wait for).
            let shared = self.shared.clone();
            let queued_here = self.claims.on && self.accepting();
            tokio::spawn(async move {
                let _ = reply.send(cancel_stored(&shared, id, queued_here).await);
            });
            return;
        };
        match &mut job.slot {
            Slot::Running {
                control,
                cancel_waiters,
                ..
            } => {
                control.cancel();
                cancel_waiters.push(reply);
            }
            Slot::Ending { late, .. } => late.push(reply),
            Slot::Ready | Slot::Backoff { .. } => self.cancel_waiting(id, vec![reply]),
        }
    }

    /// Cancels a job that is not running (ready, backing off, or just
    /// re-queued); `waiters` are answered once that is written.
    fn cancel_waiting(&mut self, id: JobId, waiters: Vec<Reply<()>>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Slot::Backoff { until } = job.slot {
            self.backoff.remove(&(until, id));
        }
        self.ready.remove(id);
        job.last_seq += 1;
        let event = cancelled_event(id, job.last_seq);
        let finish = cancelled(id);
        live_view::finished(&mut job.view, &finish);
        job.slot = Slot::Ending {
            state: JobState::Cancelled,
            write: Arc::new(EndWrite::Finish(finish)),
            events: Arc::from([]),
            event,
            waiters,
            late: Vec::new(),
        };
        count_finished(&self.shared, &job.workflow, JobState::Cancelled, None);
        self.write_end(id);
    }

    fn on_retry_timer(&mut self) {
        let now = Instant::now();
        while let Some(&at) = self.claims.wakes.first() {
            if at > now {
                break;
            }
            self.claims.wakes.remove(&at);
            self.claims.wake();
        }
        while let Some(&(until, id)) = self.backoff.first() {
            if until > now {
                break;
            }
            self.backoff.remove(&(until, id));
            match self.jobs.get_mut(&id) {
                // Its end failed to be written: write it again.
                Some(job) if matches!(job.slot, Slot::Ending { .. }) => self.write_end(id),
                Some(job) => {
                    job.slot = Slot::Ready;
                    self.ready.push(id, &job.workflow, job.priority);
                }
                None => {}
            }
        }
    }

    fn on_shutdown(&mut self, drain: Duration, reply: Option<oneshot::Sender<()>>) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + drain;
        match &mut self.phase {
            Phase::Accepting => {
                // Queued and backing-off jobs stay queued in the store (jobs
                // whose end is being written finish that first).
                let waiting: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| matches!(j.slot, Slot::Ready | Slot::Backoff { .. }))
                    .map(|(id, _)| *id)
                    .collect();
                for id in waiting {
                    self.jobs.remove(&id);
                    self.ready.remove(id);
                    self.shared.bus.close(id);
                }
                // Ends waiting to be written again get one last try now
                // (the drain waits for it; a failure then is published and
                // the next start recovers the job).
                let ends: Vec<JobId> = std::mem::take(&mut self.backoff)
                    .into_iter()
                    .map(|(_, id)| id)
                    .filter(|id| {
                        self.jobs
                            .get(id)
                            .is_some_and(|j| matches!(j.slot, Slot::Ending { .. }))
                    })
                    .collect();
                for id in ends {
                    self.write_end(id);
                }
                self.phase = Phase::Draining {
                    deadline,
                    stopped: false,
                    waiters: reply.into_iter().collect(),
                };
            }
            Phase::Draining {
                deadline: d,
                waiters,
                ..
            } => {
                if deadline < *d {
                    *d = deadline;
                }
                waiters.extend(reply);
            }
        }
        tracing::info!(running = self.running, ?drain, "shutting down");
    }

    /// The drain time is over: stop every running attempt (TERM, grace, KILL).
    fn stop_running(&mut self) {
        if let Phase::Draining { stopped, .. } = &mut self.phase {
            *stopped = true;
        }
        for job in self.jobs.values() {
            if let Slot::Running { control, .. } = &job.slot {
                control.shutdown();
            }
        }
    }

    async fn finish_shutdown(&mut self) {
        let grace = self.shared.config.defaults.kill_grace;
        let mut seen = Vec::new();
        for ex in self.shared.executors.values() {
            // Several workflows may share one executor.
            let ptr = Arc::as_ptr(ex) as *const () as usize;
            if !seen.contains(&ptr) {
                seen.push(ptr);
                ex.shutdown(grace).await;
            }
        }
        // Every attempt and worker is over; their job cgroups are removed as
        // their supervision lets go of them, which can be just after their
        // outcome was reported: wait for that (bounded), so that a returned
        // shutdown leaves no job cgroup and the owner can remove the parent.
        if let Some(sb) = self.shared.sandbox.clone() {
            let released = tokio::task::spawn_blocking(move || {
                sb.wait_job_cgroups_released(tsbridge_sandbox::Sandbox::JOB_CGROUPS_RELEASE_WAIT)
            })
            .await
            .unwrap_or(false);
            if !released {
                tracing::warn!(
                    wait = ?tsbridge_sandbox::Sandbox::JOB_CGROUPS_RELEASE_WAIT,
                    "job cgroups are still held after the shutdown's wait"
                );
            }
        }
        self.shared.bus.close_all();
        self.publish_stats();
        if let Phase::Draining { waiters, .. } = &mut self.phase {
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Publishes the counters after a turn of the loop: only what changed
    /// (most turns change nothing that is published, and the gauges are a
    /// registry lookup each).
    fn publish_stats(&mut self) {
        // A node of a shared store shows the store's queue (it keeps none).
        let counts = (self.queued_for_limit() as u64, self.running as u64);
        let changed = self.published != Some(counts);
        if changed {
            self.published = Some(counts);
            metrics::gauge!("tsbridge_queue_depth").set(counts.0 as f64);
            metrics::gauge!("tsbridge_jobs_running").set(counts.1 as f64);
        }
        let mut s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        if changed {
            (s.queued, s.running) = counts;
        }
        let running = || self.running_by_workflow.iter().filter(|(_, n)| **n > 0);
        let same = s.running_by_workflow.len() == running().count()
            && running().all(|(w, n)| s.running_by_workflow.get(w) == Some(&(*n as u64)));
        if !same {
            s.running_by_workflow = running().map(|(w, n)| (w.clone(), *n as u64)).collect();
        }
    }
}

/// A submission's store work: the job an idempotency key already names, or
/// else (when the queue has room: `full` is `None`) the insert.
/// `Ok(None)`: inserted.
async fn insert(
    store: &dyn JobStore,
    job: &NewJob,
    full: Option<RuntimeError>,
    direct: Option<&DirectStart>,
) -> Result<(Option<Submitted>, bool), RuntimeError> {
    // A replay must be the same request: a key reused for other work is a
    // client bug, answered as a conflict rather than with another job's result.
    let existing = |rec: &JobRecord| {
        if rec.workflow != job.workflow
            || rec.params != job.params
            || !crate::sealed::same_request(&rec.request, &job.request)
        {
            return Err(RuntimeError::IdempotencyConflict { job_id: rec.id });
        }
        Ok(Some(Submitted {
            job_id: rec.id,
            state: rec.state,
            existing: true,
        }))
    };
    if let Some(key) = &job.idempotency_key
        && let Some(rec) = store.find_by_idempotency_key(key).await?
    {
        return Ok((existing(&rec)?, false));
    }
    if let Some(e) = full {
        return Err(e);
    }
    let (inserted, started) = match direct {
        Some(d) => store.insert_and_start(job, &d.first).await?,
        None => (store.insert_job(job).await?, false),
    };
    match inserted {
        Inserted::Created => Ok((None, started)),
        Inserted::Existing(rec) => Ok((existing(&rec)?, false)),
    }
}

/// Answers the waiters of a write with its result.
fn answer(waiters: Vec<Reply<()>>, result: Result<(), StoreError>) {
    let mut waiters = waiters.into_iter();
    match result {
        Ok(()) => {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        Err(e) => {
            let message = e.to_string();
            if let Some(w) = waiters.next() {
                let _ = w.send(Err(e.into()));
            }
            // A store error is not Clone: the others get its message.
            for w in waiters {
                let _ = w.send(Err(RuntimeError::Store(StoreError::Query {
                    op: "write a job's end",
                    source: sqlx::Error::Protocol(message.clone()),
                })));
            }
        }
    }
}

/// The end of a job cancelled while it waited.
fn cancelled(id: JobId) -> Finish {
    Finish {
        state: JobState::Cancelled,
        reason: Some(EndReason::Cancelled),
        result: None,
        error: Some(ApiErrorBody {
            kind: ErrorType::Conflict,
            message: "the job was cancelled".into(),
            details: Some(json!({ "jobId": id })),
        }),
        finished_at: Utc::now(),
    }
}

fn cancelled_event(id: JobId, seq: u64) -> JobEvent {
    state_event(
        id,
        seq,
        JobState::Cancelled,
        Some(EndReason::Cancelled),
        None,
    )
}

/// Cancels a job this node does not hold, as the store has it: one that
/// runs elsewhere is asked of its node; a queued one, when `queued_here`
/// (a store that claims for its nodes, which keep no queue), is ended here
/// with `finish_job`, fenced as ever: refused when a node claimed it
/// meanwhile, and then cancelled as the store has it now.
async fn cancel_stored(shared: &Shared, id: JobId, queued_here: bool) -> Result<(), RuntimeError> {
    let store = shared.store.as_ref();
    loop {
        let rec = match store.get_job(id).await? {
            Some(rec) => rec,
            None => return Err(RuntimeError::JobNotFound(id)),
        };
        match rec.state {
            s if s.is_terminal() => return Err(RuntimeError::AlreadyFinished { id, state: s }),
            JobState::Running => return cancel_elsewhere(store, id).await,
            _ if queued_here => {
                let event = cancelled_event(id, rec.last_seq + 1);
                match store.finish_job(id, &cancelled(id), &event).await {
                    Ok(()) => {
                        count_finished(shared, &rec.workflow, JobState::Cancelled, None);
                        return Ok(());
                    }
                    Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            _ => return Err(RuntimeError::ShuttingDown),
        }
    }
}

/// Cancels a job another node of a shared store runs: asks that node, then
/// waits (reading the store) until the job ended.
async fn cancel_elsewhere(store: &dyn JobStore, id: JobId) -> Result<(), RuntimeError> {
    if !store.request_cancel(id).await? {
        // One node, or it ended meanwhile: the store says which.
        return match store.get_job(id).await? {
            Some(rec) if rec.state.is_terminal() => Err(RuntimeError::AlreadyFinished {
                id,
                state: rec.state,
            }),
            Some(_) => Err(RuntimeError::ShuttingDown),
            None => Err(RuntimeError::JobNotFound(id)),
        };
    }
    loop {
        match store.get_job(id).await? {
            Some(rec) if rec.state.is_terminal() => return Ok(()),
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            None => return Err(RuntimeError::JobNotFound(id)),
        }
    }
}

/// The next item of a shared store's watch (pending without one).
async fn next_remote<T>(remote: &mut Option<futures::stream::BoxStream<'static, T>>) -> Option<T> {
    use futures::StreamExt;
    match remote {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The workflow an attempt runs under: the configured one, with the limits
/// its request lowered (a spawn-mode `memory`; the config stays the ceiling,
/// even if it changed since the job was stored).
fn with_request_limits(wf: &Arc<WorkflowConfig>, request: &StoredRequest) -> Arc<WorkflowConfig> {
    match request.memory_bytes {
        Some(asked) if wf.mode == Mode::Spawn => {
            let ceiling = wf.limits.memory.map(|m| m.bytes());
            if ceiling.is_some_and(|c| c <= asked) {
                return wf.clone();
            }
            let mut lowered = WorkflowConfig::clone(wf);
            lowered.limits.memory = Some(ByteSize(asked));
            Arc::new(lowered)
        }
        _ => wf.clone(),
    }
}

/// What is left of the retry delay of a re-queued job (its `not_before`,
/// written with the re-queue; this node's clock against the writer's, or
/// the database's: a node whose clock runs ahead tries too early, its claim
/// is refused, and the job comes back at the next poll).
fn retry_delay_left(rec: &JobRecord) -> Option<Duration> {
    let left = (rec.not_before? - Utc::now()).to_std().ok()?;
    (!left.is_zero()).then_some(left)
}

/// The delay before attempt `next` of job `id`: the workflow's backoff,
/// with its jitter drawn from the job and the attempt rather than at
/// random, so that the delay written with the re-queue (the job's
/// `not_before`) and this node's own retry timer agree.
fn retry_delay(retry: &crate::config::RetryConfig, id: JobId, next: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let base = retry.base_delay(next).as_secs_f64();
    let j = retry.jitter.clamp(0.0, 1.0);
    let factor = if j > 0.0 {
        let mut h = std::hash::DefaultHasher::new();
        (id, next).hash(&mut h);
        // 53 bits: a uniform fraction in [0, 1).
        let u = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        1.0 + j * (2.0 * u - 1.0)
    } else {
        1.0
    };
    Duration::from_secs_f64((base * factor).max(0.0))
}

pub(crate) fn state_event(
    id: JobId,
    seq: u64,
    state: JobState,
    reason: Option<EndReason>,
    attempt: Option<u32>,
) -> JobEvent {
    JobEvent {
        seq,
        job_id: id,
        timestamp: Utc::now(),
        data: EventData::State {
            state,
            reason,
            attempt,
        },
    }
}

fn count_finished(shared: &Shared, workflow: &str, state: JobState, wall: Option<f64>) {
    metrics::counter!("tsbridge_jobs_total", "workflow" => workflow.to_owned(), "state" => state.as_str())
        .increment(1);
    if let Some(w) = wall {
        metrics::histogram!("tsbridge_job_duration_seconds", "workflow" => workflow.to_owned())
            .record(w);
    }
    let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    *s.finished
        .entry(workflow.to_owned())
        .or_default()
        .entry(state.as_str().to_owned())
        .or_default() += 1;
}

/// The job state and reason an attempt's outcome means (before retries).
pub(crate) fn classify(o: &AttemptOutcome) -> (JobState, EndReason) {
    let state = match o.reason {
        EndReason::Exited if o.exit_code == Some(0) => JobState::Succeeded,
        EndReason::Timeout => JobState::TimedOut,
        EndReason::Cancelled => JobState::Cancelled,
        _ => JobState::Failed,
    };
    (state, o.reason)
}

/// Whether the workflow's retry policy covers this outcome.
pub(crate) fn retryable(on: &[RetryOn], o: &AttemptOutcome) -> bool {
    let class = match o.reason {
        EndReason::SpawnFailure if o.transient => RetryOn::SpawnFailure,
        EndReason::Timeout => RetryOn::Timeout,
        EndReason::Signaled => RetryOn::Signaled,
        EndReason::Exited if o.exit_code != Some(0) => RetryOn::Exited,
        EndReason::MemoryLimit => RetryOn::MemoryLimit,
        EndReason::CpuLimit => RetryOn::CpuLimit,
        EndReason::PidsLimit => RetryOn::PidsLimit,
        _ => return false,
    };
    on.contains(&class)
}

fn error_body(
    id: JobId,
    attempt: u32,
    state: JobState,
    reason: EndReason,
    o: &AttemptOutcome,
) -> ApiErrorBody {
    let kind = ErrorType::for_end(state, Some(reason)).unwrap_or(ErrorType::ExecutionError);
    let message = o
        .error
        .clone()
        .unwrap_or_else(|| format!("the job ended: {reason}"));
    let mut details = json!({ "jobId": id, "attempt": attempt, "reason": reason });
    if let Some(c) = o.exit_code {
        details["exitCode"] = json!(c);
    }
    if let Some(s) = o.signal {
        details["signal"] = json!(s);
    }
    if !o.stderr_tail.is_empty() {
        details["stderrTail"] = json!(o.stderr_tail);
    }
    ApiErrorBody {
        kind,
        message,
        details: Some(details),
    }
}

fn cap_text(mut s: String) -> String {
    if s.len() > MAX_EVENT_TEXT {
        let mut end = MAX_EVENT_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("…[cut]");
    }
    s
}

fn event_data(e: tsbridge_proto::ChildEvent) -> EventData {
    match EventData::from(e) {
        EventData::Log { level, message } => EventData::Log {
            level,
            message: cap_text(message),
        },
        EventData::Stdout { line } => EventData::Stdout {
            line: cap_text(line),
        },
        EventData::Stderr { line } => EventData::Stderr {
            line: cap_text(line),
        },
        other => other,
    }
}

/// Runs one attempt: its claim in the store, then the executor, and beside
/// it the numbering, storing and publishing of the child's events. Reports
/// to the dispatcher at the end.
#[allow(clippy::too_many_arguments)]
async fn run_attempt(
    executor: Arc<dyn Executor>,
    req: AttemptRequest,
    control: ProcessControl,
    store: Arc<dyn JobStore>,
    bus: Bus,
    node: String,
    at: chrono::DateTime<Utc>,
    running: JobEvent,
    claimed: bool,
    done: mpsc::UnboundedSender<AttemptDone>,
) {
    let id = req.job_id;
    let n = req.attempt;
    let claim = if claimed {
        Ok(())
    } else {
        store.start_attempt(id, n, &node, at, &running).await
    };
    if let Err(e) = claim {
        let start = if let StoreError::NotFound(_) = e {
            // A shared store: another node claimed it first.
            tracing::debug!(job = %id, "the job was claimed elsewhere");
            Claim::Lost
        } else {
            tracing::error!(job = %id, error = %crate::Causes(&e), "cannot record the start of an attempt; trying again");
            Claim::Failed
        };
        let _ = done.send(AttemptDone {
            id,
            attempt: n,
            start,
            outcome: AttemptOutcome::spawn_failure("the job store refused the start", false),
            last_seq: running.seq - 1,
            events: Vec::new(),
            reported: Reported::default(),
        });
        return;
    }
    bus.publish(&running);
    let mut last_seq = running.seq;
    let (tx, mut rx) = mpsc::channel::<AttemptEvent>(EVENT_BATCH * 2);
    let run = executor.run(
        req,
        AttemptIo {
            events: tx,
            control,
        },
    );
    tokio::pin!(run);
    let mut pending = Pending::default();
    // What is pending is written by this deadline at the latest (or with
    // the attempt's end, or when a batch is full).
    let mut flush_due: Option<Instant> = None;
    let outcome = loop {
        tokio::select! {
            // The end first: once the run is over every event is in `rx`
            // (the executor returns after its last send), and the last
            // flush writes them all at once instead of one batch per wake.
            biased;
            o = &mut run => break o,
            Some(first) = rx.recv() => {
                pending.add(id, first, &mut last_seq);
                while pending.events.len() < EVENT_BATCH {
                    match rx.try_recv() {
                        Ok(e) => pending.add(id, e, &mut last_seq),
                        Err(_) => break,
                    }
                }
                if pending.events.len() >= EVENT_BATCH {
                    pending.flush(&store, &bus, id, n).await;
                    flush_due = None;
                    continue;
                }
                let hold = if pending.events.is_empty() { PID_DELAY } else { EVENT_DELAY };
                let due = Instant::now() + hold;
                flush_due = Some(flush_due.map_or(due, |d| d.min(due)));
            }
            _ = sleep_until(flush_due), if flush_due.is_some() => {
                pending.flush(&store, &bus, id, n).await;
                flush_due = None;
            }
        }
    };
    while let Ok(e) = rx.try_recv() {
        pending.add(id, e, &mut last_seq);
        if pending.events.len() >= EVENT_BATCH {
            pending.flush(&store, &bus, id, n).await;
        }
    }
    // A result that no event announced (the whole-stdout JSON fallback, a
    // pool handler's return value) still reaches event consumers (SSE, the
    // CLI's `logs`) as a `result` event, before the terminal state.
    if outcome.succeeded()
        && !pending.saw_result
        && let Some(value) = &outcome.result
    {
        let value = value.clone();
        pending.add(
            id,
            AttemptEvent::Child(ChildEvent::Result { value }),
            &mut last_seq,
        );
    }
    // The attempt's end records its pid (`complete_attempt`): a pid not
    // written yet is not worth a write of its own.
    if pending.pid.is_some() && pending.pid == outcome.pid {
        pending.pid = None;
    }
    // The last events are written with the attempt's end, in its
    // transaction, and published before its state event.
    let events = pending.take_for_end(&store, id, n).await;
    let _ = done.send(AttemptDone {
        id,
        attempt: n,
        start: Claim::Started,
        outcome,
        last_seq,
        events,
        reported: pending.reported,
    });
}

/// What an attempt reported and is not written yet.
#[derive(Default)]
struct Pending {
    /// What the attempt's events reported so far.
    reported: Reported,
    pid: Option<u32>,
    events: Vec<JobEvent>,
    /// A `result` event was seen in this attempt.
    saw_result: bool,
}

impl Pending {
    fn add(&mut self, id: JobId, e: AttemptEvent, last_seq: &mut u64) {
        match e {
            AttemptEvent::Started { pid } => {
                self.pid = Some(pid);
                self.reported.pid = Some(pid);
            }
            AttemptEvent::Child(ce) => {
                self.saw_result |= matches!(ce, ChildEvent::Result { .. });
                *last_seq += 1;
                let data = event_data(ce);
                match &data {
                    EventData::Progress(p) => self.reported.progress = Some(p.clone()),
                    EventData::Result { value } => self.reported.result = Some(value.clone()),
                    _ => {}
                }
                self.events.push(JobEvent {
                    seq: *last_seq,
                    job_id: id,
                    timestamp: Utc::now(),
                    data,
                });
            }
        }
    }

    /// The events not written yet, for the attempt's end to write (a pid
    /// not written yet is written first: the end does not carry it).
    async fn take_for_end(
        &mut self,
        store: &Arc<dyn JobStore>,
        id: JobId,
        n: u32,
    ) -> Vec<JobEvent> {
        if let Some(pid) = self.pid.take()
            && let Err(e) = store.set_attempt_pid(id, n, pid).await
        {
            tracing::warn!(job = %id, error = %crate::Causes(&e), "cannot record the pid");
        }
        std::mem::take(&mut self.events)
    }

    /// Writes the pid and the events (both at once, so that they share a
    /// commit), then publishes the events.
    async fn flush(&mut self, store: &Arc<dyn JobStore>, bus: &Bus, id: JobId, n: u32) {
        let (pid, events) = (self.pid.take(), &self.events);
        let pid = async {
            if let Some(pid) = pid
                && let Err(e) = store.set_attempt_pid(id, n, pid).await
            {
                tracing::warn!(job = %id, error = %crate::Causes(&e), "cannot record the pid");
            }
        };
        let events = async {
            if !events.is_empty()
                && let Err(e) = store.append_events(id, events).await
            {
                tracing::warn!(job = %id, error = %crate::Causes(&e), count = events.len(), "cannot store events");
            }
        };
        tokio::join!(pid, events);
        for e in self.events.drain(..) {
            bus.publish(&e);
        }
    }
}
