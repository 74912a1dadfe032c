//! `sqlite::memory:`: one shared-cache database, where a reader's table lock
//! makes a writer's statement fail with `SQLITE_LOCKED` (busy_timeout does
//! not apply). The writer waits for the lock (unlock_notify) instead of
//! failing: every write succeeds while readers read. (From a review: the
//! first rusqlite writer failed 1 000 writes of 1 000 here.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::join_all;
use tsbridge_runtime::store::{Inserted, JobStore, NewJob, SqliteStore};

use crate::store_contract;

fn new_job() -> NewJob {
    store_contract::new_job("wf", 0, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_writes_succeed_while_readers_read() {
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.expect("open"));
    for chunk in (0..2000).map(|_| new_job()).collect::<Vec<_>>().chunks(200) {
        for r in join_all(chunk.iter().map(|j| store.insert_job(j))).await {
            assert!(matches!(r, Ok(Inserted::Created)), "{r:?}");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let _ = store.queued_jobs().await;
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for _ in 0..20 {
        let jobs: Vec<NewJob> = (0..50).map(|_| new_job()).collect();
        for r in join_all(jobs.iter().map(|j| store.insert_job(j))).await {
            if !matches!(r, Ok(Inserted::Created)) {
                failures.push(format!("{r:?}"));
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        let _ = r.await;
    }
    assert!(
        failures.is_empty(),
        "{} writes failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(store.queued_jobs().await.expect("read").len(), 3000);
}
