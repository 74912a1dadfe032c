//! Bodies of the service routes (SPEC §8): `GET /readyz` and
//! `GET /v1/workflows`. Shared by the server and its typed client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /readyz` `data`: whether the service takes work, and why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub ready: bool,
    /// `"ok"`, or `"error: ..."`.
    pub store: String,
    pub isolation: Isolation,
    /// Workflow name -> `"available"` or `"unavailable: why"`.
    pub workflows: BTreeMap<String, String>,
}

/// Which isolation mechanisms this host provides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Isolation {
    /// `"v2"`, `"v1"` or `"none"`.
    pub cgroups: String,
    pub memory: bool,
    pub pids: bool,
    pub cpu: bool,
    /// A private network namespace can be made.
    pub network: bool,
    /// `"full"`, `"partial"` or `"none"`.
    pub landlock: String,
    pub seccomp: bool,
    /// A job can run in a PID namespace of its own with a `/proc` of its
    /// own (`limits.pid_namespace`).
    #[serde(default)]
    pub pid_namespace: bool,
}

/// One configured workflow, as `GET /v1/workflows` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowInfo {
    pub name: String,
    /// `"spawn"` or `"pool"`.
    pub mode: String,
    /// `"tsx"`, `"ts-node"`, `"node"` or `"exec"`.
    pub runtime: String,
    /// `"available"` or `"unavailable: why"`.
    pub status: String,
    /// The JSON Schema of its parameters, if it has one.
    #[serde(default)]
    pub params_schema: Option<Value>,
    #[serde(default)]
    pub path_params: Vec<String>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub priority: i32,
}

/// `GET /v1/workflows` `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowInfo>,
}
