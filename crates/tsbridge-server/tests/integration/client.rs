//! tsbridge-client against a real server and the real runtime: every route
//! typed, the server's error type in `ClientError`, submit + poll,
//! idempotency, batch order and failFast, and `follow_events` (with resume).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::real::real;
use common::*;
use futures::StreamExt;
use serde_json::json;
use tsbridge_client::{Client, ClientError, ListParams};
use tsbridge_proto::api::{
    BatchItem, BatchOptions, BatchRequest, ExecuteRequest, JobOptions, SubmitRequest,
};
use tsbridge_proto::{ErrorType, EventData, JobState};

fn submit_req(params: serde_json::Value, key: Option<&str>) -> SubmitRequest {
    SubmitRequest {
        workflow: "work".into(),
        parameters: params,
        options: key.map(|k| JobOptions {
            idempotency_key: Some(k.into()),
            ..JobOptions::default()
        }),
    }
}

#[tokio::test]
async fn every_route_through_the_typed_client() {
    let r = real("[server]\ntokens = [\"client-secret\"]\n").await;
    let server = TestServer::start(r.state.clone()).await;
    let base = format!("http://{}", server.addr);
    let client = Client::new(&base, Some("client-secret".into())).unwrap();

    client.health().await.unwrap();
    let ready = client.readiness().await.unwrap();
    assert_eq!(ready.workflows["work"], "available");
    assert!(ready.workflows["limited"].starts_with("unavailable"));
    let names: Vec<String> = client
        .workflows()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["limited", "typed", "work"]);
    assert!(client.openapi().await.unwrap()["paths"]["/v1/jobs"].is_object());

    // Execute.
    let done = client
        .execute(
            "work",
            &ExecuteRequest {
                parameters: json!({"result": 7}),
                options: None,
            },
        )
        .await
        .unwrap();
    assert!(done.success);
    assert_eq!(done.result, json!(7));

    // A failure carries the server's error type.
    let err = client
        .execute(
            "work",
            &ExecuteRequest {
                parameters: json!({"exit": 2}),
                options: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), Some(ErrorType::ExecutionError));
    assert_eq!(err.status(), Some(500));
    let ClientError::Api { details, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(details.as_ref().unwrap()["exitCode"], 2);
    let err = client
        .get("0190a5f6-0000-7000-8000-000000000000".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), Some(ErrorType::NotFound));

    // Submit, poll until done.
    let s = client
        .submit(&submit_req(json!({"progress": 2}), Some("once")))
        .await
        .unwrap();
    assert!(s.created);
    let again = client
        .submit(&submit_req(json!({"progress": 2}), Some("once")))
        .await
        .unwrap();
    assert!(!again.created, "the idempotency key names the same job");
    assert_eq!(again.job_id, s.job_id);
    let view = eventually(|| async {
        let v = client.get(s.job_id).await.ok()?;
        v.state.is_terminal().then_some(v)
    })
    .await;
    assert_eq!(view.state, JobState::Succeeded);

    // List with filters and paging.
    let page = client
        .list(&ListParams {
            state: Some(JobState::Succeeded),
            limit: Some(1),
            ..ListParams::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 1);
    let cursor = page.next_cursor.expect("a second page");
    let page2 = client
        .list(&ListParams {
            state: Some(JobState::Succeeded),
            limit: Some(1),
            cursor: Some(cursor),
            ..ListParams::default()
        })
        .await
        .unwrap();
    assert_ne!(page2.jobs[0].job_id, page.jobs[0].job_id);

    // Cancel.
    let hang = client
        .submit(&submit_req(json!({"hang": true}), None))
        .await
        .unwrap();
    let v = client.cancel(hang.job_id).await.unwrap();
    assert_eq!(v.state, JobState::Cancelled);
    assert_eq!(
        client.cancel(hang.job_id).await.unwrap_err().error_type(),
        Some(ErrorType::Conflict)
    );

    // A wrong token.
    let bad = Client::new(&base, Some("nope".into())).unwrap();
    assert_eq!(
        bad.workflows().await.unwrap_err().error_type(),
        Some(ErrorType::Unauthorized)
    );
}

#[tokio::test]
async fn follow_events_streams_to_the_end_and_resumes() {
    let r = real("").await;
    let server = TestServer::start(r.state.clone()).await;
    let client = Client::new(format!("http://{}", server.addr), None).unwrap();
    let s = client
        .submit(&submit_req(
            json!({"progress": 4, "stepMs": 50, "result": {"x": 1}}),
            None,
        ))
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(60),
        client.follow_events(s.job_id, None).collect::<Vec<_>>(),
    )
    .await
    .expect("ends after the terminal state");
    let events: Vec<_> = events.into_iter().map(|e| e.expect("event")).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.data, EventData::Progress(_)))
            .count(),
        4
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.data, EventData::Result { value } if *value == json!({"x": 1})))
    );
    assert!(events.last().unwrap().data.is_terminal_state());

    let from = seqs[2];
    let rest: Vec<_> = client
        .follow_events(s.job_id, Some(from))
        .map(|e| e.unwrap().seq)
        .collect()
        .await;
    assert_eq!(rest, seqs[from as usize..].to_vec());

    let err = client
        .follow_events(
            "0190a5f6-0000-7000-8000-000000000000".parse().unwrap(),
            None,
        )
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.error_type(), Some(ErrorType::NotFound));
}

#[tokio::test]
async fn batch_order_and_fail_fast_with_real_children() {
    let r = real("[server]\nbatch_concurrency = 2\n").await;
    let server = TestServer::start(r.state.clone()).await;
    let client = Client::new(format!("http://{}", server.addr), None).unwrap();
    let item = |params: serde_json::Value, id: Option<&str>| BatchItem {
        workflow: "work".into(),
        parameters: params,
        id: id.map(str::to_owned),
        priority: None,
    };
    let out = client
        .batch(&BatchRequest {
            workflows: vec![
                item(json!({"sleepMs": 300, "result": "slow"}), Some("first")),
                item(json!({"result": "fast"}), None),
                BatchItem {
                    workflow: "typed".into(),
                    parameters: json!({}),
                    id: Some("invalid".into()),
                    priority: None,
                },
            ],
            options: None,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = out.results.iter().map(|r| r.workflow_id.as_str()).collect();
    assert_eq!(ids, ["first", "workflow_1", "invalid"]);
    assert_eq!(out.results[0].result, Some(json!("slow")));
    assert_eq!(out.results[1].result, Some(json!("fast")));
    assert_eq!(
        out.results[2].error.as_ref().unwrap().kind,
        ErrorType::ValidationError
    );

    let out = client
        .batch(&BatchRequest {
            workflows: vec![
                item(json!({"hang": true}), None),
                item(json!({"sleepMs": 200, "exit": 1}), None),
                item(json!({"hang": true}), None),
            ],
            options: Some(BatchOptions {
                fail_fast: true,
                timeout: None,
            }),
        })
        .await
        .unwrap();
    assert_eq!(
        out.results[1].error.as_ref().unwrap().kind,
        ErrorType::ExecutionError
    );
    assert_eq!(
        out.results[0].error.as_ref().unwrap().kind,
        ErrorType::Conflict,
        "cancelled: {:?}",
        out.results[0]
    );
    assert!(out.results[2].job_id.is_none(), "never started");
    let running = client
        .list(&ListParams {
            state: Some(JobState::Running),
            ..ListParams::default()
        })
        .await
        .unwrap();
    assert!(running.jobs.is_empty(), "failFast left nothing running");
}
