//! A running server is SIGKILLed with jobs queued and running; a restarted
//! server finds every accepted job and brings each to a terminal state, and no
//! child of the killed server outlives it (SPEC §4, "Nothing accepted is lost").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{ServeCgroups, alive};

const DEADLINE: Duration = Duration::from_secs(90);

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(config: &Path, port: u16) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_tsbridge"))
            .args(["serve", "--config"])
            .arg(config)
            .env("TSBRIDGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tsbridge serve");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn kill9(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_job(http: &reqwest::Client, base: &str, id: &str) -> Option<Value> {
    let r = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    Some(v["data"].clone())
}

/// Live processes running this test's grandchild script (found by the job's
/// marker: its cwd is the test's temp dir).
fn grandchildren(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("setTimeout(()=>{}, 600000)"))
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir)
                && alive(*pid as i32)
        })
        .collect()
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    std::fs::write(
        dir.join("job.js"),
        r#"
const p = JSON.parse(process.argv[process.argv.indexOf('--params') + 1]);
console.log('PROGRESS: 1/2 - started');
// A grandchild too: it must die with the server as well.
if (p.grandchild) require('child_process').spawn(process.execPath, ['-e', 'setTimeout(()=>{}, 600000)'], { stdio: 'ignore' });
setTimeout(() => { console.log('PROGRESS: 2/2 - done'); console.log('RESULT: ' + JSON.stringify({ slept: p.ms })); }, p.ms);
"#,
    )
    .expect("write job.js");
    let cfg = dir.join("tsbridge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"

[store]
url = "sqlite://jobs.db"

[defaults]
concurrency = 1
kill_grace = "1s"

[workflows.once]
root = "."
script = "job.js"
runtime = "node"
retry = {{ attempts = 1 }}

[workflows.twice]
root = "."
script = "job.js"
runtime = "node"
retry = {{ attempts = 2, backoff = "100ms" }}
"#
        ),
    )
    .expect("write config");
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_server_loses_no_job_and_leaks_no_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Goes after the servers: removes what a SIGKILLed one left in cgroupfs.
    let _cgroups = ServeCgroups::for_config_dir(dir.path());
    let port = free_port();
    let cfg = write_config(dir.path(), port);
    let http = reqwest::Client::new();

    let mut server = Server::start(&cfg, port);
    let base = server.base.clone();
    wait_for("the server to listen", || async {
        http.get(format!("{base}/healthz")).send().await.ok()
    })
    .await;

    let submit = |workflow: &'static str, params: Value| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .post(format!("{base}/v1/jobs"))
                .json(&json!({"workflow": workflow, "parameters": params}))
                .send()
                .await
                .expect("submit");
            assert_eq!(r.status(), 202, "submit {workflow}");
            let v: Value = r.json().await.expect("json");
            v["data"]["jobId"].as_str().expect("jobId").to_owned()
        }
    };
    // One long job that will be running when the server dies (no retry left),
    // one with a retry left that will also be running, and queued ones.
    let running_once = submit("once", json!({"ms": 600000, "grandchild": true})).await;
    let running_pid = wait_for("the first job to run", || async {
        let j = get_job(&http, &base, &running_once).await?;
        (j["state"] == "running")
            .then(|| j["processId"].as_u64())
            .flatten()
    })
    .await as u32;
    let queued: Vec<String> =
        futures::future::join_all((0..3).map(|_| submit("twice", json!({"ms": 50})))).await;
    for id in &queued {
        let j = get_job(&http, &base, id).await.expect("job");
        assert_eq!(j["state"], "queued", "concurrency 1 keeps {id} queued");
    }

    server.kill9();
    // The job's process (and the grandchild it forked) die with the server.
    wait_for("the killed server's child to die", || async {
        (!alive(running_pid as i32)).then_some(())
    })
    .await;

    let server2 = Server::start(&cfg, port);
    let base = server2.base.clone();
    wait_for("the restarted server", || async {
        http.get(format!("{base}/healthz")).send().await.ok()
    })
    .await;
    let interrupted = wait_for("the interrupted job to be failed", || async {
        let j = get_job(&http, &base, &running_once).await?;
        (j["state"] == "failed").then_some(j)
    })
    .await;
    assert_eq!(interrupted["reason"], "interrupted", "{interrupted}");
    for id in &queued {
        let j = wait_for("a queued job to finish after restart", || async {
            let j = get_job(&http, &base, id).await?;
            (j["state"] == "succeeded").then_some(j)
        })
        .await;
        assert_eq!(j["result"], json!({"slept": 50}), "{j}");
    }
    // No process of the first server's job survived, grandchild included:
    // the direct child died with the server (parent-death signal), the
    // grandchild it forked was killed by the restarted server's sweep of the
    // job cgroups the dead one left.
    wait_for("the killed server's grandchild to be gone", || async {
        grandchildren(dir.path()).is_empty().then_some(())
    })
    .await;
    drop(server2);
}
