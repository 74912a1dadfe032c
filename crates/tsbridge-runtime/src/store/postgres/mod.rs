//! The shared job store: PostgreSQL, for many nodes (tsbridge servers)
//! sharing one queue. Same [`JobStore`] semantics as the SQLite store; see
//! docs/design/job-store.md ("PostgreSQL").
//!
//! - A connection pool, one transaction per call (no group commit: the
//!   server runs transactions of different connections in parallel).
//! - `start_attempt` claims one job: `UPDATE ... WHERE id = $1 AND state =
//!   'queued'`. Two nodes claiming one job serialize on its row lock; the
//!   second sees it `running` and gets `NotFound`. The dispatcher claims
//!   with `claim_next` instead (below).
//! - Leases: a claim sets `lease_until = now() + lease` (the database's
//!   clock). While this store holds running jobs, a task of its own renews
//!   their leases every `lease / 3`; event writes renew them too.
//!   [`JobStore::recover_interrupted`] takes over the running jobs of its
//!   own node and those whose lease expired (any node), with `FOR UPDATE
//!   SKIP LOCKED` so two recovering nodes never take the same job. A live
//!   node's runtime also takes expired jobs over every poll period
//!   ([`JobStore::take_over_expired`]) and ends them as its recovery does.
//! - Claims of the best job: [`JobStore::claim_next`] takes the best queued
//!   jobs a node can run in one statement (`FOR UPDATE SKIP LOCKED`), so
//!   nodes never race for a job nor keep copies of the queue.
//! - Wake-ups: an insert and a re-queue `NOTIFY` [`QUEUED_CHANNEL`] with the
//!   job id (delivered at commit). [`JobStore::watch_queued`] turns those of
//!   other nodes, and a periodic poll, into wake-ups ("claim if you have
//!   room").
//! - Live events: every commit of events `NOTIFY`s [`EVENTS_CHANNEL`] with
//!   the job id and event numbers; the watch's listener hears them too and
//!   hands them to [`JobStore::watch_events`] (the runtime's relay).

mod rows;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Transaction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tsbridge_proto::{JobEvent, JobId};

use super::columns::{ENV_KEY_FINGERPRINT, from_ms, json_text, key_taken, ms, next_page};
use super::list_output::LIST_OUTPUT_TAIL;
use super::{
    AfterAttempt, AttemptEnd, EventRetention, EventsWritten, Finish, Inserted, JobPage, JobRecord,
    JobStore, ListFilter, NewJob, last_progress_and_result, running_event,
};
use crate::errors::StoreError;
use rows::{read_attempt, read_event, read_job};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel an insert or a re-queue notifies, with the job id as payload.
pub const QUEUED_CHANNEL: &str = "tsbridge_queued";

/// The channel a cancel request notifies, with the job id as payload.
const CANCEL_CHANNEL: &str = "tsbridge_cancel";

/// The channel every commit of events notifies, with an [`EventsWritten`]
/// payload (job id and event numbers, never bodies).
pub const EVENTS_CHANNEL: &str = "tsbridge_events";

/// The database's clock in Unix ms (`not_before`, like `lease_until`, is
/// compared with it: node clocks do not matter).
macro_rules! now_ms {
    () => {
        "(EXTRACT(EPOCH FROM now()) * 1000)::bigint"
    };
}

/// A job list's columns ([`shared_list_columns!`], then this store's), the
/// captured output cut in SQL. (The literal 4096 is checked against
/// [`LIST_OUTPUT_TAIL`] below.)
macro_rules! list_columns {
    () => {
        concat!(
            shared_list_columns!(),
            "cancel_requested, \
             right(stdout,4096) AS stdout, octet_length(stdout)::bigint AS stdout_len, \
             right(stderr,4096) AS stderr, octet_length(stderr)::bigint AS stderr_len"
        )
    };
}
const _: () = assert!(
    LIST_OUTPUT_TAIL == 4096,
    "list_columns! cuts 4096 characters"
);

/// The running jobs `$which` (at most `$limit`), taken by node `$1` with a
/// fresh lease (`$2` seconds) in one statement, skipping those another
/// node is taking at the same moment: their ids.
macro_rules! take_running {
    ($which:literal, $limit:literal) => {
        concat!(
            "WITH c AS ( \
                 SELECT id FROM jobs WHERE state = 'running' AND (",
            $which,
            ") ORDER BY id FOR UPDATE SKIP LOCKED",
            $limit,
            ") UPDATE jobs SET node = $1, lease_until = now() + make_interval(secs => $2) \
             FROM c WHERE jobs.id = c.id RETURNING jobs.id"
        )
    };
}

/// Event announcements buffered for the reader of [`JobStore::watch_events`].
const EVENTS_BUFFER: usize = 4096;

/// How old the cached count of queued jobs may be before a submit counts
/// them again ([`JobStore::queued_estimate`]).
const QUEUED_COUNT_TTL: Duration = Duration::from_millis(250);

/// Ids this store announced itself and has not heard back yet, at most
/// (announcements lost while the listener was down would stay forever).
const MAX_OWN_ANNOUNCED: usize = 100_000;

/// How a [`PgStore`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    pub retention: EventRetention,
    /// How long a claim holds a running job without a renewal. Renewed
    /// every third of it while this store is alive.
    pub lease: Duration,
    /// Connections in the pool, at most.
    pub max_connections: u32,
    /// How often [`JobStore::watch_queued`] also wakes its reader, besides
    /// the announcements (and how often a live node takes expired jobs
    /// over).
    pub poll: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            retention: EventRetention::default(),
            lease: Duration::from_secs(30),
            max_connections: 8,
            poll: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL [`JobStore`]. Cheap to clone (clones share the pool and
/// the lease renewal).
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    opts: PgOptions,
    /// Running jobs claimed through this store, with their node: the leases
    /// it renews.
    held: Mutex<HashMap<JobId, String>>,
    /// Stops the lease renewal and the watch.
    stop: CancellationToken,
    /// Jobs this store announced while watched: the watch skips them (this
    /// node holds them already).
    own_announced: Mutex<Option<HashSet<JobId>>>,
    /// The reader of [`JobStore::watch_events`]: the watch's listener
    /// forwards the announcements of events to it.
    events: Mutex<Option<mpsc::Sender<EventsWritten>>>,
    /// Held jobs whose lease a renewal found gone (another node took the
    /// job over): [`JobStore::watch_cancels`] stops them here, so the job
    /// does not run on two nodes for longer than a renewal period.
    lost: Mutex<HashSet<JobId>>,
    lost_found: tokio::sync::Notify,
    /// Whether the watch's listener is connected (announcements are heard).
    listening: tokio::sync::watch::Sender<bool>,
    /// The cached count of queued jobs (all nodes').
    queued: Mutex<QueuedCount>,
}

/// The count of queued jobs as last read, moved by this store's own
/// writes since.
#[derive(Debug)]
struct QueuedCount {
    value: i64,
    counted: std::time::Instant,
    counting: bool,
}

fn is_pg_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connects to a `postgres://` URL and runs the embedded migrations
    /// (nodes starting together serialize on the migrator's advisory lock).
    /// Must be called within a tokio runtime: the lease renewal is a task.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, PgOptions::default()).await
    }

    pub async fn open_with(url: &str, opts: PgOptions) -> Result<Self, StoreError> {
        if !is_pg_url(url) {
            return Err(StoreError::UnsupportedUrl {
                url: url.to_owned(),
                expected: "postgres://USER@HOST/DB",
            });
        }
        let connect = PgConnectOptions::from_str(url)
            .map_err(|source| StoreError::BadUrl {
                url: redact(url),
                source,
            })?
            .application_name("tsbridge");
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await
            .map_err(StoreError::Open)?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        let inner = Arc::new(Inner {
            pool,
            opts,
            held: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            own_announced: Mutex::new(None),
            events: Mutex::new(None),
            lost: Mutex::new(HashSet::new()),
            lost_found: tokio::sync::Notify::new(),
            listening: tokio::sync::watch::channel(false).0,
            queued: Mutex::new(QueuedCount {
                value: 0,
                counted: std::time::Instant::now(),
                counting: false,
            }),
        });
        count_queued(&inner).await;
        tokio::spawn(renew_leases(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Stops renewing leases and closes the pool; later calls fail. Jobs
    /// still running keep their lease until it expires.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.pool.close().await;
    }

    /// Ids of jobs queued (inserted or re-queued) by any node from now on,
    /// as announced by `NOTIFY`. Notifications are not durable: one sent
    /// while the listening connection was down is lost (it reconnects), so
    /// a reader also polls [`JobStore::queued_jobs`] now and then.
    pub async fn queued_notifications(
        &self,
    ) -> Result<impl Stream<Item = JobId> + Send + 'static, StoreError> {
        let mut listener = PgListener::connect_with(&self.inner.pool)
            .await
            .map_err(StoreError::Open)?;
        listener
            .listen(QUEUED_CHANNEL)
            .await
            .map_err(StoreError::query("listen"))?;
        Ok(listener.into_stream().filter_map(|n| async move {
            match n {
                Ok(n) => n.payload().parse::<JobId>().ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "job store notifications: listening again");
                    None
                }
            }
        }))
    }

    /// Notes a job this store announces, if it is watched.
    fn announcing(&self, id: JobId) {
        if let Ok(mut own) = self.inner.own_announced.lock()
            && let Some(own) = own.as_mut()
        {
            if own.len() >= MAX_OWN_ANNOUNCED {
                own.clear();
            }
            own.insert(id);
        }
    }

    /// Whether `id` was announced by this store (forgets it).
    fn was_own(&self, id: JobId) -> bool {
        self.inner
            .own_announced
            .lock()
            .ok()
            .and_then(|mut own| own.as_mut().map(|o| o.remove(&id)))
            .unwrap_or(false)
    }

    fn lease_secs(&self) -> f64 {
        self.inner.opts.lease.as_secs_f64()
    }

    fn hold(&self, id: JobId, node: &str) {
        if let Ok(mut h) = self.inner.held.lock() {
            h.insert(id, node.to_owned());
        }
    }

    fn release(&self, id: JobId) {
        if let Ok(mut h) = self.inner.held.lock() {
            h.remove(&id);
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.inner
            .pool
            .begin()
            .await
            .map_err(StoreError::query("begin"))
    }

    /// Loads the attempts of `jobs` into them.
    async fn attach_attempts(&self, jobs: &mut [JobRecord]) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        let rows = sqlx::query(ATTEMPTS_OF_JOBS)
            .bind(&ids)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("read attempts"))?;
        put_attempts(jobs, &rows)
    }

    async fn jobs_by_ids(&self, ids: &[String]) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM jobs WHERE id = ANY($1) ORDER BY id")
            .bind(ids)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("read jobs"))?;
        self.records(&rows).await
    }

    /// Runs a [`take_running!`] statement for `node`: the jobs it took.
    async fn take_running(
        &self,
        node: &str,
        sql: &'static str,
        op: &'static str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(sql)
            .bind(node)
            .bind(self.lease_secs())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query(op))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.jobs_by_ids(&ids).await
    }

    async fn records(&self, rows: &[sqlx::postgres::PgRow]) -> Result<Vec<JobRecord>, StoreError> {
        let mut jobs = rows
            .iter()
            .map(|r| read_job(r, None))
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_attempts(&mut jobs).await?;
        Ok(jobs)
    }
}

impl PgStore {
    /// Hands an announcement of events to the reader of
    /// [`JobStore::watch_events`]. Never waits: when that reader is behind,
    /// the announcement is dropped (it reads the followed jobs now and
    /// then anyway).
    fn forward_events(&self, payload: &str) {
        let Some(w) = EventsWritten::from_payload(payload) else {
            return;
        };
        let Ok(mut events) = self.inner.events.lock() else {
            return;
        };
        if let Some(tx) = events.as_ref() {
            match tx.try_send(w) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(job = %w.job, "event announcement dropped: its reader is behind");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => *events = None,
            }
        }
    }

    /// After the commit of attempts started on `node`: the jobs left the
    /// queue, and this store renews their leases.
    fn started(&self, node: &str, jobs: &[JobId]) {
        self.queued_moved(-(jobs.len() as i64));
        for id in jobs {
            self.hold(*id, node);
        }
    }

    /// Moves the cached count of queued jobs by this store's own write.
    fn queued_moved(&self, by: i64) {
        if let Ok(mut q) = self.inner.queued.lock() {
            q.value = (q.value + by).max(0);
        }
    }
}

/// The attempts of the jobs `$1`, by job, in order.
const ATTEMPTS_OF_JOBS: &str = "SELECT * FROM attempts WHERE job_id = ANY($1) ORDER BY job_id, n";

/// Puts the attempt `rows` (of [`ATTEMPTS_OF_JOBS`]) into their `jobs`.
fn put_attempts(jobs: &mut [JobRecord], rows: &[sqlx::postgres::PgRow]) -> Result<(), StoreError> {
    let mut by_job: HashMap<String, Vec<_>> = HashMap::new();
    for r in rows {
        let (job, a) = read_attempt(r)?;
        by_job.entry(job).or_default().push(a);
    }
    for j in jobs.iter_mut() {
        if let Some(a) = by_job.remove(&j.id.to_string()) {
            j.attempts = a;
        }
    }
    Ok(())
}

/// Counts the queued jobs into the cache (an index-only count of the
/// partial index of queued jobs). A failure keeps the old count.
async fn count_queued(inner: &Inner) {
    let counted = std::time::Instant::now();
    let r: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'queued'")
        .fetch_one(&inner.pool)
        .await;
    if let Ok(mut q) = inner.queued.lock() {
        q.counting = false;
        match r {
            Ok(n) => {
                q.value = n;
                q.counted = counted;
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the queued jobs"),
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Renews the leases of the jobs `inner` holds, every third of a lease,
/// until the store is closed or dropped.
async fn renew_leases(inner: Weak<Inner>) {
    let (period, stop) = match inner.upgrade() {
        Some(i) => (
            (i.opts.lease / 3).max(Duration::from_millis(100)),
            i.stop.clone(),
        ),
        None => return,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let Some(i) = inner.upgrade() else { return };
        let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
        if let Ok(h) = i.held.lock() {
            for (id, node) in h.iter() {
                by_node
                    .entry(node.clone())
                    .or_default()
                    .push(id.to_string());
            }
        }
        for (node, ids) in by_node {
            let r: Result<Vec<String>, _> = sqlx::query_scalar(
                "UPDATE jobs SET lease_until = now() + make_interval(secs => $1) \
                 WHERE id = ANY($2) AND state = 'running' AND node = $3 RETURNING id",
            )
            .bind(i.opts.lease.as_secs_f64())
            .bind(&ids)
            .bind(&node)
            .fetch_all(&i.pool)
            .await;
            match r {
                Ok(renewed) => {
                    let renewed: HashSet<&str> = renewed.iter().map(String::as_str).collect();
                    let missed: Vec<&String> = ids
                        .iter()
                        .filter(|id| !renewed.contains(id.as_str()))
                        .collect();
                    if missed.is_empty() {
                        continue;
                    }
                    // Not renewed: ended or re-queued meanwhile (harmless),
                    // or running on another node now: taken over.
                    let taken: Result<Vec<String>, _> = sqlx::query_scalar(
                        "SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running' AND node <> $2",
                    )
                    .bind(&missed)
                    .bind(&node)
                    .fetch_all(&i.pool)
                    .await;
                    match taken {
                        Ok(taken) if !taken.is_empty() => {
                            if let Ok(mut lost) = i.lost.lock() {
                                lost.extend(taken.iter().filter_map(|id| id.parse::<JobId>().ok()));
                            }
                            i.lost_found.notify_one();
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check the jobs whose lease was not renewed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = ids.len(), "cannot renew the leases of running jobs");
                }
            }
        }
    }
}

async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    events: &[JobEvent],
) -> Result<(), StoreError> {
    let jobs = vec![id.to_owned(); events.len()];
    insert_event_rows(tx, &jobs, events.iter()).await
}

/// Inserts `events`, each of the job of the same index in `jobs`.
async fn insert_event_rows<'e>(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[String],
    events: impl Iterator<Item = &'e JobEvent> + Clone,
) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = events.clone().map(|e| e.seq as i64).collect();
    let ts: Vec<i64> = events.clone().map(|e| ms(e.timestamp)).collect();
    let data: Vec<String> = events.map(|e| json_text(&e.data)).collect();
    sqlx::query(
        "INSERT INTO events (job_id, seq, ts, data) \
         SELECT j, s, t, d FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[]) \
         AS u(j, s, t, d)",
    )
    .bind(jobs)
    .bind(&seqs)
    .bind(&ts)
    .bind(&data)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::query("insert events"))?;
    Ok(())
}

/// Writes the `state` event of job `id` and announces it (`ended`: the
/// event ends the job).
async fn state_event(
    tx: &mut Transaction<'_, Postgres>,
    id: JobId,
    event: &JobEvent,
    ended: bool,
) -> Result<(), StoreError> {
    insert_events(tx, &id.to_string(), std::slice::from_ref(event)).await?;
    notify_events(tx, id, event.seq, event.seq, ended).await
}

/// Announces the events `first..=last` of job `id` (delivered at commit).
async fn notify_events(
    tx: &mut Transaction<'_, Postgres>,
    id: JobId,
    first: u64,
    last: u64,
    ended: bool,
) -> Result<(), StoreError> {
    let w = EventsWritten {
        job: id,
        first,
        last,
        ended,
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(w.to_payload())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("notify"))?;
    Ok(())
}

/// An attempt starting on a job its transaction claimed: its number and
/// its `running` event (of that job, numbered after its last one).
struct Start<'a> {
    n: u32,
    event: &'a JobEvent,
}

/// The writes of attempts starting on jobs their transaction claimed
/// (`start_attempt` one, `claim_next` a batch): the attempt rows on `node`
/// at `at`, the `running` events and their announcements. Answers the
/// jobs' ids, in the order of `starts`.
async fn write_starts(
    tx: &mut Transaction<'_, Postgres>,
    node: &str,
    at: DateTime<Utc>,
    starts: &[Start<'_>],
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = starts.iter().map(|s| s.event.job_id.to_string()).collect();
    let ns: Vec<i64> = starts.iter().map(|s| i64::from(s.n)).collect();
    sqlx::query(
        "INSERT INTO attempts (job_id, n, node, started_at) \
         SELECT j, n, $3, $4 FROM UNNEST($1::text[], $2::bigint[]) AS u(j, n)",
    )
    .bind(&ids)
    .bind(&ns)
    .bind(node)
    .bind(ms(at))
    .execute(&mut **tx)
    .await
    .map_err(StoreError::query("insert attempts"))?;
    insert_event_rows(tx, &ids, starts.iter().map(|s| s.event)).await?;
    let announced: Vec<String> = starts
        .iter()
        .map(|s| {
            EventsWritten {
                job: s.event.job_id,
                first: s.event.seq,
                last: s.event.seq,
                ended: false,
            }
            .to_payload()
        })
        .collect();
    sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
        .bind(EVENTS_CHANNEL)
        .bind(&announced)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("notify"))?;
    Ok(ids)
}

async fn notify_queued(tx: &mut Transaction<'_, Postgres>, id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(QUEUED_CHANNEL)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("notify"))?;
    Ok(())
}

async fn commit(tx: Transaction<'_, Postgres>) -> Result<(), StoreError> {
    tx.commit().await.map_err(StoreError::query("commit"))
}

#[async_trait]
impl JobStore for PgStore {
    async fn insert_job(&self, job: &NewJob) -> Result<Inserted, StoreError> {
        let id = job.id.to_string();
        let mut tx = self.begin().await?;
        let created = sqlx::query(
            "INSERT INTO jobs (id, workflow, state, priority, params, request, \
             idempotency_key, max_attempts, created_at, last_seq) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&id)
        .bind(&job.workflow)
        .bind(i64::from(job.priority))
        .bind(json_text(&job.params))
        .bind(json_text(&job.request))
        .bind(job.idempotency_key.as_deref())
        .bind(i64::from(job.max_attempts))
        .bind(ms(job.created_at))
        .bind(job.event.seq as i64)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("insert job"))?
        .rows_affected()
            > 0;
        if !created {
            // The key's job is committed: a concurrent insert of the same
            // key waited for the other transaction before doing nothing.
            drop(tx);
            let key = job.idempotency_key.as_deref().unwrap_or_default();
            return key_taken(job.id, self.find_by_idempotency_key(key).await?);
        }
        insert_events(&mut tx, &id, std::slice::from_ref(&job.event)).await?;
        self.announcing(job.id);
        notify_queued(&mut tx, &id).await?;
        commit(tx).await?;
        self.queued_moved(1);
        Ok(Inserted::Created)
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM jobs WHERE idempotency_key = $1")
            .bind(key)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("read jobs"))?;
        Ok(self.records(&rows).await?.pop())
    }

    async fn start_attempt(
        &self,
        id: JobId,
        n: u32,
        node: &str,
        at: DateTime<Utc>,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        let ids = id.to_string();
        let mut tx = self.begin().await?;
        // The claim: only a queued job can start. A concurrent claim of the
        // same job waits for this row lock, then sees `running`. A claim
        // made from an out-of-date copy of the job (another node ran an
        // attempt since) is refused the same way: its attempt and event
        // numbers are taken. A retry waiting out its backoff (`not_before`,
        // by the database's clock) is refused the same way.
        let claimed = sqlx::query(concat!(
            "UPDATE jobs SET state = 'running', attempts = $1, node = $2, \
             started_at = COALESCE(started_at, $3), last_seq = GREATEST(last_seq, $4), \
             lease_until = now() + make_interval(secs => $5) \
             WHERE id = $6 AND state = 'queued' AND attempts < $1 AND last_seq < $4 \
             AND (not_before IS NULL OR not_before <= ",
            now_ms!(),
            ")"
        ))
        .bind(i64::from(n))
        .bind(node)
        .bind(ms(at))
        .bind(event.seq as i64)
        .bind(self.lease_secs())
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("claim job"))?
        .rows_affected()
            > 0;
        if !claimed {
            return Err(StoreError::NotFound(id));
        }
        let start = Start { n, event };
        write_starts(&mut tx, node, at, std::slice::from_ref(&start)).await?;
        commit(tx).await?;
        self.started(node, &[id]);
        Ok(())
    }

    fn claims_next(&self) -> bool {
        true
    }

    async fn claim_next(
        &self,
        node: &str,
        room: usize,
        workflows: &[String],
        live: &[JobId],
        _at: DateTime<Utc>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if room == 0 || workflows.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        // The best queued jobs this node can run, skipping those another
        // node's claim holds locked right now (never waiting for it), then
        // claimed as `start_attempt` claims one: the next attempt, the
        // next event number, a lease. The partial index `jobs_queued
        // (priority DESC, id) WHERE state = 'queued'` gives the order; the
        // workflow and the retry delay are filters.
        let rows = sqlx::query(concat!(
            "WITH c AS (SELECT id FROM jobs WHERE state = 'queued' \
             AND (not_before IS NULL OR not_before <= ",
            now_ms!(),
            ") AND workflow = ANY($1) AND NOT (id = ANY($5)) \
             ORDER BY priority DESC, id FOR UPDATE SKIP LOCKED LIMIT $2) \
             UPDATE jobs SET state = 'running', node = $3, attempts = jobs.attempts + 1, \
             started_at = COALESCE(jobs.started_at, ",
            now_ms!(),
            "), last_seq = jobs.last_seq + 1, \
             lease_until = now() + make_interval(secs => $4) \
             FROM c WHERE jobs.id = c.id RETURNING jobs.*, ",
            now_ms!(),
            " AS claimed_at"
        ))
        .bind(workflows)
        .bind(i64::try_from(room).unwrap_or(i64::MAX))
        .bind(node)
        .bind(self.lease_secs())
        .bind(live.iter().map(JobId::to_string).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::query("claim jobs"))?;
        if rows.is_empty() {
            drop(tx);
            return Ok(Vec::new());
        }
        // The claim's time is the transaction's (`now()`), the clock its
        // `not_before` test read, not the caller's `at`: taken before a
        // connection was free, that could lie before the end of the retry
        // delay on a loaded node, and the attempt would be recorded as
        // started before it (a flaky `multi_node_pg` test showed it).
        let claimed_at: i64 =
            sqlx::Row::try_get(&rows[0], "claimed_at").map_err(StoreError::query("claim jobs"))?;
        let at = from_ms(claimed_at);
        let mut jobs = rows
            .iter()
            .map(|r| read_job(r, None))
            .collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.id));
        let events: Vec<JobEvent> = jobs
            .iter()
            .map(|j| running_event(j.id, j.last_seq, j.attempts_started, at))
            .collect();
        let starts: Vec<Start<'_>> = jobs
            .iter()
            .zip(&events)
            .map(|(j, event)| Start {
                n: j.attempts_started,
                event,
            })
            .collect();
        let ids = write_starts(&mut tx, node, at, &starts).await?;
        // Read before the commit: once committed, the claim must reach the
        // dispatcher (a failure now rolls it all back).
        let attempts = sqlx::query(ATTEMPTS_OF_JOBS)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("read attempts"))?;
        put_attempts(&mut jobs, &attempts)?;
        commit(tx).await?;
        let claimed: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        self.started(node, &claimed);
        Ok(jobs)
    }

    async fn set_attempt_pid(&self, id: JobId, n: u32, pid: u32) -> Result<(), StoreError> {
        let ids = id.to_string();
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE attempts SET process_id = $1 WHERE job_id = $2 AND n = $3")
            .bind(i64::from(pid))
            .bind(&ids)
            .bind(i64::from(n))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("set attempt pid"))?;
        sqlx::query("UPDATE jobs SET process_id = $1 WHERE id = $2")
            .bind(i64::from(pid))
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("set job pid"))?;
        commit(tx).await
    }

    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        let Some(last) = events.last().map(|e| e.seq as i64) else {
            return Ok(());
        };
        let (progress, result) = last_progress_and_result(events);
        let (progress, result) = (progress.map(json_text), result.map(json_text));
        let ids = id.to_string();
        let mut tx = self.begin().await?;
        // A running job's writer is alive: its lease is renewed too.
        sqlx::query(
            "UPDATE jobs SET last_seq = GREATEST(last_seq, $1), \
             progress = COALESCE($2, progress), result = COALESCE($3, result), \
             lease_until = CASE WHEN state = 'running' \
                 THEN now() + make_interval(secs => $4) ELSE lease_until END \
             WHERE id = $5",
        )
        .bind(last)
        .bind(progress)
        .bind(result)
        .bind(self.lease_secs())
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("update progress"))?;
        insert_events(&mut tx, &ids, events).await?;
        let EventRetention { head, tail } = self.inner.opts.retention;
        if last as u64 > head + tail {
            sqlx::query("DELETE FROM events WHERE job_id = $1 AND seq > $2 AND seq <= $3")
                .bind(&ids)
                .bind(head as i64)
                .bind(last - tail as i64)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("prune events"))?;
        }
        let first = events.first().map_or(0, |e| e.seq);
        notify_events(&mut tx, id, first, last as u64, false).await?;
        commit(tx).await
    }

    async fn complete_attempt(
        &self,
        id: JobId,
        end: &AttemptEnd,
        next: &AfterAttempt,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        // Whatever the outcome, this node is done with the attempt: should
        // the write fail, its lease lapses and a recovery takes the job.
        self.release(id);
        let ids = id.to_string();
        let o = &end.output;
        let r = &end.resources;
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE attempts SET finished_at = $1, reason = $2, exit_code = $3, signal = $4, \
             process_id = COALESCE($5, process_id), error = $6 WHERE job_id = $7 AND n = $8",
        )
        .bind(ms(end.finished_at))
        .bind(end.reason.as_str())
        .bind(end.exit_code.map(i64::from))
        .bind(end.signal.map(i64::from))
        .bind(end.process_id.map(i64::from))
        .bind(end.error.as_deref())
        .bind(&ids)
        .bind(i64::from(end.n))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("finish attempt"))?;
        let finish = match next {
            AfterAttempt::Requeue => None,
            AfterAttempt::Finish(f) => Some(f),
        };
        // The attempt's output and, in the same statement, what follows. A
        // re-queue keeps the finish columns. Only the running attempt `n`
        // ends: a node that lost the job (its lease expired and another
        // node took it over) is refused, and its attempt row stays as the
        // recovery wrote it (this transaction rolls back).
        let ended = sqlx::query(concat!(
            "UPDATE jobs SET exit_code = $1, signal = $2, process_id = COALESCE($3, process_id), \
             stdout = $4, stderr = $5, stdout_dropped = $6, stderr_dropped = $7, \
             stdout_truncated = $8, stderr_truncated = $9, peak_memory = $10, cpu_ms = $11, \
             wall_ms = $12, last_seq = GREATEST(last_seq, $13), node = NULL, lease_until = NULL, \
             state = $14, \
             reason = CASE WHEN $15 THEN $16 ELSE reason END, \
             result = CASE WHEN $15 THEN COALESCE($17, result) ELSE result END, \
             error = CASE WHEN $15 THEN $18 ELSE error END, \
             finished_at = CASE WHEN $15 THEN $19 ELSE finished_at END, \
             not_before = CASE WHEN $15 OR $22::bigint IS NULL THEN NULL \
                 ELSE ",
            now_ms!(),
            " + $22::bigint END \
             WHERE id = $20 AND state = 'running' AND attempts = $21"
        ))
        .bind(end.exit_code.map(i64::from))
        .bind(end.signal.map(i64::from))
        .bind(end.process_id.map(i64::from))
        .bind(&o.stdout)
        .bind(&o.stderr)
        .bind(o.stdout_dropped_bytes as i64)
        .bind(o.stderr_dropped_bytes as i64)
        .bind(o.stdout_truncated)
        .bind(o.stderr_truncated)
        .bind(r.peak_memory_bytes.map(|v| v as i64))
        .bind(r.cpu_time_ms.map(|v| v as i64))
        .bind(r.wall_time_ms.map(|v| v as i64))
        .bind(event.seq as i64)
        .bind(finish.map_or("queued", |f| f.state.as_str()))
        .bind(finish.is_some())
        .bind(finish.and_then(|f| f.reason.map(|r| r.as_str())))
        .bind(finish.and_then(|f| f.result.as_ref().map(json_text)))
        .bind(finish.and_then(|f| f.error.as_ref().map(json_text)))
        .bind(finish.map(|f| ms(f.finished_at)))
        .bind(&ids)
        .bind(i64::from(end.n))
        .bind(
            end.retry_in
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("record attempt end"))?
        .rows_affected()
            > 0;
        if !ended {
            return Err(StoreError::NotFound(id));
        }
        state_event(&mut tx, id, event, finish.is_some()).await?;
        if finish.is_none() {
            self.announcing(id);
            notify_queued(&mut tx, &ids).await?;
        }
        commit(tx).await?;
        if finish.is_none() {
            self.queued_moved(1);
        }
        Ok(())
    }

    async fn finish_job(
        &self,
        id: JobId,
        finish: &Finish,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        let ids = id.to_string();
        let mut tx = self.begin().await?;
        // Only a queued job, as this node knows it: not one another node
        // claimed, or ran an attempt of, since (its event number is taken).
        let finished = sqlx::query(
            "UPDATE jobs SET last_seq = GREATEST(last_seq, $1), state = $2, reason = $3, \
             result = COALESCE($4, result), error = $5, finished_at = $6, node = NULL, \
             lease_until = NULL WHERE id = $7 AND state = 'queued' AND last_seq < $1",
        )
        .bind(event.seq as i64)
        .bind(finish.state.as_str())
        .bind(finish.reason.map(|r| r.as_str()))
        .bind(finish.result.as_ref().map(json_text))
        .bind(finish.error.as_ref().map(json_text))
        .bind(ms(finish.finished_at))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("finish job"))?
        .rows_affected()
            > 0;
        if !finished {
            return Err(StoreError::NotFound(id));
        }
        state_event(&mut tx, id, event, true).await?;
        commit(tx).await?;
        self.queued_moved(-1);
        self.release(id);
        Ok(())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs_by_ids(&[id.to_string()]).await?.pop())
    }

    async fn list_jobs(&self, filter: &ListFilter) -> Result<JobPage, StoreError> {
        let limit = filter.limit.clamp(1, 500);
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(concat!("SELECT ", list_columns!(), " FROM jobs WHERE TRUE"));
        if let Some(s) = filter.state {
            qb.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(w) = &filter.workflow {
            qb.push(" AND workflow = ").push_bind(w.clone());
        }
        if let Some(b) = filter.before {
            qb.push(" AND id < ").push_bind(b.to_string());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = qb
            .build()
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("list jobs"))?;
        let mut jobs = rows
            .iter()
            .map(|r| read_job(r, Some(LIST_OUTPUT_TAIL)))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = next_page(&mut jobs, limit);
        self.attach_attempts(&mut jobs).await?;
        Ok(JobPage { jobs, next_cursor })
    }

    async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, ts, data FROM events WHERE job_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id.to_string())
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(StoreError::query("read events"))?;
        rows.iter().map(|r| read_event(r, id)).collect()
    }

    async fn recover_interrupted(&self, node: &str) -> Result<Vec<JobRecord>, StoreError> {
        // Ours (a restart under the same node id), or anybody's whose lease
        // expired. Taking them renews their lease under our name, so a
        // second node recovering at the same time skips them (locked now,
        // ours after the commit).
        self.take_running(
            node,
            take_running!(
                "node = $1 OR node IS NULL OR lease_until IS NULL OR lease_until < now()",
                ""
            ),
            "recover jobs",
        )
        .await
    }

    async fn take_over_expired(&self, node: &str) -> Result<Vec<JobRecord>, StoreError> {
        // Under this node's name and with a fresh lease, in one statement:
        // a node taking over at the same time skips them (locked now, not
        // expired after the commit), and the old node's next renewal sees
        // it lost them.
        self.take_running(
            node,
            take_running!("lease_until IS NULL OR lease_until < now()", " LIMIT 100"),
            "take over expired jobs",
        )
        .await
    }

    fn takeover_every(&self) -> Option<Duration> {
        Some(self.inner.opts.poll)
    }

    fn queued_estimate(&self) -> Option<u64> {
        let mut q = self.inner.queued.lock().ok()?;
        if !q.counting && q.counted.elapsed() >= QUEUED_COUNT_TTL {
            q.counting = true;
            let inner = self.inner.clone();
            tokio::spawn(async move { count_queued(&inner).await });
        }
        Some(q.value.max(0) as u64)
    }

    async fn queued_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id")
                .fetch_all(&self.inner.pool)
                .await
                .map_err(StoreError::query("read jobs"))?;
        self.records(&rows).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map_err(StoreError::query("ping"))?;
        Ok(())
    }

    async fn env_key_fingerprint(&self) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM store_meta WHERE name = $1")
            .bind(ENV_KEY_FINGERPRINT)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(StoreError::query("read the env key fingerprint"))
    }

    async fn claim_env_key_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError> {
        // Two statements: a concurrent claim's insert waits for the first
        // to commit and does nothing; the read after it (a snapshot of its
        // own) sees the row that won.
        sqlx::query(
            "INSERT INTO store_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(ENV_KEY_FINGERPRINT)
        .bind(fingerprint)
        .execute(&self.inner.pool)
        .await
        .map_err(StoreError::query("claim the env key fingerprint"))?;
        self.env_key_fingerprint().await?.ok_or(StoreError::Query {
            op: "read the env key fingerprint after its claim",
            source: sqlx::Error::RowNotFound,
        })
    }

    async fn request_cancel(&self, id: JobId) -> Result<bool, StoreError> {
        let ids = id.to_string();
        let mut tx = self.begin().await?;
        let asked = sqlx::query(
            "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND state = 'running'",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query("request cancel"))?
        .rows_affected()
            > 0;
        if asked {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CANCEL_CHANNEL)
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("notify"))?;
        }
        commit(tx).await?;
        Ok(asked)
    }

    fn watch_cancels(&self) -> Option<BoxStream<'static, JobId>> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(watch_cancels(self.clone(), tx));
        Some(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// Fed by the listener of [`JobStore::watch_queued`] (one `LISTEN`
    /// connection for both): announcements flow while the queue is watched
    /// (a runtime watches it from its start to the end of its shutdown).
    fn watch_events(&self) -> Option<BoxStream<'static, EventsWritten>> {
        let (tx, rx) = mpsc::channel(EVENTS_BUFFER);
        if let Ok(mut events) = self.inner.events.lock() {
            *events = Some(tx);
        }
        Some(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn announcements_heard(&self) {
        let mut listening = self.inner.listening.subscribe();
        // The sender lives as long as the store.
        let _ = listening.wait_for(|l| *l).await;
    }

    fn watch_queued(&self) -> Option<BoxStream<'static, ()>> {
        if let Ok(mut own) = self.inner.own_announced.lock() {
            own.get_or_insert_with(HashSet::new);
        }
        // One wake-up waiting is enough: more fold into it.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(watch(self.clone(), tx));
        Some(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}

/// Wakes `tx`'s reader when another node announces a queued job, and at
/// each poll, until the store is closed or the reader is gone; forwards
/// the announcements of events heard on the same connection. A listener
/// that fails is connected again at the next poll.
async fn watch(store: PgStore, tx: mpsc::Sender<()>) {
    let stop = store.inner.stop.clone();
    let mut poll = tokio::time::interval(store.inner.opts.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener: Option<PgListener> = None;
    loop {
        let heard = async {
            match listener.as_mut() {
                Some(l) => l.recv().await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            n = heard => match n {
                Ok(n) if n.channel() == EVENTS_CHANNEL => {
                    store.forward_events(n.payload());
                    false
                }
                Ok(n) => n.payload().parse::<JobId>().is_ok_and(|id| !store.was_own(id)),
                Err(e) => {
                    tracing::warn!(error = %e, "job store announcements lost; listening again at the next poll");
                    listener = None;
                    store.inner.listening.send_replace(false);
                    false
                }
            },
            _ = poll.tick() => {
                if listener.is_none() {
                    listener = listen(&store).await;
                    store.inner.listening.send_replace(listener.is_some());
                }
                true
            }
        };
        if wake && let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
            return;
        }
    }
}

/// Feeds `tx` with the jobs this store claimed whose cancel was asked
/// (announced, or found at each poll), each once.
async fn watch_cancels(store: PgStore, tx: mpsc::Sender<JobId>) {
    let stop = store.inner.stop.clone();
    let mut poll = tokio::time::interval(store.inner.opts.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener: Option<PgListener> = None;
    let mut sent: HashSet<JobId> = HashSet::new();
    loop {
        let heard = async {
            match listener.as_mut() {
                Some(l) => l.recv().await,
                None => std::future::pending().await,
            }
        };
        let held: HashSet<JobId> = store
            .inner
            .held
            .lock()
            .map(|h| h.keys().copied().collect())
            .unwrap_or_default();
        sent.retain(|id| held.contains(id));
        let asked: Vec<JobId> = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            () = store.inner.lost_found.notified() => {
                let lost: Vec<JobId> = store
                    .inner
                    .lost
                    .lock()
                    .map(|mut l| l.drain().collect())
                    .unwrap_or_default();
                let lost: Vec<JobId> = lost.into_iter().filter(|id| held.contains(id)).collect();
                if !lost.is_empty() {
                    tracing::warn!(jobs = ?lost, "another node took over these running jobs (their lease lapsed): stopping them here");
                }
                lost
            },
            n = heard => match n {
                Ok(n) => n.payload().parse::<JobId>().ok().into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cancel requests lost; listening again at the next poll");
                    listener = None;
                    Vec::new()
                }
            },
            _ = poll.tick() => {
                if listener.is_none() {
                    listener = listen_to(&store, CANCEL_CHANNEL).await;
                }
                let ids: Vec<String> = held.iter().map(JobId::to_string).collect();
                let found: Result<Vec<String>, _> = if ids.is_empty() {
                    Ok(Vec::new())
                } else {
                    sqlx::query_scalar(
                        "SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running' \
                         AND cancel_requested",
                    )
                    .bind(&ids)
                    .fetch_all(&store.inner.pool)
                    .await
                };
                match found {
                    Ok(found) => found.iter().filter_map(|id| id.parse().ok()).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot poll cancel requests");
                        Vec::new()
                    }
                }
            }
        };
        for id in asked {
            if held.contains(&id) && sent.insert(id) && tx.send(id).await.is_err() {
                return;
            }
        }
    }
}

/// The watch's listener: queued jobs and events.
async fn listen(store: &PgStore) -> Option<PgListener> {
    listen_to_all(store, &[QUEUED_CHANNEL, EVENTS_CHANNEL]).await
}

async fn listen_to(store: &PgStore, channel: &str) -> Option<PgListener> {
    listen_to_all(store, &[channel]).await
}

async fn listen_to_all(store: &PgStore, channels: &[&str]) -> Option<PgListener> {
    let mut l = match PgListener::connect_with(&store.inner.pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, ?channels, "cannot listen to the store's announcements");
            return None;
        }
    };
    match l.listen_all(channels.iter().copied()).await {
        Ok(()) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, ?channels, "cannot listen to the store's announcements");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("postgres://u@db/x"), "postgres://u@db/x");
    }
}
