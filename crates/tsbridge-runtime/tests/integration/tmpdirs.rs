//! No job's private TMPDIR outlives its job (SPEC §4: "temp files it
//! created are removed"): after every way a job can end (success, a retry,
//! a cancel, a timeout, a program that cannot start, a pooled job, a pool
//! worker), after a shutdown, and after the runtime is dropped without one
//! while its tokio runtime goes on, the TMPDIR base holds no `tsbridge-*`
//! entry.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_runtime::RuntimeOptions;

fn tsbridge_entries(base: &Path) -> Vec<String> {
    std::fs::read_dir(base)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("tsbridge-"))
        .collect()
}

/// Waits (bounded by [`SOON`]) until `base` holds no `tsbridge-*` entry.
async fn until_no_tmpdir(base: &Path) {
    let start = Instant::now();
    loop {
        let left = tsbridge_entries(base);
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < SOON, "left in the TMPDIR base: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded by [`SOON`]) until `base` holds `n` or more `tsbridge-*` entries.
async fn until_at_least(base: &Path, n: usize) {
    let start = Instant::now();
    while tsbridge_entries(base).len() < n {
        assert!(
            start.elapsed() < SOON,
            "fewer than {n} TMPDIRs: {:?}",
            tsbridge_entries(base)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spawned jobs (one retried, one with a timeout), a script whose `#!`
/// interpreter is missing, and a pool.
fn toml(root: &Path) -> String {
    format!(
        "{}{}[workflows.nointerp]\nroot = \"{r}\"\nscript = \"nointerp.sh\"\nruntime = \"exec\"\n\n\
         [workflows.pooled]\nroot = \"{f}\"\nscript = \"handler.mjs\"\nruntime = \"node\"\n\
         mode = \"pool\"\npool = {{ min = 1, max = 1 }}\n",
        workflow("job", "retry = { attempts = 2, backoff = \"10ms\" }"),
        workflow("short", "timeout = \"500ms\""),
        r = root.display(),
        f = fixtures().display(),
    )
}

fn write_nointerp(root: &Path) {
    let script = root.join("nointerp.sh");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A runtime whose TMPDIR base (returned) is a fresh temp dir, with the
/// workflows of [`toml`] (the missing interpreter's script in a temp dir).
async fn start_in() -> (Harness, tempfile::TempDir, tempfile::TempDir) {
    let base = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    write_nointerp(root.path());
    let h = start_with(
        &toml(root.path()),
        RuntimeOptions {
            tmp_base: Some(base.path().to_path_buf()),
            ..RuntimeOptions::default()
        },
    )
    .await;
    (h, base, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_leaves_its_tmpdir_after_a_shutdown() {
    let (h, base, _root) = start_in().await;

    let ok = h.submit("job", json!({"printTmp": true})).await;
    assert_eq!(h.wait(ok).await.state, JobState::Succeeded);
    let counter = h.path("counter");
    let retried = h
        .submit("job", json!({"failTimes": 1, "counter": counter}))
        .await;
    let v = h.wait(retried).await;
    assert_eq!(
        (v.state, v.attempts.len()),
        (JobState::Succeeded, 2),
        "{v:?}"
    );
    let timed_out = h.submit("short", json!({"hang": true})).await;
    assert_eq!(h.wait(timed_out).await.state, JobState::TimedOut);
    let cancelled = h.submit("job", json!({"hang": true})).await;
    h.until_state(cancelled, JobState::Running).await;
    h.rt.cancel(cancelled).await.unwrap();
    assert_eq!(h.wait(cancelled).await.state, JobState::Cancelled);
    let unstartable = h.submit("nointerp", json!({})).await;
    assert_eq!(h.wait(unstartable).await.state, JobState::Failed);
    let pooled = h.submit("pooled", json!({})).await;
    assert_eq!(h.wait(pooled).await.state, JobState::Succeeded);
    let pooled_cancelled = h.submit("pooled", json!({"hang": true})).await;
    h.until_state(pooled_cancelled, JobState::Running).await;
    h.rt.cancel(pooled_cancelled).await.unwrap();
    assert_eq!(h.wait(pooled_cancelled).await.state, JobState::Cancelled);

    h.rt.shutdown(Duration::from_secs(5)).await;
    let left = tsbridge_entries(base.path());
    assert!(left.is_empty(), "left in the TMPDIR base: {left:?}");
}

/// A runtime dropped without a shutdown ends its running jobs and its pool
/// (its tokio runtime goes on): their TMPDIRs go with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_leaves_no_tmpdir() {
    let (h, base, _root) = start_in().await;
    let pooled = h.submit("pooled", json!({"hang": true})).await;
    h.until_state(pooled, JobState::Running).await;
    let spawned = h.submit("job", json!({"hang": true})).await;
    h.until_state(spawned, JobState::Running).await;
    // A job is `running` from its attempt's start, a moment before the
    // engine makes its TMPDIR: wait for both (the pool worker's and the job's).
    until_at_least(base.path(), 2).await;

    let Harness { rt, store, dir, .. } = h;
    drop(rt);
    until_no_tmpdir(base.path()).await;
    drop((store, dir));
}
