//! The engine's side of the Node IPC channel: creates the socketpair before
//! the fork, installs the child's end in `pre_exec`, and forwards the child's
//! `progress`/`log`/`result` messages into the job's event stream.
//! (Stand-in until `ipc` lands: IPC is refused with `Unsupported`.)

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::engine::EventSink;
use crate::mask::Masker;

/// The fd number the child sees its channel on.
pub(crate) const CHILD_FD: RawFd = 3;

#[derive(Debug)]
pub(crate) struct Prepared;

#[derive(Debug)]
pub(crate) struct Link;

/// A handle for requests to the child (stand-in).
#[derive(Clone, Debug)]
pub struct IpcHandle;

pub(crate) fn prepare(_cmd: &mut std::process::Command) -> io::Result<Prepared> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "ipc channel not available yet",
    ))
}

impl Prepared {
    pub(crate) fn child_fds(&self) -> (RawFd, RawFd) {
        (-1, CHILD_FD)
    }
    pub(crate) fn start(self) -> io::Result<Link> {
        Ok(Link)
    }
}

pub(crate) fn install_in_child(_child_fd: RawFd, _target: RawFd) -> io::Result<()> {
    Ok(())
}

pub(crate) fn forward(_link: Link, _sink: EventSink, _masker: Arc<Masker>) -> JoinHandle<()> {
    tokio::spawn(async {})
}
