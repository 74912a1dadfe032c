//! The HTTP, WebSocket and SSE API of tsbridge (SPEC §8): [`router`] builds
//! the axum app over an [`AppState`]; [`serve`] runs it on a listener with a
//! graceful, bounded shutdown. The server talks to the job runtime only
//! through [`Backend`] (implemented for `tsbridge_runtime::Runtime`).

pub mod auth;
pub mod backend;
pub mod errors;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod runtime_backend;
pub mod state;

use std::future::{Future, IntoFuture};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;
use tsbridge_proto::ErrorType;

pub use auth::{Auth, TokenSource};
pub use backend::{Backend, BackendError, EventFeed, ListQuery, PoolGauges, Stats, Submitted};
pub use errors::{ApiError, AuthError, MetricsError, ServeError};
pub use metrics::install_recorder;
pub use state::{AppState, ServerSettings};

use crate::errors::RevealedError;
use crate::routes::{jobs, sse, system, workflow, ws};

/// The whole API.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings().max_body;
    Router::new()
        .route("/workflow/batch", post(workflow::batch))
        .route("/workflow/{type}/execute", post(workflow::execute))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(sse::job_events))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/workflows", get(system::workflows))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), auth::require_token))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(from_fn_with_state(state.clone(), finish_and_count))
        .with_state(state)
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    // SPEC has no error type for a wrong method: the body says
    // ValidationError, the status says 405.
    let err = ApiError::validation(format!("method {method} is not allowed on {}", uri.path()));
    let mut resp = err.into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

/// The outer middleware: [`finish_errors`], and the HTTP metrics of the
/// answer it gives (one layer, not two, per request).
async fn finish_and_count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use futures::FutureExt;
    let timer = metrics::HttpTimer::start(&req);
    let resp = match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(panic) => panicked(panic.as_ref()),
    };
    let resp = finish_errors(&state, resp);
    timer.record(resp.status());
    resp
}

/// A handler (or the backend under it) that panicked answers 500
/// `InternalError` like any hidden failure: without this, hyper drops the
/// connection and the client gets no answer at all, not the JSON failure
/// body every error has. The panic's message is logged, and shown only in
/// dev mode.
fn panicked(panic: &(dyn std::any::Any + Send)) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    tracing::error!(panic = %what, "a request handler panicked");
    ApiError::internal(format!("a request handler panicked: {what}")).into_response()
}

/// Every error answer is JSON: errors produced below the handlers (the body
/// limit layer, extractor rejections) get the failure body; in dev mode an
/// `InternalError` shows what it hid.
fn finish_errors(state: &AppState, resp: Response) -> Response {
    let status = resp.status();
    if let Some(RevealedError(full)) = resp.extensions().get::<RevealedError>().cloned() {
        if state.settings().dev {
            let (mut parts, _) = resp.into_parts();
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(
                parts,
                Body::from(serde_json::to_vec(&full).unwrap_or_default()),
            );
        }
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorType::PayloadTooLarge,
        StatusCode::UNAUTHORIZED => ErrorType::Unauthorized,
        StatusCode::NOT_FOUND => ErrorType::NotFound,
        s if s.is_server_error() => ErrorType::InternalError,
        _ => ErrorType::ValidationError,
    };
    let message = match kind {
        ErrorType::PayloadTooLarge => {
            "request body is larger than the server accepts (server.max_body)".to_owned()
        }
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    let (parts, _) = resp.into_parts();
    let mut fresh = ApiError::new(kind, message).into_response();
    *fresh.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

/// Serves the API on `listener` until `shutdown` resolves, then shuts down:
/// open streams end, the listener closes, the backend drains running jobs for
/// `drain_timeout`, and open requests get `drain_timeout + shutdown_grace`
/// to finish before the server stops anyway. Refuses a non-loopback listener
/// when no token is configured.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    if !addr.ip().is_loopback() && !state.auth().is_enabled() {
        return Err(ServeError::TokenRequired { addr });
    }
    tracing::info!(%addr, auth = state.auth().is_enabled(), "tsbridge API listening");
    let stop = state.shutdown_token().clone();
    let app = router(state.clone());
    // axum stops on the token alone, and the signal is awaited here rather
    // than inside axum's shutdown (which runs it in a task of its own, so
    // the server could end, with no connection open, between this task's
    // look at the token and its poll of the server: it then returned
    // without draining the runtime). Whatever ends the serving, the runtime
    // is drained below before `serve` returns.
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    tokio::pin!(shutdown);
    let ended = tokio::select! {
        () = &mut shutdown => None,
        () = stop.cancelled() => None,
        r = &mut server => Some(r),
    };
    stop.cancel();
    let settings = state.settings();
    let drain = settings.drain_timeout;
    let bound = drain + settings.shutdown_grace;
    tracing::info!(?drain, "tsbridge API shutting down");
    let backend = state.backend_arc();
    let server_end = async move {
        match ended {
            Some(r) => Ok(r),
            None => tokio::time::timeout(bound, &mut server).await,
        }
    };
    let (served, ()) = tokio::join!(server_end, backend.shutdown(drain));
    match served {
        Ok(r) => r.map_err(ServeError::Io),
        Err(_) => {
            tracing::warn!(
                ?bound,
                "open requests did not finish in time; stopping anyway"
            );
            Ok(())
        }
    }
}
