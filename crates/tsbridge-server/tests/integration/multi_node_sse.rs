//! Two servers (nodes) on one PostgreSQL store: an SSE client of one node
//! follows a job that runs on the other, from its first event to its
//! terminal state, in order, each event once; a WebSocket subscriber there
//! gets its progress and its result. Each test gets a database of
//! its own on the server `TSBRIDGE_TEST_PG_URL` names (the runtime's
//! `pg_support`); without it the test is skipped with a message, except
//! under CI (`CI` set), where that is a failure.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tsbridge_client::SseParser;
use tsbridge_runtime::store::{PgOptions, PgStore};
use tsbridge_runtime::{Runtime, RuntimeOptions};

use crate::common::TestServer;
use crate::common::pg_support::PgDb;
use crate::common::real;

const SOON: Duration = Duration::from_secs(60);

struct Node {
    rt: Runtime,
    server: TestServer,
}

async fn node(db: &PgDb, name: &str) -> Node {
    let config = real::config("[defaults]\nconcurrency = 2", &std::env::temp_dir());
    let store = Arc::new(
        PgStore::open_with(
            &db.url,
            PgOptions {
                poll: Duration::from_millis(500),
                ..PgOptions::default()
            },
        )
        .await
        .expect("open store"),
    );
    let rt = Runtime::start(
        config.clone(),
        store,
        RuntimeOptions {
            node_id: Some(name.to_owned()),
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("runtime starts");
    let server = TestServer::start(real::state_for(&rt, &config, |_| {})).await;
    Node { rt, server }
}

async fn job(n: &Node, id: &str) -> Value {
    reqwest::get(n.server.url(&format!("/v1/jobs/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until job `id` runs (on any node).
async fn until_running(n: &Node, id: &str) {
    let deadline = tokio::time::Instant::now() + SOON;
    while job(n, id).await["data"]["state"] != "running" {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sse_on_one_node_follows_a_job_running_on_another() {
    let Some(db) = PgDb::create("sse_on_one_node_follows_a_job_running_on_another").await else {
        return;
    };
    let a = node(&db, "node-a").await;
    let id = submit(&a, json!({"progress": 30, "stepMs": 200})).await;
    until_running(&a, &id).await;
    // Node b starts once the job runs on a: it never runs it.
    let b = node(&db, "node-b").await;
    let resp = reqwest::get(b.server.url(&format!("/v1/jobs/{id}/events")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    let mut all: Vec<(u64, String, Value)> = Vec::new();
    tokio::time::timeout(SOON, async {
        while let Some(chunk) = body.next().await {
            for e in parser.push(&chunk.unwrap()) {
                all.push((
                    e.id.unwrap().parse().unwrap(),
                    e.event,
                    serde_json::from_str(&e.data).unwrap(),
                ));
            }
        }
    })
    .await
    .expect("the stream ends after the terminal state");
    let seqs: Vec<u64> = all.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let progress = all.iter().filter(|e| e.1 == "progress").count();
    assert_eq!(progress, 30);
    let (_, kind, last) = all.last().unwrap();
    assert_eq!(kind, "state");
    assert_eq!(last["state"], "succeeded");
    let v = job(&b, &id).await;
    assert_eq!(v["data"]["state"], "succeeded");
    assert_eq!(v["data"]["attempts"].as_array().map(Vec::len), Some(1));
    a.rt.shutdown(Duration::ZERO).await;
    b.rt.shutdown(Duration::ZERO).await;
}

async fn submit(n: &Node, params: Value) -> String {
    let r: Value = reqwest::Client::new()
        .post(n.server.url("/v1/jobs"))
        .json(&json!({"workflow": "work", "parameters": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]["jobId"].as_str().expect("jobId").to_owned()
}

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let m = tokio::time::timeout(SOON, ws.next())
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
async fn a_websocket_on_one_node_follows_a_job_running_on_another() {
    let Some(db) = PgDb::create("a_websocket_on_one_node_follows_a_job_running_on_another").await
    else {
        return;
    };
    let a = node(&db, "node-a").await;
    let id = submit(
        &a,
        json!({"progress": 20, "stepMs": 200, "result": {"done": true}}),
    )
    .await;
    until_running(&a, &id).await;
    let b = node(&db, "node-b").await;
    let (mut ws, _) = connect_async(b.server.ws_url("/v1/ws")).await.unwrap();
    ws.send(Message::text(
        json!({"type": "subscribe", "workflowId": id}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let mut stages = Vec::new();
    let result = loop {
        let m = next_json(&mut ws).await;
        match m["type"].as_str().unwrap() {
            "progress" => stages.push(m["data"]["stage"].as_str().unwrap().to_owned()),
            "result" => break m,
            "error" => panic!("{m}"),
            _ => {}
        }
    };
    assert_eq!(result["data"], json!({"done": true}));
    assert_eq!(
        stages.last().map(String::as_str),
        Some("20/20"),
        "{stages:?}"
    );
    let numbers: Vec<u32> = stages
        .iter()
        .map(|s| s.split('/').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {stages:?}"
    );
    a.rt.shutdown(Duration::ZERO).await;
    b.rt.shutdown(Duration::ZERO).await;
}
