//! Hostile job (SPEC §5): a root job with no file-system lists goes after
//! what uid 0 owns even without capabilities: `/proc/sys/kernel/core_pattern`
//! (a `|prog` there runs prog as full root on the next crash), a sysfs
//! file, a raw block device. A Landlock domain (ABI 2+) keeps `/proc` and
//! `/sys` read-only and `/dev`'s block devices closed to it, while its own
//! writes (TMPDIR, `/dev/null`) and reads of `/proc` work as before. Before,
//! all three opened. The fixture `host_files.py` makes the attempts.

use crate::common;

use common::*;
use tsbridge_sandbox::SandboxPolicy;

#[test]
fn a_root_job_without_fs_policy_cannot_open_proc_sys_sysfs_or_block_devices() {
    let host = Host::new("hostfiles");
    let abi = landlock_abi(&host);
    if !is_root() || abi < 2 || !host.sandbox.capabilities().no_new_privs {
        eprintln!("skipped: needs root (which owns those files) and Landlock ABI 2+ ({abi})");
        return;
    }
    // The second job gets the ruleset the first one built (the sandbox
    // reuses it while `/` and `/dev` are unchanged): it must hold the same.
    for key in ["hostfiles-built", "hostfiles-reused"] {
        let tmp = tempfile::tempdir().unwrap();
        let prepared = host.prepare(key, &SandboxPolicy::default());
        let mut cmd = base_command(python());
        cmd.arg(fixture("host_files.py")).arg(tmp.path());
        let out = run(cmd, Some(&prepared));
        drop(JobGuard(prepared.into_cgroup()));
        assert!(out.status.success(), "{key}: {}", stderr(&out));
        let out = stdout(&out);
        for attempt in ["core_pattern", "sys_write"] {
            assert!(
                out.contains(&format!("{attempt}=EACCES")),
                "{key}: {attempt}: {out}"
            );
        }
        // A host (or container) without block devices has nothing to refuse.
        assert!(
            out.contains("blockdev=EACCES") || out.contains("blockdev=none"),
            "{key}: blockdev: {out}"
        );
        for control in ["proc_read", "dev_null", "tmp_write"] {
            assert!(
                out.contains(&format!("{control}=ok")),
                "{key}: {control}: {out}"
            );
        }
    }
}
