//! Jobs with their own user (SPEC §5, issue #5), through the whole runtime
//! on a root tsbridge: a spawned job of a workflow with `user = "nobody"`
//! runs as nobody with no supplementary group and every capability set
//! empty; it cannot read the store nor a 0600 root-owned file, cannot write
//! another running job's TMPDIR (a job of another user) nor the pool-host
//! folder every pool worker loads its host script from; it writes its own
//! TMPDIR and a `limits.write` folder the operator gave it. A pooled job's
//! worker runs as its workflow's user too, can read the host script but
//! not write its folder, and the job completes with its result. Before
//! jobs had users, every one of these ran as root and succeeded.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tsbridge_proto::JobState;
use tsbridge_runtime::RuntimeOptions;
use tsbridge_sandbox::{JobUser, Sandbox};

/// The uid and gid of the workflow that holds its TMPDIR open for others
/// to attack (no passwd entry needed: the group is given).
const OTHER: (u32, u32) = (1500, 1500);

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// The `tsbridge-*` folder of `base` owned by `uid`, once there is one.
async fn tmpdir_of(base: &Path, uid: u32) -> PathBuf {
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir(base).unwrap().flatten().find(|e| {
            e.file_name().to_string_lossy().starts_with("tsbridge-")
                && e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid)
        });
        if let Some(e) = found {
            return e.path();
        }
        assert!(start.elapsed() < SOON, "no TMPDIR of uid {uid} in {base:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn result(v: &tsbridge_proto::api::JobView) -> &Value {
    assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    v.result.as_ref().expect("a result")
}

fn assert_runs_as(r: &Value, user: JobUser) {
    assert_eq!(r["uid"], user.uid, "{r}");
    assert_eq!(r["euid"], user.uid, "{r}");
    assert_eq!(r["gid"], user.gid, "{r}");
    assert_eq!(r["groups"], json!([]), "no supplementary group: {r}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(r["caps"][set], "0000000000000000", "{set}: {r}");
    }
}

/// What every test here needs: root (else `None`, said), the `nobody`
/// user, a sandbox with its own cgroup parent (removed at the end), and a
/// folder of files with a TMPDIR base the users can traverse (as /tmp).
struct Setup {
    nobody: JobUser,
    sandbox: Arc<Sandbox>,
    _parent: OwnParent,
    files: tempfile::TempDir,
    base: PathBuf,
}

fn setup(tag: &str) -> Option<Setup> {
    let UserSetup {
        sandbox,
        _parent,
        files,
        base,
    } = user_setup(tag)?;
    Some(Setup {
        nobody: JobUser::resolve("nobody").expect("a nobody user"),
        sandbox,
        _parent,
        files,
        base,
    })
}

#[tokio::test]
async fn jobs_with_a_user_run_as_it_and_reach_only_what_it_may() {
    let Some(Setup {
        nobody,
        sandbox,
        _parent,
        files,
        base,
    }) = setup("ju")
    else {
        return;
    };

    // What an operator sets up besides: a write-list folder given to the
    // user; and what it must not reach: a 0600 root-owned file in a
    // readable folder.
    let out = files.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let secret = files.path().join("secret.key");
    std::fs::write(&secret, "secret").unwrap();
    mode(&secret, 0o600);

    let f = fixtures();
    let toml = format!(
        "[workflows.hostile]\nroot = \"{f}\"\nscript = \"user-probe.js\"\nruntime = \"node\"\nuser = \"nobody\"\n\n\
         [workflows.writer]\nroot = \"{f}\"\nscript = \"user-probe.js\"\nruntime = \"node\"\nuser = \"nobody\"\n\
         limits = {{ write = [\"{out}\"] }}\n\n\
         [workflows.other]\nroot = \"{f}\"\nscript = \"user-probe.js\"\nruntime = \"node\"\nuser = \"{}:{}\"\n\n\
         [workflows.pooled]\nroot = \"{f}\"\nscript = \"user-handler.mjs\"\nruntime = \"node\"\nuser = \"nobody\"\n\
         mode = \"pool\"\npool = {{ min = 1, max = 1 }}\n",
        OTHER.0,
        OTHER.1,
        f = f.display(),
        out = out.display(),
    );
    let h = start_with(
        &toml,
        RuntimeOptions {
            sandbox: Some(sandbox.clone()),
            tmp_base: Some(base.clone()),
            ..RuntimeOptions::default()
        },
    )
    .await;
    // The store's folder is private, as `tsbridge check` asks of a store
    // beside workflows with users (a store made before 0600 files were).
    let store = h.dir.path().join("jobs.db");
    assert!(store.exists(), "the store is {store:?}");
    mode(h.dir.path(), 0o700);

    // A pooled job: its worker runs as nobody, reads the host script and
    // cannot write beside it.
    let v = h.wait(h.submit("pooled", json!({"tmp": true})).await).await;
    let pooled = result(&v).clone();
    assert_runs_as(&pooled, nobody);
    let host_dir = pooled["hostDir"].as_str().expect("hostDir").to_owned();
    assert_eq!(pooled["write"][&host_dir], "EACCES", "{pooled}");
    assert_eq!(
        pooled["write"][pooled["tmpdir"].as_str().unwrap()],
        "ok",
        "{pooled}"
    );

    // Another user's job, running: its TMPDIR is there to attack.
    let holder = h.submit("other", json!({"hold": 120_000})).await;
    h.until_state(holder, JobState::Running).await;
    let foreign = tmpdir_of(&base, OTHER.0).await;
    assert_eq!(std::fs::metadata(&foreign).unwrap().mode() & 0o777, 0o700);

    let read = [store.display().to_string(), secret.display().to_string()];
    let write = [foreign.display().to_string(), host_dir.clone()];
    let v = h
        .wait(
            h.submit(
                "hostile",
                json!({"read": read, "write": write, "tmp": true}),
            )
            .await,
        )
        .await;
    let r = result(&v);
    assert_runs_as(r, nobody);
    for p in &read {
        assert_eq!(r["read"][p], "EACCES", "read {p}: {r}");
    }
    for d in &write {
        assert_eq!(r["write"][d], "EACCES", "write in {d}: {r}");
    }
    let own = r["tmpdir"].as_str().expect("tmpdir");
    assert_eq!(r["write"][own], "ok", "its own TMPDIR: {r}");
    assert_ne!(Path::new(own), foreign);

    let v = h
        .wait(
            h.submit("writer", json!({"write": [out], "tmp": true}))
                .await,
        )
        .await;
    let r = result(&v);
    // Its Landlock ruleset (the write list) does not grant /proc.
    assert_eq!(
        (&r["uid"], &r["gid"]),
        (&json!(nobody.uid), &json!(nobody.gid)),
        "{r}"
    );
    assert_eq!(r["write"][out.display().to_string()], "ok", "{r}");
    assert_eq!(r["write"][r["tmpdir"].as_str().unwrap()], "ok", "{r}");

    h.rt.cancel(holder).await.expect("cancel");
    h.wait(holder).await;
    h.rt.shutdown(Duration::ZERO).await;
}

/// A TypeScript job of a workflow with a user still starts from the
/// transpile cache: tsbridge's cache is 0700, so the job gets a copy of its
/// bundle in its own TMPDIR (the user's, 0400), and node runs that, with no
/// runner's loader. Before, such a job skipped the cache and ran through tsx.
/// The same for a `dynamic` workflow's job.
#[tokio::test]
async fn a_typescript_job_with_a_user_runs_a_copy_of_its_cached_bundle() {
    /// The one uid of this test's dynamic range.
    const DYN: u32 = 3_910_000_300;
    let Some(Setup {
        nobody,
        sandbox,
        _parent,
        files,
        base,
    }) = setup("jc")
    else {
        return;
    };
    let cache = tsbridge_process::transpile::TranspileCache::new(Some(files.path().join("cache")))
        .expect("cache");

    let f = fixtures();
    let toml = format!(
        "[defaults]\ndynamic_uids = \"{DYN}-{DYN}\"\n\n\
         [workflows.ts]\nroot = \"{f}\"\nscript = \"user-probe.ts\"\nruntime = \"tsx\"\nuser = \"nobody\"\n\n\
         [workflows.tsdyn]\nroot = \"{f}\"\nscript = \"user-probe.ts\"\nruntime = \"tsx\"\nuser = \"dynamic\"\n",
        f = f.display(),
    );
    let h = start_with(
        &toml,
        RuntimeOptions {
            sandbox: Some(sandbox.clone()),
            tmp_base: Some(base.clone()),
            transpile_cache: Some(cache),
            ..RuntimeOptions::default()
        },
    )
    .await;
    // A dynamic uid's job gets its copy as well (given to its leased uid).
    let dynamic = JobUser { uid: DYN, gid: DYN };
    for (wf, user) in [("ts", nobody), ("ts", nobody), ("tsdyn", dynamic)] {
        let v = h.wait(h.submit(wf, json!({"tmp": true})).await).await;
        let r = result(&v);
        assert_runs_as(r, user);
        let argv = r["execArgv"].to_string();
        assert!(!argv.contains("tsx"), "ran through the runner: {r}");
        let main = r["main"].as_str().expect("main");
        let tmpdir = r["tmpdir"].as_str().expect("tmpdir");
        assert!(
            Path::new(main).starts_with(tmpdir),
            "not the TMPDIR's copy of the bundle: {r}"
        );
    }
    h.rt.shutdown(Duration::ZERO).await;
}
