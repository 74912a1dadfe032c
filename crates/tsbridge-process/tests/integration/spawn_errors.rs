//! A missing program is a SpawnError with kind NotFound (not retryable); a
//! missing cwd is a ValidationError before anything runs.

use crate::common;

use tsbridge_process::error::SpawnStage;
use tsbridge_process::{JobSpec, ValidationError, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_program_is_not_found() {
    let spec = JobSpec::builder("/no/such/program")
        .envs(common::base_env())
        .build()
        .unwrap();
    let e = run(spec).await.unwrap_err();
    assert_eq!(e.kind, std::io::ErrorKind::NotFound);
    assert_eq!(e.stage, SpawnStage::Exec);
    assert_eq!(e.errno, Some(libc::ENOENT));
    assert!(!e.is_retryable());
    assert_eq!(e.program, std::path::PathBuf::from("/no/such/program"));

    // A bare name is looked up in the spec's PATH, not tsbridge's.
    let spec = JobSpec::builder("node")
        .env("PATH", "/nonexistent")
        .build()
        .unwrap();
    let e = run(spec).await.unwrap_err();
    assert_eq!(e.kind, std::io::ErrorKind::NotFound);
}

#[test]
fn missing_cwd_is_a_validation_error() {
    let e = JobSpec::builder("/bin/true")
        .cwd("/no/such/dir")
        .build()
        .unwrap_err();
    assert!(matches!(e, ValidationError::CwdMissing { .. }));
}
