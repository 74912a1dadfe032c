//! Shared test helpers: requests through the router (`oneshot`) and a real
//! server on 127.0.0.1:0 behind a `Drop` guard.

#![allow(dead_code)]

pub mod fake;
/// A PostgreSQL database per test: the runtime's test support, shared.
#[path = "../../../../tsbridge-runtime/tests/integration/pg_support.rs"]
pub mod pg_support;
pub mod real;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tsbridge_server::{AppState, Auth, Backend, ServerSettings, TokenSource, router, serve};

pub use fake::FakeBackend;

pub const TOKEN: &str = "test-token-123";

pub fn settings() -> ServerSettings {
    ServerSettings {
        keepalive: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..ServerSettings::default()
    }
}

pub fn fake_state(settings: ServerSettings) -> (AppState, FakeBackend) {
    let fake = FakeBackend::new();
    let state = state_for(Arc::new(fake.clone()), settings);
    (state, fake)
}

pub fn state_for(backend: Arc<dyn Backend>, settings: ServerSettings) -> AppState {
    let auth = Auth::resolve(&settings.tokens).expect("tokens resolve");
    AppState::with_auth(backend, settings, auth)
}

pub fn with_token(mut s: ServerSettings) -> ServerSettings {
    s.tokens = vec![TokenSource::Literal(TOKEN.to_owned())];
    s
}

/// An answer read whole: status, headers, JSON body (or `Value::String` of
/// a non-JSON body).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    send(state, req).await
}

/// `POST uri` with a JSON `body`, without a token.
pub async fn post(state: &AppState, uri: &str, body: &str) -> Answer {
    call(state, "POST", uri, Some(body), None).await
}

/// `POST /workflow/{workflow}/execute` with the JSON `body`, without a
/// token.
pub async fn execute_with(state: &AppState, workflow: &str, body: &str) -> Answer {
    post(state, &format!("/workflow/{workflow}/execute"), body).await
}

/// [`execute_with`] a body of these parameters only.
pub async fn execute(state: &AppState, workflow: &str, parameters: Value) -> Answer {
    let body = serde_json::json!({ "parameters": parameters }).to_string();
    execute_with(state, workflow, &body).await
}

/// `POST /v1/jobs/{id}/cancel`, without a token.
pub async fn cancel(state: &AppState, id: &str) -> Answer {
    call(state, "POST", &format!("/v1/jobs/{id}/cancel"), None, None).await
}

pub async fn send(state: &AppState, req: Request<Body>) -> Answer {
    let resp = router(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// Asserts a failure body of exactly `{success:false, error:{type, message, details?}}`.
impl Answer {
    /// The failure's `error.message` (panics when it has none).
    pub fn message(&self) -> &str {
        self.body["error"]["message"]
            .as_str()
            .expect("a failure with a message")
    }
}

pub fn assert_failure(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status.as_u16(), status, "{a:?}");
    assert_eq!(a.body["success"], false, "{a:?}");
    assert_eq!(a.body["error"]["type"], kind, "{a:?}");
    assert!(a.body["error"]["message"].is_string(), "{a:?}");
    let obj = a.body["error"].as_object().expect("error object");
    assert!(
        obj.keys()
            .all(|k| ["type", "message", "details"].contains(&k.as_str())),
        "{a:?}"
    );
    assert!(
        a.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{a:?}"
    );
}

/// A real server on 127.0.0.1:0; shut down (bounded) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    handle: Option<tokio::task::JoinHandle<Result<(), tsbridge_server::ServeError>>>,
}

impl TestServer {
    pub async fn start(state: AppState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s = state.clone();
        let handle = tokio::spawn(async move { serve(listener, s, std::future::pending()).await });
        Self {
            addr,
            state,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), tsbridge_server::ServeError> {
        self.state.shutdown_token().cancel();
        let h = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("serve returns in time")
            .expect("no panic")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.shutdown_token().cancel();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Polls `f` until it returns `Some`, for up to 30 s.
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
