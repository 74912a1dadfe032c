//! A job's parameters out of its command line (`{paramsFile}`): a spawned
//! job's argv is readable by every process of the host in
//! `/proc/<pid>/cmdline` (unless `/proc` is mounted with `hidepid=`), so
//! another job (a probe of another workflow) finds a running job's
//! parameters there when the default template passes them (`{params}`),
//! and does not when the workflow's `args` name `{paramsFile}`, whose job
//! still gets them, from a 0600 file in its own TMPDIR, owned by the job's
//! user (a fixed one and a dynamic uid), gone with the TMPDIR, and may be
//! larger than a command line takes. Before `{paramsFile}`, such a config
//! was refused (an unknown placeholder).

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tsbridge_proto::JobState;
use tsbridge_runtime::RuntimeOptions;

/// The template that passes the parameters in a file.
const FILE_ARGS: &str = "args = [\"--workflow\", \"{workflow}\", \"--params-file\", \"{paramsFile}\", \"--output-format\", \"json\"]";

fn wf(name: &str, extra: &str) -> String {
    format!(
        "[workflows.{name}]\nroot = \"{}\"\nscript = \"params-file.js\"\nruntime = \"node\"\n{extra}\n\n",
        fixtures().display()
    )
}

fn result(v: &tsbridge_proto::api::JobView) -> &Value {
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    v.result.as_ref().expect("a result")
}

/// Whether this host's `/proc` hides other users' processes (`hidepid=`
/// 1, 2, `noaccess` or `invisible` in its super options).
fn proc_hides_pids() -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some("/proc"))
        .filter_map(|l| l.split_once(" - ")?.1.split(' ').nth(2).map(str::to_owned))
        .next_back()
        .is_some_and(|opts| {
            opts.split(',').any(|o| {
                matches!(
                    o,
                    "hidepid=1" | "hidepid=2" | "hidepid=noaccess" | "hidepid=invisible"
                )
            })
        })
}

/// The parameters file in `base`'s TMPDIRs, once there is one.
async fn params_file_in(base: &Path) -> PathBuf {
    until("a parameters file", || {
        std::fs::read_dir(base).unwrap().flatten().find_map(|e| {
            let f = e.path().join("tsbridge-params.json");
            (e.file_name().to_string_lossy().starts_with("tsbridge-") && f.exists()).then_some(f)
        })
    })
    .await
}

/// A job holding a marker in its parameters runs (waits); a probe job of
/// another workflow reads every process's command line. With the default
/// template (`{params}`) it finds the marker (the leak; a host whose /proc
/// hides pids is said and not asserted), with `{paramsFile}` it does not,
/// and that job returns exactly its parameters, read from a 0600 file of
/// its TMPDIR that is gone once the job is.
#[tokio::test]
async fn a_probe_job_reads_params_on_a_command_line_but_not_in_a_params_file() {
    let toml = format!(
        "[defaults]\nconcurrency = 4\n\n{}{}{}",
        wf("inline", ""),
        wf("filed", FILE_ARGS),
        wf("probe", "")
    );
    let h = start(&toml).await;
    let hidden = proc_hides_pids();
    if hidden {
        eprintln!("/proc is mounted with hidepid=: the leak of {{params}} is not asserted");
    }

    for (n, (workflow, leaks)) in [("inline", !hidden), ("filed", false)]
        .into_iter()
        .enumerate()
    {
        let marker = format!("marker-{}-{n}", tsbridge_proto::JobId::new().short());
        let ready = h.path(&format!("ready-{n}"));
        let release = h.path(&format!("release-{n}"));
        let params = json!({
            "marker": marker,
            "ready": ready,
            "hold": release,
            "nested": {"list": [1, 2.5, "three", null], "quote": "\"'$(x)"},
        });
        let holder = h.submit(workflow, params.clone()).await;
        until("the holder runs", || {
            std::fs::metadata(&ready).ok().filter(|m| m.len() > 0)
        })
        .await;
        let file = if workflow == "filed" {
            let f = params_file_in(h.dir.path()).await;
            let m = std::fs::metadata(&f).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o600, "{f:?}");
            assert_eq!(m.uid(), tsbridge_sandbox::user::effective_uid(), "{f:?}");
            // Exactly what `{params}` would have carried.
            assert_eq!(std::fs::read_to_string(&f).unwrap(), params.to_string());
            Some(f)
        } else {
            None
        };

        let (a, b) = marker.split_at(marker.len() / 2);
        let v = h
            .wait(h.submit("probe", json!({"probe": [a, b]})).await)
            .await;
        let probe = result(&v);
        assert!(probe["scanned"].as_u64().unwrap() > 1, "{probe}");
        let found = probe["found"].as_array().unwrap();
        if leaks {
            assert!(
                !found.is_empty(),
                "{workflow}: the probe did not find the parameters on the command line: {probe}"
            );
            assert!(found[0]["cmdline"].as_str().unwrap().contains("--params "));
        } else if !hidden {
            assert!(
                found.is_empty(),
                "{workflow}: another job read the parameters: {probe}"
            );
        }

        std::fs::write(&release, "go").unwrap();
        let v = h.wait(holder).await;
        let r = result(&v);
        assert_eq!(r["params"], params, "{r}");
        if let Some(f) = file {
            assert_eq!(r["file"]["mode"], 0o600, "{r}");
            let argv: Vec<&str> = r["argv"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                argv,
                [
                    "--workflow",
                    "filed",
                    "--params-file",
                    f.to_str().unwrap(),
                    "--output-format",
                    "json"
                ]
            );
            until("the parameters file is removed", || {
                (!f.exists()).then_some(())
            })
            .await;
        }
    }
    h.rt.shutdown(Duration::from_secs(5)).await;
}

/// Parameters too large for a command line (one argument of 128 KiB or
/// more is refused at submit with `{params}`: E2BIG otherwise) are fine
/// in a parameters file: the job gets them whole.
#[tokio::test]
async fn params_too_large_for_a_command_line_fit_a_params_file() {
    let h = start(&format!("{}{}", wf("inline", ""), wf("filed", FILE_ARGS))).await;
    let hold = fixtures().join("params-file.js");
    let params = json!({"hold": hold, "big": "x".repeat(300 * 1024)});
    let refused =
        h.rt.submit("inline", params.clone(), Default::default())
            .await;
    // Refused up front, and the refusal names the way out.
    assert!(
        matches!(&refused, Err(tsbridge_runtime::RuntimeError::TooLarge(m)) if m.contains("{paramsFile}")),
        "the command line took 300 KiB: {refused:?}"
    );
    let v = h.wait(h.submit("filed", params.clone()).await).await;
    assert_eq!(result(&v)["params"], params);
    h.rt.shutdown(Duration::from_secs(5)).await;
}

/// As root: the parameters file of a job with a user (`nobody`, and a
/// dynamic uid) is that user's, 0600, and the job (which could not read a
/// root-owned 0600 file) gets its parameters from it.
#[tokio::test]
async fn the_params_file_belongs_to_the_jobs_user() {
    let Some(s) = user_setup("pf") else { return };
    const FIRST: u32 = 3_910_000_500;
    const LAST: u32 = 3_910_000_509;
    let toml = format!(
        "[defaults]\ndynamic_uids = \"{FIRST}-{LAST}\"\n\n{}{}",
        wf("fixed", &format!("user = \"nobody\"\n{FILE_ARGS}")),
        wf("dyn", &format!("user = \"dynamic\"\n{FILE_ARGS}")),
    );
    let h = start_with(
        &toml,
        RuntimeOptions {
            sandbox: Some(s.sandbox.clone()),
            tmp_base: Some(s.base.clone()),
            ..RuntimeOptions::default()
        },
    )
    .await;
    let nobody = tsbridge_sandbox::JobUser::resolve("nobody").unwrap();
    // Released at once: the file is there to hold on.
    let hold = fixtures().join("params-file.js");
    for workflow in ["fixed", "dyn"] {
        let params = json!({"hold": hold, "who": workflow});
        let v = h.wait(h.submit(workflow, params.clone()).await).await;
        let r = result(&v);
        assert_eq!(r["params"], params, "{r}");
        let (uid, gid) = (&r["file"]["uid"], &r["file"]["gid"]);
        assert_eq!(r["file"]["mode"], 0o600, "{r}");
        if workflow == "fixed" {
            assert_eq!((uid, gid), (&json!(nobody.uid), &json!(nobody.gid)), "{r}");
        } else {
            let uid = uid.as_u64().unwrap();
            assert!((u64::from(FIRST)..=u64::from(LAST)).contains(&uid), "{r}");
            assert_eq!(gid, &json!(uid), "{r}");
        }
    }
    h.rt.shutdown(Duration::from_secs(5)).await;
}
