//! Errors of this crate: one small enum per concern. Messages are lowercase and
//! never repeat the cause, which is in `#[source]`.

use std::io;
use std::path::PathBuf;

/// Setting up the host-wide sandbox or one job's sandbox failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The job key cannot be used as a cgroup directory name.
    #[error("invalid job key {key:?}: use 1 to 64 of [A-Za-z0-9._-], not starting with '.'")]
    InvalidJobKey { key: String },
    /// A cgroup file or directory could not be read, written, created or removed.
    #[error("cgroup operation on {path} failed")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A job cgroup with the same key already exists (a key must be unique per attempt).
    #[error("job cgroup {path} already exists")]
    JobExists { path: PathBuf },
    /// Building the Landlock ruleset failed.
    #[error("landlock ruleset setup failed at {step}")]
    Landlock {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// Compiling the seccomp filter failed.
    #[error("seccomp filter compilation failed: {0}")]
    Seccomp(String),
    /// Creating the shared network namespace or another host resource failed.
    #[error("{what} failed")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl SandboxError {
    pub(crate) fn cgroup(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Cgroup {
            path: path.into(),
            source,
        }
    }
}

/// A request was refused before anything ran (HTTP 403 `SecurityError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The environment variable may never be set by a request (loader or interpreter hook).
    #[error("environment variable {name} is forbidden: it can inject code into the child")]
    ForbiddenEnv { name: String },
    /// The environment variable is not in the workflow's allowlist.
    #[error("environment variable {name} is not allowed by this workflow")]
    EnvNotAllowed { name: String },
    /// The environment variable name is malformed (empty, contains '=' or NUL).
    #[error("environment variable name {name:?} is invalid")]
    InvalidEnvName { name: String },
    /// The environment variable value contains a NUL byte.
    #[error("environment variable {name} has a value containing a NUL byte")]
    InvalidEnvValue { name: String },
    /// The path contains a NUL byte.
    #[error("path contains a NUL byte")]
    NulInPath,
    /// The path resolves (after symlinks) outside the allowed root.
    #[error("path {path} resolves outside the allowed root")]
    PathOutsideRoot { path: PathBuf },
    /// The path is empty.
    #[error("path is empty")]
    EmptyPath,
    /// The root itself could not be resolved.
    #[error("allowed root {root} cannot be resolved: {reason}")]
    BadRoot { root: PathBuf, reason: String },
    /// An existing ancestor of the path could not be resolved.
    #[error("path {path} cannot be resolved: {reason}")]
    Unresolvable { path: PathBuf, reason: String },
}
