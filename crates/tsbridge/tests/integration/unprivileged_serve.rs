//! `tsbridge serve` without privilege (as `nobody`: no CAP_SYS_ADMIN, no
//! delegated cgroup) still contains a pool workflow that asks for no
//! network and a PID namespace of its own: its warm worker runs under
//! tsbridge's init in a user namespace of its own (the job's ids mapped to
//! themselves) with a network namespace and a PID namespace in it. A
//! hostile handler lists the interfaces and the processes it can see:
//! `lo` only, its init and itself, as `nobody`. The workflow is available
//! (before, both limits made it unavailable: "cannot enforce"), and after
//! the server's graceful stop nothing of the worker is left. Skipped when
//! the tests do not run as root or the kernel refuses `nobody` user, PID
//! and network namespaces (util-linux's unshare says).

use std::os::unix::process::CommandExt;
use std::time::Instant;

use serde_json::{Value, json};

use crate::common::{
    DEADLINE, Server, alive, free_port, get_json, tsbridge, until, write_serve_config,
};

/// The pool module: what a job on the worker can see.
const MODULE: &str = r#"
import fs from 'node:fs';
export default async function handler() {
  const ifaces = fs.readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2)
    .map((l) => l.split(':')[0].trim()).filter(Boolean);
  const pids = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number);
  const init = fs.readFileSync('/proc/1/cmdline', 'utf8').replace(/\0/g, '');
  return { ifaces, pids, init, uid: process.getuid() };
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_server_runs_a_pool_worker_without_network_in_its_own_pid_namespace() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("SKIP: not root: cannot run as another user");
        return;
    }
    let userns = std::process::Command::new("unshare")
        .args(["--user", "--map-current-user", "--net", "--pid", "--fork"])
        .args(["--mount", "--mount-proc", "true"])
        .uid(65534)
        .gid(65534)
        .status();
    if !userns.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("SKIP: no unprivileged user, PID and network namespaces ({userns:?})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_path = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::set_permissions(
        &dir_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(dir_path.join("pool.mjs"), MODULE).unwrap();
    let port = free_port();
    let cfg = write_serve_config(
        &dir_path,
        port,
        "[workflows.sealed]\nroot = \".\"\nscript = \"pool.mjs\"\nruntime = \"node\"\n\
         mode = \"pool\"\npool = { min = 1, max = 1 }\n\
         limits = { network = false, pid_namespace = true }\n",
    );
    let mut serve = tsbridge(&dir_path, &["serve", "--config", cfg.to_str().unwrap()]);
    serve.uid(65534).gid(65534);
    let server = Server::spawn(serve, port);
    let client = reqwest::Client::new();

    let ready = get_json(&client, &format!("{}/readyz", server.url)).await;
    assert_eq!(ready["data"]["workflows"]["sealed"], "available", "{ready}");
    assert_eq!(ready["data"]["isolation"]["network"], true, "{ready}");
    assert_eq!(ready["data"]["isolation"]["pidNamespace"], true, "{ready}");

    let r: Value = client
        .post(format!("{}/workflow/sealed/execute", server.url))
        .json(&json!({"parameters": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = &r["data"]["result"];
    assert_eq!(seen["ifaces"], json!(["lo"]), "{r}");
    assert_eq!(seen["uid"], 65534, "{r}");
    assert_eq!(seen["init"], "tsbridge-init", "{r}");
    let pids: Vec<u64> = seen["pids"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(pids.contains(&1) && pids.len() <= 4, "{r}");
    let worker = r["data"]["processId"].as_i64().unwrap() as i32;
    assert!(alive(worker), "{r}");

    // A graceful stop: the worker (and its init) are gone afterwards.
    // SAFETY: kill with a pid this test started.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let mut server = server;
    while server.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < DEADLINE, "the server never stopped");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    until("the pool worker to be gone", || !alive(worker)).await;
}
