//! Wire types of tsbridge, shared by every other crate: typed ids, job states
//! and end reasons, events, the child line-protocol and IPC envelopes, HTTP and
//! WebSocket bodies, error codes, and the duration/size notations of the config
//! and of requests. serde only: nothing here knows about processes, HTTP
//! servers or storage.

pub mod api;
pub mod event;
pub mod ids;
pub mod ipc;
pub mod job;
pub mod service;
pub mod time;
pub mod units;
pub mod ws;

pub use api::{ApiErrorBody, ErrorType};
pub use event::{ChildEvent, EventData, JobEvent, LogLevel, Progress};
pub use ids::{JobId, ParseIdError, WorkerId};
pub use ipc::{IpcEnvelope, IpcKind};
pub use job::{EndReason, JobState};
pub use units::{ByteSize, DurationSpec, ParseUnitError};
