//! shutdown_all stops every running job (TERM, grace, KILL, whole tree) with
//! reason Shutdown, and removes the private TMPDIRs the engine created.

use crate::common;

use std::time::Duration;

use tsbridge_process::{shutdown_all, spawn, supervisor};
use tsbridge_proto::EndReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_everything_and_cleans_tmp() {
    let base = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    for fixture in ["hang.js", "ignore-term.js"] {
        let spec = common::node_fixture(fixture)
            .private_tmp(Some(base.path().to_path_buf()))
            .kill_grace(Duration::from_secs(60))
            .build()
            .unwrap();
        jobs.push(spawn(spec).await.unwrap());
    }
    assert_eq!(supervisor::live_jobs(), 2);
    let tmpdirs: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(tmpdirs.len(), 2, "one private TMPDIR per job");
    let pids: Vec<i32> = jobs.iter().map(|j| j.pid() as i32).collect();

    // A short grace overrides the jobs' 60 s: ignore-term.js needs the KILL.
    let report = shutdown_all(Duration::from_millis(300)).await;
    assert_eq!(report.stopped, 2);
    assert_eq!(report.still_running, 0);
    for j in jobs {
        let o = tokio::time::timeout(Duration::from_secs(30), j.wait())
            .await
            .unwrap();
        assert_eq!(o.reason, EndReason::Shutdown);
    }
    for p in pids {
        assert!(!common::alive(p));
    }
    for d in tmpdirs {
        assert!(!d.exists(), "{d:?} not removed");
    }
    assert_eq!(supervisor::live_jobs(), 0);
}
