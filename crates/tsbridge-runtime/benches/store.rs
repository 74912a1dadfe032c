//! What the SQLite job store costs per job, in process: the two writes of a
//! short job that starts at once (`insert_and_start` with its `queued` and
//! `running` events; `complete_attempt_with_events` with three progress
//! events, a result and the `succeeded` event), the write pattern of every
//! pooled sync execute over HTTP (BENCHMARKS.md "Pooled HTTP").
//!
//! - `job_life`: one job at a time (`jobs_in_flight = 1`, every write is a
//!   commit of its own: the one-connection case) and 16 jobs in flight (the
//!   writer's group commit shares commits among them), for a store in a
//!   file and `sqlite::memory:` (the same statements without WAL, locks or
//!   file writes: what the file costs).
//! - `bare_rusqlite`: the floor, the same two transactions as plain
//!   statements on one rusqlite connection in the calling thread (a job row
//!   and seven event rows, then the row's update), WAL and
//!   `synchronous = NORMAL` as the store: what SQLite itself costs for this
//!   much data, without the store's writer thread, batching and encoding.
//!
//! Each iteration is `jobs_in_flight` complete jobs; divan reports time per
//! iteration, so divide by the count for time per job.
//!
//! Run: `cargo bench -p tsbridge-runtime --bench store` (release profile,
//! fat LTO: slow to build), or for a quick comparison
//! `cargo bench --profile bench-fast -p tsbridge-runtime --bench store`.

use std::sync::OnceLock;

use chrono::Utc;
use divan::Bencher;
use serde_json::json;
use tsbridge_proto::{EndReason, EventData, JobEvent, JobId, JobState, Progress};
use tsbridge_runtime::store::{
    AfterAttempt, AttemptEnd, Finish, FirstStart, JobStore, NewJob, SqliteStore, StoredRequest,
};
use tsbridge_runtime::test_util::{attempt_end, event, state_event};

fn main() {
    divan::main();
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A `state` event of attempt 1 (none for `queued`).
fn state(id: JobId, seq: u64, s: JobState, reason: Option<EndReason>) -> JobEvent {
    state_event(id, seq, s, reason, (s != JobState::Queued).then_some(1))
}

/// The parameters and result of the HTTP benchmark's trivial workflow.
fn params() -> serde_json::Value {
    json!({"inputPath": "/data/in/video-0001.mp4", "outputPath": "/data/out/video-0001.mp4", "quality": "high"})
}

/// One short job's whole life through the store, as the dispatcher and the
/// attempt task write it.
async fn job_life(store: &SqliteStore, child_events: bool) {
    let id = JobId::new();
    let job = NewJob {
        id,
        workflow: "video-generation-pool".into(),
        priority: 0,
        params: params(),
        request: StoredRequest {
            timeout_ms: Some(30_000),
            memory_bytes: None,
            env: Default::default(),
        },
        idempotency_key: None,
        max_attempts: 1,
        created_at: Utc::now(),
        event: state(id, 1, JobState::Queued, None),
    };
    let start = FirstStart {
        node: "bench".into(),
        at: Utc::now(),
        event: state(id, 2, JobState::Running, None),
    };
    let (_, started) = store
        .insert_and_start(&job, &start)
        .await
        .expect("insert and start");
    assert!(started, "a new job is claimed with its insert");
    let result = json!({"params": params(), "status": "completed", "steps": 3, "workflow": "video-generation-pool"});
    let mut events: Vec<JobEvent> = ["loading input", "processing", "writing output"]
        .iter()
        .zip(1..)
        .map(|(m, i)| event(id, 2 + i, EventData::Progress(Progress::new(i, 3, *m))))
        .collect();
    if !child_events {
        events.clear();
    }
    events.push(event(
        id,
        6,
        EventData::Result {
            value: result.clone(),
        },
    ));
    let end = AttemptEnd {
        process_id: Some(4242),
        ..attempt_end(1, EndReason::Exited)
    };
    let fin = Finish {
        state: JobState::Succeeded,
        reason: Some(EndReason::Exited),
        result: Some(result),
        error: None,
        finished_at: Utc::now(),
    };
    store
        .complete_attempt_with_events(
            id,
            &events,
            &end,
            &AfterAttempt::Finish(fin),
            &state(id, 7, JobState::Succeeded, Some(EndReason::Exited)),
        )
        .await
        .expect("complete");
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    File,
    Memory,
}

#[divan::bench(args = [(Kind::File, 1), (Kind::File, 16), (Kind::Memory, 1), (Kind::Memory, 16)], sample_count = 30, sample_size = 20)]
fn store_job_life(bencher: Bencher, (kind, in_flight): (Kind, usize)) {
    bench_job_life(bencher, kind, in_flight, true);
}

/// The same without the child's events (progress and result): what the
/// events table costs per job.
#[divan::bench(args = [(Kind::File, 1), (Kind::File, 16)], sample_count = 30, sample_size = 20)]
fn store_job_life_state_events_only(bencher: Bencher, (kind, in_flight): (Kind, usize)) {
    bench_job_life(bencher, kind, in_flight, false);
}

fn bench_job_life(bencher: Bencher, kind: Kind, in_flight: usize, child_events: bool) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt.block_on(async {
        match kind {
            Kind::File => SqliteStore::open_path(&dir.path().join("bench.db")).await,
            Kind::Memory => SqliteStore::open("sqlite::memory:").await,
        }
        .expect("open store")
    });
    bencher
        .counter(divan::counter::ItemsCount::new(in_flight))
        .bench_local(|| {
            rt.block_on(async {
                let jobs = (0..in_flight).map(|_| job_life(&store, child_events));
                futures::future::join_all(jobs).await;
            })
        });
    rt.block_on(store.close());
}

/// The floor: the same rows written with plain statements in the calling
/// thread, one transaction per write as at one job in flight.
#[divan::bench(sample_count = 30, sample_size = 20)]
fn bare_rusqlite(bencher: Bencher) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = rusqlite::Connection::open(dir.path().join("bare.db")).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE jobs (id TEXT PRIMARY KEY NOT NULL, workflow TEXT NOT NULL,
            state TEXT NOT NULL, params TEXT NOT NULL, request TEXT NOT NULL,
            created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
            result TEXT, progress TEXT, attempt_log TEXT, last_seq INTEGER NOT NULL);
         CREATE INDEX jobs_by_state ON jobs (state, id) WHERE state <> 'succeeded';
         CREATE INDEX jobs_by_workflow ON jobs (workflow, id);
         CREATE TABLE events (job_id TEXT NOT NULL, seq INTEGER NOT NULL,
            ts INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, seq)) WITHOUT ROWID;",
    )
    .expect("schema");
    let params = params().to_string();
    let result = json!({"params": crate::params(), "status": "completed", "steps": 3, "workflow": "video-generation-pool"}).to_string();
    let progress =
        r#"{"type":"progress","current":1,"total":3,"percentage":33.3,"message":"loading input"}"#;
    bencher.bench_local(|| {
        let id = JobId::new().to_string();
        let now = Utc::now().timestamp_millis();
        let event = |tx: &rusqlite::Transaction, seq: i64, data: &str| {
            tx.prepare_cached("INSERT INTO events (job_id, seq, ts, data) VALUES (?1, ?2, ?3, ?4)")
                .expect("prepare")
                .execute(rusqlite::params![id, seq, now, data])
                .expect("event");
        };
        let tx = conn.unchecked_transaction().expect("begin");
        tx.prepare_cached(
            "INSERT INTO jobs (id, workflow, state, params, request, created_at, started_at, attempt_log, last_seq)
             VALUES (?1, 'video-generation-pool', 'running', ?2, '{\"timeout_ms\":30000}', ?3, ?3, '[[1]]', 2)",
        )
        .expect("prepare")
        .execute(rusqlite::params![id, params, now])
        .expect("insert");
        event(&tx, 1, r#"{"type":"state","state":"queued"}"#);
        event(&tx, 2, r#"{"type":"state","state":"running","attempt":1}"#);
        tx.commit().expect("commit");
        let tx = conn.unchecked_transaction().expect("begin");
        for seq in 3..=5 {
            event(&tx, seq, progress);
        }
        event(&tx, 6, &result);
        event(&tx, 7, r#"{"type":"state","state":"succeeded","reason":"exited","attempt":1}"#);
        tx.prepare_cached(
            "UPDATE jobs SET state = 'succeeded', finished_at = ?2, result = ?3, progress = ?4, last_seq = 7 WHERE id = ?1",
        )
        .expect("prepare")
        .execute(rusqlite::params![id, now, result, progress])
        .expect("update");
        tx.commit().expect("commit");
    });
}
