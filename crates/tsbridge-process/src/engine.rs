//! One child from spawn to reap: [`spawn`] forks (on the dedicated spawner
//! thread), a supervision task owns the child until every process of the job
//! is gone, and [`RunningProcess::wait`] returns its [`Outcome`].
//!
//! - Environment: `env_clear` + the spec's env + `TSBRIDGE_JOB=<key>` (+ the
//!   Node IPC variables when `ipc` is on). Nothing is inherited.
//! - Spawn: `clone.rs` (clone3; a v2 sandboxed job is created in its
//!   cgroup), not `std::process::Command`.
//! - Process tree: the child leads its own process group; in its pre-exec
//!   step it gets `PR_SET_PDEATHSIG(SIGKILL)` (and dies at once if tsbridge
//!   already died), then the IPC fd, then the sandbox. See
//!   docs/design/termination.md.
//! - Stop (timeout, cancel, shutdown): SIGTERM to the whole tree, `kill_grace`,
//!   SIGKILL to whatever remains, then a bounded wait until nothing of the job
//!   is alive. After a normal exit of the leader, leftovers are killed the
//!   same way (counted in [`Outcome::leaked_descendants_killed`]).
//! - Output: stdout and stderr pipes enlarged to 1 MiB (or, with
//!   [`crate::OutputChannel::Socket`], socketpairs), read into bounded
//!   [`CaptureBuffer`]s and through the line protocol.
//! - Events: a bounded channel, bounded in count (`event_capacity`) and in
//!   bytes (the larger of `max_output` and [`MIN_EVENT_BUDGET`]: what the
//!   queued events' text and JSON take). A full channel never blocks the
//!   pipe: a non-result event is dropped and counted
//!   ([`Outcome::events_dropped`]); a result event waits at most
//!   [`RESULT_SEND_WAIT`] for room in the count, and is dropped at once past
//!   the bytes (the result is always in [`Outcome::result`]). So a child
//!   flooding long lines or large results costs tsbridge at most that budget
//!   in queued events, whoever is (not) reading them.
//! - Reaping: the leader is reaped by its own waiter with `wait4` (a pidfd
//!   says when), which gives its rusage: `cpu` is user+sys of the leader and
//!   of every descendant it reaped; `peak_rss` is the largest `ru_maxrss`
//!   among them. With a sandbox cgroup, the cgroup's counters are used.
//! - Resource monitor ([`crate::monitor`]): while the leader runs, the
//!   supervision task samples the job every `monitor_interval` into
//!   [`Outcome::samples`] (the peak also raises [`Outcome::peak_rss`]). With a
//!   fallback memory limit and no cgroup memory limit, a sample above it ends
//!   the job: SIGKILL to the tree at once (no SIGTERM, no grace), reason
//!   `MemoryLimit`.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::process::Signal;
use serde_json::Value;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tsbridge_proto::{ChildEvent, EndReason};

use crate::capture::{CaptureBuffer, Captured};
use crate::error::{SpawnError, SpawnStage};
use crate::lineproto::{
    ProtocolLimits, ResultExtractor, StderrProtocol, StdoutProtocol, StdoutSummary,
};
use crate::mask::Masker;
use crate::monitor::{self, Monitor, ResourceSample};
use crate::spec::{JOB_MARKER_ENV, JobKey, JobSpec, OWNER_ENV, OutputChannel, StdinSpec};
use crate::sys::{self, Pid};
use crate::tree::{Scope, Tracker};
use crate::{clone, registry, spawner, supervisor};

/// How long a `result` event may wait for room in a full event channel.
pub const RESULT_SEND_WAIT: Duration = Duration::from_millis(250);
/// The smallest byte budget of a job's queued events (see the module doc).
pub const MIN_EVENT_BUDGET: usize = 1 << 20;
/// Size the engine asks for its stdout/stderr pipes.
pub const PIPE_SIZE: i32 = 1 << 20;
/// How often the terminator looks at the tree while it waits.
const POLL: Duration = Duration::from_millis(20);
/// How long after SIGKILL the engine waits for the tree to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long readers may drain after the tree is gone before they are stopped
/// (something outside the job may hold a pipe's write end).
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// Reads start with this buffer and double (up to [`READ_BUF_MAX`]) while
/// reads fill it, so a quiet job costs little and a flood reads 1 MiB at a time.
const READ_BUF_MIN: usize = 64 * 1024;
const READ_BUF_MAX: usize = 1024 * 1024;

/// Why the engine was asked to stop a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// A user cancelled it.
    Cancelled,
    /// tsbridge is shutting down.
    Shutdown,
}

impl From<StopReason> for EndReason {
    fn from(r: StopReason) -> Self {
        match r {
            StopReason::Cancelled => EndReason::Cancelled,
            StopReason::Shutdown => EndReason::Shutdown,
        }
    }
}

/// A stop request: the reason and, optionally, a grace other than the spec's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopRequest {
    pub reason: StopReason,
    pub grace: Option<Duration>,
}

/// Asks a job to stop. Cheap to clone; the first request wins. A control can
/// be created before the spawn (see [`crate::spec::JobSpecBuilder::control`])
/// so that a cancel arriving early is honoured, and shared by the attempts of
/// a retried job.
#[derive(Clone, Debug, Default)]
pub struct ProcessControl {
    inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
struct ControlInner {
    token: CancellationToken,
    request: Mutex<Option<StopRequest>>,
    /// The running job's tracker, for [`ProcessControl::kill_descendants`]:
    /// set by `spawn` before it returns (not when the supervision task first
    /// runs, which on a busy runtime can be later); `None` before that and
    /// once the job is over.
    sweep: Mutex<Option<Arc<SweepTarget>>>,
}

/// What [`ProcessControl::kill_descendants`] searches: the job's leader and
/// its tracker, shared with the supervision task (the sweep runs on the
/// caller's task, without a hop to the supervisor).
#[derive(Debug)]
struct SweepTarget {
    leader: Pid,
    tracker: Arc<Mutex<Tracker>>,
}

impl ProcessControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the job with reason `cancelled`.
    pub fn cancel(&self) {
        self.stop(StopReason::Cancelled, None);
    }

    /// Stops the job with reason `shutdown`.
    pub fn shutdown(&self) {
        self.stop(StopReason::Shutdown, None);
    }

    /// Stops the job; `grace` overrides the spec's `kill_grace`. Only the
    /// first request counts.
    pub fn stop(&self, reason: StopReason, grace: Option<Duration>) {
        {
            let mut r = self.inner.request.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(StopRequest { reason, grace });
            }
        }
        self.inner.token.cancel();
    }

    /// The stop request, if one was made.
    pub fn request(&self) -> Option<StopRequest> {
        *self.inner.request.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// SIGKILLs every process of the job but its leader, and returns how
    /// many it found: for a long-lived leader (a pool worker) that runs one
    /// task after another, so that nothing a task started outlives it. The
    /// same search as the job's termination (process group, descendants,
    /// adopted orphans and the job's marker, escapees no other live job can
    /// own). `0` once the job is over. Runs on the caller's task (a few
    /// small /proc reads; it does not wait for the supervision task).
    pub async fn kill_descendants(&self) -> usize {
        let target = self.sweep_slot().clone();
        match target {
            Some(t) => sweep(t.leader, &mut lock_tracker(&t.tracker)),
            None => 0,
        }
    }

    /// Takes the processes the running job's leader has started so far as
    /// its own helpers, which [`Self::kill_descendants`] then leaves alone
    /// (the same processes only: pid and start time). For a pool worker
    /// once it is ready, before its first task: what its runtime started
    /// while loading (tsx's esbuild service, which later imports need) is
    /// not a task's stray. They still die with the job. Returns how many.
    pub async fn keep_descendants(&self) -> usize {
        let target = self.sweep_slot().clone();
        match target {
            Some(t) => lock_tracker(&t.tracker).keep_current(),
            None => 0,
        }
    }

    fn sweep_slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<SweepTarget>>> {
        self.inner.sweep.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when a stop is requested.
    pub async fn stopped(&self) -> StopRequest {
        self.inner.token.cancelled().await;
        self.request().unwrap_or(StopRequest {
            reason: StopReason::Cancelled,
            grace: None,
        })
    }
}

/// How the leader process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal (never reported as an exit code).
    Signal(i32),
}

impl ExitKind {
    fn from_status(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitKind::Signal(libc::WTERMSIG(status))
        } else {
            ExitKind::Code(libc::WEXITSTATUS(status))
        }
    }

    pub fn code(self) -> Option<i32> {
        match self {
            ExitKind::Code(c) => Some(c),
            ExitKind::Signal(_) => None,
        }
    }

    pub fn signal(self) -> Option<i32> {
        match self {
            ExitKind::Signal(s) => Some(s),
            ExitKind::Code(_) => None,
        }
    }

    pub fn success(self) -> bool {
        self == ExitKind::Code(0)
    }

    /// The shell convention: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
        }
    }
}

/// Everything known about a finished job. Produced only after every process
/// of the job that the engine could find is gone.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub pid: u32,
    pub key: JobKey,
    pub exit: ExitKind,
    /// Why it ended: exactly one reason.
    pub reason: EndReason,
    pub started_at: SystemTime,
    /// From spawn to the leader's reaping.
    pub wall: Duration,
    /// user + sys CPU (see the module doc for what is counted).
    pub cpu: Duration,
    pub peak_rss: Option<u64>,
    /// Captured stdout, masked.
    pub stdout: Captured,
    /// Captured stderr, masked.
    pub stderr: Captured,
    /// The last result (line protocol or IPC), else the whole-stdout JSON
    /// fallback on exit 0; `None` for no result (`null`).
    pub result: Option<Value>,
    pub events_dropped: u64,
    /// Processes of the job still alive after the leader exited by itself,
    /// which the engine then killed.
    pub leaked_descendants_killed: u32,
    /// The resource monitor's samples (bounded, evenly spaced over the run;
    /// empty when the monitor was off or the job ended before the first tick).
    pub samples: Vec<ResourceSample>,
}

impl Outcome {
    /// Exit code 0 and no stop.
    pub fn success(&self) -> bool {
        self.reason == EndReason::Exited && self.exit.success()
    }
}

/// The last `n` bytes of a captured stream, as text (for error details).
pub fn tail_text(c: &Captured, n: usize) -> String {
    c.tail_string(n)
}

/// A running job. Dropping it (or dropping the future of
/// [`RunningProcess::wait`] before it completes) cancels the job: no process
/// outlives its handle.
#[derive(Debug)]
pub struct RunningProcess {
    pid: u32,
    main_pid: u32,
    key: JobKey,
    started_at: SystemTime,
    events: Option<mpsc::Receiver<ChildEvent>>,
    stdin: Option<tokio::process::ChildStdin>,
    ipc: Option<crate::ipclink::IpcHandle>,
    control: ProcessControl,
    done: Option<oneshot::Receiver<Outcome>>,
}

impl RunningProcess {
    /// The process the engine started and reaps: the job's, or with a PID
    /// namespace of its own (`limits.pid_namespace`) its init's.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The job's own process (its host pid): [`Self::pid`], but under an
    /// init the init's child (pid 2 in the namespace). Still
    /// [`Self::pid`] if the job had already ended at the spawn's return.
    pub fn main_pid(&self) -> u32 {
        self.main_pid
    }

    pub fn key(&self) -> &JobKey {
        &self.key
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// The child's events, in the order they were parsed. Take it once; if
    /// nobody takes it, events fill the channel and further ones are dropped
    /// and counted.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<ChildEvent>> {
        self.events.take()
    }

    /// The stdin pipe, with [`StdinSpec::Pipe`].
    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.stdin.take()
    }

    pub fn control(&self) -> ProcessControl {
        self.control.clone()
    }

    /// The Node IPC channel (when the spec set `ipc`): send messages and make
    /// requests to the child. The engine forwards the child's
    /// progress/log/result envelopes as events on its own.
    pub fn ipc(&self) -> Option<crate::ipclink::IpcHandle> {
        self.ipc.clone()
    }

    /// Waits until the job and every process of it is gone.
    pub async fn wait(mut self) -> Outcome {
        let Some(rx) = self.done.take() else {
            return lost_outcome(&self);
        };
        let guard = CancelOnDrop(Some(self.control.clone()));
        let out = match rx.await {
            Ok(o) => o,
            Err(_) => lost_outcome(&self),
        };
        std::mem::forget(guard);
        out
    }
}

struct CancelOnDrop(Option<ProcessControl>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

impl Drop for RunningProcess {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.control.cancel();
        }
    }
}

fn lost_outcome(p: &RunningProcess) -> Outcome {
    tracing::error!(pid = p.pid, "supervision task vanished");
    Outcome {
        pid: p.pid,
        key: p.key.clone(),
        exit: ExitKind::Signal(libc::SIGKILL),
        reason: EndReason::Interrupted,
        started_at: p.started_at,
        wall: Duration::ZERO,
        cpu: Duration::ZERO,
        peak_rss: None,
        stdout: Captured::default(),
        stderr: Captured::default(),
        result: None,
        events_dropped: 0,
        leaked_descendants_killed: 0,
        samples: Vec::new(),
    }
}

/// Runs a job to the end (no events consumer).
pub async fn run(spec: JobSpec) -> Result<Outcome, SpawnError> {
    let mut p = spawn(spec).await?;
    drop(p.take_events());
    Ok(p.wait().await)
}

/// Starts a job. Must be called inside a tokio runtime (with IO and time
/// enabled); the fork itself happens on the engine's spawner thread.
pub async fn spawn(spec: JobSpec) -> Result<RunningProcess, SpawnError> {
    let JobSpec {
        program,
        args,
        cwd,
        mut env,
        stdin,
        timeout,
        kill_grace,
        max_output,
        max_line,
        ipc,
        output,
        masker,
        sandbox,
        key,
        label,
        private_tmp,
        control,
        event_capacity,
        monitor_interval,
        memory_limit_fallback,
    } = spec;
    let control = control.unwrap_or_default();
    let err = |stage, e| SpawnError::new(program.clone(), stage, e);

    let tmpdir = match &private_tmp {
        Some(base) => {
            // A job with its own user owns its TMPDIR.
            let owner = sandbox
                .as_ref()
                .and_then(|s| s.policy.user)
                .map(|u| (u.uid, u.gid));
            let dir = supervisor::create_private_tmp(base, &key, owner)
                .map_err(|e| err(SpawnStage::Prepare, e))?;
            env.insert("TMPDIR".into(), dir.to_string_lossy().into_owned());
            Some(dir)
        }
        None => None,
    };
    let cleanup_tmp = |t: &Option<PathBuf>| {
        if let Some(d) = t {
            supervisor::remove_private_tmp(d);
        }
    };

    // Exactly the spec's environment; stdout and stderr piped; its own
    // process group (see crate::clone).
    let mut cmd = clone::Command::new(&program);
    cmd.args(&args)
        .envs(&env)
        .env(JOB_MARKER_ENV, key.as_str())
        .env(OWNER_ENV, supervisor::owner_tag())
        .current_dir(&cwd)
        .output(output)
        .stdin(match stdin {
            StdinSpec::Null => clone::Stdin::Null,
            StdinSpec::Bytes(_) | StdinSpec::Pipe => clone::Stdin::Piped,
        });

    let ipc_parts = if ipc {
        match crate::ipclink::prepare(&mut cmd, &masker) {
            Ok(p) => Some(p),
            Err(e) => {
                cleanup_tmp(&tmpdir);
                return Err(err(SpawnStage::Prepare, e));
            }
        }
    } else {
        None
    };

    let parent = sys::self_pid().raw();
    let ipc_fds = ipc_parts.as_ref().map(|p| p.child_fds());
    let hook = sandbox.as_ref().map(|s| s.prepared.child_hook());
    // A v2 job is created in its cgroup (clone3 CLONE_INTO_CGROUP).
    cmd.cgroup(hook.as_ref().and_then(|h| h.cgroup_v2_dir()));
    // A PID namespace of its own: the job runs under a tiny init
    // (docs/design/pid-namespace.md); `pid` below is then the init's.
    cmd.pid_namespace(sandbox.as_ref().is_some_and(|s| s.prepared.pid_namespace()));
    if let Some(s) = &sandbox {
        cmd.init_setup(s.prepared.init_setup().clone());
    }
    // A sandbox step that needs a memory of its own (a user namespace's
    // maps: see `PreparedSandbox::needs_own_memory`).
    cmd.own_memory(
        sandbox
            .as_ref()
            .is_some_and(|s| s.prepared.needs_own_memory()),
    );
    let pre_exec = move |ctx: clone::ChildCtx| -> io::Result<()> {
        // SAFETY: prctl with integer arguments; async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // tsbridge (or the job's init, pid 1 where the job runs) may have
        // died between fork and prctl: then die now.
        // (kill, not raise: glibc's raise names the thread by the tid it
        // cached, which a raw clone3 does not update.)
        let parent = if ctx.under_init { 1 } else { parent };
        // SAFETY: getppid, getpid and kill are async-signal-safe.
        if unsafe { libc::getppid() } != parent {
            // SAFETY: as above.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        if let Some((child_fd, target)) = ipc_fds {
            crate::ipclink::install_in_child(child_fd, target)?;
        }
        // A child created in its v2 cgroup does not join it again.
        match &hook {
            // SAFETY: we are in the cloned child between clone and exec,
            // which is the hook's contract; it is async-signal-safe (it only
            // reads data prepared before the clone and makes raw syscalls).
            Some(h) if ctx.under_init => unsafe { h.apply_under_init(ctx.in_cgroup) }?,
            // SAFETY: as above.
            Some(h) if ctx.in_cgroup => unsafe { h.apply_in_cgroup() }?,
            // SAFETY: as above.
            Some(h) => unsafe { h.apply() }?,
            None => {}
        }
        Ok(())
    };
    // `pre_exec` runs in the child between clone and exec. It only makes raw
    // syscalls (prctl, getppid, kill, the dup2/fcntl of install_in_child) and
    // calls the sandbox hook; nothing allocates or takes a lock, and errors
    // are built from a raw errno (no allocation).
    cmd.pre_exec(Box::new(pre_exec));

    let spawned = spawner::spawn(cmd).await;
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            cleanup_tmp(&tmpdir);
            if let Some(s) = &sandbox
                && let Some(f) = s.prepared.take_child_failure()
            {
                tracing::warn!(failure = ?f, "sandbox setup failed in the child");
            }
            return Err(err(SpawnStage::Exec, e));
        }
    };
    let started = Instant::now();
    let started_at = SystemTime::now();
    let pid = child.pid;
    tracing::trace!(
        pid = pid.raw(),
        in_cgroup = child.in_cgroup,
        via = ?child.via,
        "spawned (in_cgroup: created in its v2 cgroup)"
    );
    // The spawner registered the job's group (and its window) at the fork.
    let needle = format!("{JOB_MARKER_ENV}={key}").into_bytes();
    let mut tracker = Tracker::new(pid, needle);
    // Under an init (a PID namespace of its own), `pid` is the init's: the
    // job itself is its child, which has exec'd by now (the spawn returned
    // once the report pipe's last copy, the job's, closed at its exec). A
    // pool worker's sweeps must spare it; its pid is what the caller calls
    // the job's (`RunningProcess::main_pid`).
    let main = match child.init_status {
        Some(_) => sys::ns_job_of(pid),
        None => None,
    };
    if let Some(m) = main {
        tracker.set_main(m);
    }

    // Taken at the clone (CLONE_PIDFD; pidfd_open after a fork).
    let pidfd = child.pidfd.take();
    let init_status = child.init_status.take();
    // From here on the child runs: every failure must still end it.
    let wired = wire(child, output, ipc_parts);
    let (stdout, stderr, stdin_pipe, ipc_link) = match wired {
        Ok(w) => w,
        Err(e) => {
            let _ = pid.signal_group(Signal::KILL);
            let _ = sys::kill(pid);
            let _ = sys::reap_blocking(pid);
            registry::leader_done(pid);
            registry::remove_group(pid);
            cleanup_tmp(&tmpdir);
            return Err(err(SpawnStage::Wire, e));
        }
    };
    let pidfd = pidfd.and_then(|fd| {
        // SAFETY: an OwnedFd's raw fd is valid, open and unchanged for as long
        // as the OwnedFd lives, which is the AsyncFd's whole lifetime.
        unsafe { AsyncFd::register(fd) }.ok()
    });
    let dropped = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel(event_capacity);
    let results = Arc::new(ResultSlot::default());
    let readers_stop = CancellationToken::new();
    let limits = ProtocolLimits {
        max_line,
        ..ProtocolLimits::default()
    };
    let sink = EventSink {
        tx: tx.clone(),
        dropped: dropped.clone(),
        results: results.clone(),
        queued: Arc::new(tokio::sync::Mutex::new(Queued::default())),
        budget: max_output.max(MIN_EVENT_BUDGET),
    };
    let stdout_task = tokio::spawn(read_stdout(
        stdout,
        max_output,
        StdoutProtocol::new(limits).with_masker((*masker).clone()),
        sink.clone(),
        readers_stop.clone(),
    ));
    let stderr_task = tokio::spawn(read_stderr(
        stderr,
        max_output,
        StderrProtocol::new(limits).with_masker((*masker).clone()),
        sink.clone(),
        readers_stop.clone(),
    ));
    let (ipc_handle, ipc_task) = match ipc_link {
        Some(l) => {
            let (h, incoming) = l.split();
            (
                Some(h),
                Some(crate::ipclink::forward(incoming, sink, masker.clone())),
            )
        }
        None => (None, None),
    };
    drop(tx);

    let mut stdin_handle = None;
    match (stdin, stdin_pipe) {
        (StdinSpec::Bytes(bytes), Some(mut w)) => {
            tokio::spawn(async move {
                // EPIPE when the child does not read its stdin: not an error.
                let _ = w.write_all(&bytes).await;
                let _ = w.shutdown().await;
            });
        }
        (StdinSpec::Pipe, Some(w)) => stdin_handle = Some(w),
        _ => {}
    }

    // The fallback limit applies only when no cgroup enforces a memory limit.
    let cgroup_memory_limit = sandbox
        .as_ref()
        .is_some_and(|s| s.prepared.cgroup().is_some() && s.policy.memory.is_some());
    let memory_limit = memory_limit_fallback.filter(|_| !cgroup_memory_limit);
    let monitor = monitor_interval
        .or_else(|| memory_limit.map(|_| crate::spec::DEFAULT_MONITOR_INTERVAL))
        .map(|every| (every, Monitor::new(started, memory_limit)));

    let (done_tx, done_rx) = oneshot::channel();
    let tracker = Arc::new(Mutex::new(tracker));
    let sweep = Arc::new(SweepTarget {
        leader: pid,
        tracker: tracker.clone(),
    });
    let job = Supervised {
        pid,
        key: key.clone(),
        label,
        started,
        started_at,
        timeout,
        kill_grace,
        control: control.clone(),
        pidfd,
        tracker,
        sweep: sweep.clone(),
        stdout_task,
        stderr_task,
        ipc_task,
        readers_stop,
        sandbox,
        masker,
        dropped,
        results,
        tmpdir,
        monitor,
        init_status,
    };
    let registration = supervisor::register(&key, control.clone());
    // Open the sweeps before `spawn` returns, not when the supervision task
    // first runs: on a busy runtime that can be after the caller's first
    // sweep, which then found nothing (a retry shares the control: this
    // attempt's tracker replaces the previous one's).
    *control.sweep_slot() = Some(sweep);
    let span = tracing::debug_span!("job", key = %key, pid = pid.raw(), label = ?job.label);
    tokio::spawn(
        async move {
            let outcome = job.run().await;
            drop(registration);
            let _ = done_tx.send(outcome);
        }
        .instrument(span),
    );

    Ok(RunningProcess {
        pid: pid.raw() as u32,
        main_pid: main.map_or(pid, |m| m.pid).raw() as u32,
        key,
        started_at,
        events: Some(rx),
        stdin: stdin_handle,
        ipc: ipc_handle,
        control,
        done: Some(done_rx),
    })
}

type Wired = (
    tokio::process::ChildStdout,
    tokio::process::ChildStderr,
    Option<tokio::process::ChildStdin>,
    Option<crate::ipclink::Link>,
);

/// The child's pipes into the runtime (the pid stays with the caller, which
/// reaps it with wait4).
fn wire(
    child: clone::Child,
    output: OutputChannel,
    ipc: Option<crate::ipclink::Prepared>,
) -> io::Result<Wired> {
    // (A socketpair keeps the kernel's default buffers: 4 MiB ones measured
    // slower than the default, bench/engine/RESULTS.md.)
    if output == OutputChannel::Pipe {
        for fd in [sys::raw(&child.stdout), sys::raw(&child.stderr)] {
            if let Err(e) = sys::set_pipe_size(fd, PIPE_SIZE) {
                tracing::debug!(error = %e, "pipe keeps its default size");
            }
        }
    }
    let out = tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(child.stdout))?;
    let err = tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(child.stderr))?;
    let stdin = match child.stdin {
        Some(s) => Some(tokio::process::ChildStdin::from_std(
            std::process::ChildStdin::from(s),
        )?),
        None => None,
    };
    let link = match ipc {
        Some(p) => Some(p.start()?),
        None => None,
    };
    Ok((out, err, stdin, link))
}

/// Where every source of events sends them.
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: mpsc::Sender<ChildEvent>,
    dropped: Arc<AtomicU64>,
    results: Arc<ResultSlot>,
    /// The sizes of the events in the channel; every send holds this lock,
    /// so its order is the channel's.
    queued: Arc<tokio::sync::Mutex<Queued>>,
    /// Bytes the queued events may take.
    budget: usize,
}

/// The sizes of the events sent and, as far as this side knows, not yet
/// received (oldest first).
#[derive(Default)]
struct Queued {
    sizes: std::collections::VecDeque<usize>,
    bytes: usize,
}

impl Queued {
    /// Forgets the oldest sizes beyond `in_channel`, the events the channel
    /// holds now: the others were received. Read under the sender's lock,
    /// `in_channel` can only be too high (the receiver goes on receiving),
    /// so `bytes` is never below what the channel holds.
    fn received_all_but(&mut self, in_channel: usize) {
        while self.sizes.len() > in_channel {
            if let Some(n) = self.sizes.pop_front() {
                self.bytes -= n;
            }
        }
    }

    fn push(&mut self, n: usize) {
        self.sizes.push_back(n);
        self.bytes += n;
    }
}

/// What an event takes in memory, near enough: its text, and for JSON each
/// value's node (`serde_json::Value` is 32 bytes on 64-bit targets).
fn event_bytes(ev: &ChildEvent) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    fn json(v: &Value) -> usize {
        NODE + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(json).sum(),
            Value::Object(o) => o.iter().map(|(k, v)| k.len() + NODE + json(v)).sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
    }
    let body = match ev {
        ChildEvent::Log {
            message,
            child_timestamp,
            ..
        } => message.len() + child_timestamp.as_ref().map_or(0, String::len),
        ChildEvent::Progress(p) => p.message.len(),
        ChildEvent::Result { value } => json(value),
        ChildEvent::Output { line, .. } => line.len(),
    };
    std::mem::size_of::<ChildEvent>() + body
}

/// The last result from any source (stdout protocol or IPC), by arrival.
#[derive(Default)]
pub(crate) struct ResultSlot {
    last: Mutex<Option<Value>>,
}

impl ResultSlot {
    fn set(&self, v: Value) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }
    fn take(&self) -> Option<Value> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl EventSink {
    /// Sends one event without ever blocking the pipe for long (see the
    /// module doc). Results are also recorded for the outcome.
    pub(crate) async fn send(&self, ev: ChildEvent) {
        let is_result = if let ChildEvent::Result { value } = &ev {
            self.results.set(value.clone());
            true
        } else {
            false
        };
        if self.tx.is_closed() {
            return;
        }
        let size = event_bytes(&ev);
        let mut queued = self.queued.lock().await;
        queued.received_all_but(self.tx.max_capacity() - self.tx.capacity());
        // One event alone may pass (a line is cut at max_line, a result at
        // max_result); past that the budget holds.
        if queued.bytes + size > self.budget && !queued.sizes.is_empty() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(ev) {
            Ok(()) => queued.push(size),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(ev)) if is_result => {
                // Holding the lock: the other sources' events would find
                // the channel full and be dropped anyway.
                match tokio::time::timeout(RESULT_SEND_WAIT, self.tx.send(ev)).await {
                    Ok(Ok(())) => queued.push(size),
                    Ok(Err(_)) => {}
                    Err(_) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct StdoutDone {
    captured: Captured,
    summary: StdoutSummary,
}

/// Reads a stream to its end (or `stop`): every chunk goes into `cap` and
/// through `feed` (the line protocol), whose events go to `sink`. Once the
/// capture keeps only the tail, reads go straight into its ring (no copy of
/// the bytes in user space besides the protocol's scan).
async fn read_chunks<R: AsyncRead + Unpin>(
    mut r: R,
    stop: &CancellationToken,
    cap: &mut CaptureBuffer,
    mut feed: impl FnMut(&[u8]) -> Vec<ChildEvent>,
    sink: &EventSink,
) {
    let mut buf = vec![0u8; READ_BUF_MIN];
    loop {
        let events = if let Some(slot) = cap.spare(READ_BUF_MIN, READ_BUF_MAX) {
            let n = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = r.read(&mut *slot) => match r {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "read from child failed");
                        break;
                    }
                },
            };
            let events = feed(&slot[..n]);
            cap.commit(n);
            events
        } else {
            let n = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = r.read(&mut buf) => match r {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "read from child failed");
                        break;
                    }
                },
            };
            cap.push(&buf[..n]);
            let events = feed(&buf[..n]);
            if n == buf.len() && buf.len() < READ_BUF_MAX {
                buf.resize(buf.len() * 2, 0);
            }
            events
        };
        for ev in events {
            sink.send(ev).await;
        }
    }
}

async fn read_stdout(
    r: tokio::process::ChildStdout,
    max_output: usize,
    mut proto: StdoutProtocol,
    sink: EventSink,
    stop: CancellationToken,
) -> StdoutDone {
    let mut cap = CaptureBuffer::new(max_output);
    read_chunks(
        r,
        &stop,
        &mut cap,
        |chunk| {
            let mut evs = Vec::new();
            proto.feed(chunk, &mut |e| evs.push(e));
            evs
        },
        &sink,
    )
    .await;
    let mut evs = Vec::new();
    let summary = proto.finish(&mut |e| evs.push(e));
    for ev in evs {
        sink.send(ev).await;
    }
    StdoutDone {
        captured: cap.finish(),
        summary,
    }
}

async fn read_stderr(
    r: tokio::process::ChildStderr,
    max_output: usize,
    mut proto: StderrProtocol,
    sink: EventSink,
    stop: CancellationToken,
) -> Captured {
    let mut cap = CaptureBuffer::new(max_output);
    read_chunks(
        r,
        &stop,
        &mut cap,
        |chunk| {
            let mut evs = Vec::new();
            proto.feed(chunk, &mut |e| evs.push(e));
            evs
        },
        &sink,
    )
    .await;
    let mut evs = Vec::new();
    proto.finish(&mut |e| evs.push(e));
    for ev in evs {
        sink.send(ev).await;
    }
    cap.finish()
}

fn lock_tracker(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// See [`ProcessControl::kill_descendants`]: SIGKILLs every process of the
/// job the tracker finds but the leader, reaps them, and restarts the job's
/// window (see `registry::restart_window`).
fn sweep(leader: Pid, tracker: &mut Tracker) -> usize {
    // Taken before the search: whatever the worker forks from here on
    // starts at or after it.
    let since = sys::boot_ticks_now();
    let found: Vec<_> = tracker
        .discover_after_task()
        .into_iter()
        .filter(|p| p.pid != leader && !tracker.is_kept(p))
        .collect();
    for p in &found {
        if let Err(e) = sys::signal_proc(*p, Signal::KILL) {
            tracing::debug!(error = %e, pid = p.pid.raw(), "SIGKILL failed");
        }
    }
    if !found.is_empty() {
        tracing::debug!(killed = found.len(), "killed what the last task left");
        tracker.reap();
    }
    registry::restart_window(leader, since);
    found.len()
}

/// Waits for the leader to exit (pidfd readable) and reaps it with wait4.
/// The reap happens under the tracker's lock and marks the leader reaped
/// there, so a sweep (which may run on another task) never walks from the
/// leader's pid once it is free for reuse.
async fn wait_leader(
    pid: Pid,
    pidfd: Option<AsyncFd<OwnedFd>>,
    tracker: Arc<Mutex<Tracker>>,
) -> io::Result<sys::Reaped> {
    loop {
        {
            let mut t = lock_tracker(&tracker);
            let r = sys::wait4_nohang(pid);
            if !matches!(r, Ok(None)) {
                t.set_leader_reaped();
            }
            if let Some(r) = r? {
                return Ok(r);
            }
        }
        match &pidfd {
            Some(fd) => {
                let mut g = fd.readable().await?;
                g.clear_ready();
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The supervision state of one job.
struct Supervised {
    pid: Pid,
    key: JobKey,
    label: Option<String>,
    started: Instant,
    started_at: SystemTime,
    timeout: Option<Duration>,
    kill_grace: Duration,
    control: ProcessControl,
    pidfd: Option<AsyncFd<OwnedFd>>,
    tracker: Arc<Mutex<Tracker>>,
    /// What the control's sweeps search, put in its slot by `spawn`; taken
    /// out when the job ends.
    sweep: Arc<SweepTarget>,
    stdout_task: JoinHandle<StdoutDone>,
    stderr_task: JoinHandle<Captured>,
    ipc_task: Option<JoinHandle<()>>,
    readers_stop: CancellationToken,
    sandbox: Option<crate::spec::SandboxAttachment>,
    masker: Arc<Masker>,
    dropped: Arc<AtomicU64>,
    results: Arc<ResultSlot>,
    tmpdir: Option<PathBuf>,
    /// The resource monitor and its interval.
    monitor: Option<(Duration, Monitor)>,
    /// In a PID namespace of its own, `pid` is the job's init: the pipe
    /// through which it passes on how the job's main process ended.
    init_status: Option<OwnedFd>,
}

/// Where the leader is.
enum Leader {
    Running,
    Reaped { r: sys::Reaped, at: Instant },
    Lost,
}

impl Supervised {
    async fn run(mut self) -> Outcome {
        let span =
            tracing::debug_span!("job", key = %self.key, pid = self.pid.raw(), label = ?self.label);
        let _e = span.enter();
        let pidfd = self.pidfd.take();
        let mut leader_fut = pin!(wait_leader(self.pid, pidfd, self.tracker.clone()));
        let mut leader = Leader::Running;
        let deadline = self
            .timeout
            .map(|t| tokio::time::Instant::from_std(self.started + t));
        let control = self.control.clone();
        // The sweeps were opened by `spawn`.
        let target = self.sweep.clone();
        let mut ticker = self.monitor.as_ref().map(|(every, _)| {
            let first = tokio::time::Instant::from_std(self.started) + *every;
            let mut i = tokio::time::interval_at(first, *every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });

        let stop: Option<(EndReason, Duration)> = loop {
            tokio::select! {
                r = leader_fut.as_mut() => {
                    leader = self.on_leader(r);
                    break None;
                }
                _ = sleep_until_opt(deadline) => break Some((EndReason::Timeout, self.kill_grace)),
                req = control.stopped() => {
                    break Some((req.reason.into(), req.grace.unwrap_or(self.kill_grace)));
                }
                _ = tick_opt(ticker.as_mut()) => {
                    if self.sample() {
                        break Some((EndReason::MemoryLimit, Duration::ZERO));
                    }
                }
            }
        };
        // The job ends: later sweeps answer 0 (the end kills what is left).
        {
            let mut slot = control.sweep_slot();
            if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, &target)) {
                *slot = None;
            }
        }

        let mut leaked = 0u32;
        let reason_override = match stop {
            Some((reason, grace)) => {
                tracing::debug!(%reason, ?grace, "terminating job");
                // A memory breach is killed at once: more time only means
                // more memory.
                let term = reason != EndReason::MemoryLimit;
                self.terminate(&mut leader_fut, &mut leader, grace, term)
                    .await;
                Some(reason)
            }
            None => {
                let left = self.tracker().maybe_leftovers();
                if left {
                    let found = self.tracker().discover(true, Scope::Ending);
                    leaked = found.len() as u32;
                    if leaked > 0 {
                        tracing::debug!(leaked, "killing leftovers after the leader exited");
                    }
                    self.terminate(&mut leader_fut, &mut leader, self.kill_grace, true)
                        .await;
                }
                None
            }
        };
        {
            let t = self.tracker();
            if t.may_have_orphans() {
                t.reap();
            }
        }
        self.finish(leader, reason_override, leaked).await
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        lock_tracker(&self.tracker)
    }

    fn on_leader(&mut self, r: io::Result<sys::Reaped>) -> Leader {
        registry::leader_done(self.pid);
        self.tracker().set_leader_reaped();
        match r {
            Ok(r) => Leader::Reaped {
                r,
                at: Instant::now(),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for the child");
                Leader::Lost
            }
        }
    }

    /// One resource monitor tick. `true`: the fallback memory limit is
    /// exceeded.
    fn sample(&mut self) -> bool {
        let Some((_, m)) = self.monitor.as_mut() else {
            return false;
        };
        let tracker = &self.tracker;
        let from_proc =
            || monitor::read_procs(&lock_tracker(tracker).discover(false, Scope::Running));
        let reading = match self.sandbox.as_ref().and_then(|s| s.prepared.cgroup()) {
            Some(cg) => monitor::read_cgroup(cg, from_proc),
            None => from_proc(),
        };
        let breach = m.record(Instant::now(), reading);
        if breach {
            tracing::debug!(rss = reading.rss_bytes, "memory limit exceeded");
        }
        breach
    }

    /// TERM -> grace -> KILL -> bounded wait until nothing of the job is alive.
    /// `term == false`: straight to KILL.
    async fn terminate<F>(
        &mut self,
        leader_fut: &mut Pin<&mut F>,
        leader: &mut Leader,
        grace: Duration,
        term: bool,
    ) where
        F: Future<Output = io::Result<sys::Reaped>>,
    {
        if term {
            self.signal(Signal::TERM);
            let grace_end = Instant::now() + grace;
            loop {
                self.poll_leader(leader_fut, leader, POLL).await;
                self.tracker().reap();
                if !matches!(leader, Leader::Running) && self.all_gone() {
                    return;
                }
                if Instant::now() >= grace_end {
                    break;
                }
            }
        }
        let kill_end = Instant::now() + KILL_WAIT;
        loop {
            self.signal(Signal::KILL);
            if let Some(sb) = &self.sandbox
                && sb.prepared.cgroup().is_some()
            {
                let prepared = sb.prepared.clone();
                let _ =
                    tokio::task::spawn_blocking(move || prepared.cgroup().map(|cg| cg.kill_all()))
                        .await;
            }
            self.poll_leader(leader_fut, leader, POLL).await;
            self.tracker().reap();
            if !matches!(leader, Leader::Running) && self.all_gone() {
                return;
            }
            if Instant::now() >= kill_end {
                break;
            }
        }
        tracing::warn!("processes of the job survived SIGKILL for {KILL_WAIT:?}");
        if matches!(leader, Leader::Running) {
            // A SIGKILLed leader always dies; wait for it without a bound.
            let r = leader_fut.as_mut().await;
            *leader = self.on_leader(r);
        }
    }

    async fn poll_leader<F>(&mut self, fut: &mut Pin<&mut F>, leader: &mut Leader, wait: Duration)
    where
        F: Future<Output = io::Result<sys::Reaped>>,
    {
        if matches!(leader, Leader::Running) {
            if let Ok(r) = tokio::time::timeout(wait, fut.as_mut()).await {
                *leader = self.on_leader(r);
            }
        } else {
            tokio::time::sleep(wait).await;
        }
    }

    fn signal(&mut self, sig: Signal) {
        let cg = self.sandbox.as_ref().and_then(|s| s.prepared.cgroup());
        let f = cg.map(|cg| {
            move |sig: Signal| {
                if let Err(e) = cg.signal_all(sig.as_raw()) {
                    tracing::debug!(error = %e, "cgroup signal failed");
                }
            }
        });
        let f_ref = f.as_ref().map(|f| f as &dyn Fn(Signal));
        self.tracker().signal_all(sig, f_ref, true);
    }

    fn all_gone(&mut self) -> bool {
        if let Some(cg) = self.sandbox.as_ref().and_then(|s| s.prepared.cgroup())
            && cg.pids().is_ok_and(|p| !p.is_empty())
        {
            return false;
        }
        self.tracker().discover(true, Scope::Ending).is_empty()
    }

    async fn finish(mut self, leader: Leader, stop: Option<EndReason>, leaked: u32) -> Outcome {
        // The tree is gone: the pipes reach EOF unless something outside the
        // job holds them; then the readers are stopped after DRAIN_WAIT.
        let drain = async {
            let out = (&mut self.stdout_task).await;
            let err = (&mut self.stderr_task).await;
            (out, err)
        };
        let (out, err) = match tokio::time::timeout(DRAIN_WAIT, drain).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    "a pipe of the job is held open by an unknown process; stopped reading"
                );
                self.readers_stop.cancel();
                ((&mut self.stdout_task).await, (&mut self.stderr_task).await)
            }
        };
        if let Some(t) = self.ipc_task.take() {
            let abort = t.abort_handle();
            if tokio::time::timeout(DRAIN_WAIT, t).await.is_err() {
                tracing::debug!("ipc forwarder did not finish");
                abort.abort();
            }
        }
        let (mut stdout, summary) = match out {
            Ok(d) => (d.captured, d.summary),
            Err(_) => (Captured::default(), StdoutSummary::default()),
        };
        let mut stderr = err.unwrap_or_default();

        let (exit, reaped_at, cpu, maxrss) = match leader {
            Leader::Reaped { r, at } => {
                // Under an init, the job's own wait status when the init
                // passed it on (not when it was killed itself).
                let status = self
                    .init_status
                    .as_ref()
                    .and_then(|fd| clone::read_init_status(fd.as_raw_fd()))
                    .unwrap_or(r.status);
                (ExitKind::from_status(status), at, r.cpu, Some(r.maxrss))
            }
            Leader::Running | Leader::Lost => (
                ExitKind::Signal(libc::SIGKILL),
                Instant::now(),
                Duration::ZERO,
                None,
            ),
        };

        let mut peak_rss = maxrss;
        let mut cpu = cpu;
        let mut breach = None;
        if let Some(sb) = &self.sandbox
            && let Some(cg) = sb.prepared.cgroup()
        {
            let stats = cg.stats();
            if let Some(p) = stats.memory_peak {
                peak_rss = Some(p);
            }
            if let Some(ns) = stats.cpu_usage_ns {
                cpu = cpu.max(Duration::from_nanos(ns));
            }
            if stop.is_none() && !exit.success() {
                breach = stats.breach(&sb.policy, exit.signal());
            }
        }
        let samples = match self.monitor.take() {
            Some((_, m)) => {
                if let Some(p) = m.peak() {
                    peak_rss = Some(peak_rss.map_or(p, |q| q.max(p)));
                }
                m.into_samples()
            }
            None => Vec::new(),
        };
        let reason = match stop {
            Some(r) => r,
            None => match breach {
                Some(tsbridge_sandbox::LimitBreach::Memory) => EndReason::MemoryLimit,
                Some(tsbridge_sandbox::LimitBreach::Pids) => EndReason::PidsLimit,
                Some(tsbridge_sandbox::LimitBreach::Cpu) => EndReason::CpuLimit,
                None => match exit {
                    ExitKind::Signal(libc::SIGXCPU) => EndReason::CpuLimit,
                    ExitKind::Signal(_) => EndReason::Signaled,
                    ExitKind::Code(_) => EndReason::Exited,
                },
            },
        };

        let result = match self.results.take() {
            Some(v) => Some(v),
            None => {
                let v = ResultExtractor::new().resolve(
                    &summary,
                    exit.success() && stop.is_none(),
                    &stdout,
                    &self.masker,
                );
                (!v.is_null()).then_some(v)
            }
        };
        mask_captured(&self.masker, &mut stdout);
        mask_captured(&self.masker, &mut stderr);

        registry::remove_group(self.pid);
        if let Some(d) = self.tmpdir.take() {
            supervisor::remove_private_tmp(&d);
        }

        Outcome {
            pid: self.pid.raw() as u32,
            key: self.key.clone(),
            exit,
            reason,
            started_at: self.started_at,
            wall: reaped_at.saturating_duration_since(self.started),
            cpu,
            peak_rss,
            stdout,
            stderr,
            result,
            events_dropped: self.dropped.load(Ordering::Relaxed),
            leaked_descendants_killed: leaked,
            samples,
        }
    }
}

/// The next tick of the monitor's interval; never, without a monitor.
async fn tick_opt(ticker: Option<&mut tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Replaces a capture's bytes by their masked text (lossy UTF-8) when the
/// masker has secrets; otherwise keeps the bytes verbatim.
fn mask_captured(masker: &Masker, c: &mut Captured) {
    if masker.is_empty() {
        return;
    }
    let cut = c.truncated();
    let head = String::from_utf8_lossy(&c.head);
    let masked_head = masker.mask_cut(&head, false, cut).into_owned();
    let tail = String::from_utf8_lossy(&c.tail);
    let masked_tail = masker.mask_cut(&tail, cut, false).into_owned();
    c.head = masked_head.into_bytes();
    c.tail = masked_tail.into_bytes();
}
