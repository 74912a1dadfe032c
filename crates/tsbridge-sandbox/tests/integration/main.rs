//! Integration tests of `tsbridge-sandbox`, one module per behaviour, linked into
//! one binary (one link instead of one per file: CI time and disk).
//! Run them with `cargo nextest run -p tsbridge-sandbox`: nextest runs every test in
//! its own process, which some of them need (subreaper, signal handlers).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

mod cgroup_escape;
mod cgroup_join;
mod child_failure;
mod cpu_quota;
mod daemon_escape;
mod dynamic_uid;
mod host_files;
mod job_user;
mod landlock_fs;
mod memory_limit;
mod network_isolation;
mod parent_attack;
mod pids_limit;
mod rlimits;
mod seccomp_deny;
