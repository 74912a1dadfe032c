//! Cancel: a queued job ends at once; a running one is stopped through its
//! process (TERM, then KILL after the grace for a child that ignores TERM)
//! and ends `cancelled`; a finished one is a Conflict.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::{EndReason, ErrorType, JobState};

#[tokio::test]
async fn cancel_queued_and_running() {
    let h = start(&format!(
        "[defaults]\nconcurrency = 1\nkill_grace = \"300ms\"\n{}",
        workflow("job", "")
    ))
    .await;
    let running = h
        .submit("job", json!({"hang": true, "ignoreTerm": true}))
        .await;
    let queued = h.submit("job", json!({})).await;
    h.until_state(running, JobState::Running).await;

    let v = h.rt.cancel(queued).await.expect("cancel queued");
    assert_eq!(v.state, JobState::Cancelled);
    assert_eq!(v.reason, Some(EndReason::Cancelled));
    assert!(v.attempts.is_empty());

    let v = h.rt.cancel(running).await.expect("cancel running");
    assert_eq!(v.state, JobState::Cancelled);
    assert_eq!(v.reason, Some(EndReason::Cancelled));
    assert_eq!(v.attempts.len(), 1);
    assert_eq!(v.attempts[0].reason, Some(EndReason::Cancelled));
    let pid = v.process_id.expect("pid") as i32;
    // The process is gone (the engine reaps the tree before reporting).
    // SAFETY: signal 0 sends nothing; it only checks that the pid exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "pid {pid} still alive");

    let e = h.rt.cancel(running).await.expect_err("already finished");
    assert_eq!(e.error_type(), ErrorType::Conflict);
    let e =
        h.rt.cancel(tsbridge_proto::JobId::new())
            .await
            .expect_err("unknown");
    assert_eq!(e.error_type(), ErrorType::NotFound);
}
