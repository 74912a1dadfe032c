//! Measurements (ignored by default; run with
//! `cargo test -p tsbridge-server --release --test integration measure:: -- --ignored --nocapture --test-threads 1`):
//! HTTP round trip of a synchronous run of a real node child versus the
//! bare `node` spawn, and how fast a job's events reach an SSE client.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::real::{fixtures, real};
use common::*;
use futures::StreamExt;
use serde_json::json;
use tsbridge_client::Client;
use tsbridge_proto::api::{ExecuteRequest, SubmitRequest};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn execute_round_trip_versus_bare_node() {
    const N: usize = 30;
    let mut bare = Vec::new();
    for _ in 0..N {
        let t = Instant::now();
        let out = tokio::process::Command::new("node")
            .arg(fixtures().join("work.js"))
            .args(["--params", "{}"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        bare.push(t.elapsed());
    }
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let client = Client::new(format!("http://{}", server.addr), None).unwrap();
    let mut api = Vec::new();
    for _ in 0..N {
        let t = Instant::now();
        let done = client
            .execute(
                "work",
                &ExecuteRequest {
                    parameters: json!({}),
                    options: None,
                },
            )
            .await
            .unwrap();
        assert!(done.success);
        api.push(t.elapsed());
    }
    bare.sort();
    api.sort();
    println!(
        "bare node spawn: p50 {:?} p95 {:?}; POST /workflow/work/execute: p50 {:?} p95 {:?} (n = {N})",
        percentile(&bare, 0.5),
        percentile(&bare, 0.95),
        percentile(&api, 0.5),
        percentile(&api, 0.95)
    );
}

#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn sse_event_throughput() {
    const STEPS: u64 = 5000;
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let client = Client::new(format!("http://{}", server.addr), None).unwrap();
    let t = Instant::now();
    let s = client
        .submit(&SubmitRequest {
            workflow: "work".into(),
            parameters: json!({"progress": STEPS, "stepMs": 0}),
            options: None,
        })
        .await
        .unwrap();
    let events: Vec<_> = client.follow_events(s.job_id, None).collect().await;
    let took = t.elapsed();
    let n = events.len();
    assert!(events.into_iter().all(|e| e.is_ok()));
    assert!(n as u64 > STEPS);
    let view = client.get(s.job_id).await.unwrap();
    let job_wall = match (view.started_at, view.finished_at) {
        (Some(a), Some(b)) => (b - a).num_milliseconds(),
        _ => -1,
    };
    println!(
        "{n} events of one job streamed over SSE in {took:?} ({:.0} events/s; the job itself ran {job_wall} ms)",
        n as f64 / took.as_secs_f64()
    );
    // Replay of the stored events of the finished job.
    let t = Instant::now();
    let replayed = client.follow_events(s.job_id, None).count().await;
    println!(
        "replay of {replayed} stored events over SSE: {:?}",
        t.elapsed()
    );
}
