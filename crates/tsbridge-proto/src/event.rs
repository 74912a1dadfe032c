//! Events. A child program emits [`ChildEvent`]s (parsed from its stdout line
//! protocol or received on its IPC channel); the runtime numbers them per job
//! and stores/broadcasts them as [`JobEvent`]s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::JobId;
use crate::job::{EndReason, JobState};

/// Severity of a `log` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Parses `DEBUG`, `info`, `WARNING`, ... (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "debug" | "trace" => LogLevel::Debug,
            "info" | "log" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" | "fatal" => LogLevel::Error,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// How far a job has come.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub current: u64,
    pub total: u64,
    /// 0..=100; 0 when `total` is 0.
    pub percentage: f64,
    pub message: String,
}

impl Progress {
    pub fn new(current: u64, total: u64, message: impl Into<String>) -> Self {
        let percentage = if total == 0 {
            0.0
        } else {
            ((current as f64 / total as f64) * 100.0).clamp(0.0, 100.0)
        };
        Self {
            current,
            total,
            percentage,
            message: message.into(),
        }
    }
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Something a running child said, before the runtime numbers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChildEvent {
    Log {
        level: LogLevel,
        message: String,
        /// The timestamp the child printed, verbatim, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        child_timestamp: Option<String>,
    },
    Progress(Progress),
    /// A result; a later one replaces an earlier one.
    Result {
        value: Value,
    },
    /// A plain line of output (not a protocol line).
    Output {
        stream: Stream,
        line: String,
    },
}

/// The payload of a stored/broadcast job event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventData {
    State {
        state: JobState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<EndReason>,
        /// The attempt number this state belongs to (1-based), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
    },
    Log {
        level: LogLevel,
        message: String,
    },
    Progress(Progress),
    Result {
        value: Value,
    },
    Stdout {
        line: String,
    },
    Stderr {
        line: String,
    },
}

impl EventData {
    /// The SSE `event:` name.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::State { .. } => "state",
            EventData::Log { .. } => "log",
            EventData::Progress(_) => "progress",
            EventData::Result { .. } => "result",
            EventData::Stdout { .. } => "stdout",
            EventData::Stderr { .. } => "stderr",
        }
    }

    pub fn is_terminal_state(&self) -> bool {
        matches!(self, EventData::State { state, .. } if state.is_terminal())
    }
}

impl From<ChildEvent> for EventData {
    fn from(e: ChildEvent) -> Self {
        match e {
            ChildEvent::Log { level, message, .. } => EventData::Log { level, message },
            ChildEvent::Progress(p) => EventData::Progress(p),
            ChildEvent::Result { value } => EventData::Result { value },
            ChildEvent::Output {
                stream: Stream::Stdout,
                line,
            } => EventData::Stdout { line },
            ChildEvent::Output {
                stream: Stream::Stderr,
                line,
            } => EventData::Stderr { line },
        }
    }
}

/// One numbered event of one job. `seq` starts at 1 and has no gaps within
/// a job, so a client resumes with "everything after N".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobEvent {
    pub seq: u64,
    #[schema(value_type = String)]
    pub job_id: JobId,
    /// Cut to the millisecond on the wire, as the store keeps it, so a live
    /// event and its replay are the same bytes.
    #[serde(serialize_with = "crate::time::serialize")]
    pub timestamp: DateTime<Utc>,
    #[serde(flatten)]
    pub data: EventData,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_percentage() {
        assert_eq!(Progress::new(1, 4, "x").percentage, 25.0);
        assert_eq!(Progress::new(3, 0, "x").percentage, 0.0);
        assert_eq!(Progress::new(9, 4, "x").percentage, 100.0);
    }

    #[test]
    fn event_json_shape() {
        // A time the wire keeps whole: it writes milliseconds.
        let at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let e = JobEvent {
            seq: 3,
            job_id: JobId::new(),
            timestamp: at,
            data: EventData::Progress(Progress::new(1, 2, "half")),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "progress");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["percentage"], 50.0);
        let back: JobEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
