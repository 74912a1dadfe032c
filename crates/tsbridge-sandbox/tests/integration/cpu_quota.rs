//! cpu = 0.5: two busy processes for ~2 s get about half a core in total.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use tsbridge_sandbox::SandboxPolicy;

#[test]
fn busy_loop_is_throttled_to_the_quota() {
    let host = Host::new("cpu");
    if skip_without_cgroups(&host) {
        return;
    }
    let caps = host.sandbox.capabilities();
    if !caps.cpu || !caps.cpu_usage {
        eprintln!("skipped: no cpu controller or no usage counter");
        return;
    }
    let policy = SandboxPolicy {
        cpu: Some(0.5),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("busy", &policy);
    let mut cmd = base_command(python());
    // Two busy processes: unthrottled they would use up to 2 cores.
    cmd.arg(fixture("busy.py")).arg("2.0").arg("2");
    sandboxed(&mut cmd, &prepared);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let job = JobGuard(prepared.into_cgroup());
    let status = wait_status(&mut child, Duration::from_secs(60));
    let wall = start.elapsed().as_secs_f64();
    assert!(status.success());
    let stats = job.cg().stats();
    let used = stats.cpu_usage_ns.expect("cpu usage") as f64 / 1e9;
    let share = used / wall;
    // The quota is a ceiling the kernel enforces: two busy processes that
    // could use two cores never get more than half of one (plus one 100 ms
    // period of slack). Load on the machine can only lower the share.
    assert!(
        used <= 0.5 * wall + 0.1,
        "cpu share {share:.2} ({used:.2}s in {wall:.2}s), {stats:?}"
    );
    assert!(used > 0.0, "{stats:?}");
    // Where the job got near its quota the kernel throttled it (on a busy
    // machine the scheduler alone may keep it below).
    if share >= 0.4 {
        assert!(stats.cpu_nr_throttled.unwrap_or(0) > 0, "{stats:?}");
    }
    job.remove();
}
