//! A typed async client of the tsbridge HTTP API (SPEC §8), used by the
//! `tsbridge jobs` CLI and by tests: one method per route, the bodies of
//! tsbridge-proto, [`ClientError`] carrying the server's error type, and
//! [`Client::follow_events`], which follows a job's Server-Sent Events and
//! resumes after a dropped connection from the last event it saw.

pub mod errors;
pub mod sse;

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tsbridge_proto::api::{
    BatchRequest, BatchResponse, ExecuteRequest, ExecuteResponse, Failure, JobList, JobView,
    SubmitRequest, SubmitResponse, Success,
};
use tsbridge_proto::service::{Readiness, WorkflowInfo, WorkflowList};
use tsbridge_proto::{JobEvent, JobId, JobState};

pub use errors::ClientError;
pub use sse::{SseEvent, SseParser};

/// The server a client talks to when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8787";
/// How often [`Client::follow_events`] reconnects in a row before it gives up.
const MAX_RECONNECTS: u32 = 5;

/// A client of one tsbridge server. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// `GET /v1/jobs` filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListParams {
    pub state: Option<JobState>,
    pub workflow: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// What `POST /v1/jobs` answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub job_id: JobId,
    pub state: JobState,
    /// `false` when the idempotency key named an existing job (200, not 202).
    pub created: bool,
}

impl Client {
    /// A client of the server at `base_url` (`http://HOST:PORT`), sending
    /// `token` as a bearer token when given.
    pub fn new(base_url: impl Into<String>, token: Option<String>) -> Result<Self, ClientError> {
        let base = base_url.into().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.len() <= "https://".len()
        {
            return Err(ClientError::InvalidUrl { url: base });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// `TSBRIDGE_URL` (else [`DEFAULT_URL`]) and `TSBRIDGE_TOKEN`.
    pub fn from_env() -> Result<Self, ClientError> {
        let url = std::env::var("TSBRIDGE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        Self::new(url, std::env::var("TSBRIDGE_TOKEN").ok())
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: RequestBuilder, path: &str) -> Result<Response, ClientError> {
        let url = self.url(path);
        let resp = rb
            .send()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(failure(resp, path, &self.base).await)
        }
    }

    async fn data<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
        path: &str,
    ) -> Result<T, ClientError> {
        let resp = self.send(rb, path).await?;
        decode::<Success<T>>(resp, &self.url(path))
            .await
            .map(|s| s.data)
    }

    async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.data(self.request(Method::POST, path).json(body), path)
            .await
    }

    /// `POST /workflow/:type/execute`: runs and waits. A job that did not
    /// succeed is `ClientError::Api` with its error type and `jobId` in details.
    pub async fn execute(
        &self,
        workflow: &str,
        req: &ExecuteRequest,
    ) -> Result<ExecuteResponse, ClientError> {
        self.post_json(&format!("/workflow/{}/execute", segment(workflow)), req)
            .await
    }

    /// `POST /workflow/batch`.
    pub async fn batch(&self, req: &BatchRequest) -> Result<BatchResponse, ClientError> {
        self.post_json("/workflow/batch", req).await
    }

    /// `POST /v1/jobs`.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<Submission, ClientError> {
        let path = "/v1/jobs";
        let resp = self
            .send(self.request(Method::POST, path).json(req), path)
            .await?;
        let created = resp.status() == StatusCode::ACCEPTED
            && resp.headers().get("idempotent-replayed").is_none();
        let s: Success<SubmitResponse> = decode(resp, &self.url(path)).await?;
        Ok(Submission {
            job_id: s.data.job_id,
            state: s.data.state,
            created,
        })
    }

    /// `GET /v1/jobs/:id`.
    pub async fn get(&self, id: JobId) -> Result<JobView, ClientError> {
        let path = format!("/v1/jobs/{id}");
        self.data(self.request(Method::GET, &path), &path).await
    }

    /// `GET /v1/jobs`: one page, newest first.
    pub async fn list(&self, params: &ListParams) -> Result<JobList, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = params.state {
            query.push(("state", s.as_str().to_owned()));
        }
        if let Some(w) = &params.workflow {
            query.push(("workflow", w.clone()));
        }
        if let Some(l) = params.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(c) = &params.cursor {
            query.push(("cursor", c.clone()));
        }
        let path = "/v1/jobs";
        self.data(self.request(Method::GET, path).query(&query), path)
            .await
    }

    /// `POST /v1/jobs/:id/cancel`: the final view; `Conflict` if it had finished.
    pub async fn cancel(&self, id: JobId) -> Result<JobView, ClientError> {
        let path = format!("/v1/jobs/{id}/cancel");
        self.data(self.request(Method::POST, &path), &path).await
    }

    /// `GET /v1/workflows`.
    pub async fn workflows(&self) -> Result<Vec<WorkflowInfo>, ClientError> {
        let path = "/v1/workflows";
        let list: WorkflowList = self.data(self.request(Method::GET, path), path).await?;
        Ok(list.workflows)
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(), ClientError> {
        let path = "/healthz";
        self.send(self.request(Method::GET, path), path).await?;
        Ok(())
    }

    /// `GET /readyz`: the readiness, ready or not (503 is not an error here).
    pub async fn readiness(&self) -> Result<Readiness, ClientError> {
        let path = "/readyz";
        let url = self.url(path);
        let resp = self
            .request(Method::GET, path)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if resp.status().is_success() || resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            #[derive(serde::Deserialize)]
            struct WithData {
                data: Readiness,
            }
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|source| ClientError::Transport {
                    url: url.clone(),
                    source,
                })?;
            return match serde_json::from_slice::<WithData>(&bytes) {
                Ok(w) => Ok(w.data),
                Err(_) => Err(api_error(status, &bytes, None, &url)),
            };
        }
        Err(failure(resp, path, &self.base).await)
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let path = "/metrics";
        let resp = self.send(self.request(Method::GET, path), path).await?;
        resp.text().await.map_err(|source| ClientError::Transport {
            url: self.url(path),
            source,
        })
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Result<Value, ClientError> {
        let path = "/openapi.json";
        let resp = self.send(self.request(Method::GET, path), path).await?;
        decode(resp, &self.url(path)).await
    }

    /// Follows `GET /v1/jobs/:id/events`: the job's events after
    /// `last_event_id` (all when `None`), then live ones, ending after the
    /// terminal `state` event. A dropped connection is resumed with
    /// `Last-Event-ID`, so no event is repeated or skipped; after
    /// repeated failures the stream ends with the error.
    pub fn follow_events(
        &self,
        id: JobId,
        last_event_id: Option<u64>,
    ) -> BoxStream<'static, Result<JobEvent, ClientError>> {
        let follower = Follower {
            client: self.clone(),
            id,
            last: last_event_id.unwrap_or(0),
            body: None,
            parser: SseParser::new(),
            ready: VecDeque::new(),
            failures: 0,
            done: false,
        };
        futures::stream::unfold(follower, |mut f| async move {
            let item = f.next().await?;
            Some((item, f))
        })
        .boxed()
    }
}

/// Percent-encodes a path segment (workflow names are plain, but be safe).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn decode<T: DeserializeOwned>(resp: Response, url: &str) -> Result<T, ClientError> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
        url: url.to_owned(),
        source,
    })
}

fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A non-2xx answer as an error: the server's failure body when it sent one.
async fn failure(resp: Response, path: &str, base: &str) -> ClientError {
    let url = format!("{base}{path}");
    let status = resp.status();
    let after = retry_after(&resp);
    match resp.bytes().await {
        Ok(bytes) => api_error(status, &bytes, after, &url),
        Err(source) => ClientError::Transport { url, source },
    }
}

fn api_error(
    status: StatusCode,
    bytes: &[u8],
    retry_after: Option<Duration>,
    url: &str,
) -> ClientError {
    match serde_json::from_slice::<Failure>(bytes) {
        Ok(f) => ClientError::Api {
            status: status.as_u16(),
            kind: f.error.kind,
            message: f.error.message,
            details: f.error.details,
            retry_after,
        },
        Err(_) => ClientError::Unexpected {
            status: status.as_u16(),
            url: url.to_owned(),
            body: String::from_utf8_lossy(bytes).chars().take(2000).collect(),
        },
    }
}

/// The state of one [`Client::follow_events`] stream.
struct Follower {
    client: Client,
    id: JobId,
    last: u64,
    body: Option<BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    parser: SseParser,
    ready: VecDeque<Result<JobEvent, ClientError>>,
    failures: u32,
    done: bool,
}

impl Follower {
    async fn connect(&mut self) -> Result<(), ClientError> {
        let path = format!("/v1/jobs/{}/events", self.id);
        let mut rb = self
            .client
            .request(Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if self.last > 0 {
            rb = rb.header("Last-Event-ID", self.last.to_string());
        }
        let resp = self.client.send(rb, &path).await?;
        self.body = Some(resp.bytes_stream().boxed());
        self.parser = SseParser::new();
        Ok(())
    }

    fn take(&mut self, ev: SseEvent) {
        match ev.event.as_str() {
            "error" => {
                let err = match serde_json::from_str::<Failure>(&ev.data) {
                    Ok(f) => ClientError::Api {
                        status: f.error.kind.status(),
                        kind: f.error.kind,
                        message: f.error.message,
                        details: f.error.details,
                        retry_after: None,
                    },
                    Err(source) => ClientError::BadEvent {
                        job: self.id,
                        source,
                    },
                };
                self.ready.push_back(Err(err));
                self.done = true;
            }
            _ => match serde_json::from_str::<JobEvent>(&ev.data) {
                Ok(e) if e.seq <= self.last => {}
                Ok(e) => {
                    self.last = e.seq;
                    self.failures = 0;
                    if e.data.is_terminal_state() {
                        self.done = true;
                    }
                    self.ready.push_back(Ok(e));
                }
                Err(source) => {
                    self.ready.push_back(Err(ClientError::BadEvent {
                        job: self.id,
                        source,
                    }));
                    self.done = true;
                }
            },
        }
    }

    async fn next(&mut self) -> Option<Result<JobEvent, ClientError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(self.failures))).await;
                }
                if let Err(e) = self.connect().await {
                    // The server's own refusal (404, 401, ...) is final.
                    self.failures += 1;
                    if matches!(e, ClientError::Api { .. } | ClientError::Unexpected { .. })
                        || self.failures > MAX_RECONNECTS
                    {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    for ev in self.parser.push(&chunk) {
                        if !self.done {
                            self.take(ev);
                        }
                    }
                }
                Some(Err(_)) | None => {
                    // Dropped before the terminal state: resume after `last`.
                    self.body = None;
                    self.failures += 1;
                    if self.failures > MAX_RECONNECTS {
                        self.done = true;
                        return Some(Err(ClientError::StreamEnded { job: self.id }));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        assert!(Client::new("localhost:8787", None).is_err());
        let c = Client::new("http://127.0.0.1:1/", Some(String::new())).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:1");
        assert!(c.token.is_none());
        assert_eq!(segment("data-analysis"), "data-analysis");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert!(
            !format!(
                "{:?}",
                Client::new("http://h:1", Some("s3cret".into())).unwrap()
            )
            .contains("s3cret")
        );
    }
}
