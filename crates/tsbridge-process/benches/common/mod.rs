//! What the spawn benches share: a runtime, the jobs' environment, and
//! the two spawns of `/bin/true` they compare.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tsbridge_process::{JobSpec, run};

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

pub fn env() -> std::collections::BTreeMap<String, String> {
    [("PATH".to_string(), "/usr/bin:/bin".to_string())].into()
}

/// Spawn + wait of `/bin/true` through the engine.
pub fn true_engine() {
    let spec = JobSpec::builder("/bin/true")
        .envs(env())
        .build()
        .expect("spec");
    let o = rt().block_on(run(spec)).expect("runs");
    assert!(o.exit.success());
}

/// Spawn + wait of `/bin/true` through std with a pre_exec hook (the
/// engine's PR_SET_PDEATHSIG) and its own process group: std then forks
/// instead of using posix_spawn (vfork).
pub fn true_std_fork_pre_exec() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("/bin/true");
    cmd.env_clear()
        .envs(env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl with integer arguments is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let s = cmd.status().expect("runs");
    assert!(s.success());
}
