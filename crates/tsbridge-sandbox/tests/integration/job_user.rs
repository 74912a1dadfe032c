//! Hostile job with its own user (SPEC §5, issue #5): a root tsbridge runs
//! a job as uid/gid 65534-like ids. The job reports exactly those ids, no
//! supplementary group, every capability set empty (bounding set too), and
//! the parent-death signal still set (the kernel clears it on a credential
//! change: the child sets it again); it cannot read a 0600 root-owned file
//! (as the store) nor write a 0700 root-owned folder (as another job's
//! TMPDIR), and writes a folder given to it. Before the switch existed the
//! job ran as root: it read and wrote both.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use tsbridge_sandbox::{JobUser, SandboxPolicy};

#[test]
fn a_job_with_a_user_runs_as_it_with_no_capabilities_and_no_root_files() {
    if !is_root() {
        eprintln!("SKIP: needs root (to switch to another user, and to own the files)");
        return;
    }
    let host = Host::new("jobuser");
    let user = JobUser {
        uid: 65_533,
        gid: 65_532,
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path().join("store.db");
    std::fs::write(&secret, "secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let foreign = dir.path().join("other-job-tmp");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(user.uid), Some(user.gid)).unwrap();

    let policy = SandboxPolicy {
        user: Some(user),
        parent_death_signal: Some(libc::SIGTERM),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("jobuser", &policy);
    let mut cmd = base_command(python());
    cmd.arg(fixture("job_user.py"))
        .arg(&secret)
        .arg(&foreign)
        .arg(&own);
    let out = run(cmd, Some(&prepared));
    drop(JobGuard(prepared.into_cgroup()));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = stdout(&out);
    let ids = format!("{0},{0},{0}", user.uid);
    for want in [
        format!("uid={ids}"),
        format!("gid={0},{0},{0}", user.gid),
        "groups=\n".to_owned(),
        "pdeathsig=15".to_owned(),
        "secret=EACCES".to_owned(),
        "foreign_write=EACCES".to_owned(),
        "own_write=ok".to_owned(),
    ] {
        assert!(out.contains(&want), "{want}: {out}");
    }
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{set}=0000000000000000")),
            "{set}: {out}"
        );
    }
}
