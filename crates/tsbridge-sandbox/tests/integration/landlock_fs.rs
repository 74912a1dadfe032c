//! Landlock: writes outside the write list and reads outside the read list
//! fail; allowed paths work; node runs a script under FsPolicy::for_node.

use crate::common;

use std::path::Path;

use common::*;
use tsbridge_sandbox::{Enforcement, FsPolicy, LandlockSupport, SandboxPolicy};

fn landlock_available(host: &Host) -> bool {
    if host.sandbox.capabilities().landlock == LandlockSupport::None {
        eprintln!("skipped: landlock unavailable");
        return false;
    }
    true
}

fn sh(host: &Host, key: &str, fs: Option<FsPolicy>, script: &str) -> std::process::Output {
    let policy = SandboxPolicy {
        fs,
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare(key, &policy);
    if policy.fs.is_some() {
        assert_eq!(prepared.report().fs, Enforcement::Enforced);
    }
    let mut cmd = base_command("/bin/sh");
    cmd.arg("-c").arg(script);
    let out = run(cmd, Some(&prepared));
    let _job = JobGuard(prepared.into_cgroup());
    out
}

#[test]
fn writes_and_reads_are_confined_to_the_lists() {
    let host = Host::new("ll");
    if !landlock_available(&host) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path();
    let (ro, rw, hidden) = (base.join("ro"), base.join("rw"), base.join("hidden"));
    for d in [&ro, &rw, &hidden] {
        std::fs::create_dir(d).expect("mkdir");
    }
    std::fs::write(ro.join("in.txt"), "readable").expect("write");
    std::fs::write(hidden.join("secret.txt"), "secret").expect("write");
    let policy = FsPolicy {
        read: vec![ro.clone()],
        write: vec![rw.clone(), "/dev/null".into()],
        exec: vec!["/usr".into()],
    };
    let q = |p: &Path| p.display().to_string();

    let out = sh(
        &host,
        "w-in",
        Some(policy.clone()),
        &format!("echo ok > {}/new.txt && cat {}/in.txt", q(&rw), q(&ro)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).expect("read"),
        "ok\n"
    );
    assert_eq!(stdout(&out), "readable");

    let out = sh(
        &host,
        "w-out",
        Some(policy.clone()),
        &format!("echo x > {}/evil.txt", q(&hidden)),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(!hidden.join("evil.txt").exists());

    let out = sh(
        &host,
        "w-ro",
        Some(policy.clone()),
        &format!("echo x > {}/in.txt", q(&ro)),
    );
    assert!(!out.status.success(), "wrote into a read-only dir");
    assert_eq!(
        std::fs::read_to_string(ro.join("in.txt")).expect("read"),
        "readable"
    );

    let out = sh(
        &host,
        "r-out",
        Some(policy.clone()),
        &format!("cat {}/secret.txt", q(&hidden)),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let out = sh(&host, "r-etc", Some(policy), "cat /etc/hostname");
    assert!(!out.status.success(), "read /etc without a rule");

    // Control: without the policy the same writes and reads succeed.
    let out = sh(
        &host,
        "control",
        None,
        &format!(
            "echo x > {}/evil.txt && cat {}/secret.txt",
            q(&hidden),
            q(&hidden)
        ),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn node_runs_under_for_node_policy() {
    let host = Host::new("llnode");
    if !landlock_available(&host) {
        return;
    }
    let node = Path::new("/usr/bin/node");
    if !node.exists() {
        eprintln!("skipped: no /usr/bin/node");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().canonicalize().expect("canon");
    let (root, tmp) = (base.join("app"), base.join("tmp"));
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::create_dir(&tmp).expect("mkdir");
    std::fs::copy(fixture("node_fs.js"), root.join("main.js")).expect("copy");
    std::fs::write(root.join("data.txt"), "hello").expect("write");
    std::fs::write(base.join("outside.txt"), "nope").expect("write");

    let policy = SandboxPolicy {
        fs: Some(FsPolicy::for_node(&root, node, &tmp)),
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare("node", &policy);
    assert_eq!(prepared.report().fs, Enforcement::Enforced);
    let mut cmd = base_command(node);
    cmd.arg(root.join("main.js"))
        .arg(base.join("outside.txt"))
        .env("TMPDIR", &tmp)
        .current_dir(&root);
    let out = run(cmd, Some(&prepared));
    let _job = JobGuard(prepared.into_cgroup());
    let so = stdout(&out);
    assert!(out.status.success(), "stdout {so} stderr {}", stderr(&out));
    assert!(so.contains("read-inside hello"), "{so}");
    assert!(so.contains("write-tmp written"), "{so}");
    assert!(so.contains("read-outside EACCES"), "{so}");
    assert!(so.contains("write-root EACCES"), "{so}");
    assert!(so.contains("spawn ok"), "{so}");
}
