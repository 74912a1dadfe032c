//! Scheduling: with a global concurrency of 1, queued jobs start by
//! priority (highest first), then in submission order; a workflow at its own
//! concurrency limit does not block other workflows.

use crate::common;

use common::*;
use serde_json::json;
use tsbridge_proto::JobState;
use tsbridge_proto::api::JobOptions;

#[tokio::test]
async fn priority_then_fifo_with_concurrency_one() {
    let h = start(&format!(
        "[defaults]\nconcurrency = 1\n{}",
        workflow("job", "")
    ))
    .await;
    let log = h.path("order.log");
    let blocker = h.submit("job", json!({"hang": true})).await;
    h.until_state(blocker, JobState::Running).await;
    let mut ids = Vec::new();
    for (tag, prio) in [
        ("p0-a", 0),
        ("p5", 5),
        ("p0-b", 0),
        ("p9", 9),
        ("pm1", -1),
        ("p0-c", 0),
    ] {
        let id = h
            .submit_opts(
                "job",
                json!({"log": log, "tag": tag}),
                JobOptions {
                    priority: Some(prio),
                    ..JobOptions::default()
                },
            )
            .await;
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(h.rt.get(*id).await.expect("get").state, JobState::Queued);
    }
    assert_eq!(h.rt.stats().queued, 6);
    h.rt.cancel(blocker).await.expect("cancel");
    for id in &ids {
        assert_eq!(h.wait(*id).await.state, JobState::Succeeded);
    }
    let starts: Vec<String> = h
        .log_lines("order.log")
        .iter()
        .filter_map(|l| {
            l.strip_prefix("start ")
                .map(|r| r.split(' ').next().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(starts, ["p9", "p5", "p0-a", "p0-b", "p0-c", "pm1"]);
}

#[tokio::test]
async fn a_saturated_workflow_does_not_block_others() {
    let toml = format!(
        "[defaults]\nconcurrency = 4\n{}{}",
        workflow("one", "concurrency = 1"),
        workflow("other", "")
    );
    let h = start(&toml).await;
    let a1 = h.submit("one", json!({"hang": true})).await;
    h.until_state(a1, JobState::Running).await;
    let a2 = h.submit("one", json!({})).await;
    let b = h.submit("other", json!({"result": 1})).await;
    let vb = h.wait(b).await;
    assert_eq!(vb.state, JobState::Succeeded);
    // `one` is at its limit: its second job is still waiting.
    assert_eq!(h.rt.get(a2).await.expect("get").state, JobState::Queued);
    assert_eq!(h.rt.stats().running_by_workflow.get("one"), Some(&1));
    h.rt.cancel(a1).await.expect("cancel");
    assert_eq!(h.wait(a2).await.state, JobState::Succeeded);
}
