//! Integration tests of the `tsbridge` binary, one module per behaviour,
//! linked into one test binary (one link instead of one per file: CI time
//! and disk). They drive the built binary (`CARGO_BIN_EXE_tsbridge`) as a
//! user does. Run them with `cargo nextest run -p tsbridge`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod check_tokens;
mod cli;
mod common;
mod crash_recovery;
mod escapee_after_sigkill;
mod job_users;
mod jobs_cli;
mod pool_pidns_after_sigkill;
mod proc_of_tsbridge;
mod run_contract;
mod shutdown_records;
mod store_in_use;
mod tmpdir_after_sigkill;
mod unprivileged_serve;
