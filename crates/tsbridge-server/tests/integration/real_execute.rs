//! Synchronous runs and every error type the real runtime produces, through
//! the router (`oneshot`) with real node children: 200 with the result, 400
//! schema, 403 paths and env, 404, 408, 409, 429 with Retry-After, 500 with
//! exit code and stderr, 503 unavailable.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::real::{fixtures, real};
use common::*;
use serde_json::json;
use tsbridge_proto::JobState;

#[tokio::test]
async fn execute_runs_a_real_child_and_answers_its_result() {
    let r = real("").await;
    let a = execute(
        &r.state,
        "work",
        json!({"progress": 2, "result": {"ok": 1}}),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let d = &a.body["data"];
    assert_eq!(d["success"], true);
    assert_eq!(d["result"], json!({"ok": 1}));
    assert_eq!(d["exitCode"], 0);
    assert_eq!(d["attempts"], 1);
    assert!(d["processId"].as_u64().is_some_and(|p| p > 0), "{d}");
    assert!(d["executionTime"].is_u64());
    let id = d["jobId"].as_str().unwrap();
    let j = call(&r.state, "GET", &format!("/v1/jobs/{id}"), None, None).await;
    assert_eq!(j.body["data"]["state"], "succeeded");
    assert_eq!(j.body["data"]["progress"]["current"], 2);
}

#[tokio::test]
async fn nonzero_exit_is_500_with_exit_code_and_stderr_tail() {
    let r = real("").await;
    let a = execute(&r.state, "work", json!({"exit": 3, "stderr": "it broke\n"})).await;
    assert_failure(&a, 500, "ExecutionError");
    let d = &a.body["error"]["details"];
    assert_eq!(d["exitCode"], 3, "{d}");
    assert!(d["stderr"].as_str().unwrap().contains("it broke"), "{d}");
    assert!(d["jobId"].is_string());
}

#[tokio::test]
async fn timeout_is_408() {
    let r = real("").await;
    let body = json!({"parameters": {"hang": true}, "options": {"timeout": "300ms"}}).to_string();
    let a = execute_with(&r.state, "work", &body).await;
    assert_failure(&a, 408, "TimeoutError");
    assert!(a.body["error"]["details"]["jobId"].is_string());
}

#[tokio::test]
async fn refused_requests_are_400_403_404_503_and_run_nothing() {
    let r = real("").await;
    let a = execute(&r.state, "typed", json!({"n": "x"})).await;
    assert_failure(&a, 400, "ValidationError");
    assert!(a.body["error"]["details"].is_object() || a.body["error"]["details"].is_array());

    let sibling = format!("{}-evil/data.csv", fixtures().display());
    for bad in ["../../etc/passwd", sibling.as_str(), "/etc/passwd"] {
        let a = execute(&r.state, "work", json!({"inputPath": bad})).await;
        assert_failure(&a, 403, "SecurityError");
    }
    let body =
        json!({"parameters": {}, "options": {"env": {"LD_PRELOAD": "/tmp/x.so"}}}).to_string();
    let a = execute_with(&r.state, "work", &body).await;
    assert_failure(&a, 403, "SecurityError");

    // SPEC §4's memory option: a bare number is bytes, 512 is refused.
    for memory in [json!(512), json!("lots")] {
        let body = json!({"parameters": {}, "options": {"memory": memory}}).to_string();
        let a = execute_with(&r.state, "work", &body).await;
        assert_failure(&a, 400, "ValidationError");
    }

    let a = execute(&r.state, "nope", json!({})).await;
    assert_failure(&a, 404, "NotFound");

    let a = execute(&r.state, "limited", json!({})).await;
    assert_failure(&a, 503, "Unavailable");

    let list = call(&r.state, "GET", "/v1/jobs", None, None).await;
    assert_eq!(list.body["data"]["jobs"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn cancel_gives_the_final_state_then_409() {
    let r = real("").await;
    let a = post(
        &r.state,
        "/v1/jobs",
        r#"{"workflow":"work","parameters":{"hang":true}}"#,
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["data"]["jobId"].as_str().unwrap().to_owned();
    let a = cancel(&r.state, &id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["data"]["state"], "cancelled");
    let a = cancel(&r.state, &id).await;
    assert_failure(&a, 409, "Conflict");
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
    let r = real("[defaults]\nconcurrency = 1\nqueue_limit = 1\n").await;
    let mut ids = Vec::new();
    let mut full = None;
    for _ in 0..10 {
        let a = post(
            &r.state,
            "/v1/jobs",
            r#"{"workflow":"work","parameters":{"hang":true}}"#,
        )
        .await;
        if a.status == 429 {
            full = Some(a);
            break;
        }
        assert_eq!(a.status, 202, "{a:?}");
        ids.push(a.body["data"]["jobId"].as_str().unwrap().to_owned());
    }
    let a = full.expect("the queue filled up");
    assert_failure(&a, 429, "QueueFull");
    let after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(after >= 1);
    for id in ids {
        let c = cancel(&r.state, &id).await;
        assert!(c.status == 200 || c.status == 409, "{c:?}");
    }
    for j in call(&r.state, "GET", "/v1/jobs", None, None).await.body["data"]["jobs"]
        .as_array()
        .unwrap()
    {
        assert_ne!(j["state"], json!(JobState::Running));
    }
}
