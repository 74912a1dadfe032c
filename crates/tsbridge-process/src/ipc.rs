//! Node's own IPC channel (SPEC §2.3; docs/design/ipc.md): the channel an
//! unmodified Node program reaches with `process.send` and
//! `process.on('message')`, exactly as under `child_process.fork`.
//!
//! - [`IpcChannel::new`] makes an `AF_UNIX SOCK_STREAM` socketpair (both ends
//!   close-on-exec). The engine installs the child's end at [`CHILD_FD`] in
//!   `pre_exec` with [`install_in_child`] (or [`attach_to_command`] does it
//!   all) and puts [`child_env`] in the child's environment. After spawning,
//!   the parent must drop its copy of the child's end, or it will never see
//!   the child disconnect.
//! - [`IpcParent::start`] runs two tasks over the parent's end: a reader
//!   (newline-delimited JSON, [`JsonLineDecoder`]) that answers pending
//!   requests and forwards everything else as [`IpcIncoming`], and a writer
//!   fed through a bounded queue (no lock is held across an await; queued
//!   messages are written in batches).
//! - [`IpcHandle`] sends messages, makes requests correlated by `id` with a
//!   timeout, and closes the channel.
//!
//! Node's internal messages (`cmd: "NODE_..."`) are dropped on receipt and
//! refused on sending. Envelopes of type `progress`, `log` and `result`
//! become [`ChildEvent`]s (masked with the configured [`Masker`]); any other
//! message is handed over as it is ([`IpcIncoming::Message`], not masked).

mod decoder;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tsbridge_proto::ipc::is_node_internal;
use tsbridge_proto::{ChildEvent, IpcEnvelope, IpcKind, LogLevel, Progress};

use crate::mask::Masker;

pub use decoder::JsonLineDecoder;

/// The fd number the child finds its end of the channel at.
pub const CHILD_FD: RawFd = 3;

/// Default largest incoming message.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What can go wrong with the channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("ipc channel is closed")]
    Closed,
    #[error("refusing to send node internal message {cmd:?}")]
    NodeInternal { cmd: String },
    #[error("failed to serialize an ipc message")]
    Serialize(#[source] serde_json::Error),
    #[error("ipc request {id} got no answer within {timeout:?}")]
    Timeout { id: String, timeout: Duration },
    #[error("the child answered with an error: {message}")]
    Remote { message: String, payload: Value },
}

/// What the child sent, as the engine sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum IpcIncoming {
    /// A `progress`, `log` or `result` envelope.
    Event(ChildEvent),
    /// Any other message (including `request` envelopes from the child).
    Message(Value),
    /// A line that is not a JSON message (or is too large); the channel
    /// keeps working.
    Malformed { reason: String },
    /// The child closed its end (or exited). Always the last item.
    Disconnected,
}

/// Settings of one channel.
#[derive(Clone, Debug)]
pub struct IpcOptions {
    /// Largest incoming message in bytes; larger ones are reported as
    /// [`IpcIncoming::Malformed`] and skipped.
    pub max_message: usize,
    /// Room in the incoming queue. When the consumer falls behind, the reader
    /// stops reading and the child's `process.send` queues up on its side.
    pub incoming_capacity: usize,
    /// Masks secrets in the events made from envelopes.
    pub masker: Masker,
}

impl Default for IpcOptions {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            incoming_capacity: 256,
            masker: Masker::default(),
        }
    }
}

/// Creates channels.
#[derive(Debug)]
pub struct IpcChannel;

impl IpcChannel {
    /// A new socketpair: the parent's side, and the child's end to install
    /// in the child (see [`install_in_child`]). Both are close-on-exec and
    /// numbered 3 or above (so stdio setup in the child cannot clobber them).
    /// Needs no runtime.
    #[allow(clippy::new_ret_no_self)] // a channel is its two ends
    pub fn new() -> io::Result<(IpcParent, OwnedFd)> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
        let (parent, child) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let parent = above_stdio(parent)?;
        let child = above_stdio(child)?;
        let parent = StdUnixStream::from(parent);
        parent.set_nonblocking(true)?;
        Ok((
            IpcParent {
                sock: parent,
                options: IpcOptions::default(),
            },
            child,
        ))
    }
}

/// `fd` moved to a number >= 3 if it is one of 0, 1, 2 (possible when the
/// parent runs with a standard stream closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// The environment a Node child needs to open the channel at `fd`.
pub fn child_env(fd: RawFd) -> [(String, String); 2] {
    [
        ("NODE_CHANNEL_FD".to_owned(), fd.to_string()),
        (
            "NODE_CHANNEL_SERIALIZATION_MODE".to_owned(),
            "json".to_owned(),
        ),
    ]
}

/// Puts the child's end at `target_fd`, inheritable across exec: `dup2`
/// (whose copy has no close-on-exec flag), or clearing close-on-exec when
/// the numbers are equal. Raw libc calls only: async-signal-safe, no
/// allocation, no locks.
///
/// # Safety
/// Call only in the child between fork and exec (a `pre_exec` hook): it
/// replaces whatever `target_fd` was, behind the back of any Rust object
/// that owned it.
pub unsafe fn install_in_child(child_fd: RawFd, target_fd: RawFd) -> io::Result<()> {
    if child_fd == target_fd {
        // SAFETY: fcntl on a plain fd number is async-signal-safe and touches
        // no memory.
        let flags = unsafe { libc::fcntl(child_fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    } else {
        // SAFETY: dup2 is async-signal-safe; the caller guarantees we are in
        // the forked child, where replacing target_fd harms no owner.
        if unsafe { libc::dup2(child_fd, target_fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets up `cmd` for the channel: the child's end at [`CHILD_FD`] (through a
/// `pre_exec` hook) and [`child_env`]. Keep `child_end` open until the spawn
/// returns, then drop it. For a `tokio::process::Command`, pass
/// `cmd.as_std_mut()`.
pub fn attach_to_command(cmd: &mut std::process::Command, child_end: &OwnedFd) {
    let fd = child_end.as_raw_fd();
    for (k, v) in child_env(CHILD_FD) {
        cmd.env(k, v);
    }
    let hook = move || {
        // SAFETY: this runs in the forked child, between fork and exec, where
        // replacing CHILD_FD harms no Rust owner.
        unsafe { install_in_child(fd, CHILD_FD) }
    };
    // SAFETY: the hook only calls install_in_child, which makes raw dup2 /
    // fcntl calls: async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The parent's side of a channel, before its tasks run.
#[derive(Debug)]
pub struct IpcParent {
    sock: StdUnixStream,
    options: IpcOptions,
}

impl IpcParent {
    /// Replaces the settings.
    pub fn with_options(mut self, options: IpcOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts the reader and writer tasks (on the current Tokio runtime).
    /// The receiver yields what the child sends and ends with
    /// [`IpcIncoming::Disconnected`]. The tasks end when the child
    /// disconnects and every handle is dropped (or [`IpcHandle::close`]).
    pub fn start(self) -> io::Result<(IpcHandle, mpsc::Receiver<IpcIncoming>)> {
        let stream = UnixStream::from_std(self.sock)?;
        let (rd, wr) = stream.into_split();
        let (in_tx, in_rx) = mpsc::channel(self.options.incoming_capacity.max(1));
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            backlog: Mutex::new(0),
        });
        let wr = Arc::new(wr);
        tokio::spawn(write_loop(Arc::clone(&wr), Arc::clone(&shared), cmd_rx));
        tokio::spawn(read_loop(
            rd,
            Arc::clone(&shared),
            in_tx,
            self.options.max_message,
            self.options.masker,
        ));
        Ok((
            IpcHandle {
                inner: Arc::new(HandleInner {
                    writer: cmd_tx,
                    sock: wr,
                    shared,
                }),
            },
            in_rx,
        ))
    }
}

type Reply = Result<Value, IpcError>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<String, oneshot::Sender<Reply>>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    /// Commands handed to the write loop and not yet done (a line not yet
    /// written entirely, a close). A line is written by its sender directly
    /// only when there are none, so the order of lines holds.
    backlog: Mutex<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves the map consistent (each
        // operation is a single insert/remove), so poisoning is ignored.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the channel closed and fails every pending request.
    fn close(&self) {
        let waiting = {
            let mut p = self.lock();
            p.closed = true;
            std::mem::take(&mut p.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(IpcError::Closed));
        }
    }

    fn backlog(&self) -> MutexGuard<'_, usize> {
        // A plain counter: consistent whatever panicked while it was held.
        self.backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn complete(&self, id: &str, reply: Reply) {
        let tx = self.lock().waiting.remove(id);
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(id, "ipc answer to no pending request (late or unknown)"),
        }
    }
}

enum WriterCmd {
    Data(Vec<u8>),
    Close,
}

/// Sends to the child. Cheap to clone; the channel's writer stops when every
/// clone is dropped.
#[derive(Clone)]
pub struct IpcHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    writer: mpsc::Sender<WriterCmd>,
    /// The socket's write half, shared with the write loop: a sender writes
    /// its line itself when nothing is queued and the socket takes it all
    /// at once (no hand-off to the loop's task); the rest goes to the loop.
    sock: Arc<OwnedWriteHalf>,
    shared: Arc<Shared>,
}

impl fmt::Debug for IpcHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.inner.shared.lock();
        f.debug_struct("IpcHandle")
            .field("pending", &p.waiting.len())
            .field("closed", &p.closed)
            .finish()
    }
}

/// Removes a pending request however its future ends (answer, timeout,
/// cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiting.remove(self.id);
    }
}

impl IpcHandle {
    /// Sends one message (as `process.on('message')` will see it). Returns
    /// once the message is queued for writing; refuses Node's internal
    /// messages.
    pub async fn send(&self, value: &Value) -> Result<(), IpcError> {
        if is_node_internal(value) {
            let cmd = value
                .get("cmd")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return Err(IpcError::NodeInternal { cmd });
        }
        if self.is_closed() {
            return Err(IpcError::Closed);
        }
        self.send_line(encode(value)?).await
    }

    async fn send_line(&self, mut line: Vec<u8>) -> Result<(), IpcError> {
        // Room in the queue first (the only await: nothing is written by a
        // send that is dropped while it waits).
        let permit = self
            .inner
            .writer
            .reserve()
            .await
            .map_err(|_| IpcError::Closed)?;
        let mut backlog = self.inner.shared.backlog();
        if *backlog == 0 {
            match self.inner.sock.try_write(&line) {
                Ok(n) if n == line.len() => return Ok(()),
                Ok(n) => {
                    line.drain(..n);
                }
                // Full (the loop waits for room), or an error that the loop
                // meets again and closes the writer on, as it did for every
                // line before.
                Err(_) => {}
            }
        }
        *backlog += 1;
        permit.send(WriterCmd::Data(line));
        Ok(())
    }

    /// Sends `{id, type: "request", payload, timestamp}` and waits for the
    /// `response` (its payload) or `error` ([`IpcError::Remote`]) with the
    /// same id, for at most `timeout` (queueing included).
    pub async fn request(&self, payload: Value, timeout: Duration) -> Result<Value, IpcError> {
        let shared = &self.inner.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        {
            let mut p = shared.lock();
            if p.closed {
                return Err(IpcError::Closed);
            }
            p.waiting.insert(id.clone(), tx);
        }
        let _guard = PendingGuard { shared, id: &id };
        let envelope = IpcEnvelope::new(IpcKind::Request, Some(id.clone()), payload);
        let exchange = async {
            self.send_line(encode(&envelope)?).await?;
            rx.await.unwrap_or(Err(IpcError::Closed))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(IpcError::Timeout {
                id: id.clone(),
                timeout,
            }),
        }
    }

    /// Closes the channel: messages already queued are written, then the
    /// parent's end is shut down for writing (the child gets `'disconnect'`).
    /// Pending requests fail with [`IpcError::Closed`]; later sends too.
    pub async fn close(&self) {
        self.inner.shared.close();
        if let Ok(permit) = self.inner.writer.reserve().await {
            // Counted until the loop ends: no line is written after it.
            *self.inner.shared.backlog() += 1;
            permit.send(WriterCmd::Close);
        }
    }

    /// Whether the channel was closed (by [`IpcHandle::close`] or because the
    /// child disconnected).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed
    }

    /// Requests waiting for an answer.
    pub fn pending_requests(&self) -> usize {
        self.inner.shared.lock().waiting.len()
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, IpcError> {
    // serde_json escapes control characters in strings, so the only raw
    // newline is the frame end.
    let mut line = serde_json::to_vec(value).map_err(IpcError::Serialize)?;
    line.push(b'\n');
    Ok(line)
}

/// Largest batch the writer gathers from its queue for one write.
const WRITE_BATCH: usize = 256 * 1024;

/// Writes the lines its senders could not write at once (see
/// `IpcHandle::send_line`), in order, then shuts the socket down for
/// writing (on `Close`, a write error, or once every handle is gone).
async fn write_loop(
    wr: Arc<OwnedWriteHalf>,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<WriterCmd>,
) {
    let mut batch: Vec<u8> = Vec::new();
    'run: while let Some(cmd) = rx.recv().await {
        let mut closing = false;
        let mut first = match cmd {
            WriterCmd::Data(d) => d,
            WriterCmd::Close => break 'run,
        };
        let mut lines = 1;
        // Gather what else is queued, so a burst costs one write.
        while first.len() + batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(WriterCmd::Data(d)) => {
                    if batch.is_empty() {
                        batch.append(&mut first);
                    }
                    batch.extend_from_slice(&d);
                    lines += 1;
                }
                Ok(WriterCmd::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let bytes = if batch.is_empty() { &first } else { &batch };
        if let Err(e) = write_all(&wr, bytes).await {
            tracing::debug!(error = %e, "ipc write failed; closing the writer");
            break 'run;
        }
        batch.clear();
        // Written: senders may write directly again once nothing is queued.
        *shared.backlog() -= lines;
        if closing {
            break 'run;
        }
    }
    // The backlog stays counted: nothing is written directly from now on
    // (and sends fail once this loop's queue is gone).
    let _ = rustix::net::shutdown(wr.as_ref().as_ref(), rustix::net::Shutdown::Write);
}

/// `write_all` through a shared write half.
async fn write_all(wr: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        wr.writable().await?;
        match wr.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    shared: Arc<Shared>,
    tx: mpsc::Sender<IpcIncoming>,
    max_message: usize,
    masker: Masker,
) {
    let mut decoder = JsonLineDecoder::new(max_message);
    let mut buf = vec![0u8; 64 * 1024];
    let mut decoded: Vec<Result<Value, String>> = Vec::new();
    let mut consumer = Some(tx);
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "ipc read failed; treating as disconnect");
                break;
            }
        };
        decoder.decode(&buf[..n], &mut |r| decoded.push(r));
        for r in decoded.drain(..) {
            dispatch(r, &shared, &masker, &mut consumer).await;
        }
    }
    decoder.finish(&mut |r| decoded.push(r));
    for r in decoded.drain(..) {
        dispatch(r, &shared, &masker, &mut consumer).await;
    }
    shared.close();
    if let Some(tx) = consumer {
        let _ = tx.send(IpcIncoming::Disconnected).await;
    }
}

async fn dispatch(
    r: Result<Value, String>,
    shared: &Shared,
    masker: &Masker,
    consumer: &mut Option<mpsc::Sender<IpcIncoming>>,
) {
    let item = match r {
        Err(reason) => IpcIncoming::Malformed { reason },
        Ok(v) => match classify(v, masker) {
            Classified::Internal => return,
            Classified::Reply { id, reply } => {
                shared.complete(&id, reply);
                return;
            }
            Classified::Incoming(item) => item,
        },
    };
    if let Some(tx) = consumer
        && tx.send(item).await.is_err()
    {
        // Nobody listens any more; keep serving replies.
        *consumer = None;
    }
}

/// What one incoming message is.
#[derive(Debug)]
enum Classified {
    /// Node's own; never surfaced.
    Internal,
    /// The answer to one of our requests.
    Reply {
        id: String,
        reply: Reply,
    },
    Incoming(IpcIncoming),
}

fn classify(v: Value, masker: &Masker) -> Classified {
    if is_node_internal(&v) {
        return Classified::Internal;
    }
    let Value::Object(mut map) = v else {
        return Classified::Incoming(IpcIncoming::Message(v));
    };
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_value::<IpcKind>(Value::from(t)).ok());
    let event = match kind {
        Some(k @ (IpcKind::Response | IpcKind::Error)) => {
            let id = match map.get("id") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            if let Some(id) = id {
                let payload = map.remove("payload").unwrap_or(Value::Null);
                let reply = if k == IpcKind::Response {
                    Ok(payload)
                } else {
                    Err(IpcError::Remote {
                        message: error_message(&payload),
                        payload,
                    })
                };
                return Classified::Reply { id, reply };
            }
            None
        }
        Some(IpcKind::Progress) => map.get("payload").and_then(progress_of).map(|mut p| {
            if let std::borrow::Cow::Owned(m) = masker.mask(&p.message) {
                p.message = m;
            }
            ChildEvent::Progress(p)
        }),
        Some(IpcKind::Log) => map.get("payload").and_then(|p| {
            let (level, message) = log_of(p)?;
            Some(ChildEvent::Log {
                level,
                message: masker.mask(&message).into_owned(),
                child_timestamp: map.get("timestamp").map(|t| match t {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            })
        }),
        Some(IpcKind::Result) => map.remove("payload").map(|mut value| {
            masker.mask_json(&mut value);
            ChildEvent::Result { value }
        }),
        Some(IpcKind::Request) | None => None,
    };
    match event {
        Some(e) => Classified::Incoming(IpcIncoming::Event(e)),
        None => Classified::Incoming(IpcIncoming::Message(Value::Object(map))),
    }
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn count_of(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // A JS number: negative or NaN counts as 0, huge ones saturate.
    (f.is_finite()).then(|| f.max(0.0).round() as u64)
}

/// `{current, total, message}` or `{percentage, message}` (`progress` is
/// accepted for `percentage`).
fn progress_of(p: &Value) -> Option<Progress> {
    let obj = p.as_object()?;
    let message = text_of(obj.get("message"));
    if let (Some(current), Some(total)) = (count_of(obj.get("current")), count_of(obj.get("total")))
    {
        return Some(Progress::new(current, total, message));
    }
    let pct = obj
        .get("percentage")
        .or_else(|| obj.get("progress"))
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite())?
        .clamp(0.0, 100.0);
    Some(Progress {
        current: pct.round() as u64,
        total: 100,
        percentage: pct,
        message,
    })
}

/// `{level, message}` (level defaults to info) or a bare string.
fn log_of(p: &Value) -> Option<(LogLevel, String)> {
    match p {
        Value::String(s) => Some((LogLevel::Info, s.clone())),
        Value::Object(obj) => {
            let message = obj.get("message")?;
            let level = obj
                .get("level")
                .and_then(Value::as_str)
                .and_then(LogLevel::parse)
                .unwrap_or(LogLevel::Info);
            Some((level, text_of(Some(message))))
        }
        _ => None,
    }
}

fn error_message(payload: &Value) -> String {
    match payload {
        Value::String(s) => s.clone(),
        Value::Object(obj) => match obj.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => payload.to_string(),
        },
        Value::Null => "error".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn classify_plain(v: Value) -> Classified {
        classify(v, &Masker::default())
    }

    fn event(v: Value) -> Option<ChildEvent> {
        match classify_plain(v) {
            Classified::Incoming(IpcIncoming::Event(e)) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn classifies_envelopes() {
        assert!(matches!(
            classify_plain(json!({"cmd": "NODE_HANDLE_ACK"})),
            Classified::Internal
        ));
        assert!(matches!(
            classify_plain(json!({"id": "7", "type": "response", "payload": {"x": 1}})),
            Classified::Reply { ref id, reply: Ok(ref p) } if id == "7" && *p == json!({"x": 1})
        ));
        assert!(matches!(
            classify_plain(json!({"id": 8, "type": "error", "payload": {"message": "nope"}})),
            Classified::Reply { ref id, reply: Err(IpcError::Remote { ref message, .. }) } if id == "8" && message == "nope"
        ));
        assert_eq!(
            event(
                json!({"type": "progress", "payload": {"current": 2, "total": 8, "message": "m"}})
            ),
            Some(ChildEvent::Progress(Progress::new(2, 8, "m")))
        );
        assert_eq!(
            event(json!({"type": "progress", "payload": {"percentage": 42.5}})),
            Some(ChildEvent::Progress(Progress {
                current: 43,
                total: 100,
                percentage: 42.5,
                message: String::new()
            }))
        );
        assert_eq!(
            event(
                json!({"type": "log", "payload": {"level": "warning", "message": "w"}, "timestamp": 5})
            ),
            Some(ChildEvent::Log {
                level: LogLevel::Warn,
                message: "w".into(),
                child_timestamp: Some("5".into())
            })
        );
        assert_eq!(
            event(json!({"type": "result", "payload": [1, 2]})),
            Some(ChildEvent::Result {
                value: json!([1, 2])
            })
        );
        // Not envelopes, or not well-formed ones: plain messages.
        for v in [
            json!({"hello": "world"}),
            json!("text"),
            json!({"type": "result"}),
            json!({"type": "progress", "payload": "half"}),
            json!({"type": "response", "payload": 1}),
            json!({"type": "request", "id": "1", "payload": {}}),
            json!({"cmd": "NODE_"}),
        ] {
            assert!(
                matches!(classify_plain(v.clone()), Classified::Incoming(IpcIncoming::Message(ref m)) if *m == v),
                "{v}"
            );
        }
    }

    #[test]
    fn events_from_envelopes_are_masked() {
        let masker = Masker::new(["hunter22".to_string()], &[]);
        let got = classify(
            json!({"type": "result", "payload": {"pw": "hunter22"}}),
            &masker,
        );
        assert!(matches!(
            got,
            Classified::Incoming(IpcIncoming::Event(ChildEvent::Result { ref value })) if value["pw"] == "[REDACTED]"
        ));
    }

    #[test]
    fn child_env_names() {
        let env = child_env(3);
        assert_eq!(env[0], ("NODE_CHANNEL_FD".into(), "3".into()));
        assert_eq!(env[1].1, "json");
    }

    /// A peer on the child's end, driven by the test.
    fn peer(child: OwnedFd) -> (BufReader<tokio::net::unix::OwnedReadHalf>, OwnedWriteHalf) {
        let s = StdUnixStream::from(child);
        s.set_nonblocking(true).expect("nonblocking");
        let (r, w) = UnixStream::from_std(s).expect("register").into_split();
        (BufReader::new(r), w)
    }

    async fn read_json(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Value {
        let mut line = String::new();
        r.read_line(&mut line).await.expect("read");
        serde_json::from_str(&line).expect("json")
    }

    #[tokio::test]
    async fn request_response_out_of_order_and_timeout() {
        let (parent, child) = IpcChannel::new().expect("socketpair");
        let (handle, mut incoming) = parent.start().expect("start");
        let (mut r, mut w) = peer(child);

        let h1 = handle.clone();
        let h2 = handle.clone();
        let a = tokio::spawn(async move { h1.request(json!("a"), Duration::from_secs(60)).await });
        let b = tokio::spawn(async move { h2.request(json!("b"), Duration::from_secs(60)).await });
        let m1 = read_json(&mut r).await;
        let m2 = read_json(&mut r).await;
        assert_eq!(m1["type"], "request");
        assert!(m1["timestamp"].is_u64());
        // Answer in reverse order; the second with an error.
        for m in [&m2, &m1] {
            let reply = if m["payload"] == "a" {
                json!({"id": m["id"], "type": "response", "payload": "A"})
            } else {
                json!({"id": m["id"], "type": "error", "payload": {"message": "no b"}})
            };
            w.write_all(format!("{reply}\n").as_bytes())
                .await
                .expect("write");
        }
        assert_eq!(a.await.expect("join").expect("reply"), json!("A"));
        let err = b.await.expect("join").expect_err("error reply");
        assert!(matches!(err, IpcError::Remote { ref message, .. } if message == "no b"));
        assert_eq!(handle.pending_requests(), 0);

        // A request nobody answers times out and leaves nothing pending.
        let err = handle
            .request(json!("c"), Duration::from_millis(50))
            .await
            .expect_err("timeout");
        assert!(matches!(err, IpcError::Timeout { .. }));
        assert_eq!(handle.pending_requests(), 0);

        // Refuses internal messages; plain messages go through.
        assert!(matches!(
            handle.send(&json!({"cmd": "NODE_HANDLE"})).await,
            Err(IpcError::NodeInternal { .. })
        ));
        handle.send(&json!({"x": "é\n"})).await.expect("send");
        let _c = read_json(&mut r).await; // the timed-out request
        assert_eq!(read_json(&mut r).await, json!({"x": "é\n"}));

        // Peer disconnects: Disconnected, and requests fail fast.
        w.write_all(b"{\"type\":\"log\",\"payload\":{\"level\":\"info\",\"message\":\"bye\"}}\n")
            .await
            .expect("write");
        drop(w);
        drop(r);
        let mut seen = Vec::new();
        while let Some(item) = incoming.recv().await {
            seen.push(item);
        }
        assert_eq!(seen.last(), Some(&IpcIncoming::Disconnected));
        assert!(matches!(
            seen[0],
            IpcIncoming::Event(ChildEvent::Log { .. })
        ));
        assert!(handle.is_closed());
        assert!(matches!(
            handle.request(json!(1), Duration::from_secs(5)).await,
            Err(IpcError::Closed)
        ));
    }

    #[tokio::test]
    async fn close_fails_pending_and_shuts_down_writing() {
        let (parent, child) = IpcChannel::new().expect("socketpair");
        let (handle, _incoming) = parent.start().expect("start");
        let (mut r, _w) = peer(child);
        let h = handle.clone();
        let pending =
            tokio::spawn(async move { h.request(json!(1), Duration::from_secs(60)).await });
        let _req = read_json(&mut r).await;
        handle.close().await;
        assert!(matches!(
            pending.await.expect("join"),
            Err(IpcError::Closed)
        ));
        // The peer reads EOF.
        let mut rest = String::new();
        assert_eq!(r.read_line(&mut rest).await.expect("read"), 0);
        assert!(matches!(
            handle.send(&json!(1)).await,
            Err(IpcError::Closed)
        ));
    }

    /// A peer that does not read: the socket fills, the lines it did not
    /// take go to the writer (whole, after the ones written directly), and
    /// everything arrives in order once the peer reads; `close` drains the
    /// queue before the peer reads EOF.
    #[tokio::test]
    async fn lines_stay_in_order_when_the_socket_is_full() {
        let (parent, child) = IpcChannel::new().expect("socketpair");
        let (handle, _incoming) = parent.start().expect("start");
        let (mut r, _w) = peer(child);
        // 48 x 64 KiB: far more than a socket buffer, less than the queue.
        let filler = "x".repeat(64 * 1024);
        for i in 0..48 {
            handle
                .send(&json!({"i": i, "filler": filler}))
                .await
                .expect("send");
        }
        let h = handle.clone();
        let closing = tokio::spawn(async move { h.close().await });
        for i in 0..48 {
            let v = read_json(&mut r).await;
            assert_eq!(v["i"], json!(i));
            assert_eq!(v["filler"].as_str().map(str::len), Some(filler.len()));
        }
        closing.await.expect("join");
        let mut rest = String::new();
        assert_eq!(r.read_line(&mut rest).await.expect("read"), 0);
        assert!(matches!(
            handle.send(&json!(1)).await,
            Err(IpcError::Closed)
        ));
    }

    #[tokio::test]
    async fn malformed_and_internal_messages() {
        let (parent, child) = IpcChannel::new().expect("socketpair");
        let (_handle, mut incoming) = parent.start().expect("start");
        let (_r, mut w) = peer(child);
        w.write_all(b"{oops\n{\"cmd\":\"NODE_X\"}\n{\"ok\":1}\n")
            .await
            .expect("write");
        drop(w);
        let mut seen = Vec::new();
        while let Some(item) = incoming.recv().await {
            seen.push(item);
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(matches!(seen[0], IpcIncoming::Malformed { .. }));
        assert_eq!(seen[1], IpcIncoming::Message(json!({"ok": 1})));
        assert_eq!(seen[2], IpcIncoming::Disconnected);
    }

    #[test]
    fn fds_are_cloexec_and_above_stdio() {
        let (parent, child) = IpcChannel::new().expect("socketpair");
        for fd in [parent.sock.as_raw_fd(), child.as_raw_fd()] {
            assert!(fd > 2);
            // SAFETY: F_GETFD on an fd we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(flags & libc::FD_CLOEXEC != 0);
        }
    }
}
