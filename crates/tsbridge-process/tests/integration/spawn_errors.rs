//! A missing program is a SpawnError with kind NotFound (not retryable), a
//! file that is not a program one with ENOEXEC (no shell); a missing cwd is
//! a ValidationError before anything runs.

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

/// An executable file that is not a program (no `#!`, not ELF) is ENOEXEC:
/// no shell runs it (std's spawn, through glibc's execvp, handed it to
/// /bin/sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_a_shebang_is_not_run_by_a_shell() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job");
    std::fs::write(&script, "exit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for program in [script.clone(), "job".into()] {
        let spec = JobSpec::builder(&program)
            .env("PATH", dir.path().to_str().unwrap())
            .build()
            .unwrap();
        let e = run(spec).await.unwrap_err();
        assert_eq!(e.stage, SpawnStage::Exec, "{program:?}");
        assert_eq!(e.errno, Some(libc::ENOEXEC), "{program:?}");
    }
}

#[test]
fn missing_cwd_is_a_validation_error() {
    let e = JobSpec::builder("/bin/true")
        .cwd("/no/such/dir")
        .build()
        .unwrap_err();
    assert!(matches!(e, ValidationError::CwdMissing { .. }));
}
