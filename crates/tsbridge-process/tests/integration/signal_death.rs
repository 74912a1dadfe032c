//! A child killed by a signal reports that signal, never exit code 0.

use crate::common;

use tsbridge_process::{ExitKind, JobError, JobSpec, run};
use tsbridge_proto::EndReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segv_is_reported_as_signal() {
    let spec = JobSpec::builder("/bin/sh")
        .arg(common::fixture("die-by-signal.sh"))
        .envs(common::base_env())
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGSEGV));
    assert_eq!(o.exit.code(), None);
    assert_eq!(o.reason, EndReason::Signaled);
    assert!(!o.success());
    let e = JobError::from_outcome(&o).expect("a signal death is an error");
    assert_eq!(e.kind(), tsbridge_process::ErrorKind::Signal);
    assert!(
        matches!(e, JobError::Execution { signal: Some(s), exit_code: None, ref stderr_tail } if s == libc::SIGSEGV && stderr_tail.contains("about to die"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigxcpu_is_a_cpu_limit() {
    let spec = JobSpec::builder("/bin/sh")
        .arg(common::fixture("die-by-signal.sh"))
        .arg("XCPU")
        .envs(common::base_env())
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert_eq!(o.exit, ExitKind::Signal(libc::SIGXCPU));
    assert_eq!(o.reason, EndReason::CpuLimit);
}
