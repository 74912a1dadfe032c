//! Hostile tests of request env at rest: a job's request env values are
//! sealed before the store sees them (the raw SQLite files never hold a
//! value), the job still gets them, also after a restart on the same store,
//! and a wrong or missing key stops the start with a typed error instead
//! of running jobs without their env.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tsbridge_proto::JobState;
use tsbridge_proto::api::{JobOptions, JobView};
use tsbridge_runtime::errors::RuntimeError;
use tsbridge_runtime::sealed::SealError;
use tsbridge_runtime::{Config, JobStore, Runtime, RuntimeOptions};

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

async fn wait_done(rt: &Runtime, id: tsbridge_proto::JobId) -> JobView {
    tokio::time::timeout(SOON, rt.wait(id))
        .await
        .expect("job ends in time")
        .expect("wait")
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
    drop(rt);
    assert!(!contains(&store_bytes(dir.path()), VALUE.as_bytes()));

    let key_path = dir.path().join("jobs.db.key");
    let key = std::fs::read(&key_path).unwrap();

    // Another key: a typed error at start, nothing runs.
    std::fs::write(&key_path, [0x42u8; 32]).unwrap();
    match start_on(dir.path()).await {
        Err(RuntimeError::EnvKey(SealError::Open { job, name, .. })) => {
            assert_eq!(job, queued);
            assert_eq!(name, NAME);
        }
        other => panic!("expected a wrong-key error, got {other:?}"),
    }
    // No key at all: a typed error too (not a fresh key and an empty env).
    std::fs::remove_file(&key_path).unwrap();
    match start_on(dir.path()).await {
        Err(RuntimeError::EnvKey(SealError::Missing { job, .. })) => assert_eq!(job, queued),
        other => panic!("expected a missing-key error, got {other:?}"),
    }
    assert!(!key_path.exists(), "no key was made up over sealed jobs");

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
