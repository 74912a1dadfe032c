//! `GET /v1/ws`: the WebSocket API (SPEC §8). A client subscribes to,
//! unsubscribes from and cancels jobs (`workflowId` or `jobId`); the server
//! answers `subscribed`, then a `state` message with the job's current state
//! and its last `progress`, then live `progress`, `log`, `result`, `state`
//! and `cancelled` messages. One connection may follow many jobs. A client
//! message is JSON in a text frame, or UTF-8 JSON in a binary frame.
//!
//! A connection is **one task** and no channel: it polls the socket, its
//! subscriptions (each a [`Follower`] of one job, polled in place) and the
//! cancels it started, and writes from one bounded queue. An idle connection
//! holds its socket, tungstenite's small read buffer, that task and, per
//! subscription, a few hundred bytes (the follower and the bus's slot,
//! which allocates only when events arrive). A client that does not read is
//! disconnected once the queue stays full for `ws_slow_after`; it never
//! slows a job (followers read the bus, which drops laggards, and catch up
//! from the store).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_stream::StreamMap;
use tsbridge_proto::ws::{ClientMessage, JobRef, ServerMessage, WsProgress};
use tsbridge_proto::{ErrorType, EventData, JobEvent, JobId, JobState, Progress};

use crate::backend::Backend;
use crate::errors::ApiError;
use crate::events::Follower;
use crate::state::AppState;

/// The error for a binary frame that is not UTF-8 (a UTF-8 one is read as
/// the same text frame would be).
const NOT_UTF8: &str = "Invalid JSON message: a binary frame must be UTF-8 JSON text";
/// The largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Jobs one connection may follow at once (each costs a feed); past it a
/// `subscribe` is answered with an error, as are cancels past the second
/// bound (each waits for its job's end on a task of its own).
pub const MAX_SUBSCRIPTIONS: usize = 1024;
pub const MAX_PENDING_CANCELS: usize = 256;
/// tungstenite's read buffer, held by every connection while idle. Client
/// messages are tiny; a larger one is still read whole (tungstenite
/// reserves a frame's full length), only in more reads.
const READ_BUFFER: usize = 1024;
/// Frames are written once this many bytes are buffered, or when the queue
/// is empty (a flush).
const WRITE_BUFFER: usize = 4096;
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
        (status = 400, description = "Not a WebSocket handshake", body = tsbridge_proto::api::Failure),
        (status = 401, description = "Missing or invalid token", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        // A plain GET, or a handshake missing a header: say which, with
        // axum's status (400, or 426 when the connection cannot upgrade).
        Err(rej) => {
            let message = format!("not a WebSocket handshake: {}", rej.body_text());
            let mut resp = ApiError::validation(message).into_response();
            *resp.status_mut() = rej.status();
            return resp;
        }
    };
    // Small per-connection buffers: tungstenite's default 128 KiB read buffer
    // would cost ~1.3 GiB for 10,000 idle subscribers.
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| connection(state, socket))
}

/// One job followed by one connection.
type Subscription = BoxStream<'static, ServerMessage>;

/// What the connection's task owns besides its timers.
struct Conn {
    socket: WebSocket,
    /// Messages waiting for the socket.
    queue: VecDeque<Message>,
    /// `queue` is full at this length: subscriptions are not polled and the
    /// client's messages not read until it drains.
    limit: usize,
    /// Frames handed to the socket since its last flush.
    unflushed: bool,
    subs: StreamMap<JobId, Subscription>,
    /// Cancels in flight: their answer, if any.
    cancels: Vec<JoinHandle<Option<ServerMessage>>>,
}

/// Why the connection's task woke up.
enum Wake {
    Shutdown,
    Ping,
    /// The queue stayed full for `ws_slow_after`.
    Slow,
    /// The socket failed while writing.
    Broken,
    Incoming(Option<Result<Message, axum::Error>>),
}

impl Conn {
    fn push(&mut self, msg: &ServerMessage) {
        if let Ok(text) = serde_json::to_string(msg) {
            self.queue.push_back(Message::Text(text.into()));
        }
    }

    fn error(&mut self, message: impl Into<String>) {
        self.push(&ServerMessage::Error {
            message: message.into(),
        });
    }

    fn full(&self) -> bool {
        self.queue.len() >= self.limit
    }

    /// Hands queued frames to the socket and flushes once the queue is
    /// empty. `Err` when the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), axum::Error> {
        while !self.queue.is_empty() {
            match self.socket.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(msg) = self.queue.pop_front() {
                        self.socket.start_send_unpin(msg)?;
                        self.unflushed = true;
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        if self.queue.capacity() > 0 {
            // Hold no buffer while idle.
            self.queue = VecDeque::new();
        }
        if self.unflushed {
            match self.socket.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Moves what the subscriptions and cancels have ready into the queue,
    /// while there is room. Whether it stopped because the queue is full.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.cancels.is_empty() {
            let mut answers = Vec::new();
            self.cancels.retain_mut(|h| match h.poll_unpin(cx) {
                Poll::Ready(r) => {
                    answers.extend(r.ok().flatten());
                    false
                }
                Poll::Pending => true,
            });
            for m in &answers {
                self.push(m);
            }
        }
        while !self.full() {
            match self.subs.poll_next_unpin(cx) {
                Poll::Ready(Some((_, m))) => self.push(&m),
                // Nothing ready (or no subscription left).
                Poll::Ready(None) | Poll::Pending => return false,
            }
        }
        true
    }

    /// Writes until the queue is empty (or `limit` passes), then closes.
    async fn flush_and_close(&mut self) {
        let _ = poll_fn(|cx| {
            if let Err(e) = self.poll_write(cx) {
                return Poll::Ready(Err(e));
            }
            if !self.queue.is_empty() || self.unflushed {
                return Poll::Pending;
            }
            self.socket.poll_close_unpin(cx)
        })
        .await;
    }
}

/// Not an `async fn`: its future would hold its arguments twice (as
/// arguments and as the locals they are moved into), and every idle
/// connection holds this future; an `async move` block uses what it
/// captured in place.
fn connection(state: AppState, socket: WebSocket) -> impl Future<Output = ()> + Send {
    let mut conn = Conn {
        socket,
        queue: VecDeque::new(),
        limit: state.settings().ws_send_buffer.max(8),
        unflushed: false,
        subs: StreamMap::new(),
        cancels: Vec::new(),
    };
    let open = trim::Open::start();
    async move {
        // Dropped last: after everything the connection held.
        let _open = open;
        let settings = state.settings();
        let keepalive = settings.keepalive.max(Duration::from_millis(100));
        let slow_after = settings.ws_slow_after;
        // The timers live in this block only: the future's final flush below
        // reuses their room (every idle connection holds this future).
        let was_slow = {
            let shutdown = state.shutdown_token().cancelled();
            let ping = tokio::time::sleep(keepalive);
            // Armed while the queue is full.
            let slow = tokio::time::sleep(slow_after);
            tokio::pin!(shutdown, ping, slow);
            let mut slow_armed = false;
            let mut last_heard = Instant::now();

            loop {
                let wake = poll_fn(|cx| {
                    if shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Shutdown);
                    }
                    loop {
                        let stopped_full = conn.poll_fill(cx);
                        let before = conn.queue.len();
                        if conn.poll_write(cx).is_err() {
                            return Poll::Ready(Wake::Broken);
                        }
                        // Go on only if the queue was full and the socket took some.
                        if !(stopped_full && conn.queue.len() < before) {
                            break;
                        }
                    }
                    if conn.full() {
                        if !slow_armed {
                            slow_armed = true;
                            slow.as_mut()
                                .reset(tokio::time::Instant::now() + slow_after);
                        }
                        if slow.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::Slow);
                        }
                    } else {
                        slow_armed = false;
                        // Backpressure: the client's messages are read only while
                        // their answers have room.
                        if let Poll::Ready(msg) = conn.socket.poll_next_unpin(cx) {
                            return Poll::Ready(Wake::Incoming(msg));
                        }
                    }
                    if ping.as_mut().poll(cx).is_ready() {
                        ping.as_mut().reset(tokio::time::Instant::now() + keepalive);
                        return Poll::Ready(Wake::Ping);
                    }
                    Poll::Pending
                })
                .await;
                match wake {
                    Wake::Shutdown => break false,
                    Wake::Broken => return,
                    Wake::Slow => break true,
                    Wake::Ping => {
                        if last_heard.elapsed() > keepalive * 3 {
                            tracing::debug!("websocket client stopped answering pings");
                            break false;
                        }
                        conn.queue.push_back(Message::Ping(Default::default()));
                    }
                    Wake::Incoming(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                        break false;
                    }
                    Wake::Incoming(Some(Ok(msg))) => {
                        last_heard = Instant::now();
                        match msg {
                            // Boxed: its future (a few hundred bytes) lives only
                            // while a message is handled, not in every idle
                            // connection.
                            Message::Text(text) => {
                                Box::pin(on_text(&state, &mut conn, text.as_str())).await
                            }
                            // Some clients (Node `ws` wrappers handed a
                            // Buffer) send their JSON as a binary frame.
                            Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                                Ok(text) => Box::pin(on_text(&state, &mut conn, text)).await,
                                Err(_) => conn.error(NOT_UTF8),
                            },
                            _ => {}
                        }
                    }
                }
            }
        };

        conn.subs = StreamMap::new();
        if was_slow {
            // The client does not read: do not wait on it.
            tracing::info!("websocket client too slow: disconnected");
            metrics::counter!("tsbridge_ws_slow_disconnects_total").increment(1);
            return;
        }
        let reason = if state.shutdown_token().is_cancelled() {
            (close_code::AWAY, "server shutting down")
        } else {
            (close_code::NORMAL, "")
        };
        conn.queue.push_back(Message::Close(Some(CloseFrame {
            code: reason.0,
            reason: reason.1.into(),
        })));
        let _ = tokio::time::timeout(FLUSH_ON_CLOSE, Box::pin(conn.flush_and_close())).await;
    }
}

/// Giving memory back to the OS after many connections closed. glibc's
/// malloc keeps what a connection freed in its arenas (small chunks, spread
/// over the heap: only the top of a heap is released on its own), so a
/// server that once held 10,000 connections would keep their memory for
/// good. When the number of open connections has fallen by at least
/// [`trim::MIN_DROP`] and to at most half of its peak since the last trim,
/// `malloc_trim(0)` runs once on a blocking thread (it releases the free
/// pages of every arena). A few trims happen as a crowd leaves (at half,
/// a quarter, ... of the peak), none in a steady state.
mod trim {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The drop in open connections that is worth a trim.
    pub const MIN_DROP: usize = 1000;

    static OPEN: AtomicUsize = AtomicUsize::new(0);
    /// The most connections open at once since the last trim.
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Whether falling from `peak` to `open` connections is worth a trim.
    pub fn worth_it(peak: usize, open: usize) -> bool {
        peak >= open + MIN_DROP && open <= peak / 2
    }

    /// Counts one open connection.
    #[derive(Debug)]
    pub struct Open(());

    impl Open {
        pub fn start() -> Self {
            let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
            PEAK.fetch_max(open, Ordering::Relaxed);
            Self(())
        }
    }

    impl Drop for Open {
        fn drop(&mut self) {
            let open = OPEN.fetch_sub(1, Ordering::Relaxed) - 1;
            let peak = PEAK.load(Ordering::Relaxed);
            if worth_it(peak, open)
                && PEAK
                    .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::debug!(
                    peak,
                    open,
                    "websocket connections dropped: trimming the heap"
                );
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(release);
                }
            }
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn release() {
        unsafe extern "C" {
            /// glibc: returns free memory of every arena to the OS.
            safe fn malloc_trim(pad: usize) -> i32;
        }
        malloc_trim(0);
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn release() {}
}

/// What `Unknown message type: X` names: the brief's `${message.type}`.
fn type_name(v: &Value) -> String {
    match v.get("type") {
        None => "undefined".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

async fn on_text(state: &AppState, conn: &mut Conn, text: &str) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        conn.error("Invalid JSON message");
        return;
    };
    let ty = type_name(&value);
    if !matches!(ty.as_str(), "subscribe" | "unsubscribe" | "cancel") {
        conn.error(format!("Unknown message type: {ty}"));
        return;
    }
    let msg = match serde_json::from_value::<ClientMessage>(value) {
        Ok(m) => m,
        Err(e) => {
            conn.error(format!("Invalid {ty} message: {e}"));
            return;
        }
    };
    let (ClientMessage::Subscribe(r) | ClientMessage::Unsubscribe(r) | ClientMessage::Cancel(r)) =
        &msg;
    let Some((raw, id)) = job_of(conn, r) else {
        return;
    };
    match msg {
        ClientMessage::Subscribe(_) => {
            if conn.subs.contains_key(&id) {
                conn.push(&ServerMessage::Subscribed { workflow_id: raw });
                return;
            }
            if conn.subs.len() >= MAX_SUBSCRIPTIONS {
                conn.error(format!(
                    "Cannot subscribe to {raw}: this connection follows {MAX_SUBSCRIPTIONS} jobs already"
                ));
                return;
            }
            match state.backend().get(id).await {
                Ok(_) => {}
                Err(e) if e.kind == ErrorType::NotFound => {
                    conn.error(format!("Unknown job: {raw}"));
                    return;
                }
                Err(e) => {
                    conn.error(format!("Cannot subscribe to {raw}: {}", e.message));
                    return;
                }
            }
            conn.push(&ServerMessage::Subscribed {
                workflow_id: raw.clone(),
            });
            conn.subs
                .insert(id, JobFeed::new(state.backend_arc(), id, raw).into_stream());
        }
        ClientMessage::Unsubscribe(_) => {
            conn.subs.remove(&id);
            conn.push(&ServerMessage::Unsubscribed { workflow_id: raw });
        }
        ClientMessage::Cancel(_) => {
            // A subscriber hears `cancelled` from its subscription; anyone
            // else gets it from here. On a task of its own: a cancel waits
            // for the job's end, and must not hold up this connection (nor
            // stop if the client leaves).
            if conn.cancels.len() >= MAX_PENDING_CANCELS {
                conn.error(format!(
                    "Cannot cancel {raw}: {MAX_PENDING_CANCELS} cancels of this connection are still running"
                ));
                return;
            }
            let subscribed = conn.subs.contains_key(&id);
            let backend = state.backend_arc();
            conn.cancels.push(tokio::spawn(async move {
                match backend.cancel(id).await {
                    Ok(view) if !subscribed => Some(ServerMessage::Cancelled {
                        workflow_id: raw,
                        data: json!({"jobId": id, "state": view.state, "reason": view.reason}),
                    }),
                    Ok(_) => None,
                    Err(e) if e.kind == ErrorType::NotFound => Some(ServerMessage::Error {
                        message: format!("Unknown job: {raw}"),
                    }),
                    Err(e) => Some(ServerMessage::Error {
                        message: format!("Cannot cancel {raw}: {}", e.message),
                    }),
                }
            }));
        }
    }
}

fn job_of(conn: &mut Conn, r: &JobRef) -> Option<(String, JobId)> {
    let Some(raw) = r.id() else {
        conn.error("Missing workflowId");
        return None;
    };
    match raw.parse::<JobId>() {
        Ok(id) => Some((raw.to_owned(), id)),
        Err(_) => {
            conn.error(format!("Unknown job: {raw}"));
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
            timestamp: tsbridge_proto::time::rfc3339(at),
        },
    }
}

/// The messages one job event becomes.
fn messages_for(raw: &str, e: &JobEvent) -> Vec<ServerMessage> {
    let at = tsbridge_proto::time::rfc3339(&e.timestamp);
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

/// One subscription: the job's snapshot, then its live messages. Polled by
/// the connection's task (through [`JobFeed::into_stream`]); idle, it is
/// this struct and its follower.
struct JobFeed {
    backend: Arc<dyn Backend>,
    id: JobId,
    /// The id as the client wrote it.
    raw: String,
    /// Messages of the last snapshot or event not yet handed out.
    ready: std::vec::IntoIter<ServerMessage>,
    started: bool,
    /// Live events, after a snapshot of a job that is not over.
    follower: Option<Follower>,
    sent_result: bool,
}

impl JobFeed {
    fn new(backend: Arc<dyn Backend>, id: JobId, raw: String) -> Self {
        Self {
            backend,
            id,
            raw,
            ready: Vec::new().into_iter(),
            started: false,
            follower: None,
            sent_result: false,
        }
    }

    fn into_stream(self) -> Subscription {
        futures::stream::unfold(self, |mut feed| async move {
            let m = feed.next().await?;
            Some((m, feed))
        })
        .boxed()
    }

    fn set_ready(&mut self, msgs: Vec<ServerMessage>) {
        self.ready = msgs.into_iter();
    }

    async fn next(&mut self) -> Option<ServerMessage> {
        loop {
            if let Some(m) = self.ready.next() {
                return Some(m);
            }
            // Do not keep the spent buffer while idle.
            self.ready = Vec::new().into_iter();
            if !self.started {
                self.started = true;
                self.start().await;
                continue;
            }
            let follower = self.follower.as_mut()?;
            let e = match follower.next().await {
                None => {
                    self.follower = None;
                    return None;
                }
                Some(Err(err)) => {
                    self.follower = None;
                    let message = format!(
                        "Stream of {} failed: {}",
                        self.raw,
                        err.public_body().message
                    );
                    return Some(ServerMessage::Error { message });
                }
                Some(Ok(e)) => e,
            };
            let mut msgs = Vec::new();
            if matches!(e.data, EventData::Result { .. }) {
                self.sent_result = true;
            }
            if e.data.is_terminal_state() && !self.sent_result {
                // A result taken from the whole stdout at exit may have no event.
                if let Ok(view) = self.backend.get(self.id).await
                    && let Some(value) = view.result.filter(|_| view.state == JobState::Succeeded)
                {
                    msgs.push(ServerMessage::Result {
                        workflow_id: self.raw.clone(),
                        data: value,
                    });
                }
            }
            msgs.extend(messages_for(&self.raw, &e));
            self.set_ready(msgs);
        }
    }

    /// The snapshot's messages; then follows a job that is not over.
    async fn start(&mut self) {
        let raw = &self.raw;
        // Race-free: the follower subscribes, then reads the store after
        // the snapshot's last event.
        let snapshot = match snapshot(self.backend.as_ref(), self.id).await {
            Ok(s) => s,
            Err(message) => {
                self.set_ready(vec![ServerMessage::Error {
                    message: format!("Cannot follow {raw}: {message}"),
                }]);
                return;
            }
        };
        let mut msgs = vec![ServerMessage::State {
            workflow_id: raw.clone(),
            data: snapshot.state,
        }];
        if let Some(p) = &snapshot.progress {
            msgs.extend(messages_for(raw, p));
        }
        match snapshot.terminal {
            Some(terminal) => {
                if let Some(value) = snapshot.result {
                    msgs.push(ServerMessage::Result {
                        workflow_id: raw.clone(),
                        data: value,
                    });
                }
                if terminal == JobState::Cancelled
                    && let Ok(view) = self.backend.get(self.id).await
                {
                    msgs.push(ServerMessage::Cancelled {
                        workflow_id: raw.clone(),
                        data: state_data(view.state, view.reason, None, None),
                    });
                }
            }
            None => {
                self.follower = Some(Follower::new(
                    self.backend.clone(),
                    self.id,
                    snapshot.last_seq,
                ));
            }
        }
        self.set_ready(msgs);
    }
}

async fn snapshot(backend: &dyn Backend, id: JobId) -> Result<Snapshot, String> {
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
                    snap.state = state_data(
                        *state,
                        *reason,
                        *attempt,
                        Some(tsbridge_proto::time::rfc3339(&e.timestamp)),
                    );
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
    fn trims_only_after_a_large_drop() {
        // A crowd of 10,000 leaving: at half, a quarter... of each peak.
        assert!(!trim::worth_it(10_000, 5_001));
        assert!(trim::worth_it(10_000, 5_000));
        assert!(trim::worth_it(5_000, 2_500));
        assert!(trim::worth_it(2_500, 1_250));
        assert!(!trim::worth_it(1_250, 251), "a drop of less than MIN_DROP");
        assert!(trim::worth_it(1_250, 250));
        // Small servers and steady states never trim.
        assert!(!trim::worth_it(900, 0));
        assert!(!trim::worth_it(3_000, 2_000));
    }

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
