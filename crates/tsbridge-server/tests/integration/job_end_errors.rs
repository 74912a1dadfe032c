//! A job that ended `interrupted` (the node that ran it died: SPEC §4) is
//! an `InternalError` job end. Its execute answer hid everything but the
//! job id ("internal error"), while `GET /v1/jobs/:id` showed the same end
//! in full: a client of a sync execute could not tell a crash of the node
//! running its job (worth a retry) from a server fault. Found by `make soak`
//! with two nodes on PostgreSQL. A job's end is public; the server's own
//! internal errors stay hidden (errors.rs).

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;

#[tokio::test]
async fn an_interrupted_job_s_execute_answer_says_so() {
    let (state, _) = fake_state(settings());
    let a = call(
        &state,
        "POST",
        "/workflow/interrupted/execute",
        Some(r#"{"parameters":{}}"#),
        None,
    )
    .await;
    assert_failure(&a, 500, "InternalError");
    let e = &a.body["error"];
    let id = e["details"]["jobId"].as_str().unwrap().to_owned();
    assert_eq!(e["message"], format!("job {id} was interrupted"), "{e}");
    assert_eq!(e["details"]["state"], "failed");
    assert_eq!(e["details"]["reason"], "interrupted");
    assert_eq!(e["details"]["attempts"], 1);

    // A batch item's error is the same public body.
    let a = call(
        &state,
        "POST",
        "/workflow/batch",
        Some(r#"{"workflows":[{"type":"interrupted","parameters":{}}]}"#),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let e = &a.body["results"][0]["error"];
    assert_eq!(e["type"], "InternalError");
    assert_eq!(e["details"]["reason"], "interrupted", "{e}");
    assert!(
        e["message"].as_str().unwrap().ends_with("was interrupted"),
        "{e}"
    );
}
