//! A RESULT_START block written one byte per write(2) still parses, and the
//! log/progress lines around it become events in order.

use crate::common;

use tsbridge_process::spawn;
use tsbridge_proto::{ChildEvent, EndReason, LogLevel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_block_written_byte_by_byte_parses() {
    let spec = common::node_fixture("protocol.js")
        .arg("--byte-by-byte")
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let rx = p.take_events().unwrap();
    let collector = common::collect_events(rx);
    let o = p.wait().await;
    let events = collector.await.unwrap();
    assert_eq!(o.reason, EndReason::Exited);
    assert!(o.exit.success());
    let expected = serde_json::json!({"answer": 42, "items": ["a", "b"], "nested": {"ok": true}});
    assert_eq!(o.result, Some(expected.clone()));
    assert_eq!(o.events_dropped, 0);
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            ChildEvent::Progress(p) => Some((p.current, p.total)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![(1, 4), (4, 4)]);
    assert!(events.iter().any(|e| matches!(e, ChildEvent::Log { level: LogLevel::Warn, message, .. } if message == "almost there")));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ChildEvent::Output { line, .. } if line == "just a plain line"))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ChildEvent::Result { value } if *value == expected))
    );
}
