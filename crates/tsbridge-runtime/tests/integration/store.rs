//! The SQLite job store against a real file in a temp dir: insert with
//! idempotency, the attempt life cycle, events (order, retention, progress),
//! lists with cursors, recovery queries, reopening the file.

use chrono::Utc;
use serde_json::json;
use tsbridge_proto::api::{OutputView, Resources};
use tsbridge_proto::{EndReason, EventData, JobEvent, JobId, JobState, LogLevel, Progress};
use tsbridge_runtime::store::{
    AfterAttempt, AttemptEnd, EventRetention, Finish, Inserted, JobStore, ListFilter, NewJob,
    SqliteStore, StoredRequest, decode_cursor,
};

fn ev(id: JobId, seq: u64, data: EventData) -> JobEvent {
    JobEvent {
        seq,
        job_id: id,
        timestamp: Utc::now(),
        data,
    }
}

fn state(
    id: JobId,
    seq: u64,
    s: JobState,
    reason: Option<EndReason>,
    attempt: Option<u32>,
) -> JobEvent {
    ev(
        id,
        seq,
        EventData::State {
            state: s,
            reason,
            attempt,
        },
    )
}

fn new_job(workflow: &str, priority: i32, key: Option<&str>) -> NewJob {
    let id = JobId::new();
    NewJob {
        id,
        workflow: workflow.to_owned(),
        priority,
        params: json!({"n": 1}),
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

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&format!("sqlite://{}/sub/jobs.db", dir.path().display()))
        .await
        .expect("open store")
}

#[tokio::test]
async fn insert_get_and_idempotency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir).await;
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
    let j = store.get_job(a.id).await.expect("get").expect("exists");
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.params, json!({"n": 1}));
    assert_eq!(j.request.timeout_ms, Some(1500));
    assert_eq!(j.request.memory_bytes, Some(64 << 20));
    assert_eq!(j.request.env["A"], "b");
    assert_eq!(j.last_seq, 1);
    assert_eq!(j.max_attempts, 2);
    let found = store.find_by_idempotency_key("key-1").await.expect("find");
    assert_eq!(found.map(|j| j.id), Some(a.id));
    // Without a key, every insert is a new job.
    assert!(matches!(
        store
            .insert_job(&new_job("wf", 0, None))
            .await
            .expect("insert"),
        Inserted::Created
    ));
    assert!(matches!(
        store
            .insert_job(&new_job("wf", 0, None))
            .await
            .expect("insert"),
        Inserted::Created
    ));
}

#[tokio::test]
async fn attempt_life_cycle_and_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir).await;
    let j = new_job("wf", 0, None);
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    store
        .start_attempt(
            id,
            1,
            "node-a",
            Utc::now(),
            &state(id, 2, JobState::Running, None, Some(1)),
        )
        .await
        .expect("start");
    // A second claim of a running job fails.
    assert!(
        store
            .start_attempt(
                id,
                1,
                "node-b",
                Utc::now(),
                &state(id, 3, JobState::Running, None, Some(1))
            )
            .await
            .is_err()
    );
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
    let r = store.get_job(id).await.expect("get").expect("exists");
    assert_eq!(r.state, JobState::Running);
    assert_eq!(r.progress.as_ref().map(|p| p.current), Some(2));
    assert_eq!(r.result, Some(json!({"ok": true})));
    assert_eq!(r.process_id, Some(4242));
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].process_id, Some(4242));

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
            ..OutputView::default()
        },
        resources: Resources {
            wall_time_ms: Some(12),
            ..Resources::default()
        },
    };
    store
        .complete_attempt(
            id,
            &end,
            &AfterAttempt::Requeue,
            &state(id, 7, JobState::Queued, None, Some(1)),
        )
        .await
        .expect("complete");
    let r = store.get_job(id).await.expect("get").expect("exists");
    assert_eq!(r.state, JobState::Queued);
    assert_eq!(r.signal, Some(9));
    assert_eq!(r.output.stdout, "out");
    assert_eq!(store.queued_jobs().await.expect("queued").len(), 1);

    // Attempt 2 succeeds.
    store
        .start_attempt(
            id,
            2,
            "node-a",
            Utc::now(),
            &state(id, 8, JobState::Running, None, Some(2)),
        )
        .await
        .expect("start 2");
    let end2 = AttemptEnd {
        n: 2,
        reason: EndReason::Exited,
        exit_code: Some(0),
        signal: None,
        ..end.clone()
    };
    let fin = Finish {
        state: JobState::Succeeded,
        reason: Some(EndReason::Exited),
        result: Some(json!(42)),
        error: None,
        finished_at: Utc::now(),
    };
    store
        .complete_attempt(
            id,
            &end2,
            &AfterAttempt::Finish(fin),
            &state(id, 9, JobState::Succeeded, Some(EndReason::Exited), Some(2)),
        )
        .await
        .expect("complete 2");
    let r = store.get_job(id).await.expect("get").expect("exists");
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.result, Some(json!(42)));
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(
        r.attempts.iter().map(|a| a.n).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(r.attempts[0].reason, Some(EndReason::Signaled));
    assert!(r.finished_at.is_some());
    assert_eq!(r.last_seq, 9);

    let all = store.events_after(id, 0, 1000).await.expect("events");
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert!(all.last().expect("last").data.is_terminal_state());
    let some = store.events_after(id, 6, 2).await.expect("events");
    assert_eq!(some.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![7, 8]);
}

#[tokio::test]
async fn event_retention_keeps_head_and_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open_with(
        &format!("sqlite://{}/jobs.db", dir.path().display()),
        EventRetention { head: 5, tail: 10 },
    )
    .await
    .expect("open");
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
}

#[tokio::test]
async fn list_is_newest_first_with_filters_and_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let j = new_job(if i % 2 == 0 { "even" } else { "odd" }, 0, None);
        ids.push(j.id);
        store.insert_job(&j).await.expect("insert");
    }
    let fin = Finish {
        state: JobState::Cancelled,
        reason: Some(EndReason::Cancelled),
        result: None,
        error: None,
        finished_at: Utc::now(),
    };
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

    let p1 = store
        .list_jobs(&ListFilter {
            limit: 3,
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        p1.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[6], ids[5], ids[4]]
    );
    let c = p1.next_cursor.expect("more pages");
    let p2 = store
        .list_jobs(&ListFilter {
            limit: 3,
            before: Some(decode_cursor(&c).expect("cursor")),
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        p2.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[3], ids[2], ids[1]]
    );
    let p3 = store
        .list_jobs(&ListFilter {
            limit: 3,
            before: Some(decode_cursor(&p2.next_cursor.expect("cursor")).expect("cursor")),
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(p3.jobs.len(), 1);
    assert!(p3.next_cursor.is_none());

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
}

#[tokio::test]
async fn reopened_store_finds_running_and_queued_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, queued_lo, queued_hi) = {
        let store = open(&dir).await;
        let r = new_job("wf", 0, None);
        let lo = new_job("wf", 0, None);
        let hi = new_job("wf", 9, None);
        for j in [&r, &lo, &hi] {
            store.insert_job(j).await.expect("insert");
        }
        store
            .start_attempt(
                r.id,
                1,
                "n",
                Utc::now(),
                &state(r.id, 2, JobState::Running, None, Some(1)),
            )
            .await
            .expect("start");
        store.close().await;
        (r.id, lo.id, hi.id)
    };
    let store = open(&dir).await;
    let rec = store.recover_interrupted("n").await.expect("recover");
    assert_eq!(rec.iter().map(|j| j.id).collect::<Vec<_>>(), vec![running]);
    assert_eq!(rec[0].attempts_started, 1);
    let q = store.queued_jobs().await.expect("queued");
    assert_eq!(
        q.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![queued_hi, queued_lo]
    );
    store.ping().await.expect("ping");
}
