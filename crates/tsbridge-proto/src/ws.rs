//! WebSocket messages (SPEC §8, the brief's shapes). The client names a job
//! `workflowId` (the brief's word) or `jobId`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message from a WebSocket client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Subscribe(JobRef),
    Unsubscribe(JobRef),
    Cancel(JobRef),
}

/// `workflowId` or `jobId`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl JobRef {
    pub fn id(&self) -> Option<&str> {
        self.workflow_id.as_deref().or(self.job_id.as_deref())
    }
}

/// The `data` of a `progress` message: always all five keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WsProgress {
    pub task_id: String,
    /// Percentage 0..=100.
    pub progress: f64,
    pub message: String,
    /// `"current/total"`.
    pub stage: String,
    /// RFC 3339.
    pub timestamp: String,
}

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Subscribed {
        #[serde(rename = "workflowId")]
        workflow_id: String,
    },
    Unsubscribed {
        #[serde(rename = "workflowId")]
        workflow_id: String,
    },
    Progress {
        #[serde(rename = "workflowId")]
        workflow_id: String,
        data: WsProgress,
    },
    Log {
        #[serde(rename = "workflowId")]
        workflow_id: String,
        data: Value,
    },
    Result {
        #[serde(rename = "workflowId")]
        workflow_id: String,
        data: Value,
    },
    State {
        #[serde(rename = "workflowId")]
        workflow_id: String,
        data: Value,
    },
    Cancelled {
        #[serde(rename = "workflowId")]
        workflow_id: String,
        data: Value,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","workflowId":"abc"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Subscribe(ref r) if r.id() == Some("abc")));
        let m: ClientMessage = serde_json::from_str(r#"{"type":"cancel","jobId":"x"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Cancel(ref r) if r.id() == Some("x")));
    }

    #[test]
    fn progress_has_five_keys() {
        let m = ServerMessage::Progress {
            workflow_id: "j".into(),
            data: WsProgress {
                task_id: "j".into(),
                progress: 50.0,
                message: "m".into(),
                stage: "1/2".into(),
                timestamp: "2026-01-01T00:00:00Z".into(),
            },
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "progress");
        assert_eq!(v["workflowId"], "j");
        assert_eq!(v["data"].as_object().unwrap().len(), 5);
    }
}
