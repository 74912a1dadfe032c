//! The one thread that forks. `PR_SET_PDEATHSIG` fires when the *thread*
//! that forked the child exits, not the process: a child forked from a
//! `spawn_blocking` thread (which tokio retires after 10 s idle) or from a
//! short-lived runtime's worker would be SIGKILLed when that thread ends. So
//! every fork happens on this dedicated thread, which lives as long as the
//! process. It also holds the leader registry's lock across the fork and the
//! registration of the new job's group and window, so the orphan reaper can
//! never mistake a new leader for an orphan, and the escapee check never sees
//! a process of a job it does not know.
//!
//! On x86_64 the clone is vfork-style (`CLONE_VM | CLONE_VFORK`, see
//! [`crate::clone`]): it suspends the calling thread until the child has
//! exec'd. Here that is this thread, never a tokio worker.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::clone::{self, Child, Command};
use crate::registry;

enum Request {
    Spawn {
        cmd: Command,
        reply: oneshot::Sender<io::Result<Child>>,
    },
    /// Runs a function on this thread: a fork whose child must not be
    /// handed to another thread when its parent thread ends.
    Call(Box<dyn FnOnce() + Send>),
}

fn sender() -> io::Result<&'static mpsc::Sender<Request>> {
    static TX: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    if let Some(tx) = TX.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("tsbridge-spawner".into())
        .spawn(move || run(rx))?;
    // Another caller may have won the race: its thread serves; ours exits
    // when its channel's sender (dropped here) goes away.
    let _ = TX.set(tx);
    TX.get()
        .ok_or_else(|| io::Error::other("spawner thread not initialised"))
}

fn run(rx: mpsc::Receiver<Request>) {
    while let Ok(req) = rx.recv() {
        let (mut cmd, reply) = match req {
            Request::Spawn { cmd, reply } => (cmd, reply),
            Request::Call(f) => {
                f();
                continue;
            }
        };
        let result = {
            let mut leaders = registry::lock_leaders();
            // The job's window starts before the fork (see
            // registry::may_belong_to_another_job); it is registered before
            // the lock is released, so nobody holding the lock sees a
            // process of the job without it.
            let since = crate::sys::boot_ticks_now();
            let r = clone::spawn(&mut cmd);
            if let Ok(child) = &r {
                leaders
                    .get_or_insert_with(Default::default)
                    .insert(child.pid.raw());
                registry::add_group(child.pid, since);
            }
            r
        };
        // Drop the Command (its pre-exec step holds the sandbox's hook and
        // fds) here, on this thread, before answering.
        drop(cmd);
        if let Err(Ok(child)) = reply.send(result) {
            // The caller went away: nobody will wait for this child. Kill it;
            // the leader stays registered so the orphan reaper leaves it, and
            // a detached waiter reaps it.
            kill_abandoned(child);
        }
    }
}

fn kill_abandoned(child: Child) {
    let pid = child.pid;
    let _ = crate::sys::kill(pid);
    drop(child);
    std::thread::spawn(move || {
        let _ = crate::sys::reap_blocking(pid);
        registry::leader_done(pid);
        registry::remove_group(pid);
    });
}

/// Clones and execs `cmd` on the spawner thread (see [`crate::clone`]).
pub(crate) async fn spawn(cmd: Command) -> io::Result<Child> {
    let (reply, rx) = oneshot::channel();
    sender()?
        .send(Request::Spawn { cmd, reply })
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// Runs `f` on the spawner thread and waits for its value (blocking: for
/// start-up work such as forking the watchdog).
pub(crate) fn call<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let (tx, rx) = mpsc::channel();
    sender()?
        .send(Request::Call(Box::new(move || {
            let _ = tx.send(f());
        })))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread dropped the request"))
}
