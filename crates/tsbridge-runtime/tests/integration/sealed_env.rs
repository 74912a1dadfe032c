//! Hostile tests of request env at rest: a job's request env values are
//! sealed before the store sees them (the raw SQLite files never hold a
//! value), the job still gets them, also after a restart on the same store,
//! and a wrong or missing key stops the start with a typed error (the store
//! records the key's fingerprint) instead of running jobs without their
//! env or sealing new ones under a fresh key. A row that does not open, or
//! a value written in clear into a store that seals, fails its job alone.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tsbridge_proto::api::{JobOptions, JobView};
use tsbridge_proto::{EndReason, JobId, JobState};
use tsbridge_runtime::errors::RuntimeError;
use tsbridge_runtime::sealed::{Held, SealError};
use tsbridge_runtime::store::PgStore;
use tsbridge_runtime::{Config, JobStore, Runtime, RuntimeOptions};

use crate::pg_support::PgDb;

const NAME: &str = "RUN_API_KEY";
const VALUE: &str = "sk-live-7f3c9a1be2d44c0e8b5f-hostile-audit";

/// A config whose store (and so its default key file) is in `dir`.
fn sealed_config(dir: &Path) -> Arc<Config> {
    let root = fixtures();
    let toml = format!(
        "[store]\nurl = \"sqlite://{}/jobs.db\"\n[defaults]\nconcurrency = 1\n\
         [workflows.digest]\nroot = \"{}\"\nscript = \"env-digest.js\"\nruntime = \"node\"\n\
         env = {{ request = [\"{NAME}\"] }}\n",
        dir.display(),
        root.display()
    );
    match Config::parse(&toml, &root) {
        Ok(c) => Arc::new(c),
        Err(issues) => panic!("test config invalid: {issues:?}"),
    }
}

async fn start_on(dir: &Path) -> Result<Runtime, RuntimeError> {
    Runtime::start(
        sealed_config(dir),
        open_store(dir).await as Arc<dyn JobStore>,
        RuntimeOptions::default(),
    )
    .await
}

fn with_env() -> JobOptions {
    JobOptions {
        env: Some([(NAME.to_owned(), VALUE.to_owned())].into()),
        ..JobOptions::default()
    }
}

fn expected_digest() -> Value {
    let hex: String = Sha256::digest(VALUE.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({ "sha256": hex, "len": VALUE.len() })
}

/// Every byte of the store's files (db, WAL, shm), the key file aside.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("jobs.db") && !name.ends_with(".key") {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn wait_done(rt: &Runtime, id: JobId) -> JobView {
    tokio::time::timeout(SOON, rt.wait(id))
        .await
        .expect("job ends in time")
        .expect("wait")
}

/// Waits until `blocker` runs (the jobs submitted behind it stay queued),
/// then shuts the runtime down at once.
async fn shutdown_once_running(rt: &Runtime, blocker: JobId) {
    tokio::time::timeout(SOON, async {
        while rt.get(blocker).await.unwrap().state != JobState::Running {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the blocker runs");
    tokio::time::timeout(SOON, rt.shutdown(Duration::ZERO))
        .await
        .expect("shutdown ends");
}

/// The message of a failed job's error ("" without one).
fn error_message(v: &JobView) -> String {
    v.error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn request_env_values_are_not_stored_in_clear_and_still_reach_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_on(dir.path()).await.expect("start");
    let id = rt
        .submit("digest", json!({"name": NAME}), with_env())
        .await
        .expect("submit")
        .job_id;
    let v = wait_done(&rt, id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.result, Some(expected_digest()), "the job got the value");
    rt.shutdown(Duration::ZERO).await;

    let raw = store_bytes(dir.path());
    assert!(contains(&raw, NAME.as_bytes()), "names stay readable");
    assert!(
        !contains(&raw, VALUE.as_bytes()),
        "the value is stored in clear in the SQLite files"
    );
    // Nor does the API view carry it.
    let view = serde_json::to_string(&v).unwrap();
    assert!(!view.contains(VALUE), "{view}");
    // The key file was created beside the store, private.
    let key = dir.path().join("jobs.db.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn a_queued_job_gets_its_env_after_a_restart_and_a_wrong_or_missing_key_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_on(dir.path()).await.expect("start");
    // One slot: the hanging job holds it, the job with env stays queued.
    let blocker = rt
        .submit("digest", json!({"hang": true}), JobOptions::default())
        .await
        .expect("submit blocker")
        .job_id;
    let queued = rt
        .submit("digest", json!({"name": NAME}), with_env())
        .await
        .expect("submit")
        .job_id;
    shutdown_once_running(&rt, blocker).await;
    drop(rt);
    assert!(!contains(&store_bytes(dir.path()), VALUE.as_bytes()));

    let key_path = dir.path().join("jobs.db.key");
    let key = std::fs::read(&key_path).unwrap();

    // Another key: a typed error at start naming both fingerprints,
    // nothing runs.
    std::fs::write(&key_path, [0x42u8; 32]).unwrap();
    let stored = match start_on(dir.path()).await {
        Err(RuntimeError::EnvKey(SealError::WrongKey { ours, stored, .. })) => {
            assert_ne!(ours, stored);
            let raw = store_bytes(dir.path());
            assert!(contains(&raw, stored.as_str().as_bytes()), "recorded");
            assert!(!contains(&raw, ours.as_str().as_bytes()));
            stored
        }
        other => panic!("expected a wrong-key error, got {other:?}"),
    };
    // No key at all: a typed error too (not a fresh key and an empty env).
    std::fs::remove_file(&key_path).unwrap();
    match start_on(dir.path()).await {
        Err(RuntimeError::EnvKey(SealError::Missing { held, .. })) => {
            assert_eq!(held, Held::Fingerprint(stored));
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }
    assert!(!key_path.exists(), "no key was made up over sealed jobs");
    assert_eq!(
        raw_job(dir.path(), queued).await.0,
        "queued",
        "a refused start changed nothing"
    );

    // The right key back: the queued job runs with its value.
    std::fs::write(&key_path, &key).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rt = start_on(dir.path()).await.expect("start with the key");
    let v = wait_done(&rt, queued).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.result, Some(expected_digest()));
    rt.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn an_idempotent_replay_with_sealed_env_is_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_on(dir.path()).await.expect("start");
    let opts = |value: &str| JobOptions {
        env: Some([(NAME.to_owned(), value.to_owned())].into()),
        idempotency_key: Some("replay-1".into()),
        ..JobOptions::default()
    };
    let first = rt
        .submit("digest", json!({"name": NAME}), opts(VALUE))
        .await
        .expect("submit");
    let again = rt
        .submit("digest", json!({"name": NAME}), opts(VALUE))
        .await
        .expect("replay");
    assert_eq!(again.job_id, first.job_id);
    assert!(again.existing);
    let other = rt
        .submit("digest", json!({"name": NAME}), opts("another value"))
        .await
        .expect_err("another value is another request");
    assert!(
        matches!(other, RuntimeError::IdempotencyConflict { .. }),
        "{other:?}"
    );
    wait_done(&rt, first.job_id).await;
    rt.shutdown(Duration::ZERO).await;
}

/// A job's state and stored request, read from the SQLite file directly.
async fn raw_job(dir: &Path, id: JobId) -> (String, Value) {
    let mut conn = side_connection(dir).await;
    let (state, request): (String, String) =
        sqlx::query_as("SELECT state, request FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_one(&mut conn)
            .await
            .expect("read the job row");
    (state, serde_json::from_str(&request).expect("request JSON"))
}

async fn side_connection(dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}/jobs.db", dir.display()))
        .await
        .expect("side connection")
}

/// Writes `value` as the stored value of `NAME` in job `id`'s request, as
/// someone with write access to the database could.
async fn write_env_value(dir: &Path, id: JobId, value: &str) {
    let (_, mut request) = raw_job(dir, id).await;
    request["env"][NAME] = json!(value);
    let mut conn = side_connection(dir).await;
    let done = sqlx::query("UPDATE jobs SET request = ? WHERE id = ?")
        .bind(request.to_string())
        .bind(id.to_string())
        .execute(&mut conn)
        .await
        .expect("write the job row");
    assert_eq!(done.rows_affected(), 1);
}

/// Starts a runtime on `dir`, holds its one slot with a hanging job, queues
/// `n` jobs with env behind it, and shuts it down (the blocker ends, the
/// others stay queued, sealed).
async fn queued_behind_a_blocker(dir: &Path, n: usize) -> Vec<JobId> {
    let rt = start_on(dir).await.expect("start");
    let blocker = rt
        .submit("digest", json!({"hang": true}), JobOptions::default())
        .await
        .expect("submit blocker")
        .job_id;
    let mut queued = Vec::new();
    for _ in 0..n {
        queued.push(
            rt.submit("digest", json!({"name": NAME}), with_env())
                .await
                .expect("submit")
                .job_id,
        );
    }
    shutdown_once_running(&rt, blocker).await;
    queued
}

#[tokio::test]
async fn a_deleted_default_key_file_stops_the_start_and_no_new_key_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_on(dir.path()).await.expect("start");
    let id = rt
        .submit("digest", json!({"name": NAME}), with_env())
        .await
        .expect("submit")
        .job_id;
    assert_eq!(wait_done(&rt, id).await.state, JobState::Succeeded);
    rt.shutdown(Duration::ZERO).await;
    drop(rt);

    // Nothing is queued: only the store's fingerprint shows that its rows
    // are sealed under the key that is gone.
    let key_path = dir.path().join("jobs.db.key");
    std::fs::remove_file(&key_path).unwrap();
    match start_on(dir.path()).await {
        Err(RuntimeError::EnvKey(SealError::Missing { path, held })) => {
            assert_eq!(path, key_path);
            assert!(matches!(held, Held::Fingerprint(_)), "{held:?}");
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }
    assert!(!key_path.exists(), "a fresh key replaced the lost one");
}

#[tokio::test]
async fn an_altered_row_fails_only_its_job_and_the_start_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let queued = queued_behind_a_blocker(dir.path(), 2).await;
    let (good, altered) = (queued[0], queued[1]);
    // One character of the box changed (the digest is left alone).
    let (_, request) = raw_job(dir.path(), altered).await;
    let sealed = request["env"][NAME].as_str().unwrap().to_owned();
    let at = sealed.len() - 10;
    let flipped = if &sealed[at..=at] == "A" { "B" } else { "A" };
    write_env_value(
        dir.path(),
        altered,
        &format!("{}{flipped}{}", &sealed[..at], &sealed[at + 1..]),
    )
    .await;

    let rt = start_on(dir.path()).await.expect("the start goes on");
    let v = wait_done(&rt, good).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.result, Some(expected_digest()));
    let v = wait_done(&rt, altered).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::SpawnFailure));
    assert_eq!(v.result, None, "the job never ran");
    let message = error_message(&v);
    assert!(
        message.contains(NAME) && message.contains("cannot be opened"),
        "{message}"
    );
    assert_eq!(v.attempts.len(), 1, "not retried: {v:?}");
    rt.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_value_written_in_clear_into_a_store_that_seals_fails_its_job_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let queued = queued_behind_a_blocker(dir.path(), 2).await;
    let (good, injected) = (queued[0], queued[1]);
    const INJECTED: &str = "injected-in-clear-by-a-db-writer";
    write_env_value(dir.path(), injected, INJECTED).await;

    let rt = start_on(dir.path()).await.expect("start");
    let v = wait_done(&rt, good).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let v = wait_done(&rt, injected).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::SpawnFailure));
    assert_eq!(v.result, None, "the child never got the value");
    let message = error_message(&v);
    assert!(
        message.contains(NAME) && message.contains("stored in clear"),
        "{message}"
    );
    assert!(!message.contains(INJECTED), "{message}");
    rt.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn the_store_keeps_the_first_key_fingerprint_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let file = open_store(dir.path()).await;
    let memory = Arc::new(
        tsbridge_runtime::store::SqliteStore::open("sqlite::memory:")
            .await
            .expect("open"),
    );
    for store in [file as Arc<dyn JobStore>, memory] {
        assert_eq!(store.env_key_fingerprint().await.unwrap(), None);
        assert_eq!(
            store.claim_env_key_fingerprint("first").await.unwrap(),
            "first"
        );
        assert_eq!(
            store.claim_env_key_fingerprint("second").await.unwrap(),
            "first"
        );
        assert_eq!(
            store.env_key_fingerprint().await.unwrap().as_deref(),
            Some("first")
        );
    }
}

/// A PostgreSQL node's config: the `digest` workflow (request env) with
/// `key_file`, or a workflow without request env and no key file.
fn pg_config(url: &str, key_file: Option<&Path>) -> Arc<Config> {
    let root = fixtures();
    let toml = match key_file {
        Some(k) => format!(
            "[store]\nurl = \"{url}\"\nkey_file = \"{}\"\n[defaults]\nconcurrency = 1\n\
             [workflows.digest]\nroot = \"{}\"\nscript = \"env-digest.js\"\nruntime = \"node\"\n\
             env = {{ request = [\"{NAME}\"] }}\n",
            k.display(),
            root.display()
        ),
        None => format!(
            "[store]\nurl = \"{url}\"\n[defaults]\nconcurrency = 1\n\
             [workflows.digest]\nroot = \"{}\"\nscript = \"env-digest.js\"\nruntime = \"node\"\n",
            root.display()
        ),
    };
    match Config::parse(&toml, &root) {
        Ok(c) => Arc::new(c),
        Err(issues) => panic!("test config invalid: {issues:?}"),
    }
}

fn write_key(path: &Path, key: [u8; 32]) {
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn a_pg_node_with_another_key_or_none_refuses_to_start() {
    let Some(db) = PgDb::create("a_pg_node_with_another_key_or_none_refuses_to_start").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (dir.path().join("k1.key"), dir.path().join("k2.key"));
    write_key(&k1, [1; 32]);
    write_key(&k2, [2; 32]);
    let node = |key: Option<std::path::PathBuf>| {
        let url = db.url.clone();
        async move {
            let store = Arc::new(PgStore::open(&url).await.expect("open store"));
            let rt = Runtime::start(
                pg_config(&url, key.as_deref()),
                store.clone() as Arc<dyn JobStore>,
                RuntimeOptions::default(),
            )
            .await;
            (rt, store)
        }
    };

    let (first, store) = node(Some(k1.clone())).await;
    let first = first.expect("the first node starts");
    let id = first
        .submit("digest", json!({"name": NAME}), with_env())
        .await
        .expect("submit")
        .job_id;
    let v = wait_done(&first, id).await;
    assert_eq!(v.result, Some(expected_digest()), "{v:?}");
    let recorded = store
        .env_key_fingerprint()
        .await
        .unwrap()
        .expect("the first node recorded its key's fingerprint");

    // Another key: refused at start, both fingerprints named.
    match node(Some(k2)).await.0 {
        Err(RuntimeError::EnvKey(e @ SealError::WrongKey { .. })) => {
            let SealError::WrongKey { ours, stored, .. } = &e else {
                unreachable!()
            };
            assert_eq!(stored.as_str(), recorded);
            assert_ne!(ours, stored);
            let text = e.to_string();
            assert!(text.contains(ours.as_str()) && text.contains(stored.as_str()));
        }
        other => panic!("expected a wrong-key error, got {other:?}"),
    }
    // The key file missing: refused, none made.
    let gone = dir.path().join("gone.key");
    match node(Some(gone.clone())).await.0 {
        Err(RuntimeError::EnvKey(SealError::Missing { held, .. })) => {
            assert!(matches!(held, Held::Fingerprint(_)), "{held:?}");
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }
    assert!(!gone.exists());
    // No key file at all: refused too.
    match node(None).await.0 {
        Err(RuntimeError::EnvKey(SealError::NoKeyForStore { held })) => {
            assert!(matches!(held, Held::Fingerprint(_)), "{held:?}");
        }
        other => panic!("expected a no-key error, got {other:?}"),
    }
    // The same key (another copy of the file): starts, and the record is
    // the first one still.
    let copy = dir.path().join("copy.key");
    write_key(&copy, [1; 32]);
    let (second, store) = node(Some(copy)).await;
    let second = second.expect("a node with the same key starts");
    assert_eq!(
        store.claim_env_key_fingerprint("another").await.unwrap(),
        recorded
    );
    second.shutdown(Duration::ZERO).await;
    first.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn concurrent_first_submits_with_env_share_one_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_on(dir.path()).await.expect("start");
    let key_path = dir.path().join("jobs.db.key");
    assert!(!key_path.exists(), "made only when first needed");
    let submits = (0..8).map(|_| rt.submit("digest", json!({"name": NAME}), with_env()));
    let ids: Vec<JobId> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|r| r.expect("submit").job_id)
        .collect();
    for id in ids {
        let v = wait_done(&rt, id).await;
        assert_eq!(v.result, Some(expected_digest()), "{v:?}");
    }
    rt.shutdown(Duration::ZERO).await;
    drop(rt);
    // One key, recorded: a restart with it starts.
    assert!(key_path.exists());
    let rt = start_on(dir.path()).await.expect("restart with the key");
    rt.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn concurrent_claims_of_a_pg_store_agree_on_one_fingerprint() {
    let Some(db) = PgDb::create("concurrent_claims_of_a_pg_store_agree_on_one_fingerprint").await
    else {
        return;
    };
    let stores: Vec<PgStore> = futures::future::join_all((0..4).map(|_| PgStore::open(&db.url)))
        .await
        .into_iter()
        .map(|s| s.expect("open store"))
        .collect();
    let claims = stores
        .iter()
        .enumerate()
        .map(|(i, s)| async move { s.claim_env_key_fingerprint(&format!("node-{i}")).await });
    let won: Vec<String> = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(|r| r.expect("claim"))
        .collect();
    assert!(won.iter().all(|w| *w == won[0]), "{won:?}");
    assert_eq!(
        stores[0].env_key_fingerprint().await.unwrap().as_ref(),
        Some(&won[0])
    );
}
