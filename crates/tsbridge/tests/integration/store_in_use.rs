//! One server per SQLite store: a second `tsbridge serve` on the store of a
//! running one is refused before it touches the store (it would recover
//! the first one's running jobs as interrupted and number their events a
//! second time), saying why; the first serves on; once it stops, the store
//! is free. Found by `make soak` with two servers pointed at one file.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, ServeCgroups, Server, free_port, tsbridge, write_protocol_config};

#[test]
fn a_second_server_on_a_sqlite_store_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    let port = free_port();
    write_protocol_config(dir.path(), port, &[]);
    let mut first = Server::spawn(
        tsbridge(dir.path(), &["serve", "--config", "tsbridge.toml"]),
        port,
    );

    // The same store, another port: refused, and it says what to do.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let port2 = free_port();
    let config = std::fs::read_to_string(dir.path().join("tsbridge.toml"))
        .unwrap()
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{port2}"))
        // The same file, spelt as `serve` resolves the first one's: the
        // same parent cgroup, which `_cgroups` removes after the SIGKILL
        // of the last server (another spelling would leave its own).
        .replace(
            "sqlite://jobs.db",
            &format!(
                "sqlite://{}/jobs.db",
                std::path::absolute(dir.path()).unwrap().display()
            ),
        );
    std::fs::write(other.join("tsbridge.toml"), config).unwrap();
    let second = tsbridge(&other, &["serve", "--config", "tsbridge.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_deadline(second);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second server ran: {stderr}");
    assert!(
        stderr.contains("in use by another tsbridge") && stderr.contains("jobs.db"),
        "{stderr}"
    );

    // The first one still answers.
    assert_eq!(status_of_readyz(port), "HTTP/1.1 200 OK");

    // Stopped, it lets go: a new server on the store starts.
    // SAFETY: a signal to the child this test started and still holds.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGTERM) };
    assert!(first.child.wait().unwrap().success());
    let _again = Server::spawn(
        tsbridge(&other, &["serve", "--config", "tsbridge.toml"]),
        port2,
    );
}

/// The status line of `GET /readyz` on `port`.
fn status_of_readyz(port: u16) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

fn wait_with_deadline(mut child: std::process::Child) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the second server neither ran nor stopped in {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
