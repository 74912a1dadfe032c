//! The death watchdog: a small process forked at startup that outlives a
//! SIGKILLed tsbridge just long enough to end its jobs' processes.
//!
//! SPEC §4: "If tsbridge is SIGKILLed, its children die with it." The
//! parent-death signal reaches only each job's direct child; its
//! grandchildren and `setsid` escapees used to live on until the next
//! tsbridge started and ran [`crate::supervisor::sweep_orphans`] (which may
//! be never). The watchdog holds the read end of a pipe whose only write end
//! is tsbridge's (close-on-exec, so no job inherits it). When tsbridge is
//! gone, for whatever reason, the read returns end-of-file and the watchdog
//! SIGKILLs every process whose environment carries this tsbridge's
//! [`crate::spec::OWNER_ENV`] tag (every job process does, unless it cleared
//! its environment), through pidfds so that a reused pid is never hit, and
//! exits. After a normal exit there is nothing left to find.
//!
//! It is forked (without exec) on the spawner thread, which never ends, so
//! that it stays a child of that thread: tsbridge's main thread's children
//! are its adopted orphans, which the descendant tracker examines at every
//! pool sweep (see docs/design/termination.md). Between fork and exit the
//! child runs only async-signal-safe code: raw system calls on stack
//! buffers, no allocation, no locks (the parent has other threads).
//!
//! It keeps tsbridge's session (the tracker's escapee rule skips it) but
//! takes a process group of its own and ignores the terminal's signals, so
//! a Ctrl-C to tsbridge's group does not end it first.

use std::io;
use std::os::fd::RawFd;

use crate::spec::OWNER_ENV;

/// How many /proc scans at most: one more after each that killed something
/// (a job may fork while it is scanned), up to this bound.
const MAX_ROUNDS: usize = 50;

/// Forks the watchdog. Call on the spawner thread. The pipe's write end
/// stays open in tsbridge for the rest of its life.
pub(crate) fn fork_watchdog() -> io::Result<()> {
    // "\0TSBRIDGE_OWNER=<tag>\0": one whole entry of a NUL-separated environ.
    let mut needle = Vec::with_capacity(OWNER_ENV.len() + 40);
    needle.push(0);
    needle.extend_from_slice(OWNER_ENV.as_bytes());
    needle.push(b'=');
    needle.extend_from_slice(crate::supervisor::owner_tag().as_bytes());
    needle.push(0);
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    // SAFETY: the child only runs `watchdog_main`, which is async-signal-safe
    // (raw system calls on stack buffers and on `needle`, which the fork
    // copied, no allocation, no locks) and never returns.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: closing the two fds pipe2 just made.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            Err(e)
        }
        0 => {
            // SAFETY: in the child of a fork; see above.
            unsafe { watchdog_main(read_end, write_end, &needle) }
        }
        _ => {
            // SAFETY: the parent's copy of the read end is not used.
            unsafe { libc::close(read_end) };
            // The write end is deliberately never closed: it must stay open
            // exactly as long as this process lives.
            Ok(())
        }
    }
}

/// The child: detach from the terminal's signals, drop every inherited fd
/// but the pipe, wait for end-of-file, sweep, exit.
///
/// # Safety
/// Only in the child of a fork; never returns.
unsafe fn watchdog_main(read_end: RawFd, write_end: RawFd, needle: &[u8]) -> ! {
    // SAFETY: async-signal-safe system calls on fds and constants of ours.
    unsafe {
        libc::close(write_end);
        // Its command line is tsbridge's (no exec); its name says what it is.
        libc::prctl(libc::PR_SET_NAME, c"tsbridge-wdog".as_ptr());
        libc::setpgid(0, 0);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // The pipe to fd 3 (first: it may have been 0..2 if tsbridge runs
        // with a closed standard stream), stdio to /dev/null (a reader of
        // tsbridge's output must not wait for the watchdog), every other fd
        // closed (it must not hold tsbridge's sockets or files open).
        const PIPE: RawFd = 3;
        if read_end != PIPE {
            libc::dup2(read_end, PIPE);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
        }
        if libc::syscall(libc::SYS_close_range, PIPE + 1, u32::MAX, 0) != 0 {
            for fd in PIPE + 1..4096 {
                libc::close(fd);
            }
        }
        let mut buf = [0u8; 64];
        loop {
            let n = libc::read(PIPE, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        for _ in 0..MAX_ROUNDS {
            if sweep(needle) == 0 {
                break;
            }
        }
        libc::_exit(0)
    }
}

/// One scan of /proc: SIGKILLs every process whose environ holds `needle`.
/// Returns how many were signalled.
///
/// # Safety
/// Async-signal-safe; callable in a forked child.
unsafe fn sweep(needle: &[u8]) -> usize {
    // SAFETY: raw system calls on stack buffers, fds opened and closed here.
    unsafe {
        let proc_fd = libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if proc_fd < 0 {
            return 0;
        }
        let me = libc::getpid();
        let mut killed = 0;
        let mut dents = [0u8; 8192];
        loop {
            let n = libc::syscall(
                libc::SYS_getdents64,
                proc_fd,
                dents.as_mut_ptr(),
                dents.len(),
            );
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let mut off = 0;
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            while off + 19 <= n {
                let reclen = u16::from_ne_bytes([dents[off + 16], dents[off + 17]]) as usize;
                if reclen == 0 || off + reclen > n {
                    break;
                }
                let name = &dents[off + 19..off + reclen];
                let name = match name.iter().position(|&b| b == 0) {
                    Some(end) => &name[..end],
                    None => name,
                };
                off += reclen;
                let Some(pid) = parse_pid(name) else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                if kill_if_tagged(proc_fd, pid, name, needle) {
                    killed += 1;
                }
            }
        }
        libc::close(proc_fd);
        killed
    }
}

/// Pins `pid` with a pidfd, reads its environ, and SIGKILLs it through the
/// pidfd if the environ holds `needle`.
///
/// # Safety
/// Async-signal-safe.
unsafe fn kill_if_tagged(proc_fd: RawFd, pid: libc::pid_t, name: &[u8], needle: &[u8]) -> bool {
    // "<pid>/environ\0", relative to /proc.
    let mut path = [0u8; 48];
    const SUFFIX: &[u8] = b"/environ\0";
    if name.len() + SUFFIX.len() > path.len() {
        return false;
    }
    path[..name.len()].copy_from_slice(name);
    path[name.len()..name.len() + SUFFIX.len()].copy_from_slice(SUFFIX);
    // SAFETY: raw system calls; `path` is NUL-terminated.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd;
        if pidfd < 0 {
            return false;
        }
        let env_fd = libc::openat(
            proc_fd,
            path.as_ptr().cast(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        let mut hit = false;
        if env_fd >= 0 {
            if environ_holds(env_fd, needle) {
                hit = libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) == 0;
            }
            libc::close(env_fd);
        }
        libc::close(pidfd);
        hit
    }
}

/// Whether the NUL-separated entries read from `fd` contain `needle`
/// (`"\0NAME=VALUE\0"`), streaming: the file may be longer than any buffer.
///
/// # Safety
/// Async-signal-safe.
unsafe fn environ_holds(fd: RawFd, needle: &[u8]) -> bool {
    let mut buf = [0u8; 4096];
    let mut m = Matcher::new(needle);
    loop {
        // SAFETY: reads into a stack buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return false;
        }
        if m.feed(&buf[..n as usize]) {
            return true;
        }
    }
}

/// Finds one whole environ entry in a stream. `needle` is `"\0" + entry +
/// "\0"` with no NUL in between, so after a mismatch a match can only start
/// again at a NUL: no backtracking is needed. The stream is taken as
/// preceded by a NUL (its first entry has none before it).
struct Matcher<'a> {
    needle: &'a [u8],
    at: usize,
}

impl<'a> Matcher<'a> {
    fn new(needle: &'a [u8]) -> Self {
        Self { needle, at: 1 }
    }

    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if b == self.needle[self.at] {
                self.at += 1;
                if self.at == self.needle.len() {
                    return true;
                }
            } else {
                self.at = usize::from(b == 0);
            }
        }
        false
    }
}

fn parse_pid(name: &[u8]) -> Option<libc::pid_t> {
    if name.is_empty() || name.len() > 9 {
        return None;
    }
    let mut pid: libc::pid_t = 0;
    for &b in name {
        if !b.is_ascii_digit() {
            return None;
        }
        pid = pid * 10 + libc::pid_t::from(b - b'0');
    }
    (pid > 0).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(env: &[u8], needle: &[u8], chunk: usize) -> bool {
        let mut m = Matcher::new(needle);
        env.chunks(chunk.max(1)).any(|c| m.feed(c))
    }

    #[test]
    fn matcher_finds_whole_entries_only_across_any_reads() {
        let needle = b"\0TSBRIDGE_OWNER=12.34\0";
        let env = b"A=1\0TSBRIDGE_OWNER=12.34\0B=2\0";
        let first = b"TSBRIDGE_OWNER=12.34\0B=2\0";
        let longer = b"A=1\0TSBRIDGE_OWNER=12.345\0";
        let prefixed = b"XTSBRIDGE_OWNER=12.34\0";
        let inside = b"A=TSBRIDGE_OWNER=12.34\0";
        let restart = b"A=\0\0TSBRIDGE_OWNER=12.34\0";
        for chunk in [1, 2, 3, 7, 4096] {
            assert!(holds(env, needle, chunk), "{chunk}");
            assert!(holds(first, needle, chunk), "{chunk}");
            assert!(holds(restart, needle, chunk), "{chunk}");
            assert!(!holds(longer, needle, chunk), "{chunk}");
            assert!(!holds(prefixed, needle, chunk), "{chunk}");
            assert!(!holds(inside, needle, chunk), "{chunk}");
        }
    }

    #[test]
    fn pids_are_plain_positive_numbers() {
        assert_eq!(parse_pid(b"1234"), Some(1234));
        assert_eq!(parse_pid(b"self"), None);
        assert_eq!(parse_pid(b"0"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"12a"), None);
    }
}
