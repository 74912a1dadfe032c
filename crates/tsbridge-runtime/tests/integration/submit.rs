//! A job end to end through the real engine: queued -> running ->
//! succeeded, with progress, result, numbered events and output stored;
//! a failing exit code is an ExecutionError with the code.

use crate::common;

use common::*;
use std::time::Duration;

use serde_json::json;
use tsbridge_proto::{EndReason, ErrorType, EventData, JobState};

#[tokio::test]
async fn a_job_runs_and_its_events_are_numbered_and_stored() {
    let h = start(&workflow("job", "")).await;
    let id = h
        .submit(
            "job",
            json!({"progress": 4, "lines": 3, "result": {"answer": 42}}),
        )
        .await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::Exited));
    assert_eq!(v.result, Some(json!({"answer": 42})));
    assert_eq!(v.exit_code, Some(0));
    assert_eq!(v.attempts.len(), 1);
    assert!(v.attempts[0].process_id.is_some());
    assert_eq!(
        v.progress.as_ref().map(|p| (p.current, p.total)),
        Some((4, 4))
    );
    assert!(v.output.stdout.contains("line 2"), "{:?}", v.output.stdout);
    assert!(v.resources.wall_time_ms.is_some());
    assert!(v.started_at.is_some() && v.finished_at.is_some());

    let events = h.rt.events_after(id, 0).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gaps");
    assert!(matches!(
        events[0].data,
        EventData::State {
            state: JobState::Queued,
            ..
        }
    ));
    assert!(matches!(
        events[1].data,
        EventData::State {
            state: JobState::Running,
            attempt: Some(1),
            ..
        }
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.data, EventData::Progress(_)))
            .count(),
        4
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.data, EventData::Stdout { .. }))
            .count(),
        3
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.data, EventData::Result { .. }))
    );
    assert!(events.last().expect("events").data.is_terminal_state());
    let later = h.rt.events_after(id, 3).await.expect("events");
    assert_eq!(later.first().map(|e| e.seq), Some(4));

    let stats = h.rt.stats();
    assert_eq!(stats.finished["job"]["succeeded"], 1);
}

#[tokio::test]
async fn a_non_zero_exit_is_an_execution_error() {
    let h = start(&workflow("job", "")).await;
    let id = h.submit("job", json!({"exit": 3})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.reason, Some(EndReason::Exited));
    assert_eq!(v.exit_code, Some(3));
    let err = v.error.expect("error");
    assert_eq!(err.kind, ErrorType::ExecutionError);
    assert_eq!(err.details.expect("details")["exitCode"], 3);
}

#[tokio::test]
async fn a_live_subscriber_sees_every_event_after_replay() {
    let h = start(&workflow("job", "")).await;
    let id = h.submit("job", json!({"progress": 20, "stepMs": 5})).await;
    // Subscribe first, then replay, then skip what was replayed.
    let mut sub = h.rt.subscribe(id);
    let replay = h.rt.events_after(id, 0).await.expect("events");
    let mut seen: Vec<u64> = replay.iter().map(|e| e.seq).collect();
    let mut last = seen.last().copied().unwrap_or(0);
    let done_in_replay = replay.last().is_some_and(|e| e.data.is_terminal_state());
    if !done_in_replay {
        while let Some(e) = tokio::time::timeout(SOON, sub.recv())
            .await
            .expect("events flow")
        {
            if e.seq <= last {
                continue;
            }
            last = e.seq;
            seen.push(e.seq);
            if e.data.is_terminal_state() {
                break;
            }
        }
    }
    assert!(!sub.lagged());
    assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
    let stored = h.rt.events_after(id, 0).await.expect("events");
    assert_eq!(stored.len(), seen.len());
}

#[tokio::test]
async fn each_attempt_gets_a_private_tmpdir_removed_afterwards() {
    let base = tempfile::tempdir().expect("tempdir");
    let opts = tsbridge_runtime::RuntimeOptions {
        tmp_base: Some(base.path().to_path_buf()),
        ..tsbridge_runtime::RuntimeOptions::default()
    };
    let h = start_with(&workflow("job", ""), opts).await;
    let id = h.submit("job", json!({"printTmp": true})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let line = v
        .output
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("TMPDIR="))
        .expect("the child printed its TMPDIR")
        .to_owned();
    let tmp = std::path::Path::new(&line);
    assert!(tmp.starts_with(base.path()), "{line}");
    // Removed after the outcome (off the response path), without a shutdown.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tmp.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{line} was not removed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read_dir(base.path()).expect("read").count(), 0);
}
