//! The PostgreSQL store with several nodes (two `PgStore`s on one
//! database, as two servers would be): claims race and exactly one wins,
//! `claim_next` takes the best jobs a node may run, each for one node,
//! recovery touches only the recovering node's jobs and expired leases,
//! leases are renewed while a node lives, queued jobs are announced to the
//! other nodes, and a runtime runs jobs on it. Skipped (with a message)
//! without `TSBRIDGE_TEST_PG_URL`, failed under CI; see `pg_support`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tsbridge_proto::{EndReason, JobId, JobState};
use tsbridge_runtime::store::{AfterAttempt, JobStore, PgOptions, PgStore, QUEUED_CHANNEL};
use tsbridge_runtime::{Runtime, RuntimeOptions, StoreError};

use crate::common;
use crate::pg_support::PgDb;
use crate::store_contract::{attempt_end, finish, new_job, requeue, start, state, stored};

const SOON: Duration = common::SOON;

/// A database of its own for `test`, and a node on it for each lease (in
/// seconds). `None`: no server, the test is skipped (see `pg_support`).
async fn nodes<const N: usize>(test: &str, leases: [u64; N]) -> Option<(PgDb, [PgStore; N])> {
    let db = PgDb::create(test).await?;
    let mut stores = Vec::new();
    for lease in leases {
        stores.push(node(&db, Duration::from_secs(lease)).await);
    }
    let stores: [PgStore; N] = stores.try_into().expect("one store per lease");
    Some((db, stores))
}

async fn node(db: &PgDb, lease: Duration) -> PgStore {
    PgStore::open_with(
        &db.url,
        PgOptions {
            lease,
            ..PgOptions::default()
        },
    )
    .await
    .expect("open store")
}

async fn claim(store: &PgStore, id: JobId, node: &str) -> Result<(), StoreError> {
    start(store, id, 1, 2, node).await
}

/// The database's lease of a job (seconds since the epoch), if any.
async fn lease_of(db: &PgDb, id: JobId) -> Option<f64> {
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let v: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM lease_until)::float8 FROM jobs WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&pool)
    .await
    .expect("lease");
    pool.close().await;
    v
}

#[tokio::test]
async fn two_nodes_race_to_claim_each_job_and_exactly_one_wins() {
    let Some((_db, [a, b])) = nodes(
        "two_nodes_race_to_claim_each_job_and_exactly_one_wins",
        [30, 30],
    )
    .await
    else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..20 {
        let j = new_job("wf", 0, None);
        a.insert_job(&j).await.expect("insert");
        ids.push(j.id);
    }
    let mut wins = [0usize; 2];
    for &id in &ids {
        let (ra, rb) = tokio::join!(claim(&a, id, "node-a"), claim(&b, id, "node-b"));
        let winner = match (ra, rb) {
            (Ok(()), Err(StoreError::NotFound(x))) if x == id => "node-a",
            (Err(StoreError::NotFound(x)), Ok(())) if x == id => "node-b",
            other => panic!("exactly one claim must win, the other NotFound: {other:?}"),
        };
        wins[usize::from(winner == "node-b")] += 1;
        let r = stored(&b, id).await;
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.node.as_deref(), Some(winner));
        assert_eq!(r.attempts.len(), 1, "one attempt row");
        assert_eq!(
            a.events_after(id, 0, 10).await.expect("events").len(),
            2,
            "one running event"
        );
    }
    assert_eq!(wins[0] + wins[1], ids.len());
}

#[tokio::test]
async fn a_claim_from_an_out_of_date_copy_is_refused() {
    let Some((_db, [a, b])) = nodes("a_claim_from_an_out_of_date_copy_is_refused", [30, 30]).await
    else {
        return;
    };
    let j = new_job("wf", 0, None);
    a.insert_job(&j).await.expect("insert");
    // Node b read the queued job (attempts 0, last seq 1) ...
    let stale = stored(&b, j.id).await;
    // ... meanwhile a ran attempt 1 and re-queued it.
    claim(&a, j.id, "node-a").await.expect("claim");
    let end = attempt_end(1, EndReason::Signaled);
    requeue(&a, j.id, &end, 3, None).await.expect("requeue");
    // b's claim from its copy (attempt 1, event 2) is refused, not an error.
    let n = stale.attempts_started + 1;
    let seq = stale.last_seq + 1;
    assert!(matches!(
        start(&b, j.id, n, seq, "node-b").await,
        Err(StoreError::NotFound(_))
    ));
    // From a fresh copy it wins.
    let fresh = stored(&b, j.id).await;
    let n = fresh.attempts_started + 1;
    let seq = fresh.last_seq + 1;
    start(&b, j.id, n, seq, "node-b")
        .await
        .expect("claim from a fresh copy");
    assert_eq!(stored(&b, j.id).await.attempts.len(), 2);
}

#[tokio::test]
async fn a_node_that_lost_its_job_cannot_end_it() {
    let Some((_db, [a, b])) = nodes("a_node_that_lost_its_job_cannot_end_it", [30, 30]).await
    else {
        return;
    };
    let j = new_job("wf", 0, None);
    a.insert_job(&j).await.expect("insert");
    claim(&a, j.id, "node-a").await.expect("claim");
    // Node a's attempt 1 is ended for it (as a recovering node would) and
    // node b runs attempt 2.
    let end = |n: u32| attempt_end(n, EndReason::Interrupted);
    requeue(&b, j.id, &end(1), 3, Some(EndReason::Interrupted))
        .await
        .expect("requeue");
    start(&b, j.id, 2, 4, "node-b").await.expect("claim 2");
    // Node a comes back and ends its attempt 1: refused, nothing changes.
    let fin = finish(JobState::Succeeded, EndReason::Exited, Some(json!("stale")));
    assert!(matches!(
        a.complete_attempt(
            j.id,
            &end(1),
            &AfterAttempt::Finish(fin.clone()),
            &state(
                j.id,
                3,
                JobState::Succeeded,
                Some(EndReason::Exited),
                Some(1)
            ),
        )
        .await,
        Err(StoreError::NotFound(_))
    ));
    // Nor can a node finish it as if it were still queued (a cancel).
    assert!(matches!(
        a.finish_job(
            j.id,
            &fin,
            &state(
                j.id,
                2,
                JobState::Cancelled,
                Some(EndReason::Cancelled),
                None
            ),
        )
        .await,
        Err(StoreError::NotFound(_))
    ));
    let r = stored(&b, j.id).await;
    assert_eq!(r.state, JobState::Running);
    assert_eq!(r.node.as_deref(), Some("node-b"));
    assert_eq!(r.result, None);
    assert_eq!(r.last_seq, 4);
    assert_eq!(r.attempts[0].reason, Some(EndReason::Interrupted));
    assert!(r.attempts[1].finished_at.is_none());
}

#[tokio::test]
async fn recovery_of_one_node_leaves_the_other_nodes_running_job_alone() {
    let Some((db, [a, b])) = nodes(
        "recovery_of_one_node_leaves_the_other_nodes_running_job_alone",
        [30, 30],
    )
    .await
    else {
        return;
    };
    let ja = new_job("wf", 0, None);
    let jb = new_job("wf", 0, None);
    a.insert_job(&ja).await.expect("insert");
    a.insert_job(&jb).await.expect("insert");
    claim(&a, ja.id, "node-a").await.expect("a claims");
    claim(&b, jb.id, "node-b").await.expect("b claims");

    // Node b restarts: it takes back its own job, not a's (lease alive).
    let rec = b.recover_interrupted("node-b").await.expect("recover");
    assert_eq!(rec.iter().map(|j| j.id).collect::<Vec<_>>(), vec![jb.id]);
    let ra = stored(&a, ja.id).await;
    assert_eq!(ra.state, JobState::Running);
    assert_eq!(ra.node.as_deref(), Some("node-a"));
    // A third node with nothing of its own takes nothing.
    let c = node(&db, Duration::from_secs(30)).await;
    assert!(
        c.recover_interrupted("node-c")
            .await
            .expect("recover")
            .is_empty()
    );
    // b ends its recovered attempt (as the runtime does): re-queued.
    let end = attempt_end(1, EndReason::Interrupted);
    requeue(&b, jb.id, &end, 3, Some(EndReason::Interrupted))
        .await
        .expect("complete");
    let rb = stored(&a, jb.id).await;
    assert_eq!(rb.state, JobState::Queued);
    assert_eq!(rb.node, None);
    // a's own restart finds its job.
    let rec = a.recover_interrupted("node-a").await.expect("recover");
    assert_eq!(rec.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ja.id]);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_by_another_node() {
    let Some((db, [a, b])) = nodes("an_expired_lease_is_taken_over_by_another_node", [1, 30]).await
    else {
        return;
    };
    let j = new_job("wf", 0, None);
    a.insert_job(&j).await.expect("insert");
    claim(&a, j.id, "node-a").await.expect("claim");
    // Node a dies: nothing renews its lease any more.
    a.close().await;
    let deadline = tokio::time::Instant::now() + SOON;
    let rec = loop {
        let rec = b.recover_interrupted("node-b").await.expect("recover");
        if !rec.is_empty() {
            break rec;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rec.iter().map(|j| j.id).collect::<Vec<_>>(), vec![j.id]);
    let r = stored(&b, j.id).await;
    assert_eq!(
        r.node.as_deref(),
        Some("node-b"),
        "taken over under b's name"
    );
    // Taken: a second recovering node does not get it again.
    let c = node(&db, Duration::from_secs(30)).await;
    assert!(
        c.recover_interrupted("node-c")
            .await
            .expect("recover")
            .is_empty()
    );
}

#[tokio::test]
async fn a_live_node_renews_the_leases_of_its_running_jobs() {
    let Some((db, [a])) = nodes("a_live_node_renews_the_leases_of_its_running_jobs", [3]).await
    else {
        return;
    };
    let j = new_job("wf", 0, None);
    a.insert_job(&j).await.expect("insert");
    assert_eq!(lease_of(&db, j.id).await, None, "a queued job has no lease");
    claim(&a, j.id, "node-a").await.expect("claim");
    let first = lease_of(&db, j.id)
        .await
        .expect("a running job has a lease");
    // Nothing is written for the job, yet its lease moves on.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let now = lease_of(&db, j.id).await.expect("lease");
        if now > first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was never renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the job ends, it has no lease.
    let end = attempt_end(1, EndReason::Exited);
    let fin = finish(JobState::Succeeded, EndReason::Exited, None);
    a.complete_attempt(
        j.id,
        &end,
        &AfterAttempt::Finish(fin),
        &state(
            j.id,
            3,
            JobState::Succeeded,
            Some(EndReason::Exited),
            Some(1),
        ),
    )
    .await
    .expect("complete");
    assert_eq!(lease_of(&db, j.id).await, None);
}

#[tokio::test]
async fn inserts_and_requeues_are_announced_to_other_nodes() {
    let Some((_db, [a, b])) = nodes(
        "inserts_and_requeues_are_announced_to_other_nodes",
        [30, 30],
    )
    .await
    else {
        return;
    };
    let mut heard = Box::pin(b.queued_notifications().await.expect("listen"));
    let j = new_job("wf", 0, None);
    a.insert_job(&j).await.expect("insert");
    let next = tokio::time::timeout(SOON, heard.next())
        .await
        .expect("announced in time");
    assert_eq!(next, Some(j.id));
    // A re-queue is announced too; a finish is not.
    claim(&a, j.id, "node-a").await.expect("claim");
    let end = attempt_end(1, EndReason::Signaled);
    requeue(&a, j.id, &end, 3, None).await.expect("requeue");
    let next = tokio::time::timeout(SOON, heard.next())
        .await
        .expect("announced in time");
    assert_eq!(next, Some(j.id));
    assert_eq!(QUEUED_CHANNEL, "tsbridge_queued");
}

#[tokio::test]
async fn a_runtime_runs_jobs_on_the_postgres_store() {
    let Some((_db, [store])) = nodes("a_runtime_runs_jobs_on_the_postgres_store", [30]).await
    else {
        return;
    };
    let store = Arc::new(store);
    let config = common::config(&common::workflow("job", ""));
    let rt = Runtime::start(
        config,
        store.clone(),
        RuntimeOptions {
            node_id: Some("node-a".into()),
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("runtime starts");
    let sub = rt
        .submit("job", json!({"result": {"ok": 1}}), Default::default())
        .await
        .expect("submit");
    let view = tokio::time::timeout(SOON, rt.wait(sub.job_id))
        .await
        .expect("job ends in time")
        .expect("wait");
    assert_eq!(view.state, JobState::Succeeded, "{view:?}");
    assert_eq!(view.result, Some(json!({"ok": 1})));
    let rec = stored(store.as_ref(), sub.job_id).await;
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.node, None, "a finished job has no owner");
    let events = store
        .events_after(sub.job_id, 0, 100)
        .await
        .expect("events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=rec.last_seq).collect::<Vec<_>>()
    );
    rt.shutdown(Duration::ZERO).await;
}

/// A live node's periodic takeover (`take_over_expired`, which the runtime
/// calls and then ends the jobs as its start-up recovery does) takes only
/// expired leases, under its own name, each by one node.
#[tokio::test]
async fn live_nodes_take_over_only_expired_leases_each_once() {
    let Some((_db, [a, b, c])) = nodes(
        "live_nodes_take_over_only_expired_leases_each_once",
        [1, 30, 30],
    )
    .await
    else {
        return;
    };
    assert_eq!(b.takeover_every(), Some(PgOptions::default().poll));
    let (dead, alive) = (new_job("wf", 0, None), new_job("wf", 0, None));
    for j in [&dead, &alive] {
        a.insert_job(j).await.expect("insert");
    }
    claim(&a, dead.id, "node-a").await.expect("claim");
    claim(&b, alive.id, "node-b").await.expect("claim");
    // Node a dies: nothing renews its lease any more.
    a.close().await;
    let deadline = tokio::time::Instant::now() + SOON;
    let (mut by_b, mut by_c) = (Vec::new(), Vec::new());
    while by_b.is_empty() && by_c.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rb, rc) = tokio::join!(b.take_over_expired("node-b"), c.take_over_expired("node-c"));
        by_b = rb.expect("take over");
        by_c = rc.expect("take over");
    }
    let taken: Vec<JobId> = by_b.iter().chain(&by_c).map(|r| r.id).collect();
    assert_eq!(taken, vec![dead.id], "once, and only the expired one");
    let taker = if by_b.is_empty() { "node-c" } else { "node-b" };
    let r = stored(&b, dead.id).await;
    assert_eq!(r.node.as_deref(), Some(taker));
    assert_eq!(
        r.state,
        JobState::Running,
        "ending it is the runtime's part"
    );
    assert!(
        b.take_over_expired("node-b")
            .await
            .expect("again")
            .is_empty()
    );
    let r = stored(&b, alive.id).await;
    assert_eq!(r.node.as_deref(), Some("node-b"));
}

/// `claim_next`: the best jobs first (priority, then age), only of the
/// workflows named, none waiting out a retry delay nor held live by the
/// claiming node; each gets its attempt, its `running` event and a lease.
/// Two nodes claiming at once never get the same job.
/// A claim is recorded at the store's time, the clock its retry-delay test
/// reads, not at the `at` the node took before it had a connection: on a
/// loaded node that `at` could lie before the end of the delay, and the
/// second attempt was recorded as started before its backoff was over (a
/// flaky `multi_node_pg::a_retry_waits_out_its_backoff_on_every_node`).
#[tokio::test]
async fn a_claim_after_a_retry_delay_is_recorded_after_it() {
    let Some((_db, [a])) = nodes("a_claim_after_a_retry_delay_is_recorded_after_it", [30]).await
    else {
        return;
    };
    let wf = vec!["wf".to_owned()];
    let j = new_job("wf", 0, None);
    a.insert_job(&j).await.expect("insert");
    let got = a
        .claim_next("node-a", 1, &wf, &[], Utc::now())
        .await
        .expect("claim");
    assert_eq!(got.len(), 1);
    // A node's `at`, taken long before its claim reaches the store.
    let stale = Utc::now();
    let end = tsbridge_runtime::store::AttemptEnd {
        retry_in: Some(Duration::from_secs(1)),
        ..attempt_end(1, EndReason::Exited)
    };
    requeue(&a, j.id, &end, 3, Some(EndReason::Exited))
        .await
        .expect("requeue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let claimed = loop {
        let got = a
            .claim_next("node-a", 1, &wf, &[], stale)
            .await
            .expect("claim");
        if let Some(r) = got.into_iter().next() {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never claimed again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(claimed.attempts.len(), 2, "{claimed:?}");
    let started = claimed.attempts[1].started_at;
    assert!(
        started - end.finished_at >= chrono::Duration::seconds(1),
        "attempt 2 recorded as started {} after attempt 1 ended, inside its 1 s delay",
        started - end.finished_at
    );
    let events = a.events_after(j.id, 3, 10).await.expect("events");
    assert_eq!(
        events[0].timestamp, started,
        "the running event says the same"
    );
}

#[tokio::test]
async fn claim_next_takes_the_best_jobs_each_for_one_node() {
    let Some((_db, [a, b])) =
        nodes("claim_next_takes_the_best_jobs_each_for_one_node", [30, 30]).await
    else {
        return;
    };
    let wf = vec!["wf".to_owned()];
    let mut jobs = Vec::new();
    for (workflow, priority) in [("wf", 0), ("wf", 5), ("other", 9), ("wf", 5), ("wf", 0)] {
        let j = new_job(workflow, priority, None);
        a.insert_job(&j).await.expect("insert");
        jobs.push(j.id);
    }
    // A job held live by a (its old run): skipped by a, not by b.
    let at = Utc::now();
    let got = a
        .claim_next("node-a", 2, &wf, &[jobs[1]], at)
        .await
        .expect("claim");
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![jobs[3], jobs[0]]
    );
    for j in &got {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.node.as_deref(), Some("node-a"));
        assert_eq!((j.attempts_started, j.last_seq), (1, 2));
        assert_eq!(j.attempts.len(), 1, "{j:?}");
        let events = b.events_after(j.id, 0, 10).await.expect("events");
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            tsbridge_runtime::store::running_event(j.id, 2, 1, events[1].timestamp)
        );
    }
    // A retry waiting out its delay is not claimed until it is over.
    let end = tsbridge_runtime::store::AttemptEnd {
        retry_in: Some(Duration::from_secs(3600)),
        ..attempt_end(1, EndReason::Exited)
    };
    requeue(&a, jobs[3], &end, 3, Some(EndReason::Exited))
        .await
        .expect("requeue");
    // Both nodes at once: the two `wf` jobs left go one each or both to
    // one node, never to both.
    let (ra, rb) = tokio::join!(
        a.claim_next("node-a", 2, &wf, &[], Utc::now()),
        b.claim_next("node-b", 2, &wf, &[], Utc::now())
    );
    let mut ids: Vec<JobId> = ra
        .expect("claim a")
        .iter()
        .chain(rb.expect("claim b").iter())
        .map(|j| j.id)
        .collect();
    ids.sort();
    let mut left = vec![jobs[1], jobs[4]];
    left.sort();
    assert_eq!(ids, left);
    assert!(
        a.claim_next("node-a", 8, &wf, &[], Utc::now())
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(stored(&a, jobs[2]).await.state, JobState::Queued);
    assert_eq!(stored(&a, jobs[3]).await.state, JobState::Queued);
    a.close().await;
    b.close().await;
}
