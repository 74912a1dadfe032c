//! The engine's thin layer over Linux: pids and the one place a process
//! group is signalled ([`Pid::signal_group`], the only negative pid in the
//! crate), pidfds, `wait4` with rusage, `/proc` reading (stat, children,
//! environ marker) and pipe sizing.

use std::fs;
use std::io;
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
    /// The session id (field 6).
    pub(crate) session: i32,
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
    let path = ProcPath::new(pid.raw(), None, b"stat")?;
    let n = read_into(&path, &mut buf)?;
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
    let session = it.next()?.parse().ok()?; // 6
    // fields 7..=21 skipped (15 fields), field 22 is starttime.
    let start = it.nth(15)?.parse().ok()?;
    Some(Stat {
        state,
        pgrp,
        session,
        start,
    })
}

/// A NUL-terminated `/proc/<pid>[/task/<tid>]/<leaf>` path built on the
/// stack (no allocation on the hot paths of the descendant tracker).
struct ProcPath {
    buf: [u8; 64],
    len: usize,
}

impl ProcPath {
    fn new(pid: i32, tid: Option<&[u8]>, leaf: &[u8]) -> Option<Self> {
        let mut p = Self {
            buf: [0; 64],
            len: 0,
        };
        p.push(b"/proc/")?;
        p.push_int(pid)?;
        if let Some(tid) = tid {
            p.push(b"/task/")?;
            p.push(tid)?;
        }
        p.push(b"/")?;
        p.push(leaf)?;
        // Room for the NUL, which `buf` already holds.
        (p.len < p.buf.len()).then_some(p)
    }

    fn push(&mut self, s: &[u8]) -> Option<()> {
        let end = self.len.checked_add(s.len())?;
        self.buf.get_mut(self.len..end)?.copy_from_slice(s);
        self.len = end;
        Some(())
    }

    fn push_int(&mut self, v: i32) -> Option<()> {
        let mut digits = [0u8; 12];
        let mut i = digits.len();
        let mut v = v.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    fn as_cstr(&self) -> Option<&std::ffi::CStr> {
        std::ffi::CStr::from_bytes_with_nul(self.buf.get(..=self.len)?).ok()
    }

    fn open(&self, flags: rustix::fs::OFlags) -> Option<OwnedFd> {
        rustix::fs::open(
            self.as_cstr()?,
            flags | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()
    }
}

/// Reads a whole small /proc file into `buf` (at most a page); `None` when it
/// cannot be opened or read. A /proc seq_file read fills the buffer unless
/// the file ends first (below a page, its own buffer cannot run out), so a
/// short read is the end: one `read` instead of two.
fn read_into(path: &ProcPath, buf: &mut [u8]) -> Option<usize> {
    let fd = path.open(rustix::fs::OFlags::empty())?;
    fill(buf, |rest, _| rustix::io::read(&fd, rest))
}

/// Fills `buf` from the start with `read(rest, offset)` until a read comes
/// back short (the end of a small /proc file, see [`read_into`]) or the
/// buffer is full; retried on EINTR, `None` on any other error.
fn fill(
    buf: &mut [u8],
    mut read: impl FnMut(&mut [u8], u64) -> rustix::io::Result<usize>,
) -> Option<usize> {
    let mut n = 0;
    while n < buf.len() {
        match read(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if n < buf.len() {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    Some(n)
}

/// Appends the pids listed in a `children` file (space-separated decimals)
/// to `out`, reading it in chunks (a number may span two reads).
fn read_children_file(path: &ProcPath, out: &mut Vec<Pid>) {
    let Some(fd) = path.open(rustix::fs::OFlags::empty()) else {
        return;
    };
    parse_children(out, |buf| match rustix::io::read(&fd, buf) {
        Err(rustix::io::Errno::INTR) => Some(None),
        Err(_) => None,
        Ok(n) => Some(Some(n)),
    });
}

/// The same from a `children` file kept open: `pread` from offset 0 (a
/// /proc seq_file renders afresh for a read at offset 0), one syscall when
/// the list fits in one read.
fn pread_children(fd: &OwnedFd, out: &mut Vec<Pid>) {
    let mut off = 0u64;
    parse_children(out, |buf| match rustix::io::pread(fd, buf, off) {
        Err(rustix::io::Errno::INTR) => Some(None),
        Err(_) => None,
        Ok(n) => {
            off += n as u64;
            Some(Some(n))
        }
    });
}

/// Parses a `children` list read through `read` (`None`: stop, `Some(None)`:
/// interrupted, try again, `Some(Some(n))`: `n` bytes read).
fn parse_children(out: &mut Vec<Pid>, mut read: impl FnMut(&mut [u8]) -> Option<Option<usize>>) {
    // At most a page per read: a short read is the end (see `read_into`).
    let mut buf = [0u8; 1024];
    let mut cur: Option<i64> = None;
    loop {
        let n = match read(&mut buf) {
            None | Some(Some(0)) => break,
            Some(None) => continue,
            Some(Some(n)) => n,
        };
        let last = n < buf.len();
        for &b in &buf[..n] {
            if b.is_ascii_digit() {
                let d = i64::from(b - b'0');
                cur = Some(cur.unwrap_or(0).saturating_mul(10).saturating_add(d));
            } else if let Some(v) = cur.take() {
                out.extend(i32::try_from(v).ok().and_then(Pid::new));
            }
        }
        if last {
            break;
        }
    }
    if let Some(v) = cur {
        out.extend(i32::try_from(v).ok().and_then(Pid::new));
    }
}

/// The children of every thread of `pid` (/proc/<pid>/task/*/children),
/// appended to `out`. Allocates nothing but `out`'s growth.
pub(crate) fn children_of(pid: Pid, out: &mut Vec<Pid>) {
    let Some(dir) =
        ProcPath::new(pid.raw(), None, b"task").and_then(|p| p.open(rustix::fs::OFlags::DIRECTORY))
    else {
        return;
    };
    let mut dents = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    let mut it = rustix::fs::RawDir::new(&dir, &mut dents);
    while let Some(Ok(e)) = it.next() {
        let tid = e.file_name().to_bytes();
        if tid.is_empty() || !tid.iter().all(u8::is_ascii_digit) {
            continue;
        }
        if let Some(path) = ProcPath::new(pid.raw(), Some(tid), b"children") {
            read_children_file(&path, out);
        }
    }
}

/// The children of `pid`'s main thread only (/proc/<pid>/task/<pid>/children).
/// An orphan reparented to a subreaper goes to the subreaper's first live
/// thread, its main thread (kernel `find_new_reaper`), so this is where
/// tsbridge's adopted orphans are; children the process forked itself are on
/// the list of the thread that forked them (the engine's leaders: the spawner
/// thread's).
pub(crate) fn main_thread_children(pid: Pid, out: &mut Vec<Pid>) {
    let mut tid = ProcPath {
        buf: [0; 64],
        len: 0,
    };
    if tid.push_int(pid.raw()).is_none() {
        return;
    }
    if let Some(path) = ProcPath::new(pid.raw(), Some(&tid.buf[..tid.len]), b"children") {
        read_children_file(&path, out);
    }
}

/// tsbridge's main thread's children ([`main_thread_children`] of our own
/// pid), through a file opened once and re-read with `pread`.
pub(crate) fn own_main_thread_children(out: &mut Vec<Pid>) {
    static FD: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    let fd = FD.get_or_init(|| {
        let me = self_pid().raw();
        let mut tid = ProcPath {
            buf: [0; 64],
            len: 0,
        };
        tid.push_int(me)?;
        ProcPath::new(me, Some(&tid.buf[..tid.len]), b"children")?.open(rustix::fs::OFlags::empty())
    });
    match fd {
        Some(fd) => pread_children(fd, out),
        None => main_thread_children(self_pid(), out),
    }
}

/// The job's own process under `init`, the init of a PID namespace of its
/// own (`clone/init.rs`): the init's child that is pid 2 in that namespace.
/// The init forks it first and nothing else (every other process of the
/// namespace descends from it; an orphan reparented to the init later has
/// another pid there), so pid 2 names it. Read from the init's
/// `task/<init>/children` (the init has one thread) and each child's
/// `NSpid` (its pid in each namespace, its own last). `None` when it has
/// ended (or /proc cannot be read).
pub(crate) fn ns_job_of(init: Pid) -> Option<ProcRef> {
    let mut kids = Vec::new();
    main_thread_children(init, &mut kids);
    kids.into_iter().find_map(|kid| {
        let status = fs::read_to_string(format!("/proc/{}/status", kid.raw())).ok()?;
        let own = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_ascii_whitespace()
            .last()?;
        if own != "2" {
            return None;
        }
        let st = read_stat(kid)?;
        (!st.is_zombie()).then_some(ProcRef {
            pid: kid,
            start: st.start,
        })
    })
}

/// The /proc files of one long-lived process (a pool worker) kept open, so
/// that walking it costs one `pread` per file instead of open + read +
/// close: its `stat`, its `task` directory and each thread's `children`.
/// The thread list is re-read (`getdents` from offset 0) at every walk, so a
/// thread that started since is opened and one that ended is dropped.
#[derive(Debug)]
pub(crate) struct OpenProc {
    pid: Pid,
    stat: OwnedFd,
    task: OwnedFd,
    /// (tid, its `children` file, the walk that last listed it).
    threads: Vec<(i32, OwnedFd, u32)>,
    walk: u32,
}

impl OpenProc {
    /// `None` when the process is gone (or /proc cannot be opened).
    pub(crate) fn open(pid: Pid) -> Option<Self> {
        let stat = ProcPath::new(pid.raw(), None, b"stat")?.open(rustix::fs::OFlags::empty())?;
        let task = ProcPath::new(pid.raw(), None, b"task")?.open(rustix::fs::OFlags::DIRECTORY)?;
        Some(Self {
            pid,
            stat,
            task,
            threads: Vec::new(),
            walk: 0,
        })
    }

    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// [`read_stat`] of the process. `None` once it is reaped: the open file
    /// names the process it was opened for, never a reuse of its pid.
    pub(crate) fn stat(&self) -> Option<Stat> {
        let mut buf = [0u8; 1024];
        let n = fill(&mut buf, |rest, off| {
            rustix::io::pread(&self.stat, rest, off)
        })?;
        parse_stat(&buf[..n])
    }

    /// A number that changes whenever the process gains or loses a thread:
    /// the link count of its `task` directory (procfs adds the thread
    /// count), one `fstat`. `None` when it cannot be read.
    #[allow(clippy::unnecessary_cast)] // st_nlink is u32 on some targets
    pub(crate) fn thread_links(&self) -> Option<u64> {
        rustix::fs::fstat(&self.task)
            .ok()
            .map(|st| st.st_nlink as u64)
    }

    /// [`children_of`] the process: the children of every thread it has now.
    pub(crate) fn children(&mut self, out: &mut Vec<Pid>) {
        self.walk = self.walk.wrapping_add(1);
        let walk = self.walk;
        if rustix::fs::seek(&self.task, rustix::fs::SeekFrom::Start(0)).is_err() {
            return;
        }
        let mut dents = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let mut it = rustix::fs::RawDir::new(&self.task, &mut dents);
        while let Some(Ok(e)) = it.next() {
            let name = e.file_name().to_bytes();
            let Some(tid) = parse_pid(name) else {
                continue;
            };
            if let Some(t) = self.threads.iter_mut().find(|t| t.0 == tid) {
                t.2 = walk;
                continue;
            }
            let fd = ProcPath::new(self.pid.raw(), Some(name), b"children")
                .and_then(|p| p.open(rustix::fs::OFlags::empty()));
            match fd {
                Some(fd) => self.threads.push((tid, fd, walk)),
                // The thread ended since the listing: its children went to
                // another thread, which is read below.
                None => continue,
            }
        }
        self.threads.retain(|t| t.2 == walk);
        for (_, fd, _) in &self.threads {
            pread_children(fd, out);
        }
    }
}

/// A decimal pid (ASCII digits only).
fn parse_pid(name: &[u8]) -> Option<i32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// The last pid the kernel allocated in our pid namespace
/// (`/proc/sys/kernel/ns_last_pid`, through a file opened once). Every new
/// process or thread takes the next free pid after it, so it changes with
/// every fork/clone in the namespace (or in one nested in it).
pub(crate) fn ns_last_pid() -> Option<i32> {
    static FD: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    let fd = FD
        .get_or_init(|| {
            rustix::fs::open(
                c"/proc/sys/kernel/ns_last_pid",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
        })
        .as_ref()?;
    let mut buf = [0u8; 32];
    let n = loop {
        match rustix::io::pread(fd, &mut buf, 0) {
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
            Ok(n) => break n,
        }
    };
    parse_pid(buf.get(..n)?.trim_ascii())
}

/// "No process or thread was created in our pid namespace since": the last
/// allocated pid at one moment and a pidfd of the task that holds it.
///
/// While that task holds its pid (it has not been reaped; the pidfd tells
/// exactly, a reuse of the number is another task), the kernel cannot hand
/// that pid out again; and every allocation moves `ns_last_pid` to the pid it
/// allocated. So if `ns_last_pid` still reads the same pid and its task still
/// holds it, nothing was allocated in between. (Only a process with
/// `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE` over our pid namespace can
/// choose its pid or write `ns_last_pid`.)
#[derive(Debug)]
pub(crate) struct PidMark {
    last: i32,
    holder: OwnedFd,
}

impl PidMark {
    /// Now; `None` when it cannot be told (no `ns_last_pid`, the task that
    /// holds the last pid already ended, or a thread on a kernel without
    /// `PIDFD_THREAD`, before 6.9).
    pub(crate) fn take() -> Option<Self> {
        let last = ns_last_pid()?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let open =
            |flags: libc::c_uint| unsafe { libc::syscall(libc::SYS_pidfd_open, last, flags) };
        // PIDFD_THREAD (= O_EXCL): the pid may be a thread's. Before 6.9 the
        // flag is unknown (EINVAL): then only a process's pid can be held.
        let mut fd = open(libc::O_EXCL as libc::c_uint);
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            fd = open(0);
        }
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let holder = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Some(Self { last, holder })
    }

    /// Whether no pid was allocated since [`Self::take`]: `ns_last_pid` is
    /// unchanged and its task has not been reaped.
    pub(crate) fn unchanged(&self) -> bool {
        if ns_last_pid() != Some(self.last) {
            return false;
        }
        // Signal 0: no signal, only the checks. EPERM: it exists (not ours).
        // SAFETY: pidfd_send_signal with a live fd, signal 0 and no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.holder.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// tsbridge's own session id.
///
/// It is 0 when the session's leader lives outside our pid namespace (a
/// container started without a fresh session, as some CI runners are), the
/// same value /proc/<pid>/stat shows for such processes. `rustix::getsid`
/// cannot express that (its `Pid` is non-zero and it panics), so this asks
/// libc.
pub(crate) fn self_session() -> i32 {
    static SID: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    // SAFETY: getsid(0) takes no pointers and only reads our own session.
    *SID.get_or_init(|| unsafe { libc::getsid(0) }.max(0))
}

/// Now, in the unit of /proc/<pid>/stat's start time (clock ticks since
/// boot, rounded down as the kernel does): a process forked after this call
/// has a start time >= the value.
pub(crate) fn boot_ticks_now() -> u64 {
    // SAFETY: timespec is a plain C struct; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let ns = (ts.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.max(0) as u64);
    ns / (1_000_000_000 / hz).max(1)
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

/// `wait4(pid)` without WNOHANG, for a child that has ended or was just
/// killed (a failed spawn); its raw wait status.
pub(crate) fn reap_blocking(pid: Pid) -> io::Result<i32> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: wait4 writes only `status` (rusage is null); the pid is a
        // specific child of ours, never -1.
        let r = unsafe { libc::wait4(pid.raw(), &mut status, 0, std::ptr::null_mut()) };
        if r == pid.raw() {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// SIGKILL to one process (a child of ours), never to a group.
pub(crate) fn kill(pid: Pid) -> io::Result<()> {
    let p = pid
        .rustix()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rp::kill_process(p, Signal::KILL)?)
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

/// Sets O_NONBLOCK on an fd.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

    /// self_session is the session /proc shows for us, also when that is 0
    /// (the leader outside our pid namespace: rustix's getsid panicked there,
    /// on a CI runner). The second half re-runs this test inside a new pid
    /// namespace, where the session leader is outside, when `unshare` can.
    #[test]
    fn self_session_is_the_session_proc_shows() {
        let st = read_stat(self_pid()).expect("own stat");
        assert_eq!(self_session(), st.session);
        if std::env::var_os("TSBRIDGE_SID_TEST_INNER").is_some() {
            assert_eq!(st.session, 0, "inside the new pid namespace");
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(exe)
            .args([
                "--exact",
                "sys::tests::self_session_is_the_session_proc_shows",
            ])
            .env("TSBRIDGE_SID_TEST_INNER", "1")
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                assert!(text.contains("1 passed"), "{text}");
            }
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("unshare failed") => {
                eprintln!("no pid namespace here (not root?): inner half not run");
            }
            Ok(o) => panic!(
                "inner run failed: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("no unshare binary ({e}): inner half not run"),
        }
    }

    #[test]
    fn builds_proc_paths() {
        let p = ProcPath::new(4_194_304, Some(b"17"), b"children").unwrap();
        assert_eq!(
            p.as_cstr().unwrap().to_bytes(),
            b"/proc/4194304/task/17/children"
        );
        let p = ProcPath::new(1, None, b"stat").unwrap();
        assert_eq!(p.as_cstr().unwrap().to_bytes(), b"/proc/1/stat");
    }

    /// children_of lists every child; main_thread_children only the main
    /// thread's.
    #[test]
    fn lists_children() {
        let mut kids: Vec<std::process::Child> = (0..3)
            .map(|_| {
                std::process::Command::new("/bin/sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut out = Vec::new();
        children_of(self_pid(), &mut out);
        for k in &kids {
            assert!(out.contains(&Pid::new(k.id() as i32).unwrap()), "{out:?}");
        }
        // The test runs on a thread of its own, not the main thread.
        let mut main = Vec::new();
        main_thread_children(self_pid(), &mut main);
        for k in &kids {
            assert!(!main.contains(&Pid::new(k.id() as i32).unwrap()));
        }
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }

    /// OpenProc lists the children of threads that started after it was
    /// opened, keeps finding a child whose thread ended (the kernel moves it
    /// to another thread), drops ended threads, and reads nothing once its
    /// process is reaped (never a reuse of the pid).
    #[test]
    fn open_proc_follows_threads_and_ends_with_its_process() {
        let mut me = OpenProc::open(self_pid()).unwrap();
        let mut out = Vec::new();
        me.children(&mut out);
        let threads = me.threads.len();
        assert!(threads >= 2, "the main thread and this test's");
        // A thread that starts now forks a child, then ends.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let child = std::process::Command::new("/bin/sleep")
                .arg("30")
                .spawn()
                .unwrap();
            tx.send(child).unwrap();
            let _ = done_rx.recv();
        });
        let mut child = rx.recv().unwrap();
        let pid = Pid::new(child.id() as i32).unwrap();
        let links = me.thread_links().unwrap();
        out.clear();
        me.children(&mut out);
        assert!(out.contains(&pid), "{out:?}");
        assert_eq!(me.threads.len(), threads + 1);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        // The kernel lets the joined thread go a moment after join returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while me.thread_links() != Some(links - 1) {
            assert!(std::time::Instant::now() < deadline, "one thread fewer");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        out.clear();
        me.children(&mut out);
        assert!(out.contains(&pid), "reparented to another thread: {out:?}");
        assert_eq!(me.threads.len(), threads);
        let _ = child.kill();
        let _ = child.wait();

        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let open = OpenProc::open(Pid::new(child.id() as i32).unwrap()).unwrap();
        assert!(open.stat().is_some_and(|st| !st.is_zombie()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(open.stat().is_none(), "reaped: nothing to read");
    }

    /// A pid mark changes when a process or a thread is created; with
    /// nothing created it stays (tried a few times: other processes of the
    /// machine fork too).
    #[test]
    fn pid_mark_moves_with_every_new_pid() {
        // A new long-lived child holds the last pid (unless something else
        // forked since: then try again). The test makes its own holder: the
        // machine's last pid is often a short-lived process that has ended
        // (a busy build's), and then no mark can be taken until something
        // forks again.
        let mut holders = Vec::new();
        let mut fresh_mark = || {
            for _ in 0..100 {
                holders.push(
                    std::process::Command::new("/bin/sleep")
                        .arg("30")
                        .spawn()
                        .unwrap(),
                );
                if let Some(m) = PidMark::take() {
                    return m;
                }
            }
            panic!("no pid mark");
        };
        assert!(
            (0..100).any(|_| fresh_mark().unchanged()),
            "never two reads without a new pid in between"
        );
        let mark = fresh_mark();
        std::thread::spawn(|| {}).join().unwrap();
        assert!(!mark.unchanged(), "a thread was created");
        let mark = fresh_mark();
        let mut c = std::process::Command::new("/bin/true").spawn().unwrap();
        assert!(!mark.unchanged(), "a process was created");
        let _ = c.wait();
        for mut h in holders {
            let _ = h.kill();
            let _ = h.wait();
        }
    }

    #[test]
    fn parses_children_across_reads() {
        // A children file longer than the 1 KiB read buffer.
        let dir = std::path::PathBuf::from(format!("/tmp/tsb-children-{}", std::process::id()));
        let pids: Vec<i32> = (0..400).map(|i| 100_000 + i * 7).collect();
        let text: String = pids.iter().map(|p| format!("{p} ")).collect();
        assert!(text.len() > 2048);
        std::fs::write(&dir, &text).unwrap();
        let path = dir.to_str().unwrap().as_bytes();
        let mut p = ProcPath {
            buf: [0; 64],
            len: 0,
        };
        p.push(path).unwrap();
        let mut out = Vec::new();
        read_children_file(&p, &mut out);
        let _ = std::fs::remove_file(&dir);
        let got: Vec<i32> = out.iter().map(|p| p.raw()).collect();
        assert_eq!(got, pids);
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
