//! The OpenAPI 3 description of the API (`GET /openapi.json`), generated
//! from the handlers' annotations and tsbridge-proto's schemas. The
//! `*Envelope` types only describe the `{"success": true, "data": ...}`
//! bodies; handlers build them with `Success<T>`.

use axum::Json;
use serde::Serialize;
use tsbridge_proto::api::{ExecuteResponse, JobList, JobView, SubmitResponse};
use tsbridge_proto::service::{Readiness, WorkflowList};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::routes::{jobs, sse, system, workflow, ws};

macro_rules! envelope {
    ($name:ident, $data:ty) => {
        #[doc = concat!("`{\"success\": true, \"data\": ", stringify!($data), "}`.")]
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $name {
            pub success: bool,
            pub data: $data,
        }
    };
}

envelope!(ExecuteEnvelope, ExecuteResponse);
envelope!(SubmitEnvelope, SubmitResponse);
envelope!(JobEnvelope, JobView);
envelope!(JobListEnvelope, JobList);
envelope!(ReadinessEnvelope, Readiness);
envelope!(WorkflowsEnvelope, WorkflowList);
envelope!(HealthEnvelope, system::Health);

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "tsbridge",
        description = "Run TypeScript (and any other) programs as managed subprocesses. Failures are `{\"success\": false, \"error\": {type, message, details?}}`."
    ),
    paths(
        workflow::execute,
        workflow::batch,
        jobs::submit,
        jobs::list,
        jobs::get,
        jobs::cancel,
        sse::job_events,
        ws::upgrade,
        system::workflows,
        system::healthz,
        system::readyz,
        system::metrics,
        openapi_json,
    ),
    components(schemas(
        tsbridge_proto::api::Failure,
        tsbridge_proto::api::ApiErrorBody,
        tsbridge_proto::ErrorType,
        tsbridge_proto::JobEvent,
        tsbridge_proto::EventData,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "workflows", description = "Run configured workflows"),
        (name = "jobs", description = "Submit, inspect, list, cancel and stream jobs"),
        (name = "streams", description = "WebSocket progress"),
        (name = "service", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses((status = 200, description = "The OpenAPI 3 description of this API"))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
