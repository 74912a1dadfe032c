//! Shared helpers of the real-process tests: a host sandbox with a test-unique
//! parent cgroup (removed on drop, even when the test fails), a job guard that
//! kills and removes its cgroup on drop, spawning with the sandbox applied in
//! `pre_exec`, and polling helpers (no fixed sleeps).
#![allow(dead_code, unreachable_pub)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tsbridge_sandbox::{JobCgroup, PreparedSandbox, Sandbox, SandboxConfig, SandboxPolicy};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/sandbox")
        .join(name)
}

/// The system python (not a pyenv shim, which is a bash script elsewhere).
pub fn python() -> PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("python3")
}

/// A `Sandbox` whose parent cgroup is unique to this test and removed on drop.
pub struct Host {
    pub sandbox: Sandbox,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Host {
    pub fn new(test: &str) -> Host {
        Self::with(test, |_| {})
    }

    pub fn with(test: &str, f: impl FnOnce(&mut SandboxConfig)) -> Host {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut config = SandboxConfig {
            cgroup_parent_name: format!("tsbridge-test-{}-{test}-{n}", std::process::id()),
            ..SandboxConfig::default()
        };
        f(&mut config);
        let sandbox = Sandbox::new(config).expect("sandbox");
        Host { sandbox }
    }

    /// Prepare a job, returning a guard.
    pub fn prepare(&self, key: &str, policy: &SandboxPolicy) -> PreparedSandbox {
        self.sandbox.prepare(key, policy).expect("prepare")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.sandbox.sweep_stale();
        if let Err(e) = self.sandbox.remove_parent() {
            eprintln!("could not remove test parent cgroup: {e}");
        }
    }
}

/// Kills and removes the job cgroup on drop.
pub struct JobGuard(pub Option<JobCgroup>);

impl JobGuard {
    pub fn cg(&self) -> &JobCgroup {
        self.0.as_ref().expect("job cgroup")
    }

    pub fn remove(mut self) {
        if let Some(cg) = self.0.take() {
            cg.kill_all().expect("kill_all");
            cg.remove().expect("remove");
        }
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let _ = cg.kill_all();
            let _ = cg.remove();
        }
    }
}

/// Apply the prepared sandbox in the child of `cmd`.
pub fn sandboxed(cmd: &mut Command, prepared: &PreparedSandbox) {
    let hook = prepared.child_hook();
    // SAFETY: the hook only makes raw syscalls on data prepared before fork
    // (async-signal-safe), as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(move || hook.apply());
    }
}

pub fn base_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null());
    cmd
}

pub fn run(mut cmd: Command, prepared: Option<&PreparedSandbox>) -> Output {
    if let Some(p) = prepared {
        sandboxed(&mut cmd, p);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "spawn failed: {e} ({:?})",
                prepared.and_then(|p| p.take_child_failure())
            )
        });
    wait_output(child, Duration::from_secs(60))
}

/// Wait for the child with a deadline (kills it on timeout and panics).
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "child timed out; stdout={} stderr={}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

pub fn wait_status(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("child timed out");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll `cond` until it holds; panics with `what` after `timeout`.
pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Process state letter from /proc/<pid>/stat (None = no such process).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.chars().next()
}

/// A process is alive if it exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Skip (return true) unless this host can run the real-cgroup tests.
/// The host's Landlock ABI, 0 without Landlock.
pub fn landlock_abi(host: &Host) -> u32 {
    match host.sandbox.capabilities().landlock {
        tsbridge_sandbox::LandlockSupport::Full { abi }
        | tsbridge_sandbox::LandlockSupport::Partial { abi } => abi,
        tsbridge_sandbox::LandlockSupport::None => 0,
    }
}

pub fn skip_without_cgroups(host: &Host) -> bool {
    let caps = host.sandbox.capabilities();
    if !is_root() || caps.cgroups == tsbridge_sandbox::CgroupVersion::None {
        eprintln!("skipped: needs root and cgroups ({caps:?})");
        return true;
    }
    false
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
