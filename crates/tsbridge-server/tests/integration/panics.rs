//! A handler whose backend panics answers 500 `InternalError` with the
//! failure body (the panic's text only in dev mode), and the server keeps
//! serving: the client gets an answer, not a dropped connection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tsbridge_proto::JobId;
use tsbridge_proto::api::{JobList, JobOptions, JobView};
use tsbridge_proto::service::{Readiness, WorkflowInfo};
use tsbridge_server::{Backend, BackendError, EventFeed, ListQuery, Stats, Submitted};

use crate::common::*;

/// Answers `workflows` and panics everywhere else.
struct PanickingBackend;

const WHAT: &str = "the store's row decoder hit a bug";

#[async_trait]
impl Backend for PanickingBackend {
    async fn submit(&self, _: &str, _: Value, _: JobOptions) -> Result<Submitted, BackendError> {
        panic!("{WHAT}")
    }
    async fn get(&self, _: JobId) -> Result<JobView, BackendError> {
        panic!("{WHAT}")
    }
    async fn list(&self, _: ListQuery) -> Result<JobList, BackendError> {
        panic!("{WHAT}")
    }
    async fn cancel(&self, _: JobId) -> Result<JobView, BackendError> {
        panic!("{WHAT}")
    }
    async fn wait(&self, _: JobId) -> Result<JobView, BackendError> {
        panic!("{WHAT}")
    }
    async fn events_after(
        &self,
        _: JobId,
        _: u64,
    ) -> Result<Vec<tsbridge_proto::JobEvent>, BackendError> {
        panic!("{WHAT}")
    }
    fn subscribe(&self, _: JobId) -> EventFeed {
        panic!("{WHAT}")
    }
    fn workflows(&self) -> Vec<WorkflowInfo> {
        Vec::new()
    }
    async fn readiness(&self) -> Readiness {
        panic!("{WHAT}")
    }
    fn stats(&self) -> Stats {
        panic!("{WHAT}")
    }
    async fn shutdown(&self, _: Duration) {}
}

const JOB: &str = "/v1/jobs/01a21bd1-3461-758a-a912-328a672feb1f";

#[tokio::test]
async fn a_panicking_handler_answers_500_internal_error_and_the_server_goes_on() {
    let state = state_for(Arc::new(PanickingBackend), settings());
    let server = TestServer::start(state).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client.get(server.url(JOB)).send().await.expect("an answer");
        assert_eq!(r.status().as_u16(), 500);
        let body: Value = r.json().await.expect("a JSON body");
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["error"]["type"], "InternalError", "{body}");
        let text = body.to_string();
        assert!(!text.contains(WHAT), "internals hidden: {text}");
        assert!(!text.contains("panicked"), "internals hidden: {text}");
    }
    // The server still serves what does not panic.
    let r = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Dev mode shows what happened.
    let mut dev = settings();
    dev.dev = true;
    let a = call(
        &state_for(Arc::new(PanickingBackend), dev),
        "GET",
        JOB,
        None,
        None,
    )
    .await;
    assert_failure(&a, 500, "InternalError");
    assert!(a.body.to_string().contains(WHAT), "{:?}", a.body);
}
