//! The envelope of messages on Node's IPC channel (SPEC §2.3):
//! `{id, type, payload, timestamp}`. Node's own internal messages (objects
//! whose `cmd` starts with `NODE_`) are not envelopes and are never produced
//! here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `type` of an IPC envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpcKind {
    Request,
    Response,
    Error,
    Progress,
    Log,
    Result,
}

/// One message on the IPC channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpcEnvelope {
    /// Correlates a `response`/`error` with its `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: IpcKind,
    #[serde(default)]
    pub payload: Value,
    /// Milliseconds since the epoch (a number) or an RFC 3339 string; kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Value>,
}

impl IpcEnvelope {
    pub fn new(kind: IpcKind, id: Option<String>, payload: Value) -> Self {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            id,
            kind,
            payload,
            timestamp: Some(Value::from(ts)),
        }
    }
}

/// Whether a JSON message is one of Node's internal ones (`cmd: "NODE_..."`),
/// which must never be interpreted or sent by tsbridge.
pub fn is_node_internal(msg: &Value) -> bool {
    msg.get("cmd")
        .and_then(Value::as_str)
        .is_some_and(|c| c.len() > 5 && c.starts_with("NODE_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_internal() {
        let e = IpcEnvelope::new(
            IpcKind::Request,
            Some("1".into()),
            serde_json::json!({"a":1}),
        );
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("\"type\":\"request\""));
        let back: IpcEnvelope = serde_json::from_str(&s).unwrap();
        assert_eq!(back.kind, IpcKind::Request);
        assert!(is_node_internal(&serde_json::json!({"cmd":"NODE_HANDLE"})));
        assert!(!is_node_internal(&serde_json::json!({"cmd":"NODE_"})));
        assert!(!is_node_internal(&serde_json::json!({"type":"log"})));
    }
}
