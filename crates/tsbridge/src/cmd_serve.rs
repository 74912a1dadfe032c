//! `tsbridge serve`: loads the config, sets up the host sandbox (sweeping job
//! cgroups a crashed predecessor left), opens the job store, starts the
//! runtime (crash recovery first) and serves the API until SIGINT/SIGTERM,
//! then drains and exits 0.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tsbridge_runtime::{Config, Runtime, RuntimeOptions, SqliteStore};
use tsbridge_sandbox::{Sandbox, SandboxConfig};
use tsbridge_server::{AppState, ServerSettings};

use crate::cli::ServeArgs;

pub async fn main(args: ServeArgs) -> Result<ExitCode> {
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tsbridge: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(bind) = &args.bind {
        config.server.bind = bind
            .parse()
            .with_context(|| format!("--bind {bind:?} is not an address like 127.0.0.1:8787"))?;
    }
    if args.dev {
        config.server.dev = true;
    }

    // Orphaned descendants of jobs are reparented to us (and reaped), not to PID 1.
    tsbridge_process::init_supervisor().context("cannot set up process supervision")?;

    let sandbox = match Sandbox::new(SandboxConfig::default()) {
        Ok(s) => {
            match s.sweep_stale() {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    cgroups = n,
                    "killed and removed job cgroups left by a previous run"
                ),
                Err(e) => tracing::warn!(error = %e, "could not sweep stale job cgroups"),
            }
            tracing::info!("isolation on this host:\n{}", s.capabilities());
            Some(Arc::new(s))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no sandbox on this host: workflows with limits are unavailable unless degraded = true");
            None
        }
    };

    let store = SqliteStore::open(&config.store.url)
        .await
        .with_context(|| format!("cannot open the job store {}", config.store.url))?;
    let metrics =
        tsbridge_server::install_recorder().context("cannot install the metrics recorder")?;
    let settings = ServerSettings::from_config(&config.server);
    let bind = config.server.bind;
    let config = Arc::new(config);
    let runtime = Runtime::start(
        config.clone(),
        Arc::new(store),
        RuntimeOptions {
            sandbox,
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

    let state = AppState::new(Arc::new(runtime), settings)?.with_metrics(metrics);
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    tsbridge_server::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("tsbridge stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop tsbridge with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
