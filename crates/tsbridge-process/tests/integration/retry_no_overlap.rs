//! Retried attempts never overlap: each attempt (a SIGTERM-ignoring leader
//! with a SIGTERM-ignoring grandchild that times out) starts only after every
//! process of the previous attempt is gone. The fixture itself checks, at its
//! start, that no recorded process of an earlier attempt is alive.

use crate::common;

use std::time::Duration;

use tsbridge_process::ProcessControl;
use tsbridge_process::retry::{Attempt, RetryPolicy, run_with_retry};
use tsbridge_proto::EndReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::node_fixture("retry-probe.js")
        .arg(dir.path())
        .timeout(Some(Duration::from_secs(4)))
        .kill_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let policy = RetryPolicy {
        attempts: 3,
        backoff: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let mut seen = Vec::new();
    let run = run_with_retry(
        |_| spec.clone(),
        &policy,
        ProcessControl::new(),
        |n, a| {
            seen.push(n);
            if let Attempt::Finished(o) = a {
                assert_eq!(o.reason, EndReason::Timeout);
            }
        },
    )
    .await;
    assert_eq!(seen, vec![1, 2, 3]);
    assert_eq!(run.attempts.len(), 3);
    assert!(matches!(
        run.error,
        Some(tsbridge_process::JobError::Timeout { .. })
    ));
    let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
    assert_eq!(
        pids.lines().count(),
        6,
        "3 attempts x (leader + grandchild)"
    );
    for pid in pids.lines() {
        assert!(!common::alive(pid.parse().unwrap()), "{pid} still alive");
    }
    let overlaps = std::fs::read_to_string(dir.path().join("overlaps")).unwrap_or_default();
    assert_eq!(
        overlaps, "",
        "an attempt started while the previous one was alive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_failure_stops_and_cancel_stops() {
    let spec = tsbridge_process::JobSpec::builder("/bin/sh")
        .arg(common::fixture("exit-code.sh"))
        .arg("7")
        .envs(common::base_env())
        .build()
        .unwrap();
    let policy = RetryPolicy {
        attempts: 5,
        backoff: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let run = run_with_retry(|_| spec.clone(), &policy, ProcessControl::new(), |_, _| {}).await;
    assert_eq!(run.attempts.len(), 1, "exit 7 is not retryable by default");

    let control = ProcessControl::new();
    control.cancel();
    let spec = common::node_fixture("hang.js").build().unwrap();
    let run = run_with_retry(|_| spec.clone(), &policy, control, |_, _| {}).await;
    assert_eq!(run.attempts.len(), 1);
    assert!(matches!(
        run.error,
        Some(tsbridge_process::JobError::Cancelled)
    ));
}
