//! A dynamic uid's job (`SandboxPolicy::dynamic_tmpdir`): what its IPC
//! namespace costs per spawn. Its confinement is tested through the
//! runtime (`tsbridge-runtime`'s `dynamic_user` tests).

use crate::common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tsbridge_sandbox::{JobUser, SandboxPolicy};

/// Spawn-to-exit of `/bin/true` as a uid of its own, with and without the
/// IPC namespace (and the dynamic guard) of a dynamic uid, alternated, 100
/// runs each: prints the median and p90 of each. Run by hand:
/// `cargo nextest run --release -p tsbridge-sandbox --test integration
/// --run-ignored only -E 'test(ipc_namespace_cost)' --no-capture`.
#[test]
#[ignore = "a measurement, not a check"]
fn ipc_namespace_cost() {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let host = Host::new("ipccost");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("job");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let user = JobUser {
        uid: 3_910_000_950,
        gid: 3_910_000_950,
    };
    let fixed = SandboxPolicy {
        user: Some(user),
        ..SandboxPolicy::default()
    };
    let dynamic = SandboxPolicy {
        dynamic_tmpdir: Some(PathBuf::from(&dir)),
        ..fixed.clone()
    };
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..200 {
        let (slot, policy) = if i % 2 == 0 {
            (0, &fixed)
        } else {
            (1, &dynamic)
        };
        let prepared = host.prepare(&format!("ipccost-{i}"), policy);
        let mut cmd = base_command("/bin/true");
        sandboxed(&mut cmd, &prepared);
        let start = Instant::now();
        let status = cmd.status().unwrap();
        times[slot].push(start.elapsed());
        assert!(status.success(), "{:?}", prepared.take_child_failure());
        drop(prepared);
    }
    for (name, t) in ["fixed uid", "dynamic uid (IPC namespace)"]
        .iter()
        .zip(times.iter_mut())
    {
        t.sort();
        println!(
            "{name}: spawn to exit median {:?}, p90 {:?} ({} runs)",
            t[t.len() / 2],
            t[t.len() * 9 / 10],
            t.len()
        );
    }
}
