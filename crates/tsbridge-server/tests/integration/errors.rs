//! Every error type through the router (`oneshot`), with the exact failure
//! body shape: `{"success":false,"error":{type,message,details?}}`.

#![allow(clippy::unwrap_used)]

use crate::common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::json;

#[tokio::test]
async fn bad_json_wrong_types_and_unknown_fields_are_400() {
    let (state, _) = fake_state(settings());
    let a = call(&state, "POST", "/v1/jobs", Some("{nope"), None).await;
    assert_failure(&a, 400, "ValidationError");
    assert!(a.message().contains("not valid JSON"));

    let a = post(&state, "/v1/jobs", r#"{"workflow": 5}"#).await;
    assert_failure(&a, 400, "ValidationError");
    assert!(a.message().contains("invalid type"));

    let a = call(
        &state,
        "POST",
        "/workflow/echo/execute",
        Some(r#"{"parameters":{},"bogus":1}"#),
        None,
    )
    .await;
    assert_failure(&a, 400, "ValidationError");
    assert!(a.message().contains("unknown field `bogus`"));

    let a = call(
        &state,
        "POST",
        "/workflow/echo/execute",
        Some(r#"{"parameters":{},"options":{"timeout":"soon"}}"#),
        None,
    )
    .await;
    assert_failure(&a, 400, "ValidationError");

    // Past Duration's range: a typed 400, not a panic of the handler.
    for body in [
        r#"{"parameters":{},"options":{"timeout":1e23}}"#,
        r#"{"parameters":{},"options":{"timeout":-1}}"#,
        r#"{"parameters":{},"options":{"memory":1e30}}"#,
    ] {
        let a = execute_with(&state, "echo", body).await;
        assert_failure(&a, 400, "ValidationError");
    }

    let a = call(&state, "POST", "/v1/jobs", None, None).await;
    assert_failure(&a, 400, "ValidationError");
}

/// SPEC §8 "All bodies are JSON": a valid JSON body declared as a type that
/// is not text (a multipart form, XML) is 400 `ValidationError` and submits
/// nothing; JSON types, no type, curl's default form type and fetch's
/// default for a string body (`text/plain;charset=UTF-8`), each with a JSON
/// body, are accepted, and a text body that is not JSON is still 400.
#[tokio::test]
async fn a_body_declared_as_not_json_is_400() {
    let (state, fake) = fake_state(settings());
    let body = r#"{"workflow":"echo","parameters":{}}"#;
    let post = |ct: Option<&str>| {
        let mut r = Request::post("/v1/jobs");
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.body(Body::from(body)).unwrap()
    };
    for ct in ["multipart/form-data; boundary=x", "application/xml"] {
        let a = send(&state, post(Some(ct))).await;
        assert_failure(&a, 400, "ValidationError");
        let message = a.message();
        assert!(message.contains("Content-Type"), "{ct}: {message}");
    }
    let a = send(
        &state,
        Request::post("/workflow/echo/execute")
            .header("content-type", "text/plain")
            .body(Body::from("parameters=1"))
            .unwrap(),
    )
    .await;
    assert_failure(&a, 400, "ValidationError");
    assert_eq!(fake.job_count(), 0, "nothing was submitted");

    for ct in [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("text/plain;charset=UTF-8"),
        Some("text/plain"),
    ] {
        let a = send(&state, post(ct)).await;
        assert_eq!(a.status, 202, "{ct:?}: {:?}", a.body);
    }
    assert_eq!(fake.job_count(), 6);
}

#[tokio::test]
async fn schema_violations_are_400_with_details() {
    let (state, _) = fake_state(settings());
    let a = execute(&state, "schema", json!({})).await;
    assert_failure(&a, 400, "ValidationError");
    assert_eq!(a.body["error"]["details"][0]["path"], "/n");
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let (state, _) = fake_state(with_token(settings()));
    let a = call(&state, "GET", "/v1/jobs", None, None).await;
    assert_failure(&a, 401, "Unauthorized");
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"tsbridge\"");
    let a = call(&state, "GET", "/v1/jobs", None, Some("wrong")).await;
    assert_failure(&a, 401, "Unauthorized");
    // ?token= is for streams only.
    let a = call(
        &state,
        "GET",
        &format!("/v1/jobs?token={TOKEN}"),
        None,
        None,
    )
    .await;
    assert_failure(&a, 401, "Unauthorized");
    let a = call(&state, "GET", "/v1/jobs", None, Some(TOKEN)).await;
    assert_eq!(a.status, 200);
    // Liveness is open.
    let a = call(&state, "GET", "/healthz", None, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, json!({"success": true, "data": {"status": "ok"}}));
}

#[tokio::test]
async fn refused_paths_and_env_are_403() {
    let (state, fake) = fake_state(settings());
    for params in [
        json!({"inputPath": "../../etc/passwd"}),
        json!({"inputPath": "/srv/app-evil/data.csv"}),
    ] {
        let a = execute(&state, "echo", params).await;
        assert_failure(&a, 403, "SecurityError");
    }
    let body =
        json!({"parameters": {}, "options": {"env": {"LD_PRELOAD": "/tmp/evil.so"}}}).to_string();
    let a = execute_with(&state, "echo", &body).await;
    assert_failure(&a, 403, "SecurityError");
    assert!(a.message().contains("LD_PRELOAD"));
    assert_eq!(fake.job_count(), 0, "nothing ran");
}

#[tokio::test]
async fn unknown_things_are_404() {
    let (state, _) = fake_state(settings());
    let a = execute(&state, "nope", json!({})).await;
    assert_failure(&a, 404, "NotFound");
    let a = call(
        &state,
        "GET",
        "/v1/jobs/0190a5f6-0000-7000-8000-000000000000",
        None,
        None,
    )
    .await;
    assert_failure(&a, 404, "NotFound");
    let a = call(&state, "GET", "/v1/jobs/not-a-uuid", None, None).await;
    assert_failure(&a, 404, "NotFound");
    let a = call(&state, "GET", "/no/such/route", None, None).await;
    assert_failure(&a, 404, "NotFound");
    assert_eq!(a.body["error"]["message"], "no route GET /no/such/route");
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let (state, _) = fake_state(settings());
    let a = call(&state, "DELETE", "/v1/jobs", None, None).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.body["success"], false);
    assert!(a.message().contains("DELETE"));
}

#[tokio::test]
async fn timeout_is_408_with_job_id() {
    let (state, _) = fake_state(settings());
    let a = execute(&state, "timeout", json!({})).await;
    assert_failure(&a, 408, "TimeoutError");
    assert!(a.body["error"]["details"]["jobId"].is_string());
    assert_eq!(a.body["error"]["details"]["reason"], "timeout");
}

#[tokio::test]
async fn cancelling_a_finished_job_is_409() {
    let (state, _) = fake_state(settings());
    let a = execute(&state, "echo", json!({})).await;
    assert_eq!(a.status, 200);
    let id = a.body["data"]["jobId"].as_str().unwrap().to_owned();
    let a = cancel(&state, &id).await;
    assert_failure(&a, 409, "Conflict");
    assert_eq!(a.body["error"]["details"]["state"], "succeeded");
}

#[tokio::test]
async fn body_over_max_body_is_413() {
    let mut s = settings();
    s.max_body = 64;
    let (state, _) = fake_state(s);
    let big = json!({"workflow": "echo", "parameters": {"x": "y".repeat(200)}}).to_string();
    // With a Content-Length (refused before reading) ...
    let req = Request::post("/v1/jobs")
        .header("content-type", "application/json")
        .header("content-length", big.len().to_string())
        .body(Body::from(big.clone()))
        .unwrap();
    let a = send(&state, req).await;
    assert_failure(&a, 413, "PayloadTooLarge");
    // ... and without one (refused while reading).
    let req = Request::post("/v1/jobs").body(Body::from(big)).unwrap();
    let a = send(&state, req).await;
    assert_failure(&a, 413, "PayloadTooLarge");
}

#[tokio::test]
async fn resource_limit_is_413_with_stderr() {
    let (state, _) = fake_state(settings());
    let a = execute(&state, "oom", json!({})).await;
    assert_failure(&a, 413, "ResourceLimitError");
    assert_eq!(a.body["error"]["details"]["reason"], "memory_limit");
    assert_eq!(a.body["error"]["details"]["stderr"], "heap");
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
    let (state, _) = fake_state(settings());
    let a = post(&state, "/v1/jobs", r#"{"workflow":"full"}"#).await;
    assert_failure(&a, 429, "QueueFull");
    assert_eq!(a.headers["retry-after"], "3");
}

#[tokio::test]
async fn nonzero_exit_is_500_with_exit_code_and_stderr() {
    let (state, _) = fake_state(settings());
    let a = execute(&state, "fail", json!({})).await;
    assert_failure(&a, 500, "ExecutionError");
    let d = &a.body["error"]["details"];
    assert_eq!(d["exitCode"], 3);
    assert_eq!(d["signal"], json!(null));
    assert_eq!(d["stderr"], "boom: something broke\n");
    assert_eq!(d["reason"], "exited");
    assert_eq!(d["state"], "failed");
    assert!(d["jobId"].is_string());
    assert_eq!(a.body["error"]["message"], "process exited with code 3");

    let a = execute(&state, "signal", json!({})).await;
    assert_failure(&a, 500, "ExecutionError");
    assert_eq!(a.body["error"]["details"]["signal"], 9);
    assert_eq!(a.body["error"]["details"]["signalName"], "SIGKILL");
    assert!(a.message().contains("SIGKILL"));
}

/// Every signal with a name is named in an execute answer's details (and a
/// batch item's) as `GET /v1/jobs/:id` names it: SIGSYS is what seccomp
/// kills with, SIGPROF and SIGVTALRM what a profiler's timer does.
/// Regression: the execute route had a table of its own that named 17
/// signals, so these came with `signal` and no `signalName`.
#[tokio::test]
async fn every_named_signal_is_named_in_the_error_details() {
    let (state, _) = fake_state(settings());
    for (n, name) in [
        (31, "SIGSYS"),
        (27, "SIGPROF"),
        (26, "SIGVTALRM"),
        (9, "SIGKILL"),
    ] {
        let a = execute(&state, "signal", json!({ "signal": n })).await;
        assert_failure(&a, 500, "ExecutionError");
        let d = &a.body["error"]["details"];
        assert_eq!(d["signal"], n);
        assert_eq!(d["signalName"], name, "{}", a.body);
        let id = d["jobId"].as_str().unwrap().to_owned();
        let job = call(&state, "GET", &format!("/v1/jobs/{id}"), None, None).await;
        assert_eq!(job.body["data"]["signalName"], name, "{}", job.body);

        let b = post(
            &state,
            "/workflow/batch",
            &json!({"workflows": [{"type": "signal", "parameters": {"signal": n}}]}).to_string(),
        )
        .await;
        assert_eq!(b.status, 200);
        let d = &b.body["results"][0]["error"]["details"];
        assert_eq!(d["signalName"], name, "{}", b.body);
    }
}

#[tokio::test]
async fn internal_errors_hide_internals_unless_dev() {
    let (state, _) = fake_state(settings());
    let a = post(&state, "/v1/jobs", r#"{"workflow":"broken"}"#).await;
    assert_failure(&a, 500, "InternalError");
    assert_eq!(a.body["error"]["message"], "internal error");
    let text = a.body.to_string();
    assert!(
        !text.contains("SELECT") && !text.contains("/var/lib"),
        "{text}"
    );

    // A spawn failure is not an internal error: it says why the program
    // did not start (spawn_failure.rs runs real ones).
    let a = execute(&state, "spawnfail", json!({})).await;
    assert_failure(&a, 500, "ExecutionError");
    assert_eq!(a.body["error"]["details"]["reason"], "spawn_failure");
    assert!(a.body["error"]["details"]["jobId"].is_string());

    let mut s = settings();
    s.dev = true;
    let (state, _) = fake_state(s);
    let a = post(&state, "/v1/jobs", r#"{"workflow":"broken"}"#).await;
    assert_failure(&a, 500, "InternalError");
    assert!(a.message().contains("SELECT"));
}

#[tokio::test]
async fn unavailable_workflow_is_503() {
    let (state, _) = fake_state(settings());
    let a = execute(&state, "unavail", json!({})).await;
    assert_failure(&a, 503, "Unavailable");
}

#[tokio::test]
async fn invalid_list_filters_are_400() {
    let (state, _) = fake_state(settings());
    let a = call(&state, "GET", "/v1/jobs?state=done", None, None).await;
    assert_failure(&a, 400, "ValidationError");
    let a = call(&state, "GET", "/v1/jobs?limit=0", None, None).await;
    assert_failure(&a, 400, "ValidationError");
}

/// Every body of the API is a JSON object, and so are `parameters`: over a
/// real socket, a body that is an array (which serde would read as the
/// struct's fields in order) or parameters that are a number, a string or a
/// list are 400, and nothing is submitted. Absent or null parameters are `{}`.
#[tokio::test]
async fn a_body_or_parameters_that_are_not_an_object_are_400() {
    let (state, fake) = fake_state(settings());
    let server = TestServer::start(state).await;
    let http = reqwest::Client::new();
    let post = async |path: &str, body: &str| {
        let r = http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        (status, v)
    };
    let refused = [
        ("/v1/jobs", r#"["echo", {}]"#, "got an array"),
        ("/workflow/echo/execute", r#"[{"a": 1}]"#, "got an array"),
        ("/workflow/batch", r#"[[["echo", {}]]]"#, "got an array"),
        ("/v1/jobs", r#" "echo""#, "got a string"),
        (
            "/v1/jobs",
            r#"{"workflow":"echo","parameters":5}"#,
            "expected a JSON object",
        ),
        (
            "/v1/jobs",
            r#"{"workflow":"echo","parameters":"a=1"}"#,
            "expected a JSON object",
        ),
        (
            "/workflow/echo/execute",
            r#"{"parameters":[1,2]}"#,
            "expected a JSON object",
        ),
        (
            "/workflow/batch",
            r#"{"workflows":[{"type":"echo","parameters":true}]}"#,
            "expected a JSON object",
        ),
    ];
    for (path, body, says) in refused {
        let (status, v) = post(path, body).await;
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["type"], "ValidationError", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{path} {body}: {message}");
    }
    assert_eq!(fake.job_count(), 0, "nothing was submitted");
    for body in [
        r#"{"workflow":"echo"}"#,
        r#"{"workflow":"echo","parameters":null}"#,
    ] {
        let (status, v) = post("/v1/jobs", body).await;
        assert_eq!(status, 202, "{body}: {v}");
    }
}
