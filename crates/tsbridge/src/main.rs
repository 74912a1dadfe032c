//! The `tsbridge` binary: command-line parsing, tracing, signals -> shutdown,
//! and the wiring of the library crates (`serve`, `run`, `jobs`, `check`).

mod cli;
mod cmd_check;
mod cmd_jobs;
mod cmd_run;
mod cmd_serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tsbridge")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tsbridge: cannot start the async runtime: {e}");
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
    match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tsbridge: {e:#}");
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}
