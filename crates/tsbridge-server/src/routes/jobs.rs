//! The job routes: submit without waiting, get one, list, cancel.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tsbridge_proto::JobState;
use tsbridge_proto::api::{JobList, JobView, SubmitRequest, SubmitResponse, Success};

use crate::backend::ListQuery;
use crate::errors::ApiError;
use crate::extract::{ApiJson, job_id};

/// Set on `POST /v1/jobs` answers that name an existing job (idempotency key replay).
pub const IDEMPOTENT_REPLAYED: header::HeaderName =
    header::HeaderName::from_static("idempotent-replayed");
use crate::routes::ok;
use crate::state::AppState;

/// The most jobs one page may hold.
pub const MAX_LIMIT: u32 = 500;

/// Submit a job without waiting: 202 `{jobId, state}`. A repeated
/// `idempotencyKey` answers 202 too, with the existing job (its current
/// state) and `Idempotent-Replayed: true`; the key reused for other work is 409.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = SubmitRequest,
    responses(
        (status = 202, description = "Accepted: a new job", body = crate::openapi::SubmitEnvelope),
        (status = 400, description = "Invalid body or parameters", body = tsbridge_proto::api::Failure),
        (status = 403, description = "A path or env name is refused", body = tsbridge_proto::api::Failure),
        (status = 404, description = "No such workflow", body = tsbridge_proto::api::Failure),
        (status = 409, description = "The idempotencyKey names a job submitted with another workflow, parameters or options", body = tsbridge_proto::api::Failure),
        (status = 429, description = "The queue is full", body = tsbridge_proto::api::Failure),
        (status = 503, description = "Unavailable on this host, or shutting down", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> Result<Response, ApiError> {
    let submitted = state
        .backend()
        .submit(
            &req.workflow,
            req.parameters,
            req.options.unwrap_or_default(),
        )
        .await?;
    // SPEC: 202 either way; a replay of an idempotency key says so in a
    // header (as Stripe's `Idempotent-Replayed`) so clients can tell.
    let mut resp = (
        StatusCode::ACCEPTED,
        ok(SubmitResponse {
            job_id: submitted.job_id,
            state: submitted.state,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", submitted.job_id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if submitted.existing {
        resp.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// One job.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job", body = crate::openapi::JobEnvelope),
        (status = 404, description = "No such job", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Success<JobView>>, ApiError> {
    let id = job_id(&id)?;
    Ok(ok(state.backend().get(id).await?))
}

/// Cancel a job: its final view. 409 `Conflict` if it had already finished.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job, cancelled", body = crate::openapi::JobEnvelope),
        (status = 404, description = "No such job", body = tsbridge_proto::api::Failure),
        (status = 409, description = "The job had already finished", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Success<JobView>>, ApiError> {
    let id = job_id(&id)?;
    Ok(ok(state.backend().cancel(id).await?))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// queued | running | succeeded | failed | cancelled | timed_out
    pub state: Option<String>,
    /// A workflow name.
    pub workflow: Option<String>,
    /// 1..=500 (default 50).
    pub limit: Option<String>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListParams {
    fn into_query(self) -> Result<ListQuery, ApiError> {
        let state = match self.state.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(JobState::parse(s).ok_or_else(|| {
                ApiError::validation(format!(
                    "invalid state {s:?}: expected queued, running, succeeded, failed, cancelled or timed_out"
                ))
            })?),
        };
        let limit = match self.limit.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
                _ => {
                    return Err(ApiError::validation(format!(
                        "invalid limit {s:?}: expected a number from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        Ok(ListQuery {
            state,
            workflow: self.workflow.filter(|s| !s.is_empty()),
            limit,
            cursor: self.cursor.filter(|s| !s.is_empty()),
        })
    }
}

/// Jobs, newest first, paginated.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = crate::openapi::JobListEnvelope),
        (status = 400, description = "Invalid filter, limit or cursor", body = tsbridge_proto::api::Failure),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<Success<JobList>>, ApiError> {
    let params = ListParams {
        state: raw.get("state").cloned(),
        workflow: raw.get("workflow").cloned(),
        limit: raw.get("limit").cloned(),
        cursor: raw.get("cursor").cloned(),
    };
    Ok(ok(state.backend().list(params.into_query()?).await?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn list_params() {
        let q = ListParams {
            state: Some("running".into()),
            limit: Some("5".into()),
            ..Default::default()
        }
        .into_query()
        .unwrap();
        assert_eq!(q.state, Some(JobState::Running));
        assert_eq!(q.limit, Some(5));
        for bad in [
            ListParams {
                state: Some("done".into()),
                ..Default::default()
            },
            ListParams {
                limit: Some("0".into()),
                ..Default::default()
            },
            ListParams {
                limit: Some("x".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.into_query().is_err());
        }
    }
}
