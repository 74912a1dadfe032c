//! `POST /workflow/batch` over a real socket: results in input order, at
//! most `batch_concurrency` at once, failFast cancels the rest, item
//! validation errors fail only that item.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use serde_json::{Value, json};

async fn post(server: &TestServer, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url("/workflow/batch"))
        .json(&body)
        .send()
        .await
        .expect("send");
    (r.status().as_u16(), r.json().await.expect("json"))
}

#[tokio::test]
async fn results_keep_input_order() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let (status, body) = post(
        &server,
        json!({"workflows": [
            {"type": "slow", "parameters": {"steps": 3, "ms": 60}, "id": "a"},
            {"type": "echo", "parameters": {"n": 2}},
            {"type": "nope", "parameters": {}, "id": "c"},
            {"type": "fail", "parameters": {}, "id": "d"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let results = body["results"].as_array().expect("results");
    assert_eq!(body["data"]["results"], body["results"]);
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["workflowId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "workflow_1", "c", "d"]);
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[0]["result"], json!({"steps": 3}));
    assert_eq!(results[1]["result"], json!({"echo": {"n": 2}}));
    assert_eq!(results[2]["success"], false);
    assert_eq!(results[2]["error"]["type"], "NotFound");
    assert_eq!(results[2]["jobId"], Value::Null);
    assert_eq!(results[3]["error"]["type"], "ExecutionError");
    assert_eq!(results[3]["error"]["details"]["exitCode"], 3);
    assert!(results[3]["jobId"].is_string());
}

#[tokio::test]
async fn fail_fast_cancels_the_rest() {
    let mut s = settings();
    s.batch_concurrency = 2;
    let (state, fake) = fake_state(s);
    let server = TestServer::start(state).await;
    let (status, body) = post(
        &server,
        json!({"workflows": [
            {"type": "hang", "parameters": {}},
            {"type": "fail", "parameters": {"ms": 200}},
            {"type": "hang", "parameters": {}},
            {"type": "echo", "parameters": {}},
        ], "options": {"failFast": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(
        r[0]["error"]["type"], "Conflict",
        "the running one was cancelled: {body}"
    );
    assert!(r[0]["jobId"].is_string());
    assert_eq!(r[1]["error"]["type"], "ExecutionError");
    // Items 2 and 3 waited for a permit (concurrency 2) and never ran.
    for i in [2, 3] {
        assert_eq!(r[i]["success"], false);
        assert_eq!(r[i]["jobId"], Value::Null, "{body}");
        assert!(
            r[i]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("failFast")
        );
    }
    assert_eq!(fake.job_count(), 2);
    assert!(fake.states().iter().all(|s| s.is_terminal()));
}

#[tokio::test]
async fn batch_size_is_1_to_10() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let (status, body) = post(&server, json!({"workflows": []})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "ValidationError");
    let eleven: Vec<Value> = (0..11)
        .map(|_| json!({"type": "echo", "parameters": {}}))
        .collect();
    let (status, _) = post(&server, json!({"workflows": eleven})).await;
    assert_eq!(status, 400);
}

/// An item's `id` may be a number (`"id": 7`, as a JS client writes it):
/// the batch runs and the item's `workflowId` is `"7"`; any other type is
/// still a 400 for the whole body.
#[tokio::test]
async fn a_numeric_item_id_is_echoed_as_its_workflow_id() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let (status, body) = post(
        &server,
        json!({"workflows": [
            {"type": "echo", "parameters": {"n": 1}, "id": 7},
            {"type": "echo", "parameters": {"n": 2}, "id": "b"},
            {"type": "echo", "parameters": {"n": 3}, "id": null},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["workflowId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["7", "b", "workflow_2"], "{body}");

    let (status, body) = post(
        &server,
        json!({"workflows": [{"type": "echo", "parameters": {}, "id": {"x": 1}}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "ValidationError");
}
