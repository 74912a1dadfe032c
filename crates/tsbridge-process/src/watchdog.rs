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
//! Then it removes the private TMPDIRs of this tsbridge's jobs (SPEC §4:
//! "temp files it created are removed"), which a SIGKILLed tsbridge cannot.
//! Their names carry the owner tag (`tsbridge-<tag>-<key>`, see
//! [`crate::supervisor::private_tmp_path`]); tsbridge tells the watchdog
//! each base directory it makes them in, once, over the same pipe (a
//! NUL-terminated absolute path, at most [`MAX_BASES`]). The removal uses
//! raw system calls relative to directory fds and never follows a symlink
//! (`openat` with `O_NOFOLLOW | O_DIRECTORY`, `unlinkat`, `AT_REMOVEDIR`):
//! a job may have left symlinks to anything in its TMPDIR. It stays on the
//! base's file system, descends at most [`MAX_DEPTH`] levels and gives up
//! after [`MAX_DESCENTS`]; what it leaves is swept by the next start
//! ([`crate::supervisor::sweep_stale_tmp`]).
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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::spec::OWNER_ENV;

/// How many /proc scans at most: one more after each that killed something
/// (a job may fork while it is scanned), up to this bound.
const MAX_ROUNDS: usize = 50;
/// Base directories of TMPDIRs the watchdog can be told.
pub(crate) const MAX_BASES: usize = 8;
/// Longest base path (with its NUL) it accepts: one atomic pipe write.
const MAX_BASE_LEN: usize = 4096;
/// Directory levels it descends into below a TMPDIR.
pub(crate) const MAX_DEPTH: usize = 64;
/// Subdirectories it opens in all, so that entries it cannot remove (or a
/// surviving process that keeps writing) cannot keep it busy for ever.
pub(crate) const MAX_DESCENTS: usize = 100_000;

/// The write end of the pipe to the watchdog (-1 without one).
static WRITE_END: AtomicI32 = AtomicI32::new(-1);
/// Bases already told (the watchdog keeps the first [`MAX_BASES`]).
static TOLD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Tells the watchdog that private TMPDIRs of this process are made in
/// `base` (absolute), once per base; a no-op without a watchdog. Returns
/// whether the watchdog knows it.
pub(crate) fn watch_tmp_base(base: &Path) -> bool {
    let fd = WRITE_END.load(Ordering::Acquire);
    if fd < 0 {
        return false;
    }
    let mut told = TOLD.lock().unwrap_or_else(|p| p.into_inner());
    if told.iter().any(|b| b == base) {
        return true;
    }
    let bytes = base.as_os_str().as_bytes();
    if told.len() >= MAX_BASES
        || !base.is_absolute()
        || bytes.len() >= MAX_BASE_LEN
        || bytes.contains(&0)
    {
        tracing::warn!(base = %base.display(), "the death watchdog cannot take this TMPDIR base: a SIGKILLed tsbridge leaves its jobs' TMPDIRs there until the next start");
        return false;
    }
    let mut record = Vec::with_capacity(bytes.len() + 1);
    record.extend_from_slice(bytes);
    record.push(0);
    // SAFETY: write(2) of a buffer we own to the pipe's write end, which is
    // never closed. At most PIPE_BUF bytes: written whole or not at all.
    let n = unsafe { libc::write(fd, record.as_ptr().cast(), record.len()) };
    if usize::try_from(n).ok() != Some(record.len()) {
        tracing::warn!(base = %base.display(), error = %io::Error::last_os_error(), "cannot tell the death watchdog a TMPDIR base");
        return false;
    }
    told.push(base.to_path_buf());
    true
}

/// The watchdog's working memory, allocated before the fork (the child may
/// not allocate).
struct Scratch {
    /// `"\0TSBRIDGE_OWNER=<tag>\0"`.
    needle: Vec<u8>,
    /// `"/job-<tag>-"`: the start of the name of this process's job
    /// cgroups, as it shows in a member's `/proc/<pid>/cgroup`.
    cg_needle: Vec<u8>,
    /// `"tsbridge-<tag>-"`: the names of this process's TMPDIRs.
    tmp_prefix: Vec<u8>,
    bases: [[u8; MAX_BASE_LEN]; MAX_BASES],
    base_count: usize,
    /// The record being read.
    record: [u8; MAX_BASE_LEN],
    record_len: usize,
    /// The record is too long: skipped up to its NUL.
    record_skip: bool,
    /// Directory fds and names of the levels being removed.
    fds: [RawFd; MAX_DEPTH],
    names: [[u8; 256]; MAX_DEPTH],
    base_dents: [u8; 8192],
    tree_dents: [u8; 8192],
}

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
    let cg_needle = format!("/{}", tsbridge_sandbox::job_cgroup_prefix()).into_bytes();
    let mut scratch = Scratch::new(
        needle,
        cg_needle,
        crate::supervisor::private_tmp_prefix().into_bytes(),
    );
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    // SAFETY: the child only runs `watchdog_main`, which is async-signal-safe
    // (raw system calls on stack buffers and on `scratch`, which the fork
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
            unsafe { watchdog_main(read_end, write_end, &mut scratch) }
        }
        _ => {
            // SAFETY: the parent's copy of the read end is not used.
            unsafe { libc::close(read_end) };
            // The write end is deliberately never closed: it must stay open
            // exactly as long as this process lives.
            WRITE_END.store(write_end, Ordering::Release);
            Ok(())
        }
    }
}

/// The child: detach from the terminal's signals, drop every inherited fd
/// but the pipe, read TMPDIR bases until end-of-file, kill, remove the
/// TMPDIRs, exit.
///
/// # Safety
/// Only in the child of a fork; never returns.
unsafe fn watchdog_main(read_end: RawFd, write_end: RawFd, s: &mut Scratch) -> ! {
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
        let mut buf = [0u8; 512];
        loop {
            let n = libc::read(PIPE, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
            if n > 0 {
                s.take_records(&buf[..n as usize]);
            }
        }
        for _ in 0..MAX_ROUNDS {
            if sweep(&s.needle, &s.cg_needle) == 0 {
                break;
            }
        }
        // The jobs are gone: nothing writes into their TMPDIRs any more.
        for i in 0..s.base_count {
            s.remove_tmpdirs_in(i);
        }
        libc::_exit(0)
    }
}

impl Scratch {
    fn new(needle: Vec<u8>, cg_needle: Vec<u8>, tmp_prefix: Vec<u8>) -> Box<Scratch> {
        Box::new(Scratch {
            needle,
            cg_needle,
            tmp_prefix,
            bases: [[0; MAX_BASE_LEN]; MAX_BASES],
            base_count: 0,
            record: [0; MAX_BASE_LEN],
            record_len: 0,
            record_skip: false,
            fds: [-1; MAX_DEPTH],
            names: [[0; 256]; MAX_DEPTH],
            base_dents: [0; 8192],
            tree_dents: [0; 8192],
        })
    }

    /// Takes NUL-terminated base paths out of what was read.
    fn take_records(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == 0 {
                if !self.record_skip && self.record_len > 0 && self.base_count < MAX_BASES {
                    let slot = &mut self.bases[self.base_count];
                    slot[..self.record_len].copy_from_slice(&self.record[..self.record_len]);
                    slot[self.record_len] = 0;
                    self.base_count += 1;
                }
                self.record_len = 0;
                self.record_skip = false;
            } else if self.record_len + 1 < MAX_BASE_LEN {
                self.record[self.record_len] = b;
                self.record_len += 1;
            } else {
                self.record_skip = true;
            }
        }
    }

    /// Removes every directory of base `i` whose name starts with this
    /// process's TMPDIR prefix and that is ours (owner uid; as root, any
    /// owner: a job with its own user owns its TMPDIR), listing the
    /// base again while a pass removed something (entries removed while
    /// listing may shift the listing).
    ///
    /// Async-signal-safe.
    fn remove_tmpdirs_in(&mut self, i: usize) {
        // SAFETY: raw system calls on NUL-terminated buffers and fds opened
        // and closed here.
        unsafe {
            let base = libc::open(
                self.bases[i].as_ptr().cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if base < 0 {
                return;
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(base, &mut st) != 0 {
                libc::close(base);
                return;
            }
            let dev = st.st_dev;
            let me = libc::geteuid();
            for _ in 0..MAX_ROUNDS {
                libc::lseek(base, 0, libc::SEEK_SET);
                let mut found = false;
                while let Some(n) = getdents(base, &mut self.base_dents) {
                    let mut off = 0;
                    while let Some((name, next)) = dirent_at(&self.base_dents, n, off) {
                        off = next;
                        if name.len() <= self.tmp_prefix.len()
                            || !name.starts_with(&self.tmp_prefix)
                            || name.len() >= 256
                        {
                            continue;
                        }
                        let mut name_z = [0u8; 256];
                        name_z[..name.len()].copy_from_slice(name);
                        let mut st: libc::stat = std::mem::zeroed();
                        if libc::fstatat(
                            base,
                            name_z.as_ptr().cast(),
                            &mut st,
                            libc::AT_SYMLINK_NOFOLLOW,
                        ) != 0
                            || st.st_mode & libc::S_IFMT != libc::S_IFDIR
                            || (st.st_uid != me && me != 0)
                            || st.st_dev != dev
                        {
                            continue;
                        }
                        found = true;
                        self.remove_tree(base, &name_z, dev);
                    }
                }
                if !found {
                    break;
                }
            }
            libc::close(base);
        }
    }

    /// Removes directory `name` (NUL-terminated) of `parent` and all it
    /// holds, never following a symlink and staying on file system `dev`:
    /// each level is scanned from its start again after a subdirectory was
    /// removed, so one listing buffer serves every level.
    ///
    /// Async-signal-safe.
    fn remove_tree(&mut self, parent: RawFd, name: &[u8; 256], dev: libc::dev_t) {
        const DIR_FLAGS: libc::c_int =
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let mut descents = 0;
        // SAFETY: raw system calls on NUL-terminated buffers and fds opened
        // and closed here.
        unsafe {
            let top = libc::openat(parent, name.as_ptr().cast(), DIR_FLAGS);
            if top < 0 {
                return;
            }
            self.fds[0] = top;
            self.names[0] = *name;
            let mut depth = 1;
            while depth > 0 {
                let fd = self.fds[depth - 1];
                libc::lseek(fd, 0, libc::SEEK_SET);
                let mut descended = false;
                'scan: while let Some(n) = getdents(fd, &mut self.tree_dents) {
                    let mut off = 0;
                    while let Some((entry, next)) = dirent_at(&self.tree_dents, n, off) {
                        off = next;
                        if entry == b"." || entry == b".." || entry.len() >= 256 {
                            continue;
                        }
                        let mut entry_z = [0u8; 256];
                        entry_z[..entry.len()].copy_from_slice(entry);
                        // A file, a symlink (itself, not its target), a socket...
                        if libc::unlinkat(fd, entry_z.as_ptr().cast(), 0) == 0 {
                            continue;
                        }
                        if *libc::__errno_location() != libc::EISDIR
                            || depth >= MAX_DEPTH
                            || descents >= MAX_DESCENTS
                        {
                            continue;
                        }
                        let child = libc::openat(fd, entry_z.as_ptr().cast(), DIR_FLAGS);
                        if child < 0 {
                            continue;
                        }
                        let mut st: libc::stat = std::mem::zeroed();
                        if libc::fstat(child, &mut st) != 0 || st.st_dev != dev {
                            libc::close(child);
                            continue;
                        }
                        descents += 1;
                        self.fds[depth] = child;
                        self.names[depth] = entry_z;
                        depth += 1;
                        descended = true;
                        break 'scan;
                    }
                }
                if descended {
                    continue;
                }
                // As empty as it can be made: remove it from its parent.
                libc::close(fd);
                depth -= 1;
                let up = if depth == 0 {
                    parent
                } else {
                    self.fds[depth - 1]
                };
                libc::unlinkat(up, self.names[depth].as_ptr().cast(), libc::AT_REMOVEDIR);
            }
        }
    }
}

/// The next entries of directory `fd` into `buf` (getdents64): how many
/// bytes, or `None` at its end or on an error.
///
/// # Safety
/// Async-signal-safe.
unsafe fn getdents(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// The name of the `linux_dirent64` at `off` of a getdents64 buffer holding
/// `len` bytes (without its NUL), and the offset of the next one.
fn dirent_at(buf: &[u8], len: usize, off: usize) -> Option<(&[u8], usize)> {
    // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
    if off + 19 > len {
        return None;
    }
    let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
    if reclen == 0 || off + reclen > len {
        return None;
    }
    let name = &buf[off + 19..off + reclen];
    let name = match name.iter().position(|&b| b == 0) {
        Some(end) => &name[..end],
        None => name,
    };
    Some((name, off + reclen))
}

/// One scan of /proc: SIGKILLs every process whose environ holds `needle`
/// or whose cgroup path holds `cg_needle` (a job process that cleared its
/// environment is still in its job's cgroup). Returns how many were
/// signalled.
///
/// # Safety
/// Async-signal-safe; callable in a forked child.
unsafe fn sweep(needle: &[u8], cg_needle: &[u8]) -> usize {
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
        while let Some(n) = getdents(proc_fd, &mut dents) {
            let mut off = 0;
            while let Some((name, next)) = dirent_at(&dents, n, off) {
                off = next;
                let Some(pid) = parse_pid(name) else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                if kill_if_tagged(proc_fd, pid, name, needle, cg_needle) {
                    killed += 1;
                }
            }
        }
        libc::close(proc_fd);
        killed
    }
}

/// Pins `pid` with a pidfd, then reads its environ and, if that does not
/// hold `needle`, its cgroup membership; SIGKILLs it through the pidfd if
/// either names this tsbridge. The pidfd is taken first, so the files read
/// are those of the process it pins, or of none (a reused pid is never hit).
///
/// # Safety
/// Async-signal-safe.
unsafe fn kill_if_tagged(
    proc_fd: RawFd,
    pid: libc::pid_t,
    name: &[u8],
    needle: &[u8],
    cg_needle: &[u8],
) -> bool {
    // SAFETY: raw system calls on fds opened and closed here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd;
        if pidfd < 0 {
            return false;
        }
        let ours = proc_file_holds(proc_fd, name, b"/environ\0", Matcher::entry(needle))
            || proc_file_holds(proc_fd, name, b"/cgroup\0", Matcher::substring(cg_needle));
        let hit = ours
            && libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0;
        libc::close(pidfd);
        hit
    }
}

/// Whether `/proc/<name><suffix>` (`suffix` NUL-terminated) holds what `m`
/// looks for, read as a stream: the file may be longer than any buffer.
///
/// # Safety
/// Async-signal-safe.
unsafe fn proc_file_holds(proc_fd: RawFd, name: &[u8], suffix: &[u8], mut m: Matcher) -> bool {
    // "<pid>/<file>\0", relative to /proc.
    let mut path = [0u8; 48];
    if name.len() + suffix.len() > path.len() {
        return false;
    }
    path[..name.len()].copy_from_slice(name);
    path[name.len()..name.len() + suffix.len()].copy_from_slice(suffix);
    let mut buf = [0u8; 4096];
    // SAFETY: `path` is NUL-terminated; reads into a stack buffer of its
    // length; the fd is opened and closed here.
    unsafe {
        let fd = libc::openat(
            proc_fd,
            path.as_ptr().cast(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let found = loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break false;
            }
            if m.feed(&buf[..n as usize]) {
                break true;
            }
        };
        libc::close(fd);
        found
    }
}

/// Finds `needle` in a stream without backtracking: its first byte occurs
/// nowhere else in it but possibly at its end, so after a mismatch a match
/// can only start again at that byte.
/// - [`Matcher::entry`]: one whole entry of a NUL-separated environ,
///   `"\0" + entry + "\0"`; the stream is taken as preceded by a NUL (its
///   first entry has none before it).
/// - [`Matcher::substring`]: e.g. `"/job-<tag>-"` in `/proc/<pid>/cgroup`.
struct Matcher<'a> {
    needle: &'a [u8],
    at: usize,
}

impl<'a> Matcher<'a> {
    fn entry(needle: &'a [u8]) -> Self {
        Self { needle, at: 1 }
    }

    fn substring(needle: &'a [u8]) -> Self {
        Self { needle, at: 0 }
    }

    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if b == self.needle[self.at] {
                self.at += 1;
                if self.at == self.needle.len() {
                    return true;
                }
            } else {
                self.at = usize::from(b == self.needle[0]);
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

    /// Whether `m` finds its needle in `hay` fed in reads of `chunk` bytes.
    fn found(mut m: Matcher, hay: &[u8], chunk: usize) -> bool {
        hay.chunks(chunk.max(1)).any(|c| m.feed(c))
    }

    fn holds(env: &[u8], needle: &[u8], chunk: usize) -> bool {
        found(Matcher::entry(needle), env, chunk)
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
    fn the_cgroup_matcher_finds_the_job_prefix_in_any_line_across_any_reads() {
        let needle = b"/job-12.34-";
        let v1 = b"12:pids:/tsbridge-0a1b2c3d/job-12.34-01a2-1\n11:memory:/user.slice\n";
        let v2 = b"0::/system.slice/tsbridge-0a1b2c3d/job-12.34-k\n";
        let restart = b"0::/a//job-12.34-k\n";
        let other_instance = b"12:pids:/tsbridge-0a1b2c3d/job-12.345-01a2-1\n";
        let no_slash = b"12:pids:/tsbridge-0a1b2c3djob-12.34-k\n";
        let elsewhere = b"0::/user.slice/session-3.scope\n";
        let cut = |hay: &[u8], chunk: usize| found(Matcher::substring(needle), hay, chunk);
        for chunk in [1, 2, 3, 7, 4096] {
            assert!(cut(v1, chunk), "{chunk}");
            assert!(cut(v2, chunk), "{chunk}");
            assert!(cut(restart, chunk), "{chunk}");
            assert!(!cut(other_instance, chunk), "{chunk}");
            assert!(!cut(no_slash, chunk), "{chunk}");
            assert!(!cut(elsewhere, chunk), "{chunk}");
        }
    }

    fn base(s: &Scratch, i: usize) -> &[u8] {
        let b = &s.bases[i];
        &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
    }

    #[test]
    fn bases_are_whole_records_across_any_reads() {
        let mut s = Scratch::new(Vec::new(), Vec::new(), Vec::new());
        let long = vec![b'x'; MAX_BASE_LEN + 10];
        let mut stream = b"/tmp/a\0/var/b\0".to_vec();
        stream.extend_from_slice(&long);
        stream.extend_from_slice(b"\0/c\0");
        for chunk in stream.chunks(3) {
            s.take_records(chunk);
        }
        assert_eq!(s.base_count, 3, "the over-long record is skipped");
        assert_eq!(base(&s, 0), b"/tmp/a");
        assert_eq!(base(&s, 1), b"/var/b");
        assert_eq!(base(&s, 2), b"/c");
        for i in 0..20 {
            s.take_records(format!("/more/{i}\0").as_bytes());
        }
        assert_eq!(s.base_count, MAX_BASES);
    }

    /// The removal (as the forked watchdog runs it, here in-process): every
    /// prefixed directory of the base goes with all it holds, deeper than
    /// one listing and with entries of every kind; symlinks to a directory
    /// and a file outside are removed themselves, their targets kept; other
    /// names and a prefixed symlink's target stay.
    #[test]
    fn tmpdirs_are_removed_without_following_symlinks() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = root.path().join("base");
        let outside = root.path().join("outside");
        let mk = |p: &std::path::Path| std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("{e}"));
        let write =
            |p: std::path::PathBuf| std::fs::write(p, "x").unwrap_or_else(|e| panic!("{e}"));
        mk(&outside.join("sub"));
        write(outside.join("keep.txt"));
        write(outside.join("sub/deep.txt"));
        let job = base.join("tsbridge-1.2-job-1");
        let mut d = job.clone();
        for i in 0..10 {
            d = d.join(format!("l{i}"));
            mk(&d);
            for f in 0..300 {
                write(d.join(format!("file-with-a-longish-name-{f}")));
            }
        }
        symlink(&outside, job.join("escape-dir")).unwrap_or_else(|e| panic!("{e}"));
        symlink(outside.join("keep.txt"), d.join("escape-file")).unwrap_or_else(|e| panic!("{e}"));
        mk(&job.join("empty"));
        mk(&base.join("tsbridge-1.2-job-2"));
        symlink(&outside, base.join("tsbridge-1.2-link")).unwrap_or_else(|e| panic!("{e}"));
        mk(&base.join("tsbridge-9.9-other"));
        mk(&base.join("unrelated"));

        let mut s = Scratch::new(Vec::new(), Vec::new(), b"tsbridge-1.2-".to_vec());
        let mut record = base.as_os_str().as_bytes().to_vec();
        record.push(0);
        s.take_records(&record);
        s.remove_tmpdirs_in(0);

        let mut left: Vec<String> = std::fs::read_dir(&base)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["tsbridge-1.2-link", "tsbridge-9.9-other", "unrelated"]
        );
        assert!(outside.join("keep.txt").is_file());
        assert!(outside.join("sub/deep.txt").is_file());
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
