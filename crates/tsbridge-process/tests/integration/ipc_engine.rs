//! A Node child spawned with `ipc` on talks over NODE_CHANNEL_FD through the
//! engine: its progress and result envelopes become events and the outcome's
//! result, and requests from tsbridge are answered.

use crate::common;

use std::time::Duration;

use tsbridge_process::spawn;
use tsbridge_proto::{ChildEvent, EndReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_child_uses_process_send() {
    let spec = common::node_fixture("ipc-child.js")
        .ipc(true)
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let rx = p.take_events().unwrap();
    let ipc = p.ipc().expect("ipc handle");
    let answer = ipc
        .request(serde_json::json!({"q": 1}), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(answer["echo"], serde_json::json!({"q": 1}));
    assert_eq!(answer["pid"], p.pid());
    let bye = ipc
        .request(serde_json::json!("bye"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(bye, "bye");
    drop(ipc);
    let collector = common::collect_events(rx);
    let o = tokio::time::timeout(Duration::from_secs(60), p.wait())
        .await
        .expect("job ends");
    let events = collector.await.unwrap();
    assert_eq!(o.reason, EndReason::Exited);
    assert!(
        o.exit.success(),
        "{:?}",
        String::from_utf8_lossy(&o.stderr.head)
    );
    assert_eq!(o.result, Some(serde_json::json!({"via": "ipc"})));
    assert!(events.iter().any(|e| matches!(e, ChildEvent::Progress(p) if p.current == 1 && p.total == 2 && p.message == "half way")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ipc_there_is_no_channel() {
    let spec = common::node_fixture("ipc-child.js").build().unwrap();
    let p = spawn(spec).await.unwrap();
    assert!(p.ipc().is_none());
    let o = p.wait().await;
    assert_eq!(o.exit.code(), Some(2));
}
