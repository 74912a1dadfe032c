//! Errors of the API: [`ApiError`] (what a handler answers when it fails,
//! rendered as SPEC §8's failure body), and the typed errors of starting and
//! running the server ([`AuthError`], [`ServeError`], [`MetricsError`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tsbridge_proto::ErrorType;
use tsbridge_proto::api::{ApiErrorBody, Failure};

use crate::backend::BackendError;

/// A failed request. Renders as `{"success":false,"error":{type,message,details?}}`
/// with the status of its [`ErrorType`]. An `InternalError` hides its message
/// and details unless the server runs in dev mode (see [`RevealedError`]),
/// except a job's own end ([`ApiError::job_end`]).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorType,
    pub message: String,
    pub details: Option<Value>,
    /// For 429: sent as `Retry-After` (whole seconds, at least 1).
    pub retry_after: Option<Duration>,
    /// The error is how a job ended (an execute's or a batch item's
    /// answer): public even as an `InternalError` (a job `interrupted` by a
    /// crash), as `GET /v1/jobs/:id` shows it. Only the server's own
    /// failures are hidden.
    pub job_end: bool,
}

/// The message an `InternalError` shows when internals are hidden.
pub const HIDDEN_MESSAGE: &str = "internal error";

/// Attached to the response of an error whose body hid something; the
/// dev-mode layer swaps the body for this one.
#[derive(Debug, Clone)]
pub struct RevealedError(pub Failure);

impl ApiError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: None,
            retry_after: None,
            job_end: false,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Marks this error as how a job ended: never hidden.
    pub fn job_end(mut self) -> Self {
        self.job_end = true;
        self
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorType::ValidationError, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InternalError, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unauthorized, message)
    }

    /// The body a client sees for this error (internals hidden).
    pub fn public_body(&self) -> ApiErrorBody {
        if self.hides_internals() {
            // The job id is the one detail that is never internal.
            let job_id = self
                .details
                .as_ref()
                .and_then(|d| d.get("jobId"))
                .cloned()
                .map(|id| serde_json::json!({ "jobId": id }));
            ApiErrorBody {
                kind: self.kind,
                message: HIDDEN_MESSAGE.to_owned(),
                details: job_id,
            }
        } else {
            self.full_body()
        }
    }

    /// The body with everything (dev mode, logs).
    pub fn full_body(&self) -> ApiErrorBody {
        ApiErrorBody {
            kind: self.kind,
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }

    fn hides_internals(&self) -> bool {
        self.kind == ErrorType::InternalError && !self.job_end
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        if e.kind == ErrorType::InternalError {
            tracing::error!(error = %e.message, "internal error");
        }
        Self {
            kind: e.kind,
            message: e.message,
            details: e.details,
            retry_after: e.retry_after,
            job_end: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Failure {
            success: false,
            error: self.public_body(),
        };
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if self.kind == ErrorType::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tsbridge\""),
            );
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.hides_internals() {
            resp.extensions_mut().insert(RevealedError(Failure {
                success: false,
                error: self.full_body(),
            }));
        }
        resp
    }
}

/// Resolving the configured bearer tokens failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token env:{name} names an environment variable that is not set or empty")]
    MissingEnv { name: String },
    #[error("token is empty")]
    EmptyToken,
}

/// Starting or running the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr} without a bearer token: set server.tokens (e.g. \"env:TSBRIDGE_TOKEN\") or bind to 127.0.0.1"
    )]
    TokenRequired { addr: SocketAddr },
    #[error("cannot read the listener's address")]
    LocalAddr(#[source] std::io::Error),
    #[error("the HTTP server failed")]
    Io(#[source] std::io::Error),
}

/// Installing the Prometheus recorder failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the prometheus metrics recorder")]
    Install(#[source] metrics_exporter_prometheus::BuildError),
}
