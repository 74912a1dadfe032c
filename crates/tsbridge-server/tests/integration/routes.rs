//! Every route's success answer through the router (`oneshot`), with
//! snapshot-like assertions on the exact JSON shapes.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn execute_answers_the_documented_shape() {
    let (state, _) = fake_state(settings());
    let a = call(
        &state,
        "POST",
        "/workflow/echo/execute",
        Some(r#"{"parameters":{"a":1},"options":{"timeout":"2s","priority":3}}"#),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(keys(&a.body), ["data", "success"]);
    assert_eq!(a.body["success"], true);
    let d = &a.body["data"];
    assert_eq!(
        keys(d),
        [
            "attempts",
            "executionTime",
            "exitCode",
            "jobId",
            "processId",
            "resources",
            "result",
            "success"
        ]
    );
    assert_eq!(d["success"], true);
    assert_eq!(d["result"], json!({"echo": {"a": 1}}));
    assert_eq!(d["exitCode"], 0);
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["processId"], 4242);
    assert_eq!(d["executionTime"], 12);
    assert_eq!(
        keys(&d["resources"]),
        ["cpuTimeMs", "peakMemoryBytes", "wallTimeMs"]
    );
}

#[tokio::test]
async fn submit_get_list_cancel() {
    let (state, _) = fake_state(settings());
    let a = post(&state, "/v1/jobs", r#"{"workflow":"hang","parameters":{}}"#).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(keys(&a.body["data"]), ["jobId", "state"]);
    assert_eq!(a.body["data"]["state"], "queued");
    let id = a.body["data"]["jobId"].as_str().unwrap().to_owned();
    assert_eq!(a.headers["location"], format!("/v1/jobs/{id}"));

    let a = call(&state, "GET", &format!("/v1/jobs/{id}"), None, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        keys(&a.body["data"]),
        [
            "attempts",
            "createdAt",
            "error",
            "exitCode",
            "finishedAt",
            "jobId",
            "output",
            "priority",
            "processId",
            "progress",
            "reason",
            "resources",
            "result",
            "signal",
            "startedAt",
            "state",
            "workflow"
        ]
    );
    assert_eq!(
        keys(&a.body["data"]["output"]),
        [
            "stderr",
            "stderrDroppedBytes",
            "stderrTruncated",
            "stdout",
            "stdoutDroppedBytes",
            "stdoutTruncated"
        ]
    );

    let a = call(
        &state,
        "GET",
        "/v1/jobs?state=running&workflow=hang&limit=10",
        None,
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(keys(&a.body["data"]), ["jobs", "nextCursor"]);

    let a = cancel(&state, &id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["data"]["state"], "cancelled");
    assert_eq!(a.body["data"]["reason"], "cancelled");
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_marked_as_a_replay() {
    let (state, fake) = fake_state(settings());
    let body = r#"{"workflow":"hang","options":{"idempotencyKey":"k-1"}}"#;
    let first = call(&state, "POST", "/v1/jobs", Some(body), None).await;
    assert_eq!(first.status, 202);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = call(&state, "POST", "/v1/jobs", Some(body), None).await;
    assert_eq!(again.status, 202, "a replay answers like the first submit");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(first.body["data"]["jobId"], again.body["data"]["jobId"]);
    assert_eq!(fake.job_count(), 1);
}

#[tokio::test]
async fn list_paginates_newest_first() {
    let (state, _) = fake_state(settings());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let a = execute(&state, "echo", json!({})).await;
        ids.push(a.body["data"]["jobId"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut uri = "/v1/jobs?limit=2".to_owned();
    loop {
        let a = call(&state, "GET", &uri, None, None).await;
        assert_eq!(a.status, 200);
        for j in a.body["data"]["jobs"].as_array().unwrap() {
            seen.push(j["jobId"].as_str().unwrap().to_owned());
        }
        match a.body["data"]["nextCursor"].as_str() {
            Some(c) => uri = format!("/v1/jobs?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn service_routes() {
    let (state, _) = fake_state(settings());
    let a = call(&state, "GET", "/v1/workflows", None, None).await;
    assert_eq!(a.status, 200);
    let w = &a.body["data"]["workflows"][0];
    assert_eq!(
        keys(w),
        [
            "concurrency",
            "mode",
            "name",
            "paramsSchema",
            "pathParams",
            "priority",
            "runtime",
            "status"
        ]
    );

    let a = call(&state, "GET", "/readyz", None, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        keys(&a.body["data"]),
        ["isolation", "ready", "store", "workflows"]
    );
    assert_eq!(
        keys(&a.body["data"]["isolation"]),
        [
            "cgroups",
            "cpu",
            "landlock",
            "memory",
            "network",
            "pidNamespace",
            "pids",
            "seccomp"
        ]
    );
    assert_eq!(
        a.body["data"]["workflows"]["unavail"],
        "unavailable: no cgroup"
    );

    let a = call(&state, "GET", "/openapi.json", None, None).await;
    assert_eq!(a.status, 200);
    assert!(a.body["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/workflow/{type}/execute",
        "/workflow/batch",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
        "/v1/ws",
        "/v1/workflows",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(a.body["paths"][p].is_object(), "{p} missing from openapi");
    }
    // Statuses the routes answer that a client generated from the document
    // must know (the idempotency key's 409, the WebSocket's non-handshake
    // 400); a replayed key is 202 like a new job, not the 200 it once said.
    let responses = |method: &str, path: &str| a.body["paths"][path][method]["responses"].clone();
    assert!(responses("post", "/v1/jobs")["409"].is_object());
    assert!(responses("post", "/v1/jobs")["200"].is_null());
    assert!(responses("get", "/v1/ws")["400"].is_object());
    let summary = a.body["paths"]["/v1/jobs"]["post"]["summary"].to_string();
    assert!(!summary.contains("200"), "{summary}");
    assert!(a.body["components"]["schemas"]["JobView"].is_object());
    assert!(a.body["components"]["securitySchemes"]["bearer"].is_object());

    // Every protected operation documents its 401, every one with a body its
    // 413 PayloadTooLarge (both answered by layers, not by the handlers).
    for (path, item) in a.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            if path != "/healthz" {
                assert!(responses["401"].is_object(), "{method} {path}: no 401");
            }
            if op.get("requestBody").is_some() {
                assert!(responses["413"].is_object(), "{method} {path}: no 413");
            }
        }
    }
}

#[tokio::test]
async fn readyz_is_503_when_not_ready() {
    let (state, fake) = fake_state(settings());
    tsbridge_server::Backend::shutdown(&fake, std::time::Duration::ZERO).await;
    let a = call(&state, "GET", "/readyz", None, None).await;
    assert_failure_with_data(&a);
}

fn assert_failure_with_data(a: &Answer) {
    assert_eq!(a.status, 503);
    assert_eq!(a.body["success"], false);
    assert_eq!(a.body["error"]["type"], "Unavailable");
    assert_eq!(a.body["data"]["ready"], false);
}

#[tokio::test]
async fn metrics_render_prometheus_text() {
    let handle = tsbridge_server::install_recorder().expect("recorder");
    let (state, _) = fake_state(settings());
    let state = state.with_metrics(handle);
    let a = execute(&state, "echo", json!({})).await;
    assert_eq!(a.status, 200);
    let a = call(&state, "GET", "/metrics", None, None).await;
    assert_eq!(a.status, 200);
    let text = a.body.as_str().expect("text body");
    assert!(text.contains("tsbridge_http_requests_total{"), "{text}");
    assert!(
        text.contains("route=\"/workflow/{type}/execute\""),
        "{text}"
    );
    assert!(
        text.contains("tsbridge_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("tsbridge_queue_depth"), "{text}");
    assert!(
        text.contains("tsbridge_pool_workers{workflow=\"pooled\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("tsbridge_pool_workers_by_state{workflow=\"pooled\",state=\"busy\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tsbridge_pool_worker_starts_total{workflow=\"pooled\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("tsbridge_pool_worker_crashes_total{workflow=\"pooled\"} 1"),
        "{text}"
    );
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
}

/// The served OpenAPI document describes what the server really takes and
/// answers: request bodies it accepts (a timeout or memory as a number, a
/// batch item's numeric id) validate against the document's request schemas
/// (they used to say "string" only), one it refuses does not, and the
/// answers validate against the envelopes. Over a real socket.
#[tokio::test]
async fn the_openapi_document_accepts_what_the_server_accepts() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let http = reqwest::Client::new();
    let send = async |method: reqwest::Method, path: &str, body: Option<&Value>| {
        let mut rb = http.request(method, server.url(path));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };

    let (status, doc) = send(reqwest::Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let validator = |name: &str| {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{name}"),
            "components": doc["components"],
        });
        jsonschema::validator_for(&schema).unwrap()
    };
    let check = |name: &str, v: &Value| {
        let errors: Vec<String> = validator(name)
            .iter_errors(v)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}\n{v}");
    };
    let submit = json!({"workflow": "echo", "parameters": {"a": 1},
        "options": {"timeout": 1500, "memory": 1048576, "priority": 2, "idempotencyKey": "k"}});
    check("SubmitRequest", &submit);
    let (status, answer) = send(reqwest::Method::POST, "/v1/jobs", Some(&submit)).await;
    assert_eq!(status, 202, "{answer}");
    check("SubmitEnvelope", &answer);
    let id = answer["data"]["jobId"].as_str().unwrap().to_owned();

    let execute = json!({"parameters": {"a": 1}, "options": {"timeout": "2s", "memory": "64MiB"}});
    check("ExecuteRequest", &execute);
    let (status, answer) = send(
        reqwest::Method::POST,
        "/workflow/echo/execute",
        Some(&execute),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    check("ExecuteEnvelope", &answer);

    let batch = json!({"workflows": [{"type": "echo", "parameters": {}, "id": 7}, {"type": "echo", "id": "b"}],
        "options": {"failFast": true, "timeout": 1000}});
    check("BatchRequest", &batch);
    let (status, answer) = send(reqwest::Method::POST, "/workflow/batch", Some(&batch)).await;
    assert_eq!(status, 200, "{answer}");
    check("BatchEnvelope", &answer);
    assert_eq!(answer["results"][0]["workflowId"], "7");

    let (status, answer) = send(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, 200, "{answer}");
    check("JobEnvelope", &answer);
    let (status, answer) = send(reqwest::Method::GET, "/v1/jobs?limit=5", None).await;
    assert_eq!(status, 200, "{answer}");
    check("JobListEnvelope", &answer);

    // Refused by both.
    let bad = json!({"workflow": "echo", "parameters": 5});
    assert!(!validator("SubmitRequest").is_valid(&bad));
    let (status, answer) = send(reqwest::Method::POST, "/v1/jobs", Some(&bad)).await;
    assert_eq!(status, 400, "{answer}");
    check("Failure", &answer);
}
