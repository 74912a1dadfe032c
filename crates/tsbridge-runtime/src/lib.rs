//! Jobs: the dispatcher (the one writer of job state), the priority queue,
//! retries, warm worker pools, the job store and the event bus.
//!
//! Entry point: [`Runtime::start`] with a [`Config`] (see [`Config::load`])
//! and a [`store::JobStore`] (e.g. [`store::SqliteStore::open`]).

mod availability;
pub mod bus;
pub mod config;
mod dispatcher;
pub mod errors;
pub mod executor;
mod live_view;
mod path_params;
pub mod pool;
pub mod queue;
mod runtime;
pub mod sealed;
pub mod spawn;
pub mod stats;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod test_util;

pub use bus::{Bus, Subscription};
pub use config::Config;
pub use errors::{Causes, ConfigError, ConfigIssue, RuntimeError, StoreError};
pub use executor::{AttemptEvent, AttemptIo, AttemptOutcome, AttemptRequest, Executor};
pub use runtime::{ListQuery, Runtime, RuntimeOptions, Submitted};
pub use stats::RuntimeStats;
pub use store::{JobStore, SqliteStore};
