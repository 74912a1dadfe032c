//! The client's error: transport failures, the server's own failure bodies
//! (with their [`ErrorType`]), and answers it could not read.

use std::time::Duration;

use serde_json::Value;
use tsbridge_proto::{ErrorType, JobId};

/// A request to the tsbridge API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server url {url:?}: expected http://HOST:PORT")]
    InvalidUrl { url: String },
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("request to {url} failed")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a failure body.
    #[error("{kind}: {message}")]
    Api {
        status: u16,
        kind: ErrorType,
        message: String,
        details: Option<Value>,
        /// From `Retry-After` (429).
        retry_after: Option<Duration>,
    },
    /// The server answered something that is not the API's shape.
    #[error("unexpected answer {status} from {url}")]
    Unexpected {
        status: u16,
        url: String,
        body: String,
    },
    #[error("cannot decode the answer of {url}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the event stream of job {job} sent an unreadable event")]
    BadEvent {
        job: JobId,
        #[source]
        source: serde_json::Error,
    },
    #[error("the event stream of job {job} ended before the job's terminal state")]
    StreamEnded { job: JobId },
}

impl ClientError {
    /// The server's error type, when it answered with a failure body.
    pub fn error_type(&self) -> Option<ErrorType> {
        match self {
            ClientError::Api { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}
