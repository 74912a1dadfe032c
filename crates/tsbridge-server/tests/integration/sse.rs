//! `GET /v1/jobs/:id/events` over a real socket: `id`/`event`/`data` per
//! event, replay from the start or after `Last-Event-ID`, live events, the
//! end after the terminal state; no duplicates and no gaps, even for a
//! consumer that falls behind the live feed.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use tsbridge_client::{SseEvent, SseParser};

async fn submit(server: &TestServer, workflow: &str, params: Value) -> String {
    let r: Value = reqwest::Client::new()
        .post(server.url("/v1/jobs"))
        .json(&json!({"workflow": workflow, "parameters": params}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    r["data"]["jobId"].as_str().expect("jobId").to_owned()
}

/// Reads a whole event stream (it ends after the terminal state).
async fn read_all(
    server: &TestServer,
    id: &str,
    last_event_id: Option<&str>,
    pause: Option<Duration>,
) -> Vec<SseEvent> {
    let mut rb = reqwest::Client::new().get(server.url(&format!("/v1/jobs/{id}/events")));
    if let Some(l) = last_event_id {
        rb = rb.header("Last-Event-ID", l);
    }
    let resp = rb.send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            out.extend(parser.push(&chunk.expect("chunk")));
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("stream ends after the terminal state");
    out
}

fn seqs(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.id.as_deref().expect("id").parse().expect("number"))
        .collect()
}

fn check_events(events: &[SseEvent]) {
    for e in events {
        let data: Value = serde_json::from_str(&e.data).expect("data is JSON");
        assert_eq!(
            data["type"],
            e.event.as_str(),
            "event name is the event type"
        );
        assert_eq!(data["seq"].to_string(), e.id.clone().unwrap());
        assert!(data["jobId"].is_string() && data["timestamp"].is_string());
    }
    let last: Value = serde_json::from_str(&events.last().expect("events").data).unwrap();
    assert_eq!(last["type"], "state");
    assert_eq!(last["state"], "succeeded");
}

#[tokio::test]
async fn streams_live_events_and_ends_after_the_terminal_state() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "slow", json!({"steps": 4, "ms": 50})).await;
    let events = read_all(&server, &id, None, None).await;
    let s = seqs(&events);
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "from 1, no gaps, no duplicates"
    );
    check_events(&events);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "progress").count(), 4);
    assert_eq!(kinds.iter().filter(|k| **k == "result").count(), 1);
    let progress: Value =
        serde_json::from_str(&events.iter().find(|e| e.event == "progress").unwrap().data).unwrap();
    assert_eq!(progress["current"], 1);
    assert_eq!(progress["total"], 4);
    assert_eq!(progress["percentage"], 25.0);
}

#[tokio::test]
async fn resumes_after_last_event_id_without_duplicates() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "slow", json!({"steps": 3, "ms": 20})).await;
    let all = read_all(&server, &id, None, None).await;
    let n = all.len() as u64;
    assert!(n > 5);
    // Finished job: replay after 3.
    let rest = read_all(&server, &id, Some("3"), None).await;
    assert_eq!(seqs(&rest), (4..=n).collect::<Vec<_>>());
    assert_eq!(rest, all[3..].to_vec());
    // ?lastEventId= does the same.
    let resp = reqwest::get(server.url(&format!("/v1/jobs/{id}/events?lastEventId={}", n - 1)))
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let mut p = SseParser::new();
    let ev = p.push(text.as_bytes());
    assert_eq!(seqs(&ev), vec![n]);
}

#[tokio::test]
async fn a_dropped_live_stream_resumes_with_no_gap() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "slow", json!({"steps": 6, "ms": 80})).await;
    // Read the first few events live, then hang up.
    let resp = reqwest::get(server.url(&format!("/v1/jobs/{id}/events")))
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    let mut first = Vec::new();
    while first.len() < 4 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("live event")
            .unwrap()
            .unwrap();
        first.extend(parser.push(&chunk));
    }
    drop(body);
    let last = first.last().unwrap().id.clone().unwrap();
    let rest = read_all(&server, &id, Some(&last), None).await;
    let mut all = seqs(&first);
    all.extend(seqs(&rest));
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>());
    check_events(&rest);
}

#[tokio::test]
async fn a_consumer_behind_the_live_feed_catches_up_from_the_store() {
    // A live feed of one event: a slow reader lags and is dropped from it.
    let fake = FakeBackend::with_feed_capacity(1);
    let state = state_for(Arc::new(fake.clone()), settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "slow", json!({"steps": 30, "ms": 5})).await;
    let events = read_all(&server, &id, None, Some(Duration::from_millis(15))).await;
    let s = seqs(&events);
    assert_eq!(s, (1..=s.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.iter().filter(|e| e.event == "progress").count(), 30);
    check_events(&events);
}

#[tokio::test]
async fn unknown_job_and_bad_last_event_id() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let r = reqwest::get(server.url("/v1/jobs/0190a5f6-0000-7000-8000-000000000000/events"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let id = submit(&server, "echo", json!({})).await;
    let r = reqwest::Client::new()
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "ValidationError");
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "hang", json!({})).await;
    let resp = reqwest::get(server.url(&format!("/v1/jobs/{id}/events")))
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("first event");
    assert!(first.is_some());
    let stopped = server.stop();
    let drained = async {
        let closed = async { while let Some(Ok(_)) = body.next().await {} };
        tokio::time::timeout(Duration::from_secs(30), closed)
            .await
            .expect("stream closed on shutdown");
    };
    let (served, ()) = tokio::join!(stopped, drained);
    served.expect("serve returns Ok");
}
