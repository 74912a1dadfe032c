//! The durable job store: the [`JobStore`] trait and its records, designed
//! so that a shared PostgreSQL store (many nodes, one queue) fits beside the
//! embedded [`SqliteStore`]. See docs/design/job-store.md.
//!
//! Every state change of a job is one call, and one transaction, that also
//! writes the job's matching `state` event, so the stored events never
//! disagree with the stored state.

/// The columns of `jobs` in both stores, but their captured output: the
/// start of each store's `list_columns!`, which reads only the last
/// [`list_output::LIST_OUTPUT_TAIL`] characters per stream and the length
/// in bytes (`stdout_len`): a page of 500 jobs whose streams hold 16 MiB
/// each reads a few KiB of each, not 16 GiB. Each store adds its own
/// columns. (Test `list_columns_are_every_column_of_jobs` compares the
/// SQLite list with its table.)
macro_rules! shared_list_columns {
    () => {
        "id, workflow, state, reason, priority, params, request, idempotency_key, \
         max_attempts, attempts, node, lease_until, created_at, started_at, finished_at, \
         progress, result, error, exit_code, signal, process_id, stdout_dropped, \
         stderr_dropped, stdout_truncated, stderr_truncated, peak_memory, cpu_ms, wall_ms, \
         last_seq, not_before, "
    };
}

mod columns;
mod cursor;
#[cfg(any(test, feature = "test-support"))]
mod delegating;
mod list_output;
mod postgres;
pub(crate) mod relay;
mod sqlite;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tsbridge_proto::api::{ApiErrorBody, AttemptView, JobView, OutputView, Resources};
use tsbridge_proto::{EndReason, EventData, JobEvent, JobId, JobState, Progress};

use crate::errors::StoreError;

pub use cursor::{decode_cursor, encode_cursor};
#[cfg(any(test, feature = "test-support"))]
pub use delegating::{DelegatingStore, Overrides};
pub use postgres::{EVENTS_CHANNEL, PgOptions, PgStore, QUEUED_CHANNEL};
pub use sqlite::{EventRetention, SqliteOptions, SqliteStore};

/// What a re-run of a job needs besides its parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRequest {
    /// The request's timeout (already capped by the workflow's), in ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The request's memory limit (already capped by the workflow's), in
    /// bytes. Absent in rows written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The request's own environment variables (validated at submit).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl StoredRequest {
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tsbridge_proto::{EventData, JobEvent, JobId, Progress};

    use super::{EventsWritten, StoredRequest, last_progress_and_result};

    #[test]
    fn event_announcements_round_trip_and_bad_ones_are_refused() {
        for ended in [false, true] {
            let w = EventsWritten {
                job: JobId::new(),
                first: 3,
                last: 9,
                ended,
            };
            assert_eq!(EventsWritten::from_payload(&w.to_payload()), Some(w));
        }
        let id = JobId::new();
        for bad in [
            String::new(),
            "x 1 2".to_owned(),
            format!("{id} 1"),
            format!("{id} 2 1"),
            format!("{id} 1 2 later"),
            format!("{id} 1 2 end more"),
        ] {
            assert_eq!(EventsWritten::from_payload(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_last_progress_and_the_last_result_of_events_are_found() {
        let id = JobId::new();
        let event = |seq, data| JobEvent {
            seq,
            job_id: id,
            timestamp: chrono::Utc::now(),
            data,
        };
        let progress = |n| EventData::Progress(Progress::new(n, 9, "step"));
        let result = |v| EventData::Result { value: json!(v) };
        let log = || EventData::Stdout { line: "x".into() };
        assert_eq!(last_progress_and_result(&[]), (None, None));
        assert_eq!(last_progress_and_result(&[event(1, log())]), (None, None));
        let events = [
            event(1, progress(1)),
            event(2, result(1)),
            event(3, progress(2)),
            event(4, log()),
            event(5, result(2)),
            event(6, log()),
        ];
        let (p, r) = last_progress_and_result(&events);
        assert_eq!(p.map(|p| p.current), Some(2));
        assert_eq!(r, Some(&json!(2)));
        let (p, r) = last_progress_and_result(&events[..2]);
        assert_eq!(p.map(|p| p.current), Some(1));
        assert_eq!(r, Some(&json!(1)));
        let (p, r) = last_progress_and_result(&events[..1]);
        assert_eq!(p.map(|p| p.current), Some(1));
        assert_eq!(r, None);
    }

    #[test]
    fn a_request_stored_before_the_memory_option_still_reads() {
        let old: StoredRequest =
            serde_json::from_str(r#"{"timeoutMs":1500,"env":{"A":"b"}}"#).unwrap();
        assert_eq!(old.memory_bytes, None);
        assert_eq!(old.timeout_ms, Some(1500));
        // And a request without it is written as before.
        let json = serde_json::to_string(&StoredRequest::default()).unwrap();
        assert!(!json.contains("memory"), "{json}");
    }
}

/// A job to insert (state `queued`).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub workflow: String,
    pub priority: i32,
    pub params: Value,
    pub request: StoredRequest,
    pub idempotency_key: Option<String>,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
    /// The first event (`state: queued`, seq 1).
    pub event: JobEvent,
}

/// What [`JobStore::insert_job`] did.
#[derive(Debug, Clone)]
pub enum Inserted {
    Created,
    /// The idempotency key already named this job; nothing was inserted.
    Existing(Box<JobRecord>),
}

/// A job as stored, with its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub workflow: String,
    pub state: JobState,
    pub reason: Option<EndReason>,
    pub priority: i32,
    pub params: Value,
    pub request: StoredRequest,
    pub idempotency_key: Option<String>,
    pub max_attempts: u32,
    /// Attempts started so far.
    pub attempts_started: u32,
    pub node: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: Option<Progress>,
    pub result: Option<Value>,
    pub error: Option<ApiErrorBody>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub process_id: Option<u32>,
    pub output: OutputView,
    pub resources: Resources,
    /// The highest event number written.
    pub last_seq: u64,
    pub attempts: Vec<AttemptView>,
    /// A job re-queued for a retry: its next attempt may not start before
    /// this time (written with the re-queue, see [`AttemptEnd::retry_in`]).
    pub not_before: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// The API view of this job.
    pub fn view(&self) -> JobView {
        JobView {
            job_id: self.id,
            workflow: self.workflow.clone(),
            state: self.state,
            reason: self.reason,
            priority: self.priority,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            attempts: self.attempts.clone(),
            progress: self.progress.clone(),
            result: self.result.clone(),
            error: self.error.clone(),
            exit_code: self.exit_code,
            signal: self.signal,
            process_id: self.process_id,
            output: self.output.clone(),
            resources: self.resources.clone(),
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub n: u32,
    pub reason: EndReason,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub process_id: Option<u32>,
    /// A short, safe description of a failure.
    pub error: Option<String>,
    pub finished_at: DateTime<Utc>,
    /// The attempt's captured output (becomes the job's).
    pub output: OutputView,
    pub resources: Resources,
    /// When the job is re-queued ([`AfterAttempt::Requeue`]): how long its
    /// next attempt waits (the retry's backoff), counted by the store from
    /// the re-queue's commit (a shared store: by the database's clock) and
    /// kept as the job's `not_before`, which every node's claim honours.
    /// `None` (and ignored when the job finishes): no wait.
    pub retry_in: Option<Duration>,
}

/// The end of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub state: JobState,
    pub reason: Option<EndReason>,
    pub result: Option<Value>,
    pub error: Option<ApiErrorBody>,
    pub finished_at: DateTime<Utc>,
}

/// A new job's first attempt, claimed with its insert
/// (`JobStore::insert_and_start`): what `start_attempt` takes.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstStart {
    pub node: String,
    pub at: DateTime<Utc>,
    /// The `running` event (attempt 1), numbered after the queued one.
    pub event: JobEvent,
}

/// What follows an attempt's end.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterAttempt {
    /// Back to `queued` for another attempt.
    Requeue,
    Finish(Finish),
}

/// `list_jobs` filters; newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub workflow: Option<String>,
    /// 1..=500.
    pub limit: u32,
    /// Only jobs older than this one (from a cursor).
    pub before: Option<JobId>,
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Pass back to get the next page.
    pub next_cursor: Option<String>,
}

/// The durable store of jobs, attempts and events.
///
/// Ownership: a job in state `running` is owned by the node that started its
/// attempt (`node`); only that node writes it until it ends, or until
/// [`JobStore::recover_interrupted`] hands it to a restarted node. On
/// SQLite there is one node; a shared store claims with leases instead.
///
/// A new method is also one line in the list of `store/delegating.rs`
/// (the [`DelegatingStore`] of tests, which forwards every method).
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts a queued job with its first event. With an idempotency key
    /// that already names a job, atomically inserts nothing and returns that job.
    async fn insert_job(&self, job: &NewJob) -> Result<Inserted, StoreError>;

    /// The job an idempotency key names, if any.
    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Claims a queued job for attempt `n` on `node`: state `running`, an
    /// attempt row, the `running` event. Fails with `NotFound` when the job
    /// is not queued (a shared store: another node claimed it).
    async fn start_attempt(
        &self,
        id: JobId,
        n: u32,
        node: &str,
        at: DateTime<Utc>,
        event: &JobEvent,
    ) -> Result<(), StoreError>;

    /// Inserts a job and claims its first attempt (`start_attempt` with
    /// `n = 1`), in one transaction where the store can: a job submitted
    /// while a slot is free costs one write instead of two. Answers what
    /// `insert_job` answers, and whether the claim was written: when it was
    /// not (an existing job, or the claim failed after the insert) the job
    /// is as `insert_job` left it, queued.
    ///
    /// The default writes the two one after the other.
    async fn insert_and_start(
        &self,
        job: &NewJob,
        start: &FirstStart,
    ) -> Result<(Inserted, bool), StoreError> {
        match self.insert_job(job).await? {
            Inserted::Created => {
                let started = match self
                    .start_attempt(job.id, 1, &start.node, start.at, &start.event)
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(job = %job.id, error = %e, "the first claim failed; the job stays queued");
                        false
                    }
                };
                Ok((Inserted::Created, started))
            }
            existing => Ok((existing, false)),
        }
    }

    /// Whether `insert_and_start` writes the insert and the claim in one
    /// transaction that no other node can see half of: only then does the
    /// dispatcher start a job with its insert. A store shared by nodes
    /// announces an insert to the others (which may claim it) before a
    /// second write could claim it; the default's two writes gain nothing.
    fn claims_with_insert(&self) -> bool {
        false
    }

    /// Whether [`JobStore::claim_next`] claims here: a store shared by many
    /// nodes, whose nodes keep no copies of the queue and ask it for the
    /// best jobs they can run instead. `false` (the default, one node): the
    /// dispatcher keeps the queue itself and claims with `start_attempt`.
    fn claims_next(&self) -> bool {
        false
    }

    /// Claims for `node`, at `at`, up to `room` of the best queued jobs
    /// (highest priority, then oldest) whose workflow is one of
    /// `workflows` and whose retry delay (`not_before`) is over: each gets
    /// its next attempt (`attempts_started + 1`), in state `running` with a
    /// lease, an attempt row, and its [`running_event`] numbered after its
    /// last event (`last_seq + 1`), all in one transaction. Jobs another
    /// node is claiming at the same moment are skipped, never waited for;
    /// so are the jobs in `live`, which the node still holds (an attempt
    /// of theirs runs or ends there: a job re-queued by another node that
    /// took it over from this one waits until its old run here is over).
    /// Answers the claimed jobs as they are now (best first): their
    /// `last_seq` is the `running` event's number. A store that does not
    /// claim this way ([`JobStore::claims_next`] is `false`) claims nothing.
    /// A store whose `not_before` test reads its own clock records its
    /// claims at that clock's time (PostgreSQL: the transaction's `now()`)
    /// rather than at `at`, so that no attempt is recorded as started
    /// before its retry delay ended.
    async fn claim_next(
        &self,
        node: &str,
        room: usize,
        workflows: &[String],
        live: &[JobId],
        at: DateTime<Utc>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let _ = (node, room, workflows, live, at);
        Ok(Vec::new())
    }

    /// Records the pid of attempt `n` once it is known.
    async fn set_attempt_pid(&self, id: JobId, n: u32, pid: u32) -> Result<(), StoreError>;

    /// Appends events (consecutive `seq`s, in order). The job's `progress`
    /// and `result` follow the last such events. Retention is bounded per
    /// job; see [`EventRetention`].
    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError>;

    /// Ends attempt `end.n` and, in the same transaction, re-queues or
    /// finishes the job, writing `event` (its `state` event).
    async fn complete_attempt(
        &self,
        id: JobId,
        end: &AttemptEnd,
        next: &AfterAttempt,
        event: &JobEvent,
    ) -> Result<(), StoreError>;

    /// [`JobStore::append_events`] of an attempt's last `events`, then
    /// [`JobStore::complete_attempt`]. A store that can writes both in one
    /// transaction, so that the events a short attempt reports as it ends
    /// cost no commit of their own. The events failing does not stop the
    /// end (it is logged, as a failed batch of events always was); the
    /// result is the end's.
    async fn complete_attempt_with_events(
        &self,
        id: JobId,
        events: &[JobEvent],
        end: &AttemptEnd,
        next: &AfterAttempt,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        if let Err(e) = self.append_events(id, events).await {
            tracing::warn!(job = %id, error = %e, count = events.len(), "cannot store events");
        }
        self.complete_attempt(id, end, next, event).await
    }

    /// Finishes a job that has no running attempt (cancelled while queued,
    /// failed at recovery), writing `event`.
    async fn finish_job(
        &self,
        id: JobId,
        finish: &Finish,
        event: &JobEvent,
    ) -> Result<(), StoreError>;

    async fn get_job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;

    /// Newest first. Captured output is cut to its last 4 KiB per stream in
    /// lists (the cut is counted in the dropped bytes); `get_job` has it all.
    async fn list_jobs(&self, filter: &ListFilter) -> Result<JobPage, StoreError>;

    /// Stored events with `seq > after`, in order, at most `limit`.
    async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError>;

    /// Jobs found `running` that `node` must take over after a crash (on
    /// SQLite: every running job). Their open attempt is left open; the
    /// caller ends it with [`JobStore::complete_attempt`].
    async fn recover_interrupted(&self, node: &str) -> Result<Vec<JobRecord>, StoreError>;

    /// Every queued job, highest priority first, then oldest first.
    async fn queued_jobs(&self) -> Result<Vec<JobRecord>, StoreError>;

    /// Running jobs whose node stopped renewing their lease (it died, or
    /// was cut off), taken over by `node` like [`JobStore::recover_interrupted`]
    /// takes them at a start: the runtime ends their open attempt
    /// (`interrupted`) and re-queues or fails them, every
    /// [`JobStore::takeover_every`]. A job another node is taking over at
    /// the same time is not returned. The default (one node): none.
    async fn take_over_expired(&self, node: &str) -> Result<Vec<JobRecord>, StoreError> {
        let _ = node;
        Ok(Vec::new())
    }

    /// How often a live node calls [`JobStore::take_over_expired`]; `None`
    /// (the default, one node): never.
    fn takeover_every(&self) -> Option<Duration> {
        None
    }

    /// The jobs queued in a store shared by many nodes (every node's, those
    /// waiting for a retry included), for the cluster-wide `queue_limit`: a
    /// count cached for a moment (PostgreSQL: counted again when the cached
    /// one is older than 250 ms, in the background), plus what this node
    /// queued or claimed since. Never waits. `None` (the default, one
    /// node): the runtime counts its own queue.
    fn queued_estimate(&self) -> Option<u64> {
        None
    }

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The fingerprint of the key this store's request env is sealed under
    /// (see `sealed.rs`), if a key was ever used with it.
    async fn env_key_fingerprint(&self) -> Result<Option<String>, StoreError>;

    /// Records `fingerprint` as the store's request-env key fingerprint
    /// unless one is recorded already, and returns the one recorded: the
    /// first writer wins, atomically, also among nodes starting together.
    async fn claim_env_key_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError>;

    /// Wake-ups of a store that [`JobStore::claims_next`]: "there may be
    /// queued work", when another node queued (submitted or re-queued) a
    /// job, as it is announced, and at each periodic poll (which also covers
    /// announcements lost while disconnected). The dispatcher then claims
    /// if it has room. Wake-ups that come while one waits to be taken are
    /// one.
    ///
    /// A method with a default rather than a change of the others: the
    /// embedded store has one node, which queued every job itself (`None`).
    fn watch_queued(&self) -> Option<futures::stream::BoxStream<'static, ()>> {
        None
    }

    /// Resolves once this node hears the announcements of the others (a
    /// shared store's listener, started by [`JobStore::watch_queued`], is
    /// connected), so that a subscription taken after it misses none but
    /// those a reconnect loses. At once (the default) for a store of one
    /// node, which has nothing to hear.
    async fn announcements_heard(&self) {}

    /// Asks the node that runs job `id` to cancel it (a store shared by
    /// many nodes; the caller's node does not hold the job). `true`: asked;
    /// the job ends `cancelled` once its node acts. `false`: there is no
    /// other node to ask (the default, SQLite's) or the job is not running.
    async fn request_cancel(&self, id: JobId) -> Result<bool, StoreError> {
        let _ = id;
        Ok(false)
    }

    /// Jobs this node runs whose cancel another node asked for (see
    /// [`JobStore::request_cancel`]). `None` (the default): one node.
    fn watch_cancels(&self) -> Option<futures::stream::BoxStream<'static, JobId>> {
        None
    }

    /// Events committed by any node (this one included), as announced: a
    /// store shared by many nodes tells each node which job got which
    /// events, so that its subscribers of a job running elsewhere follow it
    /// live (the runtime reads them with [`JobStore::events_after`]).
    /// Announcements may be lost (a listener reconnecting); the reader also
    /// reads the store now and then. `None` (the default): one node, whose
    /// own bus has every event.
    fn watch_events(&self) -> Option<futures::stream::BoxStream<'static, EventsWritten>> {
        None
    }
}

/// The `running` event of attempt `n` of job `id`, number `seq`, claimed
/// at `at` (as [`JobStore::claim_next`] writes it).
pub fn running_event(id: JobId, seq: u64, n: u32, at: DateTime<Utc>) -> JobEvent {
    JobEvent {
        seq,
        job_id: id,
        timestamp: at,
        data: EventData::State {
            state: JobState::Running,
            reason: None,
            attempt: Some(n),
        },
    }
}

/// The last progress and the last result among `events`: what the job's
/// `progress` and `result` become when they are appended (each stays as it
/// was when `events` has none).
pub(crate) fn last_progress_and_result(events: &[JobEvent]) -> (Option<&Progress>, Option<&Value>) {
    let (mut progress, mut result) = (None, None);
    for e in events.iter().rev() {
        match &e.data {
            EventData::Progress(p) if progress.is_none() => progress = Some(p),
            EventData::Result { value } if result.is_none() => result = Some(value),
            _ => {}
        }
        if progress.is_some() && result.is_some() {
            break;
        }
    }
    (progress, result)
}

/// An announcement of [`JobStore::watch_events`]: job `job` got the events
/// `first..=last` in one commit; `ended` when that commit ended the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsWritten {
    pub job: JobId,
    pub first: u64,
    pub last: u64,
    pub ended: bool,
}

impl EventsWritten {
    /// As sent (`"<id> <first> <last>"`, then `" end"` for an end): well
    /// below the 8 000 bytes of a PostgreSQL notification.
    pub fn to_payload(&self) -> String {
        let end = if self.ended { " end" } else { "" };
        format!("{} {} {}{end}", self.job, self.first, self.last)
    }

    /// The inverse of [`EventsWritten::to_payload`]; `None` if malformed.
    pub fn from_payload(s: &str) -> Option<Self> {
        let mut it = s.split_ascii_whitespace();
        let job = it.next()?.parse().ok()?;
        let first = it.next()?.parse().ok()?;
        let last = it.next()?.parse().ok()?;
        let ended = match it.next() {
            None => false,
            Some("end") => true,
            Some(_) => return None,
        };
        if it.next().is_some() || first > last {
            return None;
        }
        Some(Self {
            job,
            first,
            last,
            ended,
        })
    }
}
