//! A job submitted while a running slot is free and nothing waits is
//! claimed with its insert (`JobStore::insert_and_start`, one transaction
//! on SQLite) instead of being inserted queued and claimed by a second
//! write; a job submitted while the slots are busy goes through the queue.
//! Whatever the insert answers (a replayed idempotency key, a store error),
//! the slot taken for it is given back.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use common::*;
use serde_json::json;
use tsbridge_proto::api::JobOptions;
use tsbridge_proto::{EventData, JobEvent, JobId, JobState};
use tsbridge_runtime::store::{DelegatingStore, FirstStart, Inserted, NewJob, Overrides};
use tsbridge_runtime::{JobStore, Runtime, RuntimeOptions, StoreError};

/// Counts claims by kind; its first `fail_inserts` inserts fail, writing
/// nothing.
#[derive(Debug, Default)]
struct Counting {
    claimed_with_insert: AtomicU32,
    claimed_alone: AtomicU32,
    fail_inserts: AtomicU32,
}

#[async_trait]
impl Overrides for Counting {
    async fn insert_and_start(
        &self,
        inner: &dyn JobStore,
        job: &NewJob,
        start: &FirstStart,
    ) -> Result<(Inserted, bool), StoreError> {
        if take(&self.fail_inserts) {
            return Err(StoreError::Query {
                op: "insert a job",
                source: sqlx::Error::PoolTimedOut,
            });
        }
        let r = inner.insert_and_start(job, start).await?;
        if r.1 {
            self.claimed_with_insert.fetch_add(1, Ordering::SeqCst);
        }
        Ok(r)
    }
    async fn start_attempt(
        &self,
        inner: &dyn JobStore,
        id: JobId,
        n: u32,
        node: &str,
        at: DateTime<Utc>,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        self.claimed_alone.fetch_add(1, Ordering::SeqCst);
        inner.start_attempt(id, n, node, at, event).await
    }
}

/// A runtime of one `job` workflow, global concurrency 1.
async fn start_counting(
    fail_inserts: u32,
) -> (Runtime, Arc<DelegatingStore<Counting>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DelegatingStore::new(
        open_store(dir.path()).await,
        Counting {
            fail_inserts: AtomicU32::new(fail_inserts),
            ..Counting::default()
        },
    ));
    let rt = Runtime::start(
        config(&format!(
            "[defaults]\nconcurrency = 1\n{}",
            workflow("job", "")
        )),
        store.clone(),
        RuntimeOptions::default(),
    )
    .await
    .expect("start");
    (rt, store, dir)
}

async fn wait_ok(rt: &Runtime, id: JobId) -> tsbridge_proto::api::JobView {
    let v = tokio::time::timeout(SOON, rt.wait(id))
        .await
        .expect("the job ends in time")
        .expect("wait");
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    v
}

#[tokio::test]
async fn a_job_submitted_to_a_free_slot_is_claimed_with_its_insert() {
    let (rt, store, _dir) = start_counting(0).await;
    let c = &store.overrides;
    let s = rt
        .submit(
            "job",
            json!({"progress": 2, "result": 1}),
            Default::default(),
        )
        .await
        .expect("submit");
    let v = wait_ok(&rt, s.job_id).await;
    assert_eq!(v.result, Some(json!(1)));
    assert_eq!(c.claimed_with_insert.load(Ordering::SeqCst), 1);
    assert_eq!(c.claimed_alone.load(Ordering::SeqCst), 0);
    // What the store holds is what wait answered, and the events read as
    // for any job: queued, running (attempt 1), ..., the end; no gaps.
    assert_eq!(rt.get(s.job_id).await.expect("get"), v);
    assert_eq!(v.attempts.len(), 1, "{v:?}");
    let events = rt.events_after(s.job_id, 0).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let states: Vec<(JobState, Option<u32>)> = events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::State { state, attempt, .. } => Some((*state, *attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(
        states[..2],
        [(JobState::Queued, None), (JobState::Running, Some(1))],
        "{states:?}"
    );
    assert_eq!(states.len(), 3, "{states:?}");
    assert_eq!(states[2].0, JobState::Succeeded, "{states:?}");

    // The slot busy: the next job is queued and claimed on its own.
    let blocker = rt
        .submit("job", json!({"hang": true}), Default::default())
        .await
        .expect("submit the blocker");
    let queued = rt
        .submit("job", json!({"result": 2}), Default::default())
        .await
        .expect("submit");
    assert_eq!(c.claimed_with_insert.load(Ordering::SeqCst), 2);
    assert_eq!(
        rt.get(queued.job_id).await.expect("get").state,
        JobState::Queued
    );
    rt.cancel(blocker.job_id).await.expect("cancel");
    assert_eq!(wait_ok(&rt, queued.job_id).await.result, Some(json!(2)));
    assert_eq!(c.claimed_alone.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_replayed_key_or_a_failed_insert_gives_its_slot_back() {
    let (rt, store, _dir) = start_counting(1).await;
    // The first insert fails: nothing is stored, the caller gets the error.
    let err = rt
        .submit("job", json!({"result": 0}), Default::default())
        .await;
    assert!(err.is_err(), "{err:?}");
    let keyed = JobOptions {
        idempotency_key: Some("k-1".into()),
        ..JobOptions::default()
    };
    let first = rt
        .submit("job", json!({"result": 1}), keyed.clone())
        .await
        .expect("submit");
    wait_ok(&rt, first.job_id).await;
    for _ in 0..3 {
        let again = rt
            .submit("job", json!({"result": 1}), keyed.clone())
            .await
            .expect("replay");
        assert!(again.existing);
        assert_eq!(again.job_id, first.job_id);
    }
    // With a concurrency of 1, a slot kept by any of those would leave
    // this job queued for ever.
    let last = rt
        .submit("job", json!({"result": 2}), Default::default())
        .await
        .expect("submit");
    assert_eq!(wait_ok(&rt, last.job_id).await.result, Some(json!(2)));
    // Stats are published after the dispatcher's turn that ended the job.
    let deadline = std::time::Instant::now() + SOON;
    while rt.stats().running != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a slot stayed taken: {:?}",
            rt.stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(store.overrides.fail_inserts.load(Ordering::SeqCst), 0);
}
