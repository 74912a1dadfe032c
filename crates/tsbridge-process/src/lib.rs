//! One child process from spawn to reap: argv/env/cwd, process group,
//! bounded capture, line protocol, Node IPC channel, timeout -> grace -> kill
//! of the whole tree, resource usage. See docs/design/termination.md.
//!
//! Entry points: [`spec::JobSpec::builder`], [`engine::spawn`] /
//! [`engine::run`], [`runtime::resolve`] (script -> invocation, with the
//! [`transpile`] cache), [`retry::run_with_retry`], and
//! [`supervisor::init_supervisor`] / [`supervisor::shutdown_all`] for the
//! binary.

pub mod capture;
pub mod ipc;
pub mod lineproto;
pub mod mask;
pub mod monitor;

pub mod engine;
pub mod error;
pub mod retry;
pub mod runtime;
pub mod spec;
pub mod supervisor;
pub mod transpile;

mod clone;
mod ipclink;
mod private_dir;
mod registry;
mod spawner;
mod sys;
mod tree;
mod watchdog;

pub use engine::{ExitKind, Outcome, ProcessControl, RunningProcess, StopReason, run, spawn};
pub use error::{ErrorKind, JobError, ResolveError, SpawnError, ValidationError};
pub use ipclink::IpcHandle;
pub use monitor::ResourceSample;
pub use private_dir::PrivateDir;
pub use spec::{JobKey, JobSpec, JobSpecBuilder, OutputChannel, SandboxAttachment, StdinSpec};
pub use supervisor::{
    SupervisorOptions, init_supervisor, init_supervisor_with, make_private_tmp,
    make_private_tmp_for, private_tmp_path, shutdown_all, sweep_orphans, sweep_stale_tmp,
};
