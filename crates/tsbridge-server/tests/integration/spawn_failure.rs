//! Regression: a job whose program cannot be started answered 500
//! `InternalError` "internal error" (its cause hidden from the client). It
//! is an `ExecutionError` whose message names the program and the cause,
//! with reason `spawn_failure`, counted in `tsbridge_spawn_failures_total`:
//! in spawn mode a script whose `#!` interpreter does not exist (the OS
//! error of the exec), in pool mode a module no worker can load.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::real::{fixtures, real};
use common::*;

fn hostile_workflows() -> String {
    let root = fixtures().display().to_string();
    format!(
        r#"
[workflows.noshebang]
root = "{root}"
script = "missing-interpreter.sh"
runtime = "exec"

[workflows.noload]
root = "{root}"
script = "throws-at-load.mjs"
runtime = "node"
mode = "pool"
pool = {{ min = 0, max = 1 }}
"#
    )
}

async fn execute(state: &tsbridge_server::AppState, workflow: &str) -> Answer {
    call(
        state,
        "POST",
        &format!("/workflow/{workflow}/execute"),
        Some(r#"{"parameters":{}}"#),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_failures_are_execution_errors_naming_program_and_cause() {
    let metrics = tsbridge_server::install_recorder().unwrap();
    let r = real(&hostile_workflows()).await;
    let state = r.state.clone().with_metrics(metrics);

    let a = execute(&state, "noshebang").await;
    assert_failure(&a, 500, "ExecutionError");
    let msg = a.message();
    assert!(msg.contains("missing-interpreter.sh"), "{msg}");
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(
        msg.contains("/nonexistent/tsbridge-test/interpreter"),
        "names the missing interpreter: {msg}"
    );
    assert!(!msg.contains(&fixtures().display().to_string()), "{msg}");
    let d = &a.body["error"]["details"];
    assert_eq!(d["reason"], "spawn_failure", "{d}");
    assert!(d["jobId"].is_string(), "{d}");

    let a = execute(&state, "noload").await;
    assert_failure(&a, 500, "ExecutionError");
    let msg = a.message();
    assert!(msg.contains("throws-at-load.mjs"), "{msg}");
    assert!(msg.contains("this module refuses to load"), "{msg}");
    assert_eq!(a.body["error"]["details"]["reason"], "spawn_failure");

    let a = call(&state, "GET", "/metrics", None, None).await;
    let text = a.body.as_str().expect("text body");
    for wf in ["noshebang", "noload"] {
        let line = format!("tsbridge_spawn_failures_total{{workflow=\"{wf}\"}} 1");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}
