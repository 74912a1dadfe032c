//! Several tsbridge nodes (runtimes) sharing one PostgreSQL store: a job
//! submitted on one node runs on another that has room, every job runs
//! exactly once however the nodes race for it, and lost claims are dropped
//! quietly. Skipped (with a message) without `TSBRIDGE_TEST_PG_URL`,
//! failed under CI; see `pg_support`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Value, json};
use tsbridge_proto::{EndReason, JobId, JobState};
use tsbridge_runtime::store::{
    AfterAttempt, DelegatingStore, JobRecord, JobStore, Overrides, PgOptions, PgStore,
    StoredRequest,
};
use tsbridge_runtime::{Executor, Runtime, RuntimeOptions, StoreError};

use crate::common::{self, SOON};
use crate::pg_support::PgDb;
use crate::store_contract::{attempt_end, start, state, stored};

struct Node {
    name: &'static str,
    rt: Runtime,
    store: Arc<PgStore>,
}

/// How often the tests' nodes poll for jobs queued elsewhere.
const POLL: Duration = Duration::from_millis(500);

/// The config of a node running `job` workflows: the `[defaults]` lines
/// `defaults`, then the workflow with `extra`.
fn job_config(defaults: &str, extra: &str) -> String {
    format!("[defaults]\n{defaults}\n{}", common::workflow("job", extra))
}

/// A workflow's retry policy: two attempts, `backoff` apart.
fn retry_twice(backoff: &str) -> String {
    format!("retry = {{ attempts = 2, backoff = \"{backoff}\", multiplier = 1.0, jitter = 0.0 }}")
}

async fn node(db: &PgDb, name: &'static str, toml: &str) -> Node {
    node_with(
        db,
        name,
        toml,
        PgOptions {
            poll: POLL,
            ..PgOptions::default()
        },
    )
    .await
}

async fn node_with(db: &PgDb, name: &'static str, toml: &str, opts: PgOptions) -> Node {
    node_opts(db, name, toml, opts, RuntimeOptions::default()).await
}

/// A node with these store and runtime options (its name set).
async fn node_opts(
    db: &PgDb,
    name: &'static str,
    toml: &str,
    opts: PgOptions,
    rt_opts: RuntimeOptions,
) -> Node {
    let store = Arc::new(PgStore::open_with(&db.url, opts).await.expect("open store"));
    let rt = Runtime::start(
        common::config(toml),
        store.clone(),
        RuntimeOptions {
            node_id: Some(name.to_owned()),
            ..rt_opts
        },
    )
    .await
    .expect("runtime starts");
    Node { name, rt, store }
}

/// `node-a` and `node-b`, on one config.
async fn two_nodes(db: &PgDb, toml: &str) -> (Node, Node) {
    (
        node(db, "node-a", toml).await,
        node(db, "node-b", toml).await,
    )
}

/// Of `a` and `b`: the node named `owner`, then the other one.
fn owner_first<'n>(a: &'n Node, b: &'n Node, owner: Option<&str>) -> (&'n Node, &'n Node) {
    match owner {
        Some(o) if o == a.name => (a, b),
        Some(o) if o == b.name => (b, a),
        other => panic!("no owner: {other:?}"),
    }
}

impl Node {
    /// The job as stored.
    async fn job(&self, id: JobId) -> JobRecord {
        self.store.get_job(id).await.expect("get").expect("job")
    }
}

async fn shutdown(nodes: &[&Node]) {
    for n in nodes {
        n.rt.shutdown(Duration::ZERO).await;
    }
}

/// Asserts that `r` succeeded on its second attempt, which started at least
/// `min_ms` after the first ended (waiting out `backoff`).
async fn assert_retried_after(db: &PgDb, r: &JobRecord, min_ms: i64, backoff: &str) {
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    assert_eq!(r.attempts.len(), 2, "{r:?}");
    let first_end = r.attempts[0].finished_at.expect("attempt 1 ended");
    let gap = r.attempts[1].started_at - first_end;
    assert!(
        gap >= chrono::Duration::milliseconds(min_ms),
        "attempt 2 started {gap} after attempt 1 ended, before {backoff} (nodes {:?})",
        attempt_nodes(db, r.id).await
    );
}

async fn submit(n: &Node, params: Value) -> JobId {
    n.rt.submit("job", params, Default::default())
        .await
        .expect("submit")
        .job_id
}

/// Waits (reading the store: the job may run on any node) until `id` ends.
async fn ended(store: &PgStore, id: JobId) -> JobRecord {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let r = stored(store, id).await;
        if r.state.is_terminal() {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never ended ({:?})",
            r.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node each attempt of `id` ran on.
async fn attempt_nodes(db: &PgDb, id: JobId) -> Vec<String> {
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let nodes: Vec<String> =
        sqlx::query_scalar("SELECT node FROM attempts WHERE job_id = $1 ORDER BY n")
            .bind(id.to_string())
            .fetch_all(&pool)
            .await
            .expect("attempts");
    pool.close().await;
    nodes
}

#[tokio::test]
async fn a_job_submitted_on_a_busy_node_runs_on_another() {
    let Some(db) = PgDb::create("a_job_submitted_on_a_busy_node_runs_on_another").await else {
        return;
    };
    let (a, b) = two_nodes(&db, &job_config("concurrency = 1", "")).await;
    // A job that never ends keeps one node busy (concurrency 1); which
    // node runs it is a race.
    let hang = submit(&b, json!({"hang": true})).await;
    wait_running(&b.store, hang).await;
    let (busy, idle) = owner_first(&a, &b, b.job(hang).await.node.as_deref());
    // A job submitted on the busy node runs on the idle one.
    let job = submit(busy, json!({"result": "elsewhere"})).await;
    let r = ended(&idle.store, job).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    assert_eq!(r.result, Some(json!("elsewhere")));
    assert_eq!(attempt_nodes(&db, job).await, vec![idle.name.to_owned()]);
    busy.rt.cancel(hang).await.expect("cancel");
    shutdown(&[&a, &b]).await;
}

async fn wait_running(store: &PgStore, id: JobId) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let r = stored(store, id).await;
        if r.state == JobState::Running {
            return;
        }
        assert!(!r.state.is_terminal(), "ended early: {r:?}");
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn racing_nodes_run_every_job_exactly_once() {
    let Some(db) = PgDb::create("racing_nodes_run_every_job_exactly_once").await else {
        return;
    };
    let (a, b) = two_nodes(&db, &job_config("concurrency = 2", "")).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let on = if i % 3 == 0 { &b } else { &a };
        ids.push(submit(on, json!({"result": i})).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let r = ended(&a.store, *id).await;
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
        assert_eq!(r.result, Some(json!(i)));
        assert_eq!(r.attempts.len(), 1, "ran once: {r:?}");
        let events = a.store.events_after(*id, 0, 100).await.expect("events");
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=r.last_seq).collect::<Vec<_>>(),
            "one writer numbered the events"
        );
    }
    shutdown(&[&a, &b]).await;
}

#[tokio::test]
async fn a_retry_waits_out_its_backoff_on_every_node() {
    let Some(db) = PgDb::create("a_retry_waits_out_its_backoff_on_every_node").await else {
        return;
    };
    let (a, b) = two_nodes(&db, &job_config("concurrency = 2", &retry_twice("2s"))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("counter").display().to_string();
    // The first attempt kills itself (retried); the second succeeds. The
    // idle node hears of the re-queue at once, yet must not start early.
    let id = submit(
        &a,
        json!({"failTimes": 1, "counter": counter, "result": "second"}),
    )
    .await;
    let r = ended(&a.store, id).await;
    assert_retried_after(&db, &r, 2000, "the 2 s backoff").await;
    shutdown(&[&a, &b]).await;
}

#[tokio::test]
async fn a_dead_nodes_jobs_are_taken_over_by_a_live_node() {
    let Some(db) = PgDb::create("a_dead_nodes_jobs_are_taken_over_by_a_live_node").await else {
        return;
    };
    // A node claims two jobs, then dies (nothing renews their leases).
    let dead = PgStore::open(&db.url).await.expect("open store");
    let retried = crate::store_contract::new_job("job", 0, None);
    let mut last = crate::store_contract::new_job("job", 0, None);
    last.max_attempts = 1;
    for j in [&retried, &last] {
        dead.insert_job(j).await.expect("insert");
        dead.start_attempt(
            j.id,
            1,
            "dead-node",
            chrono::Utc::now(),
            &crate::store_contract::state(j.id, 2, JobState::Running, None, Some(1)),
        )
        .await
        .expect("claim");
    }
    dead.close().await;
    // A live node starts while the leases hold: its start-up recovery
    // leaves them alone.
    let live = node(&db, "node-b", &job_config("concurrency = 2", "")).await;
    for j in [&retried, &last] {
        assert_eq!(live.job(j.id).await.state, JobState::Running);
    }
    // The leases expire (as 30 s without renewal would make them).
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("expire");
    pool.close().await;
    // The live node's watch takes them over.
    let r = ended(&live.store, retried.id).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    assert_eq!(
        r.attempts.iter().map(|a| a.reason).collect::<Vec<_>>(),
        vec![
            Some(tsbridge_proto::EndReason::Interrupted),
            Some(tsbridge_proto::EndReason::Exited)
        ]
    );
    assert_eq!(
        attempt_nodes(&db, retried.id).await,
        vec!["dead-node".to_owned(), "node-b".to_owned()]
    );
    let r = ended(&live.store, last.id).await;
    assert_eq!(r.state, JobState::Failed, "{r:?}");
    assert_eq!(r.reason, Some(tsbridge_proto::EndReason::Interrupted));
    assert_eq!(
        r.error.as_ref().map(|e| e.kind),
        Some(tsbridge_proto::ErrorType::InternalError)
    );
    assert_eq!(r.attempts.len(), 1);
    // Event numbering continued from the dead node's.
    let events = live
        .store
        .events_after(last.id, 0, 100)
        .await
        .expect("events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    live.rt.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_job_running_on_one_node_is_cancelled_from_another() {
    let Some(db) = PgDb::create("a_job_running_on_one_node_is_cancelled_from_another").await else {
        return;
    };
    let toml = job_config("concurrency = 2\nkill_grace = \"500ms\"", "");
    let (a, b) = two_nodes(&db, &toml).await;
    let id = submit(&a, json!({"hang": true})).await;
    wait_running(&a.store, id).await;
    let owner = a.job(id).await.node;
    let (_, other) = owner_first(&a, &b, owner.as_deref());
    // The other node may hold the job as waiting (its own claim not yet
    // tried): either way the cancel reaches the owner.
    let view = other.rt.cancel(id).await.expect("cancelled");
    assert_eq!(view.state, JobState::Cancelled, "{view:?}");
    let r = ended(&a.store, id).await;
    assert_eq!(r.state, JobState::Cancelled);
    assert_eq!(r.reason, Some(tsbridge_proto::EndReason::Cancelled));
    assert_eq!(attempt_nodes(&db, id).await, vec![owner.expect("owner")]);
    // A finished job: Conflict, from any node.
    assert!(matches!(
        other.rt.cancel(id).await,
        Err(tsbridge_runtime::RuntimeError::AlreadyFinished { .. })
    ));
    shutdown(&[&a, &b]).await;
}

#[tokio::test]
async fn a_cancel_on_a_node_holding_a_waiting_copy_reaches_the_owner() {
    let Some(db) =
        PgDb::create("a_cancel_on_a_node_holding_a_waiting_copy_reaches_the_owner").await
    else {
        return;
    };
    let toml = job_config("concurrency = 1\nkill_grace = \"500ms\"", "");
    let (a, b) = two_nodes(&db, &toml).await;
    // Each node runs one job that never ends; the node that got the first
    // also holds the second as waiting (no room to claim it).
    let first = submit(&a, json!({"hang": true, "tag": "first"})).await;
    wait_running(&a.store, first).await;
    let second = submit(&a, json!({"hang": true, "tag": "second"})).await;
    wait_running(&a.store, second).await;
    let (holder, _) = owner_first(&a, &b, a.job(first).await.node.as_deref());
    // Give the busy node time to hear of the second job (a poll): then it
    // holds a waiting copy. (Without one, the cancel goes to the owner
    // directly; both must work.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let view = holder.rt.cancel(second).await.expect("cancelled at once");
    assert_eq!(view.state, JobState::Cancelled, "{view:?}");
    let r = ended(&a.store, second).await;
    assert_eq!(r.state, JobState::Cancelled);
    assert_eq!(r.attempts.len(), 1, "it ran once, on its owner");
    // The holder forgot its copy: the first job still runs there, and the
    // owner is free again.
    let r = a.job(first).await;
    assert_eq!(r.state, JobState::Running);
    holder.rt.cancel(first).await.expect("cancel");
    shutdown(&[&a, &b]).await;
}

/// A node that finds its lease gone (another node took the job over while
/// this one was cut off or too slow to renew) stops its own run of the job
/// at the next renewal, so the job does not go on running on two nodes; its
/// end is refused (the other node owns the job now).
#[tokio::test]
async fn a_node_that_lost_a_lease_stops_its_run() {
    let Some(db) = PgDb::create("a_node_that_lost_a_lease_stops_its_run").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("runs.log");
    let Node { rt, store, .. } = node_with(
        &db,
        "node-a",
        &job_config("kill_grace = \"500ms\"", ""),
        PgOptions {
            poll: POLL,
            lease: Duration::from_millis(900),
            ..PgOptions::default()
        },
    )
    .await;
    let id = rt
        .submit(
            "job",
            json!({"hang": true, "log": log.display().to_string(), "tag": "a"}),
            Default::default(),
        )
        .await
        .expect("submit")
        .job_id;
    let pid: i32 = loop {
        if let Some(line) = std::fs::read_to_string(&log)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        {
            break line.rsplit(' ').next().unwrap().parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Node b takes the job over, as its recovery does once a lease lapsed:
    // attempt 1 ends interrupted, b claims attempt 2.
    let b = PgStore::open(&db.url).await.expect("open store b");
    let seq = stored(&b, id).await.last_seq;
    let end = attempt_end(1, EndReason::Interrupted);
    b.complete_attempt(
        id,
        &end,
        &AfterAttempt::Requeue,
        &state(
            id,
            seq + 1,
            JobState::Queued,
            Some(EndReason::Interrupted),
            Some(1),
        ),
    )
    .await
    .expect("b ends attempt 1");
    start(&b, id, 2, seq + 2, "node-b")
        .await
        .expect("b claims attempt 2");
    let deadline = tokio::time::Instant::now() + SOON;
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-a's run (pid {pid}) went on after losing the job"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The job is node-b's: node-a's end was refused.
    let r = stored(store.as_ref(), id).await;
    assert_eq!(r.state, JobState::Running, "{r:?}");
    assert_eq!(r.node.as_deref(), Some("node-b"));
    assert_eq!(r.attempts_started, 2);
    rt.shutdown(Duration::ZERO).await;
    b.close().await;
}

/// A subscriber on one node of a job running on another follows it live:
/// the runner's commits are announced, the subscriber's node reads and
/// publishes them, in order, each once, up to the terminal event; `wait`
/// on that node resolves at the end.
#[tokio::test]
async fn a_subscriber_on_another_node_follows_a_job_live() {
    let Some(db) = PgDb::create("a_subscriber_on_another_node_follows_a_job_live").await else {
        return;
    };
    let toml = job_config("concurrency = 2", "");
    let a = node(&db, "node-a", &toml).await;
    // Long enough to be followed while it runs (40 steps, 250 ms apart).
    let id = submit(&a, json!({"progress": 40, "stepMs": 250, "result": "done"})).await;
    wait_running(&a.store, id).await;
    // Node b starts once the job runs on a: it never runs it.
    let b = node(&db, "node-b", &toml).await;
    let waiter = tokio::spawn({
        let rt = b.rt.clone();
        async move { rt.wait(id).await }
    });
    // Subscribe, then read the store, then skip what was read.
    let mut live = b.rt.subscribe(id);
    let stored = b.rt.events_after(id, 0).await.expect("events");
    let mut last = stored.last().map_or(0, |e| e.seq);
    assert!(
        !stored.iter().any(|e| e.data.is_terminal_state()),
        "the job ended before it could be followed; make it longer"
    );
    let mut live_seqs = Vec::new();
    let mut live_progress = 0;
    let mut terminal = None;
    while let Some(e) = tokio::time::timeout(SOON, live.recv())
        .await
        .expect("live events keep coming")
    {
        if e.seq <= last {
            continue;
        }
        assert_eq!(
            e.seq,
            last + 1,
            "in order, no gap: {live_seqs:?} then {}",
            e.seq
        );
        last = e.seq;
        live_seqs.push(e.seq);
        if matches!(e.data, tsbridge_proto::EventData::Progress(_)) {
            live_progress += 1;
        }
        if e.data.is_terminal_state() {
            terminal = Some(e);
        }
    }
    assert!(!live.lagged());
    assert!(live_progress > 0, "no progress came live: {live_seqs:?}");
    let terminal = terminal.expect("the terminal event came live");
    assert!(
        matches!(
            terminal.data,
            tsbridge_proto::EventData::State {
                state: JobState::Succeeded,
                ..
            }
        ),
        "{terminal:?}"
    );
    // Everything stored was seen, once.
    let all = a.store.events_after(id, 0, 1000).await.expect("events");
    assert_eq!(all.last().map(|e| e.seq), Some(last));
    let view = tokio::time::timeout(SOON, waiter)
        .await
        .expect("wait on node b ends")
        .expect("task")
        .expect("wait");
    assert_eq!(view.state, JobState::Succeeded);
    assert_eq!(attempt_nodes(&db, id).await, vec!["node-a".to_owned()]);
    shutdown(&[&a, &b]).await;
}

/// A job that one node claims and starts, followed on another: its
/// `running` event comes to the follower live, through the announcement
/// of the start (`write_starts`' NOTIFY), not through a resync (the
/// follower's comes once an hour here). Without that announcement the
/// follower's relay began after the job's next announced event, and
/// `running` never came live (a resync every 2 s used to hide it).
#[tokio::test]
async fn the_start_of_a_job_claimed_on_one_node_comes_live_to_another() {
    let Some(db) =
        PgDb::create("the_start_of_a_job_claimed_on_one_node_comes_live_to_another").await
    else {
        return;
    };
    // Node b runs no `job` workflow: the job waits for node a.
    let b = node_opts(
        &db,
        "node-b",
        &format!(
            "[defaults]\nconcurrency = 2\n{}",
            common::workflow("other", "")
        ),
        PgOptions {
            poll: POLL,
            ..PgOptions::default()
        },
        RuntimeOptions {
            relay_resync: Some(Duration::from_secs(3600)),
            ..RuntimeOptions::default()
        },
    )
    .await;
    let mut job = crate::store_contract::new_job("job", 0, None);
    job.params = json!({"result": "done"});
    job.request = StoredRequest::default();
    b.store.insert_job(&job).await.expect("insert");
    let mut live = b.rt.subscribe(job.id);
    // Node a starts with the job queued: it claims and starts it.
    let a = node(&db, "node-a", &job_config("concurrency = 2", "")).await;
    let mut seen = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), live.recv())
        .await
        .expect("live events keep coming")
    {
        seen.push((e.seq, e.data));
    }
    assert!(!live.lagged());
    let r = ended(&a.store, job.id).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    assert_eq!(attempt_nodes(&db, job.id).await, vec!["node-a".to_owned()]);
    assert!(
        matches!(
            seen.first(),
            Some((
                2,
                tsbridge_proto::EventData::State {
                    state: JobState::Running,
                    ..
                }
            ))
        ),
        "the start did not come live to node b: {seen:?}"
    );
    assert!(
        seen.last().is_some_and(|(_, d)| d.is_terminal_state()),
        "{seen:?}"
    );
    shutdown(&[&a, &b]).await;
}

/// The retry delay is stored with the re-queue: a node whose own config
/// says "retry at once" still waits out the backoff of the node that ran
/// (and re-queued) the job.
#[tokio::test]
async fn a_stored_retry_delay_holds_on_a_node_with_another_backoff() {
    let Some(db) = PgDb::create("a_stored_retry_delay_holds_on_a_node_with_another_backoff").await
    else {
        return;
    };
    let slow = job_config("concurrency = 2", &retry_twice("3s"));
    let eager = job_config("concurrency = 2", &retry_twice("10ms"));
    let a = node(&db, "node-a", &slow).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("counter").display().to_string();
    // Attempt 1 runs on a (b starts after a claimed it), kills itself a
    // moment later and is re-queued with a's 3 s backoff.
    let id = submit(
        &a,
        json!({"sleepMs": 1000, "failTimes": 1, "counter": counter, "result": "second"}),
    )
    .await;
    wait_running(&a.store, id).await;
    let b = node(&db, "node-b", &eager).await;
    let r = ended(&a.store, id).await;
    // The stored delay counts from the re-queue's commit (after the
    // attempt's end): allow the difference between the two clocks' reads.
    assert_retried_after(&db, &r, 2900, "the stored 3 s backoff").await;
    shutdown(&[&a, &b]).await;
}

/// Waits until `store`'s count of queued jobs (cached, refreshed as it is
/// asked) is `n`.
async fn queued_count_is(store: &PgStore, n: u64) {
    let deadline = tokio::time::Instant::now() + SOON;
    while store.queued_estimate() != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued count stayed {:?}, not {n}",
            store.queued_estimate()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `queue_limit` counts the jobs queued in the shared store (all nodes'),
/// not a node's own queue: a busy node holding copies of jobs that other
/// nodes already run accepts work while the cluster's queue has room, and
/// any node refuses it once the cluster's queue is full.
#[tokio::test]
async fn the_queue_limit_counts_the_whole_cluster() {
    let Some(db) = PgDb::create("the_queue_limit_counts_the_whole_cluster").await else {
        return;
    };
    let b = node(
        &db,
        "node-b",
        &job_config("concurrency = 1\nqueue_limit = 2", ""),
    )
    .await;
    // b is busy (its only slot runs a job that never ends) ...
    let busy = submit(&b, json!({"hang": true, "tag": "b"})).await;
    wait_running(&b.store, busy).await;
    // ... while a, started now, runs three jobs: b hears of each and keeps
    // a waiting copy (it has no room to try its claim).
    let a = node(
        &db,
        "node-a",
        &job_config("concurrency = 3\nqueue_limit = 2", ""),
    )
    .await;
    let mut hanging = vec![busy];
    for i in 0..3 {
        let id = submit(&a, json!({"hang": true, "tag": i})).await;
        wait_running(&a.store, id).await;
        hanging.push(id);
    }
    // Nothing is queued in the cluster: b accepts a job (it stays queued:
    // no node has room).
    queued_count_is(&b.store, 0).await;
    let queued = submit(&b, json!({"result": 1})).await;
    queued_count_is(&a.store, 1).await;
    let another = submit(&a, json!({"result": 2})).await;
    // Two queued: full, on every node.
    for n in [&a, &b] {
        queued_count_is(&n.store, 2).await;
        match n.rt.submit("job", json!({}), Default::default()).await {
            Err(tsbridge_runtime::RuntimeError::QueueFull { limit: 2, .. }) => {}
            other => panic!("the cluster's queue is full: {other:?}"),
        }
    }
    for id in [queued, another] {
        assert_eq!(a.job(id).await.state, JobState::Queued);
    }
    shutdown(&[&a, &b]).await;
}

/// What a node asked its store to claim: `start_attempt` calls (a claim of
/// a job it holds a copy of) and those refused (another node had it);
/// `claim_next` calls, those that found nothing, and the jobs they claimed.
#[derive(Debug, Default)]
struct ClaimCounts {
    tried: AtomicU64,
    refused: AtomicU64,
    asked: AtomicU64,
    empty: AtomicU64,
    claimed: AtomicU64,
}

/// The overrides of a counting node's store.
#[derive(Debug)]
struct Counted(Arc<ClaimCounts>);

#[async_trait]
impl Overrides for Counted {
    async fn start_attempt(
        &self,
        inner: &dyn JobStore,
        id: JobId,
        n: u32,
        node: &str,
        at: chrono::DateTime<Utc>,
        event: &tsbridge_proto::JobEvent,
    ) -> Result<(), StoreError> {
        self.0.tried.fetch_add(1, Ordering::SeqCst);
        let r = inner.start_attempt(id, n, node, at, event).await;
        if let Err(StoreError::NotFound(_)) = &r {
            self.0.refused.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    async fn claim_next(
        &self,
        inner: &dyn JobStore,
        node: &str,
        room: usize,
        workflows: &[String],
        live: &[JobId],
        at: chrono::DateTime<Utc>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.0.asked.fetch_add(1, Ordering::SeqCst);
        let r = inner.claim_next(node, room, workflows, live, at).await;
        match &r {
            Ok(jobs) if jobs.is_empty() => {
                self.0.empty.fetch_add(1, Ordering::SeqCst);
            }
            Ok(jobs) => {
                self.0
                    .claimed
                    .fetch_add(jobs.len() as u64, Ordering::SeqCst);
            }
            Err(_) => {}
        }
        r
    }
}

/// A node whose runtime's store counts its claims; `executors` replace
/// the spawn executor for their workflows.
async fn counted_node(
    db: &PgDb,
    name: &'static str,
    toml: &str,
    executors: BTreeMap<String, Arc<dyn Executor>>,
) -> (Node, Arc<ClaimCounts>) {
    let store = Arc::new(
        PgStore::open_with(
            &db.url,
            PgOptions {
                poll: POLL,
                ..PgOptions::default()
            },
        )
        .await
        .expect("open store"),
    );
    let counts = Arc::new(ClaimCounts::default());
    let counted = Arc::new(DelegatingStore::new(store.clone(), Counted(counts.clone())));
    let rt = Runtime::start(
        common::config(toml),
        counted,
        RuntimeOptions {
            node_id: Some(name.to_owned()),
            executors,
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("runtime starts");
    (Node { name, rt, store }, counts)
}

/// Many short jobs submitted on one of three nodes: each runs exactly once,
/// and no node asked the store for a job another node had taken (each asks
/// for the best job it can run, not for a copy of its own).
#[tokio::test]
async fn three_nodes_run_every_job_once_without_refused_claims() {
    let Some(db) = PgDb::create("three_nodes_run_every_job_once_without_refused_claims").await
    else {
        return;
    };
    let toml = job_config("concurrency = 2", "");
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(counted_node(&db, name, &toml, BTreeMap::new()).await);
    }
    let a = &nodes[0].0;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(submit(a, json!({ "result": i })).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let r = ended(&a.store, *id).await;
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
        assert_eq!(r.result, Some(json!(i)));
        assert_eq!(r.attempts.len(), 1, "ran once: {r:?}");
    }
    let mut claimed = 0;
    for (n, counts) in &nodes {
        assert_eq!(
            counts.refused.load(Ordering::SeqCst),
            0,
            "{} tried {} claims of jobs another node had",
            n.name,
            counts.tried.load(Ordering::SeqCst)
        );
        claimed += counts.claimed.load(Ordering::SeqCst);
    }
    assert_eq!(claimed, ids.len() as u64, "each job claimed once");
    shutdown(&nodes.iter().map(|(n, _)| n).collect::<Vec<_>>()).await;
}

/// With every node full, a high-priority job submitted later on one node
/// starts before older low-priority jobs submitted on another, whichever
/// node's slot frees first: the order is the store's, across nodes.
#[tokio::test]
async fn priority_holds_across_nodes() {
    let Some(db) = PgDb::create("priority_holds_across_nodes").await else {
        return;
    };
    let (a, b) = two_nodes(
        &db,
        &job_config("concurrency = 1\nkill_grace = \"500ms\"", ""),
    )
    .await;
    let busy_a = submit(&a, json!({"hang": true, "tag": "a"})).await;
    let busy_b = submit(&b, json!({"hang": true, "tag": "b"})).await;
    wait_running(&a.store, busy_a).await;
    wait_running(&a.store, busy_b).await;
    let mut low = Vec::new();
    for i in 0..2 {
        low.push(submit(&b, json!({"hang": true, "tag": format!("low{i}")})).await);
    }
    let high =
        a.rt.submit(
            "job",
            json!({"hang": true, "tag": "high"}),
            tsbridge_proto::api::JobOptions {
                priority: Some(10),
                ..Default::default()
            },
        )
        .await
        .expect("submit")
        .job_id;
    // A slot frees on b (which submitted the low ones).
    let on_b = if a.job(busy_a).await.node.as_deref() == Some("node-b") {
        busy_a
    } else {
        busy_b
    };
    b.rt.cancel(on_b).await.expect("cancel");
    wait_running(&a.store, high).await;
    for id in &low {
        assert_eq!(a.job(*id).await.state, JobState::Queued, "low {id}");
    }
    for id in [busy_a, busy_b, high].into_iter().chain(low) {
        let _ = a.rt.cancel(id).await;
    }
    shutdown(&[&a, &b]).await;
}

/// A queued job (no node holds it: the store keeps the queue) is cancelled
/// from a node other than the one it was submitted on, and never runs.
#[tokio::test]
async fn a_queued_job_is_cancelled_from_any_node() {
    let Some(db) = PgDb::create("a_queued_job_is_cancelled_from_any_node").await else {
        return;
    };
    let (a, b) = two_nodes(
        &db,
        &job_config("concurrency = 1\nkill_grace = \"500ms\"", ""),
    )
    .await;
    // Both nodes are full: the job stays queued.
    let busy = [
        submit(&a, json!({"hang": true, "tag": "a"})).await,
        submit(&b, json!({"hang": true, "tag": "b"})).await,
    ];
    for id in busy {
        wait_running(&a.store, id).await;
    }
    let queued = submit(&a, json!({"result": 1})).await;
    let view = b.rt.cancel(queued).await.expect("cancelled");
    assert_eq!(view.state, JobState::Cancelled, "{view:?}");
    let r = a.job(queued).await;
    assert_eq!(r.state, JobState::Cancelled);
    assert!(r.attempts.is_empty(), "it never ran: {r:?}");
    let events = a.store.events_after(queued, 0, 10).await.expect("events");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(matches!(
        a.rt.cancel(queued).await,
        Err(tsbridge_runtime::RuntimeError::AlreadyFinished { .. })
    ));
    for id in busy {
        a.rt.cancel(id).await.expect("cancel");
    }
    shutdown(&[&a, &b]).await;
}

/// A node where a workflow is unavailable (limits without a sandbox) never
/// takes that workflow's jobs, however long they wait; a node where it is
/// available runs them once it has room.
#[tokio::test]
async fn a_node_never_claims_a_workflow_unavailable_there() {
    let Some(db) = PgDb::create("a_node_never_claims_a_workflow_unavailable_there").await else {
        return;
    };
    let defaults = "[defaults]\nconcurrency = 1\nkill_grace = \"500ms\"\n";
    let without = format!(
        "{defaults}{}{}",
        common::workflow("job", ""),
        common::workflow("w", "limits = { memory = \"64MiB\" }")
    );
    let with = format!(
        "{defaults}{}{}",
        common::workflow("job", ""),
        common::workflow("w", "")
    );
    // b is busy (a starts once b runs its job); a has room, but cannot
    // run `w`.
    let b = node(&db, "node-b", &with).await;
    let busy = submit(&b, json!({"hang": true})).await;
    wait_running(&b.store, busy).await;
    let a = node(&db, "node-a", &without).await;
    assert!(matches!(a.rt.availability("w"), Some(Err(_))));
    let w =
        b.rt.submit("w", json!({"result": "w"}), Default::default())
            .await
            .expect("submit")
            .job_id;
    // A later job a can run: once a ran it, a has looked at the queue.
    let later = submit(&b, json!({"result": "later"})).await;
    let r = ended(&a.store, later).await;
    assert_eq!(
        attempt_nodes(&db, later).await,
        vec!["node-a".to_owned()],
        "{r:?}"
    );
    assert_eq!(a.job(w).await.state, JobState::Queued);
    // b's slot frees: b runs `w`.
    b.rt.cancel(busy).await.expect("cancel");
    let r = ended(&a.store, w).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    assert_eq!(attempt_nodes(&db, w).await, vec!["node-b".to_owned()]);
    shutdown(&[&a, &b]).await;
}

/// Succeeds at once, without a process: the claims are what is measured.
#[derive(Debug)]
struct Instant;

#[async_trait]
impl Executor for Instant {
    async fn run(
        &self,
        req: tsbridge_runtime::AttemptRequest,
        _io: tsbridge_runtime::AttemptIo,
    ) -> tsbridge_runtime::AttemptOutcome {
        let mut o = tsbridge_runtime::AttemptOutcome::spawn_failure("", false);
        o.reason = EndReason::Exited;
        o.exit_code = Some(0);
        o.error = None;
        o.result = Some(req.params);
        o
    }
}

/// A measurement, not a check of speed: three nodes in this process on one
/// database, `CLAIM_BENCH_JOBS` (2000) trivial jobs (no process) submitted
/// on one node; prints the claims each node tried and had refused, and the
/// time to run them all. Run with
/// `cargo nextest run -p tsbridge-runtime --test integration --run-ignored only --no-capture multi_node_pg::claims_of_three_nodes`.
#[tokio::test]
#[ignore = "measurement"]
async fn claims_of_three_nodes() {
    let Some(db) = PgDb::create("claims_of_three_nodes").await else {
        return;
    };
    let n: usize = std::env::var("CLAIM_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let toml = job_config("concurrency = 8\nqueue_limit = 100000", "");
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let ex = BTreeMap::from([("job".to_owned(), Arc::new(Instant) as Arc<dyn Executor>)]);
        nodes.push(counted_node(&db, name, &toml, ex).await);
    }
    let t = std::time::Instant::now();
    let a = nodes[0].0.rt.clone();
    let ids = futures::future::join_all((0..n).map(|i| {
        let rt = a.clone();
        async move {
            rt.submit("job", json!({ "i": i }), Default::default())
                .await
                .expect("submit")
                .job_id
        }
    }))
    .await;
    let last = ids.last().copied().expect("jobs");
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed')",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} jobs left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let el = t.elapsed();
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
        .fetch_one(&pool)
        .await
        .expect("attempts");
    let by_node: Vec<(String, i64)> =
        sqlx::query_as("SELECT node, count(*) FROM attempts GROUP BY node ORDER BY node")
            .fetch_all(&pool)
            .await
            .expect("by node");
    pool.close().await;
    assert_eq!(attempts, n as i64, "every job ran once");
    assert_eq!(nodes[0].0.job(last).await.state, JobState::Succeeded);
    let (mut tried, mut refused, mut asked, mut empty) = (0, 0, 0, 0);
    for (node, c) in &nodes {
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let (t, r, q, e) = (
            load(&c.tried),
            load(&c.refused),
            load(&c.asked),
            load(&c.empty),
        );
        println!(
            "{}: start_attempt tried {t}, refused {r}; claim_next asked {q}, empty {e}, \
             claimed {}",
            node.name,
            load(&c.claimed)
        );
        (tried, refused, asked, empty) = (tried + t, refused + r, asked + q, empty + e);
    }
    let per_job = |v: u64| v as f64 / n as f64;
    println!(
        "{n} jobs on 3 nodes in {el:?} ({:.0} jobs/s); attempts by node {by_node:?}; \
         start_attempt per job {:.2}, refused {refused} ({:.2} per job); \
         claim_next per job {:.2}, empty {empty} ({:.2} per job)",
        n as f64 / el.as_secs_f64(),
        per_job(tried),
        per_job(refused),
        per_job(asked),
        per_job(empty),
    );
    shutdown(&nodes.iter().map(|(n, _)| n).collect::<Vec<_>>()).await;
}
