//! Jobs: the dispatcher (the one writer of job state), the priority queue,
//! retries, warm worker pools, the job store and the event bus.

pub mod config;
pub mod env;
pub mod errors;
pub mod paths;
pub mod pool;
pub mod store;

pub use config::Config;
pub use errors::{ConfigError, ConfigIssue, RuntimeError, StoreError};
