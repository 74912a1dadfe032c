//! The resource monitor with real processes and no sandbox: a job that grows
//! past its fallback memory limit is killed (reason MemoryLimit, nothing of it
//! left, the peak reported); a busy job gets CPU samples; the same busy job
//! without a limit exits normally.

use crate::common;

use std::time::Duration;

use tsbridge_process::error::ResourceLimit;
use tsbridge_process::{ErrorKind, JobError, JobSpec, run};
use tsbridge_proto::EndReason;

const MIB: u64 = 1 << 20;

/// Starts a sleeping child (so there is a tree to kill), then allocates and
/// touches 10 MiB every ~66 ms up to 300 MiB, then idles.
const GROW: &str = "require('child_process').spawn('/bin/sleep', ['60'], { stdio: 'ignore' }); \
     const b = []; const t = setInterval(() => { \
     b.push(Buffer.alloc(10 * 1024 * 1024, 1)); \
     if (b.length >= 30) { clearInterval(t); setTimeout(() => {}, 60000); } \
     }, 66);";

/// Spins for 1.5 s of wall time.
/// Burns 1.5 s of CPU time (not of wall time: on a loaded machine it simply
/// takes longer), then exits.
const BUSY: &str = "let x = 0; const cpu = () => { const u = process.cpuUsage(); return u.user + u.system; }; \
     while (cpu() < 1.5e6) { for (let i = 0; i < 1e5; i++) x++; } console.log(x > 0);";

fn node_eval(script: &str) -> tsbridge_process::JobSpecBuilder {
    JobSpec::builder(common::node())
        .arg("-e")
        .arg(script)
        .envs(common::base_env())
        // Generous: only a safety net on a loaded machine.
        .timeout(Some(Duration::from_secs(120)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_fallback_limit_kills_the_job() {
    let spec = node_eval(GROW)
        .memory_limit(100 * MIB)
        .monitor(Duration::from_millis(200))
        .build()
        .unwrap();
    let key = spec.key().to_string();
    let o = run(spec).await.unwrap();
    assert_eq!(o.reason, EndReason::MemoryLimit, "{o:?}");
    assert!(
        o.peak_rss.is_some_and(|p| p >= 100 * MIB),
        "peak {:?}",
        o.peak_rss
    );
    assert!(
        o.samples.iter().any(|s| s.rss_bytes > 100 * MIB),
        "{:?}",
        o.samples
    );
    // The breach maps to a ResourceLimitError naming memory.
    let err = JobError::from_outcome(&o).expect("an error");
    assert_eq!(err.kind(), ErrorKind::ResourceLimit);
    assert!(
        matches!(
            err,
            JobError::ResourceLimit {
                limit: ResourceLimit::Memory
            }
        ),
        "{err}"
    );
    // Nothing of the job is left.
    assert!(!common::alive(o.pid as i32));
    assert!(
        common::marked(&key).is_empty(),
        "{:?}",
        common::marked(&key)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_job_gets_cpu_samples() {
    let spec = node_eval(BUSY)
        .monitor(Duration::from_millis(200))
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert_eq!(o.reason, EndReason::Exited, "{o:?}");
    assert!(!o.samples.is_empty(), "{o:?}");
    assert!(o.samples.iter().all(|s| s.rss_bytes > 0), "{:?}", o.samples);
    // The samples account for the CPU the job burnt: their integral covers
    // the 1.5 s it spent, but for the stretch after the last sample (one
    // interval, a few on a loaded machine). Load only stretches wall time.
    let mut prev_ms = 0;
    let cpu_seen: f64 = o
        .samples
        .iter()
        .map(|s| {
            let dt = (s.at_ms - prev_ms) as f64 / 1000.0;
            prev_ms = s.at_ms;
            s.cpu_percent / 100.0 * dt
        })
        .sum();
    assert!(
        cpu_seen > 0.75,
        "the samples saw {cpu_seen:.2} s of CPU: {:?}",
        o.samples
    );
    assert!(
        o.samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms),
        "{:?}",
        o.samples
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_job_without_limit_exits_normally() {
    let spec = node_eval(BUSY).build().unwrap();
    let o = run(spec).await.unwrap();
    assert!(o.success(), "{o:?}");
    assert_eq!(o.reason, EndReason::Exited);
    assert_eq!(o.stdout.head, b"true\n");
}
