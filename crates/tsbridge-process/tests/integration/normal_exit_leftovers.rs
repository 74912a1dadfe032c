//! After the leader exits by itself, a setsid double-fork daemon it left
//! behind is found (tsbridge is a subreaper) and killed: no process outlives
//! its job, and the outcome counts it.

use crate::common;

use std::time::Duration;

use tsbridge_process::{init_supervisor, run};
use tsbridge_proto::EndReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_daemon_is_killed_after_normal_exit() {
    init_supervisor().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let spec = common::node_fixture("setsid-escape.js")
        .arg(&pidfile)
        .kill_grace(Duration::from_secs(2))
        .build()
        .unwrap();
    let key = spec.key().to_string();
    let o = run(spec).await.unwrap();
    assert_eq!(o.reason, EndReason::Exited);
    assert!(o.exit.success());
    let daemon: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(o.leaked_descendants_killed >= 1, "{o:?}");
    assert!(!common::alive(daemon), "daemon {daemon} outlived its job");
    assert!(common::marked(&key).is_empty());
}
