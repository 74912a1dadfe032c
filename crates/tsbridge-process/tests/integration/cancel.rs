//! Cancelling a running job ends it (and its SIGTERM-ignoring leader) with
//! reason Cancelled.

use crate::common;

use std::time::Duration;

use tsbridge_process::spawn;
use tsbridge_proto::{ChildEvent, EndReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_job_with_reason_cancelled() {
    let spec = common::node_fixture("ignore-term.js")
        .kill_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let mut events = p.take_events().unwrap();
    // Await READY so the SIGTERM handler is installed.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(ChildEvent::Output { line, .. })) if line == "READY" => break,
            Ok(Some(_)) => continue,
            other => panic!("no READY: {other:?}"),
        }
    }
    let pid = p.pid() as i32;
    p.control().cancel();
    let o = p.wait().await;
    assert_eq!(o.reason, EndReason::Cancelled);
    assert_eq!(
        o.exit.signal(),
        Some(libc::SIGKILL),
        "SIGTERM was ignored, so SIGKILL ended it"
    );
    assert!(!common::alive(pid));
    assert!(
        o.stderr.head.starts_with(b"got SIGTERM"),
        "{:?}",
        String::from_utf8_lossy(&o.stderr.head)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_spawn_is_honoured() {
    let control = tsbridge_process::ProcessControl::new();
    control.cancel();
    let spec = common::node_fixture("hang.js")
        .control(control)
        .build()
        .unwrap();
    let o = tsbridge_process::run(spec).await.unwrap();
    assert_eq!(o.reason, EndReason::Cancelled);
    assert!(o.exit.signal().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_kills_the_job() {
    let spec = common::node_fixture("hang.js").build().unwrap();
    let p = spawn(spec).await.unwrap();
    let pid = p.pid() as i32;
    assert!(common::alive(pid));
    drop(p);
    assert!(common::eventually(Duration::from_secs(30), || !common::alive(pid)).await);
}
