//! Regression (SPEC §4, "temp files it created are removed"): when
//! `tsbridge serve` is SIGKILLed with a spawn job running, the job's
//! private TMPDIR is removed by the death watchdog, with what the job put
//! in it (nested directories, files), without following the symlinks the
//! job left there to a directory and a file outside; so are the TMPDIR of
//! a warm pool worker and the pool's copy of the worker host script. Before,
//! they stayed until somebody removed them by hand. As root, the same when
//! the workflows run as their own user, which owns those TMPDIRs (before,
//! the watchdog removed only directories of tsbridge's uid).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{DEADLINE, ServeCgroups, Server, free_port, tsbridge};

/// Fills its TMPDIR, links out of it, reports the TMPDIR's path (written
/// whole: a temp file renamed) and hangs.
const JOB: &str = r#"
const fs = require('fs');
const path = require('path');
const p = JSON.parse(process.argv[process.argv.indexOf('--params') + 1]);
const tmp = process.env.TMPDIR;
let d = tmp;
for (let i = 0; i < 5; i++) {
  d = path.join(d, `level-${i}`);
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'data.txt'), 'x'.repeat(1000));
}
fs.symlinkSync(p.outside, path.join(tmp, 'escape-dir'));
fs.symlinkSync(path.join(p.outside, 'keep.txt'), path.join(d, 'escape-file'));
fs.writeFileSync(p.report + '.part', tmp);
fs.renameSync(p.report + '.part', p.report);
setInterval(() => {}, 1000);
"#;

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `user`: the `user` line of both workflows (empty: none).
fn write_config(dir: &Path, port: u16, user: &str) -> PathBuf {
    std::fs::write(dir.join("tmp-job.js"), JOB).unwrap();
    std::fs::write(
        dir.join("handler.mjs"),
        "export default async () => ({ pid: process.pid });\n",
    )
    .unwrap();
    let cfg = dir.join("tsbridge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
bind = "127.0.0.1:{port}"

[store]
url = "sqlite://jobs.db"

[workflows.tmpjob]
root = "."
script = "tmp-job.js"
runtime = "node"
{user}

[workflows.pooled]
root = "."
script = "handler.mjs"
runtime = "node"
mode = "pool"
pool = {{ min = 1, max = 1 }}
{user}
"#
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_leaves_no_job_tmpdir() {
    sigkilled_server_leaves_no_tmpdir(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_leaves_no_tmpdir_of_a_job_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root, to run jobs as another user");
        return;
    }
    sigkilled_server_leaves_no_tmpdir(Some("nobody")).await;
}

async fn sigkilled_server_leaves_no_tmpdir(user: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = std::fs::canonicalize(dir.path()).unwrap();
    // Goes after the servers: removes what a SIGKILLed one left in cgroupfs.
    let _cgroups = ServeCgroups::for_config_dir(&dir_path);
    let base = dir_path.join("tmp");
    let outside = dir_path.join("outside");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("keep.txt"), "keep").unwrap();
    std::fs::write(outside.join("sub/deep.txt"), "deep").unwrap();
    // Where the job reports: a folder its user may write.
    let reports = dir_path.join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let user_line = match user {
        Some(name) => {
            let u = tsbridge_sandbox::JobUser::resolve(name).unwrap();
            std::os::unix::fs::chown(&reports, Some(u.uid), Some(u.gid)).unwrap();
            format!("user = \"{name}\"")
        }
        None => String::new(),
    };
    let report = reports.join("tmpdir.txt");
    let port = free_port();
    let cfg = write_config(&dir_path, port, &user_line);

    let mut serve = tsbridge(&dir_path, &["serve", "--config", cfg.to_str().unwrap()]);
    serve.env("TMPDIR", &base);
    let mut server = Server::spawn(serve, port);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/jobs", server.url))
        .json(&json!({"workflow": "tmpjob", "parameters": {"report": report, "outside": outside}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert!(v["data"]["jobId"].is_string(), "{v}");

    let job_tmp = until("the job to report its TMPDIR", || {
        std::fs::read_to_string(&report).ok().map(PathBuf::from)
    })
    .await;
    assert!(job_tmp.starts_with(&base), "{}", job_tmp.display());
    assert!(job_tmp.join("level-0/level-1/data.txt").is_file());
    let pool_dirs = until("the pool's worker host and worker TMPDIRs", || {
        let n = std::fs::read_dir(&base)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("tsbridge-") && !job_tmp.ends_with(n))
            .count();
        (n >= 2).then_some(n)
    })
    .await;
    assert!(pool_dirs >= 2, "{pool_dirs}");

    // SIGKILL: no shutdown path of tsbridge runs.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    until("the job's TMPDIR to be removed", || {
        (!job_tmp.exists()).then_some(())
    })
    .await;

    assert_eq!(
        std::fs::read_to_string(outside.join("keep.txt")).unwrap(),
        "keep"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("sub/deep.txt")).unwrap(),
        "deep"
    );
    let left: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("tsbridge-"))
        .collect();
    assert!(left.is_empty(), "left in the TMPDIR base: {left:?}");
}
