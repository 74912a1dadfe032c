//! A pool workflow with `limits.pid_namespace = true` under `tsbridge
//! serve`: when the server is SIGKILLed (no shutdown path of its own runs),
//! nothing of its warm worker's namespace lives on: the init's parent-death
//! signal kills it, and the kernel kills the rest of the namespace (the
//! worker, a `setsid` daemon its job left). Skipped (with a message) where
//! tsbridge cannot make PID namespaces (not root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    DEADLINE, ServeCgroups, Server, alive, free_port, get_json, tsbridge, until, write_serve_config,
};

/// The pool module: `echo` answers at once; `hold` leaves a setsid daemon
/// (`sleep <mark>`, its parent exits: the namespace's init adopts it) and
/// never answers.
const MODULE: &str = r#"
import { spawn } from 'node:child_process';
export default async function handler(params) {
  if (params.mode === 'hold') {
    spawn('sh', ['-c', `sleep ${params.mark} & exit 0`], { detached: true, stdio: 'ignore' }).unref();
    await new Promise(() => {});
  }
  return { pid: process.pid };
}
"#;

fn write_config(dir: &Path, port: u16) -> PathBuf {
    std::fs::write(dir.join("pool.mjs"), MODULE).unwrap();
    write_serve_config(
        dir,
        port,
        "[workflows.held]\nroot = \".\"\nscript = \"pool.mjs\"\nruntime = \"node\"\nmode = \"pool\"\n\
         limits = { pid_namespace = true }\npool = { min = 1, max = 1 }\n",
    )
}

fn host_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn pid_ns(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Live host processes in the PID namespace `ns`.
fn members(ns: &Path) -> Vec<i32> {
    host_pids()
        .into_iter()
        .filter(|p| alive(*p) && pid_ns(*p).as_deref() == Some(ns))
        .collect()
}

fn sleeping(mark: &str) -> Vec<i32> {
    let want = format!("sleep\0{mark}\0");
    host_pids()
        .into_iter()
        .filter(|p| {
            alive(*p)
                && std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

async fn job(client: &reqwest::Client, url: &str, params: Value) -> String {
    let r = client
        .post(format!("{url}/v1/jobs"))
        .json(&json!({"workflow": "held", "parameters": params}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v["data"]["jobId"].as_str().unwrap().to_owned()
}

async fn view(client: &reqwest::Client, url: &str, id: &str) -> Value {
    get_json(client, &format!("{url}/v1/jobs/{id}")).await["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_leaves_nothing_of_a_pool_workers_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = std::fs::canonicalize(dir.path()).unwrap();
    // Goes after the servers: removes what a SIGKILLed one left in cgroupfs.
    let _cgroups = ServeCgroups::for_config_dir(&dir_path);
    let port = free_port();
    let cfg = write_config(&dir_path, port);
    let serve_cmd = || tsbridge(&dir_path, &["serve", "--config", cfg.to_str().unwrap()]);
    let mut server = Server::spawn(serve_cmd(), port);
    let client = reqwest::Client::new();
    let ready = get_json(&client, &format!("{}/readyz", server.url)).await;
    if ready["data"]["isolation"]["pidNamespace"] != json!(true) {
        eprintln!("SKIP: no PID namespaces on this host: {ready}");
        return;
    }

    // The worker's host pid: the job view's processId (the init's child).
    let first = job(&client, &server.url, json!({"mode": "echo"})).await;
    let start = Instant::now();
    let done = loop {
        let v = view(&client, &server.url, &first).await;
        if v["state"] == "succeeded" {
            break v;
        }
        assert!(
            v["state"] != "failed" && start.elapsed() < DEADLINE,
            "the first job: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        done["result"]["pid"],
        json!(2),
        "the worker is pid 2 inside"
    );
    let worker = done["processId"].as_i64().unwrap() as i32;
    let ns = pid_ns(worker).unwrap();
    assert_ne!(pid_ns(std::process::id() as i32), Some(ns.clone()));

    let mark = format!("7100.{}", std::process::id());
    job(&client, &server.url, json!({"mode": "hold", "mark": mark})).await;
    until("the job's daemon runs", || !sleeping(&mark).is_empty()).await;
    let before = members(&ns);
    assert!(
        before.len() >= 3,
        "the init, the worker, the daemon: {before:?}"
    );

    // SIGKILL: no shutdown path of tsbridge runs.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let start = Instant::now();
    while !members(&ns).is_empty() && start.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = members(&ns);
    for p in &left {
        // SAFETY: kill(2) of a process this test's server made (clean-up).
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "outlived the SIGKILLed server: {left:?}");
    assert!(sleeping(&mark).is_empty());

    // Clean-up: a start on the same store sweeps the emptied job cgroup,
    // and a graceful stop removes the server's parent cgroups.
    let mut server = Server::spawn(serve_cmd(), port);
    // SAFETY: kill(2) of the server this test started.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    server.child.wait().unwrap();
}
