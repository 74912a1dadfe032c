//! The startup sweep of private TMPDIRs (`sweep_stale_tmp`): it removes
//! those of a tsbridge that is gone (owner tag naming a dead pid, or a pid
//! now another process: other start time), with their contents and without
//! following a symlink out of them; it keeps a live owner's and any other
//! `tsbridge-*` name.

use std::os::unix::fs::symlink;

#[test]
fn the_startup_sweep_removes_only_the_tmpdirs_of_gone_owners() {
    let base = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep.txt"), "keep").unwrap();

    // Our pid with another start time: a reused pid, its owner is gone.
    let gone = base
        .path()
        .join(format!("tsbridge-{}.1-0192abcd-1", std::process::id()));
    std::fs::create_dir_all(gone.join("a/b")).unwrap();
    std::fs::write(gone.join("a/b/data.txt"), "x").unwrap();
    symlink(outside.path(), gone.join("a/escape")).unwrap();
    symlink(outside.path().join("keep.txt"), gone.join("escape-file")).unwrap();

    let live = tsbridge_process::make_private_tmp(base.path(), "live-1").unwrap();
    let others = [
        "tsbridge-pool-123-abcdef",
        "tsbridge-abc-1",
        "tsbridge-1.x-2",
    ];
    for o in others {
        std::fs::create_dir(base.path().join(o)).unwrap();
    }

    assert_eq!(tsbridge_process::sweep_stale_tmp(base.path()), 1);
    assert!(!gone.exists());
    assert!(live.is_dir(), "a live owner's TMPDIR is kept");
    for o in others {
        assert!(base.path().join(o).is_dir(), "{o} is kept");
    }
    assert_eq!(
        std::fs::read_to_string(outside.path().join("keep.txt")).unwrap(),
        "keep"
    );
    assert_eq!(tsbridge_process::sweep_stale_tmp(base.path()), 0);
}

/// Flat names of builds before the owner tag: a generated key's
/// (`tsbridge-j<pid>-<n>-<8 hex>`) goes when no process has its pid; one
/// whose pid is in use stays, and so do a job id's (`tsbridge-<id>-<n>`,
/// no owner in it) and anything not exactly of that form.
#[test]
fn the_startup_sweep_removes_flat_generated_names_of_gone_pids() {
    let base = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = child.id();
    child.wait().unwrap();
    let gone = base.path().join(format!("tsbridge-j{gone_pid}-0-5653d55c"));
    std::fs::create_dir_all(gone.join("sub")).unwrap();
    std::fs::write(gone.join("sub/data.txt"), "x").unwrap();
    let me = std::process::id();
    let kept = [
        format!("tsbridge-j{me}-3-b1a75dd0"),
        "tsbridge-01a21c73e61175bea53153475af3c33a-1".to_owned(),
        format!("tsbridge-j{gone_pid}-0-5653d55"),
        format!("tsbridge-j{gone_pid}-0-5653D55C"),
        format!("tsbridge-j{gone_pid}-0-5653d55c-x"),
        format!("tsbridge-j{gone_pid}-x-5653d55c"),
    ];
    for k in &kept {
        std::fs::create_dir(base.path().join(k)).unwrap();
    }

    assert_eq!(tsbridge_process::sweep_stale_tmp(base.path()), 1);
    assert!(!gone.exists());
    for k in &kept {
        assert!(base.path().join(k).is_dir(), "{k} is kept");
    }
}

/// As root, a gone owner's TMPDIR goes whoever owns it: the TMPDIR of a
/// job with its own user is that user's (`make_private_tmp_for`), and a
/// crash must not leave it behind. Before, only root-owned ones went.
#[test]
fn as_root_the_startup_sweep_removes_tmpdirs_given_to_a_job_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (to give a TMPDIR to another user)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let base = tempfile::tempdir().unwrap();
    let live =
        tsbridge_process::make_private_tmp_for(base.path(), "user-1", Some((1500, 1501))).unwrap();
    let m = std::fs::metadata(&live).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1500, 1501, 0o700));
    // Made again (the sandbox made it first): accepted, still the user's.
    assert_eq!(
        tsbridge_process::make_private_tmp_for(base.path(), "user-1", Some((1500, 1501))).unwrap(),
        live
    );
    // Not for another user, nor for tsbridge itself.
    assert!(
        tsbridge_process::make_private_tmp_for(base.path(), "user-1", Some((1600, 1600))).is_err()
    );
    assert!(tsbridge_process::make_private_tmp(base.path(), "user-1").is_err());

    let gone = base
        .path()
        .join(format!("tsbridge-{}.1-0192abcd-1", std::process::id()));
    std::fs::create_dir_all(gone.join("sub")).unwrap();
    std::fs::write(gone.join("sub/data.txt"), "x").unwrap();
    std::os::unix::fs::chown(&gone, Some(1500), Some(1500)).unwrap();
    std::os::unix::fs::chown(gone.join("sub"), Some(1500), Some(1500)).unwrap();
    assert_eq!(tsbridge_process::sweep_stale_tmp(base.path()), 1);
    assert!(!gone.exists());
    assert!(live.is_dir(), "a live owner's TMPDIR is kept");
}
