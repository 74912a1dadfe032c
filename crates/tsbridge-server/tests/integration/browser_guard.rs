//! Without tokens (a loopback listener), a web page of another site must not
//! drive the API: a "simple" cross-origin POST (no preflight: text/plain or a
//! form type) and DNS rebinding (a hostile name resolving to 127.0.0.1) are
//! refused with 403 and run nothing; local clients (curl, the SDK: no
//! `Origin`, a loopback `Host`) and loopback pages pass.

#![allow(clippy::unwrap_used)]

use crate::common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BODY: &str = r#"{"workflow":"echo","parameters":{}}"#;

fn post(headers: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::post("/v1/jobs");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::from(BODY)).unwrap()
}

#[tokio::test]
async fn pages_of_other_sites_are_refused_and_run_nothing() {
    let (state, fake) = fake_state(settings());
    for headers in [
        // A page's no-cors fetch or form post to http://127.0.0.1:8787.
        &[
            ("host", "127.0.0.1:8787"),
            ("origin", "https://evil.example"),
            ("content-type", "text/plain"),
        ][..],
        &[
            ("host", "127.0.0.1:8787"),
            ("origin", "null"),
            ("content-type", "application/x-www-form-urlencoded"),
        ][..],
        // DNS rebinding: the page's own name now resolves to 127.0.0.1.
        &[
            ("host", "evil.example:8787"),
            ("origin", "http://evil.example:8787"),
        ][..],
        &[("host", "evil.example:8787")][..],
        &[("host", "127.0.0.1.nip.io")][..],
    ] {
        let a = send(&state, post(headers)).await;
        assert_failure(&a, 403, "SecurityError");
        let message = a.message();
        assert!(message.contains("server.tokens"), "{message}");
    }
    assert_eq!(fake.job_count(), 0, "nothing ran");

    // Local clients and loopback pages pass.
    for headers in [
        &[][..],
        &[("host", "127.0.0.1:8787")][..],
        &[("host", "localhost")][..],
        &[("host", "[::1]:8787"), ("origin", "http://[::1]:8787")][..],
        &[
            ("host", "127.0.0.1:8787"),
            ("origin", "http://localhost:3000"),
        ][..],
    ] {
        let a = send(&state, post(headers)).await;
        assert_eq!(a.status, 202, "{headers:?}: {:?}", a.body);
    }
    assert_eq!(fake.job_count(), 5);

    // /healthz stays open to anyone (liveness probes).
    let r = Request::get("/healthz")
        .header("host", "evil.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&state, r).await.status, 200);
}

#[tokio::test]
async fn with_tokens_the_token_decides_not_the_host() {
    let (state, fake) = fake_state(with_token(settings()));
    let bearer = format!("Bearer {TOKEN}");
    let a = send(
        &state,
        post(&[
            ("host", "jobs.internal.example"),
            ("authorization", &bearer),
        ]),
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    let a = send(&state, post(&[("host", "jobs.internal.example")])).await;
    assert_failure(&a, 401, "Unauthorized");
    assert_eq!(fake.job_count(), 1);
}

#[tokio::test]
async fn a_websocket_from_another_site_is_refused_over_a_real_socket() {
    let (state, _) = fake_state(settings());
    let server = TestServer::start(state).await;
    let ws_url = server.url("/v1/ws").replace("http://", "ws://");

    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = connect_async(req).await.expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }

    // The same connection without a foreign origin (a local client) opens.
    let (ws, _) = connect_async(ws_url.as_str()).await.expect("local client");
    drop(ws);
}
