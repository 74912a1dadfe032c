//! `GET /v1/ws` over a real socket with a tokio-tungstenite client:
//! subscribe, progress (all five keys), result, late subscribers (state then
//! last progress first), cancel, many jobs per connection, error messages,
//! binary frames of JSON, a client too slow to read being disconnected,
//! unsubscribing from one of several jobs, and what a repeated subscribe
//! answers.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(server: &TestServer) -> Ws {
    let (ws, _) = connect_async(server.ws_url("/v1/ws"))
        .await
        .expect("connect");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON text message (pings skipped), within 30 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

/// Messages until one of `ty` (inclusive).
async fn until(ws: &mut Ws, ty: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = next(ws).await;
        let done = v["type"] == ty;
        out.push(v);
        if done {
            return out;
        }
    }
}

async fn submit(server: &TestServer, workflow: &str, params: Value) -> String {
    let r: Value = reqwest::Client::new()
        .post(server.url("/v1/jobs"))
        .json(&json!({"workflow": workflow, "parameters": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]["jobId"].as_str().unwrap().to_owned()
}

fn assert_progress_shape(v: &Value, id: &str) {
    assert_eq!(v["type"], "progress");
    assert_eq!(v["workflowId"], id);
    let d = v["data"].as_object().expect("data");
    let mut keys: Vec<&str> = d.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["message", "progress", "stage", "taskId", "timestamp"]
    );
    assert_eq!(d["taskId"], id);
    assert!(d["progress"].is_number() && d["stage"].is_string() && d["timestamp"].is_string());
}

#[tokio::test]
async fn subscriber_sees_progress_and_the_result() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "slow", json!({"steps": 4, "ms": 60})).await;
    let mut ws = open(&server).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": id})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "subscribed", "workflowId": id})
    );
    let first = next(&mut ws).await;
    assert_eq!(
        first["type"], "state",
        "a subscriber first learns the current state"
    );
    let msgs = until(&mut ws, "result").await;
    let progress: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "progress").collect();
    assert!(!progress.is_empty());
    for p in &progress {
        assert_progress_shape(p, &id);
    }
    assert_eq!(progress.last().unwrap()["data"]["stage"], "4/4");
    assert_eq!(progress.last().unwrap()["data"]["progress"], 100.0);
    assert!(
        msgs.iter()
            .any(|m| m["type"] == "log" && m["data"]["message"] == "tick")
    );
    assert_eq!(msgs.last().unwrap()["data"], json!({"steps": 4}));
    let fin = until(&mut ws, "state").await;
    assert_eq!(fin.last().unwrap()["data"]["state"], "succeeded");
}

#[tokio::test]
async fn a_late_subscriber_gets_state_then_last_progress() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state.clone()).await;
    let id = submit(&server, "hang", json!({})).await;
    let job_id = id.parse().unwrap();
    eventually(|| async {
        let v = state.backend().get(job_id).await.ok()?;
        (v.state == tsbridge_proto::JobState::Running && v.progress.is_some()).then_some(())
    })
    .await;
    let mut ws = open(&server).await;
    send(&mut ws, json!({"type": "subscribe", "jobId": id})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let st = next(&mut ws).await;
    assert_eq!(st["type"], "state");
    assert_eq!(st["workflowId"], id);
    assert_eq!(st["data"]["state"], "running");
    let p = next(&mut ws).await;
    assert_progress_shape(&p, &id);
    assert_eq!(p["data"]["progress"], 25.0);
    assert_eq!(p["data"]["stage"], "1/4");
    assert_eq!(p["data"]["message"], "started");

    // Cancel over the same connection: the subscriber sees `cancelled`.
    send(&mut ws, json!({"type": "cancel", "workflowId": id})).await;
    let msgs = until(&mut ws, "cancelled").await;
    let st = msgs
        .iter()
        .find(|m| m["type"] == "state")
        .expect("state message");
    assert_eq!(st["data"]["state"], "cancelled");
    assert_eq!(msgs.last().unwrap()["data"]["state"], "cancelled");
    let v = state.backend().get(job_id).await.unwrap();
    assert_eq!(v.state, tsbridge_proto::JobState::Cancelled);
}

#[tokio::test]
async fn cancel_without_subscribing_answers_cancelled_and_errors_after() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "hang", json!({})).await;
    let mut ws = open(&server).await;
    send(&mut ws, json!({"type": "cancel", "workflowId": id})).await;
    let m = next(&mut ws).await;
    assert_eq!(m["type"], "cancelled");
    assert_eq!(m["workflowId"], id);
    assert_eq!(m["data"]["state"], "cancelled");
    // Again: it already finished.
    send(&mut ws, json!({"type": "cancel", "workflowId": id})).await;
    let m = next(&mut ws).await;
    assert_eq!(m["type"], "error");
    assert!(
        m["message"].as_str().unwrap().contains("already finished"),
        "{m}"
    );
}

#[tokio::test]
async fn one_connection_follows_many_jobs() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let a = submit(&server, "slow", json!({"steps": 3, "ms": 50})).await;
    let b = submit(&server, "slow", json!({"steps": 2, "ms": 70})).await;
    let mut ws = open(&server).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": a})).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": b})).await;
    let mut finished = std::collections::HashSet::new();
    let mut results = std::collections::HashMap::new();
    while finished.len() < 2 {
        let m = next(&mut ws).await;
        let who = m["workflowId"].as_str().unwrap_or_default().to_owned();
        if m["type"] == "result" {
            results.insert(who.clone(), m["data"].clone());
        }
        if m["type"] == "state" && m["data"]["state"] == "succeeded" {
            finished.insert(who);
        }
    }
    assert_eq!(results[&a], json!({"steps": 3}));
    assert_eq!(results[&b], json!({"steps": 2}));
    // Unsubscribe answers; a finished job can be subscribed again (snapshot only).
    send(&mut ws, json!({"type": "unsubscribe", "workflowId": a})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "unsubscribed", "workflowId": a})
    );
    send(&mut ws, json!({"type": "subscribe", "workflowId": a})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let st = next(&mut ws).await;
    assert_eq!(st["data"]["state"], "succeeded");
    let p = next(&mut ws).await;
    assert_eq!(p["data"]["stage"], "3/3");
    let r = next(&mut ws).await;
    assert_eq!(
        r,
        json!({"type": "result", "workflowId": a, "data": {"steps": 3}})
    );
}

#[tokio::test]
async fn bad_messages_get_error_messages() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let mut ws = open(&server).await;
    ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "error", "message": "Invalid JSON message"})
    );
    send(&mut ws, json!({"type": "dance"})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "error", "message": "Unknown message type: dance"})
    );
    send(&mut ws, json!({"type": "subscribe"})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "error", "message": "Missing workflowId"})
    );
    send(&mut ws, json!({"type": "subscribe", "workflowId": "nope"})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "error", "message": "Unknown job: nope"})
    );
    send(
        &mut ws,
        json!({"type": "subscribe", "workflowId": "0190a5f6-0000-7000-8000-000000000000"}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "error");
    // The connection still works.
    let id = submit(&server, "echo", json!({})).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": id})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
}

/// A binary frame carrying UTF-8 JSON is read as a text frame is (Node
/// `ws` wrappers send Buffers); one that is not UTF-8 gets an error that
/// says so, and the connection goes on.
#[tokio::test]
async fn binary_frames_of_json_are_read_as_text() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let mut ws = open(&server).await;
    let id = submit(&server, "echo", json!({})).await;
    let subscribe = json!({"type": "subscribe", "workflowId": id}).to_string();
    ws.send(Message::binary(subscribe.into_bytes()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "subscribed", "workflowId": id})
    );
    until(&mut ws, "result").await;
    ws.send(Message::binary(br#"{"type":"dance"}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "error", "message": "Unknown message type: dance"})
    );
    ws.send(Message::binary(b"{not json".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "error", "message": "Invalid JSON message"})
    );
    ws.send(Message::binary(vec![0x7b, 0xff, 0xfe, 0x7d]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "error", "message": "Invalid JSON message: a binary frame must be UTF-8 JSON text"})
    );
    send(&mut ws, json!({"type": "unsubscribe", "workflowId": id})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "unsubscribed", "workflowId": id})
    );
}

#[tokio::test]
async fn a_burst_reaches_a_client_that_reads() {
    let mut s = settings();
    s.ws_send_buffer = 8;
    let (state, _) = fake_state(s);
    let server = TestServer::start(state).await;
    let id = submit(&server, "flood", json!({"n": 3000, "ms": 500})).await;
    let mut ws = open(&server).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": id})).await;
    let msgs = until(&mut ws, "state").await; // the snapshot's state
    assert_eq!(msgs[0]["type"], "subscribed");
    let mut logs = 0;
    loop {
        let m = next(&mut ws).await;
        if m["type"] == "log" {
            logs += 1;
        }
        if m["type"] == "state" && m["data"]["state"] == "succeeded" {
            break;
        }
    }
    assert_eq!(logs, 3000, "every message of the burst arrived");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected() {
    let mut s = settings();
    s.ws_send_buffer = 8;
    s.ws_slow_after = Duration::from_millis(500);
    let (state, _) = fake_state(s);
    let metrics = tsbridge_server::install_recorder().unwrap();
    let state = state.with_metrics(metrics.clone());
    let server = TestServer::start(state.clone()).await;
    // ~40 MiB of log messages, more than the socket buffers hold; it starts
    // after a pause so the subscription is in place first.
    let flood = submit(&server, "flood", json!({"n": 40_000, "ms": 1000})).await;
    // A small, fixed receive buffer (no autotuning), so the flood cannot all
    // sit in kernel buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(server.ws_url("/v1/ws"), MaybeTlsStream::Plain(stream))
            .await
            .expect("connect");
    send(&mut ws, json!({"type": "subscribe", "workflowId": flood})).await;
    // The job is never held back by the stalled client.
    let flood_id = flood.parse().unwrap();
    let v = tokio::time::timeout(Duration::from_secs(60), state.backend().wait(flood_id))
        .await
        .expect("job ends")
        .unwrap();
    assert_eq!(v.state, tsbridge_proto::JobState::Succeeded);
    // The server gives up on the client (without it reading anything).
    eventually(|| async {
        metrics
            .render()
            .contains("tsbridge_ws_slow_disconnects_total 1")
            .then_some(())
    })
    .await;
    // Now read: the server has closed the connection before the end.
    let mut saw_end = false;
    let closed = async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(t))) => {
                    if t.as_str().contains("\"succeeded\"") {
                        saw_end = true;
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), closed)
        .await
        .expect("connection closed by the server");
    assert!(
        !saw_end,
        "the stalled client was cut off before the job's end"
    );
}

#[tokio::test]
async fn unsubscribe_stops_one_job_and_not_the_others() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let a = submit(&server, "slow", json!({"steps": 6, "ms": 60})).await;
    let b = submit(&server, "slow", json!({"steps": 6, "ms": 60})).await;
    let mut ws = open(&server).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": a})).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": b})).await;
    // Once `a` has made progress, leave it.
    loop {
        let m = next(&mut ws).await;
        if m["type"] == "progress" && m["workflowId"] == a {
            break;
        }
    }
    send(&mut ws, json!({"type": "unsubscribe", "workflowId": a})).await;
    loop {
        let m = next(&mut ws).await;
        if m == json!({"type": "unsubscribed", "workflowId": a}) {
            break;
        }
    }
    // Nothing more of `a` (it runs on), all of `b` to its end.
    let mut b_result = None;
    loop {
        let m = next(&mut ws).await;
        assert_ne!(m["workflowId"], a, "a message after unsubscribing: {m}");
        if m["type"] == "result" {
            b_result = Some(m["data"].clone());
        }
        if m["type"] == "state" && m["data"]["state"] == "succeeded" {
            break;
        }
    }
    assert_eq!(b_result, Some(json!({"steps": 6})));
}

#[tokio::test]
async fn a_repeated_subscribe_answers_subscribed_until_the_job_is_over() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let id = submit(&server, "hang", json!({})).await;
    let mut ws = open(&server).await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": id})).await;
    let first = until(&mut ws, "state").await;
    assert_eq!(first[0]["type"], "subscribed");
    // Live: only `subscribed` again, no second snapshot (the error of the
    // next message comes right after it).
    send(&mut ws, json!({"type": "subscribe", "workflowId": id})).await;
    send(&mut ws, json!({"type": "dance"})).await;
    let msgs = until(&mut ws, "error").await;
    let types: Vec<&str> = msgs.iter().filter_map(|m| m["type"].as_str()).collect();
    assert!(
        types.ends_with(&["subscribed", "error"]) && !types.contains(&"state"),
        "{types:?}"
    );
    // Cancelled: the subscription ends with `cancelled`...
    send(&mut ws, json!({"type": "cancel", "workflowId": id})).await;
    until(&mut ws, "cancelled").await;
    // ...and subscribing again replays the finished job's snapshot.
    send(&mut ws, json!({"type": "subscribe", "workflowId": id})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let st = next(&mut ws).await;
    assert_eq!(
        (&st["type"], &st["data"]["state"]),
        (&json!("state"), &json!("cancelled"))
    );
    assert_progress_shape(&next(&mut ws).await, &id);
    assert_eq!(next(&mut ws).await["type"], "cancelled");
}

#[tokio::test]
async fn one_connection_follows_at_most_max_subscriptions_jobs() {
    use tsbridge_server::routes::ws::MAX_SUBSCRIPTIONS;
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let mut ids = Vec::new();
    for _ in 0..=MAX_SUBSCRIPTIONS {
        ids.push(submit(&server, "hang", json!({})).await);
    }
    let mut ws = open(&server).await;
    for id in &ids[..MAX_SUBSCRIPTIONS] {
        send(&mut ws, json!({"type": "subscribe", "workflowId": id})).await;
    }
    let last = &ids[MAX_SUBSCRIPTIONS];
    send(&mut ws, json!({"type": "subscribe", "workflowId": last})).await;
    let msgs = until(&mut ws, "error").await;
    let subscribed = msgs.iter().filter(|m| m["type"] == "subscribed").count();
    assert_eq!(subscribed, MAX_SUBSCRIPTIONS);
    let error = msgs.last().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(
        error.contains(last.as_str()) && error.contains("1024"),
        "{error}"
    );

    // Room again after an unsubscribe.
    send(
        &mut ws,
        json!({"type": "unsubscribe", "workflowId": ids[0]}),
    )
    .await;
    send(&mut ws, json!({"type": "subscribe", "workflowId": last})).await;
    loop {
        let m = next(&mut ws).await;
        assert_ne!(m["type"], "error", "{m}");
        if m["type"] == "subscribed" && m["workflowId"] == json!(last) {
            break;
        }
    }
}

/// A plain GET of `/v1/ws` (no handshake headers) is a failure body that
/// says what is missing, not a bare "bad request". Over a real socket.
#[tokio::test]
async fn a_get_without_a_handshake_says_what_is_missing() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let r = reqwest::get(server.url("/v1/ws")).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["type"], "ValidationError");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("not a WebSocket handshake: ") && message.contains("upgrade"),
        "{message}"
    );
}
