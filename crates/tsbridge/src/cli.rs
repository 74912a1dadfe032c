//! Command-line interface (SPEC §6).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tsbridge_proto::{ByteSize, DurationSpec};

#[derive(Debug, Parser)]
#[command(
    name = "tsbridge",
    version,
    about = "Run TypeScript (and any other) programs as managed, sandboxed subprocesses",
    propagate_version = true
)]
pub struct Cli {
    /// More log output (-v info, -vv debug). TSBRIDGE_LOG overrides (tracing filter syntax).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log as JSON lines on stderr.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job in the foreground: result JSON on stdout, logs and output on stderr.
    Run(RunArgs),
    /// Serve the HTTP/WebSocket API.
    Serve(ServeArgs),
    /// Validate a config and report what isolation this host provides.
    Check(CheckArgs),
    /// Talk to a running server: list, show, cancel, follow logs.
    Jobs(JobsArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Wall-clock timeout, e.g. 30s, 500ms, 5m (exit code 124 when it expires).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<DurationSpec>,
    /// Time between SIGTERM and SIGKILL when the job is ended.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub kill_grace: DurationSpec,
    /// Output kept per stream (head + tail), e.g. 16MiB.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub max_output: ByteSize,
    /// Extra environment variable for the child (repeatable): K=V.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Pass a variable of this environment through to the child (repeatable).
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Working directory of the child (default: the current directory).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Retries after a retryable failure (spawn EAGAIN, timeout, death by signal).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Runtime: tsx, ts-node, ts-node-check, node or exec (default: by the file's extension).
    #[arg(long)]
    pub runtime: Option<String>,
    /// Print the whole outcome (exit, reason, resources, result, output) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Memory limit, e.g. 512MiB (cgroup; kernel-enforced).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<ByteSize>,
    /// CPU limit in cores, e.g. 0.5.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Maximum number of processes/threads.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Run without network (own network namespace).
    #[arg(long)]
    pub no_network: bool,
    /// Restrict the filesystem (Landlock): readable path (repeatable).
    #[arg(long = "read", value_name = "PATH")]
    pub read: Vec<PathBuf>,
    /// Restrict the filesystem (Landlock): writable path (repeatable).
    #[arg(long = "write", value_name = "PATH")]
    pub write: Vec<PathBuf>,
    /// Do not open Node's IPC channel for Node runtimes.
    #[arg(long)]
    pub no_ipc: bool,
    /// The program or script, then its arguments.
    #[arg(required = true, last = true, num_args = 1..)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file.
    #[arg(long, short, default_value = "tsbridge.toml", env = "TSBRIDGE_CONFIG")]
    pub config: PathBuf,
    /// Override [server] bind.
    #[arg(long)]
    pub bind: Option<String>,
    /// Development mode: error details and stacks in responses.
    #[arg(long)]
    pub dev: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file to validate (omit to only report host capabilities).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "TSBRIDGE_URL",
        default_value = "http://127.0.0.1:8787"
    )]
    pub server: String,
    /// Bearer token.
    #[arg(long, global = true, env = "TSBRIDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one job.
    Show { id: String },
    /// Cancel a job.
    Cancel { id: String },
    /// Print a job's events; --follow streams until the job ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Submit a job: `tsbridge jobs submit WORKFLOW '{"a":1}'`.
    Submit {
        workflow: String,
        #[arg(default_value = "{}")]
        parameters: String,
        /// Wait for the job to end and print it.
        #[arg(long)]
        wait: bool,
    },
}

fn parse_duration(s: &str) -> Result<DurationSpec, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_everything_after_dashes_verbatim() {
        let cli = Cli::try_parse_from([
            "tsbridge",
            "run",
            "--timeout",
            "2s",
            "--env",
            "A=1",
            "--",
            "x.ts",
            "--timeout",
            "$(rm)",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.timeout.unwrap().0.as_secs(), 2);
        assert_eq!(r.env, vec![("A".to_owned(), "1".to_owned())]);
        assert_eq!(r.command, ["x.ts", "--timeout", "$(rm)"]);
    }
}
