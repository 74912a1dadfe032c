//! The worker protocol: the envelopes tsbridge sends to `js/worker-host.mjs`
//! and the typed reading of what the host sends back. Pure data, no I/O.
//! The message table is in docs/design/pool.md.

use serde_json::{Value, json};
use tsbridge_proto::{ChildEvent, IpcEnvelope, IpcKind, LogLevel, Progress};

/// The id of the host's `ready`/`fatal` message.
pub const READY_ID: &str = "ready";

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

/// `{type:"request", id:<job id>, payload:{op:"run", workflow, params}}`.
pub fn run_request(job_id: &str, workflow: &str, params: &Value) -> Value {
    envelope_value(
        IpcKind::Request,
        job_id,
        json!({"op": "run", "workflow": workflow, "params": params}),
    )
}

/// `{type:"request", id, payload:{op:"cancel", jobId, reason}}`.
pub fn cancel_request(request_id: &str, job_id: &str, reason: AbortReason) -> Value {
    envelope_value(
        IpcKind::Request,
        request_id,
        json!({"op": "cancel", "jobId": job_id, "reason": reason.as_str()}),
    )
}

/// `{type:"request", id, payload:{op:"ping"}}`.
pub fn ping_request(request_id: &str) -> Value {
    envelope_value(IpcKind::Request, request_id, json!({"op": "ping"}))
}

fn envelope_value(kind: IpcKind, id: &str, payload: Value) -> Value {
    let env = IpcEnvelope::new(kind, Some(id.to_owned()), payload);
    // An envelope of plain JSON values always serializes.
    serde_json::to_value(env).unwrap_or(Value::Null)
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

/// What the host said, read.
#[derive(Clone, Debug, PartialEq)]
pub enum HostMessage {
    /// The module is loaded; jobs may be sent.
    Ready {
        pid: Option<u32>,
        exports: Vec<String>,
    },
    /// The module could not be loaded or has no handler; the host exits.
    Fatal {
        message: String,
        stack: Option<String>,
    },
    /// A job's progress, log line or result, as the event the runtime records.
    JobEvent { job: String, event: ChildEvent },
    /// A job's value: it succeeded.
    JobResult { job: String, value: Value },
    /// A job failed.
    JobFailed {
        job: String,
        failure: HandlerFailure,
    },
    /// Answer to a ping.
    Pong { request: String, rss: Option<u64> },
    /// Answer to a cancel.
    CancelAck { request: String, found: bool },
    /// Anything else (ignored, logged at debug).
    Other(Value),
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads one message from the host.
pub fn parse(msg: Value) -> HostMessage {
    let Ok(env) = serde_json::from_value::<IpcEnvelope>(msg.clone()) else {
        return HostMessage::Other(msg);
    };
    let Some(id) = env.id.clone() else {
        return HostMessage::Other(msg);
    };
    let p = &env.payload;
    let op = p.get("op").and_then(Value::as_str);
    match (env.kind, op) {
        (IpcKind::Response, Some("ready")) if id == READY_ID => HostMessage::Ready {
            pid: p
                .get("pid")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            exports: p
                .get("exports")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        },
        (IpcKind::Error, _) if id == READY_ID => HostMessage::Fatal {
            message: str_of(p, "message").unwrap_or_else(|| "worker host failed to start".into()),
            stack: str_of(p, "stack"),
        },
        (IpcKind::Response, Some("pong")) => HostMessage::Pong {
            request: id,
            rss: p.get("rss").and_then(Value::as_u64),
        },
        (IpcKind::Response, Some("cancel")) => HostMessage::CancelAck {
            request: id,
            found: p.get("found").and_then(Value::as_bool).unwrap_or(false),
        },
        (IpcKind::Progress, _) => {
            let num = |k: &str| {
                p.get(k)
                    .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
                    .unwrap_or(0)
            };
            HostMessage::JobEvent {
                job: id,
                event: ChildEvent::Progress(Progress::new(
                    num("current"),
                    num("total"),
                    str_of(p, "message").unwrap_or_default(),
                )),
            }
        }
        (IpcKind::Log, _) => HostMessage::JobEvent {
            job: id,
            event: ChildEvent::Log {
                level: p
                    .get("level")
                    .and_then(Value::as_str)
                    .and_then(LogLevel::parse)
                    .unwrap_or(LogLevel::Info),
                message: str_of(p, "message").unwrap_or_default(),
                child_timestamp: None,
            },
        },
        (IpcKind::Result, _) => HostMessage::JobResult {
            job: id,
            value: env.payload,
        },
        (IpcKind::Error, _) => HostMessage::JobFailed {
            job: id,
            failure: HandlerFailure {
                message: str_of(p, "message").unwrap_or_else(|| "handler failed".into()),
                name: str_of(p, "name").unwrap_or_else(|| "Error".into()),
                aborted: p.get("aborted").and_then(Value::as_bool).unwrap_or(false),
                stack: str_of(p, "stack"),
            },
        },
        _ => HostMessage::Other(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_envelopes() {
        let r = run_request("j1", "data-analysis", &json!({"a": 1}));
        assert_eq!(r["type"], "request");
        assert_eq!(r["id"], "j1");
        assert_eq!(r["payload"]["op"], "run");
        assert_eq!(r["payload"]["params"]["a"], 1);
        assert!(r["timestamp"].is_u64());
        let c = cancel_request("c1", "j1", AbortReason::Timeout);
        assert_eq!(c["payload"]["reason"], "timeout");
        assert_eq!(c["payload"]["jobId"], "j1");
        assert_eq!(ping_request("p1")["payload"]["op"], "ping");
    }

    #[test]
    fn reads_host_messages() {
        let m = parse(
            json!({"id":"ready","type":"response","payload":{"op":"ready","pid":7,"exports":["default"]}}),
        );
        assert_eq!(
            m,
            HostMessage::Ready {
                pid: Some(7),
                exports: vec!["default".into()]
            }
        );
        let m = parse(
            json!({"id":"ready","type":"error","payload":{"op":"fatal","message":"cannot load"}}),
        );
        assert!(
            matches!(m, HostMessage::Fatal { message, stack: None } if message == "cannot load")
        );
        let m = parse(
            json!({"id":"j","type":"progress","payload":{"current":1,"total":4,"message":"m"}}),
        );
        assert!(
            matches!(m, HostMessage::JobEvent { job, event: ChildEvent::Progress(p) } if job == "j" && p.percentage == 25.0)
        );
        let m = parse(json!({"id":"j","type":"log","payload":{"level":"warn","message":"w"}}));
        assert!(matches!(
            m,
            HostMessage::JobEvent {
                event: ChildEvent::Log {
                    level: LogLevel::Warn,
                    ..
                },
                ..
            }
        ));
        let m = parse(json!({"id":"j","type":"result","payload":{"x":[1]}}));
        assert_eq!(
            m,
            HostMessage::JobResult {
                job: "j".into(),
                value: json!({"x":[1]})
            }
        );
        let m = parse(
            json!({"id":"j","type":"error","payload":{"message":"bad","name":"RangeError","aborted":true}}),
        );
        assert!(
            matches!(m, HostMessage::JobFailed { failure, .. } if failure.name == "RangeError" && failure.aborted)
        );
        let m = parse(json!({"id":"p","type":"response","payload":{"op":"pong","rss":123}}));
        assert_eq!(
            m,
            HostMessage::Pong {
                request: "p".into(),
                rss: Some(123)
            }
        );
        assert!(matches!(
            parse(json!({"cmd":"NODE_HANDLE"})),
            HostMessage::Other(_)
        ));
        assert!(matches!(
            parse(json!({"type":"log","payload":{}})),
            HostMessage::Other(_)
        ));
    }
}
