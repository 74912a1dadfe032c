//! The engine's thin layer over Linux: pids and the one place a process
//! group is signalled ([`Pid::signal_group`], the only negative pid in the
//! crate), pidfds, `wait4` with rusage, `/proc` reading (stat, children,
//! environ marker) and pipe sizing.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::process::{self as rp, Signal};

/// A positive process id (never 0, never negative: see [`Pid::signal_group`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Pid(i32);

impl Pid {
    pub(crate) fn new(raw: i32) -> Option<Self> {
        (raw > 0).then_some(Self(raw))
    }

    pub(crate) fn raw(self) -> i32 {
        self.0
    }

    fn rustix(self) -> Option<rp::Pid> {
        rp::Pid::from_raw(self.0)
    }

    /// Sends `sig` to every member of the process group whose id is `self`.
    /// The only place in the crate that addresses a group (a negative pid).
    /// `Ok(false)`: the group is empty (ESRCH).
    pub(crate) fn signal_group(self, sig: Signal) -> io::Result<bool> {
        let Some(p) = self.rustix() else {
            return Ok(false);
        };
        match rp::kill_process_group(p, sig) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the process group `self` has a member (zombies included).
    pub(crate) fn group_exists(self) -> bool {
        let Some(p) = self.rustix() else {
            return false;
        };
        !matches!(rp::test_kill_process_group(p), Err(rustix::io::Errno::SRCH))
    }
}

/// A process seen in /proc: its pid and its start time (clock ticks after
/// boot), which together name it even after the pid is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProcRef {
    pub(crate) pid: Pid,
    pub(crate) start: u64,
}

/// The fields of /proc/<pid>/stat the engine uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stat {
    pub(crate) state: u8,
    pub(crate) pgrp: i32,
    pub(crate) start: u64,
}

impl Stat {
    pub(crate) fn is_zombie(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Reads /proc/<pid>/stat; `None` when the process is gone.
pub(crate) fn read_stat(pid: Pid) -> Option<Stat> {
    let mut buf = [0u8; 1024];
    let n = read_small(&format!("/proc/{}/stat", pid.raw()), &mut buf)?;
    parse_stat(&buf[..n])
}

fn parse_stat(buf: &[u8]) -> Option<Stat> {
    // comm may contain spaces and ')': fields start after the last ')'.
    let close = memchr::memrchr(b')', buf)?;
    let rest = std::str::from_utf8(buf.get(close + 2..)?).ok()?;
    let mut it = rest.split_ascii_whitespace();
    let state = *it.next()?.as_bytes().first()?; // field 3
    let _ppid = it.next()?; // 4
    let pgrp = it.next()?.parse().ok()?; // 5
    // fields 6..=21 skipped (16 fields), field 22 is starttime.
    let start = it.nth(16)?.parse().ok()?;
    Some(Stat { state, pgrp, start })
}

fn read_small(path: &str, buf: &mut [u8]) -> Option<usize> {
    let mut f = fs::File::open(path).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(n)
}

/// The children of every thread of `pid` (/proc/<pid>/task/*/children).
pub(crate) fn children_of(pid: Pid, out: &mut Vec<Pid>) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", pid.raw())) else {
        return;
    };
    for t in tasks.flatten() {
        let mut p = t.path();
        p.push("children");
        if let Ok(s) = fs::read_to_string(&p) {
            out.extend(
                s.split_ascii_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .filter_map(Pid::new),
            );
        }
    }
}

/// tsbridge's own pid.
pub(crate) fn self_pid() -> Pid {
    Pid(std::process::id() as i32)
}

/// Whether /proc/<pid>/environ holds `needle` (`NAME=value\0`) as a whole
/// entry. Zombies and processes of other users read as empty.
pub(crate) fn environ_has(pid: Pid, needle: &[u8]) -> bool {
    let Ok(data) = fs::read(format!("/proc/{}/environ", pid.raw())) else {
        return false;
    };
    if data.starts_with(needle) {
        return true;
    }
    let mut with_nul = Vec::with_capacity(needle.len() + 1);
    with_nul.push(0);
    with_nul.extend_from_slice(needle);
    memchr::memmem::find(&data, &with_nul).is_some()
}

/// The value of the variable whose `NAME=` is `prefix` in /proc/<pid>/environ.
pub(crate) fn environ_value(pid: Pid, prefix: &[u8]) -> Option<String> {
    let data = fs::read(format!("/proc/{}/environ", pid.raw())).ok()?;
    data.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every numeric entry of /proc.
pub(crate) fn all_pids() -> Vec<Pid> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter_map(Pid::new)
        .collect()
}

/// Signals one process named by pid and start time, through a pidfd so that a
/// reused pid is never hit. `Ok(false)`: it is gone.
pub(crate) fn signal_proc(p: ProcRef, sig: Signal) -> io::Result<bool> {
    let Some(rpid) = p.pid.rustix() else {
        return Ok(false);
    };
    let fd = match rp::pidfd_open(rpid, rp::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // The pidfd pins the process: check it is still the one we saw.
    match read_stat(p.pid) {
        Some(st) if st.start == p.start => {}
        _ => return Ok(false),
    }
    match rp::pidfd_send_signal(&fd, sig) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Opens a pidfd for a child (to await its exit without reaping it).
pub(crate) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    let rpid = pid
        .rustix()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rp::pidfd_open(rpid, rp::PidfdFlags::NONBLOCK)?)
}

/// How a reaped child ended, with its resource usage.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reaped {
    /// The raw wait status.
    pub(crate) status: i32,
    /// user + system CPU of the child and of every descendant it reaped.
    pub(crate) cpu: Duration,
    /// Peak RSS in bytes (ru_maxrss, the largest of the child and its reaped descendants).
    pub(crate) maxrss: u64,
}

/// `wait4(pid, WNOHANG)`: `Ok(None)` while the child runs.
pub(crate) fn wait4_nohang(pid: Pid) -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct for which all-zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes only into the two out-pointers, which point at
        // live locals of the right types; the pid is a specific child of ours
        // (never -1: that would steal other code's children).
        let r = unsafe { libc::wait4(pid.raw(), &mut status, libc::WNOHANG, &mut ru) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        return Ok(Some(Reaped {
            status,
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            maxrss: (ru.ru_maxrss.max(0) as u64) * 1024,
        }));
    }
}

/// `waitpid(pid, WNOHANG)` for an adopted orphan; true when it was reaped.
pub(crate) fn reap_nohang(pid: Pid) -> bool {
    let mut status: libc::c_int = 0;
    // SAFETY: writes only `status`; a specific pid, never -1.
    let r = unsafe { libc::waitpid(pid.raw(), &mut status, libc::WNOHANG) };
    r == pid.raw()
}

/// Enlarges a pipe to `bytes` (F_SETPIPE_SZ). Fails harmlessly (EPERM) when
/// the user's pipe budget is exhausted; the pipe then keeps its size.
pub(crate) fn set_pipe_size(fd: RawFd, bytes: i32) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with an integer argument.
    let r = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, bytes) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Raw fd helper for logging.
pub(crate) fn raw<T: AsRawFd>(t: &T) -> RawFd {
    t.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = b"123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 777 1000 10 18446744073709551615";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.state, b'S');
        assert_eq!(st.pgrp, 123);
        assert_eq!(st.start, 777);
    }

    #[test]
    fn reads_own_stat_and_environ() {
        let me = self_pid();
        let st = read_stat(me).unwrap();
        assert!(!st.is_zombie());
        assert!(st.start > 0);
        // SAFETY-free check: PATH is normally set for the test runner.
        if let Ok(path) = std::env::var("PATH") {
            let needle = format!("PATH={path}");
            assert!(environ_has(me, needle.as_bytes()));
        }
        assert!(!environ_has(me, b"TSBRIDGE_NO_SUCH_VAR=1"));
    }
}
