//! The `tsbridge` binary: command-line parsing, tracing, signals -> shutdown,
//! and the wiring of the library crates (`serve`, `run`, `jobs`, `check`).

mod cli;
mod cmd_check;
mod cmd_jobs;
mod cmd_run;
mod cmd_serve;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a pooled HTTP job allocates and frees
/// a few hundred small blocks across the tokio threads and the store's
/// writer, and glibc spent 17 % of the server's request threads' samples in
/// `malloc`/`free`/`malloc_consolidate` (perf, 16 connections). See
/// BENCHMARKS.md "Allocator". A forked child before `exec` allocates nothing
/// (the engine's `pre_exec` hooks are async-signal-safe), so the allocator
/// never runs in a forked child. See [`configure_allocator`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` (mimalloc.h's `mi_option_e`; the Rust
/// bindings name no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Commits mimalloc's arenas as they fill, not whole when reserved. Eagerly
/// committed arenas are backed by 2 MiB transparent huge pages on hosts
/// with THP `always` (as here), and idle `tsbridge serve` held 29-31 MiB
/// instead of 18 (BENCHMARKS.md "Allocator").
///
/// It must run before mimalloc reserves its first arena, which happens
/// before `main` (its initializer is an ELF constructor): set first thing
/// in `main`, the option left idle `serve` with 16.5 MiB of anonymous
/// memory, set here 4.4 MiB (debug builds, example config). So it runs from `.preinit_array`, which the
/// loader runs before every constructor of the executable. It overrides
/// `MIMALLOC_ARENA_EAGER_COMMIT` (mimalloc reads an option's variable only
/// while the option is unset).
extern "C" fn configure_allocator() {
    // SAFETY: sets one of mimalloc's global options (an index it defines
    // and an integer value): a plain store into its option table, which is
    // static data and needs no initialization; no allocation, no pointer.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// Runs [`configure_allocator`] before any constructor (an executable's
/// `DT_PREINIT_ARRAY`).
#[used]
#[unsafe(link_section = ".preinit_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

/// The async runtime's thread count, as tokio names it (README).
const WORKER_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// [`WORKER_THREADS_VAR`]'s value, read here rather than by tokio, whose
/// builder panics on a value that is not a positive integer (an empty one
/// included): that is a usage error with a message, not a crash.
fn worker_threads(value: Option<std::ffi::OsString>) -> Result<Option<usize>, String> {
    let Some(v) = value else {
        return Ok(None);
    };
    v.to_str()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map(Some)
        .ok_or_else(|| format!("{WORKER_THREADS_VAR} must be a positive integer, not {v:?}"))
}

fn main() -> ExitCode {
    // Before anything holds a secret: a job must not read this process's
    // environment, memory or open files through /proc (README, security model).
    if let Err(e) = tsbridge_sandbox::set_not_dumpable() {
        output::note!("tsbridge: cannot make the process non-dumpable: {e}");
        return ExitCode::from(70);
    }
    let cli = cli::Cli::parse();
    init_tracing(&cli);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match worker_threads(std::env::var_os(WORKER_THREADS_VAR)) {
        Ok(Some(n)) => {
            builder.worker_threads(n);
        }
        Ok(None) => {}
        Err(e) => {
            output::note!("tsbridge: {e}");
            return ExitCode::from(2);
        }
    }
    let runtime = match builder.enable_all().thread_name("tsbridge").build() {
        Ok(rt) => rt,
        Err(e) => {
            output::note!("tsbridge: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            cli::Command::Run(args) => cmd_run::main(args).await,
            cli::Command::Serve(args) => cmd_serve::main(args).await,
            cli::Command::Check(args) => cmd_check::main(args).await,
            cli::Command::Jobs(args) => cmd_jobs::main(args).await,
        }
    });
    // The last line may still be buffered: its write error counts too, but a
    // reader that went away changes no exit code a command already decided.
    let code = code.and_then(|code| match output::flush() {
        Ok(()) | Err(output::OutputError::Closed(_)) => Ok(code),
        Err(e) => Err(e.into()),
    });
    match code {
        Ok(code) => code,
        // `tsbridge jobs logs ID | head`: the reader has what it wanted. A
        // quiet success, as ripgrep does (a Rust program ignores SIGPIPE, so
        // this is what a C tool's death by SIGPIPE looks like here, minus the
        // non-zero status that would fail a `set -o pipefail` script).
        Err(e) if output::OutputError::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            output::note!("tsbridge: {e:#}");
            // What the server said beyond its message: which parameter
            // broke the schema, the exit code and stderr tail of a job.
            if let Some(tsbridge_client::ClientError::Api {
                details: Some(details),
                ..
            }) = e.downcast_ref()
            {
                output::note!("  details: {details}");
            }
            ExitCode::from(1)
        }
    }
}

fn init_tracing(cli: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (&cli.command, cli.verbose) {
        (_, v) if v >= 2 => "debug",
        (_, 1) => "info",
        (cli::Command::Serve(_), _) => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_env("TSBRIDGE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Without `log_internal_errors(false)` a log line that cannot be
    // written (stderr closed, as in `tsbridge run ... 2>&- | head`) makes
    // tracing-subscriber report it with `eprintln!`, which panics on the
    // same closed stderr: the run ended with 101 instead of the job's code.
    // Colours only on a terminal: stderr into a file, a pipe or a service's
    // journal gets plain lines (as `run` prints PROGRESS there), and NO_COLOR
    // (https://no-color.org) turns them off on a terminal too.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}
