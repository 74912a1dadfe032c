//! Shared set-up of the runtime's integration tests: a config whose
//! workflows run `tests/fixtures/job.js` with node, a SQLite store in a temp
//! dir, and helpers that await conditions (never fixed sleeps).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tsbridge_proto::api::{JobOptions, JobView};
use tsbridge_proto::{EventData, JobEvent, JobId, JobState};
use tsbridge_runtime::{Config, Runtime, RuntimeOptions, SqliteStore};
use tsbridge_sandbox::Sandbox;

/// Generous bound for anything that should happen "soon" on a loaded machine.
pub const SOON: Duration = Duration::from_secs(60);

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub struct Harness {
    pub rt: Runtime,
    pub store: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
    pub config: Arc<Config>,
}

/// The TOML of a workflow named `name` running job.js.
pub fn workflow(name: &str, extra: &str) -> String {
    format!(
        "[workflows.{name}]\nroot = \"{}\"\nscript = \"job.js\"\nruntime = \"node\"\n{extra}\n",
        fixtures().display()
    )
}

pub fn config(toml: &str) -> Arc<Config> {
    match Config::parse(toml, &fixtures()) {
        Ok(c) => Arc::new(c),
        Err(issues) => panic!("test config invalid: {issues:?}"),
    }
}

pub async fn open_store(dir: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(&format!("sqlite://{}/jobs.db", dir.display()))
            .await
            .expect("open store"),
    )
}

pub async fn start(toml: &str) -> Harness {
    start_with(toml, RuntimeOptions::default()).await
}

/// The jobs' private TMPDIRs are made in the test's own directory unless
/// `opts` names a base: a test that ends without shutting its runtime down
/// ends its pool workers' supervision with the test's tokio runtime (the
/// workers die with the test process), and their TMPDIRs went to the
/// machine's /tmp for good.
pub async fn start_with(toml: &str, mut opts: RuntimeOptions) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    opts.tmp_base
        .get_or_insert_with(|| dir.path().to_path_buf());
    let store = open_store(dir.path()).await;
    let config = config(toml);
    let rt = Runtime::start(config.clone(), store.clone(), opts)
        .await
        .expect("runtime starts");
    Harness {
        rt,
        store,
        dir,
        config,
    }
}

impl Harness {
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub async fn submit(&self, workflow: &str, params: Value) -> JobId {
        self.submit_opts(workflow, params, JobOptions::default())
            .await
    }

    pub async fn submit_opts(&self, workflow: &str, params: Value, opts: JobOptions) -> JobId {
        self.rt
            .submit(workflow, params, opts)
            .await
            .expect("submit accepted")
            .job_id
    }

    pub async fn wait(&self, id: JobId) -> JobView {
        tokio::time::timeout(SOON, self.rt.wait(id))
            .await
            .expect("job finishes in time")
            .expect("wait")
    }

    /// Waits until the job is in `state`.
    pub async fn until_state(&self, id: JobId, state: JobState) -> JobView {
        let deadline = tokio::time::Instant::now() + SOON;
        let mut sub = self.rt.subscribe(id);
        loop {
            let v = self.rt.get(id).await.expect("get");
            if v.state == state {
                return v;
            }
            assert!(
                !v.state.is_terminal(),
                "job ended as {:?} before reaching {state:?}",
                v.state
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never reached {state:?}"
            );
            // Wake on the next event (or re-check periodically if the subscription ended).
            match tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => sub = self.rt.subscribe(id),
            }
        }
    }

    /// Lines of a log file written by job.js.
    pub fn log_lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Waits (bounded by [`SOON`]) until `found` gives something.
pub async fn until<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(t) = found() {
            return t;
        }
        assert!(start.elapsed() < SOON, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes one from `n` if it is above 0 (a test store's "fail the next N"):
/// whether it did.
pub fn take(n: &std::sync::atomic::AtomicU32) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    n.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
}

/// The text an event carries (a log or progress message, an output line,
/// the result as JSON); none for a state change. What a secret could leak
/// through.
pub fn event_text(e: &JobEvent) -> Option<String> {
    match &e.data {
        EventData::Log { message, .. } => Some(message.clone()),
        EventData::Progress(p) => Some(p.message.clone()),
        EventData::Stdout { line } | EventData::Stderr { line } => Some(line.clone()),
        EventData::Result { value } => Some(value.to_string()),
        EventData::State { .. } => None,
    }
}

/// The parent cgroup(s) of a test's own [`Sandbox`], removed when this is
/// dropped, so that a test leaves nothing in cgroupfs (a sandbox makes its
/// parent at once, a skipped test's too). Shut the runtime down before it
/// drops: a returned shutdown has removed the job cgroups. A parent that
/// cannot go fails the test (unless it is failing already).
pub struct OwnParent(pub Arc<Sandbox>);

impl Drop for OwnParent {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_parent()
            && !std::thread::panicking()
        {
            panic!(
                "the test's parent cgroup stays ({:?}): {e}",
                self.0.cgroup_parents()
            );
        }
    }
}

/// What the tests of jobs with other users need: root (else `None`, said),
/// a sandbox with its own cgroup parent (removed at the end), and a folder
/// of files with a TMPDIR base the users can traverse (0755, as /tmp).
pub struct UserSetup {
    pub sandbox: Arc<Sandbox>,
    pub _parent: OwnParent,
    pub files: tempfile::TempDir,
    pub base: PathBuf,
}

pub fn user_setup(tag: &str) -> Option<UserSetup> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root, to run jobs as other users");
        return None;
    }
    let sandbox = Arc::new(
        Sandbox::new(tsbridge_sandbox::SandboxConfig {
            cgroup_parent_name: format!("tsbridge-{tag}-{}", std::process::id()),
            ..tsbridge_sandbox::SandboxConfig::default()
        })
        .expect("sandbox"),
    );
    let _parent = OwnParent(sandbox.clone());
    let files = tempfile::tempdir().expect("tempdir");
    let base = files.path().join("tmp");
    std::fs::create_dir(&base).expect("mkdir");
    for d in [files.path(), base.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    Some(UserSetup {
        sandbox,
        _parent,
        files,
        base,
    })
}
