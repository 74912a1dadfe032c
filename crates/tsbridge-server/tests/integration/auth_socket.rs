//! Bearer tokens over a real socket: REST with the header, the WebSocket
//! with the header or `?token=`, SSE with `?token=`, `/healthz` open; a
//! non-loopback listener without a token is refused at startup.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn tokens_over_the_socket() {
    let (state, _) = fake_state(with_token(settings()));
    let server = TestServer::start(state).await;
    let http = reqwest::Client::new();

    let r = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(server.url("/v1/workflows")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tsbridge\"");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "Unauthorized");
    let r = http
        .get(server.url("/v1/workflows"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // WebSocket: refused without a token, accepted with ?token= or the header.
    let err = connect_async(server.ws_url("/v1/ws"))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(
        connect_async(server.ws_url("/v1/ws?token=wrong"))
            .await
            .is_err()
    );
    let (mut ws, _) = connect_async(server.ws_url(&format!("/v1/ws?token={TOKEN}")))
        .await
        .expect("token in query");
    ws.send(Message::text(json!({"type": "nope"}).to_string()))
        .await
        .unwrap();
    let m = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break t,
            _ => continue,
        }
    };
    assert_eq!(
        m.as_str(),
        r#"{"type":"error","message":"Unknown message type: nope"}"#
    );
    let mut req = server.ws_url("/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    assert!(connect_async(req).await.is_ok());

    // SSE with ?token=.
    let submitted: serde_json::Value = http
        .post(server.url("/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(&json!({"workflow": "echo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["data"]["jobId"].as_str().unwrap();
    let r = http
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(server.url(&format!("/v1/jobs/{id}/events?token={TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("event: state"));
}

#[tokio::test]
async fn a_public_bind_without_tokens_is_refused() {
    let (state, _) = fake_state(settings());
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = tsbridge_server::serve(listener, state, std::future::pending())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, tsbridge_server::ServeError::TokenRequired { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("without a bearer token"));

    // With a token it serves (stopped right away).
    let (state, _) = fake_state(with_token(settings()));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    state.shutdown_token().cancel();
    tsbridge_server::serve(listener, state, std::future::pending())
        .await
        .expect("serves, then stops");
}
