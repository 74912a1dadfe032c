//! Migration 0004 (the lean `jobs` table): a store written by the schema
//! before it opens with every job, attempt, event and idempotency key as it
//! was, and the rebuilt tables keep their constraints (the events' foreign
//! key to the new `jobs`, the key's uniqueness for keyed jobs only).

use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tsbridge_proto::{EndReason, EventData, JobId, JobState};
use tsbridge_runtime::store::{Inserted, JobStore, ListFilter, NewJob, SqliteStore};

async fn connect(path: &std::path::Path) -> SqliteConnection {
    SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .expect("url")
        .create_if_missing(true)
        .foreign_keys(true)
        .connect()
        .await
        .expect("connect")
}

fn state_event(state: JobState, reason: Option<EndReason>, attempt: Option<u32>) -> String {
    serde_json::to_string(&EventData::State {
        state,
        reason,
        attempt,
    })
    .expect("event json")
}

/// Writes a store at schema version 3 (the migrations before the lean
/// table), with jobs as the writer of that version left them.
async fn write_v3_store(path: &std::path::Path, done: JobId, queued: JobId, running: JobId) {
    let mut conn = connect(path).await;
    let mut m = sqlx::migrate!("./migrations/sqlite");
    let old: Vec<_> = m
        .migrations
        .iter()
        .filter(|x| x.version <= 3)
        .cloned()
        .collect();
    assert_eq!(old.len(), 3, "the migrations before the lean table");
    m.migrations = old.into();
    m.run(&mut conn).await.expect("migrate to v3");

    let job = "INSERT INTO jobs (id, workflow, state, reason, priority, params, request, \
               idempotency_key, max_attempts, attempts, created_at, started_at, finished_at, \
               result, exit_code, process_id, stdout, last_seq) \
               VALUES (?, 'wf', ?, ?, 0, '{\"n\":1}', '{}', ?, 3, ?, 1000, ?, ?, ?, ?, ?, ?, ?)";
    // Succeeded on its second attempt, with a key.
    sqlx::query(job)
        .bind(done.to_string())
        .bind("succeeded")
        .bind("exited")
        .bind("key-1")
        .bind(2)
        .bind(1001)
        .bind(1009)
        .bind("{\"ok\":true}")
        .bind(0)
        .bind(4242)
        .bind("out\n")
        .bind(4)
        .execute(&mut conn)
        .await
        .expect("insert done");
    // Queued, never started, no key.
    sqlx::query(job)
        .bind(queued.to_string())
        .bind("queued")
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(0)
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind(None::<String>)
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind("")
        .bind(1)
        .execute(&mut conn)
        .await
        .expect("insert queued");
    // Running its first attempt (a pid stored), no key.
    sqlx::query(job)
        .bind(running.to_string())
        .bind("running")
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(1)
        .bind(1002)
        .bind(None::<i64>)
        .bind(None::<String>)
        .bind(None::<i64>)
        .bind(777)
        .bind("")
        .bind(2)
        .execute(&mut conn)
        .await
        .expect("insert running");

    let attempt = "INSERT INTO attempts (job_id, n, node, started_at, finished_at, reason, \
                   exit_code, signal, process_id, error) VALUES (?, ?, 'node-a', ?, ?, ?, ?, ?, ?, ?)";
    for (id, n, started, finished, reason, code, signal, pid, error) in [
        (
            done,
            1,
            1001,
            Some(1004),
            Some("signaled"),
            None,
            Some(9),
            Some(4241),
            Some("killed"),
        ),
        (
            done,
            2,
            1005,
            Some(1009),
            Some("exited"),
            Some(0),
            None,
            Some(4242),
            None,
        ),
        (running, 1, 1002, None, None, None, None, Some(777), None),
    ] {
        sqlx::query(attempt)
            .bind(id.to_string())
            .bind(n)
            .bind(started)
            .bind(finished)
            .bind(reason)
            .bind(code)
            .bind(signal)
            .bind(pid)
            .bind(error)
            .execute(&mut conn)
            .await
            .expect("insert attempt");
    }

    let event = "INSERT INTO events (job_id, seq, ts, data) VALUES (?, ?, 1000, ?)";
    for (id, seq, data) in [
        (done, 1, state_event(JobState::Queued, None, None)),
        (done, 2, state_event(JobState::Running, None, Some(1))),
        (done, 3, state_event(JobState::Running, None, Some(2))),
        (
            done,
            4,
            state_event(JobState::Succeeded, Some(EndReason::Exited), Some(2)),
        ),
        (queued, 1, state_event(JobState::Queued, None, None)),
        (running, 1, state_event(JobState::Queued, None, None)),
        (running, 2, state_event(JobState::Running, None, Some(1))),
    ] {
        sqlx::query(event)
            .bind(id.to_string())
            .bind(seq)
            .bind(data)
            .execute(&mut conn)
            .await
            .expect("insert event");
    }
    conn.close().await.expect("close");
}

fn new_job(key: Option<&str>) -> NewJob {
    let id = JobId::new();
    NewJob {
        id,
        workflow: "wf".into(),
        priority: 0,
        params: serde_json::json!({}),
        request: Default::default(),
        idempotency_key: key.map(str::to_owned),
        max_attempts: 1,
        created_at: chrono::Utc::now(),
        event: crate::store_contract::state(id, 1, JobState::Queued, None, None),
    }
}

#[tokio::test]
async fn a_store_of_the_previous_schema_keeps_every_job_attempt_event_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.db");
    let (done, queued, running) = (JobId::new(), JobId::new(), JobId::new());
    write_v3_store(&path, done, queued, running).await;

    let store = SqliteStore::open_path(&path).await.expect("open migrates");

    let job = store.get_job(done).await.expect("get").expect("the job");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(job.result, Some(serde_json::json!({"ok": true})));
    assert_eq!(job.output.stdout, "out\n");
    assert_eq!(job.attempts.len(), 2);
    let (a1, a2) = (&job.attempts[0], &job.attempts[1]);
    assert_eq!((a1.n, a2.n), (1, 2));
    assert_eq!(a1.reason, Some(EndReason::Signaled));
    assert_eq!(
        (a1.signal, a1.exit_code, a1.process_id),
        (Some(9), None, Some(4241))
    );
    assert_eq!(a2.reason, Some(EndReason::Exited));
    assert_eq!((a2.exit_code, a2.process_id), (Some(0), Some(4242)));
    assert_eq!(a2.started_at.timestamp_millis(), 1005);
    assert_eq!(a2.finished_at.map(|t| t.timestamp_millis()), Some(1009));
    let events = store.events_after(done, 0, 100).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );

    let q = store.get_job(queued).await.expect("get").expect("queued");
    assert!(q.attempts.is_empty(), "{:?}", q.attempts);
    let queued_ids: Vec<JobId> = store
        .queued_jobs()
        .await
        .expect("queued")
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued_ids, [queued]);
    let running_jobs = store.recover_interrupted("node-a").await.expect("running");
    assert_eq!(running_jobs.len(), 1);
    assert_eq!(running_jobs[0].id, running);
    assert_eq!(running_jobs[0].attempts.len(), 1);
    assert_eq!(running_jobs[0].attempts[0].process_id, Some(777));
    assert_eq!(running_jobs[0].attempts[0].finished_at, None);

    // The key still names its job; jobs without a key never collide.
    match store
        .insert_job(&new_job(Some("key-1")))
        .await
        .expect("insert")
    {
        Inserted::Existing(j) => assert_eq!(j.id, done),
        Inserted::Created => panic!("a second job with the key of a migrated one"),
    }
    for _ in 0..2 {
        let fresh = new_job(None);
        assert!(matches!(
            store.insert_job(&fresh).await.expect("insert"),
            Inserted::Created
        ));
    }
    let queued_list = store
        .list_jobs(&ListFilter {
            state: Some(JobState::Queued),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        queued_list.jobs.len(),
        3,
        "the migrated queued job and two new ones"
    );
    store.close().await;

    // The rebuilt tables hold together: the events' foreign key names the
    // new `jobs`, nothing dangles, and the old tables are gone.
    let mut conn = connect(&path).await;
    let dangling: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&mut conn)
        .await
        .expect("fk check");
    assert!(dangling.is_empty(), "{dangling:?}");
    let parent: String =
        sqlx::query_scalar("SELECT \"table\" FROM pragma_foreign_key_list('events')")
            .fetch_one(&mut conn)
            .await
            .expect("fk");
    assert_eq!(parent, "jobs");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .expect("tables");
    assert_eq!(tables, ["events", "jobs", "store_meta"]);
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity");
    assert_eq!(check, "ok");
}
