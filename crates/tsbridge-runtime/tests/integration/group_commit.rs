//! The SQLite store's single writer and its group commit: bursts of
//! concurrent writes are all committed (and survive a reopen), a failed
//! batch reports an error to every caller in it, one bad operation fails
//! only itself, and writes after `close` fail instead of hanging. No timing
//! is asserted: only what was written.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use common::*;
use futures::future::join_all;
use serde_json::json;
use sqlx::Connection;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::{EndReason, EventData, JobEvent, JobId, JobState, Progress};
use tsbridge_runtime::store::{
    Inserted, JobStore, NewJob, SqliteOptions, SqliteStore, StoredRequest,
};
use tsbridge_runtime::{AttemptIo, AttemptOutcome, AttemptRequest, Executor, RuntimeOptions};

fn new_job(key: Option<String>) -> NewJob {
    let id = JobId::new();
    NewJob {
        id,
        workflow: "wf".into(),
        priority: 0,
        params: json!({"n": 1}),
        request: StoredRequest::default(),
        idempotency_key: key,
        max_attempts: 1,
        created_at: Utc::now(),
        event: JobEvent {
            seq: 1,
            job_id: id,
            timestamp: Utc::now(),
            data: EventData::State {
                state: JobState::Queued,
                reason: None,
                attempt: None,
            },
        },
    }
}

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/jobs.db", dir.path().display())
}

/// A second connection to the store's file, to sabotage it from outside.
async fn side_connection(dir: &tempfile::TempDir) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&url(dir))
        .await
        .expect("side connection")
}

#[tokio::test]
async fn a_burst_of_concurrent_inserts_is_all_there_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&url(&dir)).await.expect("open"));
    let jobs: Vec<NewJob> = (0..1000).map(|_| new_job(None)).collect();
    let results = join_all(jobs.iter().map(|j| {
        let store = store.clone();
        async move { store.insert_job(j).await }
    }))
    .await;
    for r in results {
        assert!(matches!(r, Ok(Inserted::Created)), "{r:?}");
    }
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&url(&dir)).await.expect("reopen");
    let queued: BTreeSet<JobId> = store
        .queued_jobs()
        .await
        .expect("queued")
        .into_iter()
        .map(|j| j.id)
        .collect();
    let expected: BTreeSet<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(queued, expected);
    for j in jobs.iter().take(50) {
        let ev = store.events_after(j.id, 0, 10).await.expect("events");
        assert_eq!(ev.len(), 1, "the queued event of {}", j.id);
    }
}

#[tokio::test]
async fn concurrent_writes_of_every_kind_keep_their_own_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&url(&dir)).await.expect("open"));
    let jobs: Vec<NewJob> = (0..200).map(|_| new_job(None)).collect();
    for j in &jobs {
        store.insert_job(j).await.expect("insert");
    }
    // Every job claimed twice at once, plus events and a pid, plus new
    // inserts (some sharing a key), all in flight together: exactly one
    // claim per job wins, every key names one job.
    let claims = join_all(jobs.iter().flat_map(|j| {
        let id = j.id;
        (0..2).map({
            let store = store.clone();
            move |_| {
                let store = store.clone();
                async move {
                    let ev = JobEvent {
                        seq: 2,
                        job_id: id,
                        timestamp: Utc::now(),
                        data: EventData::State {
                            state: JobState::Running,
                            reason: None,
                            attempt: Some(1),
                        },
                    };
                    (id, store.start_attempt(id, 1, "n", Utc::now(), &ev).await)
                }
            }
        })
    }));
    let keyed: Vec<NewJob> = (0..40)
        .map(|i| new_job(Some(format!("key-{}", i % 4))))
        .collect();
    let inserts = join_all(keyed.iter().map(|j| {
        let store = store.clone();
        async move { store.insert_job(j).await }
    }));
    let (claims, inserts) = tokio::join!(claims, inserts);
    let mut won: BTreeMap<JobId, usize> = BTreeMap::new();
    for (id, r) in claims {
        match r {
            Ok(()) => *won.entry(id).or_default() += 1,
            Err(tsbridge_runtime::StoreError::NotFound(j)) => assert_eq!(j, id),
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won.len(), jobs.len());
    assert!(won.values().all(|n| *n == 1), "one claim per job");
    let mut created = 0;
    let mut by_key: BTreeMap<String, BTreeSet<JobId>> = BTreeMap::new();
    for (j, r) in keyed.iter().zip(inserts) {
        let key = j.idempotency_key.clone().expect("key");
        match r.expect("insert") {
            Inserted::Created => {
                created += 1;
                by_key.entry(key).or_default().insert(j.id);
            }
            Inserted::Existing(e) => {
                by_key.entry(key).or_default().insert(e.id);
            }
        }
    }
    assert_eq!(created, 4, "one job per key");
    assert!(by_key.values().all(|ids| ids.len() == 1), "{by_key:?}");

    // Events and pids of all jobs at once.
    let writes = join_all(jobs.iter().map(|j| {
        let store = store.clone();
        let id = j.id;
        async move {
            let events: Vec<JobEvent> = (3..=5)
                .map(|seq| JobEvent {
                    seq,
                    job_id: id,
                    timestamp: Utc::now(),
                    data: EventData::Progress(Progress::new(seq - 2, 3, "step")),
                })
                .collect();
            let (a, b) = tokio::join!(
                store.append_events(id, &events),
                store.set_attempt_pid(id, 1, 4242)
            );
            a.and(b)
        }
    }))
    .await;
    assert!(writes.iter().all(Result::is_ok));
    for j in jobs.iter().take(20) {
        let r = store.get_job(j.id).await.expect("get").expect("job");
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.last_seq, 5);
        assert_eq!(r.process_id, Some(4242));
        assert_eq!(r.attempts.len(), 1);
        assert_eq!(r.progress.as_ref().map(|p| p.current), Some(3));
        let seqs: Vec<u64> = store
            .events_after(j.id, 0, 100)
            .await
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }
}

#[tokio::test]
async fn a_failed_batch_reports_the_error_to_every_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&url(&dir)).await.expect("open"));
    let mut side = side_connection(&dir).await;
    sqlx::query(
        "CREATE TRIGGER no_events BEFORE INSERT ON events \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut side)
    .await
    .expect("trigger");
    let jobs: Vec<NewJob> = (0..100).map(|_| new_job(None)).collect();
    let results = join_all(jobs.iter().map(|j| {
        let store = store.clone();
        async move { store.insert_job(j).await }
    }))
    .await;
    for r in &results {
        let e = r.as_ref().expect_err("every insert fails");
        assert!(
            format!("{:?}", e).contains("injected failure"),
            "each caller gets its own error: {e:?}"
        );
    }
    assert!(store.queued_jobs().await.expect("queued").is_empty());

    // Once the cause is gone, the store writes again.
    sqlx::query("DROP TRIGGER no_events")
        .execute(&mut side)
        .await
        .expect("drop trigger");
    let j = new_job(None);
    assert!(matches!(store.insert_job(&j).await, Ok(Inserted::Created)));
    assert!(store.get_job(j.id).await.expect("get").is_some());
}

#[tokio::test]
async fn one_bad_write_fails_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&url(&dir)).await.expect("open"));
    let jobs: Vec<NewJob> = (0..200).map(|_| new_job(None)).collect();
    let bad: BTreeSet<JobId> = jobs.iter().step_by(17).map(|j| j.id).collect();
    let mut side = side_connection(&dir).await;
    let list = bad
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // The ids are UUIDs we made: nothing to escape.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.job_id IN ({list}) \
         BEGIN SELECT RAISE(ABORT, 'poisoned job'); END"
    )))
    .execute(&mut side)
    .await
    .expect("trigger");
    let results = join_all(jobs.iter().map(|j| {
        let store = store.clone();
        async move { (j.id, store.insert_job(j).await) }
    }))
    .await;
    for (id, r) in results {
        if bad.contains(&id) {
            assert!(r.is_err(), "{id} must fail");
            assert!(store.get_job(id).await.expect("get").is_none());
        } else {
            assert!(matches!(r, Ok(Inserted::Created)), "{id}: {r:?}");
            assert!(store.get_job(id).await.expect("get").is_some());
        }
    }
}

#[tokio::test]
async fn writes_after_close_fail_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open");
    let j = new_job(None);
    store.insert_job(&j).await.expect("insert");
    store.close().await;
    assert!(store.insert_job(&new_job(None)).await.is_err());
    assert!(store.ping().await.is_err());
    let store = SqliteStore::open(&url(&dir)).await.expect("reopen");
    assert!(store.get_job(j.id).await.expect("get").is_some());
}

/// The writer never checkpoints in its commits (no automatic checkpoint):
/// the checkpointer thread copies committed rows into the database file on
/// its own, with the store open and idle. Read through `immutable=1`, which
/// ignores the WAL: the rows are in the file itself.
#[tokio::test]
async fn the_checkpointer_copies_commits_into_the_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&url(&dir)).await.expect("open"));
    let jobs: Vec<NewJob> = (0..100).map(|_| new_job(None)).collect();
    for r in join_all(jobs.iter().map(|j| {
        let store = store.clone();
        async move { store.insert_job(j).await }
    }))
    .await
    {
        assert!(matches!(r, Ok(Inserted::Created)), "{r:?}");
    }
    let file_only = format!(
        "sqlite://{}/jobs.db?immutable=true&mode=ro",
        dir.path().display()
    );
    // Until the first checkpoint the file may not even hold the schema
    // (the migrations are in the WAL too), and a read that races a
    // checkpoint may see half-copied pages (immutable=1 promises SQLite
    // that the file does not change): both are read again later. Once
    // the commits stop, the checkpointer copies once more and goes idle.
    let in_file = || async {
        let mut c = sqlx::SqliteConnection::connect(&file_only)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs")
            .fetch_one(&mut c)
            .await
            .map_err(|e| e.to_string())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n = in_file().await;
        if n == Ok(100) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 60 s the database file holds {n:?} of 100 committed jobs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The file grows a whole chunk at a time (8 MiB), so that later
    // checkpoints write into blocks it has already and their syncs need no
    // journal commit: 100 jobs are far less than one chunk.
    let size = std::fs::metadata(dir.path().join("jobs.db"))
        .expect("database file")
        .len();
    assert!(
        size > 0 && size.is_multiple_of(8 << 20),
        "the database file is {size} bytes, not a whole number of 8 MiB chunks"
    );
    // Still open and writing: the checkpoints did not get in the way, and
    // the database (file and WAL, read as SQLite reads them) is sound.
    store
        .insert_job(&new_job(None))
        .await
        .expect("insert after");
    assert_eq!(store.queued_jobs().await.expect("queued").len(), 101);
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut side_connection(&dir).await)
        .await
        .expect("integrity check");
    assert_eq!(check, "ok");
}

/// The checkpoint sequence in the WAL file's header (it counts the WAL's
/// restarts from its beginning), or 0 before the file has a header.
fn wal_restarts(dir: &tempfile::TempDir) -> u32 {
    match std::fs::read(dir.path().join("jobs.db-wal")) {
        Ok(b) if b.len() >= 16 => u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        _ => 0,
    }
}

/// Inserts from 8 writers, each sending its next insert as soon as the
/// last one committed (small commits, one after the other, as under HTTP
/// load), until the WAL restarted `restarts` times (or 180 s passed).
/// Returns the jobs written and the longest the WAL file was meanwhile (it
/// is as long as the WAL ever was since its last truncation).
async fn insert_until_the_wal_restarted(
    store: &Arc<SqliteStore>,
    dir: &tempfile::TempDir,
    restarts: u32,
) -> (u64, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = store.insert_job(&new_job(None)).await;
                    assert!(matches!(r, Ok(Inserted::Created)), "{r:?}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let wal_len = || std::fs::metadata(dir.path().join("jobs.db-wal")).map_or(0, |m| m.len());
    let mut longest = 0;
    while wal_restarts(dir) < restarts && std::time::Instant::now() < deadline {
        longest = longest.max(wal_len());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.expect("writer task");
    }
    (written, longest)
}

/// Under a load that never lets the writer go idle, the WAL still starts
/// again from its beginning once it is long (it grew without end before:
/// a checkpoint running beside the writer never sees the last frames, and
/// SQLite restarts the WAL only when every frame was copied), and the data
/// written across the restarts is all there and sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_restarts_under_a_load_that_never_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&url(&dir)).await.expect("open"));
    // Each insert appends a few 4 KiB pages; the WAL restarts past 64 MiB
    // (and its file is truncated to 128 MiB at a restart).
    let (written, longest) = insert_until_the_wal_restarted(&store, &dir, 3).await;
    eprintln!("the WAL was {longest} bytes long at most");
    let restarts = wal_restarts(&dir);
    assert!(
        restarts >= 3,
        "after {written} inserts the WAL restarted {restarts} times; it was {longest} bytes long"
    );
    // It restarts past 64 MiB, and past 128 MiB at the latest, whatever
    // the checkpointer managed (the writer then copies it alone): 192 MiB
    // leaves a batch's frames of room (without the restart it grew to
    // 900 MB before SQLite found a moment to restart it three times).
    assert!(
        longest <= 192 << 20,
        "the WAL grew to {longest} bytes before its third restart"
    );
    assert_eq!(
        store.queued_jobs().await.expect("queued").len() as u64,
        written
    );
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut side_connection(&dir).await)
        .await
        .expect("integrity check");
    assert_eq!(check, "ok");
}

/// `store.wal_restart` sets the threshold: at 4 MiB the WAL restarts long
/// before the default 64 MiB would let it, and its file never grows past
/// three times the threshold (with the default it reaches 64 MiB before the
/// first restart, so the bound below fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_wal_restart_keeps_the_wal_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions {
        wal_restart: 4 << 20,
        ..SqliteOptions::default()
    };
    let store = Arc::new(
        SqliteStore::open_with(&url(&dir), options)
            .await
            .expect("open"),
    );
    let (written, longest) = insert_until_the_wal_restarted(&store, &dir, 5).await;
    let restarts = wal_restarts(&dir);
    assert!(
        restarts >= 5,
        "after {written} inserts the WAL restarted {restarts} times; it was {longest} bytes long"
    );
    // Past 4 MiB it restarts, and past 8 MiB at the latest however
    // starved the checkpointer is (the writer copies the rest alone), so
    // its file never grows past 8 MiB and one batch's frames.
    assert!(
        longest <= 12 << 20,
        "the WAL grew to {longest} bytes with a 4 MiB threshold"
    );
    assert_eq!(
        store.queued_jobs().await.expect("queued").len() as u64,
        written
    );
}

/// The threads named `name` in this process (their kernel names, at most
/// 15 bytes).
fn threads_named(name: &str) -> BTreeSet<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return BTreeSet::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// A checkpointer whose passes never copy all they saw never asks the
/// writer for the rest: before the writer counted the WAL's pages itself,
/// the WAL then grew without bound (84 MB with a 4 MiB threshold on a
/// loaded machine, where the checkpointer was starved of CPU). Now the
/// writer copies it alone past twice the threshold, and the WAL restarts
/// and stays within three times the threshold. The store runs here without
/// its checkpointer, the limit of a starved one: this test first made the
/// checkpointer thread `SCHED_IDLE` beside two spinning threads, which under
/// a loaded CI also descheduled it *during* a pass, holding the checkpoint
/// lock for seconds (the WAL reached 17 MB; a pass that holds the lock
/// delays the restart like a reader on an old snapshot, by design).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_checkpointer_does_not_hold_up_the_wal_restart() {
    const CHECKPOINTER: &str = "tsb-store-ckpt";
    let threshold: u64 = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let before = threads_named(CHECKPOINTER);
    let options = SqliteOptions {
        wal_restart: threshold,
        checkpointer: false,
        ..SqliteOptions::default()
    };
    let store = Arc::new(
        SqliteStore::open_with(&url(&dir), options)
            .await
            .expect("open"),
    );
    let (written, longest) = insert_until_the_wal_restarted(&store, &dir, 3).await;
    let ours: Vec<_> = threads_named(CHECKPOINTER)
        .difference(&before)
        .copied()
        .collect();
    assert!(ours.is_empty(), "no checkpointer thread: {ours:?}");
    let restarts = wal_restarts(&dir);
    assert!(
        restarts >= 3,
        "after {written} inserts the WAL restarted {restarts} times; it was {longest} bytes long"
    );
    assert!(
        longest <= 3 * threshold,
        "the WAL grew to {longest} bytes with a {threshold}-byte threshold"
    );
    assert_eq!(
        store.queued_jobs().await.expect("queued").len() as u64,
        written
    );
}

#[tokio::test]
async fn the_in_memory_store_reads_what_it_wrote() {
    let store = SqliteStore::open("sqlite::memory:").await.expect("open");
    let j = new_job(None);
    store.insert_job(&j).await.expect("insert");
    let r = store.get_job(j.id).await.expect("get").expect("job");
    assert_eq!(r.state, JobState::Queued);
    assert_eq!(store.queued_jobs().await.expect("queued").len(), 1);
}

/// Succeeds at once, with two progress events.
#[derive(Debug)]
struct Instant;

#[async_trait]
impl Executor for Instant {
    async fn run(&self, req: AttemptRequest, io: AttemptIo) -> AttemptOutcome {
        let _ = io
            .events
            .send(tsbridge_runtime::AttemptEvent::Started { pid: 4242 })
            .await;
        for i in 1..=2 {
            let _ = io
                .events
                .send(tsbridge_runtime::AttemptEvent::Child(
                    tsbridge_proto::ChildEvent::Progress(Progress::new(i, 2, "step")),
                ))
                .await;
        }
        let mut o = AttemptOutcome::spawn_failure("", false);
        o.reason = EndReason::Exited;
        o.exit_code = Some(0);
        o.error = None;
        o.result = Some(req.params);
        o
    }
}

#[tokio::test]
async fn a_burst_of_concurrent_submits_runs_and_survives_a_reopen() {
    let opts = RuntimeOptions {
        executors: BTreeMap::from([("job".to_owned(), Arc::new(Instant) as Arc<dyn Executor>)]),
        ..RuntimeOptions::default()
    };
    let h = start_with(
        &format!("[defaults]\nconcurrency = 8\n{}", workflow("job", "")),
        opts,
    )
    .await;
    let submitted = join_all((0..1000).map(|i| {
        let rt = h.rt.clone();
        async move {
            rt.submit("job", json!({ "i": i }), JobOptions::default())
                .await
                .expect("accepted")
                .job_id
        }
    }))
    .await;
    let ids: BTreeSet<JobId> = submitted.iter().copied().collect();
    assert_eq!(ids.len(), 1000);
    // Half waited for, the rest left to the shutdown's drain.
    for (i, id) in submitted.iter().enumerate().step_by(2) {
        let v = h.wait(*id).await;
        assert_eq!(v.state, JobState::Succeeded);
        assert_eq!(v.result, Some(json!({ "i": i })));
    }
    h.rt.shutdown(SOON).await;
    h.store.close().await;

    let store = open_store(h.dir.path()).await;
    let mut done = 0;
    for id in &submitted {
        let r = store
            .get_job(*id)
            .await
            .expect("get")
            .expect("every job is stored");
        if r.state == JobState::Succeeded {
            done += 1;
            assert_eq!(r.process_id, Some(4242));
            let seqs: Vec<u64> = store
                .events_after(*id, 0, 100)
                .await
                .expect("events")
                .iter()
                .map(|e| e.seq)
                .collect();
            // queued, running, 2 x progress, result, succeeded: no gaps, no
            // duplicates.
            assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "{id}");
        } else {
            // Not started before the shutdown: still queued, runs after a restart.
            assert_eq!(r.state, JobState::Queued, "{id}");
        }
    }
    assert!(done >= 500, "{done} succeeded");
}

#[tokio::test]
async fn concurrent_submits_with_one_idempotency_key_make_one_job() {
    let opts = RuntimeOptions {
        executors: BTreeMap::from([("job".to_owned(), Arc::new(Instant) as Arc<dyn Executor>)]),
        ..RuntimeOptions::default()
    };
    let h = start_with(&workflow("job", ""), opts).await;
    let subs = join_all((0..50).map(|_| {
        let rt = h.rt.clone();
        async move {
            rt.submit(
                "job",
                json!({}),
                JobOptions {
                    idempotency_key: Some("same".into()),
                    ..JobOptions::default()
                },
            )
            .await
            .expect("accepted")
        }
    }))
    .await;
    let ids: BTreeSet<JobId> = subs.iter().map(|s| s.job_id).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(subs.iter().filter(|s| !s.existing).count(), 1);
    let v = h.wait(subs[0].job_id).await;
    assert_eq!(v.state, JobState::Succeeded);
}
