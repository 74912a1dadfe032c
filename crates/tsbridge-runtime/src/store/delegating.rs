//! Test support (`cfg(test)` or the `test-support` feature): a
//! [`JobStore`] that forwards every call to another store, except the calls
//! its [`Overrides`] change (a store that fails some calls, one that
//! announces what a test sends, ...).
//!
//! The list at the bottom of this file is the one place that names every
//! [`JobStore`] method: a method added to the trait is one line there, and
//! every test store built on [`DelegatingStore`] forwards it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use tsbridge_proto::{JobEvent, JobId};

use super::{
    AfterAttempt, AttemptEnd, EventsWritten, Finish, FirstStart, Inserted, JobPage, JobRecord,
    JobStore, ListFilter, NewJob,
};
use crate::errors::StoreError;

/// A [`JobStore`] that calls `inner`, through `overrides`.
#[derive(Debug)]
pub struct DelegatingStore<O = ()> {
    /// The store every call not overridden goes to.
    pub inner: Arc<dyn JobStore>,
    /// What the test changes (and any state it keeps).
    pub overrides: O,
}

impl<O: Overrides> DelegatingStore<O> {
    pub fn new(inner: Arc<dyn JobStore>, overrides: O) -> Self {
        Self { inner, overrides }
    }
}

/// No override: a plain forwarding store.
impl Overrides for () {}

/// Generates [`Overrides`] (one method per [`JobStore`] method, with the
/// inner store as its first argument, forwarding by default) and the
/// [`JobStore`] impl of [`DelegatingStore`] from one line per method.
macro_rules! delegate {
    (
        async { $( fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )* }
        sync { $( fn $sname:ident($($sarg:ident: $sty:ty),*) -> $sret:ty; )* }
    ) => {
        /// The calls a [`DelegatingStore`] changes: each method is given the
        /// inner store and forwards to it unless overridden.
        #[async_trait]
        pub trait Overrides: Send + Sync + std::fmt::Debug + 'static {
            $(
                async fn $name(&self, inner: &dyn JobStore, $($arg: $ty),*) -> $ret {
                    inner.$name($($arg),*).await
                }
            )*
            $(
                fn $sname(&self, inner: &dyn JobStore, $($sarg: $sty),*) -> $sret {
                    inner.$sname($($sarg),*)
                }
            )*
        }

        #[async_trait]
        impl<O: Overrides> JobStore for DelegatingStore<O> {
            $(
                async fn $name(&self, $($arg: $ty),*) -> $ret {
                    self.overrides.$name(self.inner.as_ref(), $($arg),*).await
                }
            )*
            $(
                fn $sname(&self, $($sarg: $sty),*) -> $sret {
                    self.overrides.$sname(self.inner.as_ref(), $($sarg),*)
                }
            )*
        }
    };
}

// Every `JobStore` method, one a line (`&self` left out).
delegate! {
    async {
        fn insert_job(job: &NewJob) -> Result<Inserted, StoreError>;
        fn find_by_idempotency_key(key: &str) -> Result<Option<JobRecord>, StoreError>;
        fn start_attempt(id: JobId, n: u32, node: &str, at: DateTime<Utc>, event: &JobEvent) -> Result<(), StoreError>;
        fn insert_and_start(job: &NewJob, start: &FirstStart) -> Result<(Inserted, bool), StoreError>;
        fn claim_next(node: &str, room: usize, workflows: &[String], live: &[JobId], at: DateTime<Utc>) -> Result<Vec<JobRecord>, StoreError>;
        fn set_attempt_pid(id: JobId, n: u32, pid: u32) -> Result<(), StoreError>;
        fn append_events(id: JobId, events: &[JobEvent]) -> Result<(), StoreError>;
        fn complete_attempt(id: JobId, end: &AttemptEnd, next: &AfterAttempt, event: &JobEvent) -> Result<(), StoreError>;
        fn complete_attempt_with_events(id: JobId, events: &[JobEvent], end: &AttemptEnd, next: &AfterAttempt, event: &JobEvent) -> Result<(), StoreError>;
        fn finish_job(id: JobId, finish: &Finish, event: &JobEvent) -> Result<(), StoreError>;
        fn get_job(id: JobId) -> Result<Option<JobRecord>, StoreError>;
        fn list_jobs(filter: &ListFilter) -> Result<JobPage, StoreError>;
        fn events_after(id: JobId, after: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError>;
        fn recover_interrupted(node: &str) -> Result<Vec<JobRecord>, StoreError>;
        fn queued_jobs() -> Result<Vec<JobRecord>, StoreError>;
        fn take_over_expired(node: &str) -> Result<Vec<JobRecord>, StoreError>;
        fn ping() -> Result<(), StoreError>;
        fn env_key_fingerprint() -> Result<Option<String>, StoreError>;
        fn claim_env_key_fingerprint(fingerprint: &str) -> Result<String, StoreError>;
        fn request_cancel(id: JobId) -> Result<bool, StoreError>;
    }
    sync {
        fn claims_with_insert() -> bool;
        fn claims_next() -> bool;
        fn takeover_every() -> Option<Duration>;
        fn queued_estimate() -> Option<u64>;
        fn watch_queued() -> Option<BoxStream<'static, ()>>;
        fn watch_cancels() -> Option<BoxStream<'static, JobId>>;
        fn watch_events() -> Option<BoxStream<'static, EventsWritten>>;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::store::SqliteStore;

    /// Counts the reads of jobs and refuses pings.
    #[derive(Debug, Default)]
    struct Counting {
        gets: AtomicU32,
    }

    #[async_trait]
    impl Overrides for Counting {
        async fn get_job(
            &self,
            inner: &dyn JobStore,
            id: JobId,
        ) -> Result<Option<JobRecord>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            inner.get_job(id).await
        }
        async fn ping(&self, _: &dyn JobStore) -> Result<(), StoreError> {
            Err(StoreError::WriterStopped { op: "ping" })
        }
    }

    #[tokio::test]
    async fn calls_are_forwarded_except_the_overridden_ones() {
        let inner: Arc<dyn JobStore> =
            Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        let store = DelegatingStore::new(inner.clone(), Counting::default());
        // Overridden: counted, then forwarded; refused.
        assert_eq!(store.get_job(JobId::new()).await.unwrap(), None);
        assert_eq!(store.overrides.gets.load(Ordering::SeqCst), 1);
        assert!(store.ping().await.is_err());
        assert!(inner.ping().await.is_ok());
        // Not overridden: forwarded.
        assert!(store.queued_jobs().await.unwrap().is_empty());
        assert_eq!(store.takeover_every(), None);
        // A plain forwarding store.
        assert!(DelegatingStore::new(inner, ()).ping().await.is_ok());
    }
}
