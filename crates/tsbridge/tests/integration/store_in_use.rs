//! One server per SQLite store: a second `tsbridge serve` on the store of a
//! running one is refused before it touches the store (it would recover
//! the first one's running jobs as interrupted and number their events a
//! second time) or the first one's jobs (its start sweeps the job cgroups
//! of its store's parent cgroup), saying why; the first serves on; once it
//! stops, the store is free. Found by `make soak` with two servers pointed
//! at one file. The parent cgroup is named after the store's canonical
//! path: a restart with another spelling of the store sweeps what a
//! SIGKILLed server left.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, ServeCgroups, Server, alive, cgroup_dirs, free_port, tsbridge};

/// Writes its pid to `report` (whole: a temp file renamed) and hangs.
const HANG: &str = r#"
const fs = require('fs');
const p = JSON.parse(process.argv[process.argv.indexOf('--params') + 1]);
fs.writeFileSync(p.report + '.part', String(process.pid));
fs.renameSync(p.report + '.part', p.report);
setInterval(() => {}, 1000);
"#;

/// Writes `dir/tsbridge.toml`: a server on `port`, the store `url` (a
/// relative path is the config folder's), and the workflow `hang` (its
/// script in `root`).
fn write_config(dir: &Path, port: u16, url: &str, root: &Path) {
    std::fs::write(root.join("hang.js"), HANG).unwrap();
    std::fs::write(
        dir.join("tsbridge.toml"),
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n\n[store]\nurl = \"{url}\"\n\n\
             [workflows.hang]\nroot = \"{}\"\nscript = \"hang.js\"\nruntime = \"node\"\n",
            root.display()
        ),
    )
    .unwrap();
}

fn serve(dir: &Path) -> std::process::Command {
    tsbridge(dir, &["serve", "--config", "tsbridge.toml"])
}

/// Runs a `hang` job on the server at `port`: its id and its pid, once it
/// wrote it to `report`.
fn start_hang(port: u16, report: &Path) -> (String, i32) {
    let body = serde_json::json!({"workflow": "hang", "parameters": {"report": report}});
    let (status, answer) = request(port, "POST", "/v1/jobs", &body.to_string());
    assert_eq!(status, "HTTP/1.1 202 Accepted", "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let id = v["data"]["jobId"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while !report.exists() {
        assert!(start.elapsed() < DEADLINE, "the job never reported its pid");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = std::fs::read_to_string(report)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (id, pid)
}

/// The job cgroup directories of `pid` (none on a host without them).
fn job_cgroups(pid: i32) -> Vec<PathBuf> {
    cgroup_dirs(&pid.to_string())
        .into_iter()
        .filter(|d| d.to_string_lossy().contains("/job-"))
        .collect()
}

#[test]
fn a_second_server_on_a_sqlite_store_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    let _cgroups = ServeCgroups::for_config_dir(&real);
    let port = free_port();
    write_config(&real, port, "sqlite://jobs.db", &real);
    let mut first = Server::spawn(serve(&real), port);
    // A job of the first server runs.
    let (job, pid) = start_hang(port, &real.join("job.pid"));
    let cgroups = job_cgroups(pid);

    // The same store spelt another way, another port: refused, and it
    // says what to do.
    let other = real.join("other");
    std::fs::create_dir(&other).unwrap();
    let port2 = free_port();
    write_config(&other, port2, "sqlite://../jobs.db", &real);
    let second = serve(&other)
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

    // The first one still answers, and its job still runs: the refused
    // server did not sweep its job cgroup (they name one parent cgroup).
    assert_eq!(status_of_readyz(port), "HTTP/1.1 200 OK");
    assert!(alive(pid), "the refused server killed the running job");
    for c in &cgroups {
        assert!(c.is_dir(), "the refused server removed {}", c.display());
    }

    // Stopped, it lets go: a new server on the store starts.
    let (status, answer) = request(port, "POST", &format!("/v1/jobs/{job}/cancel"), "");
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    // SAFETY: a signal to the child this test started and still holds.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGTERM) };
    assert!(first.child.wait().unwrap().success());
    let _again = Server::spawn(serve(&other), port2);
}

/// A server SIGKILLed with one spelling of its store leaves its job's
/// cgroup (its death watchdog killed the job); a restart with another
/// spelling of the same file removes it at its start. The parent cgroup
/// used to be named after the URL as spelt: the restart looked in another
/// one and the leftover stayed.
#[test]
fn a_restart_with_another_spelling_of_the_store_sweeps_what_a_sigkilled_server_left() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    let _cgroups = ServeCgroups::for_config_dir(&real);
    let sub = real.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let port = free_port();
    write_config(&sub, port, "sqlite://../jobs.db", &real);
    let mut first = Server::spawn(serve(&sub), port);
    let (_, pid) = start_hang(port, &real.join("job.pid"));
    let cgroups = job_cgroups(pid);
    if cgroups.is_empty() {
        eprintln!("SKIP: no job cgroups on this host");
        return;
    }
    // SIGKILL: no shutdown path of tsbridge runs; the job dies with it.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < DEADLINE, "the job outlived its server");
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in &cgroups {
        assert!(c.is_dir(), "nothing left to sweep: {}", c.display());
    }

    // The same store, spelt from its own folder.
    let port2 = free_port();
    write_config(&real, port2, "sqlite://jobs.db", &real);
    let mut second = Server::spawn(serve(&real), port2);
    let start = Instant::now();
    while let Some(c) = cgroups.iter().find(|c| c.exists()) {
        assert!(
            start.elapsed() < DEADLINE,
            "the restart left the job cgroup {}",
            c.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a signal to the child this test started and still holds.
    unsafe { libc::kill(second.child.id() as i32, libc::SIGTERM) };
    assert!(second.child.wait().unwrap().success());
}

/// `METHOD path` with a JSON `body` on `port`: the status line and the
/// body of the answer.
fn request(port: u16, method: &str, path: &str, body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The status line of `GET /readyz` on `port`.
fn status_of_readyz(port: u16) -> String {
    request(port, "GET", "/readyz", "").0
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
