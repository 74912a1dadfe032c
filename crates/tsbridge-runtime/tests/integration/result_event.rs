//! Every succeeded job's result reaches event consumers (SSE, `jobs logs`)
//! as exactly one `result` event before the terminal state: announced by a
//! RESULT line, taken from the whole stdout (no marker), or returned by a
//! pool handler.

use crate::common;

use common::*;
use serde_json::{Value, json};
use tsbridge_proto::{EventData, JobEvent, JobId, JobState};

fn results(events: &[JobEvent]) -> Vec<(u64, Value)> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::Result { value } => Some((e.seq, value.clone())),
            _ => None,
        })
        .collect()
}

async fn check_one_result_before_the_end(h: &Harness, id: JobId, expected: &Value) {
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.result.as_ref(), Some(expected), "{v:?}");
    let events = h.rt.events_after(id, 0).await.expect("events");
    let found = results(&events);
    assert_eq!(found.len(), 1, "one result event: {events:?}");
    assert_eq!(&found[0].1, expected);
    let last = events.last().expect("events");
    assert!(
        matches!(
            last.data,
            EventData::State {
                state: JobState::Succeeded,
                ..
            }
        ),
        "{last:?}"
    );
    assert!(found[0].0 < last.seq, "{events:?}");
}

#[tokio::test]
async fn whole_stdout_result_becomes_a_result_event() {
    let h = start(&workflow("job", "")).await;
    let value = json!({"plain": 1});
    let id = h.submit("job", json!({"plainJson": value})).await;
    check_one_result_before_the_end(&h, id, &value).await;
}

#[tokio::test]
async fn a_result_line_is_not_announced_twice() {
    let h = start(&workflow("job", "")).await;
    let value = json!({"marked": true});
    let id = h.submit("job", json!({"result": value})).await;
    check_one_result_before_the_end(&h, id, &value).await;
}

#[tokio::test]
async fn a_failed_job_gets_no_result_event() {
    let h = start(&workflow("job", "")).await;
    let id = h
        .submit("job", json!({"plainJson": {"partial": 1}, "exit": 3}))
        .await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    let events = h.rt.events_after(id, 0).await.expect("events");
    assert!(results(&events).is_empty(), "{events:?}");
}

#[tokio::test]
async fn a_pool_handlers_return_value_becomes_a_result_event() {
    let toml = format!(
        "[workflows.pooled]\nroot = \"{}\"\nscript = \"handler.mjs\"\nruntime = \"node\"\nmode = \"pool\"\n\
         pool = {{ min = 1, max = 1 }}\n",
        fixtures().display()
    );
    let h = start(&toml).await;
    let id = h.submit("pooled", json!({"i": 7})).await;
    let v = h.wait(id).await;
    let expected = v.result.clone().expect("a result");
    check_one_result_before_the_end(&h, id, &expected).await;
}
