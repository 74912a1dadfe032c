//! The state every handler shares: the backend, the server settings, the
//! resolved tokens, the metrics handle and the shutdown signal that ends
//! long-lived streams.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, TokenSource};
use crate::backend::Backend;
use crate::errors::AuthError;

/// The `[server]` settings the API uses, plus its own tunables.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub tokens: Vec<TokenSource>,
    /// Larger request bodies get 413 `PayloadTooLarge`.
    pub max_body: usize,
    /// How long running jobs may finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// How many items of one batch run at once.
    pub batch_concurrency: usize,
    /// Dev mode: `InternalError` bodies show their message and details.
    pub dev: bool,
    /// Messages queued for one WebSocket client.
    pub ws_send_buffer: usize,
    /// How long that queue may stay full before the client counts as too
    /// slow and is disconnected.
    pub ws_slow_after: Duration,
    /// Interval of SSE keep-alive comments and WebSocket pings.
    pub keepalive: Duration,
    /// How long after `drain_timeout` the server waits for open requests
    /// before it stops anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            max_body: 1 << 20,
            drain_timeout: Duration::ZERO,
            batch_concurrency: 4,
            dev: false,
            ws_send_buffer: 256,
            ws_slow_after: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Cheap to clone; one per server.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    settings: ServerSettings,
    auth: Auth,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.inner.settings)
            .field("auth", &self.inner.auth)
            .field("metrics", &self.inner.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Resolves the tokens (reading `env:NAME` now) and builds the state.
    pub fn new(backend: Arc<dyn Backend>, settings: ServerSettings) -> Result<Self, AuthError> {
        let auth = Auth::resolve(&settings.tokens)?;
        Ok(Self::with_auth(backend, settings, auth))
    }

    /// Builds the state with already-resolved tokens.
    pub fn with_auth(backend: Arc<dyn Backend>, settings: ServerSettings, auth: Auth) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                settings,
                auth,
                metrics: None,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Serves `/metrics` from this handle (see [`crate::metrics::install_recorder`]).
    /// Call before cloning the state.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(handle);
            self
        } else {
            Self {
                inner: Arc::new(Inner {
                    backend: self.inner.backend.clone(),
                    settings: self.inner.settings.clone(),
                    auth: self.inner.auth.clone(),
                    metrics: Some(handle),
                    shutdown: self.inner.shutdown.clone(),
                }),
            }
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.inner.backend.clone()
    }

    pub fn settings(&self) -> &ServerSettings {
        &self.inner.settings
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    /// Cancelled when the server begins to shut down: streams end then.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}
