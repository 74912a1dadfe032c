//! The `JobStore` contract, run against both stores with the same bodies:
//! `store_contract::sqlite::*` (a file in a temp dir) and
//! `store_contract::postgres::*` (a database of its own on the server
//! `TSBRIDGE_TEST_PG_URL` names; see `pg_support`). Insert with
//! idempotency, the attempt life cycle and the claim, events (order,
//! retention, progress/result on the job row), lists with cursors,
//! recovery queries, reopening.

use chrono::Utc;
use serde_json::json;
use tsbridge_proto::api::{OutputView, Resources};
use tsbridge_proto::{EndReason, EventData, JobId, JobState, LogLevel, Progress};
use tsbridge_runtime::StoreError;
use tsbridge_runtime::store::{
    AfterAttempt, AttemptEnd, EventRetention, Finish, FirstStart, Inserted, JobRecord, JobStore,
    ListFilter, NewJob, PgOptions, PgStore, SqliteStore, StoredRequest, decode_cursor,
};

use crate::pg_support::PgDb;

pub use tsbridge_runtime::test_util::{attempt_end, event as ev, state_event as state};

pub fn new_job(workflow: &str, priority: i32, key: Option<&str>) -> NewJob {
    let id = JobId::new();
    NewJob {
        id,
        workflow: workflow.to_owned(),
        priority,
        params: json!({"n": 1, "b": [true, null], "a": "z"}),
        request: StoredRequest {
            timeout_ms: Some(1500),
            memory_bytes: Some(64 << 20),
            env: [("A".to_owned(), "b".to_owned())].into(),
        },
        idempotency_key: key.map(str::to_owned),
        max_attempts: 2,
        created_at: Utc::now(),
        event: state(id, 1, JobState::Queued, None, None),
    }
}

/// Claims job `id` for attempt `n` on `node` now, with its `running`
/// event `seq`.
pub async fn start(
    store: &dyn JobStore,
    id: JobId,
    n: u32,
    seq: u64,
    node: &str,
) -> Result<(), StoreError> {
    let event = state(id, seq, JobState::Running, None, Some(n));
    store.start_attempt(id, n, node, Utc::now(), &event).await
}

/// Ends attempt `end.n` of job `id` and re-queues the job, with its
/// `queued` event `seq` (naming `reason`, if any).
pub async fn requeue(
    store: &dyn JobStore,
    id: JobId,
    end: &AttemptEnd,
    seq: u64,
    reason: Option<EndReason>,
) -> Result<(), StoreError> {
    let event = state(id, seq, JobState::Queued, reason, Some(end.n));
    store
        .complete_attempt(id, end, &AfterAttempt::Requeue, &event)
        .await
}

/// The stored job `id`, which exists.
pub async fn stored(store: &dyn JobStore, id: JobId) -> JobRecord {
    store.get_job(id).await.expect("get").expect("job")
}

/// The end of a job now, in `state` for `reason`, with `result`.
pub fn finish(state: JobState, reason: EndReason, result: Option<serde_json::Value>) -> Finish {
    Finish {
        state,
        reason: Some(reason),
        result,
        error: None,
        finished_at: Utc::now(),
    }
}

/// Either store, behind the trait.
#[derive(Debug)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Pg(PgStore),
}

impl AnyStore {
    pub fn get(&self) -> &dyn JobStore {
        match self {
            AnyStore::Sqlite(s) => s,
            AnyStore::Pg(s) => s,
        }
    }

    pub async fn close(&self) {
        match self {
            AnyStore::Sqlite(s) => s.close().await,
            AnyStore::Pg(s) => s.close().await,
        }
    }
}

/// Where a test's store lives: opening it again reaches the same data.
pub enum Fixture {
    Sqlite(tempfile::TempDir),
    Pg(PgDb),
}

impl Fixture {
    pub fn sqlite() -> Fixture {
        Fixture::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    /// `None`: no server, the test is skipped (never under CI).
    pub async fn postgres(test: &str) -> Option<Fixture> {
        PgDb::create(test).await.map(Fixture::Pg)
    }

    pub async fn open(&self) -> AnyStore {
        self.open_with(EventRetention::default()).await
    }

    pub async fn open_with(&self, retention: EventRetention) -> AnyStore {
        match self {
            Fixture::Sqlite(dir) => AnyStore::Sqlite(
                SqliteStore::open_with(
                    &format!("sqlite://{}/sub/jobs.db", dir.path().display()),
                    retention,
                )
                .await
                .expect("open store"),
            ),
            Fixture::Pg(db) => AnyStore::Pg(
                PgStore::open_with(
                    &db.url,
                    PgOptions {
                        retention,
                        ..PgOptions::default()
                    },
                )
                .await
                .expect("open store"),
            ),
        }
    }
}

/// Each body as a test of each store.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Fixture::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(f) = super::Fixture::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::$name(&f).await
                }
            )*
        }
    };
}

contract!(
    insert_get_and_idempotency,
    attempt_life_cycle_and_events,
    a_claim_only_takes_a_queued_job,
    event_retention_keeps_head_and_tail,
    list_is_newest_first_with_filters_and_cursor,
    list_cuts_output_and_get_has_all_of_it,
    reopened_store_finds_running_and_queued_jobs,
    concurrent_inserts_with_one_key_make_one_job,
    a_requeue_stores_when_the_retry_may_start,
    insert_and_start_claims_a_new_job_only,
);

/// `insert_and_start` stores the job and its first claim (running, attempt
/// 1 on the node, the queued and running events); with a key that names
/// another job it answers that job and writes nothing, the other job
/// unclaimed.
async fn insert_and_start_claims_a_new_job_only(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let j = new_job("wf", 0, Some("key-s"));
    let first = |job: &NewJob| FirstStart {
        node: "node-a".into(),
        at: Utc::now(),
        event: state(job.id, 2, JobState::Running, None, Some(1)),
    };
    let (inserted, started) = store
        .insert_and_start(&j, &first(&j))
        .await
        .expect("insert and start");
    assert!(matches!(inserted, Inserted::Created));
    assert!(started);
    let r = stored(store, j.id).await;
    assert_eq!(r.state, JobState::Running);
    assert_eq!(r.node.as_deref(), Some("node-a"));
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.last_seq, 2);
    let seqs: Vec<u64> = store
        .events_after(j.id, 0, 10)
        .await
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);

    // The same key again, while a queued job holds another key.
    let queued = new_job("wf", 0, Some("key-q"));
    store.insert_job(&queued).await.expect("insert");
    let again = new_job("wf", 0, Some("key-q"));
    let (inserted, started) = store
        .insert_and_start(&again, &first(&again))
        .await
        .expect("insert and start");
    match inserted {
        Inserted::Existing(rec) => assert_eq!(rec.id, queued.id),
        Inserted::Created => panic!("the key names a job"),
    }
    assert!(!started);
    assert!(store.get_job(again.id).await.expect("get").is_none());
    let q = stored(store, queued.id).await;
    assert_eq!(q.state, JobState::Queued, "the other job is not claimed");
    assert!(q.attempts.is_empty());
}

/// A re-queue for a retry stores its `not_before` (the retry's backoff from
/// the commit); a re-queue without a delay, and an end, clear it; it
/// survives a reopen (a restart waits it out too).
async fn a_requeue_stores_when_the_retry_may_start(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let j = new_job("wf", 0, None);
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    assert_eq!(stored(store, id).await.not_before, None);
    let claim = |n: u32, seq| async move { start(store, id, n, seq, "node-a").await };
    claim(1, 2).await.expect("claim 1");
    let before = Utc::now();
    let mut end = attempt_end(1, EndReason::Signaled);
    end.retry_in = Some(std::time::Duration::from_secs(600));
    requeue(store, id, &end, 3, Some(EndReason::Signaled))
        .await
        .expect("re-queue");
    let at = stored(store, id).await.not_before.expect("stored");
    // The store's clock: within generous bounds of ours.
    assert!(
        at > before + chrono::Duration::seconds(500),
        "{at} vs {before}"
    );
    assert!(
        at < before + chrono::Duration::seconds(700),
        "{at} vs {before}"
    );
    s.close().await;
    let s = f.open().await;
    let store = s.get();
    let r = stored(store, id).await;
    assert_eq!(r.not_before, Some(at), "kept across a reopen");
    assert_eq!(r.state, JobState::Queued);
    if let AnyStore::Pg(_) = s {
        // The shared store refuses every node's claim before then.
        assert!(matches!(
            start(store, id, 2, 4, "node-b").await,
            Err(StoreError::NotFound(x)) if x == id
        ));
        // Time passes (as the store's clock would make it). (SQLite has
        // one node, whose own retry timer waits: its claim does not check.)
        let Fixture::Pg(db) = f else { unreachable!() };
        let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
        sqlx::query("UPDATE jobs SET not_before = not_before - 600000")
            .execute(&pool)
            .await
            .expect("age");
        pool.close().await;
    }
    start(store, id, 2, 4, "node-b")
        .await
        .expect("claim 2 once the wait is over");
    let end = attempt_end(2, EndReason::Interrupted);
    requeue(store, id, &end, 5, Some(EndReason::Interrupted))
        .await
        .expect("re-queue without a delay");
    let r = stored(store, id).await;
    assert_eq!(r.not_before, None, "no delay, no wait");
    s.close().await;
}

async fn insert_get_and_idempotency(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let a = new_job("wf", 0, Some("key-1"));
    assert!(matches!(
        store.insert_job(&a).await.expect("insert"),
        Inserted::Created
    ));
    let again = new_job("wf", 0, Some("key-1"));
    match store.insert_job(&again).await.expect("insert") {
        Inserted::Existing(j) => assert_eq!(j.id, a.id),
        Inserted::Created => panic!("same key must return the existing job"),
    }
    assert!(
        store.get_job(again.id).await.expect("get").is_none(),
        "nothing inserted"
    );
    let j = stored(store, a.id).await;
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.params, a.params);
    // Key order survives (JSON is stored as text).
    assert_eq!(j.params.to_string(), a.params.to_string());
    assert_eq!(j.request, a.request);
    assert_eq!(j.last_seq, 1);
    assert_eq!(j.max_attempts, 2);
    assert_eq!(j.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(
        j.created_at.timestamp_millis(),
        a.created_at.timestamp_millis()
    );
    let found = store.find_by_idempotency_key("key-1").await.expect("find");
    assert_eq!(found.map(|j| j.id), Some(a.id));
    assert!(
        store
            .find_by_idempotency_key("key-2")
            .await
            .expect("find")
            .is_none()
    );
    // Without a key, every insert is a new job.
    for _ in 0..2 {
        assert!(matches!(
            store
                .insert_job(&new_job("wf", 0, None))
                .await
                .expect("insert"),
            Inserted::Created
        ));
    }
    let events = store.events_after(a.id, 0, 10).await.expect("events");
    assert_eq!(
        events,
        vec![a.event.clone()]
            .into_iter()
            .map(|mut e| {
                // Stored times are milliseconds.
                e.timestamp =
                    chrono::DateTime::from_timestamp_millis(e.timestamp.timestamp_millis())
                        .expect("time");
                e
            })
            .collect::<Vec<_>>()
    );
}

async fn attempt_life_cycle_and_events(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let j = new_job("wf", 0, None);
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    start(store, id, 1, 2, "node-a").await.expect("start");
    let r = stored(store, id).await;
    assert_eq!(r.node.as_deref(), Some("node-a"));
    assert_eq!(r.attempts_started, 1);
    assert!(r.started_at.is_some());
    store.set_attempt_pid(id, 1, 4242).await.expect("pid");
    store
        .append_events(
            id,
            &[
                ev(
                    id,
                    3,
                    EventData::Log {
                        level: LogLevel::Info,
                        message: "hi".into(),
                    },
                ),
                ev(id, 4, EventData::Progress(Progress::new(1, 4, "a"))),
                ev(id, 5, EventData::Progress(Progress::new(2, 4, "b"))),
                ev(
                    id,
                    6,
                    EventData::Result {
                        value: json!({"ok": true}),
                    },
                ),
            ],
        )
        .await
        .expect("append");
    let r = stored(store, id).await;
    assert_eq!(r.state, JobState::Running);
    assert_eq!(r.progress.as_ref().map(|p| p.current), Some(2));
    assert_eq!(r.result, Some(json!({"ok": true})));
    assert_eq!(r.process_id, Some(4242));
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].process_id, Some(4242));
    assert_eq!(r.last_seq, 6);

    // Attempt 1 fails; the job is re-queued.
    let end = AttemptEnd {
        n: 1,
        reason: EndReason::Signaled,
        exit_code: None,
        signal: Some(9),
        process_id: Some(4242),
        error: Some("killed by SIGKILL".into()),
        finished_at: Utc::now(),
        output: OutputView {
            stdout: "out".into(),
            stderr: "err".into(),
            stdout_truncated: true,
            stdout_dropped_bytes: 7,
            ..OutputView::default()
        },
        resources: Resources {
            wall_time_ms: Some(12),
            peak_memory_bytes: Some(1 << 20),
            cpu_time_ms: Some(3),
        },
        retry_in: None,
    };
    requeue(store, id, &end, 7, None).await.expect("complete");
    let r = stored(store, id).await;
    assert_eq!(r.state, JobState::Queued);
    assert_eq!(r.node, None);
    assert_eq!(r.signal, Some(9));
    assert_eq!(r.output, end.output);
    assert_eq!(r.resources, end.resources);
    assert!(r.finished_at.is_none());
    assert_eq!(store.queued_jobs().await.expect("queued").len(), 1);

    // Attempt 2 succeeds.
    start(store, id, 2, 8, "node-a").await.expect("start 2");
    let end2 = AttemptEnd {
        n: 2,
        reason: EndReason::Exited,
        exit_code: Some(0),
        signal: None,
        ..end.clone()
    };
    let fin = finish(JobState::Succeeded, EndReason::Exited, Some(json!(42)));
    store
        .complete_attempt(
            id,
            &end2,
            &AfterAttempt::Finish(fin),
            &state(id, 9, JobState::Succeeded, Some(EndReason::Exited), Some(2)),
        )
        .await
        .expect("complete 2");
    let r = stored(store, id).await;
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.reason, Some(EndReason::Exited));
    assert_eq!(r.result, Some(json!(42)));
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.signal, None);
    assert_eq!(
        r.attempts.iter().map(|a| a.n).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(r.attempts[0].reason, Some(EndReason::Signaled));
    assert_eq!(r.attempts[0].signal, Some(9));
    assert!(r.attempts.iter().all(|a| a.finished_at.is_some()));
    assert!(r.finished_at.is_some());
    assert_eq!(r.last_seq, 9);

    let all = store.events_after(id, 0, 1000).await.expect("events");
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|e| e.job_id == id));
    assert!(all.last().expect("last").data.is_terminal_state());
    let some = store.events_after(id, 6, 2).await.expect("events");
    assert_eq!(some.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![7, 8]);
}

async fn a_claim_only_takes_a_queued_job(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let j = new_job("wf", 0, None);
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    let claim = |node: &'static str, seq| async move { start(store, id, 1, seq, node).await };
    claim("node-a", 2).await.expect("the first claim wins");
    // A second claim of a running job is refused and writes nothing.
    assert!(matches!(
        claim("node-b", 3).await,
        Err(StoreError::NotFound(x)) if x == id
    ));
    let r = stored(store, id).await;
    assert_eq!(r.node.as_deref(), Some("node-a"));
    assert_eq!(r.last_seq, 2);
    assert_eq!(r.attempts.len(), 1);
    // A finished job cannot be claimed either, nor an unknown one.
    let done = new_job("wf", 0, None);
    store.insert_job(&done).await.expect("insert");
    let fin = finish(JobState::Cancelled, EndReason::Cancelled, None);
    store
        .finish_job(
            done.id,
            &fin,
            &state(
                done.id,
                2,
                JobState::Cancelled,
                Some(EndReason::Cancelled),
                None,
            ),
        )
        .await
        .expect("finish");
    assert!(matches!(
        start(store, done.id, 1, 3, "node-b").await,
        Err(StoreError::NotFound(_))
    ));
    let unknown = JobId::new();
    assert!(matches!(
        start(store, unknown, 1, 2, "node-a").await,
        Err(StoreError::NotFound(_))
    ));
    let r = stored(store, done.id).await;
    assert_eq!(r.state, JobState::Cancelled);
    assert_eq!(r.node, None);
    assert!(r.attempts.is_empty());
}

async fn event_retention_keeps_head_and_tail(f: &Fixture) {
    let s = f.open_with(EventRetention { head: 5, tail: 10 }).await;
    let store = s.get();
    let j = new_job("wf", 0, None);
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    for batch in 0..10u64 {
        let evs: Vec<_> = (0..10)
            .map(|i| {
                ev(
                    id,
                    2 + batch * 10 + i,
                    EventData::Stdout {
                        line: format!("l{i}"),
                    },
                )
            })
            .collect();
        store.append_events(id, &evs).await.expect("append");
    }
    let all = store.events_after(id, 0, 10_000).await.expect("events");
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(&seqs[..5], &[1, 2, 3, 4, 5]);
    assert_eq!(seqs.len(), 15, "{seqs:?}");
    assert_eq!(*seqs.last().expect("last"), 101);
    assert_eq!(stored(store, id).await.last_seq, 101);
}

async fn list_is_newest_first_with_filters_and_cursor(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let mut ids = Vec::new();
    for i in 0..7 {
        let j = new_job(if i % 2 == 0 { "even" } else { "odd" }, 0, None);
        ids.push(j.id);
        store.insert_job(&j).await.expect("insert");
    }
    let fin = finish(JobState::Cancelled, EndReason::Cancelled, None);
    store
        .finish_job(
            ids[0],
            &fin,
            &state(
                ids[0],
                2,
                JobState::Cancelled,
                Some(EndReason::Cancelled),
                None,
            ),
        )
        .await
        .expect("finish");

    let page = |limit, before: Option<JobId>| ListFilter {
        limit,
        before,
        ..ListFilter::default()
    };
    let p1 = store.list_jobs(&page(3, None)).await.expect("list");
    assert_eq!(
        p1.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[6], ids[5], ids[4]]
    );
    let c = p1.next_cursor.expect("more pages");
    let p2 = store
        .list_jobs(&page(3, Some(decode_cursor(&c).expect("cursor"))))
        .await
        .expect("list");
    assert_eq!(
        p2.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[3], ids[2], ids[1]]
    );
    let c2 = p2.next_cursor.expect("cursor");
    let p3 = store
        .list_jobs(&page(3, Some(decode_cursor(&c2).expect("cursor"))))
        .await
        .expect("list");
    assert_eq!(p3.jobs.len(), 1);
    assert!(p3.next_cursor.is_none());
    // Exactly a page left: no cursor.
    let p = store.list_jobs(&page(7, None)).await.expect("list");
    assert_eq!(p.jobs.len(), 7);
    assert!(p.next_cursor.is_none());

    let even = store
        .list_jobs(&ListFilter {
            limit: 50,
            workflow: Some("even".into()),
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(even.jobs.len(), 4);
    let cancelled = store
        .list_jobs(&ListFilter {
            limit: 50,
            state: Some(JobState::Cancelled),
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        cancelled.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let queued_odd = store
        .list_jobs(&ListFilter {
            limit: 50,
            state: Some(JobState::Queued),
            workflow: Some("odd".into()),
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        queued_odd.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[5], ids[3], ids[1]]
    );
}

async fn list_cuts_output_and_get_has_all_of_it(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let j = new_job("wf", 0, None);
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    start(store, id, 1, 2, "n").await.expect("start");
    let stdout = "é".repeat(3000); // 6000 bytes
    let end = AttemptEnd {
        n: 1,
        reason: EndReason::Exited,
        exit_code: Some(0),
        signal: None,
        process_id: None,
        error: None,
        finished_at: Utc::now(),
        output: OutputView {
            stdout: stdout.clone(),
            ..OutputView::default()
        },
        resources: Resources::default(),
        retry_in: None,
    };
    let fin = finish(JobState::Succeeded, EndReason::Exited, None);
    store
        .complete_attempt(
            id,
            &end,
            &AfterAttempt::Finish(fin),
            &state(id, 3, JobState::Succeeded, Some(EndReason::Exited), Some(1)),
        )
        .await
        .expect("complete");
    let full = stored(store, id).await;
    assert_eq!(full.output.stdout, stdout);
    assert!(!full.output.stdout_truncated);
    let listed = store
        .list_jobs(&ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .expect("list");
    let o = &listed.jobs[0].output;
    assert_eq!(o.stdout.len(), 4096);
    assert!(o.stdout_truncated);
    assert_eq!(o.stdout_dropped_bytes, 6000 - 4096);
}

async fn reopened_store_finds_running_and_queued_jobs(f: &Fixture) {
    let (running, queued_lo, queued_hi) = {
        let s = f.open().await;
        let store = s.get();
        let r = new_job("wf", 0, None);
        let lo = new_job("wf", 0, None);
        let hi = new_job("wf", 9, None);
        for j in [&r, &lo, &hi] {
            store.insert_job(j).await.expect("insert");
        }
        start(store, r.id, 1, 2, "n").await.expect("start");
        s.close().await;
        (r.id, lo.id, hi.id)
    };
    let s = f.open().await;
    let store = s.get();
    let rec = store.recover_interrupted("n").await.expect("recover");
    assert_eq!(rec.iter().map(|j| j.id).collect::<Vec<_>>(), vec![running]);
    assert_eq!(rec[0].attempts_started, 1);
    assert_eq!(rec[0].state, JobState::Running);
    let q = store.queued_jobs().await.expect("queued");
    assert_eq!(
        q.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![queued_hi, queued_lo]
    );
    store.ping().await.expect("ping");
    s.close().await;
    assert!(
        s.get().ping().await.is_err(),
        "a closed store does not answer"
    );
}

async fn concurrent_inserts_with_one_key_make_one_job(f: &Fixture) {
    let s = f.open().await;
    let store = s.get();
    let jobs: Vec<NewJob> = (0..8).map(|_| new_job("wf", 0, Some("same"))).collect();
    let results = futures::future::join_all(jobs.iter().map(|j| store.insert_job(j))).await;
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for (j, r) in jobs.iter().zip(results) {
        match r.expect("insert") {
            Inserted::Created => created.push(j.id),
            Inserted::Existing(e) => existing.push(e.id),
        }
    }
    assert_eq!(created.len(), 1, "exactly one insert creates the job");
    assert!(existing.iter().all(|e| *e == created[0]), "{existing:?}");
    let all = store
        .list_jobs(&ListFilter {
            limit: 50,
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(all.jobs.len(), 1);
}
