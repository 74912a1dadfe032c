//! One 10 MiB line is reported truncated (as an event of at most max_line
//! bytes), the RESULT line after it still parses, and capture stays bounded.

use crate::common;

use tsbridge_process::spawn;
use tsbridge_proto::ChildEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_line_is_truncated() {
    let max_line = 64 * 1024;
    let spec = common::node_fixture("long-line.js")
        .max_line(max_line)
        .max_output(1024 * 1024)
        .build()
        .unwrap();
    let mut p = spawn(spec).await.unwrap();
    let rx = p.take_events().unwrap();
    let collector = common::collect_events(rx);
    let o = p.wait().await;
    let events = collector.await.unwrap();
    assert!(o.exit.success());
    assert_eq!(o.result, Some(serde_json::json!({"ok": true})));
    let total = 10 * 1024 * 1024 + "\nRESULT: {\"ok\":true}\n".len() as u64;
    assert_eq!(o.stdout.total, total);
    assert_eq!(o.stdout.dropped, total - 1024 * 1024);
    let long: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            ChildEvent::Output { line, .. } if line.starts_with('x') => Some(line.len()),
            _ => None,
        })
        .collect();
    assert_eq!(long.len(), 1, "the long line is one event");
    assert!(long[0] <= max_line, "event of {} bytes", long[0]);
    assert!(long[0] > 0);
}
