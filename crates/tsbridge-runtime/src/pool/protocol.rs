//! The worker protocol, Rust side: the request payloads tsbridge sends to
//! `js/worker-host.mjs` and the typed reading of its answers. Each exchange
//! is a `request` envelope answered by a `response` or an `error` with the
//! same id (the IPC layer correlates them); progress and logs travel as
//! `progress`/`log` envelopes, which the IPC layer turns into events. Pure
//! data, no I/O. The message table is in docs/design/pool.md.

use serde_json::{Value, json};

/// Why a job's AbortSignal fires (the host picks the DOMException name from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    Cancelled,
    Timeout,
    Shutdown,
}

impl AbortReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::Cancelled => "cancelled",
            AbortReason::Timeout => "timeout",
            AbortReason::Shutdown => "shutdown",
        }
    }
}

/// The host's exit code when the module cannot be loaded or has no handler.
pub const EXIT_FATAL: i32 = 78;

/// `{op:"run", jobId, workflow, params}` (the params moved in, not copied:
/// `json!` would serialize them into a new tree).
pub fn run_payload(job_id: &str, workflow: &str, params: Value) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("op".into(), Value::from("run"));
    m.insert("jobId".into(), Value::from(job_id));
    m.insert("workflow".into(), Value::from(workflow));
    m.insert("params".into(), params);
    Value::Object(m)
}

/// `{op:"cancel", jobId, reason}`.
pub fn cancel_payload(job_id: &str, reason: AbortReason) -> Value {
    json!({"op": "cancel", "jobId": job_id, "reason": reason.as_str()})
}

/// `{op:"ping"}`.
pub fn ping_payload() -> Value {
    json!({"op": "ping"})
}

/// What a pong says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pong {
    /// The module is loaded and the host serves jobs.
    pub ready: bool,
    pub pid: Option<u32>,
    pub rss: Option<u64>,
    /// The exported functions the host found.
    pub exports: Vec<String>,
}

pub fn parse_pong(v: &Value) -> Pong {
    Pong {
        ready: v.get("ready").and_then(Value::as_bool).unwrap_or(false),
        pid: v
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        rss: v.get("rss").and_then(Value::as_u64),
        exports: v
            .get("exports")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// How many progress/log envelopes a job sent, from its answer's `events`.
/// They travel on the event path, the answer on the reply path: the pool
/// forwards that many events before it reports the answer.
pub fn event_count(answer: &Value) -> u64 {
    answer.get("events").and_then(Value::as_u64).unwrap_or(0)
}

/// A job's handler threw or rejected (or its value could not be sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerFailure {
    pub message: String,
    /// The error's `name` (`TypeError`, `AbortError`, ...).
    pub name: String,
    /// The job's AbortSignal had fired when it failed.
    pub aborted: bool,
    /// Only when the host runs in dev mode.
    pub stack: Option<String>,
}

/// Reads the payload of an `error` answer to a run request.
pub fn parse_failure(p: &Value) -> HandlerFailure {
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    HandlerFailure {
        message: s("message").unwrap_or_else(|| "handler failed".into()),
        name: s("name").unwrap_or_else(|| "Error".into()),
        aborted: p.get("aborted").and_then(Value::as_bool).unwrap_or(false),
        stack: s("stack"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let r = run_payload("j1", "data-analysis", json!({"a": 1}));
        assert_eq!(
            r,
            json!({"op":"run","jobId":"j1","workflow":"data-analysis","params":{"a":1}})
        );
        assert_eq!(event_count(&json!({"value": 1, "events": 3})), 3);
        assert_eq!(event_count(&json!({"value": 1})), 0);
        assert_eq!(
            cancel_payload("j1", AbortReason::Timeout)["reason"],
            "timeout"
        );
        assert_eq!(ping_payload(), json!({"op":"ping"}));
    }

    #[test]
    fn reads_answers() {
        let p =
            parse_pong(&json!({"op":"pong","ready":true,"pid":7,"rss":123,"exports":["default"]}));
        assert_eq!(
            p,
            Pong {
                ready: true,
                pid: Some(7),
                rss: Some(123),
                exports: vec!["default".into()]
            }
        );
        assert!(!parse_pong(&json!({})).ready);
        let f = parse_failure(&json!({"message":"bad","name":"RangeError","aborted":true}));
        assert_eq!(f.message, "bad");
        assert_eq!(f.name, "RangeError");
        assert!(f.aborted);
        assert_eq!(f.stack, None);
        assert_eq!(parse_failure(&Value::Null).message, "handler failed");
    }
}
