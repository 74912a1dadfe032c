//! The engine's side of the Node IPC channel (built on [`crate::ipc`]):
//! creates the socketpair before the fork, puts the child's end at fd
//! [`CHILD_FD`] in `pre_exec`, drops the parent's copy of that end after the
//! spawn, and forwards the child's `progress`/`log`/`result` envelopes into
//! the job's event stream (a `result` sets the outcome's result).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::EventSink;
use crate::ipc::{IpcChannel, IpcIncoming, IpcOptions, IpcParent};
use crate::mask::Masker;

pub use crate::ipc::{CHILD_FD, IpcHandle};

/// A channel made before the fork.
#[derive(Debug)]
pub(crate) struct Prepared {
    parent: IpcParent,
    child_end: OwnedFd,
}

/// A running channel: the handle for requests and the incoming stream.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) handle: IpcHandle,
    incoming: mpsc::Receiver<IpcIncoming>,
}

/// Creates the socketpair and adds the channel's variables to `cmd`.
pub(crate) fn prepare(cmd: &mut crate::clone::Command, masker: &Masker) -> io::Result<Prepared> {
    let (parent, child_end) = IpcChannel::new()?;
    for (k, v) in crate::ipc::child_env(CHILD_FD) {
        cmd.env(k, v);
    }
    let parent = parent.with_options(IpcOptions {
        masker: masker.clone(),
        ..IpcOptions::default()
    });
    Ok(Prepared { parent, child_end })
}

impl Prepared {
    /// (the child's end as numbered in tsbridge, the number the child sees).
    pub(crate) fn child_fds(&self) -> (RawFd, RawFd) {
        (self.child_end.as_raw_fd(), CHILD_FD)
    }

    /// After the spawn: closes tsbridge's copy of the child's end (so the
    /// child's exit is seen as a disconnect) and starts the channel's tasks.
    pub(crate) fn start(self) -> io::Result<Link> {
        drop(self.child_end);
        let (handle, incoming) = self.parent.start()?;
        Ok(Link { handle, incoming })
    }
}

/// Installs the child's end at `target` (in the forked child).
pub(crate) fn install_in_child(child_fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: called only from the engine's pre_exec hook, in the forked
    // child between fork and exec; install_in_child makes raw dup2/fcntl
    // calls (async-signal-safe, no allocation).
    unsafe { crate::ipc::install_in_child(child_fd, target) }
}

/// Forwards the child's envelopes as events until it disconnects.
pub(crate) fn forward(
    mut incoming: mpsc::Receiver<IpcIncoming>,
    sink: EventSink,
    _masker: Arc<Masker>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            match msg {
                IpcIncoming::Event(ev) => sink.send(ev).await,
                IpcIncoming::Message(_) => {
                    tracing::trace!("ipc message that is not an event; ignored by the engine")
                }
                IpcIncoming::Malformed { reason } => {
                    tracing::debug!(%reason, "malformed ipc message")
                }
                IpcIncoming::Disconnected => break,
            }
        }
    })
}

impl Link {
    pub(crate) fn split(self) -> (IpcHandle, mpsc::Receiver<IpcIncoming>) {
        (self.handle, self.incoming)
    }
}
