//! SIGTERM to `tsbridge serve` with a job running: the server ends the job
//! and records it `failed` with reason `shutdown`, then exits 0 (SPEC §4).
//! Regression: with no HTTP connection open, the API server's end and the
//! stop signal were ready at once and an unbiased `select!` sometimes took
//! the first, skipping the runtime's shutdown: the job stayed `running` in
//! the store (and a restart found it `interrupted`). Several rounds, since
//! the lost pick was random.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{DEADLINE, ServeCgroups, fixtures, free_port, proc_cgroups};

const ROUNDS: usize = 8;

/// A server that is killed when the test ends, failed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(config: &Path) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_tsbridge"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("TSBRIDGE_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tsbridge serve"),
    )
}

async fn until<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job(http: &reqwest::Client, base: &str, id: &str) -> Option<Value> {
    let r = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    Some(v["data"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_records_the_running_job_as_shutdown_every_time() {
    let dir = tempfile::tempdir().unwrap();
    // Goes after the servers: removes what a SIGKILLed one left in cgroupfs.
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    let port = free_port();
    let config = dir.path().join("tsbridge.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n\n[store]\nurl = \"sqlite://jobs.db\"\n\n\
             [defaults]\nkill_grace = \"1s\"\n\n\
             [workflows.hang]\nroot = \"{}\"\nscript = \"hang.js\"\nruntime = \"node\"\n",
            fixtures().display()
        ),
    )
    .unwrap();
    // No keep-alive: once the job runs, no connection stays open.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut ids = Vec::new();
    for round in 0..ROUNDS {
        let mut server = serve(&config);
        let id: String = until("the server to accept a job", || async {
            let r = http
                .post(format!("{base}/v1/jobs"))
                .json(&json!({"workflow": "hang", "parameters": {}}))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["data"]["jobId"].as_str().map(str::to_owned)
        })
        .await;
        // Running, with its pid recorded (written with its first events,
        // or on its own within 50 ms).
        let pid = until("the job to run", || async {
            let v = job(&http, &base, &id).await?;
            (v["state"] == "running")
                .then(|| v["processId"].as_i64())
                .flatten()
        })
        .await;
        let parents = cgroup_parents(pid as i32);
        // SAFETY: plain kill(2) of the server this test started.
        unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
        let status = server.0.wait().unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: exit status");
        // A stopped server leaves nothing in cgroupfs: its job cgroups'
        // parent went with the last job (it stayed before).
        if parents.is_empty() && round == 0 {
            eprintln!("no job cgroups on this host: parent removal not checked");
        }
        let left: Vec<_> = parents.iter().filter(|p| p.exists()).collect();
        assert!(
            left.is_empty(),
            "round {round}: cgroup parents left: {left:?}"
        );
        ids.push(id);
    }
    let mut server = serve(&config);
    for (round, id) in ids.iter().enumerate() {
        let v = until("the restarted server", || job(&http, &base, id)).await;
        assert_eq!(
            (v["state"].as_str(), v["reason"].as_str()),
            (Some("failed"), Some("shutdown")),
            "round {round}: {v}"
        );
    }
    // SAFETY: plain kill(2) of the server this test started.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    assert_eq!(server.0.wait().unwrap().code(), Some(0));
}

/// The parent directories of the job cgroups `pid` is in (those that
/// exist: v1 hierarchies mounted at `/sys/fs/cgroup/<controllers>`, or v2
/// at `/sys/fs/cgroup`).
fn cgroup_parents(pid: i32) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for (controllers, path) in proc_cgroups(&pid.to_string()) {
        let Some(at) = path.find("/job-") else {
            continue;
        };
        let parent = path[..at].trim_start_matches('/');
        for root in [
            Path::new("/sys/fs/cgroup").join(&controllers),
            Path::new("/sys/fs/cgroup").to_path_buf(),
        ] {
            let dir = root.join(parent);
            if !parent.is_empty() && dir.is_dir() {
                out.push(dir);
            }
        }
    }
    out
}

/// A SIGTERM that comes while the server starts (after it has set up its
/// sandbox, before it listens) shuts it down gracefully once it serves: it
/// exits 0 and says so. Before, the signal handlers were installed only when
/// the server began to serve, and such a SIGTERM killed it by the default
/// action (status "signal 15", its parent cgroups left behind).
#[test]
fn a_sigterm_during_startup_is_a_graceful_shutdown() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    let port = free_port();
    crate::common::write_protocol_config(dir.path(), port, &[]);
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_tsbridge"))
            .args(["serve", "--config"])
            .arg(dir.path().join("tsbridge.toml"))
            .env_remove("TSBRIDGE_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tsbridge serve"),
    );
    let stderr = server.0.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    // Logged once the sandbox is set up, before the store's recovery, the
    // pools and the listener.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("a line of the server's stderr");
        let at_startup = line.contains("isolation on this host");
        seen.push(line);
        if at_startup {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("isolation on this host")),
        "{seen:?}"
    );
    // SAFETY: a signal to the child this test started and still holds.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = server.0.wait().expect("wait");
    assert!(status.success(), "{status}: {seen:?} {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM: shutting down")),
        "{rest:?}"
    );
}
