//! Integration tests of `tsbridge-process`, one module per behaviour, linked into
//! one binary (one link instead of one per file: CI time and disk).
//! Run them with `cargo nextest run -p tsbridge-process`: nextest runs every test in
//! its own process, which some of them need (subreaper, signal handlers).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

mod argv_verbatim;
mod bytewise_result;
mod cancel;
mod cgroup_v2_kernel;
mod env_exact;
mod event_budget;
mod exit_code;
mod flood_capture;
mod hidden_escapee;
mod inherited_fds;
mod ipc_engine;
mod ipc_node;
mod kill_descendants;
mod long_line;
mod normal_exit_leftovers;
mod parent_death;
mod parent_death_watchdog;
mod pid_namespace;
mod resource_monitor;
mod retry_no_overlap;
mod sandbox_cgroup;
mod secrets_mid_output;
mod shutdown_all;
mod signal_death;
mod socket_output;
mod spawn_errors;
mod stale_tmp_sweep;
mod timeout_kills_tree;
mod transpile_location;
mod typescript;
