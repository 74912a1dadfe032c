//! Helpers shared by the integration tests: fixture paths, a minimal child
//! environment, /proc liveness checks and an awaiting helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tsbridge_process::runtime::RuntimeSearch;
use tsbridge_process::{JobSpec, JobSpecBuilder};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

pub fn node() -> PathBuf {
    PathBuf::from("/usr/bin/node")
}

/// The environment the tests give children: just PATH and HOME.
/// Runtime resolution that finds the repository's own `node_modules` (tsx,
/// esbuild) and the test's node.
pub fn search() -> RuntimeSearch {
    RuntimeSearch {
        extra_node_modules: vec![repo_root().join("node_modules")],
        node: node(),
    }
}

/// Whether the repository's `node_modules` has every file in `needs` (e.g.
/// `tsx/dist/loader.mjs`). Without them a test is skipped, said on stderr;
/// under CI (`CI` set), where `make test` installed them, it fails instead,
/// so a broken setup can never pass as skipped tests.
pub fn have_node_modules(needs: &[&str]) -> bool {
    have_node_modules_in("", needs)
}

/// [`have_node_modules`] of the package at `dir` (relative to the repository).
pub fn have_node_modules_in(dir: &str, needs: &[&str]) -> bool {
    let nm = repo_root().join(dir).join("node_modules");
    let missing: Vec<&&str> = needs.iter().filter(|f| !nm.join(f).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "missing under {nm:?}: {missing:?} (`make setup` installs them)"
    );
    eprintln!("SKIP: missing under {nm:?}: {missing:?} (run `make setup`)");
    false
}

pub fn base_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("HOME".into(), "/tmp".into());
    env
}

/// `node <fixture> args...` with the base env, cwd = fixtures/.
pub fn node_fixture(name: &str) -> JobSpecBuilder {
    JobSpec::builder(node())
        .arg(fixture(name))
        .cwd(repo_root().join("fixtures"))
        .envs(base_env())
}

/// Live host pids whose command line starts with `prefix` (argv[0]: the
/// process itself, not a shell whose script names it).
pub fn running_as(prefix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if alive(pid)
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(prefix.as_bytes()))
        {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is alive (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let after = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !after.starts_with('Z') && !after.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Pids of live processes whose initial environment carries `TSBRIDGE_JOB=<key>`.
pub fn marked(key: &str) -> Vec<i32> {
    let needle = format!("TSBRIDGE_JOB={key}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || !alive(pid) {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a JSON pid file written by a fixture, waiting for it to appear.
pub async fn read_pidfile(path: &std::path::Path) -> serde_json::Value {
    let mut v = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            v = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok());
            v.is_some()
        })
        .await,
        "pid file {path:?} never appeared"
    );
    v.expect("pid file")
}

/// A prepared sandbox of `policy` for job `key`, to attach to a spec.
pub fn attach(
    sb: &tsbridge_sandbox::Sandbox,
    key: &str,
    policy: tsbridge_sandbox::SandboxPolicy,
) -> tsbridge_process::SandboxAttachment {
    let prepared = sb.prepare(key, &policy).expect("prepare");
    tsbridge_process::SandboxAttachment {
        prepared: std::sync::Arc::new(prepared),
        policy: std::sync::Arc::new(policy),
    }
}

/// Collects every event of a job until its channel closes (the job's end),
/// on a task of its own so that the job is never held up by a full channel.
pub fn collect_events(
    mut rx: tokio::sync::mpsc::Receiver<tsbridge_proto::ChildEvent>,
) -> tokio::task::JoinHandle<Vec<tsbridge_proto::ChildEvent>> {
    tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    })
}
