//! Graceful shutdown with the real runtime: `serve` stops taking requests,
//! drains the runtime (running jobs end with reason `shutdown`, so their
//! synchronous callers get 503), and returns in bounded time.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::real::real;
use common::*;
use serde_json::{Value, json};
use tsbridge_proto::JobState;

#[tokio::test]
async fn shutdown_drains_and_answers_in_flight_runs() {
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let url = server.url("/workflow/work/execute");
    let in_flight = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .json(&json!({"parameters": {"hang": true}}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    let rt = r.rt.clone();
    let id = eventually(|| async {
        let list = rt.list(Default::default()).await.ok()?;
        list.jobs
            .iter()
            .find(|j| j.state == JobState::Running)
            .map(|j| j.job_id)
    })
    .await;
    server.stop().await.expect("serve returns Ok");
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), in_flight)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "Unavailable");
    assert_eq!(body["error"]["details"]["reason"], "shutdown");
    assert_eq!(body["error"]["details"]["jobId"], id.to_string());
    let v = r.rt.get(id).await.unwrap();
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.reason, Some(tsbridge_proto::EndReason::Shutdown));
}

#[tokio::test]
async fn a_client_that_hangs_up_on_execute_cancels_its_job() {
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let short = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let err = short
        .post(server.url("/workflow/work/execute"))
        .json(&json!({"parameters": {"hang": true}}))
        .send()
        .await
        .expect_err("the client gives up");
    assert!(err.is_timeout());
    let rt = r.rt.clone();
    let v = eventually(|| async {
        let list = rt.list(Default::default()).await.ok()?;
        let j = list.jobs.into_iter().next()?;
        j.state.is_terminal().then_some(j)
    })
    .await;
    assert_eq!(v.state, JobState::Cancelled);
}

/// The stop signal `serve` is given (SIGTERM in `tsbridge serve`) with no
/// connection open: `serve` drains the runtime before it returns, every
/// time. Regression: axum awaits the signal in a task of its own, which
/// cancelled the stop token and let the server end; when that ran while
/// `serve` was between its look at the token and its poll of the server,
/// the ended server won and `serve` returned at once, skipping the
/// runtime's shutdown: the running job stayed `running` in the store (a
/// restart found it `interrupted`) and its cgroup stayed. A signal that is
/// ready at once makes the window the first poll; several rounds, since
/// the outcome depended on which thread ran first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_signal_drains_the_runtime_with_no_connection_open() {
    for round in 0..30 {
        let r = real("").await;
        let id =
            r.rt.submit("work", json!({"hang": true}), Default::default())
                .await
                .expect("submit")
                .job_id;
        let rt = r.rt.clone();
        eventually(|| async { (rt.get(id).await.ok()?.state == JobState::Running).then_some(()) })
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let served = tsbridge_server::serve(listener, r.state.clone(), std::future::ready(()));
        tokio::time::timeout(Duration::from_secs(60), served)
            .await
            .expect("serve returns in time")
            .expect("serve returns Ok");
        let v = r.rt.get(id).await.unwrap();
        assert_eq!(
            (v.state, v.reason),
            (JobState::Failed, Some(tsbridge_proto::EndReason::Shutdown)),
            "round {round}: serve returned before the runtime's shutdown"
        );
    }
}
