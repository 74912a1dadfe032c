//! Service routes: liveness, readiness, the configured workflows, metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tsbridge_proto::ErrorType;
use tsbridge_proto::api::{ApiErrorBody, Success};
use tsbridge_proto::service::{Readiness, WorkflowList};

use crate::errors::ApiError;
use crate::routes::ok;
use crate::state::AppState;

/// `GET /healthz` `data`.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `"ok"`.
    pub status: String,
}

/// Liveness: the process answers. Needs no token.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    security(()),
    responses((status = 200, description = "Alive", body = crate::openapi::HealthEnvelope))
)]
pub async fn healthz() -> Json<Success<Health>> {
    ok(Health {
        status: "ok".to_owned(),
    })
}

/// `GET /readyz` when not ready: the failure shape, with the readiness in
/// `data` too.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotReady {
    pub success: bool,
    pub error: ApiErrorBody,
    pub data: Readiness,
}

/// Readiness: store, isolation mechanisms, each workflow. 503 when not ready.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::ReadinessEnvelope),
        (status = 503, description = "Not ready", body = NotReady),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.backend().readiness().await;
    if readiness.ready {
        return ok(readiness).into_response();
    }
    let why = if readiness.store != "ok" {
        format!("not ready: store {}", readiness.store)
    } else if state.shutdown_token().is_cancelled() {
        "not ready: shutting down".to_owned()
    } else {
        "not ready".to_owned()
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(NotReady {
            success: false,
            error: ApiErrorBody {
                kind: ErrorType::Unavailable,
                message: why,
                details: None,
            },
            data: readiness,
        }),
    )
        .into_response()
}

/// The configured workflows and their parameter schemas.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    responses((status = 200, description = "The workflows", body = crate::openapi::WorkflowsEnvelope))
)]
pub async fn workflows(State(state): State<AppState>) -> Json<Success<WorkflowList>> {
    ok(WorkflowList {
        workflows: state.backend().workflows(),
    })
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 503, description = "No metrics recorder installed", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = state.metrics() else {
        return Err(ApiError::new(
            ErrorType::Unavailable,
            "metrics are not enabled in this process",
        ));
    };
    crate::metrics::export_stats(&state.backend().stats());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}
