//! Bare axum WebSocket server mimicking tsbridge's `/v1/ws` subscribe
//! handshake (`subscribed` then `state`) and `POST /v1/jobs`, so that
//! `subscribers.js` runs against it unchanged. `WS_READ_BUFFER` (bytes) sets
//! tungstenite's read buffer (default: the library's, 128 KiB).
use axum::{
    Router,
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    response::Response,
    routing::{get, post},
};

async fn upgrade(ws: WebSocketUpgrade) -> Response {
    let ws = match std::env::var("WS_READ_BUFFER").ok().and_then(|v| v.parse().ok()) {
        Some(n) => ws.read_buffer_size(n).write_buffer_size(n),
        None => ws,
    };
    ws.on_upgrade(connection)
}

async fn connection(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        if let Message::Text(_) = msg {
            for m in [r#"{"type":"subscribed","workflowId":"j"}"#, r#"{"type":"state","workflowId":"j","data":{"state":"queued"}}"#] {
                if socket.send(Message::Text(m.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/ws", get(upgrade))
        .route(
            "/v1/jobs",
            post(|| async { (axum::http::StatusCode::ACCEPTED, r#"{"success":true,"data":{"jobId":"j","state":"queued"}}"#) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8790").await?;
    axum::serve(listener, app).await
}
