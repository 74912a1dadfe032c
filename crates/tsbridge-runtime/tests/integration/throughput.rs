//! Measurements, not checks of speed: run with
//! `cargo test -p tsbridge-runtime --test integration throughput:: -- --ignored --nocapture --test-threads 1`.
//! Each still asserts that the work was done.

use crate::common;

use std::time::Instant;

use chrono::Utc;
use common::*;
use serde_json::json;
use tsbridge_proto::{EventData, JobEvent, JobId, JobState};
use tsbridge_runtime::store::{JobStore, NewJob, StoredRequest};

#[tokio::test]
#[ignore = "measurement"]
async fn store_insert_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path()).await;
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        let id = JobId::new();
        store
            .insert_job(&NewJob {
                id,
                workflow: "w".into(),
                priority: 0,
                params: json!({"a": 1}),
                request: StoredRequest::default(),
                idempotency_key: None,
                max_attempts: 1,
                created_at: Utc::now(),
                event: JobEvent {
                    seq: 1,
                    job_id: id,
                    timestamp: Utc::now(),
                    data: EventData::State {
                        state: JobState::Queued,
                        reason: None,
                        attempt: None,
                    },
                },
            })
            .await
            .expect("insert");
    }
    let el = t.elapsed();
    println!(
        "store: {n} inserts in {el:?} = {:.0}/s, {:.3} ms each",
        n as f64 / el.as_secs_f64(),
        el.as_secs_f64() * 1000.0 / n as f64
    );
    assert_eq!(store.queued_jobs().await.expect("queued").len(), n);
}

#[tokio::test]
#[ignore = "measurement"]
async fn trivial_jobs_end_to_end() {
    let h = start(&format!(
        "[defaults]\nconcurrency = 2\n{}",
        workflow("job", "")
    ))
    .await;
    let n = 200;
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(h.submit("job", json!({})).await);
    }
    let submitted = t.elapsed();
    for id in &ids {
        assert_eq!(h.wait(*id).await.state, JobState::Succeeded);
    }
    let el = t.elapsed();
    println!(
        "runtime: {n} node jobs, concurrency 2: submitted in {submitted:?}, all done in {el:?} = {:.1} jobs/s",
        n as f64 / el.as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "measurement"]
async fn output_events_rate() {
    let h = start(&workflow("job", "")).await;
    let lines = 50_000;
    let t = Instant::now();
    let id = h.submit("job", json!({"lines": lines})).await;
    let v = h.wait(id).await;
    let el = t.elapsed();
    assert_eq!(v.state, JobState::Succeeded);
    let stored = h.rt.events_after(id, 0).await.expect("events");
    println!(
        "events: {lines} stdout lines -> job done in {el:?} ({:.0} lines/s), {} events kept (retention), last seq {}",
        lines as f64 / el.as_secs_f64(),
        stored.len(),
        stored.last().map_or(0, |e| e.seq)
    );
}

#[tokio::test]
#[ignore = "measurement"]
async fn bare_engine_for_comparison() {
    let script = fixtures().join("job.js");
    let n = 40;
    let t = Instant::now();
    for _ in 0..n {
        let spec = tsbridge_process::JobSpec::builder("/usr/bin/node")
            .arg(script.as_os_str())
            .cwd(fixtures())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .ipc(true)
            .build()
            .expect("spec");
        let o = tsbridge_process::run(spec).await.expect("run");
        assert!(o.success());
    }
    let el = t.elapsed();
    println!(
        "engine: {n} sequential node runs (ipc on) in {el:?} = {:.1} ms each",
        el.as_secs_f64() * 1000.0 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        let s = std::process::Command::new("/usr/bin/node")
            .arg(&script)
            .status()
            .expect("node");
        assert!(s.success());
    }
    let el = t.elapsed();
    println!(
        "std::process: {n} sequential node runs in {el:?} = {:.1} ms each",
        el.as_secs_f64() * 1000.0 / n as f64
    );
}
