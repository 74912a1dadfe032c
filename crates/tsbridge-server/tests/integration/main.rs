//! Integration tests of `tsbridge-server`, one module per behaviour, linked into
//! one binary (one link instead of one per file: CI time and disk).
//! Run them with `cargo nextest run -p tsbridge-server`: nextest runs every test in
//! its own process, which some of them need (subreaper, signal handlers).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

mod auth_socket;
mod batch;
mod browser_guard;
mod client;
mod errors;
mod job_end_errors;
mod measure;
mod metrics_gauges;
mod multi_node_sse;
mod panics;
mod real_execute;
mod real_streams;
mod routes;
mod shutdown;
mod spawn_failure;
mod sse;
mod ws;
