//! The route handlers, one module per family: workflow runs (execute and
//! batch), jobs (submit, get, list, cancel), event streams (SSE and
//! WebSocket) and the service routes (health, readiness, workflows, metrics).

pub mod jobs;
pub mod sse;
pub mod system;
pub mod workflow;
pub mod ws;

use axum::Json;
use axum::http::{Method, Uri};
use tsbridge_proto::api::Success;

use crate::errors::ApiError;

/// `{"success": true, "data": ...}`.
pub(crate) fn ok<T>(data: T) -> Json<Success<T>> {
    Json(Success::new(data))
}

/// Any path no route matches.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}
