//! SPEC conformance of the runtime: host secrets are masked in everything a
//! job leaves (spawn and pool), a death by signal names the signal,
//! `limits.cpu_time` ends a busy job with `cpu_limit`, every job gets the
//! open-files rlimit, and path parameters may name the workflow's
//! `limits.read`/`limits.write` entries.

use crate::common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use tsbridge_proto::api::{JobOptions, JobView};
use tsbridge_proto::{EndReason, ErrorType, JobId, JobState};
use tsbridge_runtime::{JobStore, Runtime, RuntimeOptions};
use tsbridge_sandbox::{Sandbox, SandboxConfig};

const SECRET: &str = "s3cr3t-host-value-0123";
const TOKEN: &str = "literal-server-token-4567";

fn probe(name: &str, extra: &str) -> String {
    format!(
        "[workflows.{name}]\nroot = \"{}\"\nscript = \"probe.js\"\nruntime = \"node\"\n{extra}\n",
        fixtures().display()
    )
}

async fn events_json(rt: &Runtime, id: JobId) -> String {
    let events = rt.events_after(id, 0).await.expect("events");
    serde_json::to_string(&events).expect("json")
}

fn assert_masked(what: &str, text: &str, secret: &str) {
    assert!(!text.contains(secret), "{what} shows the secret: {text}");
    assert!(
        text.contains("[REDACTED]"),
        "{what} has no [REDACTED]: {text}"
    );
}

#[tokio::test]
async fn host_secrets_and_server_tokens_are_masked_in_output_result_and_events() {
    // SAFETY: set before the runtime (or any other thread) reads the env;
    // nextest runs this test in a process of its own.
    unsafe { std::env::set_var("CONFORMANCE_API_KEY", SECRET) };
    let toml = format!("[server]\ntokens = [\"{TOKEN}\"]\n\n{}", probe("p", ""));
    let h = start(&toml).await;

    for secret in [SECRET, TOKEN] {
        let id = h.submit("p", json!({"say": secret})).await;
        let v = h.wait(id).await;
        assert_eq!(v.state, JobState::Succeeded, "{v:?}");
        assert_eq!(v.result, Some(json!({"said": "[REDACTED]"})));
        assert!(v.output.stdout.contains("plain [REDACTED]"), "{v:?}");
        assert!(v.output.stderr.contains("err [REDACTED]"), "{v:?}");
        assert_masked("the job", &serde_json::to_string(&v).unwrap(), secret);
        let events = events_json(&h.rt, id).await;
        assert_masked("the events", &events, secret);
        for kind in ["stdout", "stderr", "log", "progress", "result"] {
            assert!(
                events.contains(&format!("\"type\":\"{kind}\"")),
                "no {kind} event: {events}"
            );
        }

        // A failing job: the stderr tail in the error is masked too.
        let id = h.submit("p", json!({"say": secret, "exit": 3})).await;
        let v = h.wait(id).await;
        assert_eq!(v.state, JobState::Failed, "{v:?}");
        assert!(v.error.is_some(), "{v:?}");
        assert_masked(
            "the failed job",
            &serde_json::to_string(&v).unwrap(),
            secret,
        );
    }
}

#[tokio::test]
async fn host_secrets_are_masked_in_pool_mode() {
    // SAFETY: as above.
    unsafe { std::env::set_var("CONFORMANCE_SECRET", SECRET) };
    let toml = format!(
        "[workflows.pooled]\nroot = \"{}\"\nscript = \"probe-handler.mjs\"\nruntime = \"node\"\nmode = \"pool\"\n\
         pool = {{ min = 1, max = 1 }}\n",
        fixtures().display()
    );
    let h = start(&toml).await;
    assert_eq!(h.rt.availability("pooled"), Some(Ok(())));
    let id = h.submit("pooled", json!({"say": SECRET})).await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.result, Some(json!({"said": "[REDACTED]"})));
    let events = events_json(&h.rt, id).await;
    assert_masked("the pooled events", &events, SECRET);
    assert!(events.contains("log [REDACTED]"), "{events}");
    assert!(events.contains("progress [REDACTED]"), "{events}");

    let id = h
        .submit("pooled", json!({"say": SECRET, "throw": true}))
        .await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    let error = v.error.as_ref().expect("error");
    assert!(error.message.contains("boom [REDACTED]"), "{error:?}");
    assert_masked(
        "the failed pooled job",
        &serde_json::to_string(&v).unwrap(),
        SECRET,
    );
}

#[tokio::test]
async fn a_death_by_signal_names_the_signal() {
    let h = start(&workflow("job", "")).await;
    let counter = h.path("counter");
    let id = h
        .submit("job", json!({"failTimes": 1, "counter": counter}))
        .await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::Signaled));
    assert_eq!(v.signal, Some(9));
    assert_eq!(v.signal_name(), Some("SIGKILL"));
    let error = v.error.as_ref().expect("error");
    assert_eq!(error.kind, ErrorType::ExecutionError);
    assert!(
        error.message.contains("killed by signal SIGKILL (9)"),
        "{error:?}"
    );
    let wire = serde_json::to_value(&v).unwrap();
    assert_eq!(wire["signal"], 9);
    assert_eq!(wire["signalName"], "SIGKILL");
    assert_eq!(wire["attempts"][0]["signalName"], "SIGKILL");
}

/// A runtime with the host sandbox, or `None` (said) where there is none.
/// The sandbox's parent cgroups go when the [`OwnParent`] drops: shut the
/// runtime down first.
async fn start_sandboxed(toml: &str) -> Option<(Runtime, tempfile::TempDir, OwnParent)> {
    let sandbox = match Sandbox::new(SandboxConfig {
        cgroup_parent_name: format!("tsbridge-conf-{}", std::process::id()),
        ..SandboxConfig::default()
    }) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("SKIP: no sandbox on this host: {e}");
            return None;
        }
    };
    let parent = OwnParent(sandbox.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = RuntimeOptions {
        sandbox: Some(sandbox),
        ..RuntimeOptions::default()
    };
    let rt = Runtime::start(config(toml), open_store(dir.path()).await, opts)
        .await
        .expect("start");
    Some((rt, dir, parent))
}

async fn run(rt: &Runtime, workflow: &str, params: Value) -> JobView {
    let s = rt
        .submit(workflow, params, Default::default())
        .await
        .expect("submit");
    tokio::time::timeout(SOON, rt.wait(s.job_id))
        .await
        .expect("in time")
        .expect("wait")
}

#[tokio::test]
async fn cpu_time_ends_a_busy_loop_with_cpu_limit() {
    let Some((rt, _dir, _parent)) =
        start_sandboxed(&probe("busy", "limits = { cpu_time = \"1s\" }")).await
    else {
        return;
    };
    assert_eq!(
        rt.availability("busy"),
        Some(Ok(())),
        "rlimits need no cgroup"
    );
    let v = run(&rt, "busy", json!({"busy": true})).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::CpuLimit), "{v:?}");
    assert_eq!(
        v.error.as_ref().map(|e| e.kind),
        Some(ErrorType::ResourceLimitError),
        "{v:?}"
    );
    rt.shutdown(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn every_job_gets_the_open_files_rlimit_and_the_configured_ones() {
    let toml = format!(
        "{}{}",
        probe("plain", ""),
        probe(
            "limited",
            "limits = { open_files = 256, file_size = \"1MiB\" }"
        )
    );
    let Some((rt, _dir, _parent)) = start_sandboxed(&toml).await else {
        return;
    };
    let v = run(&rt, "plain", json!({"limits": true})).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let r = v.result.expect("result");
    assert_eq!(r["openFiles"], json!(["4096", "4096"]), "{r}");

    assert_eq!(rt.availability("limited"), Some(Ok(())));
    let v = run(&rt, "limited", json!({"limits": true})).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let r = v.result.expect("result");
    assert_eq!(r["openFiles"], json!(["256", "256"]), "{r}");
    assert_eq!(r["fileSize"], json!(["1048576", "1048576"]), "{r}");
    rt.shutdown(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn path_params_may_name_read_and_write_entries() {
    let outside = tempfile::tempdir().expect("tempdir");
    let base = outside.path().canonicalize().expect("canonical");
    for d in ["data", "data-evil", "ro"] {
        std::fs::create_dir(base.join(d)).expect("mkdir");
    }
    std::fs::write(base.join("ro/in.csv"), "a\n").expect("write");
    std::os::unix::fs::symlink("/etc", base.join("data/link")).expect("symlink");
    let extra = format!(
        "path_params = [\"p\"]\nlimits = {{ read = [\"{}\"], write = [\"{}\"], degraded = true }}",
        base.join("ro").display(),
        base.join("data").display()
    );
    let h = start(&workflow("paths", &extra)).await;
    assert_eq!(h.rt.availability("paths"), Some(Ok(())));

    let ok = [
        "job.js".to_owned(),
        base.join("ro/in.csv").display().to_string(),
        base.join("data").display().to_string(),
        base.join("data/new/out.json").display().to_string(),
    ];
    for p in ok {
        let id = h.submit("paths", json!({"p": p})).await;
        assert_eq!(h.wait(id).await.state, JobState::Succeeded, "{p}");
    }
    let refused = [
        base.join("data-evil/x").display().to_string(),
        base.join("data/link/passwd").display().to_string(),
        base.join("data/../data-evil").display().to_string(),
        base.join("ro-evil").display().to_string(),
        "/etc/passwd".to_owned(),
    ];
    for p in refused {
        let e =
            h.rt.submit("paths", json!({"p": p}), Default::default())
                .await
                .expect_err("outside every allowed root");
        assert_eq!(e.error_type(), ErrorType::SecurityError, "{p}: {e}");
    }
}

async fn run_opts(rt: &Runtime, workflow: &str, params: Value, opts: JobOptions) -> JobView {
    let s = rt.submit(workflow, params, opts).await.expect("submit");
    tokio::time::timeout(SOON, rt.wait(s.job_id))
        .await
        .expect("in time")
        .expect("wait")
}

fn memory(m: &str) -> JobOptions {
    JobOptions {
        memory: Some(m.parse().expect("size")),
        ..JobOptions::default()
    }
}

/// SPEC §4: a request may lower the workflow's memory limit, never raise it.
#[tokio::test]
async fn a_request_lowers_the_memory_limit_but_never_raises_it() {
    let Some((rt, _dir, _parent)) = start_sandboxed(&probe(
        "mem",
        "limits = { memory = \"384MiB\", degraded = true }",
    ))
    .await
    else {
        return;
    };
    // 128 MiB fit the workflow's own 384 MiB.
    let v = run(&rt, "mem", json!({"allocMiB": 128})).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    assert_eq!(v.result, Some(json!({"allocated": 128})));

    // The same job with the request's 48 MiB hits the limit.
    let v = run_opts(&rt, "mem", json!({"allocMiB": 128}), memory("48MiB")).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::MemoryLimit), "{v:?}");
    assert_eq!(
        v.error.as_ref().map(|e| e.kind),
        Some(ErrorType::ResourceLimitError)
    );

    // Asking for more than the config's 384 MiB changes nothing: 640 MiB
    // still ends at the workflow's limit.
    let v = run_opts(&rt, "mem", json!({"allocMiB": 640}), memory("4GiB")).await;
    assert_eq!(v.reason, Some(EndReason::MemoryLimit), "{v:?}");
    rt.shutdown(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn request_options_that_cannot_apply_are_refused_and_store_nothing() {
    let h = start(&format!(
        "{}[workflows.pooled]\nroot = \"{}\"\nscript = \"handler.mjs\"\nruntime = \"node\"\nmode = \"pool\"\npool = {{ min = 1, max = 1 }}\nlimits = {{ memory = \"256MiB\", degraded = true }}\nenv = {{ request = [\"JOB_MODE\"] }}\n",
        probe("mem", "limits = { memory = \"384MiB\", degraded = true }"),
        fixtures().display()
    ))
    .await;
    let refused = |r: Result<tsbridge_runtime::Submitted, tsbridge_runtime::RuntimeError>| {
        let e = r.expect_err("refused");
        assert_eq!(e.error_type(), ErrorType::ValidationError, "{e}");
        e.to_string()
    };
    // A bare number is bytes: 512 is almost surely a unit mistake.
    let e = refused(h.rt.submit("mem", json!({}), memory("512")).await);
    assert!(e.contains("at least 1MiB"), "{e}");
    // A pool's warm workers share the config's limit: it cannot be lowered.
    let e = refused(h.rt.submit("pooled", json!({}), memory("64MiB")).await);
    assert!(e.contains("pool workflow pooled"), "{e}");
    // Nor their environment (even a name the workflow allows).
    let with_env = JobOptions {
        env: Some([("JOB_MODE".to_owned(), "fast".to_owned())].into()),
        ..JobOptions::default()
    };
    let e = refused(h.rt.submit("pooled", json!({}), with_env).await);
    assert!(e.contains("env cannot be set per job"), "{e}");
    let jobs = h.rt.list(Default::default()).await.expect("list");
    assert!(jobs.jobs.is_empty(), "nothing stored: {:?}", jobs.jobs);

    // Its own limit or more is no change, and accepted.
    let s =
        h.rt.submit("pooled", json!({"value": 1}), memory("1GiB"))
            .await
            .expect("accepted");
    let v = tokio::time::timeout(SOON, h.rt.wait(s.job_id))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
}

/// SPEC §5: a path parameter is resolved against the workflow root, and the
/// child gets the path that was checked (canonical, absolute), never a
/// string it would resolve itself; a symlink swapped while the job was
/// queued is caught by the check before the spawn, and nothing runs.
#[tokio::test]
async fn path_parameters_reach_the_child_as_checked_and_are_checked_again_at_spawn() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().canonicalize().unwrap();
    for f in ["probe.js", "job.js"] {
        std::fs::copy(fixtures().join(f), root_path.join(f)).unwrap();
    }
    std::fs::create_dir(root_path.join("data")).unwrap();
    std::fs::write(root_path.join("data/real.txt"), "inside").unwrap();
    std::os::unix::fs::symlink("real.txt", root_path.join("data/link")).unwrap();
    let toml = format!(
        "[defaults]\nconcurrency = 1\n\
         [workflows.blocker]\nroot = \"{r}\"\nscript = \"job.js\"\nruntime = \"node\"\n\
         [workflows.echo]\nroot = \"{r}\"\nscript = \"probe.js\"\nruntime = \"node\"\npath_params = [\"inputPath\"]\ncwd = \"data\"\n",
        r = root_path.display()
    );
    let h = start(&toml).await;

    // A relative path (resolved against the root, not the cwd `data`), and
    // a symlink: the child gets the canonical path of the file checked.
    let id = h
        .submit(
            "echo",
            json!({"echoParams": true, "inputPath": "data/link"}),
        )
        .await;
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    let got = v.result.as_ref().unwrap()["inputPath"].clone();
    assert_eq!(
        got,
        json!(root_path.join("data/real.txt").display().to_string())
    );
    // The job keeps the client's own string (no host paths in answers).
    let stored = h.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(stored.params["inputPath"], "data/link");

    // Swapped while queued behind a running job: caught before the spawn.
    let blocker = h.submit("blocker", json!({"hang": true})).await;
    h.until_state(blocker, JobState::Running).await;
    let id = h
        .submit(
            "echo",
            json!({"echoParams": true, "inputPath": "data/link"}),
        )
        .await;
    std::fs::remove_file(root_path.join("data/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root_path.join("data/link")).unwrap();
    h.rt.cancel(blocker).await.expect("cancel the blocker");
    let v = h.wait(id).await;
    assert_eq!(v.state, JobState::Failed, "{v:?}");
    assert_eq!(v.reason, Some(EndReason::SpawnFailure), "{v:?}");
    assert_eq!(v.result, None, "nothing ran");
    let message = &v.error.as_ref().expect("error").message;
    assert!(message.contains("outside"), "{message}");
    assert!(
        !message.contains(&root_path.display().to_string()),
        "no host path: {message}"
    );
}
