//! Integration tests of `tsbridge-runtime`, one module per behaviour, linked into
//! one binary (one link instead of one per file: CI time and disk).
//! Run them with `cargo nextest run -p tsbridge-runtime`: nextest runs every test in
//! its own process, which some of them need (subreaper, signal handlers).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
mod pg_support;
mod pool_support;

mod cancel;
mod claim_retry;
mod conformance;
mod crash_restart;
mod direct_start;
mod dynamic_user;
mod example_app;
mod executor_panic;
mod group_commit;
mod grouped_writes;
mod idempotency;
mod job_user;
mod jsx_runtime;
mod live_view;
mod memory_store;
mod multi_node_pg;
mod ordering;
mod params_file;
mod path_params_landlock;
mod pool_cancel;
mod pool_crash;
mod pool_events;
mod pool_handler_error;
mod pool_ipc_runners;
mod pool_limits;
mod pool_mode;
mod pool_pid_namespace;
mod pool_recycle;
mod pool_retry;
mod pool_reuse;
mod pool_shutdown;
mod pool_strays;
mod pool_tsx_warmup;
mod pool_typescript;
mod pool_warmup;
mod prefixed_base64_secret;
mod queue_limit;
mod recovery;
mod result_event;
mod retry;
mod retry_restart;
mod sealed_env;
mod shutdown;
mod shutdown_cgroups;
mod signal_stderr_tail;
mod slow_subscriber;
mod stdio_socket;
mod store_contract;
mod store_migration;
mod store_pg;
mod submit;
mod throughput;
mod timeout;
mod tmpdirs;
mod validation;
mod wrapped_secret;
mod wrapped_secret_streamed;
