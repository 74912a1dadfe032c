//! `/metrics` through the real runtime: a workflow's running gauge follows
//! its jobs down to 0 (it used to keep its last non-zero value once the
//! workflow had nothing running, a stale series), and every configured
//! workflow has one from the start.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::real::real;
use common::*;

/// `tsbridge_jobs_running_by_workflow{workflow="<wf>"}` in a scrape, if there.
async fn running_gauge(state: &tsbridge_server::AppState, wf: &str) -> Option<f64> {
    let a = call(state, "GET", "/metrics", None, None).await;
    let text = a.body.as_str().expect("text body").to_owned();
    let prefix = format!("tsbridge_jobs_running_by_workflow{{workflow=\"{wf}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_s_running_gauge_goes_back_to_zero() {
    let metrics = tsbridge_server::install_recorder().unwrap();
    let r = real("").await;
    let state = r.state.clone().with_metrics(metrics);
    // Every configured workflow is there before any job ran.
    assert_eq!(running_gauge(&state, "typed").await, Some(0.0));
    assert_eq!(running_gauge(&state, "work").await, Some(0.0));

    let a = call(
        &state,
        "POST",
        "/v1/jobs",
        Some(r#"{"workflow":"work","parameters":{"hang":true}}"#),
        None,
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    let id = a.body["data"]["jobId"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while running_gauge(&state, "work").await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never 1 while it runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let a = call(&state, "POST", &format!("/v1/jobs/{id}/cancel"), None, None).await;
    assert!(a.status.is_success(), "{:?}", a.body);
    let v = tokio::time::timeout(Duration::from_secs(60), r.rt.wait(id.parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert!(v.state.is_terminal(), "{v:?}");
    // The job is over: a scrape soon says so (the dispatcher's counts
    // follow its end).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let g = running_gauge(&state, "work").await;
        if g == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge stays at {g:?} with nothing running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
