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

/// Answers every route can give besides its own, added to each operation
/// rather than repeated in every annotation: 401 on every route but
/// `/healthz` (the auth middleware), 413 `PayloadTooLarge` on every route
/// with a body (the body limit layer).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        let failure = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("Failure"))),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                if path != "/healthz" {
                    responses.entry("401".into()).or_insert_with(|| {
                        failure("Unauthorized: a missing or wrong bearer token")
                    });
                }
                if op.request_body.is_some() {
                    responses.entry("413".into()).or_insert_with(|| {
                        failure("PayloadTooLarge: the body is larger than server.max_body")
                    });
                }
            }
        }
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
    modifiers(&BearerAuth, &CommonResponses),
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
