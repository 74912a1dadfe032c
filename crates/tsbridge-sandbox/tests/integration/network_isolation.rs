//! network = false: a job cannot reach a listener on the host's loopback,
//! while the same program without the policy can.

use crate::common;

use std::net::TcpListener;

use common::*;
use tsbridge_sandbox::{Enforcement, SandboxPolicy};

fn connect(host: &Host, key: &str, network: bool, port: u16) -> (bool, String) {
    let policy = SandboxPolicy {
        network,
        ..SandboxPolicy::default()
    };
    let prepared = host.prepare(key, &policy);
    if !network {
        assert_eq!(prepared.report().network, Enforcement::Enforced);
    }
    let mut cmd = base_command(python());
    cmd.arg(fixture("connect.py")).arg(port.to_string());
    let out = run(cmd, Some(&prepared));
    let _job = JobGuard(prepared.into_cgroup());
    (out.status.success(), stdout(&out))
}

fn check(host: &Host, tag: &str) {
    if !is_root() || !host.sandbox.capabilities().network_ns {
        eprintln!("skipped: no network namespaces");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();

    let (ok, out) = connect(host, &format!("{tag}-open"), true, port);
    assert!(ok && out.contains("CONNECTED"), "with network: {out}");

    let (ok, out) = connect(host, &format!("{tag}-closed"), false, port);
    assert!(!ok, "connected without network: {out}");
    assert!(
        out.contains("ECONNREFUSED") || out.contains("ENETUNREACH"),
        "unexpected error: {out}"
    );
}

#[test]
fn job_without_network_cannot_reach_host_loopback() {
    let host = Host::new("net");
    check(&host, "own");
}

#[test]
fn shared_empty_namespace_also_isolates() {
    let host = Host::with("netshared", |c| c.shared_netns = true);
    check(&host, "shared");
}

/// A socket file on the host, outside every list: a `network = false` job
/// cannot connect to it (it cannot make a unix socket at all), while the
/// same program with the network can; a socketpair works in both.
/// `unix_sockets` overrides either way: `false` refuses them to a job with
/// the network, `true` lets a job without it reach the file.
#[test]
fn job_without_network_cannot_reach_a_unix_socket_file() {
    let host = Host::new("netunix");
    if !host.sandbox.capabilities().seccomp {
        eprintln!("skipped: no seccomp");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("service.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let attempt_with = |key: &str, network: bool, unix_sockets: Option<bool>| {
        let policy = SandboxPolicy {
            network,
            unix_sockets,
            ..SandboxPolicy::default()
        };
        let prepared = host.prepare(key, &policy);
        let mut cmd = base_command(python());
        cmd.arg(fixture("connect_unix.py")).arg(&path);
        let out = run(cmd, Some(&prepared));
        let _job = JobGuard(prepared.into_cgroup());
        (out.status.success(), stdout(&out))
    };

    let (ok, out) = attempt_with("unix-open", true, None);
    assert!(
        ok && out.contains("SOCKETPAIR") && out.contains("CONNECTED"),
        "with network: {out}"
    );
    assert!(listener.accept().is_ok(), "the listener saw no connection");

    let (ok, out) = attempt_with("unix-closed", false, None);
    assert!(!ok, "connected without network: {out}");
    assert!(
        out.contains("SOCKETPAIR"),
        "socketpair broken without network: {out}"
    );
    assert!(out.contains("ERR EACCES"), "unexpected error: {out}");
    assert!(listener.accept().is_err(), "the listener saw a connection");

    // `unix_sockets = false` with the network: refused all the same (TCP
    // and UDP only), socketpair still works.
    let (ok, out) = attempt_with("unix-refused", true, Some(false));
    assert!(!ok, "connected with unix_sockets = false: {out}");
    assert!(out.contains("SOCKETPAIR"), "socketpair broken: {out}");
    assert!(out.contains("ERR EACCES"), "unexpected error: {out}");
    assert!(listener.accept().is_err(), "the listener saw a connection");

    // `unix_sockets = true` without the network: the socket file is
    // reachable, the network is not (the other tests of this file).
    let (ok, out) = attempt_with("unix-kept", false, Some(true));
    assert!(
        ok && out.contains("CONNECTED"),
        "unix_sockets = true: {out}"
    );
    assert!(listener.accept().is_ok(), "the listener saw no connection");
}
