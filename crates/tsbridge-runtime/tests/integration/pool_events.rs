//! Progress and logs stream to the job's sink while it runs; console output
//! inside a handler becomes logs and cannot forge a result.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::pool_support;

use std::time::Duration;

use pool_support::*;
use serde_json::json;
use tsbridge_proto::{ChildEvent, LogLevel};
use tsbridge_runtime::pool::{PoolEvent, PoolJob};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_sink_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    let (tx, mut rx) = sink();
    let o = pool
        .run(PoolJob::new("pool-test", json!({"mode": "progress"})), tx)
        .await;
    let pid = pid_of(&o);
    assert!(
        matches!(rx.recv().await, Some(PoolEvent::Started { pid: Some(p), .. }) if u64::from(p) == pid),
        "Started comes first, with the worker's pid"
    );
    let events = child_events(&mut rx);
    let progress: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ChildEvent::Progress(p) => Some((p.current, p.total)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![(1, 3), (2, 3), (3, 3)], "{events:?}");
    assert!(events.iter().any(|e| matches!(e, ChildEvent::Log { level: LogLevel::Info, message, .. } if message == "half way")));
    assert!(
        events.iter().any(
            |e| matches!(e, ChildEvent::Log { message, .. } if message.starts_with("RESULT:"))
        ),
        "console.log became a log: {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ChildEvent::Result { .. }))
    );
    assert_eq!(
        o.result.unwrap(),
        json!({"pid": pid}),
        "the printed RESULT line did not replace the value"
    );
    pool.shutdown(Duration::from_secs(10)).await;
}

/// The answer travels on another path than the job's events: the pool
/// forwards all of them (counted by the answer's `events`) before it
/// reports the outcome, so none is missing or lands in the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_job_is_forwarded_before_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start(js_spec(dir.path()), config(1, 1)).await.unwrap();
    for job in 0..100u64 {
        let tag = format!("job-{job}");
        let n = 1 + job % 40;
        let (tx, mut rx) = sink();
        let o = pool
            .run(
                PoolJob::new("pool-test", json!({"mode": "burst", "n": n, "tag": tag})),
                tx,
            )
            .await;
        assert_eq!(o.result.unwrap(), json!(tag));
        let events = child_events(&mut rx);
        let seen: Vec<u64> = events
            .iter()
            .map(|e| match e {
                ChildEvent::Progress(p) if p.message == tag => p.current,
                ChildEvent::Log { message, .. } => message
                    .strip_prefix(&format!("{tag} "))
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("{tag}: foreign event {e:?}")),
                other => panic!("{tag}: foreign event {other:?}"),
            })
            .collect();
        assert_eq!(seen, (1..=n).collect::<Vec<_>>(), "{tag}: {events:?}");
    }
    pool.shutdown(Duration::from_secs(10)).await;
}
