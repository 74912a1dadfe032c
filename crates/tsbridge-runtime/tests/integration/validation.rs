//! Requests refused before anything is stored: unknown workflow, schema
//! violations (with the validator's errors in details), path parameters
//! outside the root, forbidden or unlisted request env, a workflow whose
//! limits cannot be enforced here.

use crate::common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;
use tsbridge_proto::ErrorType;
use tsbridge_proto::api::JobOptions;
use tsbridge_runtime::ListQuery;

fn opts_env(k: &str, v: &str) -> JobOptions {
    JobOptions {
        env: Some(BTreeMap::from([(k.to_owned(), v.to_owned())])),
        ..JobOptions::default()
    }
}

#[tokio::test]
async fn refused_requests_store_nothing() {
    let toml = format!(
        "{}{}",
        workflow(
            "job",
            "params_schema = { type = \"object\", properties = { n = { type = \"integer\" } }, required = [\"n\"] }\n\
             path_params = [\"inputPath\"]\nenv = { request = [\"JOB_MODE\"] }"
        ),
        workflow("limited", "limits = { memory = \"64MiB\" }")
    );
    let h = start(&toml).await;

    let e =
        h.rt.submit("nope", json!({}), JobOptions::default())
            .await
            .expect_err("unknown");
    assert_eq!(e.error_type(), ErrorType::NotFound);

    let e =
        h.rt.submit("job", json!({"n": "x"}), JobOptions::default())
            .await
            .expect_err("schema");
    assert_eq!(e.error_type(), ErrorType::ValidationError);
    let details = e.details().expect("details");
    assert_eq!(
        details["errors"].as_array().map(Vec::len),
        Some(1),
        "{details}"
    );
    let e =
        h.rt.submit("job", json!({}), JobOptions::default())
            .await
            .expect_err("required");
    assert_eq!(e.error_type(), ErrorType::ValidationError);

    for bad in ["../../../etc/passwd", "/etc/passwd", "common/../../x"] {
        let e =
            h.rt.submit(
                "job",
                json!({"n": 1, "inputPath": bad}),
                JobOptions::default(),
            )
            .await
            .expect_err("outside");
        assert_eq!(e.error_type(), ErrorType::SecurityError, "{bad}");
        assert!(
            !e.to_string().contains(&fixtures().display().to_string()),
            "no host path: {e}"
        );
    }

    // Every element of an array path parameter is a path: a nested array
    // or an object would reach the program unchecked.
    for bad in [
        json!([["/etc/passwd"]]),
        json!(["job.js", {"p": "/etc/passwd"}]),
        json!(["job.js", 5]),
    ] {
        let e =
            h.rt.submit(
                "job",
                json!({"n": 1, "inputPath": bad}),
                JobOptions::default(),
            )
            .await
            .expect_err("not a path");
        assert_eq!(e.error_type(), ErrorType::ValidationError, "{bad}: {e}");
    }
    let e =
        h.rt.submit(
            "job",
            json!({"n": 1, "inputPath": ["job.js", "/etc/passwd"]}),
            JobOptions::default(),
        )
        .await
        .expect_err("outside");
    assert_eq!(e.error_type(), ErrorType::SecurityError);

    // Parameters that cannot fit one command-line argument (Linux: 128 KiB)
    // are refused at submit with 413, not failed at every spawn (E2BIG).
    let e =
        h.rt.submit(
            "job",
            json!({"n": 1, "blob": "x".repeat(200 * 1024)}),
            JobOptions::default(),
        )
        .await
        .expect_err("too large");
    assert_eq!(e.error_type(), ErrorType::PayloadTooLarge, "{e}");
    assert!(e.to_string().contains("command line"), "{e}");

    let e =
        h.rt.submit(
            "job",
            json!({"n": 1}),
            opts_env("NODE_OPTIONS", "--require x"),
        )
        .await
        .expect_err("hook");
    assert_eq!(e.error_type(), ErrorType::SecurityError);
    let e =
        h.rt.submit("job", json!({"n": 1}), opts_env("OTHER", "1"))
            .await
            .expect_err("unlisted");
    assert_eq!(e.error_type(), ErrorType::SecurityError);

    let e =
        h.rt.submit("limited", json!({}), JobOptions::default())
            .await
            .expect_err("no sandbox");
    assert_eq!(e.error_type(), ErrorType::Unavailable);
    assert!(
        h.rt.workflows()
            .iter()
            .any(|w| w.name == "limited" && w.status.starts_with("unavailable"))
    );
    let ready = h.rt.readiness().await;
    assert_eq!(ready.store, "ok");
    assert!(ready.workflows["limited"].starts_with("unavailable"));
    assert_eq!(ready.workflows["job"], "available");

    let list = h.rt.list(ListQuery::default()).await.expect("list");
    assert!(list.jobs.is_empty(), "nothing stored: {:?}", list.jobs);

    // The same request, valid, is accepted: allowed env and an inside path.
    let id = h
        .submit_opts(
            "job",
            json!({"n": 1, "inputPath": "job.js"}),
            opts_env("JOB_MODE", "fast"),
        )
        .await;
    assert_eq!(h.wait(id).await.state, tsbridge_proto::JobState::Succeeded);
    // 100 KiB of parameters fit one argument, and run.
    let id = h
        .submit("job", json!({"n": 1, "blob": "x".repeat(100 * 1024)}))
        .await;
    assert_eq!(h.wait(id).await.state, tsbridge_proto::JobState::Succeeded);
}
