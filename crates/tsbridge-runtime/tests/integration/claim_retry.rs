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
    AfterAttempt, AttemptEnd, DelegatingStore, FirstStart, Inserted, NewJob, Overrides,
};
use tsbridge_runtime::{JobStore, Runtime, RuntimeOptions, StoreError};

/// Of a SQLite store: its first `fail` claims and first `fail_ends` attempt
/// ends fail like a lost connection (writing nothing).
#[derive(Debug)]
struct FlakyClaims {
    fail: AtomicU32,
    fail_ends: AtomicU32,
}

#[async_trait]
impl Overrides for FlakyClaims {
    /// A job submitted while a slot is free is claimed with its insert:
    /// that claim fails the same way (the insert is written, the job stays
    /// queued).
    async fn insert_and_start(
        &self,
        inner: &dyn JobStore,
        job: &NewJob,
        start: &FirstStart,
    ) -> Result<(Inserted, bool), StoreError> {
        if take(&self.fail) {
            return Ok((inner.insert_job(job).await?, false));
        }
        inner.insert_and_start(job, start).await
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
        if take(&self.fail) {
            return Err(StoreError::Query {
                op: "start an attempt",
                source: sqlx::Error::PoolTimedOut,
            });
        }
        inner.start_attempt(id, n, node, at, event).await
    }
    async fn complete_attempt_with_events(
        &self,
        inner: &dyn JobStore,
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
        inner
            .complete_attempt_with_events(id, events, end, next, event)
            .await
    }
}

type Flaky = DelegatingStore<FlakyClaims>;

/// A runtime of one `job` workflow on a store whose first `claims` claims
/// and first `ends` attempt ends fail.
async fn start_flaky(claims: u32, ends: u32) -> (Runtime, Arc<Flaky>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DelegatingStore::new(
        open_store(dir.path()).await,
        FlakyClaims {
            fail: AtomicU32::new(claims),
            fail_ends: AtomicU32::new(ends),
        },
    ));
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
        store.overrides.fail.load(Ordering::SeqCst),
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
        store.overrides.fail_ends.load(Ordering::SeqCst),
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
