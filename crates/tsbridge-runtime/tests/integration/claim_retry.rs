//! A claim (`start_attempt`) the store fails (a transient error, a blip of a
//! database connection) does not lose the job: it is still queued in the
//! store, and the dispatcher tries it again after a pause; it runs, and a
//! waiter gets its end. (A claim the store *refuses*, another node's job, is
//! dropped instead: see the PostgreSQL tests.) Likewise an end the store
//! fails to write is written again: the job is not left `running` in the
//! store with its end published.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use common::*;
use serde_json::json;
use tsbridge_proto::{JobEvent, JobId, JobState};
use tsbridge_runtime::store::{
    AfterAttempt, AttemptEnd, Finish, Inserted, JobPage, JobRecord, ListFilter, NewJob,
};
use tsbridge_runtime::{JobStore, Runtime, RuntimeOptions, SqliteStore, StoreError};

/// SQLite, whose first `fail` claims and first `fail_ends` attempt ends
/// fail like a lost connection (writing nothing).
#[derive(Debug)]
struct FlakyClaims {
    inner: Arc<SqliteStore>,
    fail: AtomicU32,
    fail_ends: AtomicU32,
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl JobStore for FlakyClaims {
    async fn insert_job(&self, job: &NewJob) -> Result<Inserted, StoreError> {
        self.inner.insert_job(job).await
    }
    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        self.inner.find_by_idempotency_key(key).await
    }
    async fn start_attempt(
        &self,
        id: JobId,
        n: u32,
        node: &str,
        at: DateTime<Utc>,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        if take(&self.fail) {
            return Err(StoreError::Query {
                op: "start an attempt",
                source: sqlx::Error::PoolTimedOut,
            });
        }
        self.inner.start_attempt(id, n, node, at, event).await
    }
    async fn set_attempt_pid(&self, id: JobId, n: u32, pid: u32) -> Result<(), StoreError> {
        self.inner.set_attempt_pid(id, n, pid).await
    }
    async fn append_events(&self, id: JobId, events: &[JobEvent]) -> Result<(), StoreError> {
        self.inner.append_events(id, events).await
    }
    async fn complete_attempt(
        &self,
        id: JobId,
        end: &AttemptEnd,
        next: &AfterAttempt,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        self.inner.complete_attempt(id, end, next, event).await
    }
    async fn complete_attempt_with_events(
        &self,
        id: JobId,
        events: &[JobEvent],
        end: &AttemptEnd,
        next: &AfterAttempt,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        if take(&self.fail_ends) {
            return Err(StoreError::Query {
                op: "complete an attempt",
                source: sqlx::Error::PoolTimedOut,
            });
        }
        self.inner
            .complete_attempt_with_events(id, events, end, next, event)
            .await
    }
    async fn finish_job(
        &self,
        id: JobId,
        finish: &Finish,
        event: &JobEvent,
    ) -> Result<(), StoreError> {
        self.inner.finish_job(id, finish, event).await
    }
    async fn get_job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.inner.get_job(id).await
    }
    async fn list_jobs(&self, filter: &ListFilter) -> Result<JobPage, StoreError> {
        self.inner.list_jobs(filter).await
    }
    async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StoreError> {
        self.inner.events_after(id, after, limit).await
    }
    async fn recover_interrupted(&self, node: &str) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.recover_interrupted(node).await
    }
    async fn queued_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.queued_jobs().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn env_key_fingerprint(&self) -> Result<Option<String>, StoreError> {
        self.inner.env_key_fingerprint().await
    }
    async fn claim_env_key_fingerprint(&self, fp: &str) -> Result<String, StoreError> {
        self.inner.claim_env_key_fingerprint(fp).await
    }
}

/// A runtime of one `job` workflow on a store whose first `claims` claims
/// and first `ends` attempt ends fail.
async fn start_flaky(claims: u32, ends: u32) -> (Runtime, Arc<FlakyClaims>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FlakyClaims {
        inner: open_store(dir.path()).await,
        fail: AtomicU32::new(claims),
        fail_ends: AtomicU32::new(ends),
    });
    let rt = Runtime::start(
        config(&workflow("job", "")),
        store.clone(),
        RuntimeOptions::default(),
    )
    .await
    .expect("start");
    (rt, store, dir)
}

#[tokio::test]
async fn a_failed_claim_is_tried_again_and_the_job_runs() {
    let (rt, store, _dir) = start_flaky(2, 0).await;
    let s = rt
        .submit("job", json!({"result": 7}), Default::default())
        .await
        .expect("submit");
    let v = tokio::time::timeout(SOON, rt.wait(s.job_id))
        .await
        .expect("the job ends in time (it was not lost)")
        .expect("wait");
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.result, Some(json!(7)));
    assert_eq!(
        store.fail.load(Ordering::SeqCst),
        0,
        "both failures were hit"
    );
    assert_eq!(v.attempts.len(), 1, "failed claims are not attempts: {v:?}");
    // Its events are numbered without gaps: the failed claims wrote nothing.
    let seqs: Vec<u64> = rt
        .events_after(s.job_id, 0)
        .await
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_failed_end_is_written_again_before_anyone_sees_it() {
    let (rt, store, _dir) = start_flaky(0, 2).await;
    let s = rt
        .submit(
            "job",
            json!({"progress": 2, "result": 7}),
            Default::default(),
        )
        .await
        .expect("submit");
    let mut sub = rt.subscribe(s.job_id);
    let v = tokio::time::timeout(SOON, rt.wait(s.job_id))
        .await
        .expect("the job ends in time")
        .expect("wait");
    assert_eq!(
        store.fail_ends.load(Ordering::SeqCst),
        0,
        "both failures were hit"
    );
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    // The store holds the end (it is not left running), as wait said.
    assert_eq!(rt.get(s.job_id).await.expect("get"), v);
    // Every event is stored once, in order, the last ones included.
    let stored = rt.events_after(s.job_id, 0).await.expect("events");
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(
        stored
            .iter()
            .any(|e| matches!(e.data, tsbridge_proto::EventData::Result { .. }))
    );
    // The live subscriber saw the end once, after it was stored.
    let mut live = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(SOON, sub.recv()).await {
        live.push(e.seq);
    }
    assert_eq!(live.last(), seqs.last(), "the end reached the subscriber");
    let mut sorted = live.clone();
    sorted.dedup();
    assert_eq!(sorted, live, "no event published twice");
}
