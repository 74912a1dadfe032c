//! `GET /v1/ws`: the WebSocket API (SPEC §8). A client subscribes to,
//! unsubscribes from and cancels jobs (`workflowId` or `jobId`); the server
//! answers `subscribed`, then a `state` message with the job's current state
//! and its last `progress`, then live `progress`, `log`, `result`, `state`
//! and `cancelled` messages. One connection may follow many jobs. Every
//! message goes through one bounded queue per connection: a client that does
//! not read fast enough is disconnected; it never slows a job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tsbridge_proto::ws::{ClientMessage, JobRef, ServerMessage, WsProgress};
use tsbridge_proto::{ErrorType, EventData, JobEvent, JobId, JobState, Progress};

use crate::events::follow;
use crate::state::AppState;

/// The largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// How long a closing connection may take to flush what is queued.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(5);

/// Open the WebSocket.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "streams",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, description = "Missing or invalid token", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // Small per-connection buffers: tungstenite's default 128 KiB read buffer
    // would cost ~1.3 GiB for 10,000 idle subscribers; client messages are
    // tiny and server messages are written whole.
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| connection(state, socket))
}

/// The sending half every task of one connection shares. A burst waits for
/// room in the bounded queue; a queue that stays full for `slow_after` means
/// the client does not read, and ends the connection. Jobs never wait on
/// it: forwarders read the job's feed, and catch up from the store when they
/// fall behind.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Message>,
    /// Cancelled when the connection must end.
    stop: CancellationToken,
    /// Set when the client was too slow.
    slow: CancellationToken,
    slow_after: Duration,
}

impl Outbox {
    async fn send(&self, msg: &ServerMessage) -> bool {
        match serde_json::to_string(msg) {
            Ok(text) => self.send_raw(Message::Text(text.into())).await,
            Err(_) => true,
        }
    }

    async fn send_raw(&self, msg: Message) -> bool {
        let msg = match self.tx.try_send(msg) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
        };
        match tokio::time::timeout(self.slow_after, self.tx.send(msg)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.slow.cancel();
                self.stop.cancel();
                false
            }
        }
    }

    async fn error(&self, message: impl Into<String>) -> bool {
        self.send(&ServerMessage::Error {
            message: message.into(),
        })
        .await
    }
}

/// Aborts a job's forwarder when the subscription ends.
struct Forwarder(JoinHandle<()>);

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connection(state: AppState, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(state.settings().ws_send_buffer.max(8));
    let stop = state.shutdown_token().child_token();
    let outbox = Outbox {
        tx,
        stop: stop.clone(),
        slow: CancellationToken::new(),
        slow_after: state.settings().ws_slow_after,
    };
    let mut writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let keepalive = state.settings().keepalive.max(Duration::from_millis(100));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut subs: HashMap<JobId, Forwarder> = HashMap::new();

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ping.tick() => {
                if last_heard.elapsed() > keepalive * 3 {
                    tracing::debug!("websocket client stopped answering pings");
                    break;
                }
                outbox.send_raw(Message::Ping(Default::default())).await;
            }
            msg = incoming.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(msg)) => {
                    last_heard = Instant::now();
                    match msg {
                        Message::Text(text) => on_text(&state, &outbox, &mut subs, text.as_str()).await,
                        Message::Binary(_) => { outbox.error("Invalid JSON message").await; }
                        _ => {}
                    }
                }
            }
        }
    }

    drop(subs);
    if outbox.slow.is_cancelled() {
        // The client does not read: do not wait on it.
        tracing::info!("websocket client too slow: disconnected");
        metrics::counter!("tsbridge_ws_slow_disconnects_total").increment(1);
        writer.abort();
        return;
    }
    let reason = if state.shutdown_token().is_cancelled() {
        (close_code::AWAY, "server shutting down")
    } else {
        (close_code::NORMAL, "")
    };
    let _ = outbox.tx.try_send(Message::Close(Some(CloseFrame {
        code: reason.0,
        reason: reason.1.into(),
    })));
    drop(outbox);
    if tokio::time::timeout(FLUSH_ON_CLOSE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// What `Unknown message type: X` names: the brief's `${message.type}`.
fn type_name(v: &Value) -> String {
    match v.get("type") {
        None => "undefined".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

async fn on_text(
    state: &AppState,
    outbox: &Outbox,
    subs: &mut HashMap<JobId, Forwarder>,
    text: &str,
) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        outbox.error("Invalid JSON message").await;
        return;
    };
    let ty = type_name(&value);
    if !matches!(ty.as_str(), "subscribe" | "unsubscribe" | "cancel") {
        outbox.error(format!("Unknown message type: {ty}")).await;
        return;
    }
    let msg = match serde_json::from_value::<ClientMessage>(value) {
        Ok(m) => m,
        Err(e) => {
            outbox.error(format!("Invalid {ty} message: {e}")).await;
            return;
        }
    };
    let (ClientMessage::Subscribe(r) | ClientMessage::Unsubscribe(r) | ClientMessage::Cancel(r)) =
        &msg;
    let Some((raw, id)) = job_of(outbox, r).await else {
        return;
    };
    match msg {
        ClientMessage::Subscribe(_) => {
            if subs.contains_key(&id) {
                outbox
                    .send(&ServerMessage::Subscribed { workflow_id: raw })
                    .await;
                return;
            }
            match state.backend().get(id).await {
                Ok(_) => {}
                Err(e) if e.kind == ErrorType::NotFound => {
                    outbox.error(format!("Unknown job: {raw}")).await;
                    return;
                }
                Err(e) => {
                    outbox
                        .error(format!("Cannot subscribe to {raw}: {}", e.message))
                        .await;
                    return;
                }
            }
            outbox
                .send(&ServerMessage::Subscribed {
                    workflow_id: raw.clone(),
                })
                .await;
            let task = tokio::spawn(forward(state.clone(), outbox.clone(), id, raw));
            subs.insert(id, Forwarder(task));
        }
        ClientMessage::Unsubscribe(_) => {
            subs.remove(&id);
            outbox
                .send(&ServerMessage::Unsubscribed { workflow_id: raw })
                .await;
        }
        ClientMessage::Cancel(_) => {
            // A subscriber hears `cancelled` from its forwarder; anyone else
            // gets it here.
            let subscribed = subs.contains_key(&id);
            let backend = state.backend_arc();
            let outbox = outbox.clone();
            tokio::spawn(async move {
                match backend.cancel(id).await {
                    Ok(view) if !subscribed => {
                        outbox.send(&ServerMessage::Cancelled {
                            workflow_id: raw,
                            data: json!({"jobId": id, "state": view.state, "reason": view.reason}),
                        }).await;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind == ErrorType::NotFound => {
                        outbox.error(format!("Unknown job: {raw}")).await;
                    }
                    Err(e) => {
                        outbox
                            .error(format!("Cannot cancel {raw}: {}", e.message))
                            .await;
                    }
                }
            });
        }
    }
}

async fn job_of(outbox: &Outbox, r: &JobRef) -> Option<(String, JobId)> {
    let Some(raw) = r.id() else {
        outbox.error("Missing workflowId").await;
        return None;
    };
    match raw.parse::<JobId>() {
        Ok(id) => Some((raw.to_owned(), id)),
        Err(_) => {
            outbox.error(format!("Unknown job: {raw}")).await;
            None
        }
    }
}

/// What a late subscriber is told first.
struct Snapshot {
    last_seq: u64,
    state: Value,
    terminal: Option<JobState>,
    progress: Option<JobEvent>,
    result: Option<Value>,
}

fn state_data(
    state: JobState,
    reason: Option<tsbridge_proto::EndReason>,
    attempt: Option<u32>,
    at: Option<String>,
) -> Value {
    let mut d = json!({"state": state, "reason": reason});
    if let Some(a) = attempt {
        d["attempt"] = json!(a);
    }
    if let Some(t) = at {
        d["timestamp"] = json!(t);
    }
    d
}

fn progress_message(raw: &str, p: &Progress, at: &chrono::DateTime<chrono::Utc>) -> ServerMessage {
    ServerMessage::Progress {
        workflow_id: raw.to_owned(),
        data: WsProgress {
            task_id: raw.to_owned(),
            progress: p.percentage,
            message: p.message.clone(),
            stage: format!("{}/{}", p.current, p.total),
            timestamp: at.to_rfc3339(),
        },
    }
}

/// The messages one job event becomes.
fn messages_for(raw: &str, e: &JobEvent) -> Vec<ServerMessage> {
    let at = e.timestamp.to_rfc3339();
    let workflow_id = raw.to_owned();
    match &e.data {
        EventData::Progress(p) => vec![progress_message(raw, p, &e.timestamp)],
        EventData::Log { level, message } => vec![ServerMessage::Log {
            workflow_id,
            data: json!({"level": level, "message": message, "timestamp": at}),
        }],
        EventData::Stdout { line } => vec![ServerMessage::Log {
            workflow_id,
            data: json!({"level": "info", "stream": "stdout", "message": line, "timestamp": at}),
        }],
        EventData::Stderr { line } => vec![ServerMessage::Log {
            workflow_id,
            data: json!({"level": "warn", "stream": "stderr", "message": line, "timestamp": at}),
        }],
        EventData::Result { value } => vec![ServerMessage::Result {
            workflow_id,
            data: value.clone(),
        }],
        EventData::State {
            state,
            reason,
            attempt,
        } => {
            let data = state_data(*state, *reason, *attempt, Some(at));
            let mut out = vec![ServerMessage::State {
                workflow_id: workflow_id.clone(),
                data: data.clone(),
            }];
            if *state == JobState::Cancelled {
                out.push(ServerMessage::Cancelled { workflow_id, data });
            }
            out
        }
    }
}

/// Sends one job's snapshot, then its live events, to one connection.
async fn forward(state: AppState, outbox: Outbox, id: JobId, raw: String) {
    let backend = state.backend_arc();
    // Race-free: the follower below subscribes, then reads the store after
    // the snapshot's last event.
    let snapshot = match snapshot(&state, id).await {
        Ok(s) => s,
        Err(message) => {
            outbox
                .error(format!("Cannot follow {raw}: {message}"))
                .await;
            return;
        }
    };
    let mut sent_result = false;
    if !outbox
        .send(&ServerMessage::State {
            workflow_id: raw.clone(),
            data: snapshot.state,
        })
        .await
    {
        return;
    }
    if let Some(p) = &snapshot.progress {
        for m in messages_for(&raw, p) {
            if !outbox.send(&m).await {
                return;
            }
        }
    }
    if let Some(terminal) = snapshot.terminal {
        if let Some(value) = snapshot.result {
            outbox
                .send(&ServerMessage::Result {
                    workflow_id: raw.clone(),
                    data: value,
                })
                .await;
        }
        if terminal == JobState::Cancelled
            && let Ok(view) = backend.get(id).await
        {
            outbox
                .send(&ServerMessage::Cancelled {
                    workflow_id: raw.clone(),
                    data: state_data(view.state, view.reason, None, None),
                })
                .await;
        }
        return;
    }
    let mut events = follow(
        backend.clone(),
        id,
        snapshot.last_seq,
        outbox.stop.child_token(),
    );
    while let Some(item) = events.next().await {
        let e = match item {
            Ok(e) => e,
            Err(err) => {
                outbox
                    .error(format!(
                        "Stream of {raw} failed: {}",
                        err.public_body().message
                    ))
                    .await;
                return;
            }
        };
        if matches!(e.data, EventData::Result { .. }) {
            sent_result = true;
        }
        if e.data.is_terminal_state() && !sent_result {
            // A result taken from the whole stdout at exit may have no event.
            if let Ok(view) = backend.get(id).await
                && let Some(value) = view.result.filter(|_| view.state == JobState::Succeeded)
            {
                outbox
                    .send(&ServerMessage::Result {
                        workflow_id: raw.clone(),
                        data: value,
                    })
                    .await;
            }
        }
        for m in messages_for(&raw, &e) {
            if !outbox.send(&m).await {
                return;
            }
        }
    }
}

async fn snapshot(state: &AppState, id: JobId) -> Result<Snapshot, String> {
    let backend = state.backend();
    let view = backend.get(id).await.map_err(|e| e.message)?;
    let mut snap = Snapshot {
        last_seq: 0,
        state: state_data(view.state, view.reason, None, None),
        terminal: None,
        progress: None,
        result: None,
    };
    let mut current = view.state;
    // Batch by batch: a read returns a bounded number of events.
    loop {
        let batch = backend
            .events_after(id, snap.last_seq)
            .await
            .map_err(|e| e.message)?;
        let before = snap.last_seq;
        for e in batch {
            if e.seq <= snap.last_seq {
                continue;
            }
            snap.last_seq = e.seq;
            match &e.data {
                EventData::State {
                    state,
                    reason,
                    attempt,
                } => {
                    current = *state;
                    snap.state =
                        state_data(*state, *reason, *attempt, Some(e.timestamp.to_rfc3339()));
                }
                EventData::Progress(_) => snap.progress = Some(e.clone()),
                EventData::Result { value } => snap.result = Some(value.clone()),
                _ => {}
            }
        }
        if snap.last_seq == before {
            break;
        }
    }
    if current.is_terminal() {
        snap.terminal = Some(current);
        if snap.result.is_none() && current == JobState::Succeeded {
            snap.result = view.result;
        }
    }
    Ok(snap)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_names() {
        assert_eq!(type_name(&json!({"type": "x"})), "x");
        assert_eq!(type_name(&json!({})), "undefined");
        assert_eq!(type_name(&json!({"type": 5})), "5");
    }

    #[test]
    fn cancelled_state_also_says_cancelled() {
        let e = JobEvent {
            seq: 4,
            job_id: JobId::new(),
            timestamp: chrono::Utc::now(),
            data: EventData::State {
                state: JobState::Cancelled,
                reason: Some(tsbridge_proto::EndReason::Cancelled),
                attempt: Some(1),
            },
        };
        let m = messages_for("j", &e);
        assert_eq!(m.len(), 2);
        let v = serde_json::to_value(&m[1]).unwrap();
        assert_eq!(v["type"], "cancelled");
        assert_eq!(v["data"]["state"], "cancelled");
    }
}
