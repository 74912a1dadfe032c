//! HTTP bodies (SPEC §8). Success is `{"success": true, "data": ...}`;
//! failure is `{"success": false, "error": {"type", "message", "details"?}}`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Progress;
use crate::ids::JobId;
use crate::job::{EndReason, JobState};
use crate::units::{ByteSize, DurationSpec};

/// The error types of the API, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ErrorType {
    ValidationError,
    Unauthorized,
    SecurityError,
    NotFound,
    TimeoutError,
    Conflict,
    ResourceLimitError,
    PayloadTooLarge,
    QueueFull,
    ExecutionError,
    InternalError,
    Unavailable,
}

impl ErrorType {
    pub fn status(self) -> u16 {
        match self {
            ErrorType::ValidationError => 400,
            ErrorType::Unauthorized => 401,
            ErrorType::SecurityError => 403,
            ErrorType::NotFound => 404,
            ErrorType::TimeoutError => 408,
            ErrorType::Conflict => 409,
            ErrorType::ResourceLimitError | ErrorType::PayloadTooLarge => 413,
            ErrorType::QueueFull => 429,
            ErrorType::ExecutionError | ErrorType::InternalError => 500,
            ErrorType::Unavailable => 503,
        }
    }

    /// The error a job that ended this way answers with (SPEC §8).
    pub fn for_end(state: JobState, reason: Option<EndReason>) -> Option<Self> {
        match (state, reason) {
            (JobState::Succeeded, _) | (JobState::Queued, _) | (JobState::Running, _) => None,
            (JobState::TimedOut, _) | (_, Some(EndReason::Timeout)) => {
                Some(ErrorType::TimeoutError)
            }
            (JobState::Cancelled, _) | (_, Some(EndReason::Cancelled)) => Some(ErrorType::Conflict),
            (_, Some(r)) if r.is_resource_limit() => Some(ErrorType::ResourceLimitError),
            (_, Some(EndReason::Shutdown)) => Some(ErrorType::Unavailable),
            // The workflow's program could not be run (a missing `#!`
            // interpreter, a worker whose module does not load): an
            // execution failure whose message says why, not a hidden
            // internal error (SPEC §8 has no type of its own for it).
            (_, Some(EndReason::SpawnFailure)) => Some(ErrorType::ExecutionError),
            (_, Some(EndReason::Interrupted)) => Some(ErrorType::InternalError),
            _ => Some(ErrorType::ExecutionError),
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The `error` object of a failure body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// `{"success": false, "error": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub success: bool,
    pub error: ApiErrorBody,
}

impl Failure {
    pub fn new(kind: ErrorType, message: impl Into<String>, details: Option<Value>) -> Self {
        Self {
            success: false,
            error: ApiErrorBody {
                kind,
                message: message.into(),
                details,
            },
        }
    }
}

/// `{"success": true, "data": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Success<T> {
    pub success: bool,
    pub data: T,
}

impl<T> Success<T> {
    pub fn new(data: T) -> Self {
        Self {
            success: true,
            data,
        }
    }
}

/// Options a request may give; each can only lower the workflow's own limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobOptions {
    /// Milliseconds, or a string such as "2s".
    #[serde(default)]
    #[schema(schema_with = openapi::timeout)]
    pub timeout: Option<DurationSpec>,
    /// Bytes, or a string such as "256MiB": lowers the workflow's memory
    /// limit for this job (never raises it). Spawn mode only: a pool's warm
    /// workers share the limit of the config.
    #[serde(default)]
    #[schema(schema_with = openapi::memory)]
    pub memory: Option<ByteSize>,
    #[serde(default)]
    pub priority: Option<i32>,
    /// Only names the workflow's `env.request` allows.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `POST /workflow/:type/execute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteRequest {
    #[serde(default, deserialize_with = "parameters_object")]
    #[schema(schema_with = openapi::parameters)]
    pub parameters: Value,
    #[serde(default)]
    pub options: Option<JobOptions>,
}

/// `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitRequest {
    pub workflow: String,
    #[serde(default, deserialize_with = "parameters_object")]
    #[schema(schema_with = openapi::parameters)]
    pub parameters: Value,
    #[serde(default)]
    pub options: Option<JobOptions>,
}

/// 202 answer of `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubmitResponse {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub state: JobState,
}

/// One item of `POST /workflow/batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchItem {
    #[serde(rename = "type")]
    pub workflow: String,
    #[serde(default, deserialize_with = "parameters_object")]
    #[schema(schema_with = openapi::parameters)]
    pub parameters: Value,
    /// The client's name for the item, echoed as its result's `workflowId`.
    /// A number is accepted too (and echoed as its decimal string): a whole
    /// batch refused over `"id": 1` would help nobody.
    #[serde(default, deserialize_with = "string_or_integer")]
    #[schema(schema_with = openapi::item_id)]
    pub id: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
}

/// `parameters`: a JSON object, or null (absent), which the runtime reads as
/// `{}`. SPEC §2 passes them as `--params <json>`, the pool's handler gets
/// them as `params`: a number or a list there is a client's mistake (a
/// workflow with a schema refuses it anyway; one without should too).
fn parameters_object<'de, D>(d: D) -> Result<Value, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::{Error, Unexpected};
    let v = Value::deserialize(d)?;
    let unexpected = match &v {
        Value::Object(_) | Value::Null => return Ok(v),
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Unexpected::Signed(i),
            (_, Some(u), _) => Unexpected::Unsigned(u),
            (_, _, f) => Unexpected::Float(f.unwrap_or_default()),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
    };
    Err(D::Error::invalid_type(unexpected, &"a JSON object"))
}

/// OpenAPI schemas of the request fields that serde reads from more than
/// one JSON type (the derive would document only one of them).
mod openapi {
    use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};

    fn of(types: impl IntoIterator<Item = Type>, description: &str) -> Object {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter(types))
            .description(Some(description))
            .build()
    }

    pub fn timeout() -> Object {
        of(
            [Type::Integer, Type::String, Type::Null],
            "Milliseconds (a number), or a string such as \"500ms\", \"2s\", \"5m\". Only lowers the workflow's own timeout.",
        )
    }

    pub fn memory() -> Object {
        of(
            [Type::Integer, Type::String, Type::Null],
            "Bytes (a number), or a string such as \"256MiB\": lowers the workflow's memory limit for this job (never raises it). Spawn mode only.",
        )
    }

    pub fn parameters() -> Object {
        of(
            [Type::Object, Type::Null],
            "The workflow's parameters, checked against its schema (GET /v1/workflows). Absent or null: {}.",
        )
    }

    pub fn item_id() -> Object {
        of(
            [Type::String, Type::Integer, Type::Null],
            "The client's name for the item, echoed as its result's workflowId (a number as its decimal string).",
        )
    }
}

/// `Option<String>` from a JSON string, an integer or null.
fn string_or_integer<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        U(u64),
    }
    Ok(match Option::<Raw>::deserialize(d) {
        Ok(None) => None,
        Ok(Some(Raw::S(s))) => Some(s),
        Ok(Some(Raw::I(i))) => Some(i.to_string()),
        Ok(Some(Raw::U(u))) => Some(u.to_string()),
        Err(_) => {
            return Err(serde::de::Error::custom(
                "invalid id: expected a string or an integer",
            ));
        }
    })
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchOptions {
    #[serde(default)]
    pub fail_fast: bool,
    /// Each item's timeout.
    #[serde(default)]
    #[schema(schema_with = openapi::timeout)]
    pub timeout: Option<DurationSpec>,
}

/// `POST /workflow/batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    pub workflows: Vec<BatchItem>,
    #[serde(default)]
    pub options: Option<BatchOptions>,
}

/// One result of a batch, in input order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    /// The item's `id`, or its index as a string when it had none.
    pub workflow_id: String,
    #[schema(value_type = Option<String>)]
    pub job_id: Option<JobId>,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiErrorBody>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// Resource usage of a job (its last attempt).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    pub wall_time_ms: Option<u64>,
}

/// 200 answer of `POST /workflow/:type/execute`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub success: bool,
    pub result: Value,
    /// Wall time in milliseconds.
    pub execution_time: u64,
    pub process_id: Option<u32>,
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub resources: Resources,
}

/// The name of a signal by its (Linux) number: 9 -> `SIGKILL`.
pub fn signal_name(n: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let i = usize::try_from(n).ok()?.checked_sub(1)?;
    NAMES.get(i).copied()
}

/// A signal as messages name it: `SIGKILL (9)`, or `signal 64` when it has
/// no name (real-time signals).
pub fn describe_signal(n: i32) -> String {
    match signal_name(n) {
        Some(name) => format!("{name} ({n})"),
        None => format!("signal {n}"),
    }
}

/// One attempt of a job. Serialized with `signalName` beside `signal`
/// (derived, never stored; see [`signal_name`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub n: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub reason: Option<EndReason>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub process_id: Option<u32>,
}

impl AttemptView {
    /// The name of the signal that ended this attempt, if one did.
    pub fn signal_name(&self) -> Option<&'static str> {
        self.signal.and_then(signal_name)
    }
}

/// The wire form of [`AttemptView`] (and its OpenAPI schema).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AttemptView)]
struct AttemptWire<'a> {
    n: u32,
    #[serde(serialize_with = "crate::time::serialize")]
    started_at: &'a DateTime<Utc>,
    #[serde(serialize_with = "crate::time::serialize_opt")]
    finished_at: Option<&'a DateTime<Utc>>,
    reason: Option<EndReason>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// The name of `signal`, e.g. `SIGKILL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    signal_name: Option<&'static str>,
    process_id: Option<u32>,
}

impl<'a> From<&'a AttemptView> for AttemptWire<'a> {
    fn from(a: &'a AttemptView) -> Self {
        Self {
            n: a.n,
            started_at: &a.started_at,
            finished_at: a.finished_at.as_ref(),
            reason: a.reason,
            exit_code: a.exit_code,
            signal: a.signal,
            signal_name: a.signal_name(),
            process_id: a.process_id,
        }
    }
}

impl Serialize for AttemptView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        AttemptWire::from(self).serialize(s)
    }
}

impl utoipa::PartialSchema for AttemptView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <AttemptWire<'static> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for AttemptView {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("AttemptView")
    }
}

/// Captured output, bounded: head and tail kept, the middle dropped and counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputView {
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub stdout_dropped_bytes: u64,
    pub stderr_dropped_bytes: u64,
}

/// A job as `GET /v1/jobs/:id` returns it. Serialized with `signalName`
/// beside `signal` (derived, never stored; see [`signal_name`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: JobId,
    pub workflow: String,
    pub state: JobState,
    pub reason: Option<EndReason>,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptView>,
    /// `None` until the first progress; on the wire it is then
    /// `{current: 0, total: 0, percentage: 0, message: ""}` (SPEC §8 gives
    /// the job one shape), read back as `None`.
    #[serde(default, deserialize_with = "progress_or_none")]
    pub progress: Option<Progress>,
    pub result: Option<Value>,
    pub error: Option<ApiErrorBody>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub process_id: Option<u32>,
    pub output: OutputView,
    pub resources: Resources,
}

/// What a job without progress shows as its `progress`.
static NO_PROGRESS: Progress = Progress {
    current: 0,
    total: 0,
    percentage: 0.0,
    message: String::new(),
};

fn progress_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Progress>, D::Error> {
    let p = Option::<Progress>::deserialize(d)?;
    Ok(p.filter(|p| *p != NO_PROGRESS))
}

impl JobView {
    /// The name of the signal that ended the job, if one did.
    pub fn signal_name(&self) -> Option<&'static str> {
        self.signal.and_then(signal_name)
    }
}

/// The wire form of [`JobView`] (and its OpenAPI schema): borrowed, so that
/// serializing a job never copies its captured output.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobView)]
struct JobViewWire<'a> {
    #[schema(value_type = String)]
    job_id: &'a JobId,
    workflow: &'a str,
    state: JobState,
    reason: Option<EndReason>,
    priority: i32,
    #[serde(serialize_with = "crate::time::serialize")]
    created_at: &'a DateTime<Utc>,
    #[serde(serialize_with = "crate::time::serialize_opt")]
    started_at: Option<&'a DateTime<Utc>>,
    #[serde(serialize_with = "crate::time::serialize_opt")]
    finished_at: Option<&'a DateTime<Utc>>,
    #[schema(value_type = Vec<AttemptView>)]
    attempts: &'a [AttemptView],
    /// All zero until the job reports progress.
    progress: &'a Progress,
    result: Option<&'a Value>,
    error: Option<&'a ApiErrorBody>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// The name of `signal`, e.g. `SIGKILL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    signal_name: Option<&'static str>,
    process_id: Option<u32>,
    output: &'a OutputView,
    resources: &'a Resources,
}

impl Serialize for JobView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        JobViewWire {
            job_id: &self.job_id,
            workflow: &self.workflow,
            state: self.state,
            reason: self.reason,
            priority: self.priority,
            created_at: &self.created_at,
            started_at: self.started_at.as_ref(),
            finished_at: self.finished_at.as_ref(),
            attempts: &self.attempts,
            progress: self.progress.as_ref().unwrap_or(&NO_PROGRESS),
            result: self.result.as_ref(),
            error: self.error.as_ref(),
            exit_code: self.exit_code,
            signal: self.signal,
            signal_name: self.signal_name(),
            process_id: self.process_id,
            output: &self.output,
            resources: &self.resources,
        }
        .serialize(s)
    }
}

impl utoipa::PartialSchema for JobView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <JobViewWire<'static> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for JobView {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("JobView")
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <JobViewWire<'static> as utoipa::ToSchema>::schemas(schemas);
    }
}

/// `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ErrorType::QueueFull.status(), 429);
        assert_eq!(ErrorType::PayloadTooLarge.status(), 413);
        assert_eq!(
            ErrorType::for_end(JobState::TimedOut, Some(EndReason::Timeout)),
            Some(ErrorType::TimeoutError)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Failed, Some(EndReason::MemoryLimit)),
            Some(ErrorType::ResourceLimitError)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Failed, Some(EndReason::Exited)),
            Some(ErrorType::ExecutionError)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Cancelled, Some(EndReason::Cancelled)),
            Some(ErrorType::Conflict)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Failed, Some(EndReason::SpawnFailure)),
            Some(ErrorType::ExecutionError)
        );
        assert_eq!(
            ErrorType::for_end(JobState::Failed, Some(EndReason::Interrupted)),
            Some(ErrorType::InternalError)
        );
        assert_eq!(ErrorType::for_end(JobState::Succeeded, None), None);
    }

    #[test]
    fn failure_shape() {
        let f = Failure::new(ErrorType::NotFound, "no such job", None);
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"success": false, "error": {"type": "NotFound", "message": "no such job"}})
        );
    }

    fn view() -> JobView {
        JobView {
            job_id: JobId::new(),
            workflow: "w".into(),
            state: JobState::Failed,
            reason: Some(EndReason::Signaled),
            priority: 0,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            attempts: vec![AttemptView {
                n: 1,
                started_at: Utc::now(),
                finished_at: None,
                reason: Some(EndReason::Signaled),
                exit_code: None,
                signal: Some(9),
                process_id: Some(7),
            }],
            progress: None,
            result: None,
            error: None,
            exit_code: None,
            signal: Some(9),
            process_id: Some(7),
            output: OutputView::default(),
            resources: Resources::default(),
        }
    }

    #[test]
    fn signals_are_named_beside_their_number() {
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(24), Some("SIGXCPU"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(64), None);
        assert_eq!(describe_signal(9), "SIGKILL (9)");
        assert_eq!(describe_signal(64), "signal 64");
        let v = serde_json::to_value(view()).unwrap();
        assert_eq!(v["signal"], 9);
        assert_eq!(v["signalName"], "SIGKILL");
        assert_eq!(v["attempts"][0]["signal"], 9);
        assert_eq!(v["attempts"][0]["signalName"], "SIGKILL");
        let mut quiet = view();
        quiet.signal = None;
        quiet.attempts[0].signal = None;
        let v = serde_json::to_value(quiet).unwrap();
        assert!(v.get("signalName").is_none(), "{v}");
        assert!(v["attempts"][0].get("signalName").is_none(), "{v}");
        assert!(v["signal"].is_null());
    }

    #[test]
    fn progress_is_an_object_before_the_first_one() {
        let v = serde_json::to_value(view()).unwrap();
        assert_eq!(
            v["progress"],
            serde_json::json!({"current": 0, "total": 0, "percentage": 0.0, "message": ""})
        );
        let back: JobView = serde_json::from_value(v).unwrap();
        assert_eq!(back.progress, None);
        let mut with = view();
        with.progress = Some(Progress::new(1, 4, "a"));
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(v["progress"]["percentage"], 25.0);
        let back: JobView = serde_json::from_value(v).unwrap();
        assert_eq!(back.progress, with.progress);
    }

    #[test]
    fn job_view_schema_names_signal_name() {
        use utoipa::PartialSchema;
        let s = serde_json::to_value(JobView::schema()).unwrap();
        assert!(s["properties"]["signalName"].is_object(), "{s}");
        assert!(s["properties"]["jobId"].is_object(), "{s}");
        assert!(
            !s["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "signalName"),
            "{s}"
        );
        let a = serde_json::to_value(AttemptView::schema()).unwrap();
        assert!(a["properties"]["signalName"].is_object(), "{a}");
    }

    #[test]
    fn request_timeout_in_ms_or_string() {
        let r: ExecuteRequest =
            serde_json::from_str(r#"{"parameters":{"a":1},"options":{"timeout":1500}}"#).unwrap();
        assert_eq!(r.options.unwrap().timeout.unwrap().0.as_millis(), 1500);
        let r: ExecuteRequest =
            serde_json::from_str(r#"{"parameters":{},"options":{"timeout":"2s"}}"#).unwrap();
        assert_eq!(r.options.unwrap().timeout.unwrap().0.as_secs(), 2);
        assert!(serde_json::from_str::<ExecuteRequest>(r#"{"parameters":{},"bogus":1}"#).is_err());
    }

    #[test]
    fn parameters_are_an_object_or_absent() {
        let r: SubmitRequest =
            serde_json::from_str(r#"{"workflow":"w","parameters":{"a":1}}"#).unwrap();
        assert_eq!(r.parameters, serde_json::json!({"a": 1}));
        for ok in [
            r#"{"workflow":"w"}"#,
            r#"{"workflow":"w","parameters":null}"#,
        ] {
            let r: SubmitRequest = serde_json::from_str(ok).unwrap();
            assert!(r.parameters.is_null(), "{ok}");
        }
        for (bad, what) in [
            ("5", "integer `5`"),
            ("-1.5", "floating point `-1.5`"),
            (r#""x""#, "string \"x\""),
            ("[1]", "sequence"),
            ("true", "boolean `true`"),
        ] {
            let body = format!(r#"{{"workflow":"w","parameters":{bad}}}"#);
            let e = serde_json::from_str::<SubmitRequest>(&body)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("invalid type: {what}, expected a JSON object")),
                "{e}"
            );
            let body = format!(r#"{{"parameters":{bad}}}"#);
            assert!(
                serde_json::from_str::<ExecuteRequest>(&body).is_err(),
                "{body}"
            );
            let body = format!(r#"{{"workflows":[{{"type":"w","parameters":{bad}}}]}}"#);
            assert!(
                serde_json::from_str::<BatchRequest>(&body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn request_memory_in_bytes_or_string() {
        let r: SubmitRequest =
            serde_json::from_str(r#"{"workflow":"w","options":{"memory":"64MiB"}}"#).unwrap();
        assert_eq!(r.options.unwrap().memory, Some(ByteSize(64 << 20)));
        let r: ExecuteRequest = serde_json::from_str(r#"{"options":{"memory":1048576}}"#).unwrap();
        assert_eq!(r.options.unwrap().memory, Some(ByteSize(1 << 20)));
        let bad = serde_json::from_str::<ExecuteRequest>(r#"{"options":{"memory":"lots"}}"#);
        assert!(bad.unwrap_err().to_string().contains("lots"));
        assert!(serde_json::from_str::<ExecuteRequest>(r#"{"options":{"memory":-1}}"#).is_err());
    }
}
