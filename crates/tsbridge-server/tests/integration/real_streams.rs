//! SSE and WebSocket streams of real node children through a real socket:
//! progress parsed from the child's stdout arrives live, SSE resumes after
//! Last-Event-ID with no gap or duplicate, a late WebSocket subscriber gets
//! state then last progress, and a WebSocket cancel ends the real process.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::real::real;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tsbridge_client::SseParser;
use tsbridge_proto::JobState;

async fn submit(server: &TestServer, params: Value) -> String {
    let r: Value = reqwest::Client::new()
        .post(server.url("/v1/jobs"))
        .json(&json!({"workflow": "work", "parameters": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]["jobId"].as_str().expect("jobId").to_owned()
}

async fn sse_all(server: &TestServer, id: &str, last: Option<u64>) -> Vec<(u64, String, Value)> {
    let mut rb = reqwest::Client::new().get(server.url(&format!("/v1/jobs/{id}/events")));
    if let Some(l) = last {
        rb = rb.header("Last-Event-ID", l.to_string());
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut p = SseParser::new();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(c) = body.next().await {
            for e in p.push(&c.unwrap()) {
                out.push((
                    e.id.unwrap().parse().unwrap(),
                    e.event,
                    serde_json::from_str(&e.data).unwrap(),
                ));
            }
        }
    })
    .await
    .expect("the stream ends after the terminal state");
    out
}

#[tokio::test]
async fn sse_streams_a_real_job_and_resumes() {
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let id = submit(
        &server,
        json!({"progress": 5, "stepMs": 40, "log": "hello", "result": {"r": 1}}),
    )
    .await;
    let all = sse_all(&server, &id, None).await;
    let seqs: Vec<u64> = all.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let kinds: Vec<&str> = all.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "progress").count(),
        5,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"log"), "{kinds:?}");
    assert!(kinds.contains(&"result"), "{kinds:?}");
    let (_, last_kind, last) = all.last().unwrap();
    assert_eq!(last_kind, "state");
    assert_eq!(last["state"], "succeeded");
    for (seq, kind, data) in &all {
        assert_eq!(data["seq"], *seq);
        assert_eq!(data["type"], kind.as_str());
    }
    // Resume in the middle.
    let cut = seqs[seqs.len() / 2];
    let rest = sse_all(&server, &id, Some(cut)).await;
    assert_eq!(
        rest.iter().map(|e| e.0).collect::<Vec<_>>(),
        seqs[cut as usize..].to_vec()
    );
}

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("message in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn websocket_progress_result_late_subscriber_and_cancel() {
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let (mut ws, _) = connect_async(server.ws_url("/v1/ws")).await.unwrap();

    // A live subscriber sees progress and the result.
    let id = submit(
        &server,
        json!({"progress": 3, "stepMs": 150, "result": {"done": true}}),
    )
    .await;
    ws.send(Message::text(
        json!({"type": "subscribe", "workflowId": id}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "subscribed", "workflowId": id})
    );
    let mut progress = Vec::new();
    let result = loop {
        let m = next_json(&mut ws).await;
        match m["type"].as_str().unwrap() {
            "progress" => {
                assert_eq!(m["data"].as_object().unwrap().len(), 5, "{m}");
                progress.push(m["data"]["stage"].as_str().unwrap().to_owned());
            }
            "result" => break m,
            _ => {}
        }
    };
    assert_eq!(result["data"], json!({"done": true}));
    assert_eq!(progress.last().map(String::as_str), Some("3/3"));

    // A late subscriber of a running job: state, then its last progress.
    let hang = submit(&server, json!({"progress": 2, "stepMs": 1, "hang": true})).await;
    let hang_id = hang.parse().unwrap();
    eventually(|| async {
        let v = r.rt.get(hang_id).await.ok()?;
        (v.state == JobState::Running && v.progress.as_ref().is_some_and(|p| p.current == 2))
            .then_some(())
    })
    .await;
    let (mut late, _) = connect_async(server.ws_url("/v1/ws")).await.unwrap();
    late.send(Message::text(
        json!({"type": "subscribe", "jobId": hang}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut late).await["type"], "subscribed");
    let st = next_json(&mut late).await;
    assert_eq!(
        (st["type"].as_str(), st["data"]["state"].as_str()),
        (Some("state"), Some("running")),
        "{st}"
    );
    let p = next_json(&mut late).await;
    assert_eq!(p["type"], "progress");
    assert_eq!(p["data"]["stage"], "2/2");
    assert_eq!(p["data"]["progress"], 100.0);

    // Cancel over the WebSocket: the subscriber sees `cancelled`, the job is.
    late.send(Message::text(
        json!({"type": "cancel", "workflowId": hang}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let m = next_json(&mut late).await;
        if m["type"] == "cancelled" {
            assert_eq!(m["workflowId"], hang.as_str());
            break;
        }
    }
    let v = r.rt.get(hang_id).await.unwrap();
    assert_eq!(v.state, JobState::Cancelled);
}
