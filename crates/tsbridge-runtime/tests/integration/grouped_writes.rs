//! The SQLite writer's batches: whatever arrives together is written in one
//! transaction, one statement per row, in arrival order (they were grouped
//! multi-row queries padded to fixed row counts before the writer moved to
//! a thread of its own; these tests kept their odd batch sizes). They write
//! batches of many sizes, lone writes of every kind, and writes of one job
//! sent together, and read everything back (after a reopen where it
//! matters). The runtime tests check the attempt's pid: written with the
//! end of a short attempt, and visible while a silent one runs.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use common::*;
use futures::future::join_all;
use serde_json::json;
use tsbridge_proto::api::OutputView;
use tsbridge_proto::{ChildEvent, EndReason, EventData, JobEvent, JobId, JobState, Progress};
use tsbridge_runtime::store::{
    AfterAttempt, AttemptEnd, Finish, Inserted, JobStore, NewJob, SqliteStore, StoredRequest,
};
use tsbridge_runtime::test_util::{self, attempt_end, event};
use tsbridge_runtime::{
    AttemptEvent, AttemptIo, AttemptOutcome, AttemptRequest, Executor, RuntimeOptions,
};

/// A `state` event without a reason.
fn state_event(id: JobId, seq: u64, state: JobState, attempt: Option<u32>) -> JobEvent {
    test_util::state_event(id, seq, state, None, attempt)
}

fn new_job() -> NewJob {
    let id = JobId::new();
    NewJob {
        id,
        workflow: "wf".into(),
        priority: 0,
        params: json!({"n": 1}),
        request: StoredRequest::default(),
        idempotency_key: None,
        max_attempts: 3,
        created_at: Utc::now(),
        event: state_event(id, 1, JobState::Queued, None),
    }
}

fn progress(id: JobId, seqs: std::ops::RangeInclusive<u64>) -> Vec<JobEvent> {
    seqs.map(|seq| {
        event(
            id,
            seq,
            EventData::Progress(Progress::new(seq, 100, "step")),
        )
    })
    .collect()
}

fn end(n: u32, pid: Option<u32>) -> AttemptEnd {
    AttemptEnd {
        process_id: pid,
        output: OutputView {
            stdout: format!("out of attempt {n}"),
            ..OutputView::default()
        },
        ..attempt_end(n, EndReason::Exited)
    }
}

fn finish(state: JobState, reason: EndReason) -> Finish {
    Finish {
        state,
        reason: Some(reason),
        result: Some(json!({"done": true})),
        error: None,
        finished_at: Utc::now(),
    }
}

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/jobs.db", dir.path().display())
}

async fn seqs(store: &SqliteStore, id: JobId) -> Vec<u64> {
    store
        .events_after(id, 0, 1000)
        .await
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// `n` jobs through their whole life, each step sent for all jobs at once:
/// inserts, claims (each job claimed twice: one wins), a pid and 5 events
/// together, attempt ends (even jobs finish, odd ones are re-queued), then
/// the re-queued ones are cancelled. Checked after a reopen.
async fn life_of(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&url(&dir)).await.expect("open"));
    let jobs: Vec<NewJob> = (0..n).map(|_| new_job()).collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();

    let inserted = join_all(jobs.iter().map(|j| store.insert_job(j))).await;
    assert!(
        inserted.iter().all(|r| matches!(r, Ok(Inserted::Created))),
        "{inserted:?}"
    );

    let running: Vec<JobEvent> = ids
        .iter()
        .map(|&id| state_event(id, 2, JobState::Running, Some(1)))
        .collect();
    let claims = join_all(
        running
            .iter()
            .chain(running.iter())
            .map(|ev| store.start_attempt(ev.job_id, 1, "node", Utc::now(), ev)),
    )
    .await;
    let mut won: BTreeMap<JobId, usize> = BTreeMap::new();
    for (ev, r) in running.iter().chain(running.iter()).zip(claims) {
        match r {
            Ok(()) => *won.entry(ev.job_id).or_default() += 1,
            Err(tsbridge_runtime::StoreError::NotFound(j)) => assert_eq!(j, ev.job_id),
            Err(e) => panic!("claim of {}: {e:?}", ev.job_id),
        }
    }
    assert_eq!(won.len(), n, "every job claimed");
    assert!(won.values().all(|c| *c == 1), "one claim per job: {won:?}");

    let events: Vec<Vec<JobEvent>> = ids.iter().map(|&id| progress(id, 3..=7)).collect();
    let writes = join_all(ids.iter().zip(&events).enumerate().map(|(i, (&id, evs))| {
        let store = store.clone();
        async move {
            let (a, b) = tokio::join!(
                store.append_events(id, evs),
                store.set_attempt_pid(id, 1, 1000 + i as u32)
            );
            a.and(b)
        }
    }))
    .await;
    assert!(writes.iter().all(Result::is_ok), "{writes:?}");

    let ends: Vec<(JobId, AttemptEnd, AfterAttempt, JobEvent)> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if i % 2 == 0 {
                (
                    id,
                    end(1, None),
                    AfterAttempt::Finish(finish(JobState::Succeeded, EndReason::Exited)),
                    state_event(id, 8, JobState::Succeeded, Some(1)),
                )
            } else {
                (
                    id,
                    end(1, Some(7)),
                    AfterAttempt::Requeue,
                    state_event(id, 8, JobState::Queued, Some(1)),
                )
            }
        })
        .collect();
    let done = join_all(
        ends.iter()
            .map(|(id, e, next, ev)| store.complete_attempt(*id, e, next, ev)),
    )
    .await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");

    let cancels: Vec<(JobId, Finish, JobEvent)> = ids
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&id| {
            let mut f = finish(JobState::Cancelled, EndReason::Cancelled);
            f.result = None;
            (id, f, state_event(id, 9, JobState::Cancelled, None))
        })
        .collect();
    let cancelled = join_all(
        cancels
            .iter()
            .map(|(id, f, ev)| store.finish_job(*id, f, ev)),
    )
    .await;
    assert!(cancelled.iter().all(Result::is_ok), "{cancelled:?}");
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&url(&dir)).await.expect("reopen");
    for (i, &id) in ids.iter().enumerate() {
        let r = store.get_job(id).await.expect("get").expect("job");
        assert_eq!(r.attempts.len(), 1, "job {i} of {n}");
        let a = &r.attempts[0];
        assert_eq!(a.n, 1);
        assert_eq!(a.reason, Some(EndReason::Exited));
        assert_eq!(a.exit_code, Some(0));
        assert_eq!(r.output.stdout, "out of attempt 1");
        assert_eq!(r.progress.as_ref().map(|p| p.current), Some(7), "job {i}");
        if i % 2 == 0 {
            assert_eq!(r.state, JobState::Succeeded, "job {i} of {n}");
            assert_eq!(r.result, Some(json!({"done": true})));
            // The pid written on its own stays (the end reported none).
            assert_eq!(r.process_id, Some(1000 + i as u32));
            assert_eq!(a.process_id, Some(1000 + i as u32));
            assert_eq!(r.last_seq, 8);
            assert_eq!(seqs(&store, id).await, (1..=8).collect::<Vec<u64>>());
        } else {
            assert_eq!(r.state, JobState::Cancelled, "job {i} of {n}");
            assert_eq!(r.reason, Some(EndReason::Cancelled));
            // The end's pid replaces the one written before.
            assert_eq!(r.process_id, Some(7));
            assert_eq!(a.process_id, Some(7));
            assert_eq!(r.last_seq, 9);
            assert_eq!(seqs(&store, id).await, (1..=9).collect::<Vec<u64>>());
        }
    }
    assert!(store.queued_jobs().await.expect("queued").is_empty());
}

#[tokio::test]
async fn batches_whose_sizes_are_not_bucket_sizes_write_every_row() {
    // Buckets are 1, 4, 16 and 64 rows: sizes between them are padded,
    // sizes beyond 64 are cut into chunks.
    for n in [2, 3, 5, 17, 63, 65, 130] {
        life_of(n).await;
    }
}

#[tokio::test]
async fn a_lone_job_through_retries_reads_back_its_attempts_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open");
    let j = new_job();
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    let r = store.get_job(id).await.expect("get").expect("job");
    assert!(r.attempts.is_empty());
    let mut seq = 1;
    for n in 1..=3u32 {
        seq += 1;
        store
            .start_attempt(
                id,
                n,
                "node",
                Utc::now(),
                &state_event(id, seq, JobState::Running, Some(n)),
            )
            .await
            .expect("start");
        // Claiming a running job is refused and writes nothing.
        let refused = store
            .start_attempt(
                id,
                n + 1,
                "node",
                Utc::now(),
                &state_event(id, seq + 1, JobState::Running, Some(n + 1)),
            )
            .await;
        assert!(
            matches!(refused, Err(tsbridge_runtime::StoreError::NotFound(_))),
            "{refused:?}"
        );
        store.set_attempt_pid(id, n, 100 + n).await.expect("pid");
        let evs = progress(id, seq + 1..=seq + 1);
        seq += 1;
        store.append_events(id, &evs).await.expect("append");
        seq += 1;
        let (next, state) = if n < 3 {
            (AfterAttempt::Requeue, JobState::Queued)
        } else {
            (
                AfterAttempt::Finish(finish(JobState::Succeeded, EndReason::Exited)),
                JobState::Succeeded,
            )
        };
        store
            .complete_attempt(
                id,
                &end(n, None),
                &next,
                &state_event(id, seq, state, Some(n)),
            )
            .await
            .expect("complete");
    }
    let r = store.get_job(id).await.expect("get").expect("job");
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.attempts_started, 3);
    let ns: Vec<u32> = r.attempts.iter().map(|a| a.n).collect();
    assert_eq!(ns, vec![1, 2, 3]);
    let pids: Vec<Option<u32>> = r.attempts.iter().map(|a| a.process_id).collect();
    assert_eq!(pids, vec![Some(101), Some(102), Some(103)]);
    assert!(r.attempts.iter().all(|a| a.finished_at.is_some()));
    assert_eq!(r.last_seq, seq);
    assert_eq!(seqs(&store, id).await, (1..=seq).collect::<Vec<u64>>());
    // Lists and the other reads carry the attempts too.
    let page = store
        .list_jobs(&tsbridge_runtime::store::ListFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].attempts.len(), 3);
}

#[tokio::test]
async fn writes_of_one_job_sent_together_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open");
    let j = new_job();
    let id = j.id;
    store.insert_job(&j).await.expect("insert");
    store
        .start_attempt(
            id,
            1,
            "node",
            Utc::now(),
            &state_event(id, 2, JobState::Running, Some(1)),
        )
        .await
        .expect("start");
    // Two batches of events (the same kind: they go to two rounds of one
    // transaction or to two transactions) and a pid, all at once, plus a
    // batch of 300 events (more than one events query holds).
    let (a, b, c, d) = (
        progress(id, 3..=5),
        progress(id, 6..=6),
        progress(id, 7..=306),
        store.set_attempt_pid(id, 1, 99),
    );
    let (ra, rb, rc, rd) = tokio::join!(
        store.append_events(id, &a),
        store.append_events(id, &b),
        store.append_events(id, &c),
        d
    );
    for r in [ra, rb, rc, rd] {
        r.expect("write");
    }
    let r = store.get_job(id).await.expect("get").expect("job");
    assert_eq!(r.last_seq, 306);
    assert_eq!(r.process_id, Some(99));
    assert_eq!(r.attempts[0].process_id, Some(99));
    assert_eq!(seqs(&store, id).await, (1..=306).collect::<Vec<u64>>());
}

/// Reports a pid, then (with `silent`) waits for a cancel, or else ends at
/// once with a progress event; its outcome carries the pid.
#[derive(Debug)]
struct Pid {
    silent: bool,
}

#[async_trait]
impl Executor for Pid {
    async fn run(&self, req: AttemptRequest, io: AttemptIo) -> AttemptOutcome {
        let _ = io.events.send(AttemptEvent::Started { pid: 4242 }).await;
        let mut o = AttemptOutcome::spawn_failure("", false);
        o.pid = Some(4242);
        o.error = None;
        if self.silent {
            io.control.stopped().await;
            o.reason = EndReason::Cancelled;
            return o;
        }
        let _ = io
            .events
            .send(AttemptEvent::Child(ChildEvent::Progress(Progress::new(
                1, 1, "step",
            ))))
            .await;
        o.reason = EndReason::Exited;
        o.exit_code = Some(0);
        o.result = Some(req.params);
        o
    }
}

#[tokio::test]
async fn the_pid_of_an_attempt_is_stored_when_it_ends_or_while_it_runs() {
    let opts = RuntimeOptions {
        executors: BTreeMap::from([
            (
                "short".to_owned(),
                Arc::new(Pid { silent: false }) as Arc<dyn Executor>,
            ),
            (
                "silent".to_owned(),
                Arc::new(Pid { silent: true }) as Arc<dyn Executor>,
            ),
        ]),
        ..RuntimeOptions::default()
    };
    let h = start_with(
        &format!("{}{}", workflow("short", ""), workflow("silent", "")),
        opts,
    )
    .await;
    let short = h.submit("short", json!({"a": 1})).await;
    let v = h.wait(short).await;
    assert_eq!(v.state, JobState::Succeeded);
    let r = h.store.get_job(short).await.expect("get").expect("job");
    assert_eq!(r.process_id, Some(4242));
    assert_eq!(r.attempts[0].process_id, Some(4242));

    // A job that reports no events: its pid is stored while it runs.
    let silent = h.submit("silent", json!({})).await;
    h.until_state(silent, JobState::Running).await;
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let r = h.store.get_job(silent).await.expect("get").expect("job");
        if r.process_id == Some(4242) && r.attempts.first().and_then(|a| a.process_id) == Some(4242)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pid of a running job was never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = h.rt.cancel(silent).await;
    assert_eq!(h.wait(silent).await.state, JobState::Cancelled);
}
