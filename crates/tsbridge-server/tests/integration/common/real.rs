//! A real runtime (tsbridge-runtime, SQLite store in a temp dir, node
//! children running `tests/fixtures/work.js`) behind the server.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tsbridge_runtime::{Config, Runtime, RuntimeOptions, SqliteStore};
use tsbridge_server::{AppState, ServerSettings};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The default workflows: `work` (any params; `inputPath` is a path
/// parameter; `WORK_MODE` may be set by a request), `typed` (params must
/// have an integer `n`), `limited` (a memory limit this sandbox-less runtime
/// cannot enforce: unavailable).
pub fn workflows() -> String {
    let root = fixtures().display().to_string();
    format!(
        r#"
[workflows.work]
root = "{root}"
script = "work.js"
runtime = "node"
path_params = ["inputPath"]
env = {{ request = ["WORK_MODE"] }}

[workflows.typed]
root = "{root}"
script = "work.js"
runtime = "node"
params_schema = {{ type = "object", properties = {{ n = {{ type = "integer" }} }}, required = ["n"] }}

[workflows.limited]
root = "{root}"
script = "work.js"
runtime = "node"
limits = {{ memory = "64MiB" }}
"#
    )
}

pub struct Real {
    pub rt: Runtime,
    pub state: AppState,
    pub dir: tempfile::TempDir,
}

/// Starts a runtime with `head` (e.g. `[server]`/`[defaults]` tables) and
/// the default workflows, and a server state from its config.
pub async fn real(head: &str) -> Real {
    real_with(head, |_| {}).await
}

pub async fn real_with(head: &str, tweak: impl FnOnce(&mut ServerSettings)) -> Real {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(head, dir.path());
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}/jobs.db", dir.path().display()))
            .await
            .expect("open store"),
    );
    let rt = Runtime::start(config.clone(), store, RuntimeOptions::default())
        .await
        .expect("runtime starts");
    let state = state_for(&rt, &config, tweak);
    Real { rt, state, dir }
}

/// The config of `head` and the default workflows, relative to `dir`.
pub fn config(head: &str, dir: &Path) -> Arc<Config> {
    let toml = format!("{head}\n{}", workflows());
    match Config::parse(&toml, dir) {
        Ok(c) => Arc::new(c),
        Err(issues) => panic!("test config invalid: {issues:?}"),
    }
}

/// A server state serving `rt` with the settings of `config` (a 5 s
/// keep-alive), as `tweak` changes them.
pub fn state_for(
    rt: &Runtime,
    config: &Config,
    tweak: impl FnOnce(&mut ServerSettings),
) -> AppState {
    let mut settings = ServerSettings::from_config(&config.server);
    settings.keepalive = std::time::Duration::from_secs(5);
    tweak(&mut settings);
    let auth = tsbridge_server::Auth::resolve(&settings.tokens).expect("tokens");
    AppState::with_auth(Arc::new(rt.clone()), settings, auth)
}
