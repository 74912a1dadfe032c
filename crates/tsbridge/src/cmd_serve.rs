//! `tsbridge serve`: loads the config, sets up the host sandbox (sweeping job
//! cgroups a crashed predecessor left), opens the job store, starts the
//! runtime (crash recovery first) and serves the API until SIGINT/SIGTERM,
//! then drains and exits 0.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tsbridge_process::transpile::TranspileCache;
use tsbridge_runtime::config::StoreConfig;
use tsbridge_runtime::store::{PgStore, SqliteOptions};
use tsbridge_runtime::{Config, JobStore, Runtime, RuntimeOptions, SqliteStore};
use tsbridge_sandbox::{Sandbox, SandboxConfig};
use tsbridge_server::{AppState, Auth, ServerSettings};

use crate::cli::ServeArgs;

pub async fn main(args: ServeArgs) -> Result<ExitCode> {
    // First: a SIGTERM or SIGINT that comes while the server starts (the
    // store, crash recovery, the pools) is kept and shuts it down gracefully
    // once it serves, instead of killing it by the default action with its
    // jobs' cgroups and TMPDIRs left behind.
    let signals = ShutdownSignals::install();
    let bind = match &args.bind {
        Some(b) => Some(
            b.parse::<tsbridge_runtime::config::BindAddr>()
                .map_err(|e| anyhow::anyhow!("--bind: {e}"))?
                .0,
        ),
        None => None,
    };
    let overrides = tsbridge_runtime::config::Overrides { bind };
    let mut config = match Config::load_with(&args.config, &overrides) {
        Ok(c) => c,
        Err(e) => {
            crate::output::note!("tsbridge: {}", crate::cmd_check::config_error(&e));
            return Ok(ExitCode::from(2));
        }
    };
    if args.dev {
        config.server.dev = true;
    }

    // Orphaned descendants of jobs are reparented to us (and reaped), not to PID 1.
    tsbridge_process::init_supervisor().context("cannot set up process supervision")?;
    // Descendants of jobs of a tsbridge that was SIGKILLed (the parent-death
    // signal only ended each job's direct child); the cgroup sweep below
    // catches the rest where cgroups exist.
    let orphans = tsbridge_process::sweep_orphans();
    if orphans > 0 {
        tracing::warn!(
            processes = orphans,
            "killed processes left by a tsbridge that died"
        );
    }
    // Their private TMPDIRs, where the death watchdog could not remove them.
    sweep_stale_tmpdirs();

    let shared_store = is_shared_store(&config.store.url);
    // This node's name in a shared store: stable across restarts when set,
    // so a restarted node takes back its own running jobs at once.
    let node_id = std::env::var("TSBRIDGE_NODE_ID")
        .ok()
        .filter(|n| !n.trim().is_empty());
    if shared_store && node_id.is_none() {
        tracing::warn!(
            "TSBRIDGE_NODE_ID is not set: this node is named hostname-pid, so after a crash its running jobs are taken over only once their lease expired"
        );
    }
    // The store before the sandbox: a second server on a SQLite store in
    // use is refused here (its lock), before its sweep below could kill
    // the running jobs of the first one, whose cgroup parent is named
    // after the same store.
    let (store, store_name): (Arc<dyn JobStore>, Vec<u8>) = if shared_store {
        // The URL may hold a password: not in the message.
        let pg = PgStore::open(&config.store.url)
            .await
            .context("cannot open the PostgreSQL job store (store.url)")?;
        (Arc::new(pg), config.store.url.as_bytes().to_vec())
    } else {
        let sqlite = SqliteStore::open_with(&config.store.url, sqlite_options(&config.store))
            .await
            .with_context(|| format!("cannot open the job store {}", config.store.url))?;
        let name = sqlite_store_name(&config.store.url, sqlite.file());
        (Arc::new(sqlite), name)
    };
    let sandbox = match Sandbox::new(SandboxConfig {
        cgroup_parent_name: cgroup_parent_name(&cgroup_key(
            &store_name,
            shared_store,
            node_id.as_deref(),
        )),
        ..SandboxConfig::default()
    }) {
        Ok(s) => {
            match s.sweep_stale() {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    cgroups = n,
                    "killed and removed job cgroups left by a previous run"
                ),
                Err(e) => tracing::warn!(error = %e, "could not sweep stale job cgroups"),
            }
            // PID namespaces are probed when first needed (a fork-like
            // clone of the server): now if a workflow asks for one, else
            // the table says "not probed yet" (/readyz and `tsbridge
            // check` probe it).
            let caps = if config.workflows.values().any(|w| w.limits.pid_namespace) {
                s.capabilities()
            } else {
                s.capabilities_so_far()
            };
            tracing::info!("isolation on this host:\n{caps}");
            Some(Arc::new(s))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no sandbox on this host: workflows with limits are unavailable unless degraded = true");
            None
        }
    };

    let metrics =
        tsbridge_server::install_recorder().context("cannot install the metrics recorder")?;
    let settings = ServerSettings::from_config(&config.server);
    // Resolve the tokens before anything starts: a token source that names an
    // unset variable is a config error, not an open server.
    let auth = Auth::resolve(&settings.tokens)?;
    let bind = config.server.bind;
    if !bind.ip().is_loopback() && !auth.is_enabled() {
        anyhow::bail!(
            "refusing to serve on {bind} without a token: set [server] tokens (auth is required beyond loopback)"
        );
    }
    let config = Arc::new(config);
    let cgroup_parents = sandbox.clone();
    let runtime = Runtime::start(
        config.clone(),
        store,
        RuntimeOptions {
            sandbox,
            node_id,
            transpile_cache: TranspileCache::new(None)
                .inspect_err(|e| tracing::warn!(error = %e, "no transpile cache: TypeScript runs through tsx"))
                .ok(),
            ..RuntimeOptions::default()
        },
    )
    .await
    .context("cannot start the job runtime")?;
    for wf in runtime.workflows() {
        if wf.status != "available" {
            tracing::warn!(workflow = %wf.name, status = %wf.status, "workflow unavailable on this host");
        }
    }

    let state = AppState::with_auth(Arc::new(runtime), settings, auth).with_metrics(metrics);
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    tsbridge_server::serve(listener, state, signals.recv()).await?;
    // Every job has ended and the runtime's shutdown returned only once
    // their cgroups were removed: leave no empty parent cgroup behind either
    // (a SIGKILLed server's stays, and its next start reuses it).
    if let Some(s) = cgroup_parents
        && let Err(e) = s.remove_parent()
    {
        tracing::warn!(
            error = %e,
            live_job_cgroups = s.live_job_cgroups(),
            "the job cgroups' parent stays"
        );
    }
    tracing::info!("tsbridge stopped");
    Ok(ExitCode::SUCCESS)
}

/// A `postgres://` store, shared by many nodes.
/// The SQLite store's options from `[store]` (defaults where unset).
fn sqlite_options(store: &StoreConfig) -> SqliteOptions {
    let mut o = SqliteOptions::default();
    if let Some(size) = store.wal_restart {
        o.wal_restart = size.bytes();
    }
    o
}

fn is_shared_store(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// What names a SQLite store: `sqlite://` and the canonical path of its
/// file, however the config spells it (a relative path, `..`, a symlink),
/// so that a restart with another spelling finds its predecessor's cgroup
/// parent; the URL of an in-memory store. A store spelt canonically has
/// the name it had when the URL as written was the name.
fn sqlite_store_name(url: &str, file: Option<&Path>) -> Vec<u8> {
    match file {
        Some(f) => [b"sqlite://", f.as_os_str().as_encoded_bytes()].concat(),
        None => url.as_bytes().to_vec(),
    }
}

/// What names this server's cgroup parent: the store (its name), and for a
/// shared store also the node (several nodes of one store may share a
/// host; a node without a stable id gets one of its own per process).
fn cgroup_key(store: &[u8], shared: bool, node_id: Option<&str>) -> Vec<u8> {
    if !shared {
        return store.to_vec();
    }
    let node = match node_id {
        Some(n) => format!("#{n}"),
        None => format!("#pid-{}", std::process::id()),
    };
    [store, node.as_bytes()].concat()
}

/// The parent cgroup of this server's jobs: one per job store, so that a
/// restarted server sweeps exactly what its crashed predecessor left, and two
/// servers with different stores on one host never touch each other's jobs.
fn cgroup_parent_name(key: &[u8]) -> String {
    // FNV-1a: stable across builds and versions (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("tsbridge-{:08x}", h as u32)
}

/// SIGTERM and SIGINT, caught from [`ShutdownSignals::install`] on: one
/// that comes before [`ShutdownSignals::recv`] is polled is kept.
struct ShutdownSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl ShutdownSignals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => {
                tracing::error!("cannot install signal handlers; stop tsbridge with SIGKILL");
                Self(None)
            }
        }
    }

    /// Resolves on the first SIGTERM or SIGINT since [`Self::install`].
    async fn recv(self) {
        let Some((mut term, mut int)) = self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

/// Removes the private TMPDIRs (in the system's temp dir) of jobs of
/// tsbridge processes that are gone, where their death watchdog could not
/// (it was killed too, or gave up): at the start of `serve` and of `run`.
/// Only names `tsbridge-<pid>.<start time>-<key>` whose owner is not
/// running, owned by this user, without following symlinks.
pub(crate) fn sweep_stale_tmpdirs() {
    let tmpdirs = tsbridge_process::sweep_stale_tmp(&std::env::temp_dir());
    if tmpdirs > 0 {
        tracing::warn!(
            dirs = tmpdirs,
            "removed job TMPDIRs left by a tsbridge that died"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_store_takes_the_configured_wal_restart() {
        let mut store = StoreConfig {
            url: "sqlite:///srv/a.db".into(),
            key_file: None,
            wal_restart: None,
        };
        assert_eq!(sqlite_options(&store), SqliteOptions::default());
        store.wal_restart = Some(tsbridge_proto::ByteSize(256 << 20));
        assert_eq!(sqlite_options(&store).wal_restart, 256 << 20);
    }

    #[test]
    fn cgroup_parent_is_per_store_and_stable() {
        let a = cgroup_parent_name(b"sqlite:///srv/a.db");
        assert_eq!(a, cgroup_parent_name(b"sqlite:///srv/a.db"));
        assert_ne!(a, cgroup_parent_name(b"sqlite:///srv/b.db"));
        assert!(a.starts_with("tsbridge-") && a.len() == "tsbridge-".len() + 8);
    }

    #[test]
    fn nodes_of_a_shared_store_have_their_own_cgroup_parent() {
        let url = "postgres://db/tsbridge";
        assert!(is_shared_store(url) && !is_shared_store("sqlite:///srv/a.db"));
        let a = cgroup_key(url.as_bytes(), true, Some("a"));
        assert_eq!(a, b"postgres://db/tsbridge#a");
        assert_ne!(a, cgroup_key(url.as_bytes(), true, Some("b")));
        assert_ne!(a, cgroup_key(url.as_bytes(), true, None));
        assert_eq!(
            cgroup_key(b"sqlite:///x.db", false, Some("a")),
            b"sqlite:///x.db"
        );
    }

    /// Every spelling of one SQLite store file (`..`, a symlinked folder,
    /// the canonical path) names one parent cgroup, the one its canonical
    /// spelling always named; another file names another.
    #[tokio::test]
    async fn every_spelling_of_a_sqlite_store_names_one_cgroup_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canonical");
        std::fs::create_dir(real.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink(&real, real.join("link")).expect("symlink");
        let canonical = format!("sqlite://{}/jobs.db", real.display());
        let mut names = Vec::new();
        for url in [
            canonical.clone(),
            format!("sqlite://{}/sub/../jobs.db", real.display()),
            format!("sqlite://{}/link/jobs.db", real.display()),
        ] {
            let store = SqliteStore::open(&url).await.expect("open");
            names.push(cgroup_parent_name(&sqlite_store_name(&url, store.file())));
            store.close().await;
        }
        assert_eq!(names[0], cgroup_parent_name(canonical.as_bytes()));
        assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
        let other = format!("sqlite://{}/other.db", real.display());
        let store = SqliteStore::open(&other).await.expect("open");
        assert_ne!(
            cgroup_parent_name(&sqlite_store_name(&other, store.file())),
            names[0]
        );
        store.close().await;
        let memory = SqliteStore::open("sqlite::memory:").await.expect("memory");
        assert_eq!(
            sqlite_store_name("sqlite::memory:", memory.file()),
            b"sqlite::memory:"
        );
        memory.close().await;
    }
}
