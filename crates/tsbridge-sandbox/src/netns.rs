//! Network namespaces: probing whether tsbridge may create them, and creating
//! the one shared empty namespace (only `lo`, up) that jobs can `setns` into.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use crate::child::loopback_up;

/// Create a fresh network namespace on a short-lived thread (namespaces are
/// per thread, so tsbridge itself stays in the host namespace), bring `lo` up
/// and return an fd that keeps it alive.
pub(crate) fn create_empty_netns() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("tsbridge-netns".into())
        .spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's namespace;
            // the thread ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain syscalls on stack data, in this thread's new namespace.
            unsafe { loopback_up() }.map_err(io::Error::from_raw_os_error)?;
            Ok(OwnedFd::from(File::open("/proc/thread-self/ns/net")?))
        })?
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_netns_is_created_when_privileged() {
        match create_empty_netns() {
            Ok(_fd) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eprintln!("no privilege: skipped"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}
