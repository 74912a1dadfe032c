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

/// An event reads the same live and replayed: SSE's live `data` (the
/// runtime's clock, to the nanosecond) used to differ from its replay (the
/// store's milliseconds), and the WebSocket wrote `+00:00` where HTTP writes
/// `Z`. Every time on the wire is now RFC 3339 with milliseconds and `Z`.
#[tokio::test]
async fn a_live_event_reads_the_same_replayed_and_over_the_websocket() {
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let id = submit(&server, json!({"progress": 1, "hang": true})).await;

    // An SSE stream that has delivered the progress is following the job
    // live: the cancel's events reach it live, not from the store.
    let resp = reqwest::get(server.url(&format!("/v1/jobs/{id}/events")))
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    let mut live: Vec<Value> = Vec::new();
    let mut next = async || -> Option<Vec<Value>> {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("an event in time")?
            .unwrap();
        Some(
            parser
                .push(&chunk)
                .into_iter()
                .map(|e| serde_json::from_str(&e.data).unwrap())
                .collect(),
        )
    };
    while !live.iter().any(|e| e["type"] == "progress") {
        live.extend(next().await.expect("the stream is open"));
    }
    let (mut ws, _) = connect_async(server.ws_url("/v1/ws")).await.unwrap();
    ws.send(Message::text(
        json!({"type": "subscribe", "jobId": id}).to_string(),
    ))
    .await
    .unwrap();
    while next_json(&mut ws).await["type"] != "progress" {}

    let cancel = reqwest::Client::new()
        .post(server.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    let job: Value = cancel.json().await.unwrap();
    while let Some(events) = next().await {
        live.extend(events);
    }
    let ws_end = loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "state" && m["data"]["state"] == "cancelled" {
            break m;
        }
    };

    let end = live.last().unwrap();
    assert_eq!(end["state"], "cancelled");
    let replay: Vec<Value> = sse_all(&server, &id, None)
        .await
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(live, replay, "live events and their replay are the same");
    assert_eq!(ws_end["data"]["timestamp"], end["timestamp"]);
    let wire_time = |v: &Value| {
        let s = v.as_str().unwrap_or_else(|| panic!("a time: {v}"));
        let ok = s.len() == 24
            && s.ends_with('Z')
            && s.as_bytes()[19] == b'.'
            && chrono::DateTime::parse_from_rfc3339(s).is_ok();
        assert!(ok, "RFC 3339 with milliseconds and Z: {s}");
    };
    for e in &live {
        wire_time(&e["timestamp"]);
    }
    wire_time(&ws_end["data"]["timestamp"]);
    let job = &job["data"];
    for k in ["createdAt", "startedAt", "finishedAt"] {
        wire_time(&job[k]);
    }
    wire_time(&job["attempts"][0]["startedAt"]);
    wire_time(&job["attempts"][0]["finishedAt"]);
}
